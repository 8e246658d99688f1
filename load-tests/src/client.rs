//! One simulated MQTT client: a single tokio task that connects (with retries), then reads,
//! writes, publishes, pings and re-authenticates from one `select!` loop until it is told to
//! stop, its share of `--limit` is done, or the connection is lost.
//!
//! Design choices, all for keeping the generator cheaper than the broker it measures:
//! - Reading and writing are branches of the same loop, so a client never stops reading while a
//!   write is blocked (a broker flooding us cannot deadlock against our acknowledgements), and
//!   everything queued between two writes leaves in one write call.
//! - The read buffer starts small (idle connections are most of a connection test) and doubles
//!   only while reads keep filling it.
//! - PUBLISH is encoded once and patched per message ([`PublishTemplate`]); incoming PUBLISH and
//!   acknowledgements are parsed in place instead of through the full decoder, which would
//!   allocate a topic `String` per message. Every other packet goes through `mqtt::codec`.
//! - Counters are bumped per event, but received messages and latency samples are flushed once
//!   per read.
//!
//! Failures are counted (see `stats.rs` for the names) and the first few are printed to stderr;
//! nothing here panics on what a broker sends.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use mqtt::codec::{decode, encode};
use mqtt::{
    Auth, ConnAck, Connect, Disconnect, Packet, Properties, Protocol, PubResp, QoS, ReasonCode,
    SubOptions, Subscribe,
};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::payload::{Body, Hdr, Hdrs, PublishTemplate, latency_us, now_ns};
use crate::stats::{Counter, Stats};
use crate::topic::{ClientVars, TopicTemplate, client_id};
use crate::transport::{ConnectError, Target, Transport, open};

/// Stop producing messages while this much is still waiting to be written.
const OUT_HIGH_WATER: usize = 64 * 1024;
/// Messages generated per wake-up when paced (`-I N`), so reads get their turn.
const BATCH: usize = 64;
/// Messages generated per pass at `-I 0`; the output high-water mark and the in-flight window
/// bound it first, this only guarantees reads get a turn.
const UNPACED_BATCH: usize = 4096;
const READ_CHUNK_MIN: usize = 512;
const READ_CHUNK_MAX: usize = 64 * 1024;
/// The bound on sending DISCONNECT and closing when told to stop.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Client errors printed before the rest are only counted.
const MAX_PRINTED_ERRORS: u64 = 20;

/// `--limit`: one budget shared by every publisher, as in emqtt-bench. Whoever takes the last
/// message tells the others, so idle publishers finish now rather than at their next `-I` tick.
#[derive(Debug)]
pub struct Limit {
    remaining: AtomicI64,
    exhausted: watch::Sender<bool>,
}

impl Limit {
    pub fn new(n: u64) -> Limit {
        Limit {
            remaining: AtomicI64::new(i64::try_from(n).unwrap_or(i64::MAX)),
            exhausted: watch::channel(n == 0).0,
        }
    }

    fn take(&self) -> bool {
        let before = self.remaining.fetch_sub(1, Ordering::Relaxed);
        if before <= 1 {
            self.exhausted.send_replace(true);
        }
        before > 0
    }
}

pub struct SubPlan {
    pub topics: Vec<TopicTemplate>,
    pub qos: QoS,
    pub hdrs: Hdrs,
    pub recv_limit: Option<u64>,
}

pub struct PubPlan {
    pub topic: TopicTemplate,
    pub qos: QoS,
    pub retain: bool,
    pub hdrs: Hdrs,
    pub body: Body,
    pub interval: Duration,
    pub limit: Option<Limit>,
    /// 0 = as many as the server's Receive Maximum allows.
    pub inflight: u32,
    pub wait_for_all: bool,
    pub min_wait: Duration,
    pub max_wait: Duration,
}

pub enum Mode {
    Conn,
    Sub(SubPlan),
    Pub(PubPlan),
}

/// Everything the client tasks share; read-only apart from counters and the stop/go signals.
pub struct Shared {
    pub mode: Mode,
    /// `conn`, `sub` or `pub`, for client ids.
    pub command: &'static str,
    pub count: u64,
    pub startnumber: u64,
    pub targets: Vec<Target>,
    pub ifaddrs: Vec<IpAddr>,
    pub hostname: String,
    pub prefix: Option<String>,
    pub shortids: bool,
    pub protocol: Protocol,
    pub keepalive: u16,
    pub clean: bool,
    pub session_expiry: u32,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub auth_method: Option<String>,
    /// Empty: no Authentication Data. Otherwise client k sends entry k modulo the length.
    pub auth_data: Vec<Bytes>,
    pub reauth_interval: Option<Duration>,
    pub connect_timeout: Duration,
    pub num_retry_connect: u32,
    pub stats: Stats,
    /// Set once: every client disconnects and ends.
    pub stop: watch::Sender<bool>,
    /// Set once every client has tried to connect (`-w`).
    pub go: watch::Sender<bool>,
    pub attempted: AtomicU64,
    pub errors: AtomicU64,
}

impl Shared {
    fn mark_attempted(&self) {
        if self.attempted.fetch_add(1, Ordering::AcqRel) + 1 == self.count {
            self.go.send_replace(true);
        }
    }

    fn report(&self, seq: u64, what: &str) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        if n < MAX_PRINTED_ERRORS {
            eprintln!("client({seq}): {what}");
        } else if n == MAX_PRINTED_ERRORS {
            eprintln!("(further client errors are counted but not printed)");
        }
    }

    /// How many client errors were not printed.
    pub fn unprinted_errors(&self) -> u64 {
        self.errors
            .load(Ordering::Relaxed)
            .saturating_sub(MAX_PRINTED_ERRORS)
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
enum Fail {
    Connect(ConnectError),
    Timeout,
    ConnAck(ReasonCode),
    Protocol(String),
}

impl Fail {
    fn io(e: io::Error) -> Fail {
        Fail::Protocol(format!("connection closed during CONNECT: {e}"))
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Connect(e) => write!(f, "{e}"),
            Fail::Timeout => f.write_str("timed out"),
            Fail::ConnAck(code) => write!(f, "CONNACK reason code 0x{:02x}", code.0),
            Fail::Protocol(s) => f.write_str(s),
        }
    }
}

/// How a session ended.
enum End {
    Stopped,
    /// A publisher whose share of `--limit` is sent and acknowledged.
    Done,
    Lost(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    Ack,
    Rec,
    Comp,
}

/// The hot packets, located in the read buffer without copying.
enum Fast {
    Publish {
        qos: u8,
        packet_id: u16,
        topic: (usize, usize),
        payload: (usize, usize),
    },
    Ack {
        kind: u8,
        packet_id: u16,
        code: u8,
    },
}

/// Run client number `index` (0-based) until it ends.
pub async fn run(shared: Arc<Shared>, index: u64) {
    let mut client = Client::new(shared, index);
    let mut attempt = 0;
    loop {
        match client.attempt().await {
            Ok(()) => return,
            Err(fail) => {
                let s = &client.shared;
                if *client.stop.borrow() {
                    return;
                }
                if attempt < s.num_retry_connect {
                    attempt += 1;
                    s.stats.inc(Counter::ConnectRetried);
                    continue;
                }
                s.stats.inc(Counter::ConnectFail);
                match &fail {
                    Fail::Connect(ConnectError::Refused(_)) => {
                        s.stats.inc(Counter::ConnectionRefused)
                    }
                    Fail::Connect(ConnectError::Unreachable(_)) => {
                        s.stats.inc(Counter::Unreachable)
                    }
                    Fail::Timeout => s.stats.inc(Counter::ConnectionTimeout),
                    _ => {}
                }
                if matches!(s.mode, Mode::Sub(_)) {
                    s.stats.inc(Counter::SubFail);
                }
                s.report(client.seq, &format!("connect error - {fail}"));
                s.mark_attempted();
                return;
            }
        }
    }
}

struct Client {
    shared: Arc<Shared>,
    index: u64,
    seq: u64,
    client_id: String,
    local: Option<IpAddr>,
    stop: watch::Receiver<bool>,
    protocol: Protocol,
    inbuf: BytesMut,
    read_chunk: usize,
    /// Bytes still missing from a packet that has started to arrive.
    partial: usize,
    out: BytesMut,
    last_sent: Instant,
    keepalive: Duration,
    max_inflight: usize,
    next_pid: u16,
    inflight: HashMap<u16, Awaiting>,
    // publisher
    template: PublishTemplate,
    template_dynamic: bool,
    topic_buf: String,
    msg_cnt: u64,
    pub_started: bool,
    waiting_go: bool,
    next_due: Instant,
    limit_done: bool,
    // receiver
    awaiting_rel: HashSet<u16>,
    sub_pending: Option<u16>,
    cnt64_last: HashMap<Vec<u8>, u64>,
    recv_batch: u64,
    latency_batch: Vec<u64>,
    // re-authentication
    reauth_pending: bool,
    /// When CONNECT was written: the reference for `--expect-lifetime`. The server decides
    /// (and starts the credential's lifetime) after this, so a delay measured from here is
    /// never less than the real one.
    connect_sent: Instant,
}

impl Client {
    fn new(shared: Arc<Shared>, index: u64) -> Client {
        let seq = shared.startnumber + index + 1;
        let local = (!shared.ifaddrs.is_empty())
            .then(|| shared.ifaddrs[(index % shared.ifaddrs.len() as u64) as usize]);
        let host = local.map_or_else(|| shared.hostname.clone(), |ip| ip.to_string());
        let random = rand::rng().random_range(1..=u32::MAX);
        let client_id = client_id(
            shared.command,
            seq,
            shared.prefix.as_deref(),
            shared.shortids,
            &host,
            random,
        );
        let stop = shared.stop.subscribe();
        let protocol = shared.protocol;
        let now = Instant::now();
        Client {
            shared,
            index,
            seq,
            client_id,
            local,
            stop,
            protocol,
            inbuf: BytesMut::new(),
            read_chunk: READ_CHUNK_MIN,
            partial: 0,
            out: BytesMut::new(),
            last_sent: now,
            keepalive: Duration::ZERO,
            max_inflight: 1,
            next_pid: 1,
            inflight: HashMap::new(),
            template: PublishTemplate::default(),
            template_dynamic: false,
            topic_buf: String::new(),
            msg_cnt: 0,
            pub_started: false,
            waiting_go: false,
            next_due: now,
            limit_done: false,
            awaiting_rel: HashSet::new(),
            sub_pending: None,
            cnt64_last: HashMap::new(),
            recv_batch: 0,
            latency_batch: Vec::new(),
            reauth_pending: false,
            connect_sent: now,
        }
    }

    /// One connection attempt; on success, the whole session. `Ok` also when stopped.
    async fn attempt(&mut self) -> Result<(), Fail> {
        let deadline = Instant::now() + self.shared.connect_timeout;
        let target = &self.shared.targets[(self.index % self.shared.targets.len() as u64) as usize];
        let mut stop = self.stop.clone();
        let transport = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            // Boxed, like the handshake below: the TLS and WebSocket handshakes are large
            // futures, and inline they would stay in every connection's task for its whole life.
            r = timeout_at(deadline, Box::pin(open(target, self.local))) => match r {
                Err(_) => return Err(Fail::Timeout),
                Ok(Err(e)) => return Err(Fail::Connect(e)),
                Ok(Ok(t)) => t,
            },
        };
        self.inbuf.clear();
        self.out.clear();
        match transport {
            Transport::Tcp(mut tcp) => {
                let (r, w) = tcp.split();
                self.connected(r, w, false, deadline).await
            }
            Transport::Other(io) => {
                let (r, w) = tokio::io::split(io);
                self.connected(r, w, true, deadline).await
            }
        }
    }

    async fn connected<R, W>(
        &mut self,
        mut r: R,
        mut w: W,
        needs_flush: bool,
        deadline: Instant,
    ) -> Result<(), Fail>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut stop = self.stop.clone();
        let ack = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            r = timeout_at(deadline, Box::pin(self.handshake(&mut r, &mut w))) => match r {
                Err(_) => return Err(Fail::Timeout),
                Ok(r) => r?,
            },
        };
        self.shared.stats.inc(Counter::ConnectSucc);
        self.shared.stats.mark(Counter::ConnectSucc, now_ns());
        self.shared.mark_attempted();
        self.on_connack(&ack);
        let end = self.session(&mut r, &mut w, needs_flush).await;
        if let End::Lost(_) = end
            && let Some(lifetime) = self.shared.stats.expected_lifetime_secs()
        {
            // Taken before anything else: the instant the close (or DISCONNECT) was read.
            let expected = self.connect_sent + Duration::from_secs_f64(lifetime);
            let now = Instant::now();
            let delay_us = match now.checked_duration_since(expected) {
                Some(late) => i64::try_from(late.as_micros()).unwrap_or(i64::MAX),
                None => -i64::try_from((expected - now).as_micros()).unwrap_or(i64::MAX),
            };
            self.shared.stats.record_expiry_delay(delay_us);
        }
        match end {
            End::Stopped | End::Done => {
                self.send(&Packet::Disconnect(Disconnect::default()));
                let out = &self.out;
                let _ = timeout(CLOSE_TIMEOUT, async {
                    w.write_all(out).await?;
                    w.flush().await?;
                    w.shutdown().await
                })
                .await;
            }
            End::Lost(why) => {
                self.shared.stats.inc(Counter::ConnectionLost);
                if self.reauth_pending {
                    self.shared.stats.inc(Counter::ReauthFail);
                }
                self.shared.report(self.seq, &why);
            }
        }
        Ok(())
    }

    fn connect_packet(&self) -> Connect {
        let s = &self.shared;
        let v5 = s.protocol.is_v5();
        let auth_data = (!s.auth_data.is_empty())
            .then(|| s.auth_data[(self.index % s.auth_data.len() as u64) as usize].clone());
        Connect {
            protocol: s.protocol,
            clean_start: s.clean,
            keep_alive: s.keepalive,
            client_id: self.client_id.clone(),
            will: None,
            username: s.username.clone(),
            password: s.password.clone(),
            properties: Properties {
                session_expiry_interval: (v5 && s.session_expiry > 0).then_some(s.session_expiry),
                authentication_method: s.auth_method.clone(),
                authentication_data: auth_data,
                ..Properties::default()
            },
        }
    }

    /// Send CONNECT and wait for CONNACK (the caller bounds the wait).
    async fn handshake<R, W>(&mut self, r: &mut R, w: &mut W) -> Result<ConnAck, Fail>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let connect = self.connect_packet();
        encode(
            &Packet::Connect(Box::new(connect)),
            self.protocol,
            &mut self.out,
        );
        w.write_all(&self.out).await.map_err(Fail::io)?;
        w.flush().await.map_err(Fail::io)?;
        self.out.clear();
        let sent = Instant::now();
        self.last_sent = sent;
        self.connect_sent = sent;
        loop {
            match decode(&mut self.inbuf, self.protocol, usize::MAX) {
                Ok(Some(Packet::ConnAck(ack))) if ack.code.is_success() => {
                    let us = sent.elapsed().as_micros();
                    self.shared
                        .stats
                        .record_connect_latency(u64::try_from(us).unwrap_or(u64::MAX));
                    return Ok(ack);
                }
                Ok(Some(Packet::ConnAck(ack))) => return Err(Fail::ConnAck(ack.code)),
                Ok(Some(Packet::Auth(a))) => {
                    return Err(Fail::Protocol(format!(
                        "the server asked for another authentication step (AUTH 0x{:02x}); \
                         only single-step --auth-data is supported",
                        a.code.0
                    )));
                }
                Ok(Some(other)) => {
                    return Err(Fail::Protocol(format!(
                        "expected CONNACK, got {}",
                        other.name()
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(Fail::Protocol(format!("bad CONNACK: {e:?}"))),
            }
            self.inbuf.reserve(READ_CHUNK_MIN);
            if r.read_buf(&mut self.inbuf).await.map_err(Fail::io)? == 0 {
                return Err(Fail::Protocol(
                    "connection closed before CONNACK".to_owned(),
                ));
            }
        }
    }

    fn on_connack(&mut self, ack: &ConnAck) {
        let keepalive = ack
            .properties
            .server_keep_alive
            .unwrap_or(self.shared.keepalive);
        self.keepalive = Duration::from_secs(keepalive.into());
        let server_max = usize::from(ack.properties.receive_maximum.unwrap_or(u16::MAX));
        self.max_inflight = match &self.shared.mode {
            Mode::Pub(p) if p.inflight > 0 => (p.inflight as usize).min(server_max),
            _ => server_max,
        };
    }

    fn send(&mut self, p: &Packet) {
        encode(p, self.protocol, &mut self.out);
        self.last_sent = Instant::now();
    }

    fn alloc_pid(&mut self) -> u16 {
        loop {
            let id = self.next_pid;
            self.next_pid = id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    async fn session<R, W>(&mut self, r: &mut R, w: &mut W, needs_flush: bool) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let shared = Arc::clone(&self.shared);
        let now = Instant::now();
        match &shared.mode {
            Mode::Conn => {}
            Mode::Sub(plan) => self.subscribe(plan),
            Mode::Pub(plan) => {
                self.template_dynamic = plan.topic.per_message() || plan.body.is_dynamic();
                if !self.template_dynamic {
                    self.build_template(plan);
                }
                self.waiting_go = plan.wait_for_all;
                if !self.waiting_go {
                    self.start_publishing(plan, now);
                }
            }
        }
        let mut stop = self.stop.clone();
        let mut go = shared.go.subscribe();
        let mut exhausted = match &shared.mode {
            Mode::Pub(PubPlan {
                limit: Some(limit), ..
            }) => Some(limit.exhausted.subscribe()),
            _ => None,
        };
        let pub_sleep = sleep_until(self.next_due);
        let ka_sleep = sleep_until(self.last_sent + self.keepalive);
        let reauth_every = shared.reauth_interval.unwrap_or(Duration::MAX);
        let reauth_sleep = sleep_until(far_future(now, reauth_every));
        tokio::pin!(pub_sleep, ka_sleep, reauth_sleep);
        let mut pending_flush = false;
        loop {
            // Whatever is already due goes out now, not at the timer's next tick: tokio's timer
            // rounds a deadline up to the next millisecond, so a publisher that waits for a PUBACK
            // to free an in-flight slot (or for the output to drain) and then sleeps until an
            // instant already past would refill its window at most once a millisecond — that
            // capped `-q 1 -F 64` at ~64 messages/ms against any broker. Before the `finished` check:
            // finding `--limit` used up here is what finishes a publisher.
            if let Mode::Pub(plan) = &shared.mode
                && self.can_publish()
                && self.next_due <= Instant::now()
            {
                self.publish_due(plan);
                pub_sleep.as_mut().reset(self.next_due);
            }
            if self.finished(pending_flush) {
                return End::Done;
            }
            let can_publish = self.can_publish();
            let ka = !self.keepalive.is_zero();
            let reauth = shared.reauth_interval.is_some();
            let want_io = !self.out.is_empty() || pending_flush;
            self.reserve_read();
            let spare = self.inbuf.capacity() - self.inbuf.len();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return End::Stopped,
                res = r.read_buf(&mut self.inbuf) => match res {
                    Ok(0) => return End::Lost("connection closed by the server".into()),
                    Ok(n) => {
                        if n >= spare {
                            self.read_chunk = (self.read_chunk * 2).min(READ_CHUNK_MAX);
                        }
                        if let Err(e) = self.on_input() {
                            return End::Lost(e);
                        }
                    }
                    Err(e) => return End::Lost(format!("read error: {e}")),
                },
                res = write_or_flush(w, &self.out), if want_io => match res {
                    Ok(Some(n)) => {
                        self.out.advance(n);
                        pending_flush = needs_flush;
                    }
                    Ok(None) => pending_flush = false,
                    Err(e) => return End::Lost(format!("write error: {e}")),
                },
                () = &mut pub_sleep, if can_publish => {
                    if let Mode::Pub(plan) = &shared.mode {
                        self.publish_due(plan);
                    }
                    pub_sleep.as_mut().reset(self.next_due);
                }
                () = &mut ka_sleep, if ka => {
                    if Instant::now() >= self.last_sent + self.keepalive {
                        self.send(&Packet::PingReq);
                    }
                    ka_sleep.as_mut().reset(self.last_sent + self.keepalive);
                }
                () = &mut reauth_sleep, if reauth => {
                    if !self.reauth_pending {
                        self.reauthenticate();
                    }
                    reauth_sleep.as_mut().reset(far_future(Instant::now(), reauth_every));
                }
                _ = wait_exhausted(&mut exhausted), if !self.limit_done => self.limit_done = true,
                _ = go.wait_for(|g| *g), if self.waiting_go => {
                    self.waiting_go = false;
                    if let Mode::Pub(plan) = &shared.mode {
                        self.start_publishing(plan, Instant::now());
                    }
                    pub_sleep.as_mut().reset(self.next_due);
                }
            }
        }
    }

    /// A publisher with a `--limit` stops once its last message is acknowledged and written.
    fn finished(&self, pending_flush: bool) -> bool {
        self.limit_done && self.inflight.is_empty() && self.out.is_empty() && !pending_flush
    }

    fn reserve_read(&mut self) {
        let want = self.read_chunk.max(self.partial);
        if self.inbuf.capacity() - self.inbuf.len() < want {
            self.inbuf.reserve(want);
        }
    }

    fn subscribe(&mut self, plan: &SubPlan) {
        let vars = ClientVars {
            seq: self.seq,
            client_id: &self.client_id,
            username: self.shared.username.as_deref(),
        };
        let msg_seq = self.shared.stats.get(Counter::Pub) + 1;
        let filters = plan
            .topics
            .iter()
            .map(|t| {
                let opts = SubOptions {
                    qos: plan.qos,
                    ..SubOptions::default()
                };
                (t.to_topic(&vars, msg_seq), opts)
            })
            .collect();
        let packet_id = self.alloc_pid();
        self.sub_pending = Some(packet_id);
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters,
            properties: Properties::default(),
        }));
    }

    fn reauthenticate(&mut self) {
        let s = Arc::clone(&self.shared);
        let data = (!s.auth_data.is_empty())
            .then(|| s.auth_data[(self.index % s.auth_data.len() as u64) as usize].clone());
        self.send(&Packet::Auth(Auth {
            code: ReasonCode::REAUTHENTICATE,
            properties: Properties {
                authentication_method: s.auth_method.clone(),
                authentication_data: data,
                ..Properties::default()
            },
        }));
        self.reauth_pending = true;
    }

    // ---- publishing ----

    fn build_template(&mut self, plan: &PubPlan) {
        let vars = ClientVars {
            seq: self.seq,
            client_id: &self.client_id,
            username: self.shared.username.as_deref(),
        };
        let msg_seq = self.shared.stats.get(Counter::Pub) + 1;
        plan.topic.render(&vars, msg_seq, &mut self.topic_buf);
        self.template.build(
            self.protocol,
            plan.qos,
            plan.retain,
            &self.topic_buf,
            plan.hdrs.len_bytes(),
            &plan.body,
        );
    }

    fn start_publishing(&mut self, plan: &PubPlan, now: Instant) {
        let wait = if plan.max_wait > plan.min_wait {
            rand::rng().random_range(plan.min_wait..=plan.max_wait)
        } else {
            plan.min_wait
        };
        self.next_due = now + wait;
        self.pub_started = true;
    }

    fn can_publish(&self) -> bool {
        self.pub_started
            && !self.limit_done
            && self.inflight.len() < self.max_inflight
            && self.out.len() < OUT_HIGH_WATER
    }

    /// Publish everything that is due, as far as flow control allows. Like emqtt-bench, the
    /// schedule is absolute (start + k × interval), and every message sent after its slot has
    /// already passed the next one counts as `pub_overrun`.
    fn publish_due(&mut self, plan: &PubPlan) {
        let now = Instant::now();
        let mut budget = if plan.interval.is_zero() {
            UNPACED_BATCH
        } else {
            BATCH
        };
        let sent_before = self.msg_cnt;
        while budget > 0
            && self.next_due <= now
            && self.can_publish()
            && self.out.len() < OUT_HIGH_WATER
        {
            if let Some(limit) = &plan.limit
                && !limit.take()
            {
                self.limit_done = true;
                break;
            }
            self.publish_one(plan);
            budget -= 1;
            if plan.interval.is_zero() {
                self.next_due = now;
            } else {
                self.next_due += plan.interval;
                if self.next_due < now {
                    self.shared.stats.inc(Counter::PubOverrun);
                }
            }
        }
        if self.msg_cnt != sent_before {
            self.shared.stats.mark(Counter::Pub, now_ns());
        }
    }

    fn publish_one(&mut self, plan: &PubPlan) {
        let packet_id = match plan.qos {
            QoS::AtMostOnce => 0,
            qos => {
                let id = self.alloc_pid();
                let phase = if qos == QoS::AtLeastOnce {
                    Awaiting::Ack
                } else {
                    Awaiting::Rec
                };
                self.inflight.insert(id, phase);
                id
            }
        };
        if self.template_dynamic {
            self.build_template(plan);
        }
        let ts = if plan.hdrs.has(Hdr::Ts) { now_ns() } else { 0 };
        self.template
            .emit(&mut self.out, packet_id, &plan.hdrs, self.msg_cnt, ts);
        self.msg_cnt += 1;
        self.last_sent = Instant::now();
        self.shared.stats.inc(Counter::Pub);
    }

    // ---- receiving ----

    /// Handle every complete packet in the read buffer. `Err` ends the connection.
    fn on_input(&mut self) -> Result<(), String> {
        let result = self.drain_input();
        let s = &self.shared;
        if self.recv_batch > 0 {
            s.stats.add(Counter::Recv, self.recv_batch);
            s.stats.mark(Counter::Recv, now_ns());
            self.recv_batch = 0;
            if let Mode::Sub(SubPlan {
                recv_limit: Some(limit),
                ..
            }) = &s.mode
                && s.stats.get(Counter::Recv) >= *limit
            {
                s.stop.send_replace(true);
            }
        }
        s.stats
            .record_latency(self.index as usize, &self.latency_batch);
        self.latency_batch.clear();
        result
    }

    fn drain_input(&mut self) -> Result<(), String> {
        loop {
            let Some((first, header, remaining)) = peek_header(&self.inbuf)? else {
                self.partial = 0;
                return Ok(());
            };
            let total = header + remaining;
            if self.inbuf.len() < total {
                self.partial = total - self.inbuf.len();
                return Ok(());
            }
            match parse_fast(first, &self.inbuf[header..total], header, self.protocol)? {
                Some(Fast::Publish {
                    qos,
                    packet_id,
                    topic,
                    payload,
                }) => self.on_publish(qos, packet_id, topic, payload),
                Some(Fast::Ack {
                    kind,
                    packet_id,
                    code,
                }) => self.on_ack(kind, packet_id, code),
                None => {
                    let packet = decode(&mut self.inbuf, self.protocol, usize::MAX)
                        .map_err(|e| format!("malformed packet from the server: {e:?}"))?
                        .ok_or("incomplete packet after a complete header")?;
                    self.on_packet(packet)?;
                    continue;
                }
            }
            self.inbuf.advance(total);
        }
    }

    fn on_publish(
        &mut self,
        qos: u8,
        packet_id: u16,
        topic: (usize, usize),
        payload: (usize, usize),
    ) {
        let duplicate = qos == 2 && !self.awaiting_rel.insert(packet_id);
        if !duplicate {
            self.recv_batch += 1;
            if let Mode::Sub(plan) = &self.shared.mode
                && !plan.hdrs.is_empty()
            {
                let payload = &self.inbuf[payload.0..payload.1];
                if let Some(v) = plan.hdrs.read(payload) {
                    if let Some(ts) = v.ts {
                        self.latency_batch.push(latency_us(ts, now_ns()));
                    }
                    if let Some(cnt) = v.cnt {
                        let topic = &self.inbuf[topic.0..topic.1];
                        let verdict = match self.cnt64_last.get_mut(topic) {
                            Some(last) => {
                                let verdict = if cnt == last.wrapping_add(1) {
                                    None
                                } else if cnt > *last {
                                    Some(Counter::Cnt64Gap)
                                } else {
                                    Some(Counter::Cnt64Dup)
                                };
                                *last = (*last).max(cnt);
                                verdict
                            }
                            None => {
                                self.cnt64_last.insert(topic.to_vec(), cnt);
                                None
                            }
                        };
                        if let Some(c) = verdict {
                            self.shared.stats.inc(c);
                        }
                    }
                }
            }
        }
        match qos {
            1 => self.send(&Packet::PubAck(resp(packet_id))),
            2 => self.send(&Packet::PubRec(resp(packet_id))),
            _ => {}
        }
    }

    fn on_ack(&mut self, kind: u8, packet_id: u16, code: u8) {
        let stats = &self.shared.stats;
        let failed = code >= 0x80;
        match (kind, self.inflight.get(&packet_id).copied()) {
            (PUBACK, Some(Awaiting::Ack)) | (PUBCOMP, Some(Awaiting::Comp)) => {
                self.inflight.remove(&packet_id);
                stats.inc(if failed {
                    Counter::PubFail
                } else {
                    Counter::PubSucc
                });
            }
            (PUBREC, Some(Awaiting::Rec)) if failed => {
                self.inflight.remove(&packet_id);
                stats.inc(Counter::PubFail);
            }
            (PUBREC, phase) => {
                if phase == Some(Awaiting::Rec) {
                    self.inflight.insert(packet_id, Awaiting::Comp);
                }
                // Also for an unknown id: answering PUBREC with PUBREL is always safe.
                self.send(&Packet::PubRel(resp(packet_id)));
            }
            (PUBREL, _) => {
                self.awaiting_rel.remove(&packet_id);
                self.send(&Packet::PubComp(resp(packet_id)));
            }
            // An acknowledgement for nothing we sent: harmless, ignored.
            _ => {}
        }
    }

    fn on_packet(&mut self, packet: Packet) -> Result<(), String> {
        let stats = &self.shared.stats;
        match packet {
            Packet::SubAck(ack) if Some(ack.packet_id) == self.sub_pending => {
                self.sub_pending = None;
                if ack.codes.iter().all(|c| c.is_success()) {
                    stats.inc(Counter::Sub);
                } else {
                    stats.inc(Counter::SubFail);
                    let codes: Vec<String> =
                        ack.codes.iter().map(|c| format!("0x{:02x}", c.0)).collect();
                    self.shared.report(
                        self.seq,
                        &format!("subscribe error - SUBACK {}", codes.join(",")),
                    );
                }
            }
            Packet::Auth(a) if self.reauth_pending => {
                self.reauth_pending = false;
                if a.code == ReasonCode::SUCCESS {
                    stats.inc(Counter::ReauthSucc);
                    stats.mark(Counter::ReauthSucc, now_ns());
                } else {
                    stats.inc(Counter::ReauthFail);
                    return Err(format!(
                        "re-authentication answered with AUTH 0x{:02x}; only single-step is \
                         supported",
                        a.code.0
                    ));
                }
            }
            Packet::Disconnect(d) => {
                return Err(format!(
                    "disconnected by the server with reason 0x{:02x}",
                    d.code.0
                ));
            }
            Packet::PingResp | Packet::UnsubAck(_) | Packet::SubAck(_) => {}
            other => return Err(format!("unexpected {} from the server", other.name())),
        }
        Ok(())
    }
}

const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;

fn resp(packet_id: u16) -> PubResp {
    PubResp {
        packet_id,
        code: ReasonCode::SUCCESS,
        properties: Properties::default(),
    }
}

/// `now + every`, without overflowing when re-authentication is off (`Duration::MAX`).
fn far_future(now: Instant, every: Duration) -> Instant {
    now.checked_add(every)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

/// Resolves once `--limit` is used up; never without a limit.
async fn wait_exhausted(rx: &mut Option<watch::Receiver<bool>>) {
    match rx {
        Some(rx) => {
            let _ = rx.wait_for(|done| *done).await;
        }
        None => std::future::pending().await,
    }
}

async fn write_or_flush<W: AsyncWrite + Unpin>(w: &mut W, out: &[u8]) -> io::Result<Option<usize>> {
    if out.is_empty() {
        w.flush().await.map(|()| None)
    } else {
        w.write(out).await.map(Some)
    }
}

/// The fixed header at the front of `buf`: (first byte, header length, remaining length).
fn peek_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, String> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((first, 2 + i, value)));
        }
    }
    Err("malformed remaining length from the server".into())
}

/// A variable byte integer at the front of `buf`: (value, bytes used).
fn varint(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Locate PUBLISH and PUBACK/PUBREC/PUBREL/PUBCOMP fields in `body` (the bytes after the fixed
/// header, which starts `offset` bytes into the buffer). `None` for every other packet type.
fn parse_fast(
    first: u8,
    body: &[u8],
    offset: usize,
    protocol: Protocol,
) -> Result<Option<Fast>, String> {
    let bad = |what: &str| Err(format!("malformed {what} from the server"));
    let kind = first >> 4;
    let flags = first & 0x0F;
    match kind {
        3 => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return bad("PUBLISH (QoS 3)");
            }
            let Some(len) = body.get(..2) else {
                return bad("PUBLISH");
            };
            let topic_end = 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            let mut pos = topic_end;
            let packet_id = if qos > 0 {
                let Some(id) = body.get(pos..pos + 2) else {
                    return bad("PUBLISH");
                };
                pos += 2;
                u16::from_be_bytes([id[0], id[1]])
            } else {
                0
            };
            if protocol.is_v5() {
                let Some((props, n)) = body.get(pos..).and_then(varint) else {
                    return bad("PUBLISH");
                };
                pos += n + props;
            }
            if pos > body.len() {
                return bad("PUBLISH");
            }
            Ok(Some(Fast::Publish {
                qos,
                packet_id,
                topic: (offset + 2, offset + topic_end),
                payload: (offset + pos, offset + body.len()),
            }))
        }
        PUBACK..=PUBCOMP => {
            let expected_flags = if kind == PUBREL { 0b0010 } else { 0 };
            if flags != expected_flags || body.len() < 2 {
                return bad("acknowledgement");
            }
            Ok(Some(Fast::Ack {
                kind,
                packet_id: u16::from_be_bytes([body[0], body[1]]),
                code: body.get(2).copied().unwrap_or(0),
            }))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use mqtt::Publish;

    use super::*;

    fn encoded(p: &Packet, protocol: Protocol) -> BytesMut {
        let mut b = BytesMut::new();
        encode(p, protocol, &mut b);
        b
    }

    /// The in-place PUBLISH parser must agree with the codec on everything it reads.
    #[test]
    fn fast_publish_parse_agrees_with_the_codec() {
        for protocol in [Protocol::V311, Protocol::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for payload in [&b""[..], b"x", &[7u8; 300]] {
                    let mut properties = Properties::default();
                    if protocol.is_v5() {
                        properties.content_type = Some("text/plain".into());
                        properties.subscription_identifiers = vec![3, 400];
                    }
                    let p = Publish {
                        dup: false,
                        qos,
                        retain: false,
                        topic: "bench/ünï/7".into(),
                        packet_id: if qos == QoS::AtMostOnce { 0 } else { 513 },
                        payload: Bytes::copy_from_slice(payload),
                        properties,
                    };
                    let buf = encoded(&Packet::Publish(p.clone()), protocol);
                    let (first, header, remaining) = peek_header(&buf).unwrap().unwrap();
                    assert_eq!(header + remaining, buf.len());
                    let Some(Fast::Publish {
                        qos: q,
                        packet_id,
                        topic,
                        payload: pl,
                    }) = parse_fast(first, &buf[header..], header, protocol).unwrap()
                    else {
                        panic!("not a PUBLISH")
                    };
                    assert_eq!(q, qos as u8);
                    assert_eq!(packet_id, p.packet_id);
                    assert_eq!(&buf[topic.0..topic.1], p.topic.as_bytes());
                    assert_eq!(&buf[pl.0..pl.1], payload);
                }
            }
        }
    }

    #[test]
    fn fast_ack_parse_agrees_with_the_codec() {
        for protocol in [Protocol::V311, Protocol::V5] {
            for (kind, make) in [
                (PUBACK, Packet::PubAck as fn(PubResp) -> Packet),
                (PUBREC, Packet::PubRec),
                (PUBREL, Packet::PubRel),
                (PUBCOMP, Packet::PubComp),
            ] {
                for code in [0u8, 0x10, 0x87] {
                    let r = PubResp {
                        packet_id: 0xABCD,
                        code: ReasonCode(code),
                        properties: Properties::default(),
                    };
                    let buf = encoded(&make(r), protocol);
                    let (first, header, _) = peek_header(&buf).unwrap().unwrap();
                    let Some(Fast::Ack {
                        kind: k,
                        packet_id,
                        code: c,
                    }) = parse_fast(first, &buf[header..], header, protocol).unwrap()
                    else {
                        panic!("not an ack")
                    };
                    assert_eq!((k, packet_id), (kind, 0xABCD));
                    // 3.1.1 has no reason codes on the wire.
                    assert_eq!(c, if protocol.is_v5() { code } else { 0 });
                }
            }
        }
    }

    #[test]
    fn other_packets_go_to_the_codec() {
        let buf = encoded(&Packet::PingResp, Protocol::V5);
        let (first, header, _) = peek_header(&buf).unwrap().unwrap();
        assert!(
            parse_fast(first, &buf[header..], header, Protocol::V5)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let cases: [&[u8]; 5] = [
            &[0x36, 0x02, 0x00, 0x01],       // QoS 3
            &[0x30, 0x01, 0x00],             // topic length cut short
            &[0x32, 0x04, 0x00, 0x02, b'a'], // no room for the packet id
            &[0x41, 0x02, 0x00, 0x01],       // PUBACK with flags
            &[0x40, 0x01, 0x00],             // PUBACK too short
        ];
        for case in cases {
            let (first, header, remaining) = peek_header(case).unwrap().unwrap();
            let end = (header + remaining).min(case.len());
            assert!(
                parse_fast(first, &case[header..end], header, Protocol::V5).is_err(),
                "{case:02x?}"
            );
        }
        assert!(peek_header(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert_eq!(peek_header(&[0x30, 0xFF]).unwrap(), None);
        assert_eq!(peek_header(&[]).unwrap(), None);
    }

    fn shared_for_publishing(qos: QoS, messages: u64, inflight: u32) -> Arc<Shared> {
        Arc::new(Shared {
            mode: Mode::Pub(PubPlan {
                topic: TopicTemplate::parse("bench/p2p").unwrap(),
                qos,
                retain: false,
                hdrs: Hdrs::default(),
                body: Body::Fixed(vec![b'a'; 8]),
                interval: Duration::ZERO,
                limit: Some(Limit::new(messages)),
                inflight,
                wait_for_all: false,
                min_wait: Duration::ZERO,
                max_wait: Duration::ZERO,
            }),
            command: "pub",
            count: 1,
            startnumber: 0,
            targets: Vec::new(),
            ifaddrs: Vec::new(),
            hostname: "test".into(),
            prefix: None,
            shortids: true,
            protocol: Protocol::V5,
            keepalive: 0,
            clean: true,
            session_expiry: 0,
            username: None,
            password: None,
            auth_method: None,
            auth_data: Vec::new(),
            reauth_interval: None,
            connect_timeout: Duration::from_secs(5),
            num_retry_connect: 0,
            stats: Stats::new(1),
            stop: watch::channel(false).0,
            go: watch::channel(false).0,
            attempted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    /// A broker on the other end of an in-memory pipe that acknowledges every QoS 1 PUBLISH at
    /// once. The clock is paused, so it makes time pass itself: 1 µs per read, the way real
    /// time passes while bytes move. Returns the PUBLISH count and the total time it added.
    async fn acking_broker(mut io: tokio::io::DuplexStream) -> (u64, Duration) {
        const PER_READ: Duration = Duration::from_micros(1);
        let mut buf = BytesMut::new();
        let mut seen = 0;
        let mut added = Duration::ZERO;
        loop {
            while let Some(packet) = decode(&mut buf, Protocol::V5, usize::MAX).unwrap() {
                match packet {
                    Packet::Publish(p) => {
                        seen += 1;
                        if p.qos != QoS::AtMostOnce {
                            let ack = encoded(&Packet::PubAck(resp(p.packet_id)), Protocol::V5);
                            io.write_all(&ack).await.unwrap();
                        }
                    }
                    Packet::Disconnect(_) => return (seen, added),
                    other => panic!("unexpected {other:?}"),
                }
            }
            if io.read_buf(&mut buf).await.unwrap() == 0 {
                return (seen, added);
            }
            tokio::time::advance(PER_READ).await;
            added += PER_READ;
        }
    }

    /// With PUBACKs arriving at once, an unpaced QoS 1 publisher refills its in-flight window
    /// as soon as a slot frees, without waiting for a timer. The clock is paused: it moves only
    /// by the broker's simulated microseconds, or — when every task waits on a timer — jumps to
    /// that timer's millisecond tick. So the publisher must finish in exactly the broker's time;
    /// the regression this guards against waited for a tick per window (2000 messages / 64 in
    /// flight ≈ 31 ms).
    #[tokio::test(start_paused = true)]
    async fn unpaced_qos1_never_waits_for_the_timer_to_refill_its_window() {
        let shared = shared_for_publishing(QoS::AtLeastOnce, 2000, 64);
        let mut client = Client::new(Arc::clone(&shared), 0);
        client.max_inflight = 64;
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let broker = tokio::spawn(acking_broker(theirs));
        let (mut r, mut w) = tokio::io::split(ours);
        let start = Instant::now();
        let end = client.session(&mut r, &mut w, false).await;
        let elapsed = start.elapsed();
        assert!(
            matches!(end, End::Done),
            "the publisher finishes its --limit"
        );
        assert_eq!(shared.stats.get(Counter::Pub), 2000);
        assert!(client.inflight.is_empty(), "every message acknowledged");
        w.write_all(&encoded(
            &Packet::Disconnect(Disconnect::default()),
            Protocol::V5,
        ))
        .await
        .unwrap();
        let (seen, added) = broker.await.unwrap();
        assert_eq!(seen, 2000);
        assert!(
            elapsed <= added,
            "publishing took {elapsed:?} of which the broker accounts for {added:?}: \
             the rest was spent waiting on the timer"
        );
    }

    /// A publisher that finds `--limit` already used up by the others, with nothing of its own
    /// in flight, is finished — it does not wait for a server that has nothing more to say.
    #[tokio::test(start_paused = true)]
    async fn a_publisher_finding_the_limit_used_up_finishes() {
        let shared = shared_for_publishing(QoS::AtLeastOnce, 1, 8);
        let Mode::Pub(PubPlan {
            limit: Some(limit), ..
        }) = &shared.mode
        else {
            unreachable!()
        };
        assert!(limit.take(), "another publisher sends the only message");
        let mut client = Client::new(Arc::clone(&shared), 1);
        client.max_inflight = 8;
        let (ours, _theirs) = tokio::io::duplex(1024);
        let (mut r, mut w) = tokio::io::split(ours);
        let end = timeout(
            Duration::from_secs(60),
            client.session(&mut r, &mut w, false),
        )
        .await;
        assert!(matches!(end, Ok(End::Done)), "the publisher must finish");
        assert_eq!(shared.stats.get(Counter::Pub), 0);
    }

    #[test]
    fn limit_is_shared_and_announces_its_end() {
        let l = Limit::new(2);
        let rx = l.exhausted.subscribe();
        assert!(l.take());
        assert!(!*rx.borrow());
        assert!(l.take());
        assert!(*rx.borrow(), "taking the last message announces it");
        assert!(!l.take());
        assert!(!l.take());
    }
}
