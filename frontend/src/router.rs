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
use std::time::{Duration, Instant, SystemTime};

use mqtt::inflight::InflightQueue;
use mqtt::session::{Delivery, InflightStage, Message, SessionState};
use mqtt::trie::SubscriptionTrie;
use mqtt::{QoS, ReasonCode, SubOptions, Will, topic};
use parking_lot::Mutex;

use crate::metrics::Metrics;
use crate::store::{self, Op, Store, Ticket};

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
        self.push_evicting(d, limits, metrics).0
    }

    /// Like `push`, and also says which stored delivery (tag) left the queue: the new one if
    /// it was refused, the oldest one if it was dropped for room; 0 if none.
    fn push_evicting(&self, d: Delivery, limits: &RouterLimits, metrics: &Metrics) -> (bool, u64) {
        let weight = d.message.weight();
        let mut evicted = 0;
        {
            let mut q = self.queue.lock();
            if q.len() >= limits.max_queued_messages {
                match limits.queue_strategy {
                    QueueStrategy::DropNewest => {
                        metrics.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                        return (false, d.tag);
                    }
                    QueueStrategy::DropOldest => {
                        if let Some(old) = q.pop_front() {
                            self.budget.sub(old.message.weight());
                            metrics.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                            evicted = old.tag;
                        }
                    }
                }
            }
            // Count the bytes before the delivery becomes visible to `pop`, which subtracts them.
            self.budget.add(weight);
            q.push_back(d);
        }
        self.notify();
        (true, evicted)
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
    /// The identity that owns the session (Event Grid multi-session), if the port's
    /// authorization has one.
    pub owner: Option<crate::auth::SessionOwner>,
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
    /// Refused: CONNACK with this code (the client id belongs to another identity, or the
    /// identity holds its maximum number of sessions).
    Refused(ReasonCode, String),
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
    /// When set, the publisher's acknowledgement waits for it: the message is queued for a
    /// persistent session (or retained) and the store promises durability only once the
    /// ticket is committed.
    pub durable: Option<Ticket>,
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
    /// The session is finished with these delivery tags (see `Delivery::tag`).
    fn acknowledged(&self, client_id: &str, tags: &[u64]);
    /// The filters a session subscribes to, as requested.
    fn subscriptions(&self, session_id: u64) -> Vec<String>;
    /// A ticket covering every change made so far, when acknowledgements wait for the store
    /// (CONNACK and SUBACK of a persistent session wait for it, so that a session or
    /// subscription the client was told about exists after a crash).
    fn sync_point(&self) -> Option<Ticket>;
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
    /// The client id again, shared with every store operation of this session.
    key: Arc<str>,
    /// The Session Expiry Interval in force; non-zero makes the session persistent.
    session_expiry: u32,
    /// When the last connection ended (wall clock, for the store); `None` while connected.
    offline_since: Option<SystemTime>,
    /// The identity owning the session (Event Grid multi-session), if any.
    owner: Option<Arc<str>>,
    session_id: u64,
    generation: u64,
    outbox: Arc<Outbox>,
    online: Option<Arc<dyn ConnControl>>,
    subscriptions: HashMap<String, Subscription>,
    offline_state: Option<SessionState>,
    /// Boxed: most clients have no will, and a `Will` is a few hundred bytes.
    will: Option<Box<Will>>,
    takeover_waiters: Vec<tokio::sync::oneshot::Sender<()>>,
}

struct Tables {
    by_client_id: HashMap<String, u64>,
    /// Boxed entries: the table keeps spare buckets (up to half of them after it grows), and
    /// a spare bucket then costs a pointer rather than a whole entry.
    sessions: HashMap<u64, Box<ClientEntry>>,
    subs: SubscriptionTrie<u64, Subscription>,
    /// Keyed by the inner filter; the trie key is the group name.
    shared: SubscriptionTrie<Arc<str>, SharedGroup>,
    retained: HashMap<String, Arc<Message>>,
    /// Sessions (online or offline) per owning identity.
    owned: HashMap<Arc<str>, u32>,
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
    /// Where persistent sessions and retained messages are kept; `None` = memory only.
    store: Option<Arc<Store>>,
}

/// Timers to start for a session restored from the store, as after a detach.
pub struct RestoredTimers {
    pub client_id: String,
    pub generation: u64,
    pub timers: DetachTimers,
}

/// A message's store record, encoded at most once per PUBLISH however many persistent
/// sessions it reaches.
struct LazyRecord<'a> {
    message: &'a Message,
    record: Option<bytes::Bytes>,
}

impl LazyRecord<'_> {
    fn get(&mut self, now: Instant) -> &bytes::Bytes {
        let m = self.message;
        self.record
            .get_or_insert_with(|| store::message_record(&stored_message(m, now)))
    }
}

fn stored_message(m: &Message, now: Instant) -> store::StoredMessage {
    store::StoredMessage {
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: m.qos,
        retain: m.retain,
        properties: m.properties.clone(),
        expires_at: m
            .expires_at
            .map(|at| SystemTime::now() + at.saturating_duration_since(now)),
    }
}

fn latest(a: Option<Ticket>, b: Ticket) -> Option<Ticket> {
    Some(match a {
        Some(a) => a.max(b),
        None => b,
    })
}

impl LocalRouter {
    pub fn with_store(
        limits: RouterLimits,
        metrics: Arc<Metrics>,
        store: Arc<Store>,
    ) -> LocalRouter {
        LocalRouter {
            store: Some(store),
            ..LocalRouter::new(limits, metrics)
        }
    }

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
                owned: HashMap::new(),
                next_session_id: 1,
                scratch: Vec::new(),
            }),
            limits,
            budget,
            metrics,
            generations: AtomicU64::new(1),
            store: None,
        }
    }

    fn persistent(&self, e: &ClientEntry) -> Option<&Store> {
        self.store.as_deref().filter(|_| e.session_expiry != 0)
    }

    /// Writes the session record (subscriptions, will, expiry) if the session is persistent.
    fn persist_session(&self, e: &ClientEntry) -> Option<Ticket> {
        let store = self.persistent(e)?;
        let mut subs: Vec<store::StoredSubscription> = e
            .subscriptions
            .iter()
            .map(|(filter, sub)| store::StoredSubscription {
                filter: filter.clone(),
                options: sub.options,
                id: sub.id,
            })
            .collect();
        // Stable order keeps records comparable and restores deterministic.
        subs.sort_by(|a, b| a.filter.cmp(&b.filter));
        let will = e.will.as_ref().map(|w| store::StoredWill {
            delay: w.properties.will_delay_interval.unwrap_or(0),
            will: Will::clone(w),
        });
        Some(store.submit(Op::PutSession {
            client_id: e.key.clone(),
            record: store::session_record(
                e.session_expiry,
                e.offline_since,
                &subs,
                will.as_ref(),
                e.owner.as_deref(),
            ),
        }))
    }

    /// Queues a delivery for a session, storing it first if the session is persistent and
    /// the delivery needs acknowledging. Returns the store ticket to wait for, if any.
    fn enqueue(
        &self,
        e: &ClientEntry,
        mut d: Delivery,
        record: &mut LazyRecord<'_>,
        now: Instant,
    ) -> (bool, Option<Ticket>) {
        let mut ticket = None;
        if d.qos != QoS::AtMostOnce
            && let Some(store) = self.persistent(e)
        {
            d.tag = store.next_seq();
            let rec = store::delivery_record(
                d.qos,
                d.retain,
                &d.subscription_ids,
                d.shared.as_deref(),
                record.get(now),
            );
            ticket = Some(store.submit(Op::Enqueue {
                client_id: e.key.clone(),
                seq: d.tag,
                record: rec,
            }));
        }
        let (accepted, evicted) = e.outbox.push_evicting(d, &self.limits, &self.metrics);
        if evicted != 0
            && let Some(store) = &self.store
        {
            store.submit(Op::Ack {
                client_id: e.key.clone(),
                seq: evicted,
            });
        }
        (accepted, ticket)
    }

    /// Puts sessions and retained messages from the store back, as if every session had just
    /// disconnected (one that was connected when the broker stopped counts as disconnected
    /// now, and its will is due). Call once, before accepting connections.
    pub fn restore(&self, loaded: store::Loaded, now: Instant) -> Vec<RestoredTimers> {
        let now_wall = SystemTime::now();
        let instant_of = |at: Option<SystemTime>| {
            at.map(|at| match at.duration_since(now_wall) {
                Ok(ahead) => now + ahead,
                Err(_) => now,
            })
        };
        let message_of = |m: store::StoredMessage| Message {
            expires_at: instant_of(m.expires_at),
            topic: m.topic,
            payload: m.payload,
            qos: m.qos,
            retain: m.retain,
            properties: m.properties,
            origin: 0,
        };
        let mut timers = Vec::new();
        let mut due_wills = Vec::new();
        let mut t = self.tables.lock();
        for m in loaded.retained {
            let m = message_of(m);
            if !m.is_expired(now) {
                t.retained.insert(m.topic.clone(), Arc::new(m));
            }
        }
        for s in loaded.sessions {
            let offline_for = s
                .disconnected_at
                .and_then(|at| now_wall.duration_since(at).ok())
                .unwrap_or_default();
            let remaining = if s.session_expiry == u32::MAX {
                None
            } else {
                Some(u64::from(s.session_expiry).saturating_sub(offline_for.as_secs()))
            };
            if remaining == Some(0) {
                // Expired while the broker was down: it ends now, with its will.
                if let Some(store) = &self.store {
                    store.submit(Op::DeleteSession {
                        client_id: Arc::from(s.client_id.as_str()),
                    });
                }
                if let Some(w) = s.will {
                    due_wills.push(w.will);
                }
                continue;
            }
            let sid = t.next_session_id;
            t.next_session_id += 1;
            let generation = self.generations.fetch_add(1, Ordering::Relaxed);
            let outbox = Arc::new(Outbox::new(self.budget.clone()));
            for d in s.deliveries {
                outbox.push(
                    Delivery {
                        message: Arc::new(message_of(d.message)),
                        qos: d.qos,
                        retain: d.retain,
                        subscription_ids: d.subscription_ids,
                        shared: d.shared.map(Arc::from),
                        tag: d.seq,
                    },
                    &self.limits,
                    &self.metrics,
                );
            }
            let mut subscriptions = HashMap::new();
            for sub in s.subscriptions {
                let v = Subscription {
                    options: sub.options,
                    id: sub.id,
                };
                Self::add_subscription(&mut t, sid, &sub.filter, v);
                subscriptions.insert(sub.filter, v);
            }
            let mut entry_timers = DetachTimers::default();
            let mut will = None;
            if let Some(w) = s.will {
                // A will that was pending (or whose connection died with the broker) is due
                // after what is left of its delay, never after the session ends.
                let left = u64::from(w.delay).saturating_sub(offline_for.as_secs());
                let left = remaining.map_or(left, |r| left.min(r));
                if left == 0 {
                    due_wills.push(w.will);
                } else {
                    entry_timers.will_after = Some(Duration::from_secs(left));
                    will = Some(Box::new(w.will));
                }
            }
            entry_timers.expire_after = remaining.map(Duration::from_secs);
            if let Some(o) = &s.owner {
                *t.owned.entry(Arc::from(o.as_str())).or_insert(0) += 1;
            }
            t.by_client_id.insert(s.client_id.clone(), sid);
            t.sessions.insert(
                sid,
                Box::new(ClientEntry {
                    key: Arc::from(s.client_id.as_str()),
                    client_id: s.client_id.clone(),
                    session_expiry: s.session_expiry,
                    offline_since: s.disconnected_at.or(Some(now_wall)),
                    owner: s.owner.as_deref().map(Arc::from),
                    session_id: sid,
                    generation,
                    outbox,
                    online: None,
                    subscriptions,
                    offline_state: None,
                    will,
                    takeover_waiters: Vec::new(),
                }),
            );
            let entry = t.sessions.get(&sid).expect("just inserted");
            self.persist_session(entry);
            timers.push(RestoredTimers {
                client_id: s.client_id,
                generation,
                timers: entry_timers,
            });
        }
        drop(t);
        for will in due_wills {
            self.publish(will_message(will, 0, now), now);
        }
        timers
    }

    pub fn retained_count(&self) -> usize {
        self.tables.lock().retained.len()
    }

    /// Gauges for metrics scrapes and exports: O(sessions + retained) under the table lock,
    /// which is fine a few times a minute and is why nothing on a message path calls it.
    pub fn stats(&self) -> crate::metrics::StoreStats {
        let t = self.tables.lock();
        let mut s = crate::metrics::StoreStats {
            sessions: t.sessions.len(),
            retained_messages: t.retained.len(),
            retained_bytes: t.retained.values().map(|m| m.payload.len()).sum(),
            queued_bytes: self.budget.used(),
            ..Default::default()
        };
        for e in t.sessions.values() {
            s.subscriptions += e.subscriptions.len();
            if let Some(w) = &e.will {
                s.will_messages += 1;
                s.will_bytes += w.payload.len();
            }
        }
        s
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

    /// Event Grid multi-session rules (scenarios 54, 55): a client id owned by one identity
    /// cannot be used by another, and an identity holds at most `max_sessions` sessions —
    /// online or offline-but-unexpired. Resuming or taking over one of its own sessions is
    /// always allowed.
    fn check_owner(t: &Tables, req: &ConnectRequest) -> Option<ConnectOutcome> {
        let existing = t
            .by_client_id
            .get(&req.client_id)
            .and_then(|sid| t.sessions.get(sid));
        let requester = req.owner.as_ref();
        match (existing.and_then(|e| e.owner.as_ref()), requester) {
            (Some(holder), Some(r)) if **holder != *r.identity => {
                return Some(ConnectOutcome::Refused(
                    ReasonCode::NOT_AUTHORIZED,
                    "the client identifier belongs to another identity".to_string(),
                ));
            }
            (Some(_), None) => {
                return Some(ConnectOutcome::Refused(
                    ReasonCode::NOT_AUTHORIZED,
                    "the client identifier belongs to an identity".to_string(),
                ));
            }
            _ => {}
        }
        let r = requester?;
        let reuses_own = existing.is_some_and(|e| e.owner.is_some());
        let held = t.owned.get(&r.identity).copied().unwrap_or(0);
        // Scenario 54 answers with 0x87, as Event Grid does, rather than 0x97.
        (!reuses_own && held >= r.max_sessions).then(|| {
            ConnectOutcome::Refused(
                ReasonCode::NOT_AUTHORIZED,
                format!("this identity already holds {held} session(s), the maximum it may have"),
            )
        })
    }

    /// Removes a session from the tables and from the store.
    fn end_session(&self, t: &mut Tables, session_id: u64) -> Option<Box<ClientEntry>> {
        let entry = Self::remove_session(t, session_id)?;
        if let Some(store) = self.persistent(&entry) {
            store.submit(Op::DeleteSession {
                client_id: entry.key.clone(),
            });
        }
        Some(entry)
    }

    fn remove_session(t: &mut Tables, session_id: u64) -> Option<Box<ClientEntry>> {
        let entry = t.sessions.remove(&session_id)?;
        if let Some(owner) = &entry.owner
            && let Some(n) = t.owned.get_mut(owner)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.owned.remove(owner);
            }
        }
        t.by_client_id.remove(&entry.client_id);
        for filter in entry.subscriptions.keys() {
            Self::remove_subscription(t, session_id, filter);
        }
        Some(entry)
    }

    /// Enters a subscription in the trie or its shared group; true if it is shared.
    fn add_subscription(t: &mut Tables, session_id: u64, filter: &str, sub: Subscription) -> bool {
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
                            name: Arc::from(filter),
                            members: vec![(session_id, sub)],
                            next: std::cell::Cell::new(0),
                        },
                    );
                }
                true
            }
            _ => {
                t.subs.insert(filter, session_id, sub);
                false
            }
        }
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
    fn redistribute(&self, t: &mut Tables, leaving: u64, d: Delivery, now: Instant) -> bool {
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
                // The leaving member's stored copy goes; the new member stores its own.
                if d.tag != 0
                    && let (Some(store), Some(old)) = (&self.store, t.sessions.get(&leaving))
                {
                    store.submit(Op::Ack {
                        client_id: old.key.clone(),
                        seq: d.tag,
                    });
                }
                let message = d.message.clone();
                // Sent in response to this member's subscription: its QoS and identifier.
                let d = Delivery {
                    qos: sub.options.qos.min(d.message.qos),
                    retain: false,
                    subscription_ids: sub.id.into_iter().collect(),
                    tag: 0,
                    ..d
                };
                let mut record = LazyRecord {
                    message: &message,
                    record: None,
                };
                return self.enqueue(e, d, &mut record, now).0;
            }
        }
        false
    }
}

impl Router for LocalRouter {
    fn connect(&self, req: ConnectRequest, force: bool, now: Instant) -> ConnectOutcome {
        let mut t = self.tables.lock();
        if let Some(refusal) = Self::check_owner(&t, &req) {
            return refusal;
        }
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
                tracing::info!(client_id = %req.client_id, cause = "takeover: the previous connection did not close in time", "detaching the previous connection by force");
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
                if let Some(old) = self.end_session(&mut t, sid) {
                    // [MQTT-3.1.3-9]: a pending will delay is over when the session ends.
                    if let Some(will) = old.will {
                        drop(t);
                        self.publish(will_message(*will, sid, now), now);
                        t = self.tables.lock();
                    }
                }
            } else {
                let entry = t.sessions.get_mut(&sid).expect("present");
                entry.generation = generation;
                entry.online = Some(req.control.clone());
                // A will pending from the previous connection is cancelled by reconnecting
                // ([MQTT-3.1.3-9]); the new connection's will replaces it.
                entry.will = req.will.map(Box::new);
                entry.outbox.set_control(Some(req.control));
                entry.offline_since = None;
                if entry.owner.is_none()
                    && let Some(o) = &req.owner
                {
                    entry.owner = Some(o.identity.clone());
                    *t.owned.entry(o.identity.clone()).or_insert(0) += 1;
                }
                let entry = t.sessions.get_mut(&sid).expect("present");
                let was_persistent = entry.session_expiry != 0;
                entry.session_expiry = req.session_expiry;
                if entry.session_expiry != 0 {
                    self.persist_session(entry);
                } else if was_persistent && let Some(store) = &self.store {
                    // Resumed without expiry: it ends with this connection, so the stored
                    // copy goes now ([MQTT-3.1.2-23] only keeps sessions with an interval).
                    store.submit(Op::DeleteSession {
                        client_id: entry.key.clone(),
                    });
                }
                let restored = entry.offline_state.take();
                let outbox = entry.outbox.clone();
                drop(t);
                if let Some(will) = forced_will {
                    self.publish(will_message(*will, sid, now), now);
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
        let owner = req.owner.as_ref().map(|o| o.identity.clone());
        if let Some(o) = &owner {
            *t.owned.entry(o.clone()).or_insert(0) += 1;
        }
        let outbox = Arc::new(Outbox::new(self.budget.clone()));
        outbox.set_control(Some(req.control.clone()));
        t.by_client_id.insert(req.client_id.clone(), sid);
        t.sessions.insert(
            sid,
            Box::new(ClientEntry {
                key: Arc::from(req.client_id.as_str()),
                client_id: req.client_id,
                session_expiry: req.session_expiry,
                offline_since: None,
                owner,
                session_id: sid,
                generation,
                outbox: outbox.clone(),
                online: Some(req.control),
                subscriptions: HashMap::new(),
                offline_state: None,
                will: req.will.map(Box::new),
                takeover_waiters: Vec::new(),
            }),
        );
        self.persist_session(t.sessions.get(&sid).expect("just inserted"));
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
        let mut kept_inflight = InflightQueue::default();
        for (pid, f) in inflight {
            if f.delivery.shared.is_some() && f.stage == InflightStage::AwaitPubAck {
                if !self.redistribute(&mut t, session_id, f.delivery.clone(), now) {
                    kept_inflight.push_back(pid, f);
                }
            } else {
                kept_inflight.push_back(pid, f);
            }
        }
        for q in queued {
            if q.shared.is_some() && self.redistribute(&mut t, session_id, q.clone(), now) {
                continue;
            }
            keep.push_back(q);
        }
        d.state.inflight = kept_inflight;

        let mut timers = DetachTimers::default();
        let mut immediate_will = None;
        if d.session_expiry == 0 {
            self.end_session(&mut t, session_id);
            immediate_will = will;
        } else {
            let entry = t.sessions.get_mut(&sid).expect("present");
            entry.session_expiry = d.session_expiry;
            entry.offline_since = Some(SystemTime::now());
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
            self.persist_session(entry);
        }
        drop(t);
        if let Some(will) = immediate_will {
            self.publish(will_message(*will, session_id, now), now);
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
        if let Some(e) = t.sessions.get(&sid) {
            self.persist_session(e);
        }
        drop(t);
        self.publish(will_message(*will, sid, now), now);
    }

    fn expire_session(&self, client_id: &str, generation: u64, now: Instant) {
        let mut t = self.tables.lock();
        let Some(sid) = Self::offline_session(&t, client_id, generation) else {
            return;
        };
        let removed = self.end_session(&mut t, sid);
        drop(t);
        // A will still waiting for its delay goes out when the session ends.
        if let Some(will) = removed.and_then(|e| e.will) {
            self.publish(will_message(*will, sid, now), now);
        }
    }

    fn publish(&self, message: Message, now: Instant) -> PublishOutcome {
        // publishes_received is counted by the connection: wills come through here too, and
        // no client sent them.
        let m = &self.metrics;
        if message.is_expired(now) {
            return PublishOutcome {
                code: ReasonCode::SUCCESS,
                matched: 0,
                durable: None,
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
                durable: None,
            };
        }
        let message = Arc::new(message);
        let mut record = LazyRecord {
            message: &message,
            record: None,
        };
        let mut durable: Option<Ticket> = None;
        let mut t = self.tables.lock();
        if message.retain {
            if message.payload.is_empty() {
                // [MQTT-3.3.1-6]: an empty retained message clears the topic.
                if t.retained.remove(&message.topic).is_some()
                    && let Some(store) = &self.store
                {
                    let ticket = store.submit(Op::DeleteRetained {
                        topic: message.topic.clone(),
                    });
                    durable = latest(durable, ticket);
                }
            } else {
                if let Some(store) = &self.store {
                    let ticket = store.submit(Op::PutRetained {
                        topic: message.topic.clone(),
                        record: record.get(now).clone(),
                    });
                    durable = latest(durable, ticket);
                }
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
                if let (_, Some(ticket)) = self.enqueue(entry, d, &mut record, now) {
                    durable = latest(durable, ticket);
                }
            }
        }
        t.scratch = scratch;

        // Shared subscriptions: each matching group gets one copy, for its next member in
        // round robin, preferring members that are online ([MQTT-4.8.2-?]).
        let sessions = &t.sessions;
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
                if let (_, Some(ticket)) = self.enqueue(entry, d, &mut record, now) {
                    durable = latest(durable.take(), ticket);
                }
            }
        });
        let waits = self.store.as_ref().is_some_and(|s| s.acks_wait());
        PublishOutcome {
            code: ReasonCode::SUCCESS,
            matched,
            durable: durable.filter(|_| waits),
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
        if !t.sessions.contains_key(&session_id) {
            return vec![ReasonCode::UNSPECIFIED_ERROR; filters.len()];
        }
        let mut retained_for = Vec::new();
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
            let shared = Self::add_subscription(t, session_id, filter, sub);
            // [MQTT-3.8.4-?]: retained messages are not sent to shared subscriptions.
            let send_retained = !shared
                && match options.retain_handling {
                    0 => true,
                    1 => !existed,
                    _ => false,
                };
            if send_retained {
                retained_for.push((filter, *options));
            }
            codes.push(ReasonCode(options.qos as u8));
        }
        let entry = t.sessions.get(&session_id).expect("checked above");
        for (filter, options) in retained_for {
            for msg in t.retained.values() {
                if msg.is_expired(now) || !topic::matches(filter, &msg.topic) {
                    continue;
                }
                // [MQTT-3.3.1-9]: retained-on-subscribe carries RETAIN = 1.
                let d = Delivery {
                    message: msg.clone(),
                    qos: options.qos.min(msg.qos),
                    retain: true,
                    subscription_ids: subscription_id.into_iter().collect(),
                    shared: None,
                    tag: 0,
                };
                let mut record = LazyRecord {
                    message: msg,
                    record: None,
                };
                self.enqueue(entry, d, &mut record, now);
            }
        }
        self.persist_session(entry);
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
        if let Some(entry) = t.sessions.get(&session_id) {
            self.persist_session(entry);
        }
        codes
    }

    fn subscriptions(&self, session_id: u64) -> Vec<String> {
        self.tables
            .lock()
            .sessions
            .get(&session_id)
            .map(|e| e.subscriptions.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn sync_point(&self) -> Option<Ticket> {
        self.store
            .as_ref()
            .filter(|s| s.acks_wait())
            .map(|s| s.barrier())
    }

    fn acknowledged(&self, client_id: &str, tags: &[u64]) {
        let Some(store) = &self.store else { return };
        let key: Arc<str> = Arc::from(client_id);
        for &seq in tags {
            store.submit(Op::Ack {
                client_id: key.clone(),
                seq,
            });
        }
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
