//! The local router: who is subscribed to what, retained messages, offline sessions and wills.
//!
//! Connection actors call the [`Router`] trait; [`LocalRouter`] is the single-node
//! implementation (a cluster implementation will take the same seat). The router is synchronous
//! and sans-IO apart from two facts: it hands messages to connections through each session's
//! [`Outbox`], and it wakes a connection through the [`ConnControl`] the connection registered.
//! Time comes in as arguments; timers (will delay, session expiry) are the caller's, which calls
//! back [`Router::fire_will`] / [`Router::expire_session`] with the generation it was given so
//! that a stale timer can never touch a newer connection.
//!
//! Locking: one mutex over the routing tables, held for the match-and-enqueue of one PUBLISH;
//! each outbox has its own small mutex so that a connection draining its queue never waits for
//! routing. Slow consumers do not block anything: a full outbox drops for that subscriber.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mqtt::session::{Delivery, InflightStage, Message, SessionState};
use mqtt::trie::SubscriptionTrie;
use mqtt::{QoS, ReasonCode, SubOptions, Will, topic};
use parking_lot::Mutex;

use crate::metrics::Metrics;

/// How a connection actor is reached from the router.
pub trait ConnControl: Send + Sync {
    /// New deliveries are in the outbox.
    fn wake(&self);
    /// Close the connection with this reason (takeover, administrative action).
    fn kick(&self, code: ReasonCode, reason: String);
}

/// What happens when a subscriber's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueStrategy {
    /// Drop the new message for this subscriber.
    DropNewest,
    /// Drop the oldest queued message to make room.
    DropOldest,
}

#[derive(Clone, Debug)]
pub struct RouterLimits {
    /// Messages queued per session beyond its in-flight window.
    pub max_queued_messages: usize,
    pub queue_strategy: QueueStrategy,
    /// Bytes of queued messages across all sessions; backpressure starts at 75% of it.
    pub memory_budget_bytes: usize,
}

impl Default for RouterLimits {
    fn default() -> Self {
        RouterLimits {
            max_queued_messages: 10_000,
            queue_strategy: QueueStrategy::DropNewest,
            memory_budget_bytes: 576 << 20,
        }
    }
}

/// Bytes of messages sitting in outboxes, across all sessions.
#[derive(Default)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }
    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
    /// The spec's documented threshold: reject from 75% of the buffer on.
    fn over_threshold(&self) -> bool {
        self.used() >= self.limit / 4 * 3
    }
}

/// Messages waiting for one session, shared between the router (producer) and the session's
/// connection actor (consumer). It lives as long as the session, across connections.
pub struct Outbox {
    queue: Mutex<VecDeque<Delivery>>,
    control: Mutex<Option<Arc<dyn ConnControl>>>,
    /// Set while a wake-up is on its way, so that a burst of messages costs one wake-up.
    scheduled: AtomicBool,
    budget: Arc<Budget>,
}

impl Outbox {
    fn new(budget: Arc<Budget>) -> Outbox {
        Outbox {
            queue: Mutex::new(VecDeque::new()),
            control: Mutex::new(None),
            scheduled: AtomicBool::new(false),
            budget,
        }
    }

    pub fn pop(&self) -> Option<Delivery> {
        let d = self.queue.lock().pop_front()?;
        self.budget.sub(d.message.weight());
        Some(d)
    }

    /// Put back a delivery the session could not take (window full), keeping order.
    pub fn unpop(&self, d: Delivery) {
        self.budget.add(d.message.weight());
        self.queue.lock().push_front(d);
    }

    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The consumer is about to drain: later pushes must wake it again.
    pub fn clear_scheduled(&self) {
        self.scheduled.store(false, Ordering::Release);
    }

    fn push(&self, d: Delivery, limits: &RouterLimits, metrics: &Metrics) -> bool {
        let weight = d.message.weight();
        {
            let mut q = self.queue.lock();
            if q.len() >= limits.max_queued_messages {
                match limits.queue_strategy {
                    QueueStrategy::DropNewest => {
                        metrics.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                    QueueStrategy::DropOldest => {
                        if let Some(old) = q.pop_front() {
                            self.budget.sub(old.message.weight());
                            metrics.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            // Count the bytes before the delivery becomes visible to `pop`, which subtracts them.
            self.budget.add(weight);
            q.push_back(d);
        }
        self.notify();
        true
    }

    fn notify(&self) {
        if !self.scheduled.swap(true, Ordering::AcqRel)
            && let Some(c) = self.control.lock().as_ref()
        {
            c.wake();
        }
    }

    fn set_control(&self, control: Option<Arc<dyn ConnControl>>) {
        *self.control.lock() = control;
        self.scheduled.store(false, Ordering::Release);
    }

    fn drain(&self) -> Vec<Delivery> {
        let drained: Vec<Delivery> = self.queue.lock().drain(..).collect();
        for d in &drained {
            self.budget.sub(d.message.weight());
        }
        drained
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let used: usize = self
            .queue
            .get_mut()
            .iter()
            .map(|d| d.message.weight())
            .sum();
        self.budget.sub(used);
    }
}

/// What a connection asks for when its CONNECT was accepted by authentication.
pub struct ConnectRequest {
    pub client_id: String,
    pub clean_start: bool,
    pub session_expiry: u32,
    pub will: Option<Will>,
    pub control: Arc<dyn ConnControl>,
}

pub struct Attached {
    pub session_present: bool,
    /// Identifies the session (not the connection) for No Local and for the trie.
    pub session_id: u64,
    /// Identifies this connection to the session; stale callbacks carry an older one.
    pub generation: u64,
    pub outbox: Arc<Outbox>,
    pub restored: Option<SessionState>,
}

pub enum ConnectOutcome {
    Attached(Attached),
    /// Another connection holds the client id: it has been told to close with 0x8E. Wait for
    /// it (bounded), then call `connect` again with `force`.
    TakeoverPending(tokio::sync::oneshot::Receiver<()>),
}

/// What a connection leaves behind when it ends.
pub struct Detach {
    pub client_id: String,
    pub generation: u64,
    pub state: SessionState,
    pub session_expiry: u32,
    pub publish_will: bool,
}

/// Timers the caller must start after a detach.
#[derive(Debug, Default)]
pub struct DetachTimers {
    /// Call `fire_will` after this long.
    pub will_after: Option<Duration>,
    /// Call `expire_session` after this long (None = the session never expires or is gone).
    pub expire_after: Option<Duration>,
}

pub struct PublishOutcome {
    pub code: ReasonCode,
    pub matched: usize,
}

/// The seam between connection actors and message routing.
pub trait Router: Send + Sync + 'static {
    fn connect(&self, req: ConnectRequest, force: bool, now: Instant) -> ConnectOutcome;
    fn detach(&self, detach: Detach, now: Instant) -> DetachTimers;
    fn fire_will(&self, client_id: &str, generation: u64, now: Instant);
    fn expire_session(&self, client_id: &str, generation: u64, now: Instant);
    fn publish(&self, message: Message, now: Instant) -> PublishOutcome;
    /// Returns one code per filter (granted QoS or failure). `allowed[i]` false = not authorized.
    fn subscribe(
        &self,
        session_id: u64,
        filters: &[(String, SubOptions)],
        allowed: &[bool],
        subscription_id: Option<u32>,
        now: Instant,
    ) -> Vec<ReasonCode>;
    fn unsubscribe(&self, session_id: u64, filters: &[String]) -> Vec<ReasonCode>;
    fn budget(&self) -> &Budget;
}

#[derive(Clone, Copy, Debug)]
struct Subscription {
    options: SubOptions,
    id: Option<u32>,
}

struct SharedGroup {
    /// The whole `$share/group/filter`, tagged on deliveries.
    name: Arc<str>,
    /// (session id, subscription) in join order; round robin over it.
    members: Vec<(u64, Subscription)>,
    /// A Cell so that routing can advance it while matching through a shared borrow.
    next: std::cell::Cell<usize>,
}

struct ClientEntry {
    client_id: String,
    session_id: u64,
    generation: u64,
    outbox: Arc<Outbox>,
    online: Option<Arc<dyn ConnControl>>,
    subscriptions: HashMap<String, Subscription>,
    offline_state: Option<SessionState>,
    will: Option<Will>,
    takeover_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

struct Tables {
    by_client_id: HashMap<String, u64>,
    sessions: HashMap<u64, ClientEntry>,
    subs: SubscriptionTrie<u64, Subscription>,
    /// Keyed by the inner filter; the trie key is the group name.
    shared: SubscriptionTrie<Arc<str>, SharedGroup>,
    retained: HashMap<String, Arc<Message>>,
    next_session_id: u64,
    /// Per-PUBLISH scratch space, kept to avoid an allocation per message.
    scratch: Vec<(u64, Subscription)>,
}

pub struct LocalRouter {
    tables: Mutex<Tables>,
    limits: RouterLimits,
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
    generations: AtomicU64,
}

impl LocalRouter {
    pub fn new(limits: RouterLimits, metrics: Arc<Metrics>) -> LocalRouter {
        let budget = Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit: limits.memory_budget_bytes,
        });
        LocalRouter {
            tables: Mutex::new(Tables {
                by_client_id: HashMap::new(),
                sessions: HashMap::new(),
                subs: SubscriptionTrie::new(),
                shared: SubscriptionTrie::new(),
                retained: HashMap::new(),
                next_session_id: 1,
                scratch: Vec::new(),
            }),
            limits,
            budget,
            metrics,
            generations: AtomicU64::new(1),
        }
    }

    pub fn retained_count(&self) -> usize {
        self.tables.lock().retained.len()
    }

    /// Tell every connected client to go away (shutdown). Each connection detaches itself.
    pub fn kick_all(&self, code: ReasonCode) {
        let online: Vec<Arc<dyn ConnControl>> = self
            .tables
            .lock()
            .sessions
            .values()
            .filter_map(|e| e.online.clone())
            .collect();
        for c in online {
            c.kick(code, "server shutting down".into());
        }
    }

    pub fn session_count(&self) -> usize {
        self.tables.lock().sessions.len()
    }

    /// The session a timer was started for, if it is still offline and still belongs to the
    /// connection generation that started the timer (a reconnect makes the timer stale).
    fn offline_session(t: &Tables, client_id: &str, generation: u64) -> Option<u64> {
        let sid = *t.by_client_id.get(client_id)?;
        let entry = t.sessions.get(&sid)?;
        (entry.generation == generation && entry.online.is_none()).then_some(sid)
    }

    fn remove_session(t: &mut Tables, session_id: u64) -> Option<ClientEntry> {
        let entry = t.sessions.remove(&session_id)?;
        t.by_client_id.remove(&entry.client_id);
        for filter in entry.subscriptions.keys() {
            Self::remove_subscription(t, session_id, filter);
        }
        Some(entry)
    }

    fn remove_subscription(t: &mut Tables, session_id: u64, filter: &str) {
        match topic::parse_shared(filter) {
            Ok(Some((group, inner))) => {
                let key: Arc<str> = Arc::from(group);
                let mut empty = false;
                if let Some(g) = t.shared.get_mut(inner, &key) {
                    g.members.retain(|(id, _)| *id != session_id);
                    empty = g.members.is_empty();
                }
                if empty {
                    t.shared.remove(inner, &key);
                }
            }
            _ => {
                t.subs.remove(filter, &session_id);
            }
        }
    }

    /// Hand a shared-subscription message to another member of its group, if there is one.
    fn redistribute(&self, t: &mut Tables, leaving: u64, d: Delivery) -> bool {
        let Some(shared) = d.shared.clone() else {
            return false;
        };
        let Ok(Some((group, inner))) = topic::parse_shared(&shared) else {
            return false;
        };
        let key: Arc<str> = Arc::from(group);
        let Some(g) = t.shared.get_mut(inner, &key) else {
            return false;
        };
        let candidates: Vec<(u64, Subscription)> = g
            .members
            .iter()
            .filter(|(id, _)| *id != leaving)
            .copied()
            .collect();
        for (id, sub) in candidates {
            if let Some(e) = t.sessions.get(&id)
                && e.online.is_some()
            {
                // Sent in response to this member's subscription: its QoS and identifier.
                let d = Delivery {
                    qos: sub.options.qos.min(d.message.qos),
                    retain: false,
                    subscription_ids: sub.id.into_iter().collect(),
                    ..d
                };
                return e.outbox.push(d, &self.limits, &self.metrics);
            }
        }
        false
    }
}

impl Router for LocalRouter {
    fn connect(&self, req: ConnectRequest, force: bool, now: Instant) -> ConnectOutcome {
        let mut t = self.tables.lock();
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let mut forced_will = None;
        if let Some(&sid) = t.by_client_id.get(&req.client_id) {
            let entry = t.sessions.get_mut(&sid).expect("index and sessions agree");
            if let Some(old) = entry.online.clone() {
                if !force {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    entry.takeover_waiters.push(tx);
                    drop(t);
                    // [MQTT-3.1.4-3]: the existing connection is closed (v5: DISCONNECT 0x8E).
                    old.kick(
                        ReasonCode::SESSION_TAKEN_OVER,
                        "another connection used this client identifier".into(),
                    );
                    return ConnectOutcome::TakeoverPending(rx);
                }
                // The old connection did not let go in time: detach it by force. Its later
                // detach carries an older generation and is ignored.
                entry.online = None;
                entry.outbox.set_control(None);
                // Its will is due now unless it is delayed and the session goes on
                // ([MQTT-3.1.2-8], §3.1.3.2.2); with Clean Start it goes out below.
                if !req.clean_start
                    && entry
                        .will
                        .as_ref()
                        .is_some_and(|w| w.properties.will_delay_interval.unwrap_or(0) == 0)
                {
                    forced_will = entry.will.take();
                }
            }
            if req.clean_start {
                if let Some(old) = Self::remove_session(&mut t, sid) {
                    // [MQTT-3.1.3-9]: a pending will delay is over when the session ends.
                    if let Some(will) = old.will {
                        drop(t);
                        self.publish(will_message(will, sid, now), now);
                        t = self.tables.lock();
                    }
                }
            } else {
                let entry = t.sessions.get_mut(&sid).expect("present");
                entry.generation = generation;
                entry.online = Some(req.control.clone());
                // A will pending from the previous connection is cancelled by reconnecting
                // ([MQTT-3.1.3-9]); the new connection's will replaces it.
                entry.will = req.will;
                entry.outbox.set_control(Some(req.control));
                let restored = entry.offline_state.take();
                let outbox = entry.outbox.clone();
                drop(t);
                if let Some(will) = forced_will {
                    self.publish(will_message(will, sid, now), now);
                }
                return ConnectOutcome::Attached(Attached {
                    session_present: true,
                    session_id: sid,
                    generation,
                    outbox,
                    restored,
                });
            }
        }
        let sid = t.next_session_id;
        t.next_session_id += 1;
        let outbox = Arc::new(Outbox::new(self.budget.clone()));
        outbox.set_control(Some(req.control.clone()));
        t.by_client_id.insert(req.client_id.clone(), sid);
        t.sessions.insert(
            sid,
            ClientEntry {
                client_id: req.client_id,
                session_id: sid,
                generation,
                outbox: outbox.clone(),
                online: Some(req.control),
                subscriptions: HashMap::new(),
                offline_state: None,
                will: req.will,
                takeover_waiters: Vec::new(),
            },
        );
        ConnectOutcome::Attached(Attached {
            session_present: false,
            session_id: sid,
            generation,
            outbox,
            restored: None,
        })
    }

    fn detach(&self, mut d: Detach, now: Instant) -> DetachTimers {
        let mut t = self.tables.lock();
        let Some(&sid) = t.by_client_id.get(&d.client_id) else {
            return DetachTimers::default();
        };
        let entry = t.sessions.get_mut(&sid).expect("index and sessions agree");
        if entry.generation != d.generation {
            return DetachTimers::default(); // a newer connection owns the session now
        }
        entry.online = None;
        entry.outbox.set_control(None);
        for w in entry.takeover_waiters.drain(..) {
            let _ = w.send(());
        }
        let will = if d.publish_will {
            entry.will.take()
        } else {
            None
        };
        entry.will = None;
        let session_id = entry.session_id;

        // Shared-subscription messages this member had not finished go to another member:
        // those still queued, and QoS 1 in flight. QoS 2 in flight stays: [MQTT-4.8.2-4]
        // requires completing it with this client when it reconnects.
        let queued = entry.outbox.drain();
        let mut keep = VecDeque::new();
        let inflight = std::mem::take(&mut d.state.inflight);
        let mut kept_inflight = VecDeque::new();
        for (pid, f) in inflight {
            if f.delivery.shared.is_some() && f.stage == InflightStage::AwaitPubAck {
                if !self.redistribute(&mut t, session_id, f.delivery.clone()) {
                    kept_inflight.push_back((pid, f));
                }
            } else {
                kept_inflight.push_back((pid, f));
            }
        }
        for q in queued {
            if q.shared.is_some() && self.redistribute(&mut t, session_id, q.clone()) {
                continue;
            }
            keep.push_back(q);
        }
        d.state.inflight = kept_inflight;

        let mut timers = DetachTimers::default();
        let mut immediate_will = None;
        if d.session_expiry == 0 {
            Self::remove_session(&mut t, session_id);
            immediate_will = will;
        } else {
            let entry = t.sessions.get_mut(&sid).expect("present");
            for q in keep {
                entry.outbox.push(q, &self.limits, &self.metrics);
            }
            entry.offline_state = Some(d.state);
            if let Some(will) = will {
                let delay = will.properties.will_delay_interval.unwrap_or(0);
                let delay = delay.min(d.session_expiry);
                if delay == 0 {
                    immediate_will = Some(will);
                } else {
                    entry.will = Some(will);
                    timers.will_after = Some(Duration::from_secs(u64::from(delay)));
                }
            }
            if d.session_expiry != u32::MAX {
                timers.expire_after = Some(Duration::from_secs(u64::from(d.session_expiry)));
            }
        }
        drop(t);
        if let Some(will) = immediate_will {
            self.publish(will_message(will, session_id, now), now);
        }
        timers
    }

    fn fire_will(&self, client_id: &str, generation: u64, now: Instant) {
        let mut t = self.tables.lock();
        let Some(sid) = Self::offline_session(&t, client_id, generation) else {
            return;
        };
        let Some(will) = t.sessions.get_mut(&sid).and_then(|e| e.will.take()) else {
            return;
        };
        drop(t);
        self.publish(will_message(will, sid, now), now);
    }

    fn expire_session(&self, client_id: &str, generation: u64, now: Instant) {
        let mut t = self.tables.lock();
        let Some(sid) = Self::offline_session(&t, client_id, generation) else {
            return;
        };
        let removed = Self::remove_session(&mut t, sid);
        drop(t);
        // A will still waiting for its delay goes out when the session ends.
        if let Some(will) = removed.and_then(|e| e.will) {
            self.publish(will_message(will, sid, now), now);
        }
    }

    fn publish(&self, message: Message, now: Instant) -> PublishOutcome {
        let m = &self.metrics;
        m.publishes_received.fetch_add(1, Ordering::Relaxed);
        m.payload_bytes_received
            .fetch_add(message.payload.len() as u64, Ordering::Relaxed);
        if message.is_expired(now) {
            return PublishOutcome {
                code: ReasonCode::SUCCESS,
                matched: 0,
            };
        }
        if self.budget.over_threshold() {
            if message.qos == QoS::AtMostOnce {
                m.qos0_dropped_incoming.fetch_add(1, Ordering::Relaxed);
            } else {
                m.backpressure_rejected.fetch_add(1, Ordering::Relaxed);
            }
            return PublishOutcome {
                code: ReasonCode::QUOTA_EXCEEDED,
                matched: 0,
            };
        }
        let message = Arc::new(message);
        let mut t = self.tables.lock();
        if message.retain {
            if message.payload.is_empty() {
                // [MQTT-3.3.1-6]: an empty retained message clears the topic.
                t.retained.remove(&message.topic);
            } else {
                // The payload is a slice of the publisher's read buffer; a retained copy may
                // live for days, so it gets its own allocation instead of pinning that buffer.
                let mut stored = (*message).clone();
                stored.payload = bytes::Bytes::copy_from_slice(&message.payload);
                t.retained.insert(message.topic.clone(), Arc::new(stored));
            }
        }
        let t = &mut *t;
        let mut scratch = std::mem::take(&mut t.scratch);
        scratch.clear();
        t.subs.for_each_match(&message.topic, |sid, sub| {
            scratch.push((*sid, *sub));
        });
        // Overlapping subscriptions of one client: one copy with the highest QoS and every
        // subscription identifier ([MQTT-3.3.4-2], [MQTT-3.3.4-3]).
        scratch.sort_unstable_by_key(|(sid, _)| *sid);
        let mut matched = 0;
        let mut i = 0;
        while i < scratch.len() {
            let sid = scratch[i].0;
            let mut j = i;
            let mut qos = QoS::AtMostOnce;
            let mut retain = false;
            let mut ids = Vec::new();
            let mut any = false;
            while j < scratch.len() && scratch[j].0 == sid {
                let sub = scratch[j].1;
                j += 1;
                if sub.options.no_local && message.origin == sid {
                    continue; // [MQTT-3.8.3-3]
                }
                any = true;
                qos = qos.max(sub.options.qos);
                retain |= sub.options.retain_as_published && message.retain;
                if let Some(id) = sub.id {
                    ids.push(id);
                }
            }
            i = j;
            if !any {
                continue;
            }
            if let Some(entry) = t.sessions.get(&sid) {
                matched += 1;
                let d = Delivery {
                    message: message.clone(),
                    qos: qos.min(message.qos),
                    retain,
                    subscription_ids: ids,
                    shared: None,
                    tag: 0,
                };
                entry.outbox.push(d, &self.limits, m);
            }
        }
        t.scratch = scratch;

        // Shared subscriptions: each matching group gets one copy, for its next member in
        // round robin, preferring members that are online ([MQTT-4.8.2-?]).
        let sessions = &t.sessions;
        let limits = &self.limits;
        t.shared.for_each_match(&message.topic, |_, g| {
            let n = g.members.len();
            let mut chosen = None;
            for k in 0..n {
                let idx = (g.next.get() + k) % n;
                let (sid, sub) = g.members[idx];
                let online = sessions.get(&sid).is_some_and(|e| e.online.is_some());
                if online || chosen.is_none() {
                    chosen = Some((idx, sid, sub));
                    if online {
                        break;
                    }
                }
            }
            let Some((idx, sid, sub)) = chosen else {
                return;
            };
            g.next.set((idx + 1) % n);
            if let Some(entry) = sessions.get(&sid) {
                matched += 1;
                let d = Delivery {
                    message: message.clone(),
                    qos: sub.options.qos.min(message.qos),
                    retain: false,
                    subscription_ids: sub.id.into_iter().collect(),
                    shared: Some(g.name.clone()),
                    tag: 0,
                };
                entry.outbox.push(d, limits, m);
            }
        });
        PublishOutcome {
            code: ReasonCode::SUCCESS,
            matched,
        }
    }

    fn subscribe(
        &self,
        session_id: u64,
        filters: &[(String, SubOptions)],
        allowed: &[bool],
        subscription_id: Option<u32>,
        now: Instant,
    ) -> Vec<ReasonCode> {
        let mut t = self.tables.lock();
        let t = &mut *t;
        let mut codes = Vec::with_capacity(filters.len());
        let Some(entry) = t.sessions.get_mut(&session_id) else {
            return vec![ReasonCode::UNSPECIFIED_ERROR; filters.len()];
        };
        let outbox = entry.outbox.clone();
        for (i, (filter, options)) in filters.iter().enumerate() {
            if topic::validate_topic_filter(filter).is_err() {
                codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            if !allowed.get(i).copied().unwrap_or(false) {
                codes.push(ReasonCode::NOT_AUTHORIZED);
                continue;
            }
            let sub = Subscription {
                options: *options,
                id: subscription_id,
            };
            let entry = t.sessions.get_mut(&session_id).expect("checked above");
            let existed = entry.subscriptions.insert(filter.clone(), sub).is_some();
            match topic::parse_shared(filter) {
                Ok(Some((group, inner))) => {
                    let key: Arc<str> = Arc::from(group);
                    if let Some(g) = t.shared.get_mut(inner, &key) {
                        if let Some(m) = g.members.iter_mut().find(|(id, _)| *id == session_id) {
                            m.1 = sub;
                        } else {
                            g.members.push((session_id, sub));
                        }
                    } else {
                        t.shared.insert(
                            inner,
                            key,
                            SharedGroup {
                                name: Arc::from(filter.as_str()),
                                members: vec![(session_id, sub)],
                                next: std::cell::Cell::new(0),
                            },
                        );
                    }
                    // [MQTT-3.8.4-?]: retained messages are not sent to shared subscriptions.
                }
                _ => {
                    t.subs.insert(filter, session_id, sub);
                    let send_retained = match options.retain_handling {
                        0 => true,
                        1 => !existed,
                        _ => false,
                    };
                    if send_retained {
                        for msg in t.retained.values() {
                            if msg.is_expired(now) || !topic::matches(filter, &msg.topic) {
                                continue;
                            }
                            // [MQTT-3.3.1-9]: retained-on-subscribe carries RETAIN = 1.
                            outbox.push(
                                Delivery {
                                    message: msg.clone(),
                                    qos: options.qos.min(msg.qos),
                                    retain: true,
                                    subscription_ids: subscription_id.into_iter().collect(),
                                    shared: None,
                                    tag: 0,
                                },
                                &self.limits,
                                &self.metrics,
                            );
                        }
                    }
                }
            }
            codes.push(ReasonCode(options.qos as u8));
        }
        codes
    }

    fn unsubscribe(&self, session_id: u64, filters: &[String]) -> Vec<ReasonCode> {
        let mut t = self.tables.lock();
        let mut codes = Vec::with_capacity(filters.len());
        for filter in filters {
            let existed = t
                .sessions
                .get_mut(&session_id)
                .and_then(|e| e.subscriptions.remove(filter))
                .is_some();
            if existed {
                Self::remove_subscription(&mut t, session_id, filter);
                codes.push(ReasonCode::SUCCESS);
            } else {
                codes.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
            }
        }
        codes
    }

    fn budget(&self) -> &Budget {
        &self.budget
    }
}

fn will_message(will: Will, origin: u64, now: Instant) -> Message {
    let mut properties = will.properties;
    let expiry = properties.message_expiry_interval.take();
    properties.will_delay_interval = None;
    Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties,
        expires_at: expiry.map(|s| now + Duration::from_secs(u64::from(s))),
        origin,
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
