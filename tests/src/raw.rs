//! A tiny raw-socket MQTT client on the broker's own codec, for byte-level tests: malformed
//! packets, protocol violations, exact reason codes and properties, and clients that misbehave
//! on purpose (never acknowledge, go silent, exceed a quota).
//!
//! It is not a real client: no retries, no automatic acknowledgements, no keep alive. It does
//! exactly what the test says, and every receive is bounded by a timeout. Because it shares the
//! broker's codec it cannot catch a codec bug that is symmetric; the rumqttc, mosquitto and
//! paho tests cover that.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mqtt::codec::{decode, encode};
use mqtt::{
    ConnAck, Connect, Disconnect, Packet, Properties, Protocol, PubResp, Publish, QoS, ReasonCode,
    SubAck, SubOptions, Subscribe, Will,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// Accept whatever the broker sends: the test, not the decoder, judges sizes.
const DECODE_LIMIT: usize = 268_435_460;

/// The outcome of one bounded receive.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a test helper returned by value once per receive"
)]
pub enum Recv {
    Packet(Packet),
    /// The broker closed the connection (EOF or reset).
    Closed,
    Timeout,
    /// The bytes did not decode.
    Invalid(String),
}

/// A byte stream a [`RawClient`] can run over: TCP, or a wrapper such as
/// [`crate::ws::WsTransport`].
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

pub struct RawClient {
    stream: Box<dyn Transport>,
    buf: BytesMut,
    /// Decides how incoming packets are decoded; set by `connect`.
    pub protocol: Protocol,
    next_packet_id: u16,
}

/// A v5 CONNECT with a clean start and a 60 s keep alive.
pub fn connect_v5(client_id: &str) -> Connect {
    Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

/// A 3.1.1 CONNECT with a 60 s keep alive.
pub fn connect_v311(client_id: &str, clean_session: bool) -> Connect {
    Connect {
        protocol: Protocol::V311,
        clean_start: clean_session,
        ..connect_v5(client_id)
    }
}

/// A will message with no properties.
pub fn will(topic: &str, payload: &str, qos: QoS) -> Will {
    Will {
        topic: topic.to_owned(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain: false,
        properties: Properties::default(),
    }
}

/// A PUBLISH with no properties and packet id 0 (filled in by [`RawClient::publish`]).
pub fn publish(topic: &str, qos: QoS, payload: &[u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_owned(),
        packet_id: 0,
        payload: Bytes::copy_from_slice(payload),
        properties: Properties::default(),
    }
}

/// Subscription options for `qos`, everything else default.
pub fn opts(qos: QoS) -> SubOptions {
    SubOptions {
        qos,
        ..SubOptions::default()
    }
}

impl RawClient {
    /// Open a TCP connection and send nothing yet.
    pub async fn tcp(addr: SocketAddr) -> RawClient {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        RawClient::over(stream)
    }

    /// A client over an already open byte stream; sends nothing yet.
    pub fn over(stream: impl Transport + 'static) -> RawClient {
        RawClient {
            stream: Box::new(stream),
            buf: BytesMut::new(),
            protocol: Protocol::V5,
            next_packet_id: 1,
        }
    }

    /// Connect and return the CONNACK, whatever its code.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        RawClient::tcp(addr).await.connect_on(connect).await
    }

    /// Send CONNECT on a client that has sent nothing yet and return the CONNACK, whatever its
    /// code.
    pub async fn connect_on(mut self, connect: Connect) -> (RawClient, ConnAck) {
        self.protocol = connect.protocol;
        self.send(&Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Packet::ConnAck(ack) => (self, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connect and insist on CONNACK Success.
    pub async fn connect_ok(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let (c, ack) = RawClient::connect(addr, connect).await;
        assert_eq!(ack.code, ReasonCode::SUCCESS, "CONNACK {ack:?}");
        (c, ack)
    }

    /// A v5 client with a clean start.
    pub async fn v5(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::connect_ok(addr, connect_v5(client_id)).await.0
    }

    /// A 3.1.1 client with a clean session.
    pub async fn v311(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::connect_ok(addr, connect_v311(client_id, true))
            .await
            .0
    }

    pub fn next_id(&mut self) -> u16 {
        let id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        id
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode(packet, self.protocol, &mut out);
        self.send_raw(&out).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // A write may fail when the broker has already closed on us; the test's next receive
        // reports that, so the error itself carries no information.
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// The next packet, or what happened instead, within `timeout`.
    pub async fn try_recv(&mut self, timeout: Duration) -> Recv {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match decode(&mut self.buf, self.protocol, DECODE_LIMIT) {
                Ok(Some(packet)) => return Recv::Packet(packet),
                Ok(None) => {}
                Err(e) => return Recv::Invalid(format!("{e:?} (buffer {:02x?})", &self.buf[..])),
            }
            self.buf.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    if self.buf.is_empty() {
                        return Recv::Closed;
                    }
                    return Recv::Invalid(format!(
                        "connection closed mid-packet: {:02x?}",
                        &self.buf[..]
                    ));
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet within [`WAIT`]; panics on close, timeout or garbage.
    pub async fn recv(&mut self) -> Packet {
        match self.try_recv(WAIT).await {
            Recv::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    /// Up to `n` raw bytes as they arrive (for checking exact wire forms), within [`WAIT`].
    pub async fn recv_bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.buf.len() < n {
            self.buf.reserve(n);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
        }
        let take = n.min(self.buf.len());
        self.buf.split_to(take).to_vec()
    }

    /// Nothing arrives for `quiet`. Panics if a packet or a close does.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        match self.try_recv(quiet).await {
            Recv::Timeout => {}
            other => panic!("expected nothing for {quiet:?}, got {other:?}"),
        }
    }

    /// The broker closes the connection within `timeout`, and sends nothing before.
    pub async fn expect_closed(&mut self, timeout: Duration) {
        match self.try_recv(timeout).await {
            Recv::Closed => {}
            other => panic!("expected the connection to be closed, got {other:?}"),
        }
    }

    /// The broker sends DISCONNECT and then closes, within `timeout`; returns the DISCONNECT.
    pub async fn expect_disconnect(&mut self, timeout: Duration) -> Disconnect {
        let d = match self.try_recv(timeout).await {
            Recv::Packet(Packet::Disconnect(d)) => d,
            other => panic!("expected DISCONNECT, got {other:?}"),
        };
        self.expect_closed(WAIT).await;
        d
    }

    /// The next packet is a PUBLISH; returns it without acknowledging.
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Subscribe to one filter (with an optional subscription identifier) and return the SUBACK.
    pub async fn subscribe_with(
        &mut self,
        filters: &[(&str, SubOptions)],
        subscription_id: Option<u32>,
    ) -> SubAck {
        let packet_id = self.next_id();
        let mut properties = Properties::default();
        properties.subscription_identifiers.extend(subscription_id);
        let sub = Subscribe {
            packet_id,
            filters: filters.iter().map(|(f, o)| ((*f).to_owned(), *o)).collect(),
            properties,
        };
        self.send(&Packet::Subscribe(sub)).await;
        match self.recv().await {
            Packet::SubAck(ack) => {
                assert_eq!(ack.packet_id, packet_id, "SUBACK for the wrong packet id");
                ack
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Subscribe to `filter` at `qos` and insist it is granted.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        let ack = self.subscribe_with(&[(filter, opts(qos))], None).await;
        assert_eq!(ack.codes, vec![ReasonCode(qos as u8)], "SUBACK {ack:?}");
        ack
    }

    /// Publish and complete the QoS flow (PUBACK, or PUBREC/PUBREL/PUBCOMP). Returns the
    /// PUBACK or PUBREC reason code (Success for QoS 0).
    pub async fn publish(&mut self, mut p: Publish) -> ReasonCode {
        if p.qos != QoS::AtMostOnce && p.packet_id == 0 {
            p.packet_id = self.next_id();
        }
        let id = p.packet_id;
        let qos = p.qos;
        self.send(&Packet::Publish(p)).await;
        match qos {
            QoS::AtMostOnce => ReasonCode::SUCCESS,
            QoS::AtLeastOnce => match self.recv().await {
                Packet::PubAck(ack) if ack.packet_id == id => ack.code,
                other => panic!("expected PUBACK {id}, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                let code = match self.recv().await {
                    Packet::PubRec(rec) if rec.packet_id == id => rec.code,
                    other => panic!("expected PUBREC {id}, got {other:?}"),
                };
                if !code.is_success() {
                    return code;
                }
                self.send(&Packet::PubRel(resp(id))).await;
                match self.recv().await {
                    Packet::PubComp(c) if c.packet_id == id => {}
                    other => panic!("expected PUBCOMP {id}, got {other:?}"),
                }
                code
            }
        }
    }

    /// Acknowledge a received PUBLISH as its QoS requires (QoS 2: PUBREC, expect PUBREL,
    /// PUBCOMP).
    pub async fn ack(&mut self, p: &Publish) {
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(resp(p.packet_id))).await,
            QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(resp(p.packet_id))).await;
                match self.recv().await {
                    Packet::PubRel(r) if r.packet_id == p.packet_id => {}
                    other => panic!("expected PUBREL {}, got {other:?}", p.packet_id),
                }
                self.send(&Packet::PubComp(resp(p.packet_id))).await;
            }
        }
    }

    /// Receive a PUBLISH and acknowledge it.
    pub async fn recv_publish_ack(&mut self) -> Publish {
        let p = self.recv_publish().await;
        self.ack(&p).await;
        p
    }

    /// Send DISCONNECT (v5 reason `code`) and wait for the broker to close.
    pub async fn disconnect_with(mut self, code: ReasonCode) {
        self.send(&Packet::Disconnect(Disconnect {
            code,
            properties: Properties::default(),
        }))
        .await;
        self.expect_closed(WAIT).await;
    }

    /// A normal DISCONNECT.
    pub async fn disconnect(self) {
        self.disconnect_with(ReasonCode::NORMAL_DISCONNECTION).await;
    }

    /// Round-trip a PINGREQ: once it is answered, everything sent before it has been processed
    /// by the broker's connection (packets on one connection are handled in order).
    pub async fn sync(&mut self) {
        self.send(&Packet::PingReq).await;
        match self.recv().await {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}

/// A PUBACK/PUBREC/PUBREL/PUBCOMP body with reason Success.
pub fn resp(packet_id: u16) -> PubResp {
    PubResp {
        packet_id,
        code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }
}
