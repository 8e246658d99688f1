//! Router tests: routing, sessions, shared groups, wills and limits without sockets.
//!
//! Clause numbers are MQTT 5.0 ([MQTT-x.y.z-n]); "scenario N" is broker-spec.md §10.

use std::collections::BTreeSet;

use bytes::Bytes;
use mqtt::Properties;
use mqtt::session::Inflight;

use super::*;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A connection as the router sees it: counts wake-ups, records kicks.
#[derive(Default)]
struct FakeConn {
    wakes: AtomicUsize,
    kicks: Mutex<Vec<(ReasonCode, String)>>,
}

impl ConnControl for FakeConn {
    fn wake(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
    fn kick(&self, code: ReasonCode, reason: String) {
        self.kicks.lock().push((code, reason));
    }
}

impl FakeConn {
    fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }
    fn kick_codes(&self) -> Vec<ReasonCode> {
        self.kicks.lock().iter().map(|(c, _)| *c).collect()
    }
}

/// One attached connection.
struct Client {
    id: String,
    session_id: u64,
    generation: u64,
    session_present: bool,
    restored: Option<SessionState>,
    outbox: Arc<Outbox>,
    conn: Arc<FakeConn>,
}

impl Client {
    fn drain(&self) -> Vec<Delivery> {
        drain(&self.outbox)
    }
}

struct Harness {
    router: LocalRouter,
    metrics: Arc<Metrics>,
    now: Instant,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_limits(RouterLimits::default())
    }

    fn with_limits(limits: RouterLimits) -> Harness {
        let metrics = Arc::new(Metrics::default());
        Harness {
            router: LocalRouter::new(limits, metrics.clone()),
            metrics,
            now: Instant::now(),
        }
    }

    fn at(&self, secs: u64) -> Instant {
        self.now + Duration::from_secs(secs)
    }

    fn try_connect(
        &self,
        id: &str,
        clean_start: bool,
        will: Option<Will>,
        force: bool,
    ) -> (ConnectOutcome, Arc<FakeConn>) {
        let conn = Arc::new(FakeConn::default());
        let outcome = self.router.connect(
            ConnectRequest {
                owner: None,
                client_id: id.into(),
                clean_start,
                session_expiry: 0,
                will,
                control: conn.clone(),
            },
            force,
            self.now,
        );
        (outcome, conn)
    }

    fn connect_with(&self, id: &str, clean_start: bool, will: Option<Will>, force: bool) -> Client {
        match self.try_connect(id, clean_start, will, force) {
            (ConnectOutcome::Attached(a), conn) => Client {
                id: id.into(),
                session_id: a.session_id,
                generation: a.generation,
                session_present: a.session_present,
                restored: a.restored,
                outbox: a.outbox,
                conn,
            },
            (ConnectOutcome::TakeoverPending(_), _) => panic!("{id}: expected Attached"),
            (ConnectOutcome::Refused(code, why), _) => panic!("{id}: refused {code}: {why}"),
        }
    }

    /// A brand-new session.
    fn connect(&self, id: &str) -> Client {
        let c = self.connect_with(id, true, None, false);
        assert!(!c.session_present);
        c
    }

    fn subscribe_with(
        &self,
        c: &Client,
        filter: &str,
        options: SubOptions,
        id: Option<u32>,
    ) -> ReasonCode {
        let codes = self.router.subscribe(
            c.session_id,
            &[(filter.into(), options)],
            &[true],
            id,
            self.now,
        );
        assert_eq!(codes.len(), 1);
        codes[0]
    }

    fn subscribe(&self, c: &Client, filter: &str, qos: QoS) -> ReasonCode {
        let code = self.subscribe_with(c, filter, opts(qos), None);
        assert_eq!(code, ReasonCode(qos as u8), "subscribe {filter}");
        code
    }

    fn publish(
        &self,
        from: &Client,
        topic: &str,
        payload: &str,
        qos: QoS,
        retain: bool,
    ) -> PublishOutcome {
        self.router.publish(
            message(from.session_id, topic, payload, qos, retain),
            self.now,
        )
    }

    fn detach_with_state(
        &self,
        c: &Client,
        session_expiry: u32,
        publish_will: bool,
        state: SessionState,
    ) -> DetachTimers {
        self.router.detach(
            Detach {
                client_id: c.id.clone(),
                generation: c.generation,
                state,
                session_expiry,
                publish_will,
            },
            self.now,
        )
    }

    fn detach(&self, c: &Client, session_expiry: u32, publish_will: bool) -> DetachTimers {
        self.detach_with_state(c, session_expiry, publish_will, SessionState::default())
    }

    fn metric(&self, name: &str) -> i64 {
        self.metrics
            .snapshot()
            .value(name)
            .unwrap_or_else(|| panic!("no metric {name}"))
    }
}

fn opts(qos: QoS) -> SubOptions {
    SubOptions {
        qos,
        ..SubOptions::default()
    }
}

fn message(origin: u64, topic: &str, payload: &str, qos: QoS, retain: bool) -> Message {
    Message {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: Properties::default(),
        expires_at: None,
        origin,
    }
}

fn will(topic: &str, payload: &str, delay: Option<u32>) -> Will {
    Will {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: delay,
            ..Properties::default()
        },
    }
}

fn drain(outbox: &Outbox) -> Vec<Delivery> {
    std::iter::from_fn(|| outbox.pop()).collect()
}

fn payloads(ds: &[Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| String::from_utf8(d.message.payload.to_vec()).expect("utf-8 payload"))
        .collect()
}

fn topics(ds: &[Delivery]) -> Vec<&str> {
    ds.iter().map(|d| d.message.topic.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

/// Scenario 1 (subscriber on `x/#` receives `x/y`); `+` and `#` per §4.7.1.
#[test]
fn wildcards_route_to_matching_subscribers_only() {
    let h = Harness::new();
    let p = h.connect("pub");
    let hash = h.connect("hash");
    let plus = h.connect("plus");
    let exact = h.connect("exact");
    h.subscribe(&hash, "x/#", QoS::AtLeastOnce);
    h.subscribe(&plus, "x/+/z", QoS::AtLeastOnce);
    h.subscribe(&exact, "x/y", QoS::AtLeastOnce);

    let out = h.publish(&p, "x/y", "1", QoS::AtLeastOnce, false);
    assert_eq!(out.code, ReasonCode::SUCCESS);
    assert_eq!(out.matched, 2);
    assert_eq!(
        h.publish(&p, "x/a/z", "2", QoS::AtLeastOnce, false).matched,
        2
    );
    // [MQTT-4.7.1-2]: "x/#" also matches the parent level "x".
    assert_eq!(h.publish(&p, "x", "3", QoS::AtLeastOnce, false).matched, 1);
    assert_eq!(
        h.publish(&p, "y/x", "4", QoS::AtLeastOnce, false).matched,
        0
    );
    // '+' matches exactly one level.
    assert_eq!(
        h.publish(&p, "x/a/b/z", "5", QoS::AtLeastOnce, false)
            .matched,
        1
    );

    assert_eq!(payloads(&hash.drain()), ["1", "2", "3", "5"]);
    assert_eq!(payloads(&plus.drain()), ["2"]);
    assert_eq!(payloads(&exact.drain()), ["1"]);
    assert!(p.drain().is_empty());
}

/// [MQTT-4.7.2-1]: a topic starting with '$' is not matched by a filter starting with '#'/'+',
/// neither for live messages nor for retained messages on subscribe.
#[test]
fn dollar_topics_not_matched_by_leading_wildcards() {
    let h = Harness::new();
    let p = h.connect("pub");
    let all = h.connect("all");
    let plus = h.connect("plus");
    let sys = h.connect("sys");
    h.subscribe(&all, "#", QoS::AtMostOnce);
    h.subscribe(&plus, "+/x", QoS::AtMostOnce);
    h.subscribe(&sys, "$SYS/#", QoS::AtMostOnce);

    assert_eq!(
        h.publish(&p, "$SYS/x", "s", QoS::AtMostOnce, true).matched,
        1
    );
    assert!(all.drain().is_empty());
    assert!(plus.drain().is_empty());
    assert_eq!(topics(&sys.drain()), ["$SYS/x"]);

    // The retained "$SYS/x" is not offered to a new "#" subscriber either.
    let late = h.connect("late");
    h.subscribe(&late, "#", QoS::AtMostOnce);
    h.subscribe(&late, "+/x", QoS::AtMostOnce);
    assert!(late.drain().is_empty());
    let late_sys = h.connect("late-sys");
    h.subscribe(&late_sys, "$SYS/+", QoS::AtMostOnce);
    assert_eq!(topics(&late_sys.drain()), ["$SYS/x"]);
}

/// [MQTT-3.3.4-2]: overlapping subscriptions of one client give one copy at the highest QoS;
/// [MQTT-3.3.4-3]: it carries the identifiers of every matching subscription.
#[test]
fn overlapping_subscriptions_deliver_once_with_max_qos_and_all_ids() {
    let h = Harness::new();
    let p = h.connect("pub");
    let s = h.connect("sub");
    let other = h.connect("other");
    assert_eq!(
        h.subscribe_with(&s, "a/#", opts(QoS::AtMostOnce), Some(1)),
        ReasonCode::GRANTED_QOS_0
    );
    assert_eq!(
        h.subscribe_with(&s, "a/+", opts(QoS::ExactlyOnce), Some(2)),
        ReasonCode::GRANTED_QOS_2
    );
    // No identifier on this one: it must not add anything to the list.
    h.subscribe(&s, "a/b", QoS::AtLeastOnce);
    h.subscribe(&other, "a/b", QoS::AtLeastOnce);

    let out = h.publish(&p, "a/b", "m", QoS::ExactlyOnce, false);
    assert_eq!(out.matched, 2, "one per client, not per subscription");
    let got = s.drain();
    assert_eq!(got.len(), 1, "one copy per client");
    assert_eq!(got[0].qos, QoS::ExactlyOnce);
    let ids: BTreeSet<u32> = got[0].subscription_ids.iter().copied().collect();
    assert_eq!(ids, BTreeSet::from([1, 2]));
    assert_eq!(got[0].subscription_ids.len(), 2);
    assert_eq!(got[0].shared, None);
    assert_eq!(other.drain().len(), 1);

    // The maximum wins whatever order the subscriptions are matched in.
    use QoS::*;
    for (i, qs) in [
        [AtMostOnce, ExactlyOnce, AtLeastOnce],
        [ExactlyOnce, AtLeastOnce, AtMostOnce],
        [AtLeastOnce, AtMostOnce, ExactlyOnce],
    ]
    .into_iter()
    .enumerate()
    {
        let c = h.connect(&format!("rot{i}"));
        for (f, q) in ["a/#", "a/+", "a/b"].into_iter().zip(qs) {
            h.subscribe(&c, f, q);
        }
        h.publish(&p, "a/b", "r", ExactlyOnce, false);
        let got = c.drain();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].qos, ExactlyOnce, "rotation {i}");
    }
    s.drain();

    // Only "a/#" matches "a/b/c": one copy, its QoS and its id.
    h.publish(&p, "a/b/c", "n", QoS::ExactlyOnce, false);
    let got = s.drain();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtMostOnce);
    assert_eq!(got[0].subscription_ids, [1]);
}

/// [MQTT-3.8.4-8]: delivered QoS = min(published QoS, granted QoS).
#[test]
fn qos_is_downgraded_to_min_of_publish_and_subscription() {
    let h = Harness::new();
    let p = h.connect("pub");
    let s0 = h.connect("s0");
    let s1 = h.connect("s1");
    let s2 = h.connect("s2");
    h.subscribe(&s0, "q", QoS::AtMostOnce);
    h.subscribe(&s1, "q", QoS::AtLeastOnce);
    h.subscribe(&s2, "q", QoS::ExactlyOnce);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        h.publish(&p, "q", "m", qos, false);
    }
    let qoses = |c: &Client| c.drain().iter().map(|d| d.qos).collect::<Vec<_>>();
    use QoS::*;
    assert_eq!(qoses(&s0), [AtMostOnce, AtMostOnce, AtMostOnce]);
    assert_eq!(qoses(&s1), [AtMostOnce, AtLeastOnce, AtLeastOnce]);
    assert_eq!(qoses(&s2), [AtMostOnce, AtLeastOnce, ExactlyOnce]);
}

/// [MQTT-3.8.3-3]: with No Local, a client's own messages are not sent back to it (origin is the
/// session id, so this holds across connections of the same session).
#[test]
fn no_local_suppresses_own_messages_only() {
    let h = Harness::new();
    let a = h.connect("a");
    let b = h.connect("b");
    let nl = SubOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        ..SubOptions::default()
    };
    h.subscribe_with(&a, "t", nl, Some(9));
    h.subscribe(&b, "t", QoS::AtLeastOnce);

    assert_eq!(
        h.publish(&a, "t", "from-a", QoS::AtLeastOnce, false)
            .matched,
        1
    );
    assert!(a.drain().is_empty());
    assert_eq!(payloads(&b.drain()), ["from-a"]);

    h.publish(&b, "t", "from-b", QoS::AtLeastOnce, false);
    assert_eq!(payloads(&a.drain()), ["from-b"]);
    assert_eq!(payloads(&b.drain()), ["from-b"]);

    // An overlapping subscription without No Local still delivers, with only its own id.
    h.subscribe_with(&a, "#", opts(QoS::AtMostOnce), Some(3));
    h.publish(&a, "t", "again", QoS::AtLeastOnce, false);
    let got = a.drain();
    assert_eq!(payloads(&got), ["again"]);
    assert_eq!(
        got[0].qos,
        QoS::AtMostOnce,
        "the No Local subscription does not count"
    );
    assert_eq!(got[0].subscription_ids, [3]);
}

/// [MQTT-3.3.1-12]/[MQTT-3.3.1-13]: RETAIN on forwarded messages is 0 unless Retain As
/// Published, then it is the published flag.
#[test]
fn retain_as_published() {
    let h = Harness::new();
    let p = h.connect("pub");
    let rap = h.connect("rap");
    let plain = h.connect("plain");
    let o = SubOptions {
        qos: QoS::AtLeastOnce,
        retain_as_published: true,
        ..SubOptions::default()
    };
    h.subscribe_with(&rap, "r", o, None);
    h.subscribe(&plain, "r", QoS::AtLeastOnce);

    h.publish(&p, "r", "retained", QoS::AtLeastOnce, true);
    h.publish(&p, "r", "live", QoS::AtLeastOnce, false);
    let flags = |c: &Client| c.drain().iter().map(|d| d.retain).collect::<Vec<_>>();
    assert_eq!(flags(&rap), [true, false]);
    assert_eq!(flags(&plain), [false, false]);
}

/// [MQTT-3.3.1-5] store, [MQTT-3.3.1-6]/[MQTT-3.3.1-7] an empty retained message clears the
/// topic and is not stored, [MQTT-3.3.1-8] RETAIN=0 neither stores nor replaces.
#[test]
fn retained_messages_are_stored_replaced_and_cleared() {
    let h = Harness::new();
    let p = h.connect("pub");
    let live = h.connect("live");
    h.subscribe(&live, "r/#", QoS::AtLeastOnce);

    h.publish(&p, "r/1", "v1", QoS::AtLeastOnce, true);
    h.publish(&p, "r/2", "other", QoS::AtMostOnce, true);
    assert_eq!(h.router.retained_count(), 2);
    h.publish(&p, "r/1", "v2", QoS::AtLeastOnce, true);
    assert_eq!(h.router.retained_count(), 2, "replaced, not added");
    h.publish(&p, "r/1", "not-retained", QoS::AtLeastOnce, false);

    let s = h.connect("s1");
    h.subscribe(&s, "r/1", QoS::ExactlyOnce);
    let got = s.drain();
    assert_eq!(payloads(&got), ["v2"]);
    assert!(got[0].retain, "retained-on-subscribe carries RETAIN=1");
    assert_eq!(
        got[0].qos,
        QoS::AtLeastOnce,
        "min(message QoS, subscription QoS)"
    );

    // Empty payload with RETAIN: delivered normally to current subscribers, clears the topic.
    let out = h.publish(&p, "r/1", "", QoS::AtLeastOnce, true);
    assert_eq!(out.matched, 2);
    assert_eq!(h.router.retained_count(), 1);
    let s2 = h.connect("s2");
    h.subscribe(&s2, "r/#", QoS::AtLeastOnce);
    assert_eq!(payloads(&s2.drain()), ["other"]);

    assert_eq!(
        payloads(&live.drain()),
        ["v1", "other", "v2", "not-retained", ""]
    );
}

/// Retain Handling ([MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11]): 0 = on every
/// subscribe, 1 = only when the subscription is new, 2 = never. Retained-on-subscribe
/// deliveries carry RETAIN=1 and the subscription identifier.
#[test]
fn retain_handling_0_1_2() {
    let h = Harness::new();
    let p = h.connect("pub");
    h.publish(&p, "r/a", "a", QoS::AtLeastOnce, true);
    h.publish(&p, "r/b", "b", QoS::AtLeastOnce, true);
    h.publish(&p, "x", "x", QoS::AtLeastOnce, true);
    let with_rh = |rh| SubOptions {
        qos: QoS::AtLeastOnce,
        retain_handling: rh,
        ..SubOptions::default()
    };
    let sorted = |ds: Vec<Delivery>| {
        let mut v = payloads(&ds);
        v.sort();
        v
    };

    let s0 = h.connect("rh0");
    h.subscribe_with(&s0, "r/+", with_rh(0), Some(4));
    let got = s0.drain();
    assert!(got.iter().all(|d| d.retain && d.subscription_ids == [4]));
    assert_eq!(sorted(got), ["a", "b"]);
    h.subscribe_with(&s0, "r/+", with_rh(0), Some(4));
    assert_eq!(
        sorted(s0.drain()),
        ["a", "b"],
        "RH 0: again on re-subscribe"
    );

    let s1 = h.connect("rh1");
    h.subscribe_with(&s1, "r/+", with_rh(1), None);
    let got = s1.drain();
    assert!(got.iter().all(|d| d.retain));
    assert_eq!(sorted(got), ["a", "b"]);
    h.subscribe_with(&s1, "r/+", with_rh(1), None);
    assert!(
        s1.drain().is_empty(),
        "RH 1: not for an existing subscription"
    );
    // A different filter is a new subscription again.
    h.subscribe_with(&s1, "x", with_rh(1), None);
    assert_eq!(payloads(&s1.drain()), ["x"]);

    let s2 = h.connect("rh2");
    h.subscribe_with(&s2, "r/+", with_rh(2), None);
    h.subscribe_with(&s2, "#", with_rh(2), None);
    assert!(s2.drain().is_empty(), "RH 2: never");
    // RH 2 still routes live messages.
    h.publish(&p, "r/a", "live", QoS::AtLeastOnce, false);
    assert_eq!(payloads(&s2.drain()), ["live"]);
}

/// [MQTT-3.3.2-5]: an expired message is not delivered, which includes a retained message on
/// subscribe; scenario 49 (expiry is checked when the message is handed out).
#[test]
fn expired_retained_message_is_not_delivered() {
    let h = Harness::new();
    let p = h.connect("pub");
    let mut m = message(p.session_id, "e", "short-lived", QoS::AtLeastOnce, true);
    m.expires_at = Some(h.at(10));
    h.router.publish(m, h.now);
    h.publish(&p, "e2", "forever", QoS::AtLeastOnce, true);

    let early = h.connect("early");
    h.router.subscribe(
        early.session_id,
        &[("e".into(), opts(QoS::AtLeastOnce))],
        &[true],
        None,
        h.at(9),
    );
    assert_eq!(payloads(&early.drain()), ["short-lived"]);

    let late = h.connect("late");
    let codes = h.router.subscribe(
        late.session_id,
        &[
            ("e".into(), opts(QoS::AtLeastOnce)),
            ("e2".into(), opts(QoS::AtLeastOnce)),
        ],
        &[true, true],
        None,
        h.at(10),
    );
    assert_eq!(codes, [ReasonCode::GRANTED_QOS_1; 2]);
    assert_eq!(payloads(&late.drain()), ["forever"]);

    // A message already expired on arrival is neither routed nor retained.
    let mut dead = message(p.session_id, "e3", "dead", QoS::AtLeastOnce, true);
    dead.expires_at = Some(h.now);
    h.subscribe(&late, "e3", QoS::AtLeastOnce);
    assert_eq!(h.router.publish(dead, h.now).matched, 0);
    assert!(late.drain().is_empty());
    assert_eq!(h.router.retained_count(), 2);
}

/// UNSUBACK codes 0x00 / 0x11 (§3.11.2.2); after [MQTT-3.10.4-2] no new messages are added.
#[test]
fn unsubscribe_codes_and_no_further_delivery() {
    let h = Harness::new();
    let p = h.connect("pub");
    let s = h.connect("sub");
    h.subscribe(&s, "a", QoS::AtLeastOnce);
    h.subscribe(&s, "b/#", QoS::AtLeastOnce);
    h.subscribe(&s, "$share/g/c", QoS::AtLeastOnce);

    let codes = h.router.unsubscribe(
        s.session_id,
        &["a".into(), "nope".into(), "$share/g/c".into()],
    );
    assert_eq!(
        codes,
        [
            ReasonCode::SUCCESS,
            ReasonCode::NO_SUBSCRIPTION_EXISTED,
            ReasonCode::SUCCESS
        ]
    );
    assert_eq!(h.publish(&p, "a", "1", QoS::AtLeastOnce, false).matched, 0);
    assert_eq!(h.publish(&p, "c", "2", QoS::AtLeastOnce, false).matched, 0);
    assert_eq!(
        h.publish(&p, "b/x", "3", QoS::AtLeastOnce, false).matched,
        1
    );
    assert_eq!(payloads(&s.drain()), ["3"]);
    assert_eq!(
        h.router.unsubscribe(s.session_id, &["a".into()]),
        [ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
}

/// Scenario 32: a denied filter gets 0x87 and stores nothing (no routing, no retained, nothing
/// to unsubscribe); the allowed filter in the same SUBSCRIBE is granted ([MQTT-3.8.4-6]).
#[test]
fn subscribe_not_allowed_returns_0x87_and_stores_nothing() {
    let h = Harness::new();
    let p = h.connect("pub");
    h.publish(&p, "health/heartbeat", "retained", QoS::AtLeastOnce, true);
    let s = h.connect("heater");
    let codes = h.router.subscribe(
        s.session_id,
        &[
            ("health/heartbeat".into(), opts(QoS::AtLeastOnce)),
            ("sensor/temperature".into(), opts(QoS::AtLeastOnce)),
            ("health/#".into(), opts(QoS::AtLeastOnce)),
        ],
        // The third has no verdict at all: deny.
        &[false, true],
        None,
        h.now,
    );
    assert_eq!(
        codes,
        [
            ReasonCode::NOT_AUTHORIZED,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::NOT_AUTHORIZED
        ]
    );
    assert!(
        s.drain().is_empty(),
        "no retained message for a denied filter"
    );
    assert_eq!(
        h.publish(&p, "health/heartbeat", "x", QoS::AtLeastOnce, false)
            .matched,
        0
    );
    assert_eq!(
        h.publish(&p, "sensor/temperature", "21", QoS::AtLeastOnce, false)
            .matched,
        1
    );
    assert_eq!(payloads(&s.drain()), ["21"]);
    assert_eq!(
        h.router
            .unsubscribe(s.session_id, &["health/heartbeat".into()]),
        [ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
}

/// [MQTT-4.7.1-1]/[MQTT-4.8.2-1]: malformed filters get 0x8F (§3.9.3), even when allowed.
#[test]
fn invalid_filter_returns_0x8f() {
    let h = Harness::new();
    let s = h.connect("s");
    let bad = [
        "a/#/b",
        "a+",
        "a/b#",
        "",
        "$share/g",
        "$share//t",
        "$share/g+/t",
        "$share/g/",
    ];
    let mut filters: Vec<(String, SubOptions)> = bad
        .iter()
        .map(|f| (f.to_string(), opts(QoS::AtLeastOnce)))
        .collect();
    filters.push(("ok/+".into(), opts(QoS::AtLeastOnce)));
    let allowed = vec![true; filters.len()];
    let codes = h
        .router
        .subscribe(s.session_id, &filters, &allowed, None, h.now);
    let mut expected = vec![ReasonCode::TOPIC_FILTER_INVALID; bad.len()];
    expected.push(ReasonCode::GRANTED_QOS_1);
    assert_eq!(codes, expected);
    let stored: Vec<String> = bad.iter().map(|f| f.to_string()).collect();
    assert!(
        h.router
            .unsubscribe(s.session_id, &stored)
            .iter()
            .all(|c| *c == ReasonCode::NO_SUBSCRIPTION_EXISTED)
    );
}

#[test]
fn subscribe_for_unknown_session_fails_every_filter() {
    let h = Harness::new();
    let codes = h.router.subscribe(
        999,
        &[
            ("a".into(), opts(QoS::AtMostOnce)),
            ("b".into(), opts(QoS::AtMostOnce)),
        ],
        &[true, true],
        None,
        h.now,
    );
    assert_eq!(codes, [ReasonCode::UNSPECIFIED_ERROR; 2]);
}

// ---------------------------------------------------------------------------------------------
// Shared subscriptions (§4.8.2)
// ---------------------------------------------------------------------------------------------

/// §4.8.2: each message goes to one member of the group (here round robin); a non-shared
/// subscription on the same topics gets every message; shared deliveries are tagged.
#[test]
fn shared_group_round_robin_and_non_shared_gets_all() {
    let h = Harness::new();
    let p = h.connect("pub");
    let a = h.connect("a");
    let b = h.connect("b");
    let c = h.connect("c");
    h.subscribe(&a, "$share/g/t/#", QoS::AtLeastOnce);
    h.subscribe_with(&b, "$share/g/t/#", opts(QoS::AtMostOnce), Some(8));
    h.subscribe(&c, "t/#", QoS::AtLeastOnce);

    for i in 0..6 {
        let out = h.publish(
            &p,
            &format!("t/{i}"),
            &i.to_string(),
            QoS::AtLeastOnce,
            false,
        );
        assert_eq!(
            out.matched, 2,
            "one group member + the non-shared subscriber"
        );
    }
    let da = a.drain();
    let db = b.drain();
    let dc = c.drain();
    assert_eq!(payloads(&dc), ["0", "1", "2", "3", "4", "5"]);
    assert!(dc.iter().all(|d| d.shared.is_none()));

    // Alternating: whoever got message 0 gets the even ones, the other the odd ones.
    let (first, second) = if payloads(&da).first().map(String::as_str) == Some("0") {
        (payloads(&da), payloads(&db))
    } else {
        (payloads(&db), payloads(&da))
    };
    assert_eq!(first, ["0", "2", "4"]);
    assert_eq!(second, ["1", "3", "5"]);

    for d in da.iter().chain(&db) {
        assert_eq!(d.shared.as_deref(), Some("$share/g/t/#"));
        assert!(!d.retain);
    }
    // Each member's own subscription options apply.
    assert!(
        da.iter()
            .all(|d| d.qos == QoS::AtLeastOnce && d.subscription_ids.is_empty())
    );
    assert!(
        db.iter()
            .all(|d| d.qos == QoS::AtMostOnce && d.subscription_ids == [8])
    );
}

/// Two groups on the same filter each get one copy; a non-matching group gets none.
#[test]
fn each_shared_group_gets_its_own_copy() {
    let h = Harness::new();
    let p = h.connect("pub");
    let g1 = h.connect("g1");
    let g2 = h.connect("g2");
    let g3 = h.connect("g3");
    h.subscribe(&g1, "$share/one/t", QoS::AtMostOnce);
    h.subscribe(&g2, "$share/two/t", QoS::AtMostOnce);
    h.subscribe(&g3, "$share/three/u", QoS::AtMostOnce);
    assert_eq!(h.publish(&p, "t", "m", QoS::AtMostOnce, false).matched, 2);
    assert_eq!(g1.drain()[0].shared.as_deref(), Some("$share/one/t"));
    assert_eq!(g2.drain()[0].shared.as_deref(), Some("$share/two/t"));
    assert!(g3.drain().is_empty());
}

/// §3.3.1.3: retained messages go to new Non-shared Subscriptions only, whatever the Retain
/// Handling option says.
#[test]
fn shared_subscription_gets_no_retained_messages() {
    let h = Harness::new();
    let p = h.connect("pub");
    h.publish(&p, "t/1", "retained", QoS::AtLeastOnce, true);
    let a = h.connect("a");
    assert_eq!(
        h.subscribe_with(&a, "$share/g/t/#", opts(QoS::AtLeastOnce), None),
        ReasonCode::GRANTED_QOS_1
    );
    assert!(a.drain().is_empty());
    // Retain As Published does not leak the flag into shared deliveries either.
    let rap = SubOptions {
        qos: QoS::AtLeastOnce,
        retain_as_published: true,
        ..SubOptions::default()
    };
    h.subscribe_with(&a, "$share/g/t/#", rap, None);
    h.publish(&p, "t/1", "again", QoS::AtLeastOnce, true);
    let got = a.drain();
    assert_eq!(payloads(&got), ["again"]);
    assert!(!got[0].retain);
}

/// An offline member is skipped while another member is online; with nobody online the
/// message is still queued for a member's session.
#[test]
fn shared_group_skips_offline_member() {
    let h = Harness::new();
    let p = h.connect("pub");
    let a = h.connect_with("a", true, None, false);
    let b = h.connect("b");
    h.subscribe(&a, "$share/g/t", QoS::AtLeastOnce);
    h.subscribe(&b, "$share/g/t", QoS::AtLeastOnce);
    h.detach(&a, 3600, false);

    for i in 0..4 {
        assert_eq!(
            h.publish(&p, "t", &i.to_string(), QoS::AtLeastOnce, false)
                .matched,
            1
        );
    }
    assert_eq!(payloads(&b.drain()), ["0", "1", "2", "3"]);
    assert!(a.outbox.is_empty(), "nothing parked on the offline member");

    // Nobody online: the message is kept for one of the sessions rather than lost.
    h.detach(&b, 3600, false);
    assert_eq!(
        h.publish(&p, "t", "parked", QoS::AtLeastOnce, false)
            .matched,
        1
    );
    assert_eq!(a.outbox.len() + b.outbox.len(), 1);
}

/// Detach of a member: its queued shared deliveries and its QoS 1 in-flight shared delivery go
/// to another member that is online; a QoS 2 in flight stays with the session
/// ([MQTT-4.8.2-4] wants it completed with this client), and so do non-shared deliveries.
#[test]
fn detach_hands_unfinished_shared_messages_to_another_member() {
    let h = Harness::new();
    let p = h.connect("pub");
    let a = h.connect_with("a", false, None, false);
    h.subscribe(&a, "$share/g/t", QoS::ExactlyOnce);
    h.subscribe(&a, "own", QoS::AtLeastOnce);
    // Only `a` is a member yet: it gets everything.
    h.publish(&p, "own", "own-inflight", QoS::AtLeastOnce, false);
    h.publish(&p, "t", "q1-inflight", QoS::AtLeastOnce, false);
    h.publish(&p, "t", "q2-inflight", QoS::ExactlyOnce, false);
    h.publish(&p, "t", "queued", QoS::AtLeastOnce, false);
    h.publish(&p, "own", "own-queued", QoS::AtLeastOnce, false);
    let b = h.connect("b");
    h.subscribe(&b, "$share/g/t", QoS::ExactlyOnce);

    // `a`'s connection sent three of them and went away before any acknowledgement.
    let sent: Vec<Delivery> = (0..3).map(|_| a.outbox.pop().expect("queued")).collect();
    assert_eq!(
        payloads(&sent),
        ["own-inflight", "q1-inflight", "q2-inflight"]
    );
    let stages = [
        InflightStage::AwaitPubAck,
        InflightStage::AwaitPubAck,
        InflightStage::AwaitPubRec,
    ];
    let mut state = SessionState {
        next_packet_id: 3,
        ..SessionState::default()
    };
    for (pid, (delivery, stage)) in (1u16..).zip(sent.into_iter().zip(stages)) {
        state.inflight.push_back(pid, Inflight { delivery, stage });
    }
    h.detach_with_state(&a, 3600, false, state);

    let got = b.drain();
    assert_eq!(payloads(&got), ["q1-inflight", "queued"]);
    for d in &got {
        assert_eq!(d.shared.as_deref(), Some("$share/g/t"));
        assert!(!d.retain);
    }

    let a2 = h.connect_with("a", false, None, false);
    assert!(a2.session_present);
    let restored = a2.restored.clone().expect("restored state");
    let kept: Vec<(u16, String)> = restored
        .inflight
        .iter()
        .map(|(pid, f)| (*pid, payloads(std::slice::from_ref(&f.delivery)).remove(0)))
        .collect();
    assert_eq!(
        kept,
        [
            (1, "own-inflight".to_string()),
            (3, "q2-inflight".to_string())
        ]
    );
    assert_eq!(
        restored.inflight.get(3).unwrap().stage,
        InflightStage::AwaitPubRec
    );
    assert_eq!(payloads(&a2.drain()), ["own-queued"]);
}

/// With no other member online, a leaving member keeps its shared messages (queued and in
/// flight) for when it comes back.
#[test]
fn detach_keeps_shared_messages_when_no_other_member_is_online() {
    let h = Harness::new();
    let p = h.connect("pub");
    let a = h.connect_with("a", false, None, false);
    let b = h.connect("b");
    h.subscribe(&b, "$share/g/t", QoS::AtLeastOnce);
    h.detach(&b, 3600, false);
    h.subscribe(&a, "$share/g/t", QoS::AtLeastOnce);
    // `a` is the only online member: both go to it.
    h.publish(&p, "t", "inflight", QoS::AtLeastOnce, false);
    h.publish(&p, "t", "queued", QoS::AtLeastOnce, false);
    assert!(b.outbox.is_empty());
    let d = a.outbox.pop().expect("queued");
    let mut state = SessionState::default();
    state.inflight.push_back(
        1,
        Inflight {
            delivery: d,
            stage: InflightStage::AwaitPubAck,
        },
    );
    h.detach_with_state(&a, 3600, false, state);
    assert!(b.outbox.is_empty(), "b is offline");

    let a2 = h.connect_with("a", false, None, false);
    assert_eq!(a2.restored.as_ref().expect("state").inflight.len(), 1);
    assert_eq!(payloads(&a2.drain()), ["queued"]);
}

/// A handed-over message is sent "in response to" the receiving member's subscription, so its
/// QoS is capped by that member's granted QoS ([MQTT-3.8.4-8]) and it carries that member's
/// subscription identifier ([MQTT-3.3.4-3]), not the leaving member's.
#[test]
fn redistributed_shared_message_uses_the_receiving_members_subscription() {
    let h = Harness::new();
    let p = h.connect("pub");
    let a = h.connect("a");
    h.subscribe_with(&a, "$share/g/t", opts(QoS::ExactlyOnce), Some(5));
    h.publish(&p, "t", "m", QoS::ExactlyOnce, false);
    let b = h.connect("b");
    h.subscribe_with(&b, "$share/g/t", opts(QoS::AtMostOnce), Some(7));
    h.detach(&a, 0, false);

    let got = b.drain();
    assert_eq!(payloads(&got), ["m"]);
    assert_eq!(got[0].qos, QoS::AtMostOnce, "b was granted QoS 0 only");
    assert_eq!(got[0].subscription_ids, [7]);
}

/// Unsubscribing or leaving for good takes a member out of the round robin.
#[test]
fn removed_member_leaves_the_round_robin() {
    let h = Harness::new();
    let p = h.connect("pub");
    let a = h.connect("a");
    let b = h.connect("b");
    let c = h.connect("c");
    for m in [&a, &b, &c] {
        h.subscribe(m, "$share/g/t", QoS::AtMostOnce);
    }
    h.router.unsubscribe(a.session_id, &["$share/g/t".into()]);
    h.detach(&c, 0, false);
    for i in 0..3 {
        assert_eq!(
            h.publish(&p, "t", &i.to_string(), QoS::AtMostOnce, false)
                .matched,
            1
        );
    }
    assert!(a.drain().is_empty());
    assert_eq!(payloads(&b.drain()), ["0", "1", "2"]);
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.2.2-2]/[MQTT-3.2.2-3] Session Present, [MQTT-4.1.0-1] state kept while the session
/// lasts; scenario 53 (persistent session resumes with its queued QoS 1 messages).
#[test]
fn persistent_session_resumes_with_state_and_offline_messages() {
    let h = Harness::new();
    let p = h.connect("pub");
    let s = h.connect_with("s", false, None, false);
    assert!(!s.session_present);
    assert!(s.restored.is_none());
    h.subscribe(&s, "t/#", QoS::AtLeastOnce);
    let state = SessionState {
        next_packet_id: 42,
        inbound_qos2: vec![7],
        ..SessionState::default()
    };
    let timers = h.detach_with_state(&s, 60, false, state);
    assert_eq!(timers.expire_after, Some(Duration::from_secs(60)));
    assert_eq!(timers.will_after, None);

    assert_eq!(
        h.publish(&p, "t/1", "offline-1", QoS::AtLeastOnce, false)
            .matched,
        1
    );
    h.publish(&p, "t/2", "offline-2", QoS::AtMostOnce, false);
    assert_eq!(s.conn.wakes(), 0, "the old connection is not woken");

    let s2 = h.connect_with("s", false, None, false);
    assert!(s2.session_present);
    assert_eq!(s2.session_id, s.session_id);
    assert_ne!(s2.generation, s.generation);
    assert!(Arc::ptr_eq(&s2.outbox, &s.outbox));
    let restored = s2.restored.clone().expect("restored state");
    assert_eq!(restored.next_packet_id, 42);
    assert_eq!(restored.inbound_qos2, [7]);
    assert_eq!(payloads(&s2.drain()), ["offline-1", "offline-2"]);

    // The subscription survived, and the new connection is the one woken (attaching resets
    // the wake-up flag that the offline pushes left set).
    h.publish(&p, "t/3", "online", QoS::AtLeastOnce, false);
    assert_eq!(s2.conn.wakes(), 1);
    assert_eq!(s.conn.wakes(), 0);
    assert_eq!(payloads(&s2.drain()), ["online"]);
}

/// Session Expiry 0xFFFFFFFF never expires: no expiry timer.
#[test]
fn infinite_session_expiry_starts_no_timer() {
    let h = Harness::new();
    let s = h.connect("s");
    let timers = h.detach(&s, u32::MAX, false);
    assert_eq!(timers.expire_after, None);
    assert_eq!(h.router.session_count(), 1);
}

/// [MQTT-3.1.2-4]: Clean Start discards the existing session (subscriptions, queue, state).
#[test]
fn clean_start_discards_the_existing_session() {
    let h = Harness::new();
    let p = h.connect("pub");
    let s = h.connect_with("s", false, None, false);
    h.subscribe(&s, "t", QoS::AtLeastOnce);
    let state = SessionState {
        next_packet_id: 9,
        ..SessionState::default()
    };
    h.detach_with_state(&s, 3600, false, state);
    h.publish(&p, "t", "offline", QoS::AtLeastOnce, false);
    assert!(h.router.budget().used() > 0);

    let s2 = h.connect_with("s", true, None, false);
    assert!(!s2.session_present);
    assert!(s2.restored.is_none());
    assert_ne!(s2.session_id, s.session_id);
    assert!(s2.outbox.is_empty());
    assert_eq!(
        h.publish(&p, "t", "after", QoS::AtLeastOnce, false).matched,
        0
    );
    assert_eq!(h.router.session_count(), 2);
    // The old queue's bytes go when its last holder (the old connection here) lets go.
    drop(s);
    assert_eq!(h.router.budget().used(), 0);
}

/// Session Expiry 0: the session, its subscriptions and its queue end with the connection.
#[test]
fn session_expiry_zero_removes_session_and_subscriptions() {
    let h = Harness::new();
    let p = h.connect("pub");
    let s = h.connect_with("s", false, None, false);
    h.subscribe(&s, "t", QoS::AtLeastOnce);
    h.publish(&p, "t", "undelivered", QoS::AtLeastOnce, false);
    let timers = h.detach(&s, 0, false);
    assert_eq!(timers.will_after, None);
    assert_eq!(timers.expire_after, None);
    assert_eq!(h.router.session_count(), 1);
    assert_eq!(h.router.budget().used(), 0, "queued bytes released at once");
    assert_eq!(
        h.publish(&p, "t", "later", QoS::AtLeastOnce, false).matched,
        0
    );

    let s2 = h.connect_with("s", false, None, false);
    assert!(!s2.session_present);
    assert_ne!(s2.session_id, s.session_id);
    assert!(s2.outbox.is_empty());
}

/// Scenario 47: the session is gone once its expiry timer fires; a timer from an older
/// connection (stale generation) or one firing while the client is online does nothing.
#[test]
fn expire_session_honours_the_generation() {
    let h = Harness::new();
    let p = h.connect("pub");
    let s1 = h.connect_with("s", false, None, false);
    h.subscribe(&s1, "t", QoS::AtLeastOnce);
    h.detach(&s1, 60, false);
    let s2 = h.connect_with("s", false, None, false);
    assert!(s2.session_present);

    // Online: neither the stale nor the current generation removes it.
    h.router.expire_session("s", s1.generation, h.at(60));
    h.router.expire_session("s", s2.generation, h.at(60));
    assert_eq!(h.router.session_count(), 2);

    h.detach(&s2, 60, false);
    h.router.expire_session("s", s1.generation, h.at(60));
    assert_eq!(h.router.session_count(), 2, "stale timer ignored");
    assert_eq!(h.publish(&p, "t", "m", QoS::AtLeastOnce, false).matched, 1);

    h.router.expire_session("s", s2.generation, h.at(61));
    assert_eq!(h.router.session_count(), 1);
    assert_eq!(h.publish(&p, "t", "m", QoS::AtLeastOnce, false).matched, 0);
    let s3 = h.connect_with("s", false, None, false);
    assert!(!s3.session_present);
    // Unknown client ids are harmless.
    h.router.expire_session("nobody", 1, h.now);
    h.router.fire_will("nobody", 1, h.now);
}

/// [MQTT-3.1.4-3], scenario 50: a second CONNECT with the same client id closes the first with
/// 0x8E; the newcomer waits until the old connection has detached, then takes the session.
#[test]
fn takeover_kicks_the_old_connection_and_waits_for_its_detach() {
    let h = Harness::new();
    let old = h.connect_with("c", false, None, false);
    h.subscribe(&old, "t", QoS::AtLeastOnce);

    let (outcome, _conn) = h.try_connect("c", false, None, false);
    let ConnectOutcome::TakeoverPending(mut rx) = outcome else {
        panic!("expected TakeoverPending");
    };
    assert_eq!(old.conn.kick_codes(), [ReasonCode::SESSION_TAKEN_OVER]);
    assert!(matches!(
        rx.try_recv(),
        Err(tokio::sync::oneshot::error::TryRecvError::Empty)
    ));

    h.detach(&old, 3600, true);
    assert!(
        rx.try_recv().is_ok(),
        "the waiter is released by the detach"
    );

    let new = h.connect_with("c", false, None, false);
    assert!(new.session_present);
    assert_eq!(new.session_id, old.session_id);
    assert_eq!(old.conn.kick_codes().len(), 1);
}

/// `force`: the old connection did not let go in time; the newcomer attaches anyway and the
/// old connection's late detach (older generation) changes nothing.
#[test]
fn forced_takeover_ignores_the_old_connections_late_detach() {
    let h = Harness::new();
    let p = h.connect("pub");
    let watcher = h.connect("watcher");
    h.subscribe(&watcher, "will/#", QoS::AtLeastOnce);
    let old = h.connect_with("c", false, Some(will("will/c", "old", Some(30))), false);
    h.subscribe(&old, "t", QoS::AtLeastOnce);
    assert!(matches!(
        h.try_connect("c", false, None, false).0,
        ConnectOutcome::TakeoverPending(_)
    ));

    let new = h.connect_with("c", false, None, true);
    assert!(new.session_present);
    assert_eq!(new.session_id, old.session_id);
    assert_ne!(new.generation, old.generation);

    // The old connection finally goes, asking for its session to end with its will.
    let timers = h.detach(&old, 0, true);
    assert_eq!(timers.will_after, None);
    assert_eq!(timers.expire_after, None);
    assert_eq!(h.router.session_count(), 3, "session kept");
    h.router.expire_session("c", old.generation, h.at(3600));
    assert_eq!(h.router.session_count(), 3);

    assert_eq!(h.publish(&p, "t", "m", QoS::AtLeastOnce, false).matched, 1);
    assert_eq!(new.conn.wakes(), 1);
    assert_eq!(old.conn.wakes(), 0);
    assert_eq!(payloads(&new.drain()), ["m"]);
    // The delayed will was cancelled by the new connection ([MQTT-3.1.3-9]).
    h.router.fire_will("c", old.generation, h.at(30));
    assert!(watcher.drain().is_empty());
}

/// On takeover "the Will Message for the existing connection is sent unless the new connection
/// specifies Clean Start of 0 and the Will Delay is greater than zero" (§3.1.3.2.2 with
/// [MQTT-3.1.2-8]). When the router forces the old connection off, that connection's own
/// detach is ignored, so a will without delay must be published by the router itself.
#[test]
fn forced_takeover_publishes_the_old_connections_undelayed_will() {
    let h = Harness::new();
    let watcher = h.connect("watcher");
    h.subscribe(&watcher, "will/#", QoS::AtLeastOnce);
    let old = h.connect_with("c", false, Some(will("will/c", "gone", None)), false);
    let _pending = h.try_connect("c", false, None, false);
    let _new = h.connect_with("c", false, None, true);
    h.detach(&old, 3600, true); // stale: ignored
    assert_eq!(payloads(&watcher.drain()), ["gone"]);
}

// ---------------------------------------------------------------------------------------------
// Wills
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.1.2-8]: no Will Delay → published when the connection closes abnormally. The will
/// is an ordinary message from the session: RETAIN is honoured ([MQTT-3.1.2-15]), Message
/// Expiry becomes an absolute deadline, Will Delay is not forwarded.
#[test]
fn will_without_delay_is_published_on_detach() {
    let h = Harness::new();
    let watcher = h.connect("watcher");
    let rap = SubOptions {
        qos: QoS::ExactlyOnce,
        retain_as_published: true,
        ..SubOptions::default()
    };
    h.subscribe_with(&watcher, "will/#", rap, Some(11));
    let mut w = will("will/c", "bye", None);
    w.retain = true;
    w.properties.message_expiry_interval = Some(30);
    w.properties.content_type = Some("text/plain".into());
    let c = h.connect_with("c", true, Some(w), false);

    let timers = h.detach(&c, 60, true);
    assert_eq!(timers.will_after, None);
    let got = watcher.drain();
    assert_eq!(payloads(&got), ["bye"]);
    let d = &got[0];
    assert_eq!(d.message.topic, "will/c");
    assert_eq!(d.qos, QoS::AtLeastOnce);
    assert!(d.retain);
    assert_eq!(d.subscription_ids, [11]);
    assert_eq!(d.message.origin, c.session_id);
    assert_eq!(d.message.expires_at, Some(h.at(30)));
    assert_eq!(d.message.properties.message_expiry_interval, None);
    assert_eq!(d.message.properties.will_delay_interval, None);
    assert_eq!(
        d.message.properties.content_type.as_deref(),
        Some("text/plain")
    );
    assert_eq!(h.router.retained_count(), 1);

    // Session Expiry 0 publishes the will as well, and the session is gone before it is sent.
    let e = h.connect_with("e", true, Some(will("will/e", "bye-e", None)), false);
    h.subscribe(&e, "will/#", QoS::AtLeastOnce);
    h.detach(&e, 0, true);
    assert_eq!(payloads(&watcher.drain()), ["bye-e"]);
    assert!(e.outbox.is_empty());
}

/// [MQTT-3.1.2-10]: a normal DISCONNECT (publish_will = false) deletes the will.
#[test]
fn will_not_published_on_normal_disconnect() {
    let h = Harness::new();
    let watcher = h.connect("watcher");
    h.subscribe(&watcher, "will/#", QoS::AtLeastOnce);
    let a = h.connect_with("a", true, Some(will("will/a", "a", None)), false);
    let b = h.connect_with("b", true, Some(will("will/b", "b", Some(5))), false);
    let timers_a = h.detach(&a, 0, false);
    let timers_b = h.detach(&b, 60, false);
    assert_eq!(timers_a.will_after, None);
    assert_eq!(timers_b.will_after, None);
    h.router.fire_will("b", b.generation, h.at(5));
    h.router.expire_session("b", b.generation, h.at(60));
    assert!(watcher.drain().is_empty());
}

/// [MQTT-3.1.3-9]: with a Will Delay the will goes out when the delay elapses (`fire_will`),
/// unless a new connection for the client id arrived before; it goes out once.
#[test]
fn delayed_will_fires_unless_the_client_reconnected() {
    let h = Harness::new();
    let watcher = h.connect("watcher");
    h.subscribe(&watcher, "will/#", QoS::AtLeastOnce);

    let c = h.connect_with("c", false, Some(will("will/c", "late", Some(10))), false);
    let timers = h.detach(&c, 3600, true);
    assert_eq!(timers.will_after, Some(Duration::from_secs(10)));
    assert_eq!(timers.expire_after, Some(Duration::from_secs(3600)));
    assert!(watcher.drain().is_empty(), "not before the delay");
    h.router.fire_will("c", c.generation, h.at(10));
    assert_eq!(payloads(&watcher.drain()), ["late"]);
    h.router.fire_will("c", c.generation, h.at(11));
    h.router.expire_session("c", c.generation, h.at(3600));
    assert!(watcher.drain().is_empty(), "published once");

    let d = h.connect_with("d", false, Some(will("will/d", "never", Some(10))), false);
    assert_eq!(
        h.detach(&d, 3600, true).will_after,
        Some(Duration::from_secs(10))
    );
    let d2 = h.connect_with("d", false, None, false);
    assert!(d2.session_present);
    h.router.fire_will("d", d.generation, h.at(10));
    assert!(watcher.drain().is_empty(), "reconnected in time");
    // Still nothing once the new connection is gone too (it had no will).
    assert_eq!(h.detach(&d2, 3600, true).will_after, None);
    h.router.fire_will("d", d.generation, h.at(20));
    h.router.fire_will("d", d2.generation, h.at(20));
    h.router.expire_session("d", d2.generation, h.at(3600));
    assert!(watcher.drain().is_empty());

    // A timer left over from an earlier connection must not fire a later connection's will.
    let e = h.connect_with("e", false, Some(will("will/e", "first", Some(10))), false);
    h.detach(&e, 3600, true);
    let e2 = h.connect_with("e", false, Some(will("will/e", "second", Some(100))), false);
    assert_eq!(
        h.detach(&e2, 3600, true).will_after,
        Some(Duration::from_secs(100))
    );
    h.router.fire_will("e", e.generation, h.at(10));
    assert!(watcher.drain().is_empty(), "stale will timer");
    h.router.fire_will("e", e2.generation, h.at(110));
    assert_eq!(payloads(&watcher.drain()), ["second"]);
}

/// §3.1.3.2.2: the will goes out at the earlier of Will Delay and session end, so the delay is
/// capped at the Session Expiry, and the session ending publishes a pending will.
#[test]
fn will_delay_is_capped_at_session_expiry_and_expiry_publishes_it() {
    let h = Harness::new();
    let watcher = h.connect("watcher");
    h.subscribe(&watcher, "will/#", QoS::AtLeastOnce);

    let c = h.connect_with("c", false, Some(will("will/c", "w", Some(100))), false);
    let timers = h.detach(&c, 10, true);
    assert_eq!(timers.will_after, Some(Duration::from_secs(10)));
    assert_eq!(timers.expire_after, Some(Duration::from_secs(10)));
    assert!(watcher.drain().is_empty());
    // The expiry timer may well run first: the session ends and takes the will out with it.
    h.router.expire_session("c", c.generation, h.at(10));
    assert_eq!(payloads(&watcher.drain()), ["w"]);
    assert_eq!(h.router.session_count(), 1);
    h.router.fire_will("c", c.generation, h.at(10));
    assert!(watcher.drain().is_empty());

    // Session Expiry 0: the delayed will is due at once.
    let e = h.connect_with("e", false, Some(will("will/e", "now", Some(100))), false);
    assert_eq!(h.detach(&e, 0, true).will_after, None);
    assert_eq!(payloads(&watcher.drain()), ["now"]);
}

/// A Clean Start reconnect ends the old session, so its pending delayed will is published.
#[test]
fn clean_start_reconnect_publishes_the_pending_will() {
    let h = Harness::new();
    let watcher = h.connect("watcher");
    h.subscribe(&watcher, "will/#", QoS::AtLeastOnce);
    let c = h.connect_with("c", false, Some(will("will/c", "w", Some(100))), false);
    h.detach(&c, 3600, true);
    assert!(watcher.drain().is_empty());
    let c2 = h.connect_with("c", true, None, false);
    assert!(!c2.session_present);
    assert_eq!(payloads(&watcher.drain()), ["w"]);
    h.router.fire_will("c", c.generation, h.at(100));
    assert!(watcher.drain().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

fn queue_limits(max: usize, strategy: QueueStrategy) -> RouterLimits {
    RouterLimits {
        max_queued_messages: max,
        queue_strategy: strategy,
        ..RouterLimits::default()
    }
}

/// §7.4 subscriber queue limit, DropNewest: the first N stay, the rest are dropped and
/// counted in `gatehouse_subscriber_queue_dropped`.
#[test]
fn queue_limit_drop_newest_keeps_the_first_n() {
    let h = Harness::with_limits(queue_limits(3, QueueStrategy::DropNewest));
    let p = h.connect("pub");
    let s = h.connect("s");
    let other = h.connect("other");
    h.subscribe(&s, "t", QoS::AtLeastOnce);
    h.subscribe(&other, "t", QoS::AtLeastOnce);
    for i in 0..5 {
        assert_eq!(
            h.publish(&p, "t", &i.to_string(), QoS::AtLeastOnce, false)
                .code,
            ReasonCode::SUCCESS
        );
    }
    assert_eq!(s.outbox.len(), 3);
    let weight = message(0, "t", "0", QoS::AtLeastOnce, false).weight();
    assert_eq!(
        h.router.budget().used(),
        6 * weight,
        "dropped ones are not counted"
    );
    assert_eq!(payloads(&s.drain()), ["0", "1", "2"]);
    assert_eq!(h.metric("gatehouse_subscriber_queue_dropped"), 4);
    assert_eq!(payloads(&other.drain()), ["0", "1", "2"]);
    assert_eq!(h.router.budget().used(), 0);

    // Room again after draining.
    h.publish(&p, "t", "5", QoS::AtLeastOnce, false);
    assert_eq!(payloads(&s.drain()), ["5"]);
}

/// Scenario 46: DropOldest, offline persistent subscriber, 15 QoS 1 publishes with a limit of
/// 10 → on reconnect it receives the newest 10.
#[test]
fn queue_limit_drop_oldest_keeps_the_newest_n() {
    let h = Harness::with_limits(queue_limits(10, QueueStrategy::DropOldest));
    let p = h.connect("pub");
    let s = h.connect_with("s", false, None, false);
    h.subscribe(&s, "t", QoS::AtLeastOnce);
    h.detach(&s, 3600, false);
    for i in 0..15 {
        h.publish(&p, "t", &format!("{i:02}"), QoS::AtLeastOnce, false);
    }
    assert_eq!(h.metric("gatehouse_subscriber_queue_dropped"), 5);
    let weight = message(0, "t", "00", QoS::AtLeastOnce, false).weight();
    assert_eq!(h.router.budget().used(), 10 * weight);

    let s2 = h.connect_with("s", false, None, false);
    assert!(s2.session_present);
    let expected: Vec<String> = (5..15).map(|i| format!("{i:02}")).collect();
    assert_eq!(payloads(&s2.drain()), expected);
    assert_eq!(h.router.budget().used(), 0);
}

/// Scenario 45 / §7.3: from 75% of the memory budget on, QoS 1/2 PUBLISH gets 0x97 and is
/// counted in `aio_broker_backpressure_packets_rejected`; QoS 0 is dropped and counted in
/// `aio_broker_qos0_messages_dropped`. Nothing of a rejected message is routed or
/// retained. Draining brings the budget back down and publishing resumes.
#[test]
fn memory_budget_backpressure_from_75_percent() {
    let h = Harness::with_limits(RouterLimits {
        memory_budget_bytes: 1000,
        ..RouterLimits::default()
    });
    let p = h.connect("pub");
    let s = h.connect("s");
    h.subscribe(&s, "#", QoS::AtLeastOnce);
    let payload = "x".repeat(100);
    let weight = message(0, "t", &payload, QoS::AtLeastOnce, false).weight();
    assert_eq!(weight, 165);

    // 0, 165, ... 660 are below 750: five are accepted, which takes the budget to 825.
    for i in 0..5 {
        let out = h.publish(&p, "t", &payload, QoS::AtLeastOnce, false);
        assert_eq!(out.code, ReasonCode::SUCCESS, "publish {i}");
    }
    assert_eq!(h.router.budget().used(), 5 * weight);

    let out = h.publish(&p, "t", &payload, QoS::AtLeastOnce, false);
    assert_eq!(out.code, ReasonCode::QUOTA_EXCEEDED);
    assert_eq!(out.matched, 0);
    assert_eq!(
        h.publish(&p, "t", "x", QoS::ExactlyOnce, false).code,
        ReasonCode::QUOTA_EXCEEDED
    );
    assert_eq!(h.metric("aio_broker_backpressure_packets_rejected"), 2);
    assert_eq!(h.metric("aio_broker_qos0_messages_dropped"), 0);

    let out = h.publish(&p, "t", "x", QoS::AtMostOnce, false);
    assert_ne!(out.code, ReasonCode::SUCCESS);
    assert_eq!(out.matched, 0);
    assert_eq!(h.metric("aio_broker_qos0_messages_dropped"), 1);
    assert_eq!(h.metric("aio_broker_backpressure_packets_rejected"), 2);

    h.publish(&p, "r", "retained", QoS::AtLeastOnce, true);
    assert_eq!(
        h.router.retained_count(),
        0,
        "a rejected message is not retained"
    );
    assert_eq!(s.outbox.len(), 5);

    assert_eq!(s.drain().len(), 5);
    assert_eq!(h.router.budget().used(), 0);
    assert_eq!(
        h.publish(&p, "t", &payload, QoS::AtLeastOnce, false).code,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        h.publish(&p, "t", "x", QoS::AtMostOnce, false).code,
        ReasonCode::SUCCESS
    );
}

/// The threshold is exactly 75%: 749 of 1000 bytes queued still accepts, 750 rejects.
#[test]
fn memory_budget_threshold_boundary() {
    let h = Harness::with_limits(RouterLimits {
        memory_budget_bytes: 1000,
        ..RouterLimits::default()
    });
    let p = h.connect("pub");
    let s = h.connect("s");
    h.subscribe(&s, "t", QoS::AtLeastOnce);
    // weight = topic (1) + payload + 64
    h.publish(&p, "t", &"x".repeat(684), QoS::AtLeastOnce, false);
    assert_eq!(h.router.budget().used(), 749);
    assert_eq!(
        h.publish(&p, "t", "", QoS::AtLeastOnce, false).code,
        ReasonCode::SUCCESS
    );
    s.drain();
    h.publish(&p, "t", &"x".repeat(685), QoS::AtLeastOnce, false);
    assert_eq!(h.router.budget().used(), 750);
    assert_eq!(
        h.publish(&p, "t", "", QoS::AtLeastOnce, false).code,
        ReasonCode::QUOTA_EXCEEDED
    );
}

/// `Budget::used` is exactly the bytes sitting in outboxes through every path that queues,
/// drops, requeues or hands over, so it is 0 once everything is drained.
#[test]
fn budget_tracks_every_path_and_returns_to_zero() {
    let h = Harness::with_limits(queue_limits(3, QueueStrategy::DropOldest));
    let p = h.connect("pub");
    let a = h.connect_with("a", false, None, false);
    let b = h.connect("b");
    let c = h.connect("c");
    let gone = h.connect("gone");
    h.subscribe(&a, "t/#", QoS::AtLeastOnce);
    h.subscribe(&a, "$share/g/s", QoS::AtLeastOnce);
    h.subscribe(&b, "$share/g/s", QoS::AtLeastOnce);
    h.subscribe(&gone, "#", QoS::AtMostOnce);
    for i in 0..6 {
        h.publish(
            &p,
            &format!("t/{i}"),
            &"y".repeat(i * 7),
            QoS::AtLeastOnce,
            false,
        ); // DropOldest
    }
    for i in 0..4 {
        h.publish(&p, "s", &"z".repeat(i), QoS::AtLeastOnce, false); // round robin
    }
    h.publish(&p, "r", "retained-payload", QoS::AtLeastOnce, true);
    h.subscribe(&c, "r", QoS::AtLeastOnce); // retained on subscribe
    let d = c.outbox.pop().expect("retained");
    c.outbox.unpop(d);
    h.detach(&gone, 0, false); // drained and released
    h.detach(&a, 3600, false); // requeued; shared ones handed to b

    let used = h.router.budget().used();
    let a2 = h.connect_with("a", false, None, false);
    let all: Vec<Delivery> = [&a2, &b, &c, &p].iter().flat_map(|cl| cl.drain()).collect();
    let expected: usize = all.iter().map(|d| d.message.weight()).sum();
    assert_eq!(used, expected);
    assert!(
        all.iter()
            .all(|d| d.message.topic != "s" || d.shared.is_some())
    );
    assert_eq!(h.router.budget().used(), 0);
}

/// Expiring a session releases its queued bytes once the last holder of the outbox is gone.
#[test]
fn expired_session_releases_its_queued_bytes() {
    let h = Harness::new();
    let p = h.connect("pub");
    let s = h.connect_with("s", false, None, false);
    h.subscribe(&s, "t", QoS::AtLeastOnce);
    h.detach(&s, 60, false);
    for _ in 0..3 {
        h.publish(&p, "t", "queued", QoS::AtLeastOnce, false);
    }
    assert!(h.router.budget().used() > 0);
    let generation = s.generation;
    drop(s); // the connection actor is gone
    h.router.expire_session("s", generation, h.at(60));
    assert_eq!(h.router.budget().used(), 0);
}

/// The router queues and a connection drains at the same time: `used()` must never be seen
/// above what was ever queued, in particular never wrap around below zero (a wrapped counter
/// reads as "over 75%" and rejects every PUBLISH meanwhile).
#[test]
fn budget_never_underflows_while_a_connection_drains_concurrently() {
    let metrics = Arc::new(Metrics::default());
    let router = Arc::new(LocalRouter::new(RouterLimits::default(), metrics));
    let now = Instant::now();
    let conn: Arc<dyn ConnControl> = Arc::new(FakeConn::default());
    let ConnectOutcome::Attached(s) = router.connect(
        ConnectRequest {
            owner: None,
            client_id: "s".into(),
            clean_start: true,
            session_expiry: 0,
            will: None,
            control: conn,
        },
        false,
        now,
    ) else {
        panic!("expected Attached");
    };
    router.subscribe(
        s.session_id,
        &[("t".into(), opts(QoS::AtMostOnce))],
        &[true],
        None,
        now,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (router, stop, outbox) = (router.clone(), stop.clone(), s.outbox.clone());
        std::thread::spawn(move || {
            let mut max_seen = 0;
            while !stop.load(Ordering::Relaxed) {
                let _ = outbox.pop();
                max_seen = max_seen.max(router.budget().used());
                if max_seen > usize::MAX / 2 {
                    break;
                }
            }
            max_seen
        })
    };
    let start = Instant::now();
    let mut published = 0usize;
    while start.elapsed() < Duration::from_millis(1500) && !consumer.is_finished() {
        let m = message(0, "t", "x", QoS::AtMostOnce, false);
        published += m.weight();
        router.publish(m, now);
    }
    stop.store(true, Ordering::Relaxed);
    let max_seen = consumer.join().expect("consumer");
    assert!(
        max_seen <= published,
        "budget read {max_seen:#x} with only {published} bytes ever queued"
    );
}

// ---------------------------------------------------------------------------------------------
// Wake-ups
// ---------------------------------------------------------------------------------------------

/// A burst of messages costs one wake-up until the consumer calls `clear_scheduled`.
#[test]
fn burst_wakes_once_until_clear_scheduled() {
    let h = Harness::new();
    let p = h.connect("pub");
    let s = h.connect("s");
    h.subscribe(&s, "t", QoS::AtLeastOnce);
    assert_eq!(s.conn.wakes(), 0);

    for _ in 0..10 {
        h.publish(&p, "t", "m", QoS::AtLeastOnce, false);
    }
    assert_eq!(s.outbox.len(), 10);
    assert_eq!(s.conn.wakes(), 1);

    s.outbox.clear_scheduled();
    assert_eq!(s.drain().len(), 10);
    for _ in 0..5 {
        h.publish(&p, "t", "m", QoS::AtLeastOnce, false);
    }
    assert_eq!(s.conn.wakes(), 2);

    // Without clear_scheduled no further wake-up, drained or not.
    s.drain();
    h.publish(&p, "t", "m", QoS::AtLeastOnce, false);
    assert_eq!(s.conn.wakes(), 2);

    // Retained-on-subscribe deliveries wake as well.
    s.outbox.clear_scheduled();
    h.publish(&p, "r", "retained", QoS::AtLeastOnce, true);
    h.subscribe(&s, "r", QoS::AtLeastOnce);
    assert_eq!(s.conn.wakes(), 3);
    // The publisher was never woken: it subscribed to nothing.
    assert_eq!(p.conn.wakes(), 0);
}

// ---------------------------------------------------------------------------------------------
// The store: what a persistent session leaves behind survives a new router on the same store
// ---------------------------------------------------------------------------------------------

mod stored {
    use super::*;
    use crate::store::{Durability, Store};

    fn open(dir: &std::path::Path) -> (Arc<Store>, crate::store::Loaded) {
        let (s, loaded) = Store::open(dir, Durability::Immediate).expect("store");
        (Arc::new(s), loaded)
    }

    fn router(store: &Arc<Store>) -> LocalRouter {
        LocalRouter::with_store(
            RouterLimits::default(),
            Arc::new(Metrics::default()),
            store.clone(),
        )
    }

    fn attach(r: &LocalRouter, id: &str, expiry: u32, will: Option<Will>) -> Attached {
        match r.connect(
            ConnectRequest {
                owner: None,
                client_id: id.into(),
                clean_start: false,
                session_expiry: expiry,
                will,
                control: Arc::new(FakeConn::default()),
            },
            false,
            Instant::now(),
        ) {
            ConnectOutcome::Attached(a) => a,
            ConnectOutcome::TakeoverPending(_) => panic!("takeover"),
            ConnectOutcome::Refused(code, why) => panic!("refused {code}: {why}"),
        }
    }

    fn detach(r: &LocalRouter, id: &str, a: &Attached, expiry: u32) {
        r.detach(
            Detach {
                client_id: id.into(),
                generation: a.generation,
                state: SessionState::default(),
                session_expiry: expiry,
                publish_will: false,
            },
            Instant::now(),
        );
    }

    /// A QoS 1 message queued for an offline persistent session is acknowledged to its
    /// publisher only with a store ticket, and a new router on the same store has the session,
    /// its subscription and the message (tagged, so the ack can delete it). Acknowledging it
    /// removes it for good; a session without expiry is never stored.
    #[test]
    fn offline_queue_survives_a_new_router_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(dir.path());
            let r = router(&store);
            let a = attach(&r, "keep", 3600, None);
            r.subscribe(
                a.session_id,
                &[("t/#".into(), opts(QoS::AtLeastOnce))],
                &[true],
                Some(4),
                Instant::now(),
            );
            detach(&r, "keep", &a, 3600);
            let gone = attach(&r, "gone", 0, None);
            r.subscribe(
                gone.session_id,
                &[("t/#".into(), opts(QoS::AtLeastOnce))],
                &[true],
                None,
                Instant::now(),
            );
            let out = r.publish(
                message(99, "t/1", "m1", QoS::AtLeastOnce, false),
                Instant::now(),
            );
            assert!(
                out.durable.is_some(),
                "a persistent subscriber makes the PUBACK wait"
            );
            let out0 = r.publish(
                message(99, "t/1", "q0", QoS::AtMostOnce, false),
                Instant::now(),
            );
            assert!(out0.durable.is_none(), "QoS 0 is never stored");
            store.close();
        }
        let tag;
        {
            let (store, loaded) = open(dir.path());
            assert_eq!(loaded.sessions.len(), 1, "only the session with an expiry");
            let r = router(&store);
            let timers = r.restore(loaded, Instant::now());
            assert_eq!(timers.len(), 1);
            assert!(timers[0].timers.expire_after.is_some());
            let a = attach(&r, "keep", 3600, None);
            assert!(a.session_present);
            let queued = drain(&a.outbox);
            let texts: Vec<&[u8]> = queued.iter().map(|d| d.message.payload.as_ref()).collect();
            assert_eq!(
                texts,
                vec![&b"m1"[..]],
                "the QoS 1 message, not the QoS 0 one"
            );
            assert_eq!(queued[0].subscription_ids, vec![4]);
            tag = queued[0].tag;
            assert_ne!(tag, 0);
            // The restored subscription routes new messages.
            r.publish(
                message(99, "t/2", "m2", QoS::AtLeastOnce, false),
                Instant::now(),
            );
            let next = drain(&a.outbox);
            assert_eq!(next.len(), 1);
            r.acknowledged("keep", &[tag, next[0].tag]);
            store.close();
        }
        let (_, loaded) = open(dir.path());
        assert!(
            loaded.sessions[0].deliveries.is_empty(),
            "acknowledged means deleted"
        );
    }

    /// DropOldest evicts from the store too; clean start and expiry delete the session.
    #[test]
    fn evictions_and_session_ends_delete_what_was_stored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(dir.path());
            let r = LocalRouter::with_store(
                RouterLimits {
                    max_queued_messages: 2,
                    queue_strategy: QueueStrategy::DropOldest,
                    ..RouterLimits::default()
                },
                Arc::new(Metrics::default()),
                store.clone(),
            );
            let a = attach(&r, "small", 3600, None);
            r.subscribe(
                a.session_id,
                &[("q".into(), opts(QoS::AtLeastOnce))],
                &[true],
                None,
                Instant::now(),
            );
            detach(&r, "small", &a, 3600);
            for p in ["1", "2", "3"] {
                r.publish(message(99, "q", p, QoS::AtLeastOnce, false), Instant::now());
            }
            let b = attach(&r, "ends", 3600, None);
            detach(&r, "ends", &b, 60);
            r.expire_session("ends", b.generation, Instant::now());
            store.close();
        }
        let (_, loaded) = open(dir.path());
        assert_eq!(loaded.sessions.len(), 1, "the expired session is gone");
        let payloads: Vec<&[u8]> = loaded.sessions[0]
            .deliveries
            .iter()
            .map(|d| d.message.payload.as_ref())
            .collect();
        assert_eq!(
            payloads,
            vec![&b"2"[..], &b"3"[..]],
            "the oldest was dropped"
        );
    }

    /// Retained messages are stored and cleared; a will pending when the broker stopped is
    /// published at restore, to subscribers restored with it.
    #[test]
    fn retained_and_pending_wills_come_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(dir.path());
            let r = router(&store);
            r.publish(
                message(99, "r/a", "A", QoS::AtLeastOnce, true),
                Instant::now(),
            );
            r.publish(
                message(99, "r/b", "B", QoS::AtLeastOnce, true),
                Instant::now(),
            );
            r.publish(
                message(99, "r/b", "", QoS::AtLeastOnce, true),
                Instant::now(),
            );
            let w = attach(&r, "watcher", 3600, None);
            r.subscribe(
                w.session_id,
                &[("wills/#".into(), opts(QoS::AtLeastOnce))],
                &[true],
                None,
                Instant::now(),
            );
            detach(&r, "watcher", &w, 3600);
            let mut will = Will {
                topic: "wills/x".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::default(),
            };
            will.properties.will_delay_interval = Some(0);
            // Connected when the "crash" happens: its will is in its session record.
            let _dying = attach(&r, "dying", 3600, Some(will));
            store.close();
        }
        let (store, loaded) = open(dir.path());
        let r = router(&store);
        r.restore(loaded, Instant::now());
        assert_eq!(r.retained_count(), 1);
        let w = attach(&r, "watcher", 3600, None);
        let got: Vec<Bytes> = drain(&w.outbox)
            .iter()
            .map(|d| d.message.payload.clone())
            .collect();
        assert_eq!(got, vec![Bytes::from_static(b"bye")]);
    }
}

// ---------------------------------------------------------------------------------------------
// Event Grid multi-session: sessions owned by an identity
// ---------------------------------------------------------------------------------------------

mod owners {
    use super::*;
    use crate::auth::SessionOwner;

    fn connect(
        r: &LocalRouter,
        id: &str,
        owner: &str,
        max: u32,
        force: bool,
    ) -> (ConnectOutcome, Arc<FakeConn>) {
        let conn = Arc::new(FakeConn::default());
        let out = r.connect(
            ConnectRequest {
                owner: Some(SessionOwner {
                    identity: owner.into(),
                    max_sessions: max,
                }),
                client_id: id.into(),
                clean_start: false,
                session_expiry: 3600,
                will: None,
                control: conn.clone(),
            },
            force,
            Instant::now(),
        );
        (out, conn)
    }

    fn attached(out: ConnectOutcome) -> Attached {
        match out {
            ConnectOutcome::Attached(a) => a,
            ConnectOutcome::TakeoverPending(_) => panic!("takeover pending"),
            ConnectOutcome::Refused(code, why) => panic!("refused {code}: {why}"),
        }
    }

    fn refused(out: ConnectOutcome) -> (ReasonCode, String) {
        match out {
            ConnectOutcome::Refused(code, why) => (code, why),
            _ => panic!("expected a refusal"),
        }
    }

    fn detach(r: &LocalRouter, id: &str, a: &Attached) {
        r.detach(
            Detach {
                client_id: id.into(),
                generation: a.generation,
                state: SessionState::default(),
                session_expiry: 3600,
                publish_will: false,
            },
            Instant::now(),
        );
    }

    /// Scenario 54: at most two sessions for `app`; an offline-but-unexpired session still
    /// counts; a session that ends frees its slot.
    #[test]
    fn an_identity_holds_at_most_its_maximum_of_sessions() {
        let r = LocalRouter::new(RouterLimits::default(), Arc::new(Metrics::default()));
        let s1 = attached(connect(&r, "s1", "app", 2, false).0);
        let _s2 = attached(connect(&r, "s2", "app", 2, false).0);
        detach(&r, "s1", &s1);
        let (code, why) = refused(connect(&r, "s3", "app", 2, false).0);
        assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
        assert!(why.contains("2 session"), "{why}");
        // Its own offline session can always be resumed.
        let s1 = attached(connect(&r, "s1", "app", 2, false).0);
        assert!(s1.session_present);
        // Another identity is not affected.
        attached(connect(&r, "s3", "other", 2, false).0);
        // When s1's session ends, app may open s3... which belongs to `other` now: s4.
        detach(&r, "s1", &s1);
        r.expire_session("s1", s1.generation, Instant::now());
        attached(connect(&r, "s4", "app", 2, false).0);
    }

    /// Scenario 55: a client id owned by one identity cannot be taken over by another
    /// (0x87); the same identity takes over, and the old connection gets 0x8E.
    #[test]
    fn only_the_owning_identity_may_use_or_take_over_a_client_id() {
        let r = LocalRouter::new(RouterLimits::default(), Arc::new(Metrics::default()));
        let (out, old_conn) = connect(&r, "s1", "app", 2, false);
        attached(out);
        let (code, _) = refused(connect(&r, "s1", "other", 2, false).0);
        assert_eq!(code, ReasonCode::NOT_AUTHORIZED);
        assert!(
            old_conn.kick_codes().is_empty(),
            "the owner is not disturbed"
        );
        match connect(&r, "s1", "app", 2, false).0 {
            ConnectOutcome::TakeoverPending(_) => {}
            _ => panic!("the owner takes over"),
        }
        assert_eq!(old_conn.kick_codes(), vec![ReasonCode::SESSION_TAKEN_OVER]);
    }
}
