//! A `Session` fed arbitrary bytes, with a host that answers every event the way the broker
//! does, must never panic, and everything it transmits must decode (as the client would
//! decode it) into whole packets no larger than the client's Maximum Packet Size.
//!
//! First byte of the input (the rest is the client's byte stream):
//! - bit 0: put a valid CONNECT in front of the stream (so half the inputs get past CONNECT);
//! - bit 1: that CONNECT is v5 (topic alias maximum 4, session expiry 10), else 3.1.1;
//! - bits 2-3: largest chunk the stream is fed in (1, 3, 16 or 512 bytes);
//! - bit 4: tight server limits (512-byte packets, receive maximum 2, 2 topic aliases, ...);
//! - bit 5: the host refuses: PUBLISH answered Not authorized, SUBSCRIBE codes 0x80/0x87;
//! - bit 6: `accept_connect` restores a session with messages in every in-flight stage;
//! - bit 7: every PUBLISH the client sends is delivered back to it (outbound QoS, aliases,
//!   window, size shedding).
//!
//! Client identifier "reject" is refused with `reject_connect`; a CONNECT carrying an
//! authentication method first gets an AUTH Continue authentication.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_fuzz::{Rng, hex, max_chunk};
use libfuzzer_sys::fuzz_target;
use mqtt::codec::decode;
use mqtt::session::{
    ConnectAccepted, Delivery, Event, Inflight, InflightStage, Message, Session, SessionConfig,
    SessionState,
};
use mqtt::topic::validate_topic_filter;
use mqtt::{Packet, QoS, ReasonCode};

/// CONNECT 3.1.1: clean session, keep alive 60, client id "c".
const CONNECT_V311: &[u8] = &[
    0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, b'c',
];

/// CONNECT 5.0: clean start, keep alive 60, topic alias maximum 4, session expiry 10, id "c".
const CONNECT_V5: &[u8] = &[
    0x10, 0x16, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x08, 0x22, 0x00,
    0x04, 0x11, 0x00, 0x00, 0x00, 0x0A, 0x00, 0x01, b'c',
];

struct Host {
    refuse: bool,
    restore: bool,
    echo: bool,
    /// The client's Maximum Packet Size, once a CONNECT has reached the session.
    client_max: usize,
}

fn message(topic: &str, qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::from_static(b"restored"),
        qos,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        origin: 2,
    })
}

fn restored_state() -> SessionState {
    let delivery = |topic, qos| Delivery {
        message: message(topic, qos),
        qos,
        retain: false,
        subscription_ids: vec![1],
        shared: None,
        tag: 0,
    };
    let entry = |id, topic, qos, stage| {
        (
            id,
            Inflight {
                delivery: delivery(topic, qos),
                stage,
            },
        )
    };
    SessionState {
        inflight: [
            entry(7, "r/1", QoS::AtLeastOnce, InflightStage::AwaitPubAck),
            entry(8, "r/2", QoS::ExactlyOnce, InflightStage::AwaitPubRec),
            entry(9, "r/2", QoS::ExactlyOnce, InflightStage::AwaitPubComp),
        ]
        .into_iter()
        .collect(),
        inbound_qos2: vec![3],
        // Allocation wraps past 65535 and must skip 0 and the ids above.
        next_packet_id: 65533,
    }
}

impl Host {
    /// Run the session until it stops producing events, answering each one.
    fn pump(&mut self, s: &mut Session, now: Instant) {
        for _ in 0..10_000 {
            s.process(now);
            let mut progressed = false;
            while let Some(event) = s.poll_event() {
                progressed = true;
                self.answer(s, event, now);
            }
            self.drain(s);
            if !progressed {
                return;
            }
        }
        panic!("session kept producing events");
    }

    fn answer(&mut self, s: &mut Session, event: Event, now: Instant) {
        match event {
            Event::Connect(c) => {
                if s.protocol().is_v5() {
                    if let Some(max) = c.properties.maximum_packet_size {
                        self.client_max = max as usize;
                    }
                }
                if c.client_id == "reject" {
                    return s.reject_connect(ReasonCode::BANNED, Some("go away".into()));
                }
                let auth = c.properties.authentication_method.is_some();
                if auth {
                    s.send_auth(
                        ReasonCode::CONTINUE_AUTHENTICATION,
                        Some(Bytes::from_static(b"challenge")),
                        Some("more".into()),
                    );
                }
                s.accept_connect(
                    ConnectAccepted {
                        session_present: self.restore,
                        assigned_client_id: c.client_id.is_empty().then(|| "auto-1".into()),
                        restored: self.restore.then(restored_state),
                        authentication_data: auth.then(|| Bytes::from_static(b"ok")),
                        user_properties: vec![("k".into(), "v".into())],
                    },
                    now,
                );
            }
            Event::Auth(_) => s.send_auth(ReasonCode::SUCCESS, None, Some("re-auth".into())),
            Event::Publish { message, packet_id } => {
                let qos = message.qos;
                if self.echo {
                    let delivery = Delivery {
                        qos,
                        retain: message.retain,
                        subscription_ids: vec![1, 268_435_455],
                        shared: None,
                        tag: 0,
                        message: Arc::new(message),
                    };
                    // Err: window full; the broker would queue it, we drop it.
                    let _ = s.deliver(delivery, now);
                }
                if qos != QoS::AtMostOnce {
                    let (code, reason) = if self.refuse {
                        (ReasonCode::NOT_AUTHORIZED, Some("no".to_string()))
                    } else {
                        (ReasonCode::SUCCESS, None)
                    };
                    s.publish_done(qos, packet_id, code, reason);
                }
            }
            Event::Subscribe(sub) => {
                let codes = sub
                    .filters
                    .iter()
                    .map(|(filter, options)| {
                        if validate_topic_filter(filter).is_err() {
                            ReasonCode::TOPIC_FILTER_INVALID
                        } else if self.refuse {
                            ReasonCode::NOT_AUTHORIZED
                        } else {
                            ReasonCode(options.qos as u8)
                        }
                    })
                    .collect();
                s.send_suback(sub.packet_id, codes);
            }
            Event::Unsubscribe(unsub) => {
                let codes = unsub
                    .filters
                    .iter()
                    .map(|_| {
                        if self.refuse {
                            ReasonCode::NO_SUBSCRIPTION_EXISTED
                        } else {
                            ReasonCode::SUCCESS
                        }
                    })
                    .collect();
                s.send_unsuback(unsub.packet_id, codes);
            }
            Event::WindowOpened | Event::Closed(_) => {}
        }
    }

    /// What the session transmits must be whole, well-formed packets for its protocol, each
    /// within the client's Maximum Packet Size.
    fn drain(&mut self, s: &mut Session) {
        while let Some(mut out) = s.take_transmit() {
            let sent = out.to_vec();
            let protocol = s.protocol();
            while !out.is_empty() {
                let at = sent.len() - out.len();
                let packet = decode(&mut out, protocol, self.client_max);
                let bad = match &packet {
                    Ok(Some(
                        Packet::Connect(_)
                        | Packet::Subscribe(_)
                        | Packet::Unsubscribe(_)
                        | Packet::PingReq,
                    )) => Some("a client-only packet"),
                    Ok(Some(_)) => None,
                    _ => Some("bytes the client cannot decode"),
                };
                if let Some(bad) = bad {
                    panic!(
                        "session ({protocol:?}, client max {}) sent {bad}: {packet:?} at byte {at} of {}",
                        self.client_max,
                        hex(&sent)
                    );
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut stream = Vec::with_capacity(rest.len() + CONNECT_V5.len());
    if selector & 0x01 != 0 {
        stream.extend_from_slice(if selector & 0x02 != 0 {
            CONNECT_V5
        } else {
            CONNECT_V311
        });
    }
    stream.extend_from_slice(rest);
    let max = max_chunk(selector >> 2);
    let config = if selector & 0x10 != 0 {
        SessionConfig {
            max_packet_size: 512,
            receive_maximum: 2,
            topic_alias_maximum: 2,
            max_keep_alive: 5,
            max_session_expiry: 100,
            max_message_expiry: Some(30),
            max_inflight: 2,
        }
    } else {
        SessionConfig::default()
    };
    let mut host = Host {
        refuse: selector & 0x20 != 0,
        restore: selector & 0x40 != 0,
        echo: selector & 0x80 != 0,
        client_max: usize::MAX,
    };

    let start = Instant::now();
    let mut now = start;
    let mut rng = Rng::new(u64::from(selector));
    let mut s = Session::new(config, start);
    s.set_origin(1);
    for chunk in Chunks::new(&stream, max, &mut rng) {
        s.feed(chunk);
        host.pump(&mut s, now);
        // A fake clock: up to 2 s between reads, with keep-alive checks on the way.
        now += Duration::from_millis(chunk[0] as u64 * 8);
        s.handle_timeout(now);
        host.pump(&mut s, now);
    }
    if let Some(deadline) = s.next_timeout() {
        assert!(deadline >= start, "keep alive deadline in the past");
    }
    // Long after everything: keep alive (if any) has expired.
    s.handle_timeout(now + Duration::from_secs(100_000));
    host.pump(&mut s, now);
    s.handle_network_closed();
    host.pump(&mut s, now);
    assert!(s.is_closed(), "still open after the network closed");
    let _ = s.take_state();
});

/// `stream` in pieces of 1..=max bytes.
struct Chunks<'a, 'r> {
    rest: &'a [u8],
    max: usize,
    rng: &'r mut Rng,
}

impl<'a, 'r> Chunks<'a, 'r> {
    fn new(stream: &'a [u8], max: usize, rng: &'r mut Rng) -> Self {
        Chunks {
            rest: stream,
            max,
            rng,
        }
    }
}

impl<'a> Iterator for Chunks<'a, '_> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let n = self.rng.chunk(self.max).min(self.rest.len());
        let (chunk, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(chunk)
    }
}

