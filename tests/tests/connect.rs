//! CONNECT and the connection's lifetime, end to end: CONNACK codes and properties for 3.1.1
//! and 5.0, client identifiers, protocol violations before and after CONNECT, keep alive and
//! session takeover.
//!
//! Sessions that outlive a connection are in `sessions.rs`; limits on packets in `limits.rs`.

use std::time::Duration;

use e2e::raw::{connect_v5, connect_v311};
use e2e::rumqtt::{V4, V5, v4_options, v5_options};
use e2e::{Broker, RawClient, Recv, WAIT, unique_id};
use mqtt::{Packet, Protocol, QoS, ReasonCode};

#[tokio::test]
async fn v311_clean_session_connack_is_rc_0_without_session_present() {
    let broker = Broker::start_default();
    let mut c = RawClient::tcp(broker.addr()).await;
    c.protocol = Protocol::V311;
    c.send(&Packet::Connect(Box::new(connect_v311(
        &unique_id("v311"),
        true,
    ))))
    .await;
    // The exact 3.1.1 wire form: type 2, length 2, no session present, return code 0.
    assert_eq!(c.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x00]);
    c.sync().await;
}

#[tokio::test]
async fn v311_empty_client_id_with_clean_session_0_is_refused_with_rc_2() {
    let broker = Broker::start_default();
    let mut c = RawClient::tcp(broker.addr()).await;
    c.protocol = Protocol::V311;
    c.send(&Packet::Connect(Box::new(connect_v311("", false))))
        .await;
    // [MQTT-3.1.3-8]: CONNACK 0x02 (identifier rejected), then close.
    assert_eq!(c.recv_bytes(4).await, [0x20, 0x02, 0x00, 0x02]);
    c.expect_closed(WAIT).await;
}

#[tokio::test]
async fn v311_empty_client_id_with_clean_session_1_is_accepted() {
    let broker = Broker::start_default();
    let (mut c, ack) = RawClient::connect(broker.addr(), connect_v311("", true)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert!(!ack.session_present);
    c.subscribe("anon/t", QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn v311_rumqttc_connects() {
    let broker = Broker::start_default();
    let c = V4::at(broker.addr(), &unique_id("rumqttc-v4")).await;
    assert_eq!(c.connack.code, rumqttc::ConnectReturnCode::Success);
    assert!(!c.connack.session_present);
    c.disconnect().await;
}

/// Scenario 44 (CONNACK advertises Maximum Packet Size) with the other configured limits.
#[tokio::test]
async fn v5_connack_is_success_and_advertises_configured_limits() {
    let broker = Broker::start_with_clients(
        "maxPacketSizeBytes: 1024, maxReceiveMaximum: 10, maxTopicAliases: 5",
    );
    let (mut c, ack) = RawClient::connect(broker.addr(), connect_v5(&unique_id("v5"))).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS);
    assert!(!ack.session_present);
    assert_eq!(ack.properties.maximum_packet_size, Some(1024), "{ack:?}");
    assert_eq!(ack.properties.receive_maximum, Some(10), "{ack:?}");
    assert_eq!(ack.properties.topic_alias_maximum, Some(5), "{ack:?}");
    // No explicit client id was assigned because one was given.
    assert_eq!(ack.properties.assigned_client_identifier, None);
    c.sync().await;
}

#[tokio::test]
async fn v5_rumqttc_connects() {
    let broker = Broker::start_default();
    let c = V5::at(broker.addr(), &unique_id("rumqttc-v5")).await;
    assert_eq!(
        c.connack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    c.disconnect().await;
}

#[tokio::test]
async fn v5_empty_client_id_gets_an_assigned_client_identifier() {
    let broker = Broker::start_default();
    let (mut a, ack_a) = RawClient::connect_ok(broker.addr(), connect_v5("")).await;
    let (mut b, ack_b) = RawClient::connect_ok(broker.addr(), connect_v5("")).await;
    let id_a = ack_a
        .properties
        .assigned_client_identifier
        .clone()
        .expect("assigned id for a");
    let id_b = ack_b
        .properties
        .assigned_client_identifier
        .clone()
        .expect("assigned id for b");
    assert!(!id_a.is_empty());
    assert_ne!(id_a, id_b, "two anonymous clients got the same identifier");
    // Both stay connected: neither took the other over.
    a.sync().await;
    b.sync().await;
}

#[tokio::test]
async fn unsupported_protocol_level_is_refused_with_rc_1_and_closed() {
    let broker = Broker::start_default();
    for level in [6u8, 2] {
        let mut c = RawClient::tcp(broker.addr()).await;
        // CONNECT "MQTT" level N, clean session, keep alive 60, client id "x": 3.1.1 layout,
        // since a server cannot know the layout of a level it does not speak.
        c.send_raw(&[
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60, 0, 1, b'x',
        ])
        .await;
        // [MQTT-3.1.2-2]: CONNACK return code 0x01, then close. A v5-shaped CONNACK with
        // 0x84 (Unsupported Protocol Version) is the v5 equivalent and also acceptable.
        let head = c.recv_bytes(4).await;
        assert!(
            head == [0x20, 0x02, 0x00, 0x01]
                || (head.len() >= 4 && head[0] == 0x20 && head[3] == 0x84),
            "level {level}: expected CONNACK rc 1 / 0x84, got {head:02x?}"
        );
        match c.try_recv(WAIT).await {
            Recv::Closed => {}
            // The rest of a v5-shaped CONNACK (its properties) may still be in flight.
            Recv::Packet(p) => panic!("level {level}: unexpected packet after CONNACK: {p:?}"),
            Recv::Invalid(_) if head[3] == 0x84 => {}
            other => panic!("level {level}: expected close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn first_packet_other_than_connect_closes_the_connection() {
    let broker = Broker::start_default();
    let not_connect: [(&str, &[u8]); 3] = [
        ("PINGREQ", &[0xC0, 0x00]),
        ("PUBLISH", &[0x30, 0x05, 0x00, 0x01, b't', b'h', b'i']),
        (
            "SUBSCRIBE",
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x00],
        ),
    ];
    for (name, bytes) in not_connect {
        let mut c = RawClient::tcp(broker.addr()).await;
        c.send_raw(bytes).await;
        // [MQTT-3.1.0-1]: nothing but a close, and certainly no CONNACK.
        match c.try_recv(WAIT).await {
            Recv::Closed => {}
            other => panic!("{name} as first packet: expected close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn malformed_packet_gets_v5_disconnect_0x81_and_close() {
    let broker = Broker::start_default();
    let malformed: [(&str, &[u8]); 3] = [
        // SUBSCRIBE must have flags 0b0010 [MQTT-3.8.1-1].
        (
            "SUBSCRIBE with flags 0",
            &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x00],
        ),
        // PUBLISH QoS 3 [MQTT-3.3.1-4].
        (
            "PUBLISH with QoS 3",
            &[0x36, 0x06, 0x00, 0x01, b't', 0x00, 0x01, 0x00],
        ),
        // Topic length 10 in a 4-byte body.
        (
            "PUBLISH with truncated topic",
            &[0x30, 0x04, 0x00, 0x0A, b't', b'x'],
        ),
    ];
    for (name, bytes) in malformed {
        let mut c = RawClient::v5(broker.addr(), &unique_id("malformed")).await;
        c.send_raw(bytes).await;
        let d = c.expect_disconnect(WAIT).await;
        assert_eq!(d.code, ReasonCode::MALFORMED_PACKET, "{name}: {d:?}");
        // Reason strings on failures (the client did not opt out of problem information).
        assert!(
            d.properties.reason_string.is_some(),
            "{name}: no reason string: {d:?}"
        );
    }
}

#[tokio::test]
async fn malformed_packet_closes_a_v311_connection_without_disconnect() {
    let broker = Broker::start_default();
    let mut c = RawClient::v311(broker.addr(), &unique_id("malformed311")).await;
    c.send_raw(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x00])
        .await;
    // 3.1.1 has no server DISCONNECT: the connection is just closed.
    c.expect_closed(WAIT).await;
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    let broker = Broker::start_default();
    let id = unique_id("twice");
    let mut c = RawClient::v5(broker.addr(), &id).await;
    c.send(&Packet::Connect(Box::new(connect_v5(&id)))).await;
    // [MQTT-3.1.0-2].
    let d = c.expect_disconnect(WAIT).await;
    assert_eq!(d.code, ReasonCode::PROTOCOL_ERROR, "{d:?}");
}

/// Scenario 48: a keep alive of 0 or above the cap is replaced by the cap (Server Keep Alive).
#[tokio::test]
async fn server_keep_alive_comes_from_the_configured_cap() {
    let broker = Broker::start_with_clients("maxKeepAliveSeconds: 60");
    for requested in [0u16, 1000] {
        let mut connect = connect_v5(&unique_id("ka"));
        connect.keep_alive = requested;
        let (_c, ack) = RawClient::connect_ok(broker.addr(), connect).await;
        assert_eq!(
            ack.properties.server_keep_alive,
            Some(60),
            "requested {requested}: {ack:?}"
        );
    }
    // Within the cap, the client's own value stands (stated again or left out).
    let mut connect = connect_v5(&unique_id("ka"));
    connect.keep_alive = 30;
    let (_c, ack) = RawClient::connect_ok(broker.addr(), connect).await;
    assert!(
        matches!(ack.properties.server_keep_alive, None | Some(30)),
        "requested 30 under a cap of 60: {ack:?}"
    );
}

#[tokio::test]
async fn rumqttc_sees_server_keep_alive() {
    let broker = Broker::start_with_clients("maxKeepAliveSeconds: 20");
    let mut o = v5_options(broker.addr(), &unique_id("ka-rumqttc"));
    o.set_keep_alive(Duration::from_secs(100));
    let c = V5::connect(o).await;
    let props = c.connack.properties.clone().expect("CONNACK properties");
    assert_eq!(props.server_keep_alive, Some(20));
}

#[tokio::test]
async fn silent_client_is_disconnected_after_one_and_a_half_keep_alives() {
    let broker = Broker::start_default();
    let id = unique_id("silent");
    let mut connect = connect_v5(&id);
    connect.keep_alive = 1;
    let (mut c, _) = RawClient::connect_ok(broker.addr(), connect).await;
    // [MQTT-3.1.2-22]: closed after 1.5 s of silence; v5 may announce it with 0x8D first.
    // Only an upper bound is asserted: timing on a shared CI machine is not ours to judge.
    match c.try_recv(Duration::from_secs(5)).await {
        Recv::Closed => {}
        Recv::Packet(Packet::Disconnect(d)) => {
            assert_eq!(d.code, ReasonCode::KEEP_ALIVE_TIMEOUT, "{d:?}");
            c.expect_closed(WAIT).await;
        }
        other => panic!("expected a keep-alive disconnect within 5 s, got {other:?}"),
    }
    // Server-initiated disconnects are logged at info, naming the client.
    broker.wait_for_log(
        "naming the timed-out client",
        |l| l.contains("INFO") && l.contains(&id),
        WAIT,
    );
}

#[tokio::test]
async fn pinging_client_outlives_its_keep_alive() {
    let broker = Broker::start_default();
    let mut connect = connect_v5(&unique_id("pinger"));
    connect.keep_alive = 1;
    let (mut c, _) = RawClient::connect_ok(broker.addr(), connect).await;
    // Three seconds is two full keep-alive timeouts; pings every half second keep it alive.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.sync().await;
    }
}

/// Scenario 50 (on one node): the old connection gets DISCONNECT 0x8E.
#[tokio::test]
async fn v5_takeover_disconnects_the_old_connection_with_0x8e() {
    let broker = Broker::start_default();
    let id = unique_id("takeover");
    let mut old = RawClient::v5(broker.addr(), &id).await;
    let (mut new, ack) = RawClient::connect_ok(broker.addr(), connect_v5(&id)).await;
    assert!(
        !ack.session_present,
        "clean start must not resume a session"
    );
    let d = old.expect_disconnect(WAIT).await;
    assert_eq!(d.code, ReasonCode::SESSION_TAKEN_OVER, "{d:?}");
    new.sync().await;
}

#[tokio::test]
async fn v311_takeover_closes_the_old_connection() {
    let broker = Broker::start_default();
    let id = unique_id("takeover311");
    let mut old = RawClient::v311(broker.addr(), &id).await;
    let mut new = RawClient::v311(broker.addr(), &id).await;
    old.expect_closed(WAIT).await;
    new.sync().await;
}

#[tokio::test]
async fn rumqttc_v5_takeover_is_reported_to_the_old_client() {
    let broker = Broker::start_default();
    let id = unique_id("takeover-rumqttc");
    let mut old = V5::at(broker.addr(), &id).await;
    let _new = V5::at(broker.addr(), &id).await;
    let err = old
        .inbox
        .wait_error(WAIT)
        .await
        .expect("old client must be disconnected");
    assert!(
        err.contains("SessionTakenOver"),
        "old client's error: {err}"
    );
}

#[tokio::test]
async fn rumqttc_v4_persistent_session_reports_session_present() {
    let broker = Broker::start_default();
    let id = unique_id("persist-v4");
    let mut o = v4_options(broker.addr(), &id);
    o.set_clean_session(false);
    let c = V4::connect(o.clone()).await;
    assert!(!c.connack.session_present);
    c.disconnect().await;
    let c = V4::connect(o).await;
    assert!(
        c.connack.session_present,
        "3.1.1 persistent session must be resumed"
    );
}
