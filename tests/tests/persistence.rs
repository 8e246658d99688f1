//! Durability end to end: persistent sessions (subscriptions, queued and in-flight QoS 1/2
//! messages, wills) and retained messages survive a broker restart — a clean SIGTERM and a
//! `kill -9` in the middle of a stream — and session expiry still applies across restarts.
//!
//! The counting rule is the issue's: no message that was acknowledged to a publisher for a
//! persistent session may be lost. Duplicates are allowed (QoS 1 is at least once, and after a
//! crash an unacknowledged delivery is sent again).

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::broker::DEFAULT_LISTENER;
use e2e::raw::{connect_v5, connect_v311, publish, resp, will};
use e2e::{Broker, RawClient, Recv, WAIT, unique_id};
use mqtt::{Connect, Packet, QoS, ReasonCode};

fn persistent_v5(id: &str, expiry: u32) -> Connect {
    let mut c = connect_v5(id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(expiry);
    c
}

fn seq_of(payload: &[u8]) -> u32 {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected payload {payload:?}"))
}

/// Receive PUBLISHes on `topic`, acknowledging as they come (PUBACK, or PUBREC then PUBCOMP
/// for the PUBREL) without waiting in between, until `want` of them have arrived or nothing
/// more comes. Returns their sequence numbers in arrival order.
async fn drain_ordered(c: &mut RawClient, topic: &str, want: usize) -> Vec<u32> {
    let mut got = Vec::new();
    while got.len() < want {
        match c.try_recv(WAIT).await {
            Recv::Packet(Packet::Publish(p)) => {
                if p.topic == topic {
                    got.push(seq_of(&p.payload));
                }
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => c.send(&Packet::PubAck(resp(p.packet_id))).await,
                    QoS::ExactlyOnce => c.send(&Packet::PubRec(resp(p.packet_id))).await,
                }
            }
            Recv::Packet(Packet::PubRel(r)) => c.send(&Packet::PubComp(resp(r.packet_id))).await,
            Recv::Packet(other) => panic!("unexpected {other:?}"),
            _ => break,
        }
    }
    got
}

/// The next PUBLISH, completing QoS 2 flows (PUBREL → PUBCOMP) that finish meanwhile.
async fn next_publish(c: &mut RawClient) -> mqtt::Publish {
    loop {
        match c.recv().await {
            Packet::PubRel(r) => c.send(&Packet::PubComp(resp(r.packet_id))).await,
            Packet::Publish(p) => return p,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn drain(c: &mut RawClient, topic: &str, want: usize) -> BTreeSet<u32> {
    drain_ordered(c, topic, want).await.into_iter().collect()
}

/// A subscriber offline with a queue of acknowledged QoS 1 and QoS 2 messages; the broker is
/// killed with SIGKILL; after the restart the subscriber resumes its session and gets every
/// one of them, in order. A retained message survives too, and a non-persistent session does
/// not.
#[tokio::test]
async fn queued_messages_and_retained_survive_kill_9() {
    let mut broker = Broker::start_default();
    let sub_id = unique_id("durable-sub");
    let (mut sub, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&sub_id, 3600)).await;
    sub.subscribe("durable/#", QoS::ExactlyOnce).await;
    sub.disconnect().await;
    // 3.1.1 "clean session = 0" is a persistent session too; this one stays connected until
    // the crash, so its deliveries are in flight rather than queued.
    let sub311_id = unique_id("durable-311");
    let (mut sub311, _) =
        RawClient::connect_ok(broker.addr(), connect_v311(&sub311_id, false)).await;
    sub311.subscribe("durable/q1", QoS::AtLeastOnce).await;
    let transient_id = unique_id("transient");
    let (mut transient, _) = RawClient::connect_ok(broker.addr(), connect_v5(&transient_id)).await;
    transient.subscribe("durable/#", QoS::AtLeastOnce).await;

    let mut publisher = RawClient::v5(broker.addr(), &unique_id("durable-pub")).await;
    let n = 200u32;
    for i in 0..n {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let code = publisher
            .publish(publish("durable/q1", qos, i.to_string().as_bytes()))
            .await;
        assert_eq!(code, ReasonCode::SUCCESS, "message {i}");
    }
    let mut retained = publish("durable/retained", QoS::AtLeastOnce, b"kept");
    retained.retain = true;
    assert_eq!(publisher.publish(retained).await, ReasonCode::SUCCESS);

    broker.kill9();
    broker.restart();

    let (mut sub, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&sub_id, 3600)).await;
    assert!(ack.session_present, "the session survived the crash");
    let order = drain_ordered(&mut sub, "durable/q1", n as usize).await;
    assert_eq!(order, (0..n).collect::<Vec<_>>(), "all of them, in order");

    let (mut sub311, ack) =
        RawClient::connect_ok(broker.addr(), connect_v311(&sub311_id, false)).await;
    assert!(ack.session_present);
    assert_eq!(
        drain(&mut sub311, "durable/q1", n as usize).await,
        (0..n).collect()
    );

    // The retained PUBLISH was queued for the offline session after the others (the last
    // QoS 2 flows may still be finishing around it).
    let p = next_publish(&mut sub).await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_ref()),
        ("durable/retained", &b"kept"[..])
    );
    sub.send(&Packet::PubAck(resp(p.packet_id))).await;

    // The subscription itself survived: new messages still arrive.
    let mut publisher = RawClient::v5(broker.addr(), &unique_id("durable-pub2")).await;
    publisher
        .publish(publish("durable/q1", QoS::AtLeastOnce, b"9999"))
        .await;
    let p = next_publish(&mut sub).await;
    assert_eq!(p.payload.as_ref(), b"9999");

    // Retained: a fresh subscriber gets it.
    let mut fresh = RawClient::v5(broker.addr(), &unique_id("fresh")).await;
    fresh.subscribe("durable/retained", QoS::AtLeastOnce).await;
    let p = fresh.recv_publish().await;
    assert!(p.retain);
    assert_eq!(p.payload.as_ref(), b"kept");

    // The clean (non-persistent) session is gone.
    let (_, ack) = RawClient::connect_ok(broker.addr(), {
        let mut c = connect_v5(&transient_id);
        c.clean_start = false;
        c
    })
    .await;
    assert!(
        !ack.session_present,
        "sessions without expiry are not stored"
    );
}

/// Kill -9 while a publisher is streaming QoS 1 messages to an online persistent subscriber:
/// every message the publisher got a PUBACK for reaches the subscriber, before or after the
/// restart.
#[tokio::test]
async fn kill_9_mid_stream_loses_no_acknowledged_message() {
    let mut broker = Broker::start_default();
    let addr = broker.addr();
    let sub_id = unique_id("stream-sub");
    let (mut sub, _) = RawClient::connect_ok(addr, persistent_v5(&sub_id, 3600)).await;
    sub.subscribe("stream/t", QoS::AtLeastOnce).await;

    let publisher = tokio::spawn(async move {
        let mut acked = BTreeSet::new();
        let mut p = RawClient::v5(addr, &unique_id("stream-pub")).await;
        for i in 0..100_000u32 {
            let mut m = publish("stream/t", QoS::AtLeastOnce, i.to_string().as_bytes());
            m.packet_id = p.next_id();
            let id = m.packet_id;
            p.send(&Packet::Publish(m)).await;
            match p.try_recv(WAIT).await {
                Recv::Packet(Packet::PubAck(a)) if a.packet_id == id => {
                    assert_eq!(a.code, ReasonCode::SUCCESS);
                    acked.insert(i);
                }
                // The broker died: this one was never acknowledged.
                _ => break,
            }
        }
        acked
    });

    // Let a few hundred messages through, receiving (and acknowledging only some: the rest
    // are in flight when the broker dies), then kill.
    let mut received = BTreeSet::new();
    while received.len() < 300 {
        match sub.try_recv(WAIT).await {
            Recv::Packet(Packet::Publish(p)) => {
                let seq = seq_of(&p.payload);
                received.insert(seq);
                if !seq.is_multiple_of(3) {
                    sub.ack(&p).await;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    broker.kill9();
    let acked = tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the publisher notices the dead broker")
        .expect("publisher task");
    assert!(!acked.is_empty());
    // Whatever the subscriber read before the crash and had not acknowledged counts as
    // received but will come again.
    broker.restart();
    let (mut sub, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&sub_id, 3600)).await;
    assert!(ack.session_present);
    let missing: BTreeSet<u32> = acked.difference(&received).copied().collect();
    // Everything still queued comes back (with duplicates of what was read before the
    // crash); stop once every missing message is in, or nothing more arrives.
    let mut after = BTreeSet::new();
    while !missing.is_subset(&after) {
        let got = drain(&mut sub, "stream/t", 1).await;
        if got.is_empty() {
            break;
        }
        after.extend(got);
    }
    let lost: Vec<u32> = missing.difference(&after).copied().collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost across kill -9 (first: {:?}); {} acked, {} received before, {} after",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>(),
        acked.len(),
        received.len(),
        after.len()
    );
}

/// A session's expiry counts while the broker is down: a session with 2 s left is gone after
/// a restart 3 s later; one with an hour left is still there. Wills: a client connected when
/// the broker was killed has its will published after the restart (its connection ended
/// without DISCONNECT), to a persistent subscriber restored from the store.
#[tokio::test]
async fn expiry_and_wills_across_restarts() {
    let mut broker = Broker::start_default();
    let short = unique_id("short");
    let long = unique_id("long");
    for (id, expiry) in [(&short, 2), (&long, 3600)] {
        let (c, _) = RawClient::connect_ok(broker.addr(), persistent_v5(id, expiry)).await;
        c.disconnect().await;
    }
    let watcher_id = unique_id("will-watcher");
    let (mut watcher, _) =
        RawClient::connect_ok(broker.addr(), persistent_v5(&watcher_id, 3600)).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    watcher.disconnect().await;
    let mut dying = persistent_v5(&unique_id("dying"), 3600);
    dying.will = Some(will("wills/dying", "it died", QoS::AtLeastOnce));
    let (_dying, _) = RawClient::connect_ok(broker.addr(), dying).await;

    broker.terminate();
    // terminate() kicked the connected client with 0x8B: its will went out then, queued
    // for the offline watcher — and must survive the restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart();

    let (_, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&short, 2)).await;
    assert!(!ack.session_present, "expired while the broker was down");
    let (_, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&long, 3600)).await;
    assert!(ack.session_present);
    let (mut watcher, ack) =
        RawClient::connect_ok(broker.addr(), persistent_v5(&watcher_id, 3600)).await;
    assert!(ack.session_present);
    let p = watcher.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), p.payload.as_ref()),
        ("wills/dying", &b"it died"[..])
    );
}

/// SIGKILL gives no chance to publish wills; the restarted broker publishes the will of every
/// client that was connected, since its connection ended without DISCONNECT.
#[tokio::test]
async fn will_of_a_client_connected_at_the_crash_goes_out_after_restart() {
    let mut broker = Broker::start_default();
    let watcher_id = unique_id("crash-watcher");
    let (mut watcher, _) =
        RawClient::connect_ok(broker.addr(), persistent_v5(&watcher_id, 3600)).await;
    watcher.subscribe("crash-wills/#", QoS::AtLeastOnce).await;
    watcher.disconnect().await;
    let mut dying = persistent_v5(&unique_id("crash-dying"), 3600);
    dying.will = Some(will("crash-wills/x", "crashed", QoS::AtLeastOnce));
    let (mut dying_client, _) = RawClient::connect_ok(broker.addr(), dying).await;
    // Make sure the CONNECT has been processed and stored before the crash.
    dying_client.subscribe("crash-sync", QoS::AtMostOnce).await;
    broker.kill9();
    broker.restart();
    let (mut watcher, ack) =
        RawClient::connect_ok(broker.addr(), persistent_v5(&watcher_id, 3600)).await;
    assert!(ack.session_present);
    let p = watcher.recv_publish().await;
    assert_eq!(p.payload.as_ref(), b"crashed");
}

/// `durability: Disabled` keeps nothing: the same restart finds no session.
#[tokio::test]
async fn disabled_persistence_keeps_nothing() {
    let config = format!(
        "apiVersion: gatehouse.io/v1\nkind: Broker\nmetadata: {{name: default}}\n\
         spec:\n  persistence: {{durability: Disabled}}\n---\n{DEFAULT_LISTENER}"
    );
    let mut broker = Broker::start(&config);
    let id = unique_id("volatile");
    let (c, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 3600)).await;
    c.disconnect().await;
    broker.terminate();
    broker.restart();
    let (_, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 3600)).await;
    assert!(!ack.session_present);
    assert!(!broker.dir().join("data/store.redb").exists());
}

/// `durability: Periodic` still survives a clean shutdown (the store flushes on exit).
#[tokio::test]
async fn periodic_durability_survives_a_clean_restart() {
    let config = format!(
        "apiVersion: gatehouse.io/v1\nkind: Broker\nmetadata: {{name: default}}\n\
         spec:\n  persistence: {{durability: Periodic, flushIntervalMillis: 50}}\n---\n{DEFAULT_LISTENER}"
    );
    let mut broker = Broker::start(&config);
    let id = unique_id("periodic");
    let (mut c, _) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 3600)).await;
    c.subscribe("periodic/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut p = RawClient::v5(broker.addr(), &unique_id("periodic-pub")).await;
    for i in 0..20u32 {
        p.publish(publish(
            "periodic/t",
            QoS::AtLeastOnce,
            i.to_string().as_bytes(),
        ))
        .await;
    }
    assert!(broker.terminate().success());
    broker.restart();
    let (mut c, ack) = RawClient::connect_ok(broker.addr(), persistent_v5(&id, 3600)).await;
    assert!(ack.session_present);
    assert_eq!(drain(&mut c, "periodic/t", 20).await, (0..20).collect());
}
