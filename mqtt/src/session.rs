//! The per-connection MQTT state machine: bytes and packets in, packets and events out.
//!
//! A [`Session`] owns everything one network connection needs to speak MQTT correctly: the read
//! buffer and decoder, the negotiated protocol and limits, keep alive, topic aliases in both
//! directions, the inbound QoS 2 and outbound QoS 1/2 windows. It does no IO and reads no clock:
//! the host (an actix actor in `frontend`, or a unit test) feeds bytes with [`Session::feed`],
//! calls [`Session::process`] with the current time, drains [`Session::poll_event`] and
//! [`Session::take_transmit`], and calls [`Session::handle_timeout`] at [`Session::next_timeout`].
//!
//! What it is not: it knows nothing of other clients, subscriptions, retained messages or
//! authentication. Those decisions come back from the host through `accept_connect`,
//! `publish_done`, `send_suback` and friends. The part of the state that outlives a connection
//! (packet identifiers, unacknowledged messages) is a [`SessionState`] the host stores between
//! connections.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec;
use crate::error::ProtocolError;
use crate::inflight::InflightQueue;
use crate::packet::*;
use crate::reason::ReasonCode;
use crate::topic;

/// Server-side limits a session enforces and advertises in CONNACK.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Largest packet the server accepts (advertised as Maximum Packet Size).
    pub max_packet_size: u32,
    /// How many QoS 1/2 PUBLISHes a client may have unacknowledged (advertised Receive Maximum).
    pub receive_maximum: u16,
    /// Topic aliases the client may use towards the server (advertised Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Cap on the client's keep alive; 0 = no cap. Above the cap (or 0 requested) the server
    /// answers with Server Keep Alive.
    pub max_keep_alive: u16,
    /// Cap on the session expiry interval a client may request.
    pub max_session_expiry: u32,
    /// Cap on the message expiry interval of PUBLISHes (None = no cap).
    pub max_message_expiry: Option<u32>,
    /// Upper bound on the server→client QoS 1/2 window, on top of the client's Receive Maximum.
    pub max_inflight: u16,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_packet_size: 268_435_455,
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            max_keep_alive: 0,
            max_session_expiry: u32::MAX,
            max_message_expiry: None,
            max_inflight: u16::MAX,
        }
    }
}

/// An application message as the router holds it: decoded once, shared by every subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Properties forwarded unchanged: payload format, content type, response topic,
    /// correlation data, user properties. Topic alias, subscription identifiers and message
    /// expiry are per delivery and never stored here.
    pub properties: Properties,
    pub expires_at: Option<Instant>,
    /// Connection-independent id of the publishing session, for No Local.
    pub origin: u64,
}

impl Message {
    /// Bytes this message holds on the heap, for memory budgets.
    pub fn weight(&self) -> usize {
        self.topic.len() + self.payload.len() + 64
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// One message on its way to one subscriber.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(published QoS, subscription QoS).
    pub qos: QoS,
    /// RETAIN flag on the wire (Retain As Published, or 1 for retained-on-subscribe).
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// The `$share/group/filter` this came through, so that the router can hand the message
    /// to another member if this one leaves before acknowledging it.
    pub shared: Option<Arc<str>>,
    /// The host's handle for this delivery (a store key), 0 for none. The session never
    /// interprets it; it reports non-zero tags back through [`Session::take_completed`] once the
    /// delivery is finished with, so the host can forget what it persisted.
    pub tag: u64,
}

/// Outbound QoS 1/2 message waiting for the client.
#[derive(Clone, Debug)]
pub struct Inflight {
    pub delivery: Delivery,
    pub stage: InflightStage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflightStage {
    /// QoS 1 PUBLISH sent, PUBACK awaited.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, PUBREC awaited.
    AwaitPubRec,
    /// PUBREL sent, PUBCOMP awaited.
    AwaitPubComp,
}

/// The part of a session that outlives its network connection ([MQTT-4.1.0-1]).
#[derive(Clone, Debug, Default)]
pub struct SessionState {
    /// Outbound QoS 1/2 messages in the order they were first sent.
    pub inflight: InflightQueue,
    /// Inbound QoS 2 packet ids that got PUBREC and wait for PUBREL.
    pub inbound_qos2: Vec<u16>,
    pub next_packet_id: u16,
}

impl SessionState {
    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                continue;
            }
            let id = self.next_packet_id;
            if !self.inflight.contains(id) {
                return id;
            }
        }
    }

    fn stage(&self, packet_id: u16) -> Option<InflightStage> {
        self.inflight.get(packet_id).map(|f| f.stage)
    }
}

/// What the session needs the host to decide or act upon.
#[derive(Debug)]
pub enum Event {
    /// A valid CONNECT arrived. Answer with `accept_connect`, `reject_connect` or, for enhanced
    /// authentication, `send_auth` with Continue authentication.
    Connect(Box<Connect>),
    /// AUTH from the client (continue an exchange, or re-authenticate after CONNACK).
    Auth(Auth),
    /// An application message to route. For QoS > 0 answer with `publish_done`.
    Publish { message: Message, packet_id: u16 },
    /// Validated SUBSCRIBE; answer with `send_suback`.
    Subscribe(Subscribe),
    /// Validated UNSUBSCRIBE; answer with `send_unsuback`.
    Unsubscribe(Unsubscribe),
    /// A QoS 1/2 window slot freed up: the host may deliver more.
    WindowOpened,
    /// The connection is over. Flush what `take_transmit` returns, then close the socket.
    Closed(CloseReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Client sent DISCONNECT. `with_will` is true for reason 0x04.
    ClientDisconnect { code: ReasonCode, with_will: bool },
    /// The client broke a rule; a v5 client was sent DISCONNECT with the mapped code.
    Violation(ProtocolError),
    /// Keep alive expired.
    KeepAliveTimeout,
    /// The host decided (takeover, shutdown, credential expiry, CONNECT refused).
    Server(ReasonCode),
    /// The peer closed the socket or it failed.
    NetworkClosed,
}

impl CloseReason {
    /// Whether the will message is published for this close ([MQTT-3.1.2-8], [MQTT-3.14.4-3]).
    pub fn publishes_will(&self) -> bool {
        match self {
            CloseReason::ClientDisconnect { with_will, .. } => *with_will,
            CloseReason::Server(code) => *code != ReasonCode::SUCCESS,
            _ => true,
        }
    }
}

/// Host's answer to a CONNECT.
#[derive(Debug, Clone, Default)]
pub struct ConnectAccepted {
    pub session_present: bool,
    /// Set when the client sent an empty client id and the host assigned one.
    pub assigned_client_id: Option<String>,
    /// Restored state of a persistent session (resends unacknowledged messages).
    pub restored: Option<SessionState>,
    /// v5 authentication data to return in CONNACK (enhanced authentication).
    pub authentication_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for CONNECT.
    AwaitConnect,
    /// CONNECT handed to the host; nothing else is processed until it answers ([MQTT-4.12.0-?]
    /// the server must not process packets other than AUTH before CONNACK).
    Authenticating,
    Connected,
    Closed,
}

pub struct Session {
    config: SessionConfig,
    phase: Phase,
    protocol: Protocol,
    rx: BytesMut,
    tx: BytesMut,
    events: VecDeque<Event>,

    keep_alive: Duration,
    requested_keep_alive: u16,
    last_received: Instant,

    /// Client's limits towards us.
    client_receive_maximum: u16,
    client_max_packet_size: u32,
    client_topic_alias_maximum: u16,
    request_problem_information: bool,

    /// What CONNECT and DISCONNECT set.
    session_expiry: u32,
    /// The CONNECT's Session Expiry Interval before the server's cap (§3.14.2.2.2).
    requested_session_expiry: u32,
    auth_method: Option<String>,

    aliases_in: HashMap<u16, String>,
    aliases_out: HashMap<String, u16>,

    /// QoS 1 PUBLISHes handed to the host and not yet acknowledged (count against our
    /// Receive Maximum together with `state.inbound_qos2`).
    qos1_pending: usize,
    /// QoS 2 PUBLISHes handed to the host and not yet PUBREC'd.
    qos2_pending: Vec<u16>,

    state: SessionState,
    origin: u64,
    /// Tags of deliveries finished with since the host last asked (see [`Delivery::tag`]).
    completed: Vec<u64>,
}

impl Session {
    /// `origin` identifies the client's session for No Local; the host assigns it.
    pub fn new(config: SessionConfig, now: Instant) -> Session {
        let client_max_packet_size = u32::MAX;
        Session {
            config,
            phase: Phase::AwaitConnect,
            protocol: Protocol::V311,
            // Allocated as bytes arrive and released once consumed (see `process`): an idle
            // connection holds no buffers.
            rx: BytesMut::new(),
            tx: BytesMut::new(),
            events: VecDeque::new(),
            keep_alive: Duration::ZERO,
            requested_keep_alive: 0,
            last_received: now,
            client_receive_maximum: u16::MAX,
            client_max_packet_size,
            client_topic_alias_maximum: 0,
            request_problem_information: true,
            session_expiry: 0,
            requested_session_expiry: 0,
            auth_method: None,
            aliases_in: HashMap::new(),
            aliases_out: HashMap::new(),
            qos1_pending: 0,
            qos2_pending: Vec::new(),
            state: SessionState::default(),
            origin: 0,
            completed: Vec::new(),
        }
    }

    // ------------------------------------------------------------------ accessors

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }
    /// Session expiry interval in force (after caps and any DISCONNECT update).
    pub fn session_expiry(&self) -> u32 {
        self.session_expiry
    }
    pub fn authentication_method(&self) -> Option<&str> {
        self.auth_method.as_deref()
    }
    pub fn set_origin(&mut self, origin: u64) {
        self.origin = origin;
    }
    pub fn inflight_len(&self) -> usize {
        self.state.inflight.len()
    }
    /// True when `deliver` would accept a QoS > 0 message now.
    pub fn window_open(&self) -> bool {
        self.state.inflight.len() < self.window()
    }
    /// Bytes waiting in the read buffer, for memory accounting.
    pub fn buffered_input(&self) -> usize {
        self.rx.len()
    }

    fn window(&self) -> usize {
        usize::from(
            self.client_receive_maximum
                .min(self.config.max_inflight)
                .max(1),
        )
    }

    // ------------------------------------------------------------------ input

    /// Append bytes read from the network.
    pub fn feed(&mut self, data: &[u8]) {
        self.rx.extend_from_slice(data);
    }

    /// Like [`Session::feed`], taking over the caller's buffer instead of copying it when no
    /// earlier input is pending (the common case).
    pub fn feed_buf(&mut self, data: BytesMut) {
        if self.rx.is_empty() {
            self.rx = data;
        } else {
            self.rx.extend_from_slice(&data);
        }
    }

    /// Decode and handle every complete packet in the read buffer, unless the session waits
    /// for the host to answer a CONNECT.
    pub fn process(&mut self, now: Instant) {
        while matches!(self.phase, Phase::AwaitConnect | Phase::Connected) || self.auth_pending() {
            let max = self.config.max_packet_size as usize;
            match codec::decode(&mut self.rx, self.protocol, max) {
                Ok(Some(packet)) => {
                    self.last_received = now;
                    self.handle_packet(packet, now);
                }
                Ok(None) => break,
                Err(e) => {
                    self.violation(e);
                    break;
                }
            }
        }
        if self.rx.is_empty() {
            // Everything read was consumed: let the buffer go (decoded payloads that still
            // share it keep their part alive) rather than hold it while the client idles. An
            // empty view at the end of the buffer, even without capacity, would keep it alive.
            self.rx = BytesMut::new();
        }
    }

    /// [MQTT-3.1.4-6], §4.12: while the host holds a CONNECT that named an Authentication
    /// Method, the client's AUTH packets (and only those) are processed.
    fn auth_pending(&self) -> bool {
        self.phase == Phase::Authenticating
            && self.auth_method.is_some()
            && self.rx.first().is_some_and(|b| b >> 4 == codec::AUTH)
    }

    /// The network connection ended without a DISCONNECT.
    pub fn handle_network_closed(&mut self) {
        if self.phase != Phase::Closed {
            self.close(CloseReason::NetworkClosed);
        }
    }

    /// The instant at which `handle_timeout` must be called next.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Closed || self.keep_alive.is_zero() {
            return None;
        }
        // [MQTT-3.1.2-24]: one and a half times the keep alive.
        Some(self.last_received + self.keep_alive * 3 / 2)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.next_timeout()
            && now >= deadline
        {
            if self.protocol.is_v5() && self.phase == Phase::Connected {
                self.send_disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT, None);
            }
            self.close(CloseReason::KeepAliveTimeout);
        }
    }

    fn handle_packet(&mut self, packet: Packet, now: Instant) {
        if self.phase == Phase::AwaitConnect {
            return match packet {
                Packet::Connect(connect) => self.handle_connect(connect),
                other => self.violation(ProtocolError::FirstPacketNotConnect(other.name())),
            };
        }
        match packet {
            Packet::Connect(_) => self.violation(ProtocolError::SecondConnect),
            Packet::Publish(p) => self.handle_publish(p, now),
            Packet::PubAck(r) => self.handle_puback(r),
            Packet::PubRec(r) => self.handle_pubrec(r),
            Packet::PubRel(r) => self.handle_pubrel(r),
            Packet::PubComp(r) => self.handle_pubcomp(r),
            Packet::Subscribe(s) => self.handle_subscribe(s),
            Packet::Unsubscribe(u) => self.handle_unsubscribe(u),
            Packet::PingReq => self.write(&Packet::PingResp),
            Packet::Disconnect(d) => self.handle_disconnect(d),
            Packet::Auth(a) => self.handle_auth(a),
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => self.violation(ProtocolError::ServerOnlyPacket(other.name())),
        }
    }

    fn handle_connect(&mut self, connect: Box<Connect>) {
        self.protocol = connect.protocol;
        let props = &connect.properties;
        if self.protocol.is_v5() {
            self.client_receive_maximum = props.receive_maximum.unwrap_or(u16::MAX);
            self.client_max_packet_size = props.maximum_packet_size.unwrap_or(u32::MAX);
            self.client_topic_alias_maximum = props.topic_alias_maximum.unwrap_or(0);
            self.request_problem_information = props.request_problem_information != Some(0);
            self.auth_method = props.authentication_method.clone();
            if props.authentication_data.is_some() && self.auth_method.is_none() {
                // [MQTT-3.1.2-?]: authentication data without a method is a Protocol Error.
                return self.violation(ProtocolError::UnexpectedAuth);
            }
        }
        if let Some(will) = &connect.will {
            if let Err(e) = topic::validate_topic_name(&will.topic) {
                return self.violation(e);
            }
            if will.properties.payload_format_indicator == Some(1)
                && std::str::from_utf8(&will.payload).is_err()
            {
                return self.violation(ProtocolError::PayloadFormatInvalid(
                    "will payload is not UTF-8 but its payload format indicator says it is",
                ));
            }
        }
        if connect.client_id.is_empty() && !connect.clean_start && !self.protocol.is_v5() {
            // [MQTT-3.1.3-8]: 3.1.1 empty client id requires a clean session.
            self.write(&Packet::ConnAck(ConnAck {
                session_present: false,
                code: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                properties: Properties::default(),
            }));
            return self.close(CloseReason::Server(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID));
        }
        self.requested_session_expiry = if self.protocol.is_v5() {
            props.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        self.session_expiry = self
            .requested_session_expiry
            .min(self.config.max_session_expiry);
        self.requested_keep_alive = connect.keep_alive;
        self.keep_alive =
            Duration::from_secs(u64::from(self.effective_keep_alive(connect.keep_alive)));
        self.phase = Phase::Authenticating;
        self.events.push_back(Event::Connect(connect));
    }

    fn effective_keep_alive(&self, requested: u16) -> u16 {
        let cap = self.config.max_keep_alive;
        if cap != 0 && (requested == 0 || requested > cap) && self.protocol.is_v5() {
            cap
        } else {
            requested
        }
    }

    fn handle_publish(&mut self, mut p: Publish, now: Instant) {
        if p.qos == QoS::ExactlyOnce && self.state.inbound_qos2.contains(&p.packet_id) {
            // A resend of a message we already took: acknowledge again, route nothing
            // ([MQTT-4.3.3-10], method B).
            return self.write(&Packet::PubRec(PubResp {
                packet_id: p.packet_id,
                ..Default::default()
            }));
        }
        if p.qos == QoS::ExactlyOnce && self.qos2_pending.contains(&p.packet_id) {
            return; // still with the host; its PUBREC will follow
        }
        if p.qos != QoS::AtMostOnce {
            let in_flight =
                self.qos1_pending + self.qos2_pending.len() + self.state.inbound_qos2.len();
            if in_flight >= usize::from(self.config.receive_maximum) && self.protocol.is_v5() {
                // [MQTT-3.3.4-9]
                return self.violation(ProtocolError::ReceiveMaximumExceeded(
                    self.config.receive_maximum,
                ));
            }
        }
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias == 0 || alias > self.config.topic_alias_maximum {
                return self.violation(ProtocolError::TopicAliasInvalid {
                    alias,
                    max: self.config.topic_alias_maximum,
                });
            }
            if p.topic.is_empty() {
                match self.aliases_in.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => return self.violation(ProtocolError::TopicAliasUnknown(alias)),
                }
            } else {
                self.aliases_in.insert(alias, p.topic.clone());
            }
        }
        if let Err(e) = topic::validate_topic_name(&p.topic) {
            return self.violation(e);
        }
        if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            return self.violation(ProtocolError::PayloadFormatInvalid(
                "payload is not UTF-8 but its payload format indicator says it is",
            ));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            // [MQTT-3.3.4-6]: a client must not send Subscription Identifiers.
            return self.violation(ProtocolError::InvalidSubscriptionIdentifier);
        }
        let mut expiry = p.properties.message_expiry_interval.take();
        if let Some(cap) = self.config.max_message_expiry {
            expiry = Some(expiry.map_or(cap, |e| e.min(cap)));
        }
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.qos1_pending += 1,
            QoS::ExactlyOnce => self.qos2_pending.push(p.packet_id),
        }
        let message = Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            expires_at: expiry.map(|s| now + Duration::from_secs(u64::from(s))),
            origin: self.origin,
        };
        self.events.push_back(Event::Publish {
            message,
            packet_id: p.packet_id,
        });
    }

    /// The host routed (or refused) a QoS 1/2 PUBLISH. `code` is Success, or an error such as
    /// Not authorized / Quota exceeded; 3.1.1 clients always get a plain acknowledgement
    /// because 3.1.1 has no way to say no ([MQTT-3.3.5-2]).
    pub fn publish_done(
        &mut self,
        qos: QoS,
        packet_id: u16,
        code: ReasonCode,
        reason: Option<String>,
    ) {
        if self.phase == Phase::Closed {
            return;
        }
        let code = if self.protocol.is_v5() {
            code
        } else {
            ReasonCode::SUCCESS
        };
        let properties = self.reason_properties(reason);
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.qos1_pending = self.qos1_pending.saturating_sub(1);
                self.write(&Packet::PubAck(PubResp {
                    packet_id,
                    code,
                    properties,
                }));
            }
            QoS::ExactlyOnce => {
                self.qos2_pending.retain(|id| *id != packet_id);
                if code.is_success() {
                    self.state.inbound_qos2.push(packet_id);
                }
                self.write(&Packet::PubRec(PubResp {
                    packet_id,
                    code,
                    properties,
                }));
            }
        }
    }

    fn handle_pubrel(&mut self, r: PubResp) {
        let code = match self
            .state
            .inbound_qos2
            .iter()
            .position(|id| *id == r.packet_id)
        {
            Some(i) => {
                self.state.inbound_qos2.swap_remove(i);
                ReasonCode::SUCCESS
            }
            None => ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        };
        let code = if self.protocol.is_v5() {
            code
        } else {
            ReasonCode::SUCCESS
        };
        self.write(&Packet::PubComp(PubResp {
            packet_id: r.packet_id,
            code,
            properties: Properties::default(),
        }));
    }

    fn handle_puback(&mut self, r: PubResp) {
        if self.state.stage(r.packet_id) == Some(InflightStage::AwaitPubAck) {
            self.finish_inflight(r.packet_id);
            self.events.push_back(Event::WindowOpened);
        }
        // An unknown PUBACK is ignored: it may answer a message dropped by a takeover.
    }

    fn handle_pubrec(&mut self, r: PubResp) {
        match self.state.inflight.get_mut(r.packet_id) {
            Some(f) if f.stage == InflightStage::AwaitPubRec => {
                if r.code.is_success() {
                    f.stage = InflightStage::AwaitPubComp;
                    self.write(&Packet::PubRel(PubResp {
                        packet_id: r.packet_id,
                        ..Default::default()
                    }));
                } else {
                    // [MQTT-4.3.3-?]: a failed PUBREC ends the exchange.
                    self.finish_inflight(r.packet_id);
                    self.events.push_back(Event::WindowOpened);
                }
            }
            Some(_) => {
                // Duplicate PUBREC while we await PUBCOMP: repeat the PUBREL.
                self.write(&Packet::PubRel(PubResp {
                    packet_id: r.packet_id,
                    ..Default::default()
                }));
            }
            None => {
                let code = if self.protocol.is_v5() {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                } else {
                    ReasonCode::SUCCESS
                };
                self.write(&Packet::PubRel(PubResp {
                    packet_id: r.packet_id,
                    code,
                    properties: Properties::default(),
                }));
            }
        }
    }

    fn handle_pubcomp(&mut self, r: PubResp) {
        if self.state.stage(r.packet_id) == Some(InflightStage::AwaitPubComp) {
            self.finish_inflight(r.packet_id);
            self.events.push_back(Event::WindowOpened);
        }
    }

    fn handle_subscribe(&mut self, s: Subscribe) {
        if s.properties.subscription_identifiers.len() > 1
            || s.properties.subscription_identifiers.contains(&0)
        {
            return self.violation(ProtocolError::InvalidSubscriptionIdentifier);
        }
        for (filter, options) in &s.filters {
            if let Err(e) = topic::validate_topic_filter(filter) {
                if !self.protocol.is_v5() {
                    // 3.1.1 has no per-filter error except 0x80, and a malformed filter is a
                    // protocol violation there ([MQTT-4.7.3-?]): close.
                    return self.violation(e);
                }
                // v5: answered per filter with 0x8F by the host's SUBACK; keep going.
                continue;
            }
            if options.no_local && matches!(topic::parse_shared(filter), Ok(Some(_))) {
                // [MQTT-3.8.3-4]
                return self.violation(ProtocolError::NoLocalOnSharedSubscription);
            }
        }
        self.events.push_back(Event::Subscribe(s));
    }

    fn handle_unsubscribe(&mut self, u: Unsubscribe) {
        self.events.push_back(Event::Unsubscribe(u));
    }

    fn handle_disconnect(&mut self, d: Disconnect) {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.requested_session_expiry == 0 && expiry != 0 {
                // §3.14.2.2.2 (a client rule without a normative number)
                return self.violation(ProtocolError::SessionExpiryAfterZero);
            }
            self.session_expiry = expiry.min(self.config.max_session_expiry);
        }
        let with_will = d.code == ReasonCode::DISCONNECT_WITH_WILL;
        self.close(CloseReason::ClientDisconnect {
            code: d.code,
            with_will,
        });
    }

    fn handle_auth(&mut self, a: Auth) {
        if !self.protocol.is_v5() {
            return self.violation(ProtocolError::UnexpectedPacket("AUTH"));
        }
        let Some(expected) = self.auth_method.clone() else {
            return self.violation(ProtocolError::UnexpectedAuth);
        };
        let got = a
            .properties
            .authentication_method
            .clone()
            .unwrap_or_default();
        if got != expected {
            return self.violation(ProtocolError::AuthMethodMismatch { expected, got });
        }
        self.events.push_back(Event::Auth(a));
    }

    // ------------------------------------------------------------------ host answers

    /// Accept the CONNECT: send CONNACK, resume the session, resend what was unacknowledged.
    pub fn accept_connect(&mut self, accepted: ConnectAccepted, now: Instant) {
        if self.phase != Phase::Authenticating {
            return;
        }
        let mut properties = Properties::default();
        if self.protocol.is_v5() {
            properties.assigned_client_identifier = accepted.assigned_client_id;
            properties.receive_maximum = Some(self.config.receive_maximum);
            properties.maximum_packet_size = Some(self.config.max_packet_size);
            properties.topic_alias_maximum = Some(self.config.topic_alias_maximum);
            // [MQTT-4.12.0-5]: any successful CONNACK repeats the CONNECT's method.
            properties.authentication_method = self.auth_method.clone();
            properties.authentication_data = accepted.authentication_data;
            properties.user_properties = accepted.user_properties;
            let ka = self.keep_alive.as_secs() as u16;
            if ka != self.requested_keep_alive {
                properties.server_keep_alive = Some(ka);
            }
            properties.session_expiry_interval = Some(self.session_expiry);
        }
        self.write(&Packet::ConnAck(ConnAck {
            session_present: accepted.session_present,
            code: ReasonCode::SUCCESS,
            properties,
        }));
        self.phase = Phase::Connected;
        if let Some(state) = accepted.restored {
            self.state = state;
            self.resend_inflight(now);
        }
    }

    /// Continue an enhanced authentication exchange (AUTH 0x18), answer a re-authentication
    /// (AUTH 0x00 success / 0x18), before or after CONNACK.
    pub fn send_auth(&mut self, code: ReasonCode, data: Option<Bytes>, reason: Option<String>) {
        let mut properties = self.reason_properties(reason);
        properties.authentication_method = self.auth_method.clone();
        properties.authentication_data = data;
        self.write(&Packet::Auth(Auth { code, properties }));
    }

    /// Refuse the CONNECT with `code` (CONNACK, then close).
    pub fn reject_connect(&mut self, code: ReasonCode, reason: Option<String>) {
        let properties = self.reason_properties(reason);
        self.write(&Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties,
        }));
        self.close(CloseReason::Server(code));
    }

    pub fn send_suback(&mut self, packet_id: u16, codes: Vec<ReasonCode>) {
        self.write(&Packet::SubAck(SubAck {
            packet_id,
            codes,
            properties: Properties::default(),
        }));
    }

    pub fn send_unsuback(&mut self, packet_id: u16, codes: Vec<ReasonCode>) {
        let codes = if self.protocol.is_v5() {
            codes
        } else {
            Vec::new()
        };
        self.write(&Packet::UnsubAck(UnsubAck {
            packet_id,
            codes,
            properties: Properties::default(),
        }));
    }

    /// Server-initiated close: a v5 client gets DISCONNECT `code` first (takeover 0x8E,
    /// shutdown 0x8B, ...). `notify = false` closes silently, as credential expiry does.
    pub fn disconnect(&mut self, code: ReasonCode, reason: Option<String>, notify: bool) {
        if self.phase == Phase::Closed {
            return;
        }
        if notify && self.protocol.is_v5() && self.phase == Phase::Connected {
            self.send_disconnect(code, reason);
        }
        self.close(CloseReason::Server(code));
    }

    /// Offer one message for delivery. QoS 0 goes out at once; QoS 1/2 take a packet
    /// identifier if the window has room, and come back as `Err` if not (the host keeps it
    /// queued, in order). Expired messages and messages larger than the client accepts are
    /// dropped ([MQTT-3.3.2-5], [MQTT-3.1.2-25]) and reported as delivered.
    pub fn deliver(&mut self, delivery: Delivery, now: Instant) -> Result<(), Delivery> {
        if self.phase != Phase::Connected {
            return Err(delivery);
        }
        if delivery.message.is_expired(now) {
            self.complete(delivery.tag);
            return Ok(());
        }
        if delivery.qos != QoS::AtMostOnce && !self.window_open() {
            return Err(delivery);
        }
        let packet_id = if delivery.qos == QoS::AtMostOnce {
            0
        } else {
            self.state.allocate_packet_id()
        };
        if !self.write_publish(&delivery, packet_id, false, now) {
            self.complete(delivery.tag);
            return Ok(());
        }
        if delivery.qos != QoS::AtMostOnce {
            let stage = if delivery.qos == QoS::AtLeastOnce {
                InflightStage::AwaitPubAck
            } else {
                InflightStage::AwaitPubRec
            };
            self.state
                .inflight
                .push_back(packet_id, Inflight { delivery, stage });
        } else {
            self.complete(delivery.tag);
        }
        Ok(())
    }

    /// Tags of deliveries that are finished with (acknowledged, expired or undeliverable) since
    /// the last call. QoS 0 deliveries count as finished once written.
    pub fn take_completed(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.completed)
    }

    fn complete(&mut self, tag: u64) {
        if tag != 0 {
            self.completed.push(tag);
        }
    }

    fn finish_inflight(&mut self, packet_id: u16) {
        if let Some(f) = self.state.inflight.remove(packet_id) {
            self.complete(f.delivery.tag);
        }
    }

    /// Take the state that outlives the connection, when the connection is over.
    pub fn take_state(&mut self) -> SessionState {
        std::mem::take(&mut self.state)
    }

    // ------------------------------------------------------------------ output

    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > 0 {
            // Drained: an `Event` is a few hundred bytes, so an idle connection should not
            // keep room for several.
            self.events = VecDeque::new();
        }
        event
    }

    /// Bytes to write to the network, if any.
    pub fn take_transmit(&mut self) -> Option<BytesMut> {
        if self.tx.is_empty() {
            None
        } else {
            // The whole buffer goes, capacity included (`split` would leave the rest of the
            // allocation here, alive for as long as the connection idles).
            Some(std::mem::take(&mut self.tx))
        }
    }

    /// Encoded bytes not yet taken by `take_transmit`.
    pub fn transmit_len(&self) -> usize {
        self.tx.len()
    }

    // ------------------------------------------------------------------ internals

    fn resend_inflight(&mut self, now: Instant) {
        // [MQTT-4.4.0-1]: resend unacknowledged PUBLISH (DUP=1) and PUBREL, in order.
        let inflight = std::mem::take(&mut self.state.inflight);
        for (packet_id, entry) in inflight {
            match entry.stage {
                InflightStage::AwaitPubComp => self.write(&Packet::PubRel(PubResp {
                    packet_id,
                    ..Default::default()
                })),
                _ => {
                    if !self.write_publish(&entry.delivery, packet_id, true, now) {
                        // [MQTT-3.1.2-25]: too large for this connection; discarded as if
                        // sent and acknowledged, so it must not keep a window slot.
                        self.complete(entry.delivery.tag);
                        continue;
                    }
                }
            }
            self.state.inflight.push_back(packet_id, entry);
        }
    }

    /// Encode one outgoing PUBLISH; false if it was dropped for being too large.
    ///
    /// Written through a borrowed [`codec::PublishView`]: the message is shared by every
    /// subscriber, so neither its topic nor its properties are cloned per delivery.
    fn write_publish(&mut self, d: &Delivery, packet_id: u16, dup: bool, now: Instant) -> bool {
        if self.phase == Phase::Closed {
            return false;
        }
        let m = &d.message;
        let v5 = self.protocol.is_v5();
        let mut topic = m.topic.as_str();
        let mut topic_alias = None;
        let mut new_alias = None;
        let mut message_expiry_interval = None;
        if v5 {
            if let Some(at) = m.expires_at {
                let left = at.saturating_duration_since(now);
                // Round up so that a message with 0.4 s left does not claim to be expired.
                message_expiry_interval = Some(left.as_secs_f64().ceil() as u32);
            }
            if self.client_topic_alias_maximum > 0 {
                if let Some(alias) = self.aliases_out.get(&m.topic) {
                    topic_alias = Some(*alias);
                    topic = "";
                } else if self.aliases_out.len() < usize::from(self.client_topic_alias_maximum) {
                    // Registered only once the packet is known to go out (below): the
                    // client learns an alias from the packet that carries it.
                    new_alias = Some(self.aliases_out.len() as u16 + 1);
                    topic_alias = new_alias;
                }
            }
        }
        let view = codec::PublishView {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id,
            payload: &m.payload,
            properties: &m.properties,
            message_expiry_interval,
            topic_alias,
            subscription_identifiers: if v5 { &d.subscription_ids } else { &[] },
        };
        // [MQTT-3.1.2-25]: a PUBLISH the client cannot accept is discarded, never trimmed.
        if codec::publish_view_len(&view, self.protocol) > self.client_max_packet_size as usize {
            return false;
        }
        codec::encode_publish_view(&view, self.protocol, &mut self.tx);
        if let Some(alias) = new_alias {
            self.aliases_out.insert(m.topic.clone(), alias);
        }
        true
    }

    fn send_disconnect(&mut self, code: ReasonCode, reason: Option<String>) {
        let properties = self.reason_properties(reason);
        self.write(&Packet::Disconnect(Disconnect { code, properties }));
    }

    fn reason_properties(&self, reason: Option<String>) -> Properties {
        let mut properties = Properties::default();
        if self.protocol.is_v5() && self.request_problem_information {
            properties.reason_string = reason.map(truncate_reason);
        }
        properties
    }

    fn write(&mut self, packet: &Packet) {
        if self.phase == Phase::Closed {
            return;
        }
        let mut packet_len = codec::encoded_len(packet, self.protocol);
        if packet_len > self.client_max_packet_size as usize {
            // Only non-PUBLISH packets reach here; drop their reason string and user
            // properties, which the spec allows to be omitted for this reason.
            let mut trimmed = packet.clone();
            strip_optional_properties(&mut trimmed);
            packet_len = codec::encoded_len(&trimmed, self.protocol);
            if packet_len > self.client_max_packet_size as usize {
                return;
            }
            return codec::encode(&trimmed, self.protocol, &mut self.tx);
        }
        self.tx.reserve(packet_len);
        codec::encode(packet, self.protocol, &mut self.tx);
    }

    fn violation(&mut self, e: ProtocolError) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.protocol.is_v5() {
            let code = e.reason_code();
            match self.phase {
                Phase::Connected => self.send_disconnect(code, Some(e.to_string())),
                Phase::AwaitConnect | Phase::Authenticating => {
                    // A CONNECT-stage failure is answered with CONNACK ([MQTT-4.13.1-1]).
                    let properties = self.reason_properties(Some(e.to_string()));
                    self.write(&Packet::ConnAck(ConnAck {
                        session_present: false,
                        code,
                        properties,
                    }));
                }
                Phase::Closed => {}
            }
        } else if let ProtocolError::UnsupportedProtocolLevel(_) = e {
            // 3.1.1 §3.2.2.3: return code 1 for an unacceptable protocol level.
            self.write(&Packet::ConnAck(ConnAck {
                session_present: false,
                code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                properties: Properties::default(),
            }));
        }
        self.close(CloseReason::Violation(e));
    }

    fn close(&mut self, reason: CloseReason) {
        self.phase = Phase::Closed;
        self.events.push_back(Event::Closed(reason));
    }
}

/// Longest Reason String the server sends. Error messages quote what the client sent (a topic
/// of up to 65,535 bytes, `{:?}`-escaped so up to six times longer), and an MQTT string cannot
/// exceed 65,535 bytes. Found by the `session` fuzz target.
const MAX_REASON_STRING: usize = 1024;

/// Cut `reason` to at most [`MAX_REASON_STRING`] bytes, on a character boundary.
fn truncate_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_STRING {
        let mut end = MAX_REASON_STRING;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

fn strip_optional_properties(packet: &mut Packet) {
    let props = match packet {
        Packet::ConnAck(p) => &mut p.properties,
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            &mut p.properties
        }
        Packet::SubAck(p) => &mut p.properties,
        Packet::UnsubAck(p) => &mut p.properties,
        Packet::Disconnect(p) => &mut p.properties,
        Packet::Auth(p) => &mut p.properties,
        _ => return,
    };
    props.reason_string = None;
    props.user_properties.clear();
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
