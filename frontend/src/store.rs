//! The embedded store: persistent sessions, their undelivered QoS 1/2 messages, and retained
//! messages, in a redb database under the data directory.
//!
//! The router describes every change as an [`Op`] and hands it to [`Store::submit`], which
//! numbers it (a *ticket*) and queues it for one writer thread. The writer takes everything
//! queued, applies it in one transaction and commits; while it commits, new operations queue
//! up, so under load one commit (and one fsync) covers many messages — group commit. A
//! publisher's acknowledgement waits for the ticket of the last operation its message caused
//! ([`Ticket::wait`]), so with [`Durability::Immediate`] a PUBACK means "on disk".
//!
//! What is stored and what is not:
//! - a session only while its Session Expiry Interval is non-zero (a "persistent session");
//!   its subscriptions and will travel in its session record;
//! - one delivery record per (session, QoS 1/2 message); the in-flight packet identifier is
//!   not stored, so after a crash an unacknowledged message is sent again under a new
//!   identifier (at least once; a QoS 2 message in flight at the crash may arrive twice);
//! - retained messages;
//! - never QoS 0 deliveries, connections, or anything about non-persistent sessions.
//!
//! Records are versioned binary: messages are stored as encoded MQTT 5 PUBLISH packets (the
//! codec we already trust and fuzz) behind a small header. This module does not decide what
//! to store or when: the router does. It does no routing and knows nothing of connections.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use mqtt::packet::{Packet, Publish};
use mqtt::{Protocol, QoS, SubOptions, Will};
use parking_lot::Mutex;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// client id → session record.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// (client id, delivery sequence) → delivery record. Keyed by client first so that a
/// session's deliveries are one range, in the order they were queued.
const DELIVERIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("deliveries");
/// topic → message record.
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");

const RECORD_VERSION: u8 = 1;
/// Stored PUBLISH packets are decoded with the largest size MQTT allows.
const MAX_RECORD_PACKET: usize = 268_435_460;

/// How durable an acknowledged message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is flushed to disk (fsync) before the publishers it covers are
    /// acknowledged. Survives `kill -9` and power loss.
    Immediate,
    /// Publishers are acknowledged at once; commits reach the disk at most this long later.
    /// A crash (or `kill -9`) can lose the acknowledged messages of the last interval.
    Periodic(Duration),
}

/// One change to the stored state, in the order the router made it.
#[derive(Debug)]
pub enum Op {
    PutSession {
        client_id: Arc<str>,
        record: Bytes,
    },
    /// Removes the session record and every delivery of the session.
    DeleteSession {
        client_id: Arc<str>,
    },
    Enqueue {
        client_id: Arc<str>,
        seq: u64,
        record: Bytes,
    },
    /// The delivery is finished with (acknowledged, expired, dropped or moved).
    Ack {
        client_id: Arc<str>,
        seq: u64,
    },
    PutRetained {
        topic: String,
        record: Bytes,
    },
    DeleteRetained {
        topic: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("store {path}: record {what} is unreadable: {reason}")]
    Corrupt {
        path: PathBuf,
        what: String,
        reason: String,
    },
}

/// How far the writer got.
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    /// Every ticket up to and including this one is committed.
    committed: u64,
    /// A commit failed: nothing after `committed` will ever be.
    failed: bool,
}

type OpSender = mpsc::Sender<(u64, Op)>;

/// The handle the router holds.
pub struct Store {
    /// Tickets are numbered under this lock so that channel order equals ticket order; the
    /// writer may then publish "committed up to N" without gaps.
    sender: Mutex<(u64, Option<OpSender>)>,
    progress: watch::Receiver<Progress>,
    next_seq: std::sync::atomic::AtomicU64,
    durability: Durability,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A publisher's acknowledgement waits for this.
#[derive(Clone, Debug)]
pub struct Ticket {
    n: u64,
    progress: watch::Receiver<Progress>,
}

#[derive(Debug, thiserror::Error)]
#[error("the store could not write this message")]
pub struct StoreFailed;

impl Ticket {
    pub fn is_done(&self) -> bool {
        self.progress.borrow().committed >= self.n
    }

    /// Resolves once the operations up to this ticket are committed.
    pub async fn wait(mut self) -> Result<(), StoreFailed> {
        let n = self.n;
        match self
            .progress
            .wait_for(|p| p.committed >= n || p.failed)
            .await
        {
            Ok(p) if p.committed >= n => Ok(()),
            _ => Err(StoreFailed),
        }
    }

    /// The later of two tickets (each ticket implies every earlier one).
    pub fn max(self, other: Ticket) -> Ticket {
        if other.n > self.n { other } else { self }
    }
}

/// What the store held at startup.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sessions: Vec<StoredSession>,
    pub retained: Vec<StoredMessage>,
}

#[derive(Debug)]
pub struct StoredSession {
    pub client_id: String,
    pub session_expiry: u32,
    /// When the client disconnected; `None` if it was connected when the broker stopped.
    pub disconnected_at: Option<SystemTime>,
    pub subscriptions: Vec<StoredSubscription>,
    pub will: Option<StoredWill>,
    /// The identity owning the session (Event Grid multi-session), if any.
    pub owner: Option<String>,
    /// In the order they were queued.
    pub deliveries: Vec<StoredDelivery>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub filter: String,
    pub options: SubOptions,
    pub id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWill {
    pub will: Will,
    pub delay: u32,
}

/// A message as stored: the fields of `mqtt::session::Message` that survive a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: mqtt::Properties,
    pub expires_at: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    pub seq: u64,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub shared: Option<String>,
    pub message: StoredMessage,
}

impl Store {
    /// Opens (or creates) `<dir>/store.redb`, reads everything in it, and starts the writer.
    pub fn open(dir: &Path, durability: Durability) -> Result<(Store, Loaded), StoreError> {
        let path = dir.join("store.redb");
        let open_err = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        let db = redb::Database::create(&path).map_err(|e| open_err(e.to_string()))?;
        // Create the tables so that reading an empty store needs no special case.
        {
            let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
            txn.open_table(SESSIONS)
                .map_err(|e| open_err(e.to_string()))?;
            txn.open_table(DELIVERIES)
                .map_err(|e| open_err(e.to_string()))?;
            txn.open_table(RETAINED)
                .map_err(|e| open_err(e.to_string()))?;
            txn.commit().map_err(|e| open_err(e.to_string()))?;
        }
        let (loaded, max_seq) = load(&db, &path)?;
        info!(
            path = %path.display(),
            sessions = loaded.sessions.len(),
            retained = loaded.retained.len(),
            "store opened"
        );
        let (tx, rx) = mpsc::channel();
        let (progress_tx, progress_rx) = watch::channel(Progress::default());
        let writer = std::thread::Builder::new()
            .name("gatehouse-store".into())
            .spawn(move || write_loop(db, rx, progress_tx, durability))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?;
        Ok((
            Store {
                sender: Mutex::new((0, Some(tx))),
                progress: progress_rx,
                next_seq: std::sync::atomic::AtomicU64::new(max_seq + 1),
                durability,
                writer: Mutex::new(Some(writer)),
            },
            loaded,
        ))
    }

    /// A fresh delivery sequence number (the delivery's tag in the session).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues one change. The ticket says when it is committed.
    pub fn submit(&self, op: Op) -> Ticket {
        let mut s = self.sender.lock();
        s.0 += 1;
        let n = s.0;
        if let Some(tx) = &s.1 {
            // A send fails only after `close`; then nothing more is stored.
            let _ = tx.send((n, op));
        }
        Ticket {
            n,
            progress: self.progress.clone(),
        }
    }

    /// A ticket covering everything submitted so far.
    pub fn barrier(&self) -> Ticket {
        Ticket {
            n: self.sender.lock().0,
            progress: self.progress.clone(),
        }
    }

    /// Whether acknowledgements should wait for tickets at all.
    pub fn acks_wait(&self) -> bool {
        self.durability == Durability::Immediate
    }

    /// Commits what is queued, flushes it to disk and stops the writer. Later submits are
    /// dropped. Blocking: call it off the async runtime or at the very end.
    pub fn close(&self) {
        self.sender.lock().1 = None;
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(
    db: redb::Database,
    rx: mpsc::Receiver<(u64, Op)>,
    progress: watch::Sender<Progress>,
    durability: Durability,
) {
    let mut last_durable = std::time::Instant::now();
    let mut dirty = false;
    let mut last_ticket = 0u64;
    loop {
        let first = match durability {
            Durability::Immediate => rx.recv().ok(),
            Durability::Periodic(every) => {
                let wait = if dirty {
                    every.saturating_sub(last_durable.elapsed())
                } else {
                    Duration::from_secs(3600)
                };
                match rx.recv_timeout(wait) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // Nothing new; make what was committed lazily durable.
                        if dirty && commit(&db, Vec::new(), redb::Durability::Immediate).is_ok() {
                            dirty = false;
                            last_durable = std::time::Instant::now();
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                }
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < 8192 {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let ticket = batch.last().map_or(last_ticket, |(n, _)| *n);
        let level = match durability {
            Durability::Immediate => redb::Durability::Immediate,
            Durability::Periodic(every) => {
                if last_durable.elapsed() >= every {
                    redb::Durability::Immediate
                } else {
                    redb::Durability::None
                }
            }
        };
        match commit(&db, batch, level) {
            Ok(()) => {
                last_ticket = ticket;
                if matches!(level, redb::Durability::Immediate) {
                    last_durable = std::time::Instant::now();
                    dirty = false;
                } else {
                    dirty = true;
                }
                progress.send_modify(|p| p.committed = ticket);
            }
            Err(e) => {
                // Disk full, I/O error: the broker keeps routing, but nothing is durable any
                // more and publishers waiting for it are told so.
                error!(error = %e, "store commit failed; persistence is off until restart");
                progress.send_modify(|p| p.failed = true);
                // Keep draining so that senders never block on a dead writer.
                while rx.recv().is_ok() {}
                return;
            }
        }
    }
    // Shutdown: whatever was committed lazily becomes durable.
    if dirty && let Err(e) = commit(&db, Vec::new(), redb::Durability::Immediate) {
        warn!(error = %e, "final store flush failed");
    }
}

fn commit(
    db: &redb::Database,
    batch: Vec<(u64, Op)>,
    level: redb::Durability,
) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(level)
        .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
    {
        let mut sessions = txn.open_table(SESSIONS)?;
        let mut deliveries = txn.open_table(DELIVERIES)?;
        let mut retained = txn.open_table(RETAINED)?;
        for (_, op) in batch {
            match op {
                Op::PutSession { client_id, record } => {
                    sessions.insert(&*client_id, &*record)?;
                }
                Op::DeleteSession { client_id } => {
                    sessions.remove(&*client_id)?;
                    let id: &str = &client_id;
                    deliveries.retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
                }
                Op::Enqueue {
                    client_id,
                    seq,
                    record,
                } => {
                    deliveries.insert((&*client_id, seq), &*record)?;
                }
                Op::Ack { client_id, seq } => {
                    deliveries.remove((&*client_id, seq))?;
                }
                Op::PutRetained { topic, record } => {
                    retained.insert(topic.as_str(), &*record)?;
                }
                Op::DeleteRetained { topic } => {
                    retained.remove(topic.as_str())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

fn load(db: &redb::Database, path: &Path) -> Result<(Loaded, u64), StoreError> {
    let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let corrupt = |what: String, reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        what,
        reason,
    };
    let txn = db.begin_read().map_err(|e| open_err(&e))?;
    let mut sessions: BTreeMap<String, StoredSession> = BTreeMap::new();
    for row in txn
        .open_table(SESSIONS)
        .map_err(|e| open_err(&e))?
        .iter()
        .map_err(|e| open_err(&e))?
    {
        let (k, v) = row.map_err(|e| open_err(&e))?;
        let client_id = k.value().to_string();
        let session = decode_session(&client_id, v.value())
            .map_err(|e| corrupt(format!("session {client_id:?}"), e))?;
        sessions.insert(client_id, session);
    }
    let mut max_seq = 0;
    let mut orphans = 0usize;
    for row in txn
        .open_table(DELIVERIES)
        .map_err(|e| open_err(&e))?
        .iter()
        .map_err(|e| open_err(&e))?
    {
        let (k, v) = row.map_err(|e| open_err(&e))?;
        let (client_id, seq) = k.value();
        max_seq = max_seq.max(seq);
        let Some(session) = sessions.get_mut(client_id) else {
            // Only possible if a delete of the session was interrupted; harmless.
            orphans += 1;
            continue;
        };
        let d = decode_delivery(seq, v.value())
            .map_err(|e| corrupt(format!("delivery {client_id:?}/{seq}"), e))?;
        session.deliveries.push(d);
    }
    if orphans > 0 {
        warn!(
            orphans,
            "store holds deliveries of unknown sessions; ignoring them"
        );
    }
    let mut retained = Vec::new();
    for row in txn
        .open_table(RETAINED)
        .map_err(|e| open_err(&e))?
        .iter()
        .map_err(|e| open_err(&e))?
    {
        let (k, v) = row.map_err(|e| open_err(&e))?;
        let m = decode_retained(v.value())
            .map_err(|e| corrupt(format!("retained {:?}", k.value()), e))?;
        retained.push(m);
    }
    Ok((
        Loaded {
            sessions: sessions.into_values().collect(),
            retained,
        },
        max_seq,
    ))
}

// ---------------------------------------------------------------------------- records

fn millis(t: Option<SystemTime>) -> u64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis().max(1) as u64)
}

fn from_millis(ms: u64) -> Option<SystemTime> {
    (ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

fn need(buf: &[u8], n: usize) -> Result<(), String> {
    if buf.len() < n {
        Err(format!("truncated: needed {n} bytes, had {}", buf.len()))
    } else {
        Ok(())
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
}

fn get_str(buf: &mut &[u8]) -> Result<String, String> {
    need(buf, 4)?;
    let n = buf.get_u32() as usize;
    need(buf, n)?;
    let s = std::str::from_utf8(&buf[..n])
        .map_err(|e| e.to_string())?
        .to_string();
    buf.advance(n);
    Ok(s)
}

fn options_byte(o: &SubOptions) -> u8 {
    o.qos as u8
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling & 3) << 4)
}

fn options_from(b: u8) -> Result<SubOptions, String> {
    Ok(SubOptions {
        qos: QoS::from_u8(b & 3).ok_or("bad QoS")?,
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: (b >> 4) & 3,
    })
}

/// `[flags][expires_at ms][len][PUBLISH v5 bytes]`.
pub fn encode_message(m: &StoredMessage, out: &mut BytesMut) {
    out.put_u64(millis(m.expires_at));
    let mut packet = BytesMut::new();
    let publish = Publish {
        dup: false,
        qos: m.qos,
        retain: m.retain,
        topic: m.topic.clone(),
        packet_id: if m.qos == QoS::AtMostOnce { 0 } else { 1 },
        payload: m.payload.clone(),
        properties: m.properties.clone(),
    };
    mqtt::codec::encode(&Packet::Publish(publish), Protocol::V5, &mut packet);
    out.put_u32(packet.len() as u32);
    out.put_slice(&packet);
}

fn decode_message(buf: &mut &[u8]) -> Result<StoredMessage, String> {
    need(buf, 12)?;
    let expires_at = from_millis(buf.get_u64());
    let n = buf.get_u32() as usize;
    need(buf, n)?;
    let mut packet = BytesMut::from(&buf[..n]);
    buf.advance(n);
    match mqtt::codec::decode(&mut packet, Protocol::V5, MAX_RECORD_PACKET) {
        Ok(Some(Packet::Publish(p))) => Ok(StoredMessage {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            expires_at,
        }),
        Ok(other) => Err(format!("not a PUBLISH: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

pub fn message_record(m: &StoredMessage) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(RECORD_VERSION);
    encode_message(m, &mut out);
    out.freeze()
}

fn decode_retained(buf: &[u8]) -> Result<StoredMessage, String> {
    let mut buf = buf;
    need(buf, 1)?;
    if buf.get_u8() != RECORD_VERSION {
        return Err("unknown record version".into());
    }
    decode_message(&mut buf)
}

/// A delivery record: the per-subscriber fields, then the message. `message` is a message
/// record from [`message_record`], shared by every delivery of one PUBLISH.
pub fn delivery_record(
    qos: QoS,
    retain: bool,
    subscription_ids: &[u32],
    shared: Option<&str>,
    message: &Bytes,
) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + message.len());
    out.put_u8(RECORD_VERSION);
    out.put_u8(qos as u8 | (u8::from(retain) << 2));
    out.put_u16(subscription_ids.len() as u16);
    for id in subscription_ids {
        out.put_u32(*id);
    }
    put_str(&mut out, shared.unwrap_or(""));
    out.put_slice(message);
    out.freeze()
}

fn decode_delivery(seq: u64, buf: &[u8]) -> Result<StoredDelivery, String> {
    let mut buf = buf;
    need(buf, 4)?;
    if buf.get_u8() != RECORD_VERSION {
        return Err("unknown record version".into());
    }
    let flags = buf.get_u8();
    let n = buf.get_u16() as usize;
    need(buf, n * 4)?;
    let subscription_ids = (0..n).map(|_| buf.get_u32()).collect();
    let shared = get_str(&mut buf)?;
    let message = decode_retained(buf)?;
    Ok(StoredDelivery {
        seq,
        qos: QoS::from_u8(flags & 3).ok_or("bad QoS")?,
        retain: flags & 4 != 0,
        subscription_ids,
        shared: (!shared.is_empty()).then_some(shared),
        message,
    })
}

/// A session record: expiry, disconnect time, subscriptions, will, owner. The owner came
/// after the first records were written, so it is optional at the end.
pub fn session_record(
    session_expiry: u32,
    disconnected_at: Option<SystemTime>,
    subscriptions: &[StoredSubscription],
    will: Option<&StoredWill>,
    owner: Option<&str>,
) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(RECORD_VERSION);
    out.put_u32(session_expiry);
    out.put_u64(millis(disconnected_at));
    out.put_u32(subscriptions.len() as u32);
    for s in subscriptions {
        put_str(&mut out, &s.filter);
        out.put_u8(options_byte(&s.options));
        out.put_u32(s.id.unwrap_or(0));
    }
    match will {
        None => out.put_u8(0),
        Some(w) => {
            out.put_u8(1);
            out.put_u32(w.delay);
            let mut properties = w.will.properties.clone();
            // Not a PUBLISH property; it travels in `delay`.
            properties.will_delay_interval = None;
            encode_message(
                &StoredMessage {
                    topic: w.will.topic.clone(),
                    payload: w.will.payload.clone(),
                    qos: w.will.qos,
                    retain: w.will.retain,
                    properties,
                    expires_at: None,
                },
                &mut out,
            );
        }
    }
    if let Some(owner) = owner {
        put_str(&mut out, owner);
    }
    out.freeze()
}

fn decode_session(client_id: &str, buf: &[u8]) -> Result<StoredSession, String> {
    let mut buf = buf;
    need(buf, 17)?;
    if buf.get_u8() != RECORD_VERSION {
        return Err("unknown record version".into());
    }
    let session_expiry = buf.get_u32();
    let disconnected_at = from_millis(buf.get_u64());
    let n = buf.get_u32() as usize;
    let mut subscriptions = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let filter = get_str(&mut buf)?;
        need(buf, 5)?;
        let options = options_from(buf.get_u8())?;
        let id = buf.get_u32();
        subscriptions.push(StoredSubscription {
            filter,
            options,
            id: (id != 0).then_some(id),
        });
    }
    need(buf, 1)?;
    let will = match buf.get_u8() {
        0 => None,
        _ => {
            need(buf, 4)?;
            let delay = buf.get_u32();
            let m = decode_message(&mut buf)?;
            let mut properties = m.properties;
            properties.will_delay_interval = (delay != 0).then_some(delay);
            Some(StoredWill {
                will: Will {
                    topic: m.topic,
                    payload: m.payload,
                    qos: m.qos,
                    retain: m.retain,
                    properties,
                },
                delay,
            })
        }
    };
    let owner = if buf.is_empty() {
        None
    } else {
        Some(get_str(&mut buf)?)
    };
    Ok(StoredSession {
        client_id: client_id.to_string(),
        session_expiry,
        disconnected_at,
        subscriptions,
        will,
        owner,
        deliveries: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &'static [u8], qos: QoS) -> StoredMessage {
        let properties = mqtt::Properties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".to_string(), "v".to_string())],
            ..Default::default()
        };
        StoredMessage {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos,
            retain: false,
            properties,
            expires_at: Some(UNIX_EPOCH + Duration::from_millis(1_900_000_000_123)),
        }
    }

    fn store(dir: &Path) -> (Store, Loaded) {
        Store::open(dir, Durability::Immediate).expect("open")
    }

    async fn settle(t: Ticket) {
        t.wait().await.expect("committed");
    }

    #[test]
    fn records_round_trip() {
        let m = msg("a/b", b"hello", QoS::ExactlyOnce);
        let rec = message_record(&m);
        let d = delivery_record(QoS::AtLeastOnce, true, &[3, 7], Some("$share/g/a/#"), &rec);
        let back = decode_delivery(42, &d).unwrap();
        assert_eq!(back.seq, 42);
        assert_eq!(back.qos, QoS::AtLeastOnce);
        assert!(back.retain);
        assert_eq!(back.subscription_ids, vec![3, 7]);
        assert_eq!(back.shared.as_deref(), Some("$share/g/a/#"));
        assert_eq!(back.message, m);

        let will_props = mqtt::Properties {
            will_delay_interval: Some(30),
            message_expiry_interval: Some(60),
            ..Default::default()
        };
        let will = StoredWill {
            will: Will {
                topic: "w".into(),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: will_props,
            },
            delay: 30,
        };
        let subs = vec![StoredSubscription {
            filter: "x/+".into(),
            options: SubOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
            id: Some(9),
        }];
        let at = UNIX_EPOCH + Duration::from_millis(1_800_000_000_000);
        let rec = session_record(3600, Some(at), &subs, Some(&will), Some("identity-1"));
        let s = decode_session("c1", &rec).unwrap();
        assert_eq!(s.session_expiry, 3600);
        assert_eq!(s.disconnected_at, Some(at));
        assert_eq!(s.subscriptions, subs);
        assert_eq!(s.will, Some(will));
        assert_eq!(s.owner.as_deref(), Some("identity-1"));
    }

    #[test]
    fn truncated_or_garbage_records_are_errors_not_panics() {
        let rec = message_record(&msg("a", b"x", QoS::AtLeastOnce));
        let d = delivery_record(QoS::AtLeastOnce, false, &[1], None, &rec);
        for cut in 0..d.len() {
            assert!(decode_delivery(1, &d[..cut]).is_err(), "cut at {cut}");
        }
        let s = session_record(1, None, &[], None, None);
        for cut in 0..s.len() {
            assert!(decode_session("c", &s[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_delivery(1, &[9, 9, 9, 9, 9]).is_err());
    }

    #[tokio::test]
    async fn state_survives_reopen_and_deletes_stick() {
        let dir = tempfile::tempdir().unwrap();
        let rec = message_record(&msg("t", b"1", QoS::AtLeastOnce));
        {
            let (s, loaded) = store(dir.path());
            assert!(loaded.sessions.is_empty());
            let c1: Arc<str> = Arc::from("c1");
            let c2: Arc<str> = Arc::from("c2");
            for c in [&c1, &c2] {
                s.submit(Op::PutSession {
                    client_id: c.clone(),
                    record: session_record(60, None, &[], None, None),
                });
            }
            let mut seqs = Vec::new();
            for _ in 0..3 {
                let seq = s.next_seq();
                seqs.push(seq);
                s.submit(Op::Enqueue {
                    client_id: c1.clone(),
                    seq,
                    record: delivery_record(QoS::AtLeastOnce, false, &[], None, &rec),
                });
            }
            s.submit(Op::Enqueue {
                client_id: c2.clone(),
                seq: s.next_seq(),
                record: delivery_record(QoS::AtLeastOnce, false, &[], None, &rec),
            });
            s.submit(Op::Ack {
                client_id: c1.clone(),
                seq: seqs[1],
            });
            s.submit(Op::DeleteSession { client_id: c2 });
            s.submit(Op::PutRetained {
                topic: "r".into(),
                record: rec.clone(),
            });
            let t = s.submit(Op::PutRetained {
                topic: "r2".into(),
                record: rec.clone(),
            });
            s.submit(Op::DeleteRetained { topic: "r2".into() });
            settle(t).await;
            s.close();
        }
        let (s, loaded) = store(dir.path());
        assert_eq!(
            loaded.sessions.len(),
            1,
            "c2 was deleted with its deliveries"
        );
        let c1 = &loaded.sessions[0];
        assert_eq!(c1.client_id, "c1");
        let seqs: Vec<u64> = c1.deliveries.iter().map(|d| d.seq).collect();
        assert_eq!(seqs.len(), 2);
        assert!(seqs[0] < seqs[1], "deliveries come back in queue order");
        assert_eq!(loaded.retained.len(), 1);
        assert_eq!(loaded.retained[0].topic, "t");
        assert!(
            s.next_seq() > seqs[1],
            "sequence numbers never go back after a restart"
        );
    }

    #[tokio::test]
    async fn tickets_complete_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = store(dir.path());
        let tickets: Vec<Ticket> = (0..100)
            .map(|i| {
                s.submit(Op::PutRetained {
                    topic: format!("t/{i}"),
                    record: message_record(&msg("t", b"x", QoS::AtMostOnce)),
                })
            })
            .collect();
        let last = tickets.last().unwrap().clone();
        settle(last).await;
        assert!(tickets.iter().all(Ticket::is_done));
    }

    #[tokio::test]
    async fn periodic_durability_acknowledges_without_waiting_and_flushes_on_close() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) =
                Store::open(dir.path(), Durability::Periodic(Duration::from_secs(60))).unwrap();
            assert!(!s.acks_wait());
            let t = s.submit(Op::PutRetained {
                topic: "p".into(),
                record: message_record(&msg("p", b"x", QoS::AtMostOnce)),
            });
            settle(t).await;
            s.close();
        }
        let (_, loaded) = store(dir.path());
        assert_eq!(loaded.retained.len(), 1, "close makes lazy commits durable");
    }

    #[test]
    fn a_second_broker_on_the_same_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_s, _) = store(dir.path());
        let err = Store::open(dir.path(), Durability::Immediate)
            .err()
            .expect("the file is locked");
        assert!(err.to_string().contains("store.redb"), "{err}");
    }
}
