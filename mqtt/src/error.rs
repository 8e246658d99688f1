//! Protocol violations: one typed error per normative rule, each citing the clause it enforces.
//!
//! This is the single place where a violation is mapped to the v5 reason code the server sends
//! in its DISCONNECT (or CONNACK, before the session exists). For 3.1.1 the rule is simpler:
//! every violation closes the network connection without a packet ([MQTT-4.8.0-1]).
//! Authentication and authorization outcomes are not violations and live elsewhere.

use crate::reason::ReasonCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    // ---- framing and decoding (Malformed Packet unless stated) ----
    #[error(
        "[MQTT-2.1.3-1] reserved fixed header flags {flags:#06b} for packet type {packet_type}"
    )]
    InvalidHeaderFlags { packet_type: u8, flags: u8 },
    #[error("[MQTT-2.1.2] reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("[MQTT-1.5.5-1] variable byte integer longer than four bytes")]
    MalformedVarInt,
    #[error("[MQTT-3.1.2-2] packet of {size} bytes exceeds the maximum packet size {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("[MQTT-1.5.4-1] string is not valid UTF-8")]
    InvalidUtf8,
    #[error("[MQTT-1.5.4-2] string contains U+0000")]
    NullCharacter,
    #[error("[MQTT-2.2.1] packet ended early: {0}")]
    Truncated(&'static str),
    #[error("[MQTT-2.1.4] {0} bytes left over after the packet's fields")]
    TrailingBytes(usize),
    #[error("[MQTT-3.1.2-1] protocol name {0:?} is not MQTT")]
    InvalidProtocolName(String),
    #[error("[MQTT-3.1.2-2] unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    #[error("[MQTT-3.1.2-3] CONNECT reserved flag is set")]
    ConnectReservedFlag,
    #[error("[MQTT-3.1.2-11] will QoS/retain set without the will flag")]
    WillFlagsWithoutWill,
    #[error("[MQTT-3.1.2-12] will QoS 3 is invalid")]
    InvalidWillQoS,
    #[error("[MQTT-3.1.2-22] password flag set without user name flag (3.1.1)")]
    PasswordWithoutUsername,
    #[error("[MQTT-3.3.1-4] PUBLISH with QoS 3")]
    InvalidQoS,
    #[error("[MQTT-3.3.1-2] DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    #[error("[MQTT-2.2.1-3] packet identifier is zero")]
    ZeroPacketId,
    #[error("[MQTT-2.2.2-1] property {0:#04x} is unknown")]
    UnknownProperty(u8),
    #[error("[MQTT-2.2.2-2] property {id:#04x} is not allowed in {packet}")]
    PropertyNotAllowed { id: u8, packet: &'static str },
    #[error("[MQTT-2.2.2-2] property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    #[error("[MQTT-3.3.2-2] property {id:#04x} has invalid value {value}")]
    InvalidPropertyValue { id: u8, value: u32 },
    #[error("[MQTT-3.8.3-3] SUBSCRIBE contains no topic filter")]
    EmptySubscribe,
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE contains no topic filter")]
    EmptyUnsubscribe,
    #[error("[MQTT-3.8.3-5] reserved bits set in subscription options")]
    SubscriptionOptionsReserved,
    #[error("[MQTT-3.8.3-4] retain handling value 3 is invalid")]
    InvalidRetainHandling,
    #[error("[MQTT-3.2.2.1] reserved bits set in CONNACK acknowledge flags {0:#04x}")]
    ConnAckReservedFlags(u8),
    #[error("[MQTT-3.8.3.1] subscription option QoS 3 is invalid")]
    InvalidSubscriptionQoS,
    #[error("[MQTT-3.1.3-4] {0} packet is only sent by the server")]
    ServerOnlyPacket(&'static str),

    // ---- topic rules ----
    #[error("[MQTT-3.3.2-2] PUBLISH topic name {0:?} contains a wildcard")]
    WildcardInTopicName(String),
    #[error("[MQTT-4.7.3-1] topic name or filter is empty")]
    EmptyTopic,
    #[error("[MQTT-4.7.3-3] topic name or filter is {0} bytes, more than 65535")]
    TopicTooLong(usize),
    #[error("[MQTT-4.7.1-2] topic filter {0:?} uses '#' other than as the last whole level")]
    InvalidMultiLevelWildcard(String),
    #[error("[MQTT-4.7.1-3] topic filter {0:?} uses '+' other than as a whole level")]
    InvalidSingleLevelWildcard(String),
    #[error("[MQTT-4.8.2-1] shared subscription {0:?} is malformed")]
    InvalidSharedSubscription(String),
    #[error("[MQTT-3.8.3-4] No Local set on a shared subscription")]
    NoLocalOnSharedSubscription,

    // ---- session rules ----
    #[error("[MQTT-3.1.0-1] first packet was {0}, not CONNECT")]
    FirstPacketNotConnect(&'static str),
    #[error("[MQTT-3.1.0-2] second CONNECT on one connection")]
    SecondConnect,
    #[error("[MQTT-3.3.2-8] topic alias {alias} is outside 1..={max}")]
    TopicAliasInvalid { alias: u16, max: u16 },
    #[error("[MQTT-3.3.4-1] PUBLISH refers to topic alias {0} that was never set")]
    TopicAliasUnknown(u16),
    #[error("[MQTT-3.3.4-7] more than Receive Maximum ({0}) QoS>0 PUBLISH packets in flight")]
    ReceiveMaximumExceeded(u16),
    #[error("[MQTT-3.2.2-11] QoS {0} exceeds the server's Maximum QoS")]
    QoSNotSupported(u8),
    #[error("[MQTT-3.2.2-14] retained message sent although Retain Available is 0")]
    RetainNotSupported,
    #[error("[MQTT-3.8.3-1] subscription identifier 0 or a second identifier in SUBSCRIBE")]
    InvalidSubscriptionIdentifier,
    #[error("[MQTT-3.14.2.2.2] DISCONNECT sets Session Expiry Interval although CONNECT had 0")]
    SessionExpiryAfterZero,
    #[error("[MQTT-4.12.0-1] AUTH received but the connection uses no authentication method")]
    UnexpectedAuth,
    #[error("[MQTT-4.12.0-4] AUTH uses method {got:?}, not the CONNECT's {expected:?}")]
    AuthMethodMismatch { expected: String, got: String },
    #[error("[MQTT-3.1.2-24] keep alive timed out after {0} ms")]
    KeepAliveTimeout(u64),
    #[error("[MQTT-3.1.2-7] {0}")]
    PayloadFormatInvalid(&'static str),
    #[error("[MQTT-3.6.1-1] PUBREL for unknown packet identifier {0}")]
    PacketIdNotFound(u16),
    #[error("[MQTT-4.3.3-3] packet {0} received before it is allowed")]
    UnexpectedPacket(&'static str),
}

impl ProtocolError {
    /// The v5 reason code for a server DISCONNECT (or CONNACK) caused by this violation.
    pub fn reason_code(&self) -> ReasonCode {
        use ProtocolError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            UnsupportedProtocolLevel(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            WildcardInTopicName(_) => ReasonCode::TOPIC_NAME_INVALID,
            InvalidMultiLevelWildcard(_)
            | InvalidSingleLevelWildcard(_)
            | InvalidSharedSubscription(_) => ReasonCode::TOPIC_FILTER_INVALID,
            TopicAliasInvalid { .. } | TopicAliasUnknown(_) => ReasonCode::TOPIC_ALIAS_INVALID,
            ReceiveMaximumExceeded(_) => ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
            QoSNotSupported(_) => ReasonCode::QOS_NOT_SUPPORTED,
            RetainNotSupported => ReasonCode::RETAIN_NOT_SUPPORTED,
            KeepAliveTimeout(_) => ReasonCode::KEEP_ALIVE_TIMEOUT,
            PayloadFormatInvalid(_) => ReasonCode::PAYLOAD_FORMAT_INVALID,
            AuthMethodMismatch { .. } => ReasonCode::BAD_AUTHENTICATION_METHOD,
            FirstPacketNotConnect(_)
            | SecondConnect
            | InvalidSubscriptionIdentifier
            | SessionExpiryAfterZero
            | UnexpectedAuth
            | PacketIdNotFound(_)
            | UnexpectedPacket(_)
            | NoLocalOnSharedSubscription
            | DuplicateProperty(_)
            | InvalidPropertyValue { .. }
            | InvalidSubscriptionQoS
            | ServerOnlyPacket(_) => ReasonCode::PROTOCOL_ERROR,
            InvalidHeaderFlags { .. }
            | ReservedPacketType(_)
            | MalformedVarInt
            | InvalidUtf8
            | NullCharacter
            | Truncated(_)
            | TrailingBytes(_)
            | InvalidProtocolName(_)
            | ConnectReservedFlag
            | WillFlagsWithoutWill
            | InvalidWillQoS
            | PasswordWithoutUsername
            | InvalidQoS
            | DupOnQoS0
            | ZeroPacketId
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | EmptySubscribe
            | EmptyUnsubscribe
            | SubscriptionOptionsReserved
            | InvalidRetainHandling
            | ConnAckReservedFlags(_)
            | EmptyTopic
            | TopicTooLong(_) => ReasonCode::MALFORMED_PACKET,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_cites_a_clause() {
        let samples = [
            ProtocolError::InvalidQoS,
            ProtocolError::PacketTooLarge { size: 10, max: 5 },
            ProtocolError::TopicAliasUnknown(3),
            ProtocolError::KeepAliveTimeout(1500),
        ];
        for e in samples {
            assert!(e.to_string().starts_with("[MQTT-"), "{e}");
        }
        assert_eq!(
            ProtocolError::PacketTooLarge { size: 10, max: 5 }.reason_code(),
            ReasonCode::PACKET_TOO_LARGE
        );
        assert_eq!(
            ProtocolError::WildcardInTopicName("a/#".into()).reason_code(),
            ReasonCode::TOPIC_NAME_INVALID
        );
    }
}
