//! Limits end to end: Maximum Packet Size both ways, Receive Maximum both ways, the
//! per-subscriber queue bound and its strategies, the global memory budget (Quota exceeded),
//! and a slow subscriber that must not stall anyone else.
//!
//! Limits advertised in CONNACK are checked in `connect.rs`; session expiry caps in
//! `sessions.rs`.

use std::time::Duration;

use e2e::raw::{connect_v5, publish};
use e2e::{Broker, RawClient, WAIT, unique_id};
use mqtt::{Connect, Packet, QoS, ReasonCode};

fn persistent_v5(id: &str) -> Connect {
    let mut c = connect_v5(id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(300);
    c
}

/// Scenario 44: a PUBLISH above `maxPacketSizeBytes` → DISCONNECT 0x95.
#[tokio::test]
async fn scenario_44_publish_larger_than_max_packet_size_gets_disconnect_0x95() {
    let broker = Broker::start_with_clients("maxPacketSizeBytes: 1024");
    let mut sub = RawClient::v5(broker.addr(), &unique_id("big-sub")).await;
    sub.subscribe("big/#", QoS::AtMostOnce).await;

    let mut c = RawClient::v5(broker.addr(), &unique_id("big")).await;
    // Fits: 1000 bytes of payload plus headers stays under 1024.
    c.publish(publish("big/ok", QoS::AtLeastOnce, &[b'a'; 1000]))
        .await;
    let mut p = publish("big/no", QoS::AtLeastOnce, &[b'b'; 2000]);
    p.packet_id = c.next_id();
    c.send(&Packet::Publish(p)).await;
    let d = c.expect_disconnect(WAIT).await;
    assert_eq!(d.code, ReasonCode::PACKET_TOO_LARGE, "{d:?}");

    // The small one was delivered, the big one was not.
    assert_eq!(sub.recv_publish().await.topic, "big/ok");
    let mut other = RawClient::v5(broker.addr(), &unique_id("big-after")).await;
    other
        .publish(publish("big/sentinel", QoS::AtMostOnce, b"s"))
        .await;
    assert_eq!(sub.recv_publish().await.topic, "big/sentinel");
}

#[tokio::test]
async fn oversized_publish_is_refused_before_the_body_arrives() {
    let broker = Broker::start_with_clients("maxPacketSizeBytes: 1024");
    let mut c = RawClient::v5(broker.addr(), &unique_id("huge")).await;
    // Only the fixed header of a 100 MB PUBLISH: the broker must not wait for the body.
    c.send_raw(&[0x30, 0x80, 0x80, 0x80, 0x30]).await;
    let d = c.expect_disconnect(WAIT).await;
    assert_eq!(d.code, ReasonCode::PACKET_TOO_LARGE, "{d:?}");
}

#[tokio::test]
async fn v311_publish_larger_than_max_packet_size_closes_the_connection() {
    let broker = Broker::start_with_clients("maxPacketSizeBytes: 1024");
    let mut c = RawClient::v311(broker.addr(), &unique_id("big311")).await;
    c.send(&Packet::Publish(publish(
        "big/no",
        QoS::AtMostOnce,
        &[b'b'; 2000],
    )))
    .await;
    c.expect_closed(WAIT).await;
}

#[tokio::test]
async fn message_larger_than_the_clients_maximum_packet_size_is_not_sent_to_it() {
    let broker = Broker::start_default();
    let mut connect = connect_v5(&unique_id("small-max"));
    connect.properties.maximum_packet_size = Some(200);
    let (mut small, _) = RawClient::connect_ok(broker.addr(), connect).await;
    small.subscribe("size/#", QoS::AtLeastOnce).await;
    let mut big = RawClient::v5(broker.addr(), &unique_id("big-max")).await;
    big.subscribe("size/#", QoS::AtLeastOnce).await;

    let mut publisher = RawClient::v5(broker.addr(), &unique_id("size-pub")).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        publisher
            .publish(publish("size/large", qos, &[b'x'; 500]))
            .await;
    }
    publisher
        .publish(publish("size/small", QoS::AtLeastOnce, b"fits"))
        .await;
    // [MQTT-3.1.2-25]: the broker discards what the client cannot take, and carries on.
    let p = small.recv_publish_ack().await;
    assert_eq!(
        p.topic,
        "size/small",
        "a packet above the client's maximum was sent: {} bytes",
        p.payload.len()
    );
    // Other subscribers are unaffected.
    for _ in 0..2 {
        assert_eq!(big.recv_publish_ack().await.topic, "size/large");
    }
    assert_eq!(big.recv_publish_ack().await.topic, "size/small");
}

/// Client → server flow control: QoS 2 PUBLISHes hold a Receive Maximum slot until PUBCOMP,
/// so a client that never sends PUBREL exceeds it on the (max + 1)th.
#[tokio::test]
async fn client_exceeding_receive_maximum_gets_disconnect_0x93() {
    let broker = Broker::start_with_clients("maxReceiveMaximum: 3");
    let (mut c, ack) = RawClient::connect_ok(broker.addr(), connect_v5(&unique_id("rm"))).await;
    assert_eq!(ack.properties.receive_maximum, Some(3));
    for id in 1..=3u16 {
        let mut p = publish("rm/t", QoS::ExactlyOnce, b"x");
        p.packet_id = id;
        c.send(&Packet::Publish(p)).await;
        match c.recv().await {
            Packet::PubRec(r) => assert_eq!((r.packet_id, r.code), (id, ReasonCode::SUCCESS)),
            other => panic!("expected PUBREC {id}, got {other:?}"),
        }
    }
    let mut p = publish("rm/t", QoS::ExactlyOnce, b"one too many");
    p.packet_id = 4;
    c.send(&Packet::Publish(p)).await;
    // [MQTT-3.3.4-9].
    let d = c.expect_disconnect(WAIT).await;
    assert_eq!(d.code, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED, "{d:?}");
}

/// Server → client flow control: never more unacknowledged deliveries than the client's
/// Receive Maximum.
#[tokio::test]
async fn broker_respects_the_clients_receive_maximum() {
    let broker = Broker::start_default();
    let mut connect = connect_v5(&unique_id("rm-client"));
    connect.properties.receive_maximum = Some(2);
    let (mut c, _) = RawClient::connect_ok(broker.addr(), connect).await;
    c.subscribe("rmc/t", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("rm-client-pub")).await;
    for i in 0..5u8 {
        publisher
            .publish(publish("rmc/t", QoS::AtLeastOnce, &[i]))
            .await;
    }
    let first = c.recv_publish().await;
    let second = c.recv_publish().await;
    assert_eq!(
        (&first.payload[..], &second.payload[..]),
        (&[0u8][..], &[1u8][..])
    );
    // [MQTT-3.3.4-7]: with two unacknowledged, the third must wait.
    c.expect_silence(e2e::QUIET).await;
    c.ack(&first).await;
    assert_eq!(&c.recv_publish().await.payload[..], &[2u8]);
    c.expect_silence(e2e::QUIET).await;
}

/// Fill an offline persistent session with `n` QoS 1 messages and reconnect it; returns the
/// payloads it gets (the first byte of each), read until a sentinel.
async fn offline_queue_after(broker: &Broker, n: u8) -> Vec<u8> {
    let id = unique_id("queue");
    let (mut c, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id)).await;
    c.subscribe("queue/#", QoS::AtLeastOnce).await;
    c.subscribe("sentinel", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("queue-pub")).await;
    for i in 0..n {
        // The publisher is never refused because of one subscriber's queue.
        let code = publisher
            .publish(publish("queue/t", QoS::AtLeastOnce, &[i]))
            .await;
        assert!(code.is_success(), "publish {i}: {code:?}");
    }
    let (mut c, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id)).await;
    assert!(ack.session_present);
    publisher
        .publish(publish("sentinel", QoS::AtLeastOnce, b"end"))
        .await;
    let mut got = Vec::new();
    loop {
        let p = c.recv_publish_ack().await;
        if p.topic == "sentinel" {
            return got;
        }
        got.push(p.payload[0]);
    }
}

/// Scenario 46 with DropOldest: the newest ≤ 10 survive (one process = one partition × one
/// worker).
#[tokio::test]
async fn scenario_46_drop_oldest_keeps_the_newest_messages() {
    let broker =
        Broker::start_with_clients("subscriberQueueLimit: {length: 10, strategy: DropOldest}");
    let got = offline_queue_after(&broker, 15).await;
    assert!(!got.is_empty() && got.len() <= 10, "got {got:?}");
    assert_eq!(
        got.last(),
        Some(&14),
        "the newest message must survive: {got:?}"
    );
    assert!(
        got.iter().all(|&i| i >= 5),
        "only the newest 10 may survive: {got:?}"
    );
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "order must be kept: {got:?}"
    );
}

/// Scenario 46 with strategy None: broker-spec §7.4 defines None as unbounded (until session
/// expiry), so all 15 arrive.
#[tokio::test]
async fn scenario_46_strategy_none_delivers_everything() {
    let broker = Broker::start_with_clients("subscriberQueueLimit: {length: 10, strategy: None}");
    let got = offline_queue_after(&broker, 15).await;
    assert_eq!(got, (0..15).collect::<Vec<u8>>());
}

/// Scenario 45 (in spirit): when queued messages fill the memory budget, QoS 1 publishers get
/// PUBACK 0x97 Quota exceeded instead of unbounded growth, and recover once it drains.
#[tokio::test]
async fn scenario_45_memory_budget_gives_quota_exceeded() {
    // Tiny: a 16 MiB budget, backpressure from 12 MiB.
    let config = "apiVersion: gatehouse.io/v1\nkind: Broker\nmetadata: {name: default}\n\
                  spec: {memoryProfile: Tiny}\n---\n"
        .to_owned()
        + e2e::broker::DEFAULT_LISTENER;
    let broker = Broker::start(&config);
    let id = unique_id("budget");
    let (mut c, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id)).await;
    c.subscribe("budget/t", QoS::AtLeastOnce).await;
    c.disconnect().await;

    let mut publisher = RawClient::v5(broker.addr(), &unique_id("budget-pub")).await;
    let payload = vec![0u8; 256 * 1024];
    let mut accepted = 0;
    let refused = loop {
        let code = publisher
            .publish(publish("budget/t", QoS::AtLeastOnce, &payload))
            .await;
        if code == ReasonCode::QUOTA_EXCEEDED {
            break true;
        }
        assert_eq!(code, ReasonCode::SUCCESS);
        accepted += 1;
        // 200 × 256 KiB = 50 MiB, three times the budget.
        if accepted == 200 {
            break false;
        }
    };
    assert!(
        refused,
        "no Quota exceeded after {accepted} × 256 KiB queued against a 16 MiB budget"
    );
    assert!(
        accepted >= 10,
        "refused too early, after {accepted} messages"
    );

    // Drain the queue; the publisher is accepted again.
    let (mut c, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id)).await;
    for _ in 0..accepted {
        c.recv_publish_ack().await;
    }
    c.sync().await;
    let code = publisher
        .publish(publish("budget/t", QoS::AtLeastOnce, b"small"))
        .await;
    assert_eq!(code, ReasonCode::SUCCESS, "the budget should be free again");
}

#[tokio::test]
async fn slow_subscriber_does_not_stall_other_clients() {
    let broker =
        Broker::start_with_clients("subscriberQueueLimit: {length: 100, strategy: DropOldest}");
    // Subscribes, then stops reading its socket.
    let mut slow = RawClient::v5(broker.addr(), &unique_id("slow")).await;
    slow.subscribe("flood/t", QoS::AtLeastOnce).await;
    let mut fast = RawClient::v5(broker.addr(), &unique_id("fast")).await;
    fast.subscribe("flood/t", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("flood-pub")).await;

    // 64 MB in all: far more than the slow client's socket buffers and queue can hold. The
    // fast subscriber reads each message before the next is published, so it never lags and
    // its own queue bound never applies; if the broker let the slow one hold things up, this
    // loop would stop and the timeout would catch it.
    const N: u32 = 2000;
    let mut payload = vec![0u8; 32 * 1024];
    let flood = async {
        for i in 0..N {
            payload[..4].copy_from_slice(&i.to_be_bytes());
            let code = publisher
                .publish(publish("flood/t", QoS::AtLeastOnce, &payload))
                .await;
            assert_eq!(code, ReasonCode::SUCCESS, "message {i}");
            let p = fast.recv_publish_ack().await;
            assert_eq!(
                &p.payload[..4],
                &i.to_be_bytes(),
                "fast subscriber lost or reordered"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(60), flood)
        .await
        .expect("the flood stalled: a slow subscriber held up the others");

    // The slow subscriber's backlog was bounded (DropOldest): once it reads again it gets the
    // newest message but not all of them.
    let mut received = 0u32;
    loop {
        // DropOldest keeps the newest, so the last message must come; `recv` bounds the wait.
        let p = slow.recv_publish_ack().await;
        received += 1;
        if p.payload[..4] == (N - 1).to_be_bytes() {
            break;
        }
    }
    assert!(
        received < N,
        "nothing was dropped for the slow subscriber: its queue is unbounded"
    );
}
