//! MQTT over WebSockets end to end (spec §1 `protocol: WebSockets`, scenario 5): v5 and 3.1.1
//! CONNECT, SUBSCRIBE and PUBLISH at QoS 0/1/2 over a WebSocket port; messages crossing between
//! the WebSocket port and a plain MQTT port of the same broker; packets split across and packed
//! into WebSocket messages; and what the WebSocket port refuses: raw MQTT, another path, a
//! client that does not offer the `mqtt` subprotocol, text frames.
//!
//! The client is the raw codec client ([`RawClient`]) over [`e2e::ws::WsTransport`]; every
//! write is one binary message, so `send_raw` controls message boundaries. Interop with a
//! third-party WebSocket client (paho) is in `tests/python/test_websockets.py`.

use std::net::SocketAddr;

use bytes::BytesMut;
use e2e::raw::{connect_v5, connect_v311, publish};
use e2e::ws::{self, PATH};
use e2e::{Broker, RawClient, WAIT, unique_id};
use futures_util::{SinkExt, StreamExt};
use mqtt::codec::{decode, encode};
use mqtt::{Packet, Protocol, QoS, ReasonCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Bytes, Message};

const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

/// One WebSocket port and one plain MQTT port, both on OS-assigned loopback ports.
const LISTENERS: &str = "\
apiVersion: gatehouse.io/v1
kind: BrokerListener
metadata: {name: default}
spec:
  ports:
    - {port: 0, host: 127.0.0.1, protocol: WebSockets}
    - {port: 0, host: 127.0.0.1}
";

struct Ports {
    ws: SocketAddr,
    tcp: SocketAddr,
}

fn start() -> (Broker, Ports) {
    let broker = Broker::start(LISTENERS);
    let ready = broker.ready_ports();
    assert_eq!(ready.len(), 2, "ready file: {ready:?}");
    // The ready file lists ports in configuration order.
    let ports = Ports {
        ws: ready[0].local_addr,
        tcp: ready[1].local_addr,
    };
    (broker, ports)
}

/// `sub` subscribes to `prefix/#` at QoS 2, then `publisher` publishes at QoS 0, 1 and 2;
/// each message must be acknowledged and arrive at the QoS it was sent with.
async fn qos_round_trips(publisher: &mut RawClient, sub: &mut RawClient, prefix: &str) {
    sub.subscribe(&format!("{prefix}/#"), QoS::ExactlyOnce)
        .await;
    for qos in QOS {
        let topic = format!("{prefix}/{}", qos as u8);
        let payload = format!("payload at QoS {}", qos as u8);
        let code = publisher
            .publish(publish(&topic, qos, payload.as_bytes()))
            .await;
        assert_eq!(code, ReasonCode::SUCCESS, "publish at {qos:?}");
        let p = sub.recv_publish_ack().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..], p.qos),
            (topic.as_str(), payload.as_bytes(), qos)
        );
    }
}

fn encoded(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    out.to_vec()
}

/// Scenario 5: MQTT-over-WS CONNECT → CONNACK 0x00, for v5 and 3.1.1; DISCONNECT closes.
#[tokio::test]
async fn scenario_5_connect_over_websockets_gets_connack_success() {
    let (_broker, ports) = start();
    let (c, ack) = ws::connect(ports.ws, connect_v5(&unique_id("ws5"))).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "v5 CONNACK {ack:?}");
    assert!(!ack.session_present);
    c.disconnect().await;
    let (c, ack) = ws::connect(ports.ws, connect_v311(&unique_id("ws311"), true)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "3.1.1 CONNACK {ack:?}");
    c.disconnect().await;
}

/// Scenario 5: raw MQTT on the WebSocket port → rejected: no CONNACK, connection closed. The
/// same CONNECT on the plain port is accepted, so it is the transport that is refused.
#[tokio::test]
async fn scenario_5_raw_mqtt_on_the_websocket_port_is_rejected() {
    let (_broker, ports) = start();
    let connect = Packet::Connect(Box::new(connect_v5(&unique_id("raw-on-ws"))));
    let bytes = encoded(&connect, Protocol::V5);

    let mut on_ws = RawClient::tcp(ports.ws).await;
    on_ws.send_raw(&bytes).await;
    on_ws.expect_closed(WAIT).await;

    let mut on_tcp = RawClient::tcp(ports.tcp).await;
    on_tcp.send_raw(&bytes).await;
    match on_tcp.recv().await {
        Packet::ConnAck(ack) => assert_eq!(ack.code, ReasonCode::SUCCESS),
        other => panic!("expected CONNACK on the plain port, got {other:?}"),
    }
}

/// Scenario 5: an upgrade on another path than /mqtt gets HTTP 404 and no WebSocket.
#[tokio::test]
async fn scenario_5_wrong_path_gets_404() {
    let (_broker, ports) = start();
    for path in ["/", "/mqtt/x", "/MQTT"] {
        match ws::handshake(ports.ws, path, Some("mqtt")).await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404, "{path}"),
            Err(e) => panic!("{path}: expected HTTP 404, got {e}"),
            Ok(_) => panic!("{path}: the upgrade succeeded"),
        }
    }
}

/// Scenario 5, [MQTT-6.0.0-3]: a client that does not offer the `mqtt` subprotocol is refused
/// with HTTP 400.
#[tokio::test]
async fn scenario_5_client_without_mqtt_subprotocol_is_refused() {
    let (_broker, ports) = start();
    for offered in [None, Some("mqttv3.1"), Some("wamp, chat")] {
        match ws::handshake(ports.ws, PATH, offered).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400, "{offered:?}")
            }
            Err(e) => panic!("{offered:?}: expected HTTP 400, got {e}"),
            Ok(_) => panic!("{offered:?}: the upgrade succeeded"),
        }
    }
}

/// [MQTT-6.0.0-4]: among several offered subprotocols the broker selects `mqtt`.
#[tokio::test]
async fn broker_selects_mqtt_among_offered_subprotocols() {
    let (_broker, ports) = start();
    let (_ws, response) = ws::handshake(ports.ws, PATH, Some("mqttv3.1, mqtt"))
        .await
        .expect("upgrade");
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mqtt")
    );
}

#[tokio::test]
async fn v5_qos_0_1_2_over_websockets() {
    let (_broker, ports) = start();
    let mut sub = ws::v5(ports.ws, &unique_id("ws5-sub")).await;
    let mut publisher = ws::v5(ports.ws, &unique_id("ws5-pub")).await;
    qos_round_trips(&mut publisher, &mut sub, "ws/v5").await;
    publisher.disconnect().await;
    sub.disconnect().await;
}

#[tokio::test]
async fn v311_qos_0_1_2_over_websockets() {
    let (_broker, ports) = start();
    let mut sub = ws::v311(ports.ws, &unique_id("ws311-sub")).await;
    let mut publisher = ws::v311(ports.ws, &unique_id("ws311-pub")).await;
    qos_round_trips(&mut publisher, &mut sub, "ws/v311").await;
    publisher.disconnect().await;
    sub.disconnect().await;
}

/// One router behind both ports: a plain-TCP publisher reaches a WebSocket subscriber.
#[tokio::test]
async fn tcp_publisher_reaches_websocket_subscriber() {
    let (_broker, ports) = start();
    let mut sub = ws::v5(ports.ws, &unique_id("x-ws-sub")).await;
    let mut publisher = RawClient::v311(ports.tcp, &unique_id("x-tcp-pub")).await;
    qos_round_trips(&mut publisher, &mut sub, "cross/tcp-to-ws").await;
}

/// And a WebSocket publisher reaches a plain-TCP subscriber.
#[tokio::test]
async fn websocket_publisher_reaches_tcp_subscriber() {
    let (_broker, ports) = start();
    let mut sub = RawClient::v5(ports.tcp, &unique_id("x-tcp-sub")).await;
    let mut publisher = ws::v311(ports.ws, &unique_id("x-ws-pub")).await;
    qos_round_trips(&mut publisher, &mut sub, "cross/ws-to-tcp").await;
}

/// [MQTT-6.0.0-2]: a packet may span several WebSocket messages and a message may carry
/// several packets.
#[tokio::test]
async fn packets_split_across_and_packed_into_messages() {
    let (_broker, ports) = start();
    let mut c = ws::raw(ports.ws).await;
    let connect = encoded(
        &Packet::Connect(Box::new(connect_v5(&unique_id("ws-frag")))),
        Protocol::V5,
    );
    // CONNECT in three messages, the first one byte long.
    c.send_raw(&connect[..1]).await;
    c.send_raw(&connect[1..7]).await;
    c.send_raw(&connect[7..]).await;
    match c.recv().await {
        Packet::ConnAck(ack) => assert_eq!(ack.code, ReasonCode::SUCCESS),
        other => panic!("expected CONNACK, got {other:?}"),
    }

    // SUBSCRIBE, PUBLISH to the same topic and PINGREQ in one message: answered in order.
    let sub = Packet::Subscribe(mqtt::Subscribe {
        packet_id: 1,
        filters: vec![("frag/t".to_owned(), e2e::raw::opts(QoS::AtLeastOnce))],
        properties: Default::default(),
    });
    let mut p = publish("frag/t", QoS::AtLeastOnce, b"packed");
    p.packet_id = 2;
    let mut packed = encoded(&sub, Protocol::V5);
    packed.extend(encoded(&Packet::Publish(p), Protocol::V5));
    packed.extend(encoded(&Packet::PingReq, Protocol::V5));
    c.send_raw(&packed).await;
    // All four answers arrive; their order is the broker's business (a PUBACK may wait for
    // the store while the PINGRESP does not).
    let (mut suback, mut puback, mut pingresp, mut delivered) = (false, false, false, None);
    while !(suback && puback && pingresp && delivered.is_some()) {
        match c.recv().await {
            Packet::SubAck(a) if a.packet_id == 1 && !suback => suback = true,
            Packet::PubAck(a) if a.packet_id == 2 && !puback => puback = true,
            Packet::PingResp if !pingresp => pingresp = true,
            Packet::Publish(p) if delivered.is_none() => {
                c.ack(&p).await;
                delivered = Some(p);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let delivered = delivered.expect("loop ends with a delivery");
    assert_eq!(
        (delivered.topic.as_str(), &delivered.payload[..]),
        ("frag/t", &b"packed"[..])
    );
}

/// A 1 MiB PUBLISH sent as 64 KiB messages, delivered to a WebSocket subscriber intact.
#[tokio::test]
async fn large_publish_split_into_many_messages() {
    let (_broker, ports) = start();
    let mut sub = ws::v5(ports.ws, &unique_id("big-sub")).await;
    sub.subscribe("big/t", QoS::AtLeastOnce).await;
    let mut publisher = ws::v5(ports.ws, &unique_id("big-pub")).await;
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut p = publish("big/t", QoS::AtLeastOnce, &payload);
    p.packet_id = 9;
    for chunk in encoded(&Packet::Publish(p), Protocol::V5).chunks(64 * 1024) {
        publisher.send_raw(chunk).await;
    }
    match publisher.recv().await {
        Packet::PubAck(a) => assert_eq!((a.packet_id, a.code), (9, ReasonCode::SUCCESS)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let got = sub.recv_publish_ack().await;
    assert_eq!(got.payload.len(), payload.len());
    assert!(got.payload[..] == payload[..], "payload differs");
}

/// [MQTT-6.0.0-1]: a text frame is a protocol error; the broker closes with 1003 and never
/// sends a CONNACK.
#[tokio::test]
async fn text_frame_closes_the_connection() {
    let (_broker, ports) = start();
    let (mut ws, _) = ws::handshake(ports.ws, PATH, Some("mqtt"))
        .await
        .expect("upgrade");
    let connect = encoded(
        &Packet::Connect(Box::new(connect_v5(&unique_id("ws-text")))),
        Protocol::V5,
    );
    // The CONNECT bytes, but in a text frame (they happen to be valid UTF-8 here).
    let text = String::from_utf8(connect).expect("this CONNECT is ASCII");
    ws.send(Message::text(text)).await.expect("send text");
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            assert_eq!(frame.code, CloseCode::Unsupported)
        }
        other => panic!("expected close frame 1003, got {other:?}"),
    }
    // Then the connection ends, with nothing else sent.
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(Message::Close(_)))) => {}
            other => panic!("expected the end of the connection, got {other:?}"),
        }
    }
}

/// WebSocket pings are answered with pongs carrying the same payload, before and after
/// CONNECT.
#[tokio::test]
async fn websocket_ping_gets_pong() {
    let (_broker, ports) = start();
    let (mut ws, _) = ws::handshake(ports.ws, PATH, Some("mqtt"))
        .await
        .expect("upgrade");
    ws.send(Message::Ping(Bytes::from_static(b"before")))
        .await
        .expect("ping");
    let next = tokio::time::timeout(WAIT, ws.next()).await;
    assert!(
        matches!(&next, Ok(Some(Ok(Message::Pong(p)))) if &p[..] == b"before"),
        "{next:?}"
    );
    let connect = encoded(
        &Packet::Connect(Box::new(connect_v5(&unique_id("ws-ping")))),
        Protocol::V5,
    );
    ws.send(Message::binary(connect)).await.expect("connect");
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => buf.extend_from_slice(&b),
            other => panic!("expected CONNACK bytes, got {other:?}"),
        }
        if let Some(packet) = decode(&mut buf, Protocol::V5, 1 << 20).expect("decodes") {
            assert!(
                matches!(&packet, Packet::ConnAck(a) if a.code == ReasonCode::SUCCESS),
                "{packet:?}"
            );
            break;
        }
    }
    ws.send(Message::Ping(Bytes::from_static(b"after")))
        .await
        .expect("ping");
    let next = tokio::time::timeout(WAIT, ws.next()).await;
    assert!(
        matches!(&next, Ok(Some(Ok(Message::Pong(p)))) if &p[..] == b"after"),
        "{next:?}"
    );
}
