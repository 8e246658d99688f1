//! The in-memory form of every MQTT control packet, a v5 superset.
//!
//! A 3.1.1 packet is the same struct with empty [`Properties`] and v5-only fields at their
//! defaults; the codec decides what goes on the wire for each protocol version. These are plain
//! data types: no validation beyond what the types express lives here (see `codec` for wire
//! rules and `session` for protocol rules).

use bytes::Bytes;

use crate::reason::ReasonCode;

/// The protocol level carried in CONNECT. 3.1 (`MQIsdp`, level 3) is accepted and handled as 3.1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    V31,
    #[default]
    V311,
    V5,
}

impl Protocol {
    pub fn is_v5(self) -> bool {
        matches!(self, Protocol::V5)
    }
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Every v5 property. Which ones a packet may carry is enforced by the codec
/// ([MQTT-2.2.2-2]: a property not allowed in a packet is a Protocol Error... we treat it as
/// Malformed, as the spec's property table makes it a decode failure).
///
/// `Debug` is written by hand so that authentication data never reaches a log.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// PUBLISH server→client may carry several; SUBSCRIBE carries at most one.
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Properties");
        macro_rules! opt {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field { d.field(stringify!($field), v); }
            )*};
        }
        opt!(
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            session_expiry_interval,
            assigned_client_identifier,
            server_keep_alive,
            authentication_method,
            request_problem_information,
            will_delay_interval,
            request_response_information,
            response_information,
            server_reference,
            reason_string,
            receive_maximum,
            topic_alias_maximum,
            topic_alias,
            maximum_qos,
            retain_available,
            maximum_packet_size,
            wildcard_subscription_available,
            subscription_identifier_available,
            shared_subscription_available
        );
        if let Some(data) = &self.authentication_data {
            d.field(
                "authentication_data",
                &format_args!("<{} bytes redacted>", data.len()),
            );
        }
        if !self.subscription_identifiers.is_empty() {
            d.field("subscription_identifiers", &self.subscription_identifiers);
        }
        if !self.user_properties.is_empty() {
            d.field("user_properties", &self.user_properties);
        }
        d.finish()
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResp),
    PubRec(PubResp),
    PubRel(PubResp),
    PubComp(PubResp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The packet type name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
}

/// CONNECT. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("protocol", &self.protocol)
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("client_id", &self.client_id)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("properties", &self.properties)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ConnAck {
    pub session_present: bool,
    /// v5 reason code; the encoder maps it to a 3.1.1 return code.
    pub code: ReasonCode,
    pub properties: Properties,
}

#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in v5 when a topic alias stands for it.
    pub topic: String,
    /// Zero for QoS 0 (no identifier on the wire).
    pub packet_id: u16,
    pub payload: Bytes,
    pub properties: Properties,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PubResp {
    pub packet_id: u16,
    pub code: ReasonCode,
    pub properties: Properties,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SubOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0 = send retained on subscribe, 1 = only if the subscription is new, 2 = never.
    pub retain_handling: u8,
}

#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Subscribe {
    pub packet_id: u16,
    pub filters: Vec<(String, SubOptions)>,
    pub properties: Properties,
}

#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SubAck {
    pub packet_id: u16,
    /// One per filter: granted QoS (0..2) or a failure code (>= 0x80).
    pub codes: Vec<ReasonCode>,
    pub properties: Properties,
}

#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<String>,
    pub properties: Properties,
}

#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// Empty on 3.1.1 (which has no per-filter codes).
    pub codes: Vec<ReasonCode>,
    pub properties: Properties,
}

#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Disconnect {
    pub code: ReasonCode,
    pub properties: Properties,
}

#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Auth {
    pub code: ReasonCode,
    pub properties: Properties,
}
