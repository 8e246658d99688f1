//! One actix actor per client connection: IO and timers around an `mqtt::Session`.
//!
//! The actor reads bytes into the session, acts on the session's events (authentication,
//! routing, subscriptions), moves deliveries from the session's [`Outbox`] into the session as
//! the in-flight window allows, and hands the session's output to a writer task. Every protocol
//! decision is the session's; every routing decision is the router's. What the actor owns is
//! ordering (nothing but AUTH is processed before CONNACK), timers (keep alive, connect
//! timeout, will delay, session expiry) and write backpressure.
//!
//! Write backpressure: output goes into a shared buffer drained by a local writer task (started
//! when there is something to write, gone again once it is written). While more than
//! [`HIGH_WATERMARK`] bytes wait, the actor stops taking deliveries from the outbox, so a slow
//! reader's messages queue (boundedly) in its outbox instead of in memory without limit, and
//! the router drops for that subscriber alone when the outbox is full.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use mqtt::session::{CloseReason, ConnectAccepted, Event, Session, SessionConfig};
use mqtt::{Connect, QoS, ReasonCode};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use crate::auth::{
    AuthKind, AuthOutcome, AuthRequest, Authenticator, Authorizer, Principal, Secret,
};
use crate::metrics::Metrics;
use crate::router::{ConnControl, ConnectOutcome, ConnectRequest, Detach, Outbox, Router};

/// Stop taking deliveries while this many bytes wait to be written.
pub const HIGH_WATERMARK: usize = 64 * 1024;
/// Resume below this.
pub const LOW_WATERMARK: usize = 16 * 1024;

/// How long a connection may take to send CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a takeover waits for the old connection to hand its session over.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// What the listener learned about a connection before MQTT started.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The client certificate chain, leaf first, as verified in the TLS handshake. `None` on a
    /// plaintext port or when the client sent no certificate.
    pub tls_chain: Option<Arc<[CertificateDer<'static>]>>,
}

/// What every connection on a listener shares.
pub struct Shared {
    pub router: Arc<dyn Router>,
    pub authenticator: Arc<dyn Authenticator>,
    pub authorizer: Arc<dyn Authorizer>,
    pub metrics: Arc<Metrics>,
    pub session_config: SessionConfig,
    pub listener_port: u16,
    /// When a credential expires, tell v5 clients first (DISCONNECT 0x87 with a reason string)
    /// instead of only closing the network connection, which is the documented default
    /// (broker-spec §2.5).
    pub expiry_disconnect: bool,
    /// The port's connected clients, so that an authorization policy update can reach them.
    pub live: LiveConnections,
}

/// The connected clients of one port, by connection id.
#[derive(Default)]
pub struct LiveConnections {
    /// The same `Control` the router holds: one actix sender per connection, not one per user.
    conns: parking_lot::Mutex<std::collections::HashMap<u64, Arc<Control>>>,
}

impl LiveConnections {
    /// Tell every connected client that the port's authorization policy changed: each one
    /// disconnects (`disconnect`), or recompiles its permissions and drops the subscriptions
    /// they no longer cover.
    pub fn policy_updated(&self, disconnect: bool) -> usize {
        let conns: Vec<Arc<Control>> = self.conns.lock().values().cloned().collect();
        for c in &conns {
            c.0.do_send(PolicyUpdated { disconnect });
        }
        conns.len()
    }

    pub fn len(&self) -> usize {
        self.conns.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The port's authorization policy was replaced.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PolicyUpdated {
    pub disconnect: bool,
}

/// The broker's self-check namespace (broker-spec §4.4): no client publishes or subscribes
/// there, whatever its authorization says (scenario 43).
const RESERVED_PREFIX: &str = "azedge/dmqtt/selftest";

fn reserved(topic_or_filter: &str) -> bool {
    topic_or_filter
        .strip_prefix(RESERVED_PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Connection ids, unique within the process, for the authentication service.
static NEXT_CONNECTION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(Default)]
struct WriteState {
    buf: BytesMut,
    /// The socket's write side while no writer task runs; the task takes it for as long as it
    /// has something to write and puts it back when done. `None` also once writing failed or
    /// the socket was shut down.
    io: Option<Box<dyn AsyncWrite + Unpin>>,
    /// Bytes handed to the socket and not yet confirmed written.
    writing: usize,
    closing: bool,
    closed: bool,
    /// The actor paused deliveries and wants a wake-up below the low watermark.
    wants_wake: bool,
}

impl WriteState {
    fn pending(&self) -> usize {
        self.buf.len() + self.writing
    }
}

struct ConnectIdentity {
    client_id: String,
    username: Option<String>,
    password: Option<Bytes>,
}

struct Attachment {
    client_id: String,
    session_id: u64,
    generation: u64,
    outbox: Arc<Outbox>,
}

pub struct Connection {
    session: Session,
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// Passed to every authentication request (X.509 identity, re-checks).
    tls_chain: Option<Arc<[CertificateDer<'static>]>>,
    write: Rc<RefCell<WriteState>>,
    /// Taken by `started`, which reads from it.
    reader_io: Option<Box<dyn AsyncRead + Unpin>>,
    /// The CONNECT being answered, until the session is attached; then only `identity`.
    connect: Option<Box<Connect>>,
    /// What later authentication requests need from CONNECT, kept instead of the whole packet
    /// (a few hundred bytes with its will and properties) once the session is attached.
    identity: Option<ConnectIdentity>,
    /// Closes the connection if CONNECT does not come in time; cancelled once attached, so
    /// that an idle connection does not hold it.
    connect_timer: Option<SpawnHandle>,
    principal: Principal,
    attachment: Option<Attachment>,
    keep_alive_timer: Option<SpawnHandle>,
    finished: bool,
    /// QoS 1/2 acknowledgements held back until the store has committed what they promise,
    /// in PUBLISH order ([MQTT-4.6.0-2]): a later message never overtakes an earlier one.
    pending_acks: std::collections::VecDeque<PendingAck>,
    /// The store failed: held acknowledgements go out as errors instead of waiting forever.
    store_failed: bool,
    /// Why the broker is closing this connection, for the one log line `on_closed` writes.
    close_cause: Option<String>,
    connection_id: u64,
    /// What the authentication service needs back with the client's next AUTH (multi-step).
    auth_continuation: Bytes,
    /// When the credential expires, and the timer that closes the connection then.
    expiry: Option<std::time::SystemTime>,
    expiry_timer: Option<SpawnHandle>,
    /// Registration with the authentication service; dropping it unregisters.
    watch: Option<crate::auth::WatchGuard>,
    /// What this client may publish and subscribe, compiled at CONNECT (and again after a
    /// re-authentication changes the principal). Nothing is allowed before CONNECT.
    permissions: Arc<dyn crate::auth::Permissions>,
}

/// The permissions of a connection that has not been authorized (yet).
struct Nothing;

impl crate::auth::Permissions for Nothing {
    fn may_publish(&self, _: &str) -> bool {
        false
    }
    fn may_subscribe(&self, _: &str) -> bool {
        false
    }
}

struct PendingAck {
    qos: QoS,
    packet_id: u16,
    code: ReasonCode,
    reason: Option<String>,
    ticket: Option<crate::store::Ticket>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Wake;

#[derive(Message)]
#[rtype(result = "()")]
struct Kick {
    code: ReasonCode,
    reason: String,
}

#[derive(Message)]
#[rtype(result = "()")]
struct WriterDone;

/// One address rather than a `Recipient` per message type: every actix sender allocates.
struct Control(Addr<Connection>);

impl ConnControl for Control {
    fn wake(&self) {
        self.0.do_send(Wake);
    }
    fn kick(&self, code: ReasonCode, reason: String) {
        self.0.do_send(Kick { code, reason });
    }
}

impl Connection {
    pub fn start<R, W>(reader: R, writer: W, info: ConnInfo, shared: Arc<Shared>) -> Addr<Self>
    where
        R: AsyncRead + Unpin + 'static,
        W: AsyncWrite + Unpin + 'static,
    {
        shared
            .metrics
            .connections_accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let session = Session::new(shared.session_config.clone(), Instant::now());
        Connection {
            session,
            shared,
            peer: info.peer,
            tls_chain: info.tls_chain,
            write: Rc::new(RefCell::new(WriteState {
                io: Some(Box::new(writer)),
                ..WriteState::default()
            })),
            reader_io: Some(Box::new(reader)),
            connect: None,
            identity: None,
            connect_timer: None,
            principal: Principal::default(),
            attachment: None,
            keep_alive_timer: None,
            finished: false,
            pending_acks: std::collections::VecDeque::new(),
            store_failed: false,
            close_cause: None,
            connection_id: NEXT_CONNECTION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            auth_continuation: Bytes::new(),
            expiry: None,
            expiry_timer: None,
            watch: None,
            permissions: Arc::new(Nothing),
        }
        .start()
    }

    fn client_id(&self) -> &str {
        self.attachment
            .as_ref()
            .map(|a| a.client_id.as_str())
            .or(self.connect.as_ref().map(|c| c.client_id.as_str()))
            .or(self.identity.as_ref().map(|i| i.client_id.as_str()))
            .unwrap_or("")
    }

    /// Run the session until it is blocked, then move its output to the writer.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        self.session.process(now);
        while let Some(event) = self.session.poll_event() {
            self.handle_event(event, ctx, now);
            if ctx.waiting() {
                // An asynchronous step (authentication, takeover) holds the actor; the
                // remaining events are handled when it resumes.
                break;
            }
        }
        self.drain_outbox(now, ctx);
        self.report_completed();
        self.flush(ctx);
        self.arm_keep_alive(ctx);
    }

    fn drain_outbox(&mut self, now: Instant, ctx: &mut Context<Self>) {
        let Some(outbox) = self.attachment.as_ref().map(|a| a.outbox.clone()) else {
            return;
        };
        if !self.session.is_connected() {
            return;
        }
        outbox.clear_scheduled();
        let (mut sent, mut sent_bytes) = (0u64, 0u64);
        loop {
            if self.write.borrow().pending() + self.session_pending() > HIGH_WATERMARK {
                self.write.borrow_mut().wants_wake = true;
                break;
            }
            let Some(d) = outbox.pop() else { break };
            let payload_len = d.message.payload.len() as u64;
            match self.session.deliver(d, now) {
                Ok(()) => (sent, sent_bytes) = (sent + 1, sent_bytes + payload_len),
                Err(d) => {
                    outbox.unpop(d);
                    break;
                }
            }
            // Hand output to the writer in batches rather than per message.
            if self.session_pending() > LOW_WATERMARK {
                self.flush(ctx);
            }
        }
        if sent > 0 {
            self.shared
                .metrics
                .publishes_sent
                .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
            self.shared
                .metrics
                .payload_bytes_sent
                .fetch_add(sent_bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Acknowledge a PUBLISH now, or once the store has committed it (and everything the
    /// client sent before it).
    fn acknowledge(&mut self, ack: PendingAck, ctx: &mut Context<Self>) {
        let wait = ack.ticket.clone().filter(|t| !t.is_done());
        self.pending_acks.push_back(ack);
        if let Some(ticket) = wait {
            ctx.spawn(ticket.wait().into_actor(self).map(|result, act, ctx| {
                if result.is_err() {
                    act.store_failed = true;
                }
                act.release_acks();
                act.pump(ctx);
            }));
        }
        self.release_acks();
    }

    fn release_acks(&mut self) {
        while let Some(front) = self.pending_acks.front() {
            let committed = front.ticket.as_ref().is_none_or(|t| t.is_done());
            if !committed && !self.store_failed {
                break;
            }
            let ack = self.pending_acks.pop_front().expect("front exists");
            let (code, reason) = if committed {
                (ack.code, ack.reason)
            } else {
                (
                    ReasonCode::UNSPECIFIED_ERROR,
                    Some("the broker could not store this message".to_string()),
                )
            };
            self.session
                .publish_done(ack.qos, ack.packet_id, code, reason);
        }
    }

    /// Tell the router which stored deliveries the session is finished with.
    fn report_completed(&mut self) {
        let done = self.session.take_completed();
        if !done.is_empty()
            && let Some(att) = &self.attachment
        {
            self.shared.router.acknowledged(&att.client_id, &done);
        }
    }

    fn session_pending(&self) -> usize {
        self.session.transmit_len()
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(bytes) = self.session.take_transmit() {
            let mut w = self.write.borrow_mut();
            if w.closed {
                return;
            }
            if w.buf.is_empty() {
                w.buf = bytes;
            } else {
                w.buf.extend_from_slice(&bytes);
            }
            drop(w);
            self.start_writer(ctx);
        }
    }

    /// Make sure a writer task is on the buffered output (or the shutdown): start one unless
    /// one is running. It runs after the actor yields, so what the actor says in one go goes
    /// out in one write, and it ends once it has nothing left to write, so an idle connection
    /// has no task besides its actor.
    fn start_writer(&self, ctx: &mut Context<Self>) {
        let io = self.write.borrow_mut().io.take();
        if let Some(io) = io {
            actix_rt::spawn(write_loop(io, self.write.clone(), ctx.address()));
        }
    }

    fn arm_keep_alive(&mut self, ctx: &mut Context<Self>) {
        if self.keep_alive_timer.is_some() {
            return;
        }
        if let Some(deadline) = self.session.next_timeout() {
            let delay = deadline.saturating_duration_since(Instant::now());
            self.keep_alive_timer = Some(ctx.run_later(delay, |act, ctx| {
                act.keep_alive_timer = None;
                act.session.handle_timeout(Instant::now());
                act.pump(ctx);
            }));
        }
    }

    fn handle_event(&mut self, event: Event, ctx: &mut Context<Self>, now: Instant) {
        match event {
            Event::Connect(connect) => self.on_connect(connect, ctx),
            Event::Auth(auth) => self.on_auth(auth, ctx),
            Event::Publish { message, packet_id } => {
                let qos = message.qos;
                self.shared.metrics.publish_received(message.payload.len());
                let mut ticket = None;
                let (code, reason) = if !self.shared.metrics.authorization(
                    !reserved(&message.topic) && self.permissions.may_publish(&message.topic),
                ) {
                    debug!(client_id = self.client_id(), topic = %message.topic, "publish not authorized");
                    (
                        ReasonCode::NOT_AUTHORIZED,
                        Some("publish not authorized".to_string()),
                    )
                } else {
                    let outcome = self.shared.router.publish(message, now);
                    let reason = (!outcome.code.is_success())
                        .then(|| format!("message not accepted: {}", outcome.code.name()));
                    ticket = outcome.durable;
                    (outcome.code, reason)
                };
                if qos != QoS::AtMostOnce {
                    self.acknowledge(
                        PendingAck {
                            qos,
                            packet_id,
                            code,
                            reason,
                            ticket,
                        },
                        ctx,
                    );
                }
            }
            Event::Subscribe(sub) => {
                let Some(att) = &self.attachment else { return };
                let allowed: Vec<bool> = sub
                    .filters
                    .iter()
                    .map(|(f, _)| {
                        let allowed = self
                            .shared
                            .metrics
                            .authorization(!reserved(f) && self.permissions.may_subscribe(f));
                        if !allowed {
                            debug!(client_id = %att.client_id, filter = %f, "subscribe not authorized");
                        }
                        allowed
                    })
                    .collect();
                let codes = self.shared.router.subscribe(
                    att.session_id,
                    &sub.filters,
                    &allowed,
                    sub.properties.subscription_identifiers.first().copied(),
                    now,
                );
                let packet_id = sub.packet_id;
                match self.durable_wait() {
                    None => self.session.send_suback(packet_id, codes),
                    Some(ticket) => {
                        ctx.spawn(ticket.wait().into_actor(self).map(move |_, act, ctx| {
                            act.session.send_suback(packet_id, codes);
                            act.pump(ctx);
                        }));
                    }
                }
            }
            Event::Unsubscribe(unsub) => {
                let Some(att) = &self.attachment else { return };
                let codes = self
                    .shared
                    .router
                    .unsubscribe(att.session_id, &unsub.filters);
                self.session.send_unsuback(unsub.packet_id, codes);
            }
            Event::WindowOpened => {}
            Event::Closed(reason) => self.on_closed(reason, ctx, now),
        }
    }

    fn auth_request(
        &self,
        kind: AuthKind,
        method: Option<String>,
        data: Option<Bytes>,
    ) -> AuthRequest {
        let (client_id, username, password) = match (&self.connect, &self.identity) {
            (Some(c), _) => (Some(&c.client_id), c.username.as_ref(), c.password.as_ref()),
            (None, Some(i)) => (Some(&i.client_id), i.username.as_ref(), i.password.as_ref()),
            (None, None) => (None, None, None),
        };
        AuthRequest {
            kind,
            protocol: self.session.protocol(),
            client_id: client_id.cloned().unwrap_or_default(),
            username: username.cloned(),
            password: password.cloned().map(Secret),
            method,
            data: data.map(Secret),
            listener_port: self.shared.listener_port,
            peer: self.peer,
            tls_chain: self.tls_chain.clone(),
            connection_id: self.connection_id,
            continuation: if kind == AuthKind::Continue {
                self.auth_continuation.clone()
            } else {
                Bytes::new()
            },
        }
    }

    /// Arm (or re-arm, after re-authentication) the timer that closes the connection when its
    /// credential expires. The timer is this connection's own, so the deadline holds even if
    /// the authentication service is gone (scenario 27).
    fn arm_expiry(&mut self, expiry: Option<std::time::SystemTime>, ctx: &mut Context<Self>) {
        if let Some(old) = self.expiry_timer.take() {
            ctx.cancel_future(old);
        }
        self.expiry = expiry;
        let Some(at) = expiry else { return };
        let delay = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        self.expiry_timer = Some(ctx.run_later(delay, |act, ctx| {
            act.expiry_timer = None;
            act.on_credential_expired(ctx);
        }));
    }

    fn on_credential_expired(&mut self, ctx: &mut Context<Self>) {
        self.close_cause = Some("credential expired".to_string());
        self.shared.metrics.credential_expired();
        // Default as documented: close without DISCONNECT (the client learns nothing it could
        // misuse); per policy, v5 clients get DISCONNECT 0x87 with a reason string first.
        let notify = self.shared.expiry_disconnect;
        self.session.disconnect(
            ReasonCode::NOT_AUTHORIZED,
            notify.then(|| "credential expired".to_string()),
            notify,
        );
        self.pump(ctx);
    }

    fn on_connect(&mut self, connect: Box<Connect>, ctx: &mut Context<Self>) {
        // From CONNECT to CONNACK: authentication and attaching the session, takeover included.
        let span = tracing::info_span!("mqtt.connect", client_id = %connect.client_id, protocol = ?connect.protocol, peer = %self.peer, outcome = tracing::field::Empty, session_present = tracing::field::Empty);
        let method = connect.properties.authentication_method.clone();
        let data = connect.properties.authentication_data.clone();
        self.connect = Some(connect);
        let request = self.auth_request(AuthKind::Connect, method, data);
        let fut = self.shared.authenticator.authenticate(request);
        ctx.wait(fut.into_actor(self).map(move |outcome, act, ctx| {
            act.shared.metrics.authentication(&outcome);
            span.in_scope(|| act.on_connect_outcome(outcome, ctx));
        }));
    }

    fn on_connect_outcome(&mut self, outcome: AuthOutcome, ctx: &mut Context<Self>) {
        match outcome {
            AuthOutcome::Deny { code, reason } => {
                tracing::Span::current().record("outcome", "refused");
                self.close_cause = Some(match &reason {
                    Some(r) => format!("refused by authentication: {r}"),
                    None => "refused by authentication".to_string(),
                });
                self.session.reject_connect(code, reason);
                self.pump(ctx);
            }
            AuthOutcome::Continue { data, continuation } => {
                tracing::Span::current().record("outcome", "continue authentication");
                self.auth_continuation = continuation;
                self.session
                    .send_auth(ReasonCode::CONTINUE_AUTHENTICATION, data, None);
                self.pump(ctx);
            }
            AuthOutcome::Transient { reason } => {
                tracing::Span::current().record("outcome", "authentication unavailable");
                self.close_cause = Some(format!("authentication unavailable: {reason}"));
                self.session.reject_connect(
                    ReasonCode::SERVER_UNAVAILABLE,
                    Some("authentication service unavailable".to_string()),
                );
                self.pump(ctx);
            }
            AuthOutcome::Allow {
                principal,
                data,
                expiry,
                ..
            } => {
                let client_id = self.connect.as_ref().map_or("", |c| c.client_id.as_str());
                match self.shared.authorizer.connect(client_id, &principal) {
                    Ok(permissions) => {
                        self.shared.metrics.authorization(true);
                        self.permissions = permissions;
                    }
                    Err(why) => {
                        self.shared.metrics.authorization(false);
                        tracing::Span::current().record("outcome", "not authorized");
                        self.close_cause = Some(format!("CONNECT not authorized: {why}"));
                        self.session.reject_connect(
                            ReasonCode::NOT_AUTHORIZED,
                            Some("not authorized to connect".to_string()),
                        );
                        self.pump(ctx);
                        return;
                    }
                }
                self.principal = principal;
                self.auth_continuation = Bytes::new();
                self.expiry = expiry;
                self.attach(data, false, ctx);
            }
        }
    }

    fn attach(&mut self, auth_data: Option<Bytes>, force: bool, ctx: &mut Context<Self>) {
        let connect = self.connect.as_ref().expect("attach follows CONNECT");
        let mut assigned = None;
        let client_id = if connect.client_id.is_empty() {
            let id = format!("gatehouse-{:016x}", rand::random::<u64>());
            assigned = Some(id.clone());
            id
        } else {
            connect.client_id.clone()
        };
        let control = Arc::new(Control(ctx.address()));
        let request = ConnectRequest {
            client_id: client_id.clone(),
            owner: self.permissions.session_owner(),
            clean_start: connect.clean_start,
            session_expiry: self.session.session_expiry(),
            will: connect.will.clone(),
            control: control.clone(),
        };
        let now = Instant::now();
        match self.shared.router.connect(request, force, now) {
            ConnectOutcome::TakeoverPending(rx) => {
                let wait = tokio::time::timeout(TAKEOVER_WAIT, rx);
                let span = tracing::Span::current();
                ctx.wait(wait.into_actor(self).map(move |_, act, ctx| {
                    span.in_scope(|| act.attach(auth_data, true, ctx));
                }));
            }
            ConnectOutcome::Refused(code, why) => {
                tracing::Span::current().record("outcome", "refused");
                self.close_cause = Some(format!("CONNECT refused: {why}"));
                self.session.reject_connect(code, Some(why));
                self.pump(ctx);
            }
            ConnectOutcome::Attached(att) => {
                let attached = (att, client_id, assigned, auth_data, control);
                match self.durable_wait() {
                    None => self.finish_attach(attached, now, ctx),
                    Some(ticket) => {
                        let span = tracing::Span::current();
                        ctx.wait(ticket.wait().into_actor(self).map(move |_, act, ctx| {
                            span.in_scope(|| act.finish_attach(attached, Instant::now(), ctx));
                        }));
                    }
                }
            }
        }
    }

    /// For a persistent session, the store ticket an acknowledgement must wait for (if the
    /// store has not committed it yet).
    fn durable_wait(&self) -> Option<crate::store::Ticket> {
        if self.session.session_expiry() == 0 {
            return None;
        }
        self.shared.router.sync_point().filter(|t| !t.is_done())
    }

    fn finish_attach(
        &mut self,
        (att, client_id, assigned, auth_data, control): (
            crate::router::Attached,
            String,
            Option<String>,
            Option<Bytes>,
            Arc<Control>,
        ),
        now: Instant,
        ctx: &mut Context<Self>,
    ) {
        {
            {
                let span = tracing::Span::current();
                span.record("outcome", "accepted");
                span.record("session_present", att.session_present);
                self.session.set_origin(att.session_id);
                self.session.accept_connect(
                    ConnectAccepted {
                        session_present: att.session_present,
                        assigned_client_id: assigned,
                        restored: att.restored,
                        authentication_data: auth_data,
                        user_properties: Vec::new(),
                    },
                    now,
                );
                self.attachment = Some(Attachment {
                    client_id,
                    session_id: att.session_id,
                    generation: att.generation,
                    outbox: att.outbox,
                });
                // Connected: the CONNECT timeout is moot, and of CONNECT only what
                // re-authentication sends again is still needed.
                if let Some(timer) = self.connect_timer.take() {
                    ctx.cancel_future(timer);
                }
                if let Some(connect) = self.connect.take() {
                    let Connect {
                        client_id,
                        username,
                        password,
                        ..
                    } = *connect;
                    self.identity = Some(ConnectIdentity {
                        client_id,
                        username,
                        password,
                    });
                }
                self.shared
                    .metrics
                    .connected_sessions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                debug!(peer = %self.peer, client_id = self.client_id(), session_present = att.session_present, "client connected");
                self.shared
                    .live
                    .conns
                    .lock()
                    .insert(self.connection_id, control.clone());
                let expiry = self.expiry;
                self.arm_expiry(expiry, ctx);
                self.watch = self
                    .shared
                    .authenticator
                    .watch(crate::auth::LiveConnection {
                        connection_id: self.connection_id,
                        client_id: self.client_id().to_string(),
                        principal: self.principal.clone(),
                        expiry,
                        control,
                    });
                self.pump(ctx);
            }
        }
    }

    fn on_auth(&mut self, auth: mqtt::Auth, ctx: &mut Context<Self>) {
        let kind = if self.session.is_connected() {
            AuthKind::Reauthenticate
        } else {
            AuthKind::Continue
        };
        let request = self.auth_request(
            kind,
            auth.properties.authentication_method.clone(),
            auth.properties.authentication_data.clone(),
        );
        let fut = self.shared.authenticator.authenticate(request);
        ctx.wait(fut.into_actor(self).map(move |outcome, act, ctx| {
            act.shared.metrics.authentication(&outcome);
            match (kind, outcome) {
                (
                    AuthKind::Reauthenticate,
                    AuthOutcome::Allow {
                        principal,
                        data,
                        expiry,
                        ..
                    },
                ) => {
                    // A renewal that says nothing about attributes (the published custom
                    // auth-server sample answers AUTH without them) keeps the ones the client
                    // has; new attributes replace them, and may grant or take away permissions.
                    let mut principal = principal;
                    if principal.attributes.is_empty() {
                        principal.attributes = act.principal.attributes.clone();
                    }
                    match act.shared.authorizer.connect(act.client_id(), &principal) {
                        Ok(permissions) => {
                            // Scenario 59: new attributes can move the client out of the
                            // groups or rules its live subscriptions rely on; then it is
                            // disconnected rather than left with subscriptions it may not have.
                            let revoked = act.attachment.as_ref().is_some_and(|a| {
                                act.shared
                                    .router
                                    .subscriptions(a.session_id)
                                    .iter()
                                    .any(|f| !permissions.may_subscribe(f))
                            });
                            if revoked {
                                act.close_cause = Some(
                                    "client authorization error: subscriptions no longer allowed after re-authentication"
                                        .to_string(),
                                );
                                act.session.disconnect(
                                    ReasonCode::NOT_AUTHORIZED,
                                    Some("subscriptions no longer authorized".to_string()),
                                    true,
                                );
                                act.pump(ctx);
                                return;
                            }
                            act.permissions = permissions;
                        }
                        Err(why) => {
                            act.close_cause =
                                Some(format!("not authorized after re-authentication: {why}"));
                            act.session.disconnect(
                                ReasonCode::NOT_AUTHORIZED,
                                Some("not authorized".to_string()),
                                true,
                            );
                            act.pump(ctx);
                            return;
                        }
                    }
                    act.principal = principal;
                    act.session.send_auth(ReasonCode::SUCCESS, data, None);
                    // The deadline moves to the new credential's (scenario 21).
                    act.arm_expiry(expiry, ctx);
                }
                (AuthKind::Reauthenticate, AuthOutcome::Transient { reason }) => {
                    // Scenario 23: the client may retry; the old deadline still holds.
                    debug!(client_id = act.client_id(), %reason, "re-authentication could not be decided now");
                    act.session.send_auth(
                        ReasonCode::CONTINUE_AUTHENTICATION,
                        None,
                        Some("authentication service unavailable; retry later".to_string()),
                    );
                }
                (_, AuthOutcome::Continue { data, continuation }) => {
                    act.auth_continuation = continuation;
                    act.session
                        .send_auth(ReasonCode::CONTINUE_AUTHENTICATION, data, None);
                }
                (AuthKind::Reauthenticate, AuthOutcome::Deny { code, reason }) => {
                    act.close_cause = Some(match &reason {
                        Some(r) => format!("re-authentication refused: {r}"),
                        None => "re-authentication refused".to_string(),
                    });
                    act.session.disconnect(code, reason, true);
                }
                (_, outcome) => return act.on_connect_outcome(outcome, ctx),
            }
            act.pump(ctx);
        }));
    }

    fn on_closed(&mut self, reason: CloseReason, ctx: &mut Context<Self>, now: Instant) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.report_completed();
        self.shared.live.conns.lock().remove(&self.connection_id);
        match &reason {
            CloseReason::Violation(e) => {
                self.shared
                    .metrics
                    .protocol_violations
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.shared.metrics.server_disconnect(e.reason_code());
                info!(peer = %self.peer, client_id = self.client_id(), code = %e.reason_code(), cause = %e, "disconnecting client: protocol violation");
            }
            CloseReason::KeepAliveTimeout => {
                let code = ReasonCode::KEEP_ALIVE_TIMEOUT;
                self.shared.metrics.server_disconnect(code);
                info!(peer = %self.peer, client_id = self.client_id(), code = %code, cause = "keep alive timeout", "disconnecting client");
            }
            CloseReason::Server(code) if *code != ReasonCode::SUCCESS => {
                self.shared.metrics.server_disconnect(*code);
                let cause = self.close_cause.as_deref().unwrap_or(code.name());
                info!(peer = %self.peer, client_id = self.client_id(), code = %code, cause, "disconnecting client");
            }
            _ => {
                debug!(peer = %self.peer, client_id = self.client_id(), ?reason, "client disconnected")
            }
        }
        if let Some(att) = self.attachment.take() {
            self.shared
                .metrics
                .connected_sessions
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let timers = self.shared.router.detach(
                Detach {
                    client_id: att.client_id.clone(),
                    generation: att.generation,
                    state: self.session.take_state(),
                    session_expiry: self.session.session_expiry(),
                    publish_will: reason.publishes_will(),
                },
                now,
            );
            // Timers outlive this actor, so they run as free tasks on the arbiter.
            let after = |delay: Duration, fire: fn(&dyn Router, &str, u64, Instant)| {
                let router = self.shared.router.clone();
                let (id, generation) = (att.client_id.clone(), att.generation);
                actix_rt::spawn(async move {
                    tokio::time::sleep(delay).await;
                    fire(&*router, &id, generation, Instant::now());
                });
            };
            if let Some(delay) = timers.will_after {
                after(delay, |r, id, g, now| r.fire_will(id, g, now));
            }
            if let Some(delay) = timers.expire_after {
                after(delay, |r, id, g, now| r.expire_session(id, g, now));
            }
        }
        // Let the writer flush what the session said last (CONNACK, DISCONNECT), then stop.
        self.flush(ctx);
        self.write.borrow_mut().closing = true;
        self.start_writer(ctx);
        // A peer that never reads must not keep us around: stop after a grace period.
        ctx.run_later(Duration::from_secs(5), |_, ctx| ctx.stop());
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let reader = self.reader_io.take().expect("started once");
        ctx.add_stream(ReadChunks(Some(reader)));
        self.connect_timer = Some(ctx.run_later(CONNECT_TIMEOUT, |act, ctx| {
            act.connect_timer = None;
            if !act.session.is_connected() && !act.finished {
                act.close_cause = Some("no CONNECT in time".to_string());
                act.session
                    .disconnect(ReasonCode::MAXIMUM_CONNECT_TIME, None, false);
                act.pump(ctx);
            }
        }));
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        // Make sure the session is detached even when the actor stops for another reason.
        if !self.finished {
            self.session.handle_network_closed();
            self.pump(ctx);
        }
    }
}

impl StreamHandler<Result<BytesMut, std::io::Error>> for Connection {
    fn handle(&mut self, item: Result<BytesMut, std::io::Error>, ctx: &mut Context<Self>) {
        match item {
            Ok(bytes) => {
                if self.finished {
                    return;
                }
                self.session.feed_buf(bytes);
                self.pump(ctx);
            }
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "read failed");
                self.session.handle_network_closed();
                self.pump(ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.session.handle_network_closed();
        self.pump(ctx);
    }
}

impl Handler<Wake> for Connection {
    type Result = ();
    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        if !self.finished {
            self.pump(ctx);
        }
    }
}

impl Handler<Kick> for Connection {
    type Result = ();
    fn handle(&mut self, kick: Kick, ctx: &mut Context<Self>) {
        self.close_cause = Some(kick.reason.clone());
        self.session.disconnect(kick.code, Some(kick.reason), true);
        self.pump(ctx);
    }
}

impl Handler<PolicyUpdated> for Connection {
    type Result = ();
    fn handle(&mut self, update: PolicyUpdated, ctx: &mut Context<Self>) {
        let Some((client_id, session_id)) = self
            .attachment
            .as_ref()
            .map(|a| (a.client_id.clone(), a.session_id))
        else {
            return;
        };
        if update.disconnect {
            // As documented for AIO: clients connected when the policy changes are
            // disconnected and evaluated afresh when they reconnect (scenario 40).
            self.close_cause = Some("authorization policy changed".to_string());
            self.session.disconnect(
                ReasonCode::ADMINISTRATIVE_ACTION,
                Some("authorization policy changed".to_string()),
                true,
            );
            return self.pump(ctx);
        }
        match self.shared.authorizer.connect(&client_id, &self.principal) {
            Err(why) => {
                self.close_cause = Some(format!("not authorized under the new policy: {why}"));
                self.session.disconnect(
                    ReasonCode::NOT_AUTHORIZED,
                    Some("not authorized under the new authorization policy".to_string()),
                    true,
                );
            }
            Ok(permissions) => {
                let revoked: Vec<String> = self
                    .shared
                    .router
                    .subscriptions(session_id)
                    .into_iter()
                    .filter(|f| !permissions.may_subscribe(f))
                    .collect();
                self.permissions = permissions;
                if !revoked.is_empty() {
                    info!(client_id = %client_id, filters = ?revoked, "authorization policy changed: subscriptions no longer allowed were removed");
                    self.shared.router.unsubscribe(session_id, &revoked);
                }
            }
        }
        self.pump(ctx);
    }
}

impl Handler<WriterDone> for Connection {
    type Result = ();
    fn handle(&mut self, _: WriterDone, ctx: &mut Context<Self>) {
        if !self.finished {
            self.session.handle_network_closed();
            self.pump(ctx);
        }
        ctx.stop();
    }
}

/// Most bytes one read takes from the connection.
const READ_CHUNK: usize = 4096;

/// The connection's input as a stream of chunks, each in a buffer of its own size.
///
/// Reads go through a buffer on the stack, so that an idle connection holds no read buffer
/// (a `ReaderStream` keeps its whole capacity allocated between reads); what arrives is copied
/// out at its own size and handed to the session, which takes the buffer over.
struct ReadChunks(Option<Box<dyn AsyncRead + Unpin>>);

impl futures_util::Stream for ReadChunks {
    type Item = std::io::Result<BytesMut>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let Some(io) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = tokio::io::ReadBuf::uninit(&mut stack);
        let result = std::task::ready!(std::pin::Pin::new(io).poll_read(cx, &mut buf));
        Poll::Ready(match result {
            Ok(()) if buf.filled().is_empty() => {
                // End of input.
                self.0 = None;
                None
            }
            Ok(()) => Some(Ok(BytesMut::from(buf.filled()))),
            Err(e) => {
                // As `ReaderStream`: the error, then the end.
                self.0 = None;
                Some(Err(e))
            }
        })
    }
}

/// Writes whatever the actor buffered, in as few syscalls as the buffer allows; then hands
/// the socket back and ends, or, when the connection is closing, shuts the socket down.
async fn write_loop(
    mut io: Box<dyn AsyncWrite + Unpin>,
    state: Rc<RefCell<WriteState>>,
    addr: Addr<Connection>,
) {
    loop {
        let next = {
            let mut s = state.borrow_mut();
            if !s.buf.is_empty() {
                // The whole buffer, capacity included: nothing stays allocated here while
                // the connection idles.
                let chunk = std::mem::take(&mut s.buf).freeze();
                s.writing = chunk.len();
                Some(chunk)
            } else if s.closing {
                None
            } else {
                // Everything is written: the next flush starts a new writer.
                s.io = Some(io);
                return;
            }
        };
        match next {
            Some(chunk) => {
                // The flush is free on TCP, but TLS and WebSocket streams may keep the tail of
                // a write when the socket is full; unflushed, it would wait for the next chunk.
                let written = match io.write_all(&chunk).await {
                    Ok(()) => io.flush().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    debug!(error = %e, "write failed");
                    break;
                }
                let mut s = state.borrow_mut();
                s.writing = 0;
                if s.wants_wake && s.pending() < LOW_WATERMARK {
                    s.wants_wake = false;
                    addr.do_send(Wake);
                }
            }
            None => {
                let _ = io.flush().await;
                let _ = io.shutdown().await;
                break;
            }
        }
    }
    state.borrow_mut().closed = true;
    if let Err(e) = addr.try_send(WriterDone) {
        debug!(error = %e, "connection actor gone before its writer");
    }
}
