//! Sessions that outlive a connection, end to end: persistent sessions in 3.1.1 and 5.0,
//! offline queueing, redelivery of unacknowledged messages with DUP, clean start, session
//! expiry and its configured cap, and message expiry while queued.
//!
//! Takeover as a connection event is in `connect.rs`; queue limits are in `limits.rs`.

use std::time::Duration;

use e2e::raw::{connect_v5, connect_v311, publish, resp};
use e2e::rumqtt::{V4, V5, v4_options, v5_options};
use e2e::{Broker, RawClient, WAIT, unique_id};
use mqtt::{Connect, Packet, QoS, ReasonCode};

/// A v5 CONNECT that resumes (or creates) a session living `expiry` seconds.
fn persistent_v5(id: &str, expiry: u32) -> Connect {
    let mut c = connect_v5(id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(expiry);
    c
}

#[tokio::test]
async fn v5_persistent_session_receives_messages_published_while_offline() {
    let broker = Broker::start_default();
    let id = unique_id("persist-v5");
    let (mut c, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(!ack.session_present, "no session existed yet");
    c.subscribe("offline/v5", QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publisher = RawClient::v5(broker.addr(), &unique_id("persist-v5-pub")).await;
    for i in 0..3u8 {
        publisher
            .publish(publish("offline/v5", QoS::AtLeastOnce, &[i]))
            .await;
    }

    let (mut c, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(
        ack.session_present,
        "the session must have survived the disconnect"
    );
    for i in 0..3u8 {
        let p = c.recv_publish_ack().await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("offline/v5", &[i][..]),
            "in order"
        );
    }
}

#[tokio::test]
async fn rumqttc_v5_persistent_session_round_trip() {
    use rumqttc::v5::mqttbytes::QoS;
    let broker = Broker::start_default();
    let id = unique_id("persist-r5");
    let mut o = v5_options(broker.addr(), &id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    let mut c = V5::connect(o.clone()).await;
    c.subscribe("offline/r5", QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publisher = V5::at(broker.addr(), &unique_id("persist-r5-pub")).await;
    publisher
        .publish("offline/r5", QoS::AtLeastOnce, false, "queued")
        .await;

    let mut c = V5::connect(o).await;
    assert!(c.connack.session_present);
    assert_eq!(&c.expect_publish().await.payload[..], b"queued");
}

#[tokio::test]
async fn v311_persistent_session_receives_messages_published_while_offline() {
    use rumqttc::QoS;
    let broker = Broker::start_default();
    let id = unique_id("persist-v4");
    let mut o = v4_options(broker.addr(), &id);
    o.set_clean_session(false);
    let mut c = V4::connect(o.clone()).await;
    c.subscribe("offline/v4", QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publisher = V4::at(broker.addr(), &unique_id("persist-v4-pub")).await;
    publisher
        .publish("offline/v4", QoS::AtLeastOnce, false, "queued")
        .await;
    publisher
        .publish("offline/v4", QoS::AtMostOnce, false, "qos0 may be dropped")
        .await;
    publisher
        .publish("offline/v4", QoS::ExactlyOnce, false, "queued2")
        .await;

    let mut c = V4::connect(o).await;
    assert!(c.connack.session_present);
    assert_eq!(&c.expect_publish().await.payload[..], b"queued");
    let mut next = c.expect_publish().await;
    if &next.payload[..] == b"qos0 may be dropped" {
        next = c.expect_publish().await;
    }
    assert_eq!(&next.payload[..], b"queued2");
}

#[tokio::test]
async fn unacknowledged_qos1_is_redelivered_with_dup_on_reconnect() {
    let broker = Broker::start_default();
    let id = unique_id("redeliver");
    let (mut c, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    c.subscribe("redeliver/t", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("redeliver-pub")).await;
    publisher
        .publish(publish("redeliver/t", QoS::AtLeastOnce, b"again"))
        .await;

    let first = c.recv_publish().await;
    assert!(!first.dup);
    drop(c); // no PUBACK

    let (mut c, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(ack.session_present);
    // [MQTT-4.4.0-1]: resent with DUP=1 and the same packet identifier.
    let again = c.recv_publish().await;
    assert!(again.dup, "{again:?}");
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(&again.payload[..], b"again");
    c.ack(&again).await;
    c.sync().await;
}

#[tokio::test]
async fn qos2_pubrel_is_resent_on_reconnect() {
    let broker = Broker::start_default();
    let id = unique_id("pubrel");
    let (mut c, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    c.subscribe("pubrel/t", QoS::ExactlyOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("pubrel-pub")).await;
    publisher
        .publish(publish("pubrel/t", QoS::ExactlyOnce, b"two-phase"))
        .await;

    let p = c.recv_publish().await;
    c.send(&Packet::PubRec(resp(p.packet_id))).await;
    match c.recv().await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, p.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    drop(c); // no PUBCOMP

    let (mut c, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(ack.session_present);
    // [MQTT-4.4.0-1]: the PUBREL is resent, not the PUBLISH.
    match c.recv().await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, p.packet_id),
        other => panic!("expected the PUBREL again, got {other:?}"),
    }
    c.send(&Packet::PubComp(resp(p.packet_id))).await;
    c.sync().await;
}

#[tokio::test]
async fn clean_start_discards_the_previous_session() {
    let broker = Broker::start_default();
    let id = unique_id("clean");
    let (mut c, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    c.subscribe("clean/old", QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut fresh = connect_v5(&id);
    fresh.properties.session_expiry_interval = Some(60);
    let (mut c, ack) = RawClient::connect_ok(broker.addr(), fresh).await;
    assert!(!ack.session_present, "clean start must not resume");
    c.subscribe("clean/new", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("clean-pub")).await;
    publisher
        .publish(publish("clean/old", QoS::AtLeastOnce, b"old subscription"))
        .await;
    publisher
        .publish(publish("clean/new", QoS::AtLeastOnce, b"new subscription"))
        .await;
    let p = c.recv_publish_ack().await;
    assert_eq!(
        p.topic, "clean/new",
        "the old subscription survived clean start: {p:?}"
    );
}

#[tokio::test]
async fn v5_session_with_zero_expiry_ends_with_the_connection() {
    let broker = Broker::start_default();
    let id = unique_id("zero-expiry");
    let mut connect = connect_v5(&id);
    connect.clean_start = false; // no Session Expiry Interval: 0
    let (mut c, _) = RawClient::connect_ok(broker.addr(), connect.clone()).await;
    c.subscribe("zero/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (_c, ack) = RawClient::connect_ok(broker.addr(), connect).await;
    assert!(
        !ack.session_present,
        "a session with expiry 0 must end at disconnect"
    );
}

#[tokio::test]
async fn v311_clean_session_discards_the_session() {
    let broker = Broker::start_default();
    let id = unique_id("clean311");
    let (c, _) = RawClient::connect_ok(broker.addr(), connect_v311(&id, false)).await;
    c.disconnect().await;
    let (c, ack) = RawClient::connect_ok(broker.addr(), connect_v311(&id, true)).await;
    assert!(!ack.session_present);
    c.disconnect().await;
    let (_c, ack) = RawClient::connect_ok(broker.addr(), connect_v311(&id, false)).await;
    assert!(
        !ack.session_present,
        "clean session 1 must have removed the stored session"
    );
}

/// Scenario 47 with a short cap: the granted expiry is the cap, and the session is gone once
/// it has passed.
#[tokio::test]
async fn scenario_47_session_expiry_is_capped_and_the_session_expires() {
    let broker = Broker::start_with_clients("maxSessionExpirySeconds: 1");
    let id = unique_id("expiry");
    let (mut c, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 3600)).await;
    assert_eq!(ack.properties.session_expiry_interval, Some(1), "{ack:?}");
    c.subscribe("expiry/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("expiry-pub")).await;
    publisher
        .publish(publish("expiry/t", QoS::AtLeastOnce, b"too late"))
        .await;

    // Reconnecting is the only way to look, and it would revive the session, so wait first.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut c, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 3600)).await;
    assert!(
        !ack.session_present,
        "the session should have expired after 1 s"
    );
    // Nothing from the dead session arrives.
    c.expect_silence(e2e::QUIET).await;
}

#[tokio::test]
async fn session_survives_within_its_expiry() {
    let broker = Broker::start_with_clients("maxSessionExpirySeconds: 30");
    let id = unique_id("within");
    let (c, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 3600)).await;
    c.disconnect().await;
    let (_c, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 3600)).await;
    assert!(ack.session_present);
}

/// Scenario 49: a queued message whose expiry passes while its session is offline is never
/// delivered; one with time left arrives with the remaining interval.
#[tokio::test]
async fn scenario_49_message_expiring_in_an_offline_queue_is_discarded() {
    let broker = Broker::start_default();
    let id = unique_id("msg-expiry");
    let (mut c, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    c.subscribe("msgexp/#", QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publisher = RawClient::v5(broker.addr(), &unique_id("msg-expiry-pub")).await;
    let mut short = publish("msgexp/short", QoS::AtLeastOnce, b"expires");
    short.properties.message_expiry_interval = Some(1);
    publisher.publish(short).await;
    let mut long = publish("msgexp/long", QoS::AtLeastOnce, b"survives");
    long.properties.message_expiry_interval = Some(60);
    publisher.publish(long).await;

    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (mut c, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(ack.session_present);
    let p = c.recv_publish_ack().await;
    assert_eq!(
        p.topic, "msgexp/long",
        "the expired message was delivered: {p:?}"
    );
    let left = p
        .properties
        .message_expiry_interval
        .expect("remaining expiry");
    assert!(
        left < 60,
        "expiry must be decremented while queued, got {left}"
    );
}

#[tokio::test]
async fn takeover_with_clean_start_false_keeps_the_session() {
    let broker = Broker::start_default();
    let id = unique_id("takeover-keep");
    let (mut old, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    old.subscribe("keep/t", QoS::AtLeastOnce).await;
    let (mut new, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 60)).await;
    assert!(ack.session_present, "the taken-over session continues");
    assert_eq!(
        old.expect_disconnect(WAIT).await.code,
        ReasonCode::SESSION_TAKEN_OVER
    );
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("takeover-keep-pub")).await;
    publisher
        .publish(publish(
            "keep/t",
            QoS::AtLeastOnce,
            b"to the new connection",
        ))
        .await;
    assert_eq!(
        &new.recv_publish_ack().await.payload[..],
        b"to the new connection"
    );
}
