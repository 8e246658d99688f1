//! Session state machine tests: scripted packets and a fake clock.
//!
//! Every test plays the client: it encodes packets with the codec, feeds the bytes to a
//! [`Session`], and decodes whatever the session wants to transmit. Time is a fixed `t0` plus
//! whole seconds; the session never reads a clock, so every deadline is exact. Clause numbers
//! are those of MQTT 5.0 unless marked 3.1.1.

use super::*;

const V5: Protocol = Protocol::V5;
const V311: Protocol = Protocol::V311;

// ------------------------------------------------------------------ harness

/// One scripted client connection with its own fake clock.
struct Client {
    session: Session,
    protocol: Protocol,
    t0: Instant,
}

impl Client {
    fn new(protocol: Protocol, config: SessionConfig) -> Client {
        let t0 = Instant::now();
        Client {
            session: Session::new(config, t0),
            protocol,
            t0,
        }
    }

    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    fn encode(&self, packet: &Packet) -> BytesMut {
        let mut buf = BytesMut::new();
        codec::encode(packet, self.protocol, &mut buf);
        buf
    }

    /// Feed one packet at `t0`.
    fn send(&mut self, packet: Packet) {
        self.send_at(packet, 0);
    }

    /// Feed one packet `secs` seconds after `t0` and let the session process it.
    fn send_at(&mut self, packet: Packet, secs: u64) {
        let buf = self.encode(&packet);
        self.feed_at(&buf, secs);
    }

    fn feed_at(&mut self, bytes: &[u8], secs: u64) {
        self.session.feed(bytes);
        self.session.process(self.at(secs));
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.session.poll_event()).collect()
    }

    /// Raw bytes the session wants to write (empty if none).
    fn raw(&mut self) -> Vec<u8> {
        self.session
            .take_transmit()
            .map(|b| b.to_vec())
            .unwrap_or_default()
    }

    /// Everything the session wants to write, decoded as the client would.
    fn received(&mut self) -> Vec<Packet> {
        let Some(mut buf) = self.session.take_transmit() else {
            return Vec::new();
        };
        let mut packets = Vec::new();
        while let Some(p) = codec::decode(&mut buf, self.protocol, usize::MAX)
            .unwrap_or_else(|e| panic!("the server wrote a packet that does not decode: {e}"))
        {
            packets.push(p);
        }
        assert!(buf.is_empty(), "server wrote a partial packet: {buf:?}");
        packets
    }

    fn received_one(&mut self) -> Packet {
        let mut packets = self.received();
        assert_eq!(packets.len(), 1, "expected exactly one packet: {packets:?}");
        packets.pop().unwrap()
    }

    fn deliver(&mut self, delivery: Delivery, secs: u64) -> Result<(), Delivery> {
        let now = self.at(secs);
        self.session.deliver(delivery, now)
    }

    fn accept(&mut self, accepted: ConnectAccepted) {
        let now = self.t0;
        self.session.accept_connect(accepted, now);
    }
}

macro_rules! expect {
    ($packet:expr, $variant:ident) => {
        match $packet {
            Packet::$variant(inner) => inner,
            other => panic!("expected {}, got {other:?}", stringify!($variant)),
        }
    };
}

fn connect(protocol: Protocol) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 0,
        client_id: "client-1".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

/// A client that sent `connect` (after `tweak`) and got a successful CONNACK, with events and
/// transmit drained.
fn connected_with(
    protocol: Protocol,
    config: SessionConfig,
    tweak: impl FnOnce(&mut Connect),
) -> Client {
    let mut c = Client::new(protocol, config);
    let mut conn = connect(protocol);
    tweak(&mut conn);
    c.send(Packet::Connect(Box::new(conn)));
    let events = c.events();
    assert!(
        matches!(events.as_slice(), [Event::Connect(_)]),
        "{events:?}"
    );
    c.accept(ConnectAccepted::default());
    let connack = expect!(c.received_one(), ConnAck);
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    assert!(c.session.is_connected());
    c
}

fn connected(protocol: Protocol) -> Client {
    connected_with(protocol, SessionConfig::default(), |_| {})
}

fn publish(topic: &str, qos: QoS, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        payload: Bytes::from_static(b"hello"),
        properties: Properties::default(),
    }
}

fn ack(packet_id: u16) -> PubResp {
    PubResp {
        packet_id,
        ..PubResp::default()
    }
}

fn message(topic: &str, payload: &'static [u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Properties::default(),
        expires_at: None,
        origin: 0,
    })
}

fn delivery(message: &Arc<Message>, qos: QoS) -> Delivery {
    Delivery {
        message: message.clone(),
        qos,
        retain: false,
        subscription_ids: Vec::new(),
        shared: None,
        tag: 0,
    }
}

fn close_reason(events: &[Event]) -> Option<&CloseReason> {
    events.iter().find_map(|e| match e {
        Event::Closed(r) => Some(r),
        _ => None,
    })
}

/// The session closed with exactly `reason` and nothing else happened.
#[track_caller]
fn assert_only_closed(events: &[Event], reason: CloseReason) {
    assert!(
        matches!(events, [Event::Closed(r)] if *r == reason),
        "expected only Closed({reason:?}), got {events:?}"
    );
}

#[track_caller]
fn assert_disconnect(c: &mut Client, code: ReasonCode) {
    let d = expect!(c.received_one(), Disconnect);
    assert_eq!(d.code, code);
    assert!(c.session.is_closed());
}

fn publish_events(events: &[Event]) -> Vec<(&Message, u16)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Publish { message, packet_id } => Some((message, *packet_id)),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------------ CONNECT

/// [MQTT-3.2.2-16/17] limits, [MQTT-3.1.3-7] assigned client identifier, §3.2.2.3.2 session
/// expiry capped by the server.
#[test]
fn v5_connect_goes_to_the_host_and_connack_advertises_limits() {
    let config = SessionConfig {
        receive_maximum: 20,
        max_packet_size: 4096,
        topic_alias_maximum: 7,
        max_session_expiry: 600,
        ..SessionConfig::default()
    };
    let mut c = Client::new(V5, config);
    let mut conn = connect(V5);
    conn.client_id = String::new();
    conn.keep_alive = 30;
    conn.properties.session_expiry_interval = Some(3600);
    c.send(Packet::Connect(Box::new(conn.clone())));

    let events = c.events();
    match events.as_slice() {
        [Event::Connect(got)] => assert_eq!(**got, conn),
        other => panic!("expected Event::Connect, got {other:?}"),
    }
    // Nothing is written until the host decides.
    assert!(c.raw().is_empty());
    assert!(!c.session.is_connected());
    assert_eq!(c.session.protocol(), V5);

    c.accept(ConnectAccepted {
        assigned_client_id: Some("gen-1".into()),
        ..ConnectAccepted::default()
    });
    let connack = expect!(c.received_one(), ConnAck);
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    assert!(!connack.session_present);
    let p = &connack.properties;
    assert_eq!(p.receive_maximum, Some(20));
    assert_eq!(p.maximum_packet_size, Some(4096));
    assert_eq!(p.topic_alias_maximum, Some(7));
    assert_eq!(
        p.session_expiry_interval,
        Some(600),
        "capped by max_session_expiry"
    );
    assert_eq!(p.assigned_client_identifier.as_deref(), Some("gen-1"));
    assert_eq!(p.server_keep_alive, None, "keep alive 30 was not capped");
    assert!(c.session.is_connected());
    assert_eq!(c.session.session_expiry(), 600);
    // [MQTT-3.2.2-22]: without Server Keep Alive the client's value rules.
    assert_eq!(c.session.next_timeout(), Some(c.at(45)));
}

/// [MQTT-3.2.2-21]: Server Keep Alive is sent when the server overrides the client's value,
/// and the server then enforces its own value.
#[test]
fn v5_server_keep_alive_when_capped_or_zero() {
    let config = SessionConfig {
        max_keep_alive: 60,
        ..SessionConfig::default()
    };
    for (requested, expected_property, deadline) in [
        (120, Some(60), 90),
        (0, Some(60), 90),
        (30, None, 45),
        (60, None, 90),
    ] {
        let mut c = Client::new(V5, config.clone());
        let mut conn = connect(V5);
        conn.keep_alive = requested;
        c.send(Packet::Connect(Box::new(conn)));
        c.events();
        c.accept(ConnectAccepted::default());
        let connack = expect!(c.received_one(), ConnAck);
        assert_eq!(
            connack.properties.server_keep_alive, expected_property,
            "requested {requested}"
        );
        assert_eq!(
            c.session.next_timeout(),
            Some(c.at(deadline)),
            "requested {requested}"
        );
    }
}

/// 3.1.1 §3.2: CONNACK is exactly four bytes, no properties whatever the config.
#[test]
fn v311_connack_has_no_properties() {
    let config = SessionConfig {
        max_session_expiry: 10,
        topic_alias_maximum: 5,
        ..SessionConfig::default()
    };
    for protocol in [V311, Protocol::V31] {
        let mut c = Client::new(protocol, config.clone());
        let mut conn = connect(protocol);
        conn.clean_start = false;
        conn.keep_alive = 0;
        c.send(Packet::Connect(Box::new(conn)));
        assert!(matches!(c.events().as_slice(), [Event::Connect(_)]));
        assert_eq!(c.session.protocol(), protocol);
        c.accept(ConnectAccepted {
            session_present: true,
            assigned_client_id: Some("ignored".into()),
            ..ConnectAccepted::default()
        });
        assert_eq!(c.raw(), [0x20, 0x02, 0x01, 0x00], "{protocol:?}");
        assert_eq!(c.session.next_timeout(), None);
    }
}

/// [MQTT-3.1.4-6] / [MQTT-3.2.0-1]: packets pipelined after CONNECT wait for the host's
/// decision; they are processed only once the connection is accepted.
#[test]
fn pipelined_publish_is_processed_only_after_accept() {
    let mut c = Client::new(V5, SessionConfig::default());
    let mut bytes = c.encode(&Packet::Connect(Box::new(connect(V5))));
    bytes.extend_from_slice(&c.encode(&Packet::Publish(publish("a/b", QoS::AtLeastOnce, 9))));
    c.feed_at(&bytes, 0);

    assert!(matches!(c.events().as_slice(), [Event::Connect(_)]));
    // Processing again while the host thinks changes nothing.
    c.session.process(c.at(1));
    assert!(c.events().is_empty());
    assert!(c.raw().is_empty());
    assert!(c.session.buffered_input() > 0, "the PUBLISH stays buffered");

    c.accept(ConnectAccepted::default());
    let connack = expect!(c.received_one(), ConnAck);
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    assert!(
        c.events().is_empty(),
        "accept_connect itself routes nothing"
    );

    c.session.process(c.at(1));
    let events = c.events();
    let publishes = publish_events(&events);
    assert_eq!(publishes.len(), 1, "{events:?}");
    assert_eq!(publishes[0].0.topic, "a/b");
    assert_eq!(publishes[0].1, 9);
    c.session
        .publish_done(QoS::AtLeastOnce, 9, ReasonCode::SUCCESS, None);
    assert_eq!(expect!(c.received_one(), PubAck).packet_id, 9);
}

/// An idle connection holds no buffers: input, events and output are released once consumed,
/// so that tens of thousands of idle clients cost little memory.
#[test]
fn idle_session_holds_no_buffers() {
    let mut c = connected(V5);
    // Read into a buffer of exactly its own size, as the broker reads.
    let bytes = c.encode(&Packet::Publish(publish("a/b", QoS::AtMostOnce, 0)));
    c.session.feed_buf(BytesMut::from(&bytes[..]));
    c.session.process(c.at(0));
    let events = c.events();
    let published = publish_events(&events);
    assert_eq!(published.len(), 1);
    assert!(
        published[0].0.payload.is_unique(),
        "the payload is all that is left of the read buffer"
    );
    c.send(Packet::PingReq);
    assert!(matches!(c.received_one(), Packet::PingResp));
    assert_eq!(c.session.rx.capacity(), 0, "read buffer released");
    assert_eq!(c.session.events.capacity(), 0, "event queue released");
    assert_eq!(c.session.tx.capacity(), 0, "write buffer handed over whole");
}

/// `feed_buf` takes the caller's buffer over; a packet split across buffers still decodes, and
/// a partial packet stays buffered until the rest arrives.
#[test]
fn feed_buf_joins_split_packets() {
    let mut c = connected(V5);
    let mut bytes = c.encode(&Packet::Publish(publish("a/b", QoS::AtMostOnce, 0)));
    bytes.extend_from_slice(&c.encode(&Packet::Publish(publish("c/d", QoS::AtMostOnce, 0))));
    let rest = bytes.split_off(bytes.len() - 3);
    c.session.feed_buf(bytes);
    c.session.process(c.at(0));
    let events = c.events();
    let topics: Vec<&str> = publish_events(&events)
        .iter()
        .map(|(m, _)| m.topic.as_str())
        .collect();
    assert_eq!(topics, ["a/b"]);
    assert!(c.session.buffered_input() > 0, "the second PUBLISH waits");
    c.session.feed_buf(rest);
    c.session.process(c.at(0));
    let events = c.events();
    let topics: Vec<&str> = publish_events(&events)
        .iter()
        .map(|(m, _)| m.topic.as_str())
        .collect();
    assert_eq!(topics, ["c/d"]);
    assert_eq!(c.session.buffered_input(), 0);
}

/// [MQTT-3.2.2-6/7], [MQTT-3.1.4-6]: a refused CONNECT gets a CONNACK with the code, the
/// connection closes, and pipelined data is never processed.
#[test]
fn reject_connect_sends_connack_and_closes() {
    let mut c = Client::new(V5, SessionConfig::default());
    let mut bytes = c.encode(&Packet::Connect(Box::new(connect(V5))));
    bytes.extend_from_slice(&c.encode(&Packet::Publish(publish("a", QoS::AtMostOnce, 0))));
    c.feed_at(&bytes, 0);
    assert!(matches!(c.events().as_slice(), [Event::Connect(_)]));

    c.session
        .reject_connect(ReasonCode::NOT_AUTHORIZED, Some("go away".into()));
    let connack = expect!(c.received_one(), ConnAck);
    assert_eq!(connack.code, ReasonCode::NOT_AUTHORIZED);
    assert!(!connack.session_present);
    assert_eq!(connack.properties.reason_string.as_deref(), Some("go away"));
    assert_only_closed(&c.events(), CloseReason::Server(ReasonCode::NOT_AUTHORIZED));
    c.session.process(c.at(1));
    assert!(
        c.events().is_empty(),
        "pipelined PUBLISH must not be routed"
    );
    assert!(c.raw().is_empty());

    // 3.1.1: the code is mapped to a return code (4 = bad user name or password).
    let mut c = Client::new(V311, SessionConfig::default());
    c.send(Packet::Connect(Box::new(connect(V311))));
    c.events();
    c.session
        .reject_connect(ReasonCode::BAD_USER_NAME_OR_PASSWORD, Some("no".into()));
    assert_eq!(c.raw(), [0x20, 0x02, 0x00, 0x04]);
    assert_only_closed(
        &c.events(),
        CloseReason::Server(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
    );
}

/// 3.1.1 [MQTT-3.1.3-8]: empty client id with CleanSession 0 → CONNACK return code 2, close.
#[test]
fn v311_empty_client_id_needs_clean_session() {
    let mut c = Client::new(V311, SessionConfig::default());
    let mut conn = connect(V311);
    conn.client_id = String::new();
    conn.clean_start = false;
    c.send(Packet::Connect(Box::new(conn)));
    assert_eq!(c.raw(), [0x20, 0x02, 0x00, 0x02]);
    assert_only_closed(
        &c.events(),
        CloseReason::Server(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
    );

    // With CleanSession 1 it is the host's to assign an id.
    let mut c = Client::new(V311, SessionConfig::default());
    let mut conn = connect(V311);
    conn.client_id = String::new();
    c.send(Packet::Connect(Box::new(conn)));
    assert!(matches!(c.events().as_slice(), [Event::Connect(_)]));
    assert!(c.raw().is_empty());
}

/// [MQTT-3.1.0-1]: the first packet must be CONNECT; anything else closes without a reply.
#[test]
fn first_packet_must_be_connect() {
    for packet in [
        Packet::PingReq,
        Packet::Publish(publish("a", QoS::AtMostOnce, 0)),
    ] {
        let name = packet.name();
        let mut c = Client::new(V311, SessionConfig::default());
        c.send(packet);
        assert_only_closed(
            &c.events(),
            CloseReason::Violation(ProtocolError::FirstPacketNotConnect(name)),
        );
        assert!(c.raw().is_empty());
        assert!(c.session.is_closed());
    }
}

/// [MQTT-3.1.0-2]: a second CONNECT is a Protocol Error (v5: DISCONNECT 0x82).
#[test]
fn second_connect_is_a_protocol_error() {
    let mut c = connected(V5);
    c.send(Packet::Connect(Box::new(connect(V5))));
    assert_disconnect(&mut c, ReasonCode::PROTOCOL_ERROR);
    assert_only_closed(
        &c.events(),
        CloseReason::Violation(ProtocolError::SecondConnect),
    );

    // 3.1.1 closes without a packet.
    let mut c = connected(V311);
    c.send(Packet::Connect(Box::new(connect(V311))));
    assert!(c.raw().is_empty());
    assert_only_closed(
        &c.events(),
        CloseReason::Violation(ProtocolError::SecondConnect),
    );
}

/// [MQTT-3.1.2-2] (and 3.1.1 [MQTT-3.1.2-2]): an unsupported protocol level gets CONNACK
/// 0x84, which a client of unknown version must be able to read, so it goes out as the 3.1.1
/// return code 1.
#[test]
fn unsupported_protocol_level_gets_return_code_1() {
    let mut c = Client::new(V5, SessionConfig::default());
    let mut bytes = c.encode(&Packet::Connect(Box::new(connect(V5))));
    assert_eq!(&bytes[2..9], b"\x00\x04MQTT\x05");
    bytes[8] = 6;
    c.feed_at(&bytes, 0);
    assert_eq!(c.raw(), [0x20, 0x02, 0x00, 0x01]);
    assert_only_closed(
        &c.events(),
        CloseReason::Violation(ProtocolError::UnsupportedProtocolLevel(6)),
    );
}

// ------------------------------------------------------------------ keep alive

/// [MQTT-3.1.2-22]: close after one and a half keep alive periods without a packet; v5 sends
/// DISCONNECT 0x8D first. Every received packet restarts the period.
#[test]
fn keep_alive_deadline_and_timeout() {
    let mut c = connected_with(V5, SessionConfig::default(), |conn| conn.keep_alive = 10);
    assert_eq!(c.session.next_timeout(), Some(c.at(15)));

    c.session.handle_timeout(c.at(14));
    assert!(c.events().is_empty());
    assert!(c.raw().is_empty());
    assert!(c.session.is_connected());

    c.send_at(Packet::PingReq, 10);
    assert_eq!(c.received_one(), Packet::PingResp);
    assert_eq!(c.session.next_timeout(), Some(c.at(25)));
    c.session.handle_timeout(c.at(15));
    c.session.handle_timeout(c.at(24));
    assert!(c.session.is_connected());
    assert!(c.events().is_empty());

    c.session.handle_timeout(c.at(25));
    assert_disconnect(&mut c, ReasonCode::KEEP_ALIVE_TIMEOUT);
    assert_only_closed(&c.events(), CloseReason::KeepAliveTimeout);
    assert_eq!(c.session.next_timeout(), None);
}

/// 3.1.1 [MQTT-3.1.2-24]: same deadline, closed without any packet.
#[test]
fn v311_keep_alive_timeout_closes_silently() {
    let mut c = connected_with(V311, SessionConfig::default(), |conn| conn.keep_alive = 4);
    assert_eq!(c.session.next_timeout(), Some(c.at(6)));
    c.send_at(Packet::Publish(publish("a", QoS::AtMostOnce, 0)), 5);
    c.events();
    assert_eq!(c.session.next_timeout(), Some(c.at(11)));
    c.session.handle_timeout(c.at(11));
    assert!(c.raw().is_empty());
    assert_only_closed(&c.events(), CloseReason::KeepAliveTimeout);
}

/// §3.1.2.10: keep alive 0 switches the mechanism off.
#[test]
fn keep_alive_zero_never_times_out() {
    for protocol in [V5, V311] {
        let mut c = connected(protocol);
        assert_eq!(c.session.next_timeout(), None);
        c.session.handle_timeout(c.at(1_000_000));
        assert!(c.session.is_connected());
        assert!(c.events().is_empty());
        assert!(c.raw().is_empty());
    }
}

// ------------------------------------------------------------------ inbound QoS

/// [MQTT-4.3.2-2] / [MQTT-3.3.4-1]: QoS 1 is acknowledged with PUBACK, after the host routed it.
#[test]
fn inbound_qos1_is_acked_after_publish_done() {
    for protocol in [V5, V311] {
        let mut c = connected(protocol);
        c.session.set_origin(77);
        c.send(Packet::Publish(publish("s/1", QoS::AtLeastOnce, 7)));
        let events = c.events();
        let publishes = publish_events(&events);
        assert_eq!(publishes.len(), 1, "{events:?}");
        let (m, id) = publishes[0];
        assert_eq!(
            (m.topic.as_str(), &m.payload[..], m.qos, id),
            ("s/1", &b"hello"[..], QoS::AtLeastOnce, 7)
        );
        assert_eq!(m.origin, 77);
        assert!(c.raw().is_empty(), "no PUBACK before the host answers");

        c.session
            .publish_done(QoS::AtLeastOnce, 7, ReasonCode::SUCCESS, None);
        let puback = expect!(c.received_one(), PubAck);
        assert_eq!(puback.packet_id, 7);
        assert_eq!(puback.code, ReasonCode::SUCCESS);
    }
}

/// §3.4.2.1: a v5 PUBACK carries the host's refusal code.
#[test]
fn v5_refused_publish_puback_carries_the_code() {
    let mut c = connected(V5);
    c.send(Packet::Publish(publish("s/1", QoS::AtLeastOnce, 7)));
    c.events();
    c.session.publish_done(
        QoS::AtLeastOnce,
        7,
        ReasonCode::NOT_AUTHORIZED,
        Some("nope".into()),
    );
    let puback = expect!(c.received_one(), PubAck);
    assert_eq!(puback.packet_id, 7);
    assert_eq!(puback.code, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(puback.properties.reason_string.as_deref(), Some("nope"));
}

/// 3.1.1 [MQTT-3.3.5-2]: no way to say no, so a refused PUBLISH gets a plain acknowledgement.
#[test]
fn v311_refused_publish_gets_a_plain_puback() {
    let mut c = connected(V311);
    c.send(Packet::Publish(publish("s/1", QoS::AtLeastOnce, 7)));
    c.events();
    c.session.publish_done(
        QoS::AtLeastOnce,
        7,
        ReasonCode::NOT_AUTHORIZED,
        Some("nope".into()),
    );
    assert_eq!(c.raw(), [0x40, 0x02, 0x00, 0x07]);
    assert!(c.session.is_connected());
}

/// [MQTT-4.3.3-10/11/12]: PUBREC; a resent PUBLISH before PUBREL is acknowledged again but not
/// routed again; PUBREL → PUBCOMP; afterwards the id starts a new message.
#[test]
fn inbound_qos2_exactly_once() {
    for protocol in [V5, V311] {
        let mut c = connected(protocol);
        c.send(Packet::Publish(publish("q/2", QoS::ExactlyOnce, 3)));
        assert_eq!(publish_events(&c.events()).len(), 1);

        // Resent while the host still holds it: nothing routed, nothing written yet.
        let mut dup = publish("q/2", QoS::ExactlyOnce, 3);
        dup.dup = true;
        c.send(Packet::Publish(dup.clone()));
        assert!(c.events().is_empty());
        assert!(c.raw().is_empty());

        c.session
            .publish_done(QoS::ExactlyOnce, 3, ReasonCode::SUCCESS, None);
        let pubrec = expect!(c.received_one(), PubRec);
        assert_eq!((pubrec.packet_id, pubrec.code), (3, ReasonCode::SUCCESS));

        // Resent after PUBREC: PUBREC again, still not routed.
        c.send(Packet::Publish(dup.clone()));
        assert!(c.events().is_empty(), "{protocol:?}: duplicate routed");
        assert_eq!(expect!(c.received_one(), PubRec).packet_id, 3);

        c.send(Packet::PubRel(ack(3)));
        let pubcomp = expect!(c.received_one(), PubComp);
        assert_eq!((pubcomp.packet_id, pubcomp.code), (3, ReasonCode::SUCCESS));
        assert!(c.events().is_empty());

        // [MQTT-4.3.3-12]: the id is free again.
        c.send(Packet::Publish(publish("q/2", QoS::ExactlyOnce, 3)));
        assert_eq!(publish_events(&c.events()).len(), 1, "{protocol:?}");
        assert!(c.session.is_connected());
    }
}

/// [MQTT-4.3.3-9]: after a PUBREC ≥ 0x80 the same id is a new Application Message.
#[test]
fn v5_refused_qos2_forgets_the_packet_id() {
    let mut c = connected(V5);
    c.send(Packet::Publish(publish("q/2", QoS::ExactlyOnce, 4)));
    c.events();
    c.session
        .publish_done(QoS::ExactlyOnce, 4, ReasonCode::QUOTA_EXCEEDED, None);
    let pubrec = expect!(c.received_one(), PubRec);
    assert_eq!(
        (pubrec.packet_id, pubrec.code),
        (4, ReasonCode::QUOTA_EXCEEDED)
    );
    c.send(Packet::Publish(publish("q/2", QoS::ExactlyOnce, 4)));
    assert_eq!(publish_events(&c.events()).len(), 1);
}

/// §3.7.2.1: PUBREL for an id we do not hold → PUBCOMP 0x92 (3.1.1: a plain PUBCOMP).
#[test]
fn pubrel_for_unknown_id() {
    let mut c = connected(V5);
    c.send(Packet::PubRel(ack(42)));
    let pubcomp = expect!(c.received_one(), PubComp);
    assert_eq!(pubcomp.packet_id, 42);
    assert_eq!(pubcomp.code, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
    assert!(c.session.is_connected());

    let mut c = connected(V311);
    c.send(Packet::PubRel(ack(42)));
    assert_eq!(c.raw(), [0x70, 0x02, 0x00, 42]);
}

/// §3.3.4: more than Receive Maximum unacknowledged QoS>0 PUBLISHes → DISCONNECT 0x93.
/// QoS 0 does not count; PUBREC'd QoS 2 counts until PUBCOMP.
#[test]
fn receive_maximum_exceeded() {
    let config = SessionConfig {
        receive_maximum: 2,
        ..SessionConfig::default()
    };
    let mut c = connected_with(V5, config.clone(), |_| {});
    c.send(Packet::Publish(publish("a", QoS::AtLeastOnce, 1)));
    c.send(Packet::Publish(publish("a", QoS::ExactlyOnce, 2)));
    c.send(Packet::Publish(publish("a", QoS::AtMostOnce, 0)));
    assert_eq!(publish_events(&c.events()).len(), 3);
    // QoS 1 acknowledged: one slot back. QoS 2 PUBREC'd: still counts.
    c.session
        .publish_done(QoS::AtLeastOnce, 1, ReasonCode::SUCCESS, None);
    c.session
        .publish_done(QoS::ExactlyOnce, 2, ReasonCode::SUCCESS, None);
    assert_eq!(c.received().len(), 2);
    c.send(Packet::Publish(publish("a", QoS::AtLeastOnce, 3)));
    assert_eq!(publish_events(&c.events()).len(), 1);
    assert!(c.raw().is_empty());

    c.send(Packet::Publish(publish("a", QoS::AtLeastOnce, 4)));
    assert_disconnect(&mut c, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
    assert_only_closed(
        &c.events(),
        CloseReason::Violation(ProtocolError::ReceiveMaximumExceeded(2)),
    );

    // 3.1.1 has no Receive Maximum to break.
    let mut c = connected_with(V311, config, |_| {});
    for id in 1..=3 {
        c.send(Packet::Publish(publish("a", QoS::AtLeastOnce, id)));
    }
    assert_eq!(publish_events(&c.events()).len(), 3);
    assert!(c.session.is_connected());
}

// ------------------------------------------------------------------ outbound

/// [MQTT-2.2.1-4]: QoS 0 has no identifier; QoS 1/2 get fresh non-zero ones and stay in flight.
#[test]
fn deliver_at_each_qos() {
    let mut c = connected(V5);
    let m = message("out/1", b"payload");
    let mut d0 = delivery(&m, QoS::AtMostOnce);
    d0.retain = true;
    d0.subscription_ids = vec![5, 9];
    assert!(c.deliver(d0, 0).is_ok());
    assert!(c.deliver(delivery(&m, QoS::AtLeastOnce), 0).is_ok());
    assert!(c.deliver(delivery(&m, QoS::ExactlyOnce), 0).is_ok());
    let sent: Vec<Publish> = c
        .received()
        .into_iter()
        .map(|p| expect!(p, Publish))
        .collect();
    assert_eq!(sent.len(), 3);
    let ids: Vec<(QoS, u16)> = sent.iter().map(|p| (p.qos, p.packet_id)).collect();
    assert_eq!(
        ids,
        [
            (QoS::AtMostOnce, 0),
            (QoS::AtLeastOnce, 1),
            (QoS::ExactlyOnce, 2)
        ]
    );
    for p in &sent {
        assert_eq!(p.topic, "out/1");
        assert_eq!(&p.payload[..], b"payload");
        assert!(!p.dup, "[MQTT-3.3.1-3]: first sends are not duplicates");
    }
    assert!(sent[0].retain);
    // [MQTT-3.3.4-3]: subscription identifiers of the matching subscriptions.
    assert_eq!(sent[0].properties.subscription_identifiers, [5, 9]);
    assert_eq!(c.session.inflight_len(), 2);
}

/// [MQTT-3.3.4-9]: at most Receive Maximum unacknowledged QoS>0 PUBLISHes (further bounded by
/// `max_inflight`); PUBACK frees a slot and says so.
#[test]
fn outbound_window_is_min_of_receive_maximum_and_max_inflight() {
    for (client_rm, max_inflight) in [(3, 2), (2, 10)] {
        let config = SessionConfig {
            max_inflight,
            ..SessionConfig::default()
        };
        let mut c = connected_with(V5, config, |conn| {
            conn.properties.receive_maximum = Some(client_rm)
        });
        let m = message("w", b"x");
        assert!(c.deliver(delivery(&m, QoS::AtLeastOnce), 0).is_ok());
        assert!(c.deliver(delivery(&m, QoS::ExactlyOnce), 0).is_ok());
        assert_eq!(c.received().len(), 2);
        assert!(!c.session.window_open());

        let refused = c
            .deliver(delivery(&m, QoS::AtLeastOnce), 0)
            .expect_err("window is full");
        assert!(Arc::ptr_eq(&refused.message, &m), "the delivery comes back");
        assert!(c.raw().is_empty());
        assert_eq!(c.session.inflight_len(), 2);
        // QoS 0 is not windowed ([MQTT-3.3.4-10]: only QoS>0 PUBLISHes wait).
        assert!(c.deliver(delivery(&m, QoS::AtMostOnce), 0).is_ok());
        assert_eq!(expect!(c.received_one(), Publish).qos, QoS::AtMostOnce);

        c.send(Packet::PubAck(ack(1)));
        assert!(matches!(c.events().as_slice(), [Event::WindowOpened]));
        assert!(c.session.window_open());
        assert!(c.deliver(delivery(&m, QoS::AtLeastOnce), 0).is_ok());
        assert_eq!(expect!(c.received_one(), Publish).packet_id, 3);
        assert!(!c.session.window_open());
    }
}

/// [MQTT-4.3.3-3/4/5] sender side: PUBREC → PUBREL, the slot is held until PUBCOMP
/// ([MQTT-3.3.4-9]); a PUBREC ≥ 0x80 ends the exchange and frees it.
#[test]
fn outbound_qos2_flow() {
    let mut c = connected_with(V5, SessionConfig::default(), |conn| {
        conn.properties.receive_maximum = Some(1)
    });
    let m = message("q2", b"x");
    assert!(c.deliver(delivery(&m, QoS::ExactlyOnce), 0).is_ok());
    assert_eq!(expect!(c.received_one(), Publish).packet_id, 1);

    // A PUBACK does not complete a QoS 2 exchange.
    c.send(Packet::PubAck(ack(1)));
    assert!(c.events().is_empty());
    assert_eq!(c.session.inflight_len(), 1);

    c.send(Packet::PubRec(ack(1)));
    let pubrel = expect!(c.received_one(), PubRel);
    assert_eq!((pubrel.packet_id, pubrel.code), (1, ReasonCode::SUCCESS));
    assert!(c.events().is_empty());
    assert!(!c.session.window_open(), "PUBREC does not free the slot");
    assert!(c.deliver(delivery(&m, QoS::AtLeastOnce), 0).is_err());

    c.send(Packet::PubComp(ack(1)));
    assert!(matches!(c.events().as_slice(), [Event::WindowOpened]));
    assert_eq!(c.session.inflight_len(), 0);

    // Failed PUBREC: no PUBREL, slot freed.
    assert!(c.deliver(delivery(&m, QoS::ExactlyOnce), 0).is_ok());
    assert_eq!(expect!(c.received_one(), Publish).packet_id, 2);
    c.send(Packet::PubRec(PubResp {
        packet_id: 2,
        code: ReasonCode::QUOTA_EXCEEDED,
        properties: Properties::default(),
    }));
    assert!(c.raw().is_empty());
    assert!(matches!(c.events().as_slice(), [Event::WindowOpened]));
    assert_eq!(c.session.inflight_len(), 0);
}

/// [MQTT-2.2.1-4]: identifiers are never 0 and never one still in flight, across wrap-around.
#[test]
fn packet_ids_skip_zero_and_ids_in_flight() {
    let mut c = connected(V5);
    let m = message("ids", b"x");
    assert!(c.deliver(delivery(&m, QoS::AtLeastOnce), 0).is_ok()); // id 1, kept in flight
    c.session.state.next_packet_id = 65533;
    let mut ids = Vec::new();
    for _ in 0..3 {
        assert!(c.deliver(delivery(&m, QoS::AtLeastOnce), 0).is_ok());
    }
    for p in c.received() {
        ids.push(expect!(p, Publish).packet_id);
    }
    assert_eq!(ids, [1, 65534, 65535, 2]);
    assert_eq!(c.session.inflight_len(), 4);
}

/// A v5 client resuming (Clean Start 0) the session whose state was `state`.
fn resume(state: SessionState) -> Client {
    let mut b = Client::new(V5, SessionConfig::default());
    let mut conn = connect(V5);
    conn.clean_start = false;
    conn.properties.session_expiry_interval = Some(100);
    b.send(Packet::Connect(Box::new(conn)));
    b.events();
    b.accept(ConnectAccepted {
        session_present: true,
        restored: Some(state),
        ..ConnectAccepted::default()
    });
    b
}

/// A full 65535 window acknowledged out of order: every PUBACK finds its message (the
/// in-flight queue is indexed by packet id, not scanned), the holes it leaves do not disturb
/// the order of what remains, and resumption resends exactly the unacknowledged ones in order.
#[test]
fn a_full_window_acknowledged_out_of_order() {
    let mut a = connected(V5);
    let m = message("w", b"x");
    for _ in 0..u16::MAX {
        assert!(a.deliver(delivery(&m, QoS::AtLeastOnce), 0).is_ok());
    }
    assert!(!a.session.window_open());
    assert_eq!(a.received().len(), usize::from(u16::MAX));
    // Acknowledge every id except multiples of 1000, newest first.
    for id in (1..=u16::MAX).rev().filter(|id| id % 1000 != 0) {
        a.send(Packet::PubAck(ack(id)));
    }
    assert_eq!(a.events().len(), usize::from(u16::MAX) - 65);
    assert_eq!(a.session.inflight_len(), 65);
    // A duplicate PUBACK changes nothing.
    a.send(Packet::PubAck(ack(1)));
    assert!(a.events().is_empty());
    a.session.handle_network_closed();
    a.events();
    let state = a.session.take_state();

    let mut b = resume(state);
    let resent: Vec<u16> = b
        .received()
        .into_iter()
        .skip(1) // CONNACK
        .map(|p| expect!(p, Publish).packet_id)
        .collect();
    let expected: Vec<u16> = (1..=65).map(|k| k * 1000).collect();
    assert_eq!(resent, expected);
}

/// [MQTT-4.4.0-1], [MQTT-3.3.1-1], [MQTT-4.6.0-1]: on resumption, unacknowledged PUBLISHes go
/// out again with DUP=1 and PUBRELs are repeated, in their original order and identifiers.
#[test]
fn restored_session_resends_in_order() {
    let mut a = connected(V5);
    let (m1, m2, m3) = (
        message("r/1", b"1"),
        message("r/2", b"2"),
        message("r/3", b"3"),
    );
    assert!(a.deliver(delivery(&m1, QoS::AtLeastOnce), 0).is_ok());
    assert!(a.deliver(delivery(&m2, QoS::ExactlyOnce), 0).is_ok());
    assert!(a.deliver(delivery(&m3, QoS::ExactlyOnce), 0).is_ok());
    assert!(a.deliver(delivery(&m1, QoS::AtMostOnce), 0).is_ok());
    assert_eq!(a.received().len(), 4);
    a.send(Packet::PubRec(ack(3)));
    assert_eq!(expect!(a.received_one(), PubRel).packet_id, 3);
    a.session.handle_network_closed();
    assert_only_closed(&a.events(), CloseReason::NetworkClosed);
    let state = a.session.take_state();
    assert_eq!(state.inflight.len(), 3);

    let mut b = resume(state);
    let mut packets = b.received().into_iter();
    let connack = expect!(packets.next().unwrap(), ConnAck);
    assert!(connack.session_present);
    let p1 = expect!(packets.next().unwrap(), Publish);
    assert_eq!(
        (p1.packet_id, p1.qos, p1.dup, p1.topic.as_str()),
        (1, QoS::AtLeastOnce, true, "r/1")
    );
    let p2 = expect!(packets.next().unwrap(), Publish);
    assert_eq!(
        (p2.packet_id, p2.qos, p2.dup, p2.topic.as_str()),
        (2, QoS::ExactlyOnce, true, "r/2")
    );
    assert_eq!(expect!(packets.next().unwrap(), PubRel).packet_id, 3);
    assert_eq!(packets.next(), None, "QoS 0 is not resent");

    // New messages do not reuse the identifiers in flight.
    assert!(b.deliver(delivery(&m1, QoS::AtLeastOnce), 0).is_ok());
    assert_eq!(expect!(b.received_one(), Publish).packet_id, 4);
    // And the restored exchanges complete.
    b.send(Packet::PubAck(ack(1)));
    b.send(Packet::PubRec(ack(2)));
    assert_eq!(expect!(b.received_one(), PubRel).packet_id, 2);
    b.send(Packet::PubComp(ack(3)));
    b.send(Packet::PubComp(ack(2)));
    assert_eq!(b.events().len(), 3);
    assert_eq!(b.session.inflight_len(), 1);
}

// ------------------------------------------------------------------ message expiry

/// [MQTT-3.3.2-5]: an expired message is not delivered (and reported as done).
/// [MQTT-3.3.2-6]: otherwise the interval sent is what is left of it.
#[test]
fn message_expiry_on_delivery() {
    let mut c = connected_with(V5, SessionConfig::default(), |conn| {
        conn.properties.receive_maximum = Some(1)
    });
    let mut m = message("exp", b"x");
    Arc::make_mut(&mut m).expires_at = Some(c.at(100));

    assert!(c.deliver(delivery(&m, QoS::AtLeastOnce), 100).is_ok());
    assert!(c.deliver(delivery(&m, QoS::AtMostOnce), 150).is_ok());
    assert!(c.raw().is_empty());
    assert_eq!(c.session.inflight_len(), 0);
    assert!(c.session.window_open());

    assert!(c.deliver(delivery(&m, QoS::AtLeastOnce), 30).is_ok());
    let p = expect!(c.received_one(), Publish);
    assert_eq!(p.properties.message_expiry_interval, Some(70));

    // A message without expiry carries no interval.
    assert!(
        c.deliver(delivery(&message("exp", b"x"), QoS::AtMostOnce), 30)
            .is_ok()
    );
    assert_eq!(
        expect!(c.received_one(), Publish)
            .properties
            .message_expiry_interval,
        None
    );
}

/// §3.3.2.3.3: an inbound interval becomes an absolute deadline (capped by config).
#[test]
fn inbound_message_expiry_becomes_a_deadline() {
    let config = SessionConfig {
        max_message_expiry: Some(50),
        ..SessionConfig::default()
    };
    let mut c = connected_with(V5, config, |_| {});
    let mut p = publish("e", QoS::AtMostOnce, 0);
    p.properties.message_expiry_interval = Some(20);
    c.send_at(Packet::Publish(p.clone()), 10);
    p.properties.message_expiry_interval = Some(500);
    c.send_at(Packet::Publish(p.clone()), 10);
    p.properties.message_expiry_interval = None;
    c.send_at(Packet::Publish(p), 10);
    let events = c.events();
    let expiries: Vec<_> = publish_events(&events)
        .iter()
        .map(|(m, _)| (m.expires_at, m.properties.message_expiry_interval))
        .collect();
    assert_eq!(
        expiries,
        [
            (Some(c.at(30)), None),
            (Some(c.at(60)), None),
            (Some(c.at(60)), None)
        ]
    );
}

// ------------------------------------------------------------------ Maximum Packet Size

/// [MQTT-3.1.2-24/25]: a PUBLISH larger than the client's Maximum Packet Size is discarded as
/// if sent; it takes no slot in the window.
#[test]
fn message_larger_than_client_maximum_is_dropped() {
    let mut c = connected_with(V5, SessionConfig::default(), |conn| {
        conn.properties.maximum_packet_size = Some(64);
        conn.properties.receive_maximum = Some(1);
    });
    let big = message("big", &[b'x'; 100]);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        assert!(c.deliver(delivery(&big, qos), 0).is_ok(), "{qos:?}");
    }
    assert!(c.raw().is_empty());
    assert_eq!(c.session.inflight_len(), 0);
    assert!(c.session.window_open());

    let small = message("small", b"x");
    assert!(c.deliver(delivery(&small, QoS::AtLeastOnce), 0).is_ok());
    let p = expect!(c.received_one(), Publish);
    assert_eq!(p.topic, "small");
    assert_eq!(c.session.inflight_len(), 1);
}

/// [MQTT-3.3.2-17/18]: User Properties of a forwarded PUBLISH go out unaltered; if the PUBLISH
/// is then too large, [MQTT-3.1.2-25] discards it. Unlike the acknowledgements (§3.4.2.2.2 ...),
/// PUBLISH has no "may omit User Properties to fit" rule.
#[test]
fn publish_user_properties_are_never_shed_to_fit() {
    let mut plain = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "up".into(),
        packet_id: 1,
        // Large enough that the client's limit leaves room for the CONNACK.
        payload: Bytes::from_static(&[b'x'; 64]),
        properties: Properties::default(),
    };
    let fits_without = codec::encoded_len(&Packet::Publish(plain.clone()), V5);
    plain.properties.user_properties = vec![("k".into(), "v".repeat(40))];
    assert!(codec::encoded_len(&Packet::Publish(plain.clone()), V5) > fits_without);

    let mut c = connected_with(V5, SessionConfig::default(), |conn| {
        conn.properties.maximum_packet_size = Some(fits_without as u32)
    });
    let mut m = message("up", &[b'x'; 64]);
    Arc::make_mut(&mut m).properties = plain.properties.clone();
    // Control: the same message without User Properties fits exactly and is sent.
    assert!(
        c.deliver(delivery(&message("up", &[b'x'; 64]), QoS::AtLeastOnce), 0)
            .is_ok()
    );
    let control = expect!(c.received_one(), Publish);
    assert_eq!(control.packet_id, 1);
    c.send(Packet::PubAck(ack(1)));
    c.events();

    assert!(c.deliver(delivery(&m, QoS::AtLeastOnce), 0).is_ok());
    let sent = c.received();
    assert!(
        sent.is_empty(),
        "a PUBLISH was forwarded with its User Properties removed: {sent:?}"
    );
    assert_eq!(c.session.inflight_len(), 0);
}

/// [MQTT-3.1.2-25] on resumption: a restored message too large for the new connection's
/// Maximum Packet Size is discarded as if it had been sent and acknowledged, and must not keep
/// a slot of the window forever.
#[test]
fn restored_message_too_large_for_new_connection_frees_its_slot() {
    let mut a = connected(V5);
    let big = message("big", &[b'x'; 200]);
    let small = message("small", b"x");
    assert!(a.deliver(delivery(&big, QoS::AtLeastOnce), 0).is_ok());
    assert!(a.deliver(delivery(&small, QoS::AtLeastOnce), 0).is_ok());
    assert_eq!(a.received().len(), 2);
    let state = a.session.take_state();

    let mut b = Client::new(V5, SessionConfig::default());
    let mut conn = connect(V5);
    conn.clean_start = false;
    conn.properties.maximum_packet_size = Some(100);
    conn.properties.receive_maximum = Some(2);
    b.send(Packet::Connect(Box::new(conn)));
    b.events();
    b.accept(ConnectAccepted {
        session_present: true,
        restored: Some(state),
        ..ConnectAccepted::default()
    });
    let packets = b.received();
    assert_eq!(packets.len(), 2, "{packets:?}");
    let p = expect!(packets[1].clone(), Publish);
    assert_eq!((p.packet_id, p.topic.as_str(), p.dup), (2, "small", true));
    assert_eq!(
        b.session.inflight_len(),
        1,
        "the discarded message still holds a window slot it can never get back"
    );
    assert!(b.session.window_open());
}

// ------------------------------------------------------------------ topic aliases

/// §3.3.2.3.4, [MQTT-3.3.2-12]: an alias set with a topic stands for it afterwards.
#[test]
fn client_topic_alias_is_set_then_resolved() {
    let mut c = connected(V5);
    let mut p = publish("sensors/temp", QoS::AtMostOnce, 0);
    p.properties.topic_alias = Some(3);
    c.send(Packet::Publish(p.clone()));
    p.topic = String::new();
    c.send(Packet::Publish(p.clone()));
    // Re-pointing the alias.
    p.topic = "sensors/hum".into();
    c.send(Packet::Publish(p.clone()));
    p.topic = String::new();
    c.send(Packet::Publish(p));

    let events = c.events();
    let publishes = publish_events(&events);
    let topics: Vec<&str> = publishes.iter().map(|(m, _)| m.topic.as_str()).collect();
    assert_eq!(
        topics,
        ["sensors/temp", "sensors/temp", "sensors/hum", "sensors/hum"]
    );
    // The alias is a property of the connection, not of the message routed on.
    assert!(
        publishes
            .iter()
            .all(|(m, _)| m.properties.topic_alias.is_none())
    );
    assert!(c.session.is_connected());
}

/// §3.3.2.3.4: an empty topic with an alias never set → DISCONNECT 0x94.
#[test]
fn unknown_client_topic_alias_is_0x94() {
    let mut c = connected(V5);
    let mut p = publish("", QoS::AtLeastOnce, 1);
    p.properties.topic_alias = Some(2);
    c.send(Packet::Publish(p));
    assert_disconnect(&mut c, ReasonCode::TOPIC_ALIAS_INVALID);
    assert_only_closed(
        &c.events(),
        CloseReason::Violation(ProtocolError::TopicAliasUnknown(2)),
    );
}

/// [MQTT-3.3.2-8/9], [MQTT-3.2.2-17/18]: alias 0 or above the advertised maximum → 0x94.
#[test]
fn client_topic_alias_out_of_range_is_0x94() {
    for (max, alias) in [(5, 6), (5, 0), (0, 1)] {
        let config = SessionConfig {
            topic_alias_maximum: max,
            ..SessionConfig::default()
        };
        let mut c = connected_with(V5, config, |_| {});
        let mut p = publish("t", QoS::AtMostOnce, 0);
        p.properties.topic_alias = Some(alias);
        c.send(Packet::Publish(p));
        assert_disconnect(&mut c, ReasonCode::TOPIC_ALIAS_INVALID);
        assert_only_closed(
            &c.events(),
            CloseReason::Violation(ProtocolError::TopicAliasInvalid { alias, max }),
        );
    }
}

/// [MQTT-3.1.2-26]: server→client aliases up to the client's Topic Alias Maximum: the first
/// PUBLISH on a topic carries topic and alias, later ones only the alias.
#[test]
fn server_topic_aliases_follow_the_client_maximum() {
    let mut c = connected_with(V5, SessionConfig::default(), |conn| {
        conn.properties.topic_alias_maximum = Some(2)
    });
    let (x1, x2, x3) = (
        message("x/1", b"a"),
        message("x/2", b"b"),
        message("x/3", b"c"),
    );
    for m in [&x1, &x1, &x2, &x3, &x2, &x3] {
        assert!(c.deliver(delivery(m, QoS::AtMostOnce), 0).is_ok());
    }
    let sent: Vec<(String, Option<u16>)> = c
        .received()
        .into_iter()
        .map(|p| {
            let p = expect!(p, Publish);
            (p.topic, p.properties.topic_alias)
        })
        .collect();
    let expected: Vec<(String, Option<u16>)> = vec![
        ("x/1".into(), Some(1)),
        ("".into(), Some(1)),
        ("x/2".into(), Some(2)),
        ("x/3".into(), None), // no alias left
        ("".into(), Some(2)),
        ("x/3".into(), None),
    ];
    assert_eq!(sent, expected);
}

/// [MQTT-3.1.2-27]: Topic Alias Maximum absent or 0 → no aliases at all.
#[test]
fn no_server_topic_aliases_when_client_maximum_is_zero() {
    for max in [None, Some(0)] {
        let mut c = connected_with(V5, SessionConfig::default(), |conn| {
            conn.properties.topic_alias_maximum = max
        });
        let m = message("t/1", b"a");
        for _ in 0..3 {
            assert!(c.deliver(delivery(&m, QoS::AtMostOnce), 0).is_ok());
        }
        for p in c.received() {
            let p = expect!(p, Publish);
            assert_eq!((p.topic.as_str(), p.properties.topic_alias), ("t/1", None));
        }
    }
}

// ------------------------------------------------------------------ SUBSCRIBE

fn subscribe(filters: &[(&str, SubOptions)], ids: Vec<u32>) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 10,
        filters: filters.iter().map(|(f, o)| ((*f).to_owned(), *o)).collect(),
        properties: Properties {
            subscription_identifiers: ids,
            ..Properties::default()
        },
    })
}

/// §3.8.2.1.2: one Subscription Identifier reaches the host; SUBACK answers by packet id
/// ([MQTT-3.8.4-2]).
#[test]
fn subscribe_with_an_identifier_reaches_the_host() {
    let mut c = connected(V5);
    c.send(subscribe(&[("a/+", SubOptions::default())], vec![5]));
    let events = c.events();
    match events.as_slice() {
        [Event::Subscribe(s)] => {
            assert_eq!(s.packet_id, 10);
            assert_eq!(s.properties.subscription_identifiers, [5]);
            assert_eq!(s.filters[0].0, "a/+");
        }
        other => panic!("expected Event::Subscribe, got {other:?}"),
    }
    c.session.send_suback(10, vec![ReasonCode::GRANTED_QOS_0]);
    let suback = expect!(c.received_one(), SubAck);
    assert_eq!(
        (suback.packet_id, suback.codes),
        (10, vec![ReasonCode::GRANTED_QOS_0])
    );
}

/// §3.8.2.1.2: two Subscription Identifiers (or 0) are a Protocol Error. The codec already
/// refuses them, so what reaches the session is a decode error: DISCONNECT 0x82.
#[test]
fn subscribe_with_two_identifiers_or_zero_is_a_protocol_error() {
    for (ids, error) in [
        (vec![1, 2], ProtocolError::DuplicateProperty(0x0B)),
        (
            vec![0],
            ProtocolError::InvalidPropertyValue { id: 0x0B, value: 0 },
        ),
    ] {
        let mut c = connected(V5);
        c.send(subscribe(&[("a", SubOptions::default())], ids));
        assert_disconnect(&mut c, ReasonCode::PROTOCOL_ERROR);
        assert_only_closed(&c.events(), CloseReason::Violation(error));
    }
}

/// §3.9.3 (v5): an invalid filter is answered per filter (0x8F) by the host, so the SUBSCRIBE
/// still reaches it. 3.1.1 has no such code: [MQTT-4.8.0-1] close the connection.
#[test]
fn invalid_filter_v5_reaches_the_host_v311_closes() {
    let filters = [
        ("good/#", SubOptions::default()),
        ("bad/#/x", SubOptions::default()),
    ];
    let mut c = connected(V5);
    c.send(subscribe(&filters, vec![]));
    let events = c.events();
    assert!(
        matches!(events.as_slice(), [Event::Subscribe(s)] if s.filters.len() == 2),
        "{events:?}"
    );
    c.session.send_suback(
        10,
        vec![ReasonCode::GRANTED_QOS_0, ReasonCode::TOPIC_FILTER_INVALID],
    );
    let suback = expect!(c.received_one(), SubAck);
    assert_eq!(suback.codes[1], ReasonCode::TOPIC_FILTER_INVALID);
    assert!(c.session.is_connected());

    let mut c = connected(V311);
    c.send(subscribe(&filters, vec![]));
    assert!(c.raw().is_empty());
    let events = c.events();
    assert!(
        matches!(
            events.as_slice(),
            [Event::Closed(CloseReason::Violation(
                ProtocolError::InvalidMultiLevelWildcard(_)
            ))]
        ),
        "{events:?}"
    );
}

/// [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error.
#[test]
fn no_local_on_shared_subscription_is_a_protocol_error() {
    let no_local = SubOptions {
        no_local: true,
        ..SubOptions::default()
    };
    // On an ordinary filter it is fine.
    let mut c = connected(V5);
    c.send(subscribe(&[("a/b", no_local)], vec![]));
    assert!(matches!(c.events().as_slice(), [Event::Subscribe(_)]));

    let mut c = connected(V5);
    c.send(subscribe(
        &[("a/b", SubOptions::default()), ("$share/g/a/b", no_local)],
        vec![],
    ));
    assert_disconnect(&mut c, ReasonCode::PROTOCOL_ERROR);
    assert_only_closed(
        &c.events(),
        CloseReason::Violation(ProtocolError::NoLocalOnSharedSubscription),
    );
}

/// [MQTT-3.10.4-4/5]: UNSUBSCRIBE reaches the host; 3.1.1 UNSUBACK carries no codes.
#[test]
fn unsubscribe_round_trip() {
    for protocol in [V5, V311] {
        let mut c = connected(protocol);
        c.send(Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            filters: vec!["a/+".into()],
            properties: Properties::default(),
        }));
        assert!(matches!(c.events().as_slice(), [Event::Unsubscribe(u)] if u.packet_id == 11));
        c.session
            .send_unsuback(11, vec![ReasonCode::NO_SUBSCRIPTION_EXISTED]);
        let unsuback = expect!(c.received_one(), UnsubAck);
        assert_eq!(unsuback.packet_id, 11);
        let expected = if protocol.is_v5() {
            vec![ReasonCode::NO_SUBSCRIPTION_EXISTED]
        } else {
            vec![]
        };
        assert_eq!(unsuback.codes, expected);
    }
}

// ------------------------------------------------------------------ DISCONNECT

fn disconnect_packet(code: ReasonCode, expiry: Option<u32>) -> Packet {
    Packet::Disconnect(Disconnect {
        code,
        properties: Properties {
            session_expiry_interval: expiry,
            ..Properties::default()
        },
    })
}

/// [MQTT-3.1.2-10], §3.14.2.1: 0x00 discards the will, 0x04 keeps it.
#[test]
fn client_disconnect_with_and_without_will() {
    for (protocol, code, with_will) in [
        (V5, ReasonCode::NORMAL_DISCONNECTION, false),
        (V5, ReasonCode::DISCONNECT_WITH_WILL, true),
        (V311, ReasonCode::NORMAL_DISCONNECTION, false),
    ] {
        let mut c = connected(protocol);
        c.send(disconnect_packet(code, None));
        assert!(c.raw().is_empty(), "the server does not answer DISCONNECT");
        let events = c.events();
        let reason = CloseReason::ClientDisconnect { code, with_will };
        assert_only_closed(&events, reason.clone());
        assert_eq!(reason.publishes_will(), with_will);
        assert!(c.session.is_closed());
    }
}

/// §3.14.2.2.2: a non-zero Session Expiry Interval on DISCONNECT after a CONNECT with 0 (or
/// none) is a Protocol Error (DISCONNECT 0x82; the will is then published).
#[test]
fn disconnect_setting_expiry_after_zero_is_a_protocol_error() {
    let mut c = connected(V5);
    c.send(disconnect_packet(
        ReasonCode::NORMAL_DISCONNECTION,
        Some(30),
    ));
    assert_disconnect(&mut c, ReasonCode::PROTOCOL_ERROR);
    let events = c.events();
    assert_only_closed(
        &events,
        CloseReason::Violation(ProtocolError::SessionExpiryAfterZero),
    );
    assert!(close_reason(&events).unwrap().publishes_will());
    assert_eq!(c.session.session_expiry(), 0);

    // Setting it to zero again is allowed.
    let mut c = connected(V5);
    c.send(disconnect_packet(ReasonCode::NORMAL_DISCONNECTION, Some(0)));
    assert!(matches!(
        close_reason(&c.events()),
        Some(CloseReason::ClientDisconnect { .. })
    ));
}

/// §3.14.2.2.2: otherwise DISCONNECT's Session Expiry Interval replaces the CONNECT's (capped).
#[test]
fn disconnect_updates_session_expiry() {
    let config = SessionConfig {
        max_session_expiry: 100,
        ..SessionConfig::default()
    };
    for (requested, expected) in [(0, 0), (50, 50), (500, 100)] {
        let mut c = connected_with(V5, config.clone(), |conn| {
            conn.properties.session_expiry_interval = Some(60)
        });
        assert_eq!(c.session.session_expiry(), 60);
        c.send(disconnect_packet(
            ReasonCode::NORMAL_DISCONNECTION,
            Some(requested),
        ));
        assert!(c.raw().is_empty());
        assert!(matches!(
            close_reason(&c.events()),
            Some(CloseReason::ClientDisconnect {
                with_will: false,
                ..
            })
        ));
        assert_eq!(
            c.session.session_expiry(),
            expected,
            "requested {requested}"
        );
    }
}

/// §3.14.2.2.2 compares with the CONNECT packet's value, not with the server's cap: a client
/// that asked for 3600 and was capped to 0 has not broken the rule by sending a non-zero
/// interval on DISCONNECT, and its normal disconnection must not turn into a violation (which
/// would publish its will, [MQTT-3.1.2-10]).
#[test]
fn disconnect_expiry_after_server_capped_connect_to_zero_is_not_a_violation() {
    let config = SessionConfig {
        max_session_expiry: 0,
        ..SessionConfig::default()
    };
    let mut c = connected_with(V5, config, |conn| {
        conn.properties.session_expiry_interval = Some(3600)
    });
    assert_eq!(c.session.session_expiry(), 0);
    c.send(disconnect_packet(
        ReasonCode::NORMAL_DISCONNECTION,
        Some(60),
    ));
    let sent = c.received();
    assert!(
        sent.is_empty(),
        "server answered a normal DISCONNECT with {sent:?}"
    );
    assert_only_closed(
        &c.events(),
        CloseReason::ClientDisconnect {
            code: ReasonCode::NORMAL_DISCONNECTION,
            with_will: false,
        },
    );
    assert_eq!(c.session.session_expiry(), 0, "still capped");
}

/// Server-initiated close: v5 gets DISCONNECT with the code ([MQTT-3.14.0-1]: only after a
/// successful CONNACK); `notify = false` is silent.
#[test]
fn server_disconnect() {
    let mut c = connected(V5);
    c.session.disconnect(
        ReasonCode::SESSION_TAKEN_OVER,
        Some("takeover".into()),
        true,
    );
    let d = expect!(c.received_one(), Disconnect);
    assert_eq!(d.code, ReasonCode::SESSION_TAKEN_OVER);
    assert_eq!(d.properties.reason_string.as_deref(), Some("takeover"));
    assert_eq!(
        d.properties.session_expiry_interval, None,
        "[MQTT-3.14.2-2]"
    );
    assert_only_closed(
        &c.events(),
        CloseReason::Server(ReasonCode::SESSION_TAKEN_OVER),
    );

    // Before CONNACK there is no DISCONNECT.
    let mut c = Client::new(V5, SessionConfig::default());
    c.send(Packet::Connect(Box::new(connect(V5))));
    c.events();
    c.session
        .disconnect(ReasonCode::SERVER_SHUTTING_DOWN, None, true);
    assert!(c.raw().is_empty());
    assert!(c.session.is_closed());
}

// ------------------------------------------------------------------ AUTH

fn auth(method: Option<&str>, data: &'static [u8]) -> Packet {
    Packet::Auth(Auth {
        code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties {
            authentication_method: method.map(str::to_owned),
            authentication_data: Some(Bytes::from_static(data)),
            ..Properties::default()
        },
    })
}

/// [MQTT-4.12.0-6] / §4.12: AUTH without an Authentication Method in CONNECT is a Protocol
/// Error. (3.1.1 cannot even decode AUTH: packet type 15 is reserved there.)
#[test]
fn auth_without_method_in_connect_is_a_protocol_error() {
    let mut c = connected(V5);
    c.send(auth(Some("SCRAM-SHA-1"), b"x"));
    assert_disconnect(&mut c, ReasonCode::PROTOCOL_ERROR);
    assert_only_closed(
        &c.events(),
        CloseReason::Violation(ProtocolError::UnexpectedAuth),
    );
}

/// [MQTT-4.12.0-5]: every AUTH uses the CONNECT's method; another one → 0x8C.
#[test]
fn auth_with_another_method_is_0x8c() {
    let mut c = connected_with(V5, SessionConfig::default(), |conn| {
        conn.properties.authentication_method = Some("SCRAM-SHA-1".into())
    });
    c.send(auth(Some("GS2-KRB5"), b"x"));
    assert_disconnect(&mut c, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert_only_closed(
        &c.events(),
        CloseReason::Violation(ProtocolError::AuthMethodMismatch {
            expected: "SCRAM-SHA-1".into(),
            got: "GS2-KRB5".into(),
        }),
    );
}

/// [MQTT-4.12.1-1]: re-authentication after CONNACK with the same method reaches the host,
/// whose answer goes out with the method ([MQTT-4.12.0-5]).
#[test]
fn reauthentication_reaches_the_host() {
    let mut c = connected_with(V5, SessionConfig::default(), |conn| {
        conn.properties.authentication_method = Some("SCRAM-SHA-1".into())
    });
    let mut reauth = auth(Some("SCRAM-SHA-1"), b"client-first");
    if let Packet::Auth(a) = &mut reauth {
        a.code = ReasonCode::REAUTHENTICATE;
    }
    c.send(reauth);
    let events = c.events();
    match events.as_slice() {
        [Event::Auth(a)] => {
            assert_eq!(a.code, ReasonCode::REAUTHENTICATE);
            assert_eq!(
                a.properties.authentication_data.as_deref(),
                Some(&b"client-first"[..])
            );
        }
        other => panic!("expected Event::Auth, got {other:?}"),
    }
    c.session.send_auth(
        ReasonCode::SUCCESS,
        Some(Bytes::from_static(b"server-final")),
        None,
    );
    let a = expect!(c.received_one(), Auth);
    assert_eq!(a.code, ReasonCode::SUCCESS);
    assert_eq!(
        a.properties.authentication_method.as_deref(),
        Some("SCRAM-SHA-1")
    );
    assert!(c.session.is_connected());
}

/// §4.12, [MQTT-4.12.0-2/3], [MQTT-3.1.4-6], [MQTT-3.2.0-1]: during enhanced authentication
/// the client answers the server's AUTH 0x18 with AUTH 0x18 *before* any CONNACK; the session
/// must process that AUTH (and only AUTH) while the CONNECT is with the host.
#[test]
fn enhanced_authentication_exchange_before_connack() {
    let mut c = Client::new(V5, SessionConfig::default());
    let mut conn = connect(V5);
    conn.properties.authentication_method = Some("SCRAM-SHA-1".into());
    conn.properties.authentication_data = Some(Bytes::from_static(b"client-first"));
    c.send(Packet::Connect(Box::new(conn)));
    assert!(matches!(c.events().as_slice(), [Event::Connect(_)]));
    assert_eq!(c.session.authentication_method(), Some("SCRAM-SHA-1"));

    c.session.send_auth(
        ReasonCode::CONTINUE_AUTHENTICATION,
        Some(Bytes::from_static(b"server-first")),
        None,
    );
    let challenge = expect!(c.received_one(), Auth);
    assert_eq!(challenge.code, ReasonCode::CONTINUE_AUTHENTICATION);
    assert_eq!(
        challenge.properties.authentication_method.as_deref(),
        Some("SCRAM-SHA-1")
    );

    c.send_at(auth(Some("SCRAM-SHA-1"), b"client-final"), 1);
    let events = c.events();
    match events.as_slice() {
        [Event::Auth(a)] => assert_eq!(
            a.properties.authentication_data.as_deref(),
            Some(&b"client-final"[..])
        ),
        other => panic!("the client's AUTH 0x18 before CONNACK was not processed: {other:?}"),
    }

    c.accept(ConnectAccepted {
        authentication_data: Some(Bytes::from_static(b"server-final")),
        ..ConnectAccepted::default()
    });
    let connack = expect!(c.received_one(), ConnAck);
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    assert_eq!(
        connack.properties.authentication_method.as_deref(),
        Some("SCRAM-SHA-1")
    );
    assert_eq!(
        connack.properties.authentication_data.as_deref(),
        Some(&b"server-final"[..])
    );
}

/// [MQTT-4.12.0-5]: "If the initial CONNECT packet included an Authentication Method property
/// then all AUTH packets, and any successful CONNACK packet MUST include an Authentication
/// Method Property with the same value as in the CONNECT packet" — with or without final data.
#[test]
fn successful_connack_repeats_the_authentication_method() {
    let mut c = Client::new(V5, SessionConfig::default());
    let mut conn = connect(V5);
    conn.properties.authentication_method = Some("TOKEN".into());
    conn.properties.authentication_data = Some(Bytes::from_static(b"jwt"));
    c.send(Packet::Connect(Box::new(conn)));
    c.events();
    c.accept(ConnectAccepted::default());
    let connack = expect!(c.received_one(), ConnAck);
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    assert_eq!(
        connack.properties.authentication_method.as_deref(),
        Some("TOKEN")
    );
    assert_eq!(connack.properties.authentication_data, None);

    // Without a method in CONNECT, no method in CONNACK.
    let mut c = connected(V5);
    assert_eq!(c.session.authentication_method(), None);
    assert!(c.raw().is_empty());
}

/// §3.1.2.11.10: Authentication Data without a method is a Protocol Error (CONNACK 0x82).
#[test]
fn authentication_data_without_method_is_refused() {
    let mut c = Client::new(V5, SessionConfig::default());
    let mut conn = connect(V5);
    conn.properties.authentication_data = Some(Bytes::from_static(b"x"));
    c.send(Packet::Connect(Box::new(conn)));
    let connack = expect!(c.received_one(), ConnAck);
    assert_eq!(connack.code, ReasonCode::PROTOCOL_ERROR);
    assert_only_closed(
        &c.events(),
        CloseReason::Violation(ProtocolError::UnexpectedAuth),
    );
}

// ------------------------------------------------------------------ misc

/// [MQTT-3.12.4-1]: PINGREQ → PINGRESP.
#[test]
fn pingreq_gets_pingresp() {
    for protocol in [V5, V311] {
        let mut c = connected(protocol);
        c.send(Packet::PingReq);
        assert_eq!(c.raw(), [0xD0, 0x00]);
        assert!(c.events().is_empty());
    }
}

/// §4.13.1: a Malformed Packet after CONNACK → DISCONNECT 0x81 (v5), then close; nothing
/// after it is processed.
#[test]
fn malformed_packet_after_connect() {
    let mut c = connected(V5);
    // PUBLISH with both QoS bits set ([MQTT-3.3.1-4]), followed by a valid PINGREQ.
    c.feed_at(&[0x36, 0x03, 0x00, 0x01, b'a', 0xC0, 0x00], 0);
    assert_disconnect(&mut c, ReasonCode::MALFORMED_PACKET);
    assert_only_closed(
        &c.events(),
        CloseReason::Violation(ProtocolError::InvalidQoS),
    );
    c.session.process(c.at(1));
    assert!(c.raw().is_empty(), "no PINGRESP after the violation");
    assert!(c.events().is_empty());

    // 3.1.1: closed without a packet ([MQTT-4.8.0-1] of 3.1.1).
    let mut c = connected(V311);
    c.feed_at(&[0x00, 0x00], 0);
    assert!(c.raw().is_empty());
    assert_only_closed(
        &c.events(),
        CloseReason::Violation(ProtocolError::ReservedPacketType(0)),
    );
}

/// [MQTT-3.2.2-15] / §3.2.2.3.6: a packet above the advertised Maximum Packet Size → 0x95,
/// decided from the fixed header alone.
#[test]
fn packet_above_server_maximum_is_0x95() {
    let config = SessionConfig {
        max_packet_size: 64,
        ..SessionConfig::default()
    };
    let mut c = connected_with(V5, config, |_| {});
    let mut p = publish("big", QoS::AtMostOnce, 0);
    p.payload = Bytes::from(vec![b'x'; 100]);
    let bytes = c.encode(&Packet::Publish(p));
    c.feed_at(&bytes[..3], 0);
    assert_disconnect(&mut c, ReasonCode::PACKET_TOO_LARGE);
    assert!(matches!(
        close_reason(&c.events()),
        Some(CloseReason::Violation(ProtocolError::PacketTooLarge {
            max: 64,
            ..
        }))
    ));
}

/// Packets split at every byte boundary are reassembled; nothing happens until one is whole.
#[test]
fn bytes_fed_one_at_a_time() {
    let mut c = Client::new(V5, SessionConfig::default());
    let mut bytes = c.encode(&Packet::Connect(Box::new(connect(V5))));
    let connect_len = bytes.len();
    c.session.feed(&bytes.split_to(connect_len - 1));
    c.session.process(c.at(0));
    assert!(c.events().is_empty());
    c.feed_at(&bytes, 0);
    assert!(matches!(c.events().as_slice(), [Event::Connect(_)]));
    c.accept(ConnectAccepted::default());
    c.received();

    let publish_bytes = c.encode(&Packet::Publish(publish("p/q", QoS::AtLeastOnce, 2)));
    for (i, b) in publish_bytes.iter().enumerate() {
        c.feed_at(&[*b], 0);
        let events = c.events();
        if i + 1 < publish_bytes.len() {
            assert!(events.is_empty(), "event after {} bytes", i + 1);
        } else {
            assert_eq!(publish_events(&events).len(), 1);
        }
    }
}

/// Logs must never show secrets: CONNECT's password and any Authentication Data are redacted
/// in `Debug`, however the value is reached.
#[test]
fn debug_output_never_contains_secrets() {
    let mut conn = connect(V5);
    conn.username = Some("alice".into());
    conn.password = Some(Bytes::from_static(b"hunter2-pass"));
    conn.properties.authentication_method = Some("SCRAM-SHA-1".into());
    conn.properties.authentication_data = Some(Bytes::from_static(b"s3cr3t-auth"));
    conn.will = Some(Will {
        topic: "w".into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    let auth_packet = Packet::Auth(Auth {
        code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties {
            authentication_method: Some("SCRAM-SHA-1".into()),
            authentication_data: Some(Bytes::from_static(b"s3cr3t-auth")),
            ..Properties::default()
        },
    });
    let renderings = [
        format!("{conn:?}"),
        format!("{conn:#?}"),
        format!("{:?}", Packet::Connect(Box::new(conn.clone()))),
        format!("{:?}", Event::Connect(Box::new(conn.clone()))),
        format!("{:?}", conn.properties),
        format!("{auth_packet:?}"),
        format!("{auth_packet:#?}"),
    ];
    for text in &renderings {
        for secret in ["hunter2", "s3cr3t", "104, 117, 110", "115, 51, 99"] {
            assert!(!text.contains(secret), "{secret:?} leaked in {text}");
        }
        assert!(text.contains("redacted"), "{text}");
    }
    // Redaction hides the value, not the fact: the rest is still there.
    assert!(renderings[0].contains("alice"));
    assert!(renderings[0].contains("SCRAM-SHA-1"));

    // And what the session hands the host is the same redacted CONNECT.
    let mut c = Client::new(V5, SessionConfig::default());
    c.send(Packet::Connect(Box::new(conn)));
    let events = c.events();
    let text = format!("{events:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("s3cr3t"),
        "{text}"
    );
}

/// Regression (found by the `session` fuzz target): a violation quoting a long topic must not
/// produce a Reason String over the 65,535-byte MQTT string limit; it is cut to a bounded length.
#[test]
fn long_violation_reason_is_truncated() {
    let mut s = Session::new(SessionConfig::default(), Instant::now());
    let now = Instant::now();
    let mut buf = BytesMut::new();
    codec::encode(
        &Packet::Connect(Box::new(Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive: 0,
            client_id: "c".into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })),
        Protocol::V5,
        &mut buf,
    );
    s.feed(&buf);
    s.process(now);
    while s.poll_event().is_some() {}
    s.accept_connect(ConnectAccepted::default(), now);
    let _ = s.take_transmit();
    let topic = format!("+{}", "\u{7f}".repeat(11_000));
    let mut buf = BytesMut::new();
    codec::encode(
        &Packet::Publish(Publish {
            topic,
            ..Default::default()
        }),
        Protocol::V5,
        &mut buf,
    );
    s.feed(&buf);
    s.process(now);
    let mut out = s.take_transmit().expect("DISCONNECT sent");
    match codec::decode(&mut out, Protocol::V5, usize::MAX) {
        Ok(Some(Packet::Disconnect(d))) => {
            assert_eq!(d.code, ReasonCode::TOPIC_NAME_INVALID);
            let reason = d.properties.reason_string.expect("reason string");
            assert!(reason.len() <= 1024, "reason of {} bytes", reason.len());
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
}

/// Tagged deliveries come back through `take_completed` exactly when the session is finished
/// with them: QoS 1 at PUBACK, QoS 2 at PUBCOMP (not PUBREC), expired ones at once. The host
/// relies on this to delete what it persisted, so a tag reported early would lose a message
/// across a crash and a tag never reported would replay it forever.
#[test]
fn completed_tags_follow_the_acknowledgement_flow() {
    let mut c = connected(V5);
    let m = message("t", b"x");
    let tagged = |qos, tag| Delivery {
        tag,
        ..delivery(&m, qos)
    };
    assert!(c.deliver(tagged(QoS::AtLeastOnce, 11), 0).is_ok());
    assert!(c.deliver(tagged(QoS::ExactlyOnce, 12), 0).is_ok());
    assert!(c.deliver(tagged(QoS::AtMostOnce, 13), 0).is_ok());
    assert_eq!(c.received().len(), 3);
    assert_eq!(
        c.session.take_completed(),
        vec![13],
        "QoS 0 is done once written"
    );

    c.send(Packet::PubAck(ack(1)));
    assert_eq!(c.session.take_completed(), vec![11]);
    c.send(Packet::PubRec(ack(2)));
    expect!(c.received_one(), PubRel);
    assert!(
        c.session.take_completed().is_empty(),
        "PUBREC is not the end"
    );
    c.send(Packet::PubComp(ack(2)));
    assert_eq!(c.session.take_completed(), vec![12]);

    let mut expired = (*m).clone();
    expired.expires_at = Some(c.at(1));
    let expired = Delivery {
        tag: 14,
        ..delivery(&Arc::new(expired), QoS::AtLeastOnce)
    };
    assert!(c.deliver(expired, 2).is_ok());
    assert!(c.raw().is_empty());
    assert_eq!(c.session.take_completed(), vec![14]);
    // Untagged deliveries are never reported.
    assert!(c.deliver(delivery(&m, QoS::AtLeastOnce), 0).is_ok());
    c.send(Packet::PubAck(ack(3)));
    assert!(c.session.take_completed().is_empty());
}
