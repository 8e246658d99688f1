//! Retained messages (set, replace, clear, Retain Handling 0/1/2, message expiry) and will
//! messages (abrupt close, normal DISCONNECT, DISCONNECT with will, will delay, takeover, keep
//! alive timeout), end to end.
//!
//! Live delivery options such as Retain As Published are in `pubsub.rs`. Negative checks use a
//! sentinel message rather than a sleep wherever ordering makes that possible.

use std::time::Duration;

use e2e::raw::{connect_v5, connect_v311, publish, will};
use e2e::rumqtt::V4;
use e2e::{Broker, QUIET, RawClient, Recv, WAIT, unique_id};
use mqtt::{Packet, QoS, ReasonCode, SubOptions};

/// Publish a retained message (empty payload clears).
async fn retain(c: &mut RawClient, topic: &str, payload: &[u8]) {
    let mut p = publish(topic, QoS::AtLeastOnce, payload);
    p.retain = true;
    assert_eq!(c.publish(p).await, ReasonCode::SUCCESS);
}

/// A new subscriber on `filter` (Retain Handling 0) and the retained messages it gets, read up
/// to a sentinel published live on `sentinel_topic` (which `filter` must match).
async fn retained_seen_by_new_subscriber(
    broker: &Broker,
    publisher: &mut RawClient,
    filter: &str,
    sentinel_topic: &str,
) -> Vec<(String, Vec<u8>)> {
    let mut sub = RawClient::v5(broker.addr(), &unique_id("ret-sub")).await;
    sub.subscribe(filter, QoS::AtLeastOnce).await;
    publisher
        .publish(publish(sentinel_topic, QoS::AtLeastOnce, b"sentinel"))
        .await;
    let mut seen = Vec::new();
    loop {
        let p = sub.recv_publish_ack().await;
        if p.topic == sentinel_topic && !p.retain && &p.payload[..] == b"sentinel" {
            return seen;
        }
        assert!(
            p.retain,
            "a message sent on subscribe must have retain=1 [MQTT-3.3.1-8]: {p:?}"
        );
        seen.push((p.topic, p.payload.to_vec()));
    }
}

#[tokio::test]
async fn retained_message_is_set_replaced_and_cleared() {
    let broker = Broker::start_default();
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("ret-pub")).await;

    retain(&mut publisher, "ret/a", b"first").await;
    let seen = retained_seen_by_new_subscriber(&broker, &mut publisher, "ret/#", "ret/s").await;
    assert_eq!(seen, vec![("ret/a".to_owned(), b"first".to_vec())]);

    retain(&mut publisher, "ret/a", b"second").await;
    let seen = retained_seen_by_new_subscriber(&broker, &mut publisher, "ret/#", "ret/s").await;
    assert_eq!(
        seen,
        vec![("ret/a".to_owned(), b"second".to_vec())],
        "replace"
    );

    // [MQTT-3.3.1-6]: an empty retained payload removes it (and is not itself retained).
    retain(&mut publisher, "ret/a", b"").await;
    let seen = retained_seen_by_new_subscriber(&broker, &mut publisher, "ret/#", "ret/s").await;
    assert_eq!(seen, vec![], "clear");
}

#[tokio::test]
async fn retained_messages_match_wildcard_subscriptions() {
    let broker = Broker::start_default();
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("retw-pub")).await;
    for t in ["home/1/temp", "home/2/temp", "home/2/hum", "office/1/temp"] {
        retain(&mut publisher, t, t.as_bytes()).await;
    }
    let mut seen =
        retained_seen_by_new_subscriber(&broker, &mut publisher, "home/+/temp", "home/s/temp")
            .await;
    seen.sort();
    let topics: Vec<_> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["home/1/temp", "home/2/temp"]);
}

#[tokio::test]
async fn rumqttc_v311_subscriber_gets_retained_message_with_retain_flag() {
    let broker = Broker::start_default();
    let mut publisher = V4::at(broker.addr(), &unique_id("ret4-pub")).await;
    publisher
        .publish("ret4/t", rumqttc::QoS::AtLeastOnce, true, "kept")
        .await;
    let mut sub = V4::at(broker.addr(), &unique_id("ret4-sub")).await;
    sub.subscribe("ret4/t", rumqttc::QoS::AtLeastOnce).await;
    let p = sub.expect_publish().await;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"kept");
}

#[tokio::test]
async fn retain_handling_0_1_2() {
    let broker = Broker::start_default();
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("rh-pub")).await;
    retain(&mut publisher, "rh/t", b"kept").await;

    let mut sub = RawClient::v5(broker.addr(), &unique_id("rh-sub")).await;
    let with = |rh: u8| SubOptions {
        qos: QoS::AtLeastOnce,
        retain_handling: rh,
        ..SubOptions::default()
    };

    // 2: never send retained messages on subscribe [MQTT-3.3.1-11].
    sub.subscribe_with(&[("rh/t", with(2))], None).await;
    publisher
        .publish(publish("rh/t", QoS::AtLeastOnce, b"live"))
        .await;
    assert_eq!(
        &sub.recv_publish_ack().await.payload[..],
        b"live",
        "RH 2 sent a retained message"
    );

    // 1: only when the subscription is new [MQTT-3.3.1-10]; it already exists here.
    sub.subscribe_with(&[("rh/t", with(1))], None).await;
    publisher
        .publish(publish("rh/t", QoS::AtLeastOnce, b"live2"))
        .await;
    assert_eq!(
        &sub.recv_publish_ack().await.payload[..],
        b"live2",
        "RH 1 resent on an existing subscription"
    );

    // 1 on a new subscription does send it.
    sub.subscribe_with(&[("rh/+", with(1))], None).await;
    let p = sub.recv_publish_ack().await;
    assert!(
        p.retain && &p.payload[..] == b"kept",
        "RH 1 on a new subscription: {p:?}"
    );

    // 0: always, even when re-subscribing [MQTT-3.3.1-9].
    sub.subscribe_with(&[("rh/t", with(0))], None).await;
    let p = sub.recv_publish_ack().await;
    assert!(p.retain && &p.payload[..] == b"kept", "RH 0: {p:?}");
}

/// Message expiry on a retained message: gone once the interval has passed.
#[tokio::test]
async fn expired_retained_message_is_not_delivered() {
    let broker = Broker::start_default();
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("exp-pub")).await;
    let mut p = publish("exp/short", QoS::AtLeastOnce, b"short-lived");
    p.retain = true;
    p.properties.message_expiry_interval = Some(1);
    publisher.publish(p).await;
    // Expiry is about elapsed time, so time must actually pass; nothing to poll for.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let seen = retained_seen_by_new_subscriber(&broker, &mut publisher, "exp/#", "exp/s").await;
    assert_eq!(
        seen,
        vec![],
        "a retained message past its expiry was delivered"
    );
}

#[tokio::test]
async fn retained_message_expiry_is_decremented_while_it_waits() {
    let broker = Broker::start_default();
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("expd-pub")).await;
    let mut p = publish("expd/t", QoS::AtLeastOnce, b"x");
    p.retain = true;
    p.properties.message_expiry_interval = Some(60);
    publisher.publish(p).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut sub = RawClient::v5(broker.addr(), &unique_id("expd-sub")).await;
    sub.subscribe("expd/t", QoS::AtLeastOnce).await;
    let got = sub.recv_publish_ack().await;
    // [MQTT-3.3.2-6]: the interval sent on is the received one minus the time it waited.
    let left = got
        .properties
        .message_expiry_interval
        .expect("expiry must be forwarded");
    assert!(
        (1..60).contains(&left),
        "expiry should have dropped below 60, got {left}"
    );
}

/// A subscriber on `topic` for will messages.
async fn will_watcher(broker: &Broker, topic: &str) -> RawClient {
    let mut w = RawClient::v5(broker.addr(), &unique_id("will-watch")).await;
    w.subscribe(topic, QoS::AtLeastOnce).await;
    w
}

#[tokio::test]
async fn v5_will_is_published_on_abrupt_close() {
    let broker = Broker::start_default();
    let mut watcher = will_watcher(&broker, "will/v5").await;
    let mut connect = connect_v5(&unique_id("will-v5"));
    let mut w = will("will/v5", "gone", QoS::AtLeastOnce);
    w.properties.content_type = Some("text/plain".to_owned());
    w.properties.user_properties = vec![("why".to_owned(), "crash".to_owned())];
    connect.will = Some(w);
    let (c, _) = RawClient::connect_ok(broker.addr(), connect).await;
    drop(c);
    let p = watcher.recv_publish_ack().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/v5", &b"gone"[..])
    );
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        p.properties.user_properties,
        vec![("why".to_owned(), "crash".to_owned())]
    );
}

#[tokio::test]
async fn v311_will_is_published_on_abrupt_close() {
    let broker = Broker::start_default();
    let mut watcher = will_watcher(&broker, "will/v311").await;
    let mut connect = connect_v311(&unique_id("will-v311"), true);
    connect.will = Some(will("will/v311", "gone311", QoS::AtMostOnce));
    let (c, _) = RawClient::connect_ok(broker.addr(), connect).await;
    drop(c);
    assert_eq!(&watcher.recv_publish_ack().await.payload[..], b"gone311");
}

#[tokio::test]
async fn retained_will_becomes_the_retained_message() {
    let broker = Broker::start_default();
    let mut connect = connect_v5(&unique_id("will-ret"));
    let mut w = will("will/retained", "last words", QoS::AtLeastOnce);
    w.retain = true;
    connect.will = Some(w);
    let (c, _) = RawClient::connect_ok(broker.addr(), connect).await;
    let mut watcher = will_watcher(&broker, "will/retained").await;
    drop(c);
    watcher.recv_publish_ack().await;
    let mut later = will_watcher(&broker, "will/retained").await;
    let p = later.recv_publish_ack().await;
    assert!(p.retain && &p.payload[..] == b"last words", "{p:?}");
}

#[tokio::test]
async fn will_is_not_published_after_normal_disconnect() {
    let broker = Broker::start_default();
    let mut watcher = will_watcher(&broker, "will/normal").await;
    for protocol_v5 in [true, false] {
        let id = unique_id("will-normal");
        let mut connect = if protocol_v5 {
            connect_v5(&id)
        } else {
            connect_v311(&id, true)
        };
        connect.will = Some(will("will/normal", "must not appear", QoS::AtLeastOnce));
        let (c, _) = RawClient::connect_ok(broker.addr(), connect).await;
        // [MQTT-3.1.2-10]: DISCONNECT discards the will. `disconnect` waits for the close.
        c.disconnect().await;
    }
    // The will would be published while the connection is torn down, before the close we
    // waited for; a short quiet period covers any asynchronous hand-off inside the broker.
    watcher.expect_silence(QUIET).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("will-normal-pub")).await;
    publisher
        .publish(publish("will/normal", QoS::AtLeastOnce, b"sentinel"))
        .await;
    assert_eq!(&watcher.recv_publish_ack().await.payload[..], b"sentinel");
}

#[tokio::test]
async fn disconnect_with_will_message_0x04_publishes_the_will() {
    let broker = Broker::start_default();
    let mut watcher = will_watcher(&broker, "will/0x04").await;
    let mut connect = connect_v5(&unique_id("will-04"));
    connect.will = Some(will("will/0x04", "asked for", QoS::AtLeastOnce));
    let (c, _) = RawClient::connect_ok(broker.addr(), connect).await;
    c.disconnect_with(ReasonCode::DISCONNECT_WITH_WILL).await;
    assert_eq!(&watcher.recv_publish_ack().await.payload[..], b"asked for");
}

#[tokio::test]
async fn will_delay_postpones_the_will() {
    let broker = Broker::start_default();
    let mut watcher = will_watcher(&broker, "will/delayed").await;
    let mut connect = connect_v5(&unique_id("will-delay"));
    connect.properties.session_expiry_interval = Some(60);
    let mut w = will("will/delayed", "late", QoS::AtLeastOnce);
    w.properties.will_delay_interval = Some(4);
    connect.will = Some(w);
    let (c, _) = RawClient::connect_ok(broker.addr(), connect).await;
    drop(c);
    // Well inside the 4 s delay nothing may arrive; afterwards the will must (generously).
    watcher.expect_silence(Duration::from_secs(1)).await;
    match watcher.try_recv(Duration::from_secs(15)).await {
        Recv::Packet(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"late"),
        other => panic!("expected the delayed will, got {other:?}"),
    }
}

#[tokio::test]
async fn reconnecting_within_the_will_delay_cancels_the_will() {
    let broker = Broker::start_default();
    let mut watcher = will_watcher(&broker, "will/cancel").await;
    let id = unique_id("will-cancel");
    let mut connect = connect_v5(&id);
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(60);
    let mut w = will("will/cancel", "must not appear", QoS::AtLeastOnce);
    w.properties.will_delay_interval = Some(2);
    connect.will = Some(w);
    let (c, _) = RawClient::connect_ok(broker.addr(), connect).await;
    drop(c);
    // [MQTT-3.1.3-9]: a new connection to the session before the delay ends means no will.
    let mut again = connect_v5(&id);
    again.clean_start = false;
    again.properties.session_expiry_interval = Some(60);
    let (mut back, ack) = RawClient::connect_ok(broker.addr(), again).await;
    assert!(ack.session_present);
    // Wait past the original delay: the only time-based check in this file.
    watcher.expect_silence(Duration::from_secs(3)).await;
    back.sync().await;
}

#[tokio::test]
async fn will_is_published_when_the_session_is_taken_over() {
    let broker = Broker::start_default();
    let mut watcher = will_watcher(&broker, "will/takeover").await;
    let id = unique_id("will-takeover");
    let mut connect = connect_v5(&id);
    connect.will = Some(will("will/takeover", "replaced", QoS::AtLeastOnce));
    let (mut old, _) = RawClient::connect_ok(broker.addr(), connect).await;
    let _new = RawClient::v5(broker.addr(), &id).await;
    assert_eq!(
        old.expect_disconnect(WAIT).await.code,
        ReasonCode::SESSION_TAKEN_OVER
    );
    assert_eq!(&watcher.recv_publish_ack().await.payload[..], b"replaced");
}

#[tokio::test]
async fn will_is_published_on_keep_alive_timeout() {
    let broker = Broker::start_default();
    let mut watcher = will_watcher(&broker, "will/silent").await;
    let mut connect = connect_v5(&unique_id("will-silent"));
    connect.keep_alive = 1;
    connect.will = Some(will("will/silent", "timed out", QoS::AtLeastOnce));
    // Keep the socket open but say nothing: only the keep-alive timer can end this.
    let (_silent, _) = RawClient::connect_ok(broker.addr(), connect).await;
    match watcher.try_recv(Duration::from_secs(8)).await {
        Recv::Packet(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"timed out"),
        other => panic!("expected the will after the keep-alive timeout, got {other:?}"),
    }
}
