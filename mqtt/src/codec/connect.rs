//! CONNECT (§3.1) and CONNACK (§3.2) bodies.
//!
//! CONNECT is the one packet that names its own protocol version, so its decoder ignores the
//! connection's protocol and reports an unknown level as its own error, letting the broker
//! answer with the right CONNACK. Client identifier rules, authentication and the will topic's
//! syntax are left to the session.

use bytes::{BufMut, BytesMut};

use super::primitives::{Reader, prefixed_len, put_u16_prefixed};
use super::properties::{self, Ctx};
use crate::error::ProtocolError;
use crate::packet::{ConnAck, Connect, Packet, Properties, Protocol, QoS, Will};
use crate::reason::ReasonCode;

const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

const SESSION_PRESENT: u8 = 0x01;

fn protocol_name(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::V31 => b"MQIsdp",
        Protocol::V311 | Protocol::V5 => b"MQTT",
    }
}

pub(super) fn decode_connect(r: &mut Reader) -> Result<Packet, ProtocolError> {
    let name = r.binary("protocol name")?;
    let level = r.u8("protocol level")?;
    let protocol = match (&name[..], level) {
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        // A known name with a level we do not speak is the one case [MQTT-3.1.2-2] wants
        // answered (CONNACK 0x84 / return code 1) rather than just dropped, so it is checked
        // before any other field whose layout might differ in that version.
        (b"MQTT" | b"MQIsdp", _) => return Err(ProtocolError::UnsupportedProtocolLevel(level)),
        _ => {
            return Err(ProtocolError::InvalidProtocolName(
                String::from_utf8_lossy(&name).into_owned(),
            ));
        }
    };
    let v5 = protocol.is_v5();

    let flags = r.u8("connect flags")?;
    if flags & RESERVED != 0 {
        return Err(ProtocolError::ConnectReservedFlag);
    }
    let will_flag = flags & WILL != 0;
    let will_qos = (flags >> WILL_QOS_SHIFT) & 0x03;
    let will_retain = flags & WILL_RETAIN != 0;
    if will_qos == 3 {
        return Err(ProtocolError::InvalidWillQoS);
    }
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(ProtocolError::WillFlagsWithoutWill);
    }
    let has_username = flags & USERNAME != 0;
    let has_password = flags & PASSWORD != 0;
    // v5 dropped this rule so that a password can carry a token without a user name.
    if has_password && !has_username && !v5 {
        return Err(ProtocolError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = if v5 {
        properties::decode(r, Ctx::CONNECT)?
    } else {
        Properties::default()
    };

    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = if v5 {
            properties::decode(r, Ctx::WILL)?
        } else {
            Properties::default()
        };
        let topic = r.string("will topic")?;
        let payload = r.binary("will payload")?;
        Some(Will {
            topic,
            payload,
            // 3 was rejected above.
            qos: QoS::from_u8(will_qos).ok_or(ProtocolError::InvalidWillQoS)?,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary("password")?)
    } else {
        None
    };

    Ok(Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })))
}

pub(super) fn connect_len(c: &Connect) -> usize {
    let v5 = c.protocol.is_v5();
    // protocol name, level, flags, keep alive
    let mut n = prefixed_len(protocol_name(c.protocol).len()) + 1 + 1 + 2;
    if v5 {
        n += properties::encoded_len(&c.properties);
    }
    n += prefixed_len(c.client_id.len());
    if let Some(w) = &c.will {
        if v5 {
            n += properties::encoded_len(&w.properties);
        }
        n += prefixed_len(w.topic.len()) + prefixed_len(w.payload.len());
    }
    n += c.username.as_ref().map_or(0, |u| prefixed_len(u.len()));
    n += c.password.as_ref().map_or(0, |p| prefixed_len(p.len()));
    n
}

pub(super) fn encode_connect(c: &Connect, out: &mut BytesMut) {
    let v5 = c.protocol.is_v5();
    put_u16_prefixed(out, protocol_name(c.protocol));
    out.put_u8(c.protocol.level());
    let mut flags = 0;
    if c.clean_start {
        flags |= CLEAN_START;
    }
    if let Some(w) = &c.will {
        flags |= WILL | (w.qos as u8) << WILL_QOS_SHIFT;
        if w.retain {
            flags |= WILL_RETAIN;
        }
    }
    if c.username.is_some() {
        flags |= USERNAME;
    }
    if c.password.is_some() {
        flags |= PASSWORD;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if v5 {
        properties::encode(&c.properties, out);
    }
    put_u16_prefixed(out, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        if v5 {
            properties::encode(&w.properties, out);
        }
        put_u16_prefixed(out, w.topic.as_bytes());
        put_u16_prefixed(out, &w.payload);
    }
    if let Some(u) = &c.username {
        put_u16_prefixed(out, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_u16_prefixed(out, p);
    }
}

pub(super) fn decode_connack(protocol: Protocol, r: &mut Reader) -> Result<Packet, ProtocolError> {
    let ack_flags = r.u8("connect acknowledge flags")?;
    if ack_flags & !SESSION_PRESENT != 0 {
        return Err(ProtocolError::ConnAckReservedFlags(ack_flags));
    }
    let code = r.u8("connect reason code")?;
    let (code, properties) = if protocol.is_v5() {
        (ReasonCode(code), properties::decode(r, Ctx::CONNACK)?)
    } else {
        (ReasonCode::from_v3_connack(code), Properties::default())
    };
    Ok(Packet::ConnAck(ConnAck {
        session_present: ack_flags & SESSION_PRESENT != 0,
        code,
        properties,
    }))
}

pub(super) fn connack_len(c: &ConnAck, protocol: Protocol) -> usize {
    // Unlike the acknowledgements, CONNACK has no short form: v5 always carries the property
    // length.
    2 + if protocol.is_v5() {
        properties::encoded_len(&c.properties)
    } else {
        0
    }
}

pub(super) fn encode_connack(c: &ConnAck, protocol: Protocol, out: &mut BytesMut) {
    out.put_u8(if c.session_present {
        SESSION_PRESENT
    } else {
        0
    });
    if protocol.is_v5() {
        out.put_u8(c.code.0);
        properties::encode(&c.properties, out);
    } else {
        out.put_u8(c.code.to_v3_connack());
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::test_util::{assert_encodes, decode_err, decode_ok, golden, round_trip};
    use super::*;

    fn connect(protocol: Protocol) -> Connect {
        Connect {
            protocol,
            clean_start: true,
            keep_alive: 0,
            client_id: String::new(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }
    }

    fn packet(c: Connect) -> Packet {
        Packet::Connect(Box::new(c))
    }

    #[test]
    fn v311_connect_minimal() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x0C,                         // CONNECT, remaining length 12
            0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
            0x04,                               // level 4
            0x02,                               // clean session
            0x00, 0x00,                         // keep alive 0
            0x00, 0x00,                         // empty client identifier
        ];
        golden(&bytes, Protocol::V311, &packet(connect(Protocol::V311)));
    }

    #[test]
    fn v311_connect_with_will_user_and_password() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x25,                         // CONNECT, remaining length 37
            0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
            0x04,                               // level 4
            0xEE,                               // user, password, will retain, will QoS 1, will, clean
            0x00, 0x3C,                         // keep alive 60
            0x00, 0x03, b'a', b'b', b'c',       // client identifier
            0x00, 0x03, b'w', b'/', b't',       // will topic
            0x00, 0x03, b'b', b'y', b'e',       // will payload
            0x00, 0x04, b'u', b's', b'e', b'r', // user name
            0x00, 0x04, b'p', b'a', b's', b's', // password
        ];
        let c = Connect {
            keep_alive: 60,
            client_id: "abc".into(),
            will: Some(Will {
                topic: "w/t".into(),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Properties::default(),
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"pass")),
            ..connect(Protocol::V311)
        };
        golden(&bytes, Protocol::V311, &packet(c));
    }

    #[test]
    fn v31_connect_uses_mqisdp() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x10,                                     // CONNECT, remaining length 16
            0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', // protocol name
            0x03,                                           // level 3
            0x00,                                           // no flags: persistent session
            0x00, 0x0A,                                     // keep alive 10
            0x00, 0x02, b'c', b'1',                         // client identifier
        ];
        let c = Connect {
            clean_start: false,
            keep_alive: 10,
            client_id: "c1".into(),
            ..connect(Protocol::V31)
        };
        // The connection's protocol is irrelevant to CONNECT.
        golden(&bytes, Protocol::V31, &packet(c.clone()));
        assert_eq!(decode_ok(&bytes, Protocol::V5), packet(c));
    }

    #[test]
    fn v5_connect_with_properties_and_will_properties() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x30,                         // CONNECT, remaining length 48
            0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
            0x05,                               // level 5
            0x96,                               // user name, will QoS 2, will, clean start
            0x00, 0x1E,                         // keep alive 30
            0x0F,                               // properties: 15 bytes
            0x11, 0x00, 0x00, 0x0E, 0x10,       //   session expiry interval 3600
            0x21, 0x00, 0x14,                   //   receive maximum 20
            0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k=v
            0x00, 0x02, b'i', b'd',             // client identifier
            0x07,                               // will properties: 7 bytes
            0x01, 0x01,                         //   payload format indicator 1
            0x18, 0x00, 0x00, 0x00, 0x05,       //   will delay interval 5
            0x00, 0x01, b't',                   // will topic
            0x00, 0x02, b'h', b'i',             // will payload
            0x00, 0x01, b'u',                   // user name
        ];
        let c = Connect {
            keep_alive: 30,
            client_id: "id".into(),
            will: Some(Will {
                topic: "t".into(),
                payload: Bytes::from_static(b"hi"),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: Properties {
                    payload_format_indicator: Some(1),
                    will_delay_interval: Some(5),
                    ..Properties::default()
                },
            }),
            username: Some("u".into()),
            properties: Properties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(20),
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            },
            ..connect(Protocol::V5)
        };
        golden(&bytes, Protocol::V5, &packet(c));
    }

    #[test]
    fn v5_allows_password_without_user_name() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x12,                         // CONNECT, remaining length 18
            0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
            0x05,                               // level 5
            0x42,                               // password, clean start
            0x00, 0x00,                         // keep alive 0
            0x00,                               // no properties
            0x00, 0x00,                         // empty client identifier
            0x00, 0x03, b't', b'o', b'k',       // password
        ];
        let c = Connect {
            password: Some(Bytes::from_static(b"tok")),
            ..connect(Protocol::V5)
        };
        golden(&bytes, Protocol::V5, &packet(c));
    }

    #[test]
    fn v5_connect_round_trip_with_every_allowed_property() {
        let c = Connect {
            keep_alive: 65535,
            client_id: "client-ü".into(),
            will: Some(Will {
                topic: "will/topic".into(),
                payload: Bytes::from(vec![0u8; 300]),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: Properties {
                    payload_format_indicator: Some(0),
                    message_expiry_interval: Some(u32::MAX),
                    content_type: Some("text/plain".into()),
                    response_topic: Some("resp".into()),
                    correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                    will_delay_interval: Some(10),
                    user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
                    ..Properties::default()
                },
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"\xFF\x00")),
            properties: Properties {
                session_expiry_interval: Some(0xFFFF_FFFF),
                authentication_method: Some("SCRAM-SHA-1".into()),
                authentication_data: Some(Bytes::from_static(b"client-first")),
                request_problem_information: Some(0),
                request_response_information: Some(1),
                receive_maximum: Some(1),
                topic_alias_maximum: Some(10),
                user_properties: vec![("x".into(), "y".into())],
                maximum_packet_size: Some(1024),
                ..Properties::default()
            },
            ..connect(Protocol::V5)
        };
        round_trip(&packet(c), Protocol::V5);
    }

    #[test]
    fn v311_encoding_drops_properties() {
        let mut c = connect(Protocol::V311);
        c.properties.session_expiry_interval = Some(5);
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x0C,
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00,
            0x00, 0x00,
        ];
        assert_encodes(&packet(c), Protocol::V311, &bytes);
    }

    #[test]
    fn rejects_unknown_protocol_name() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x0C,
            0x00, 0x04, b'M', b'Q', b'T', b'X', // not MQTT
            0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V311),
            ProtocolError::InvalidProtocolName("MQTX".into())
        );
    }

    #[test]
    fn rejects_unknown_level_before_reading_the_rest() {
        // Level 6 with a body we could not parse anyway: the level is what gets reported.
        let bytes = [0x10, 0x08, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0xFF];
        assert_eq!(
            decode_err(&bytes, Protocol::V311),
            ProtocolError::UnsupportedProtocolLevel(6)
        );
        // MQIsdp is only 3.1; MQTT is never level 3.
        let bytes = [
            0x10, 0x09, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x04,
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V311),
            ProtocolError::UnsupportedProtocolLevel(4)
        );
        let bytes = [0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x03];
        assert_eq!(
            decode_err(&bytes, Protocol::V311),
            ProtocolError::UnsupportedProtocolLevel(3)
        );
    }

    /// A v3.1.1 CONNECT with the given flags byte and an empty client identifier.
    fn with_flags(flags: u8) -> [u8; 14] {
        [
            0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, flags, 0x00, 0x00, 0x00, 0x00,
        ]
    }

    #[test]
    fn rejects_bad_connect_flags() {
        let v3 = Protocol::V311;
        assert_eq!(
            decode_err(&with_flags(0x03), v3),
            ProtocolError::ConnectReservedFlag
        );
        // will QoS 1 without the will flag
        assert_eq!(
            decode_err(&with_flags(0x0A), v3),
            ProtocolError::WillFlagsWithoutWill
        );
        // will retain without the will flag
        assert_eq!(
            decode_err(&with_flags(0x22), v3),
            ProtocolError::WillFlagsWithoutWill
        );
        // will QoS 3
        assert_eq!(
            decode_err(&with_flags(0x1E), v3),
            ProtocolError::InvalidWillQoS
        );
        // password without user name
        assert_eq!(
            decode_err(&with_flags(0x42), v3),
            ProtocolError::PasswordWithoutUsername
        );
    }

    #[test]
    fn rejects_missing_and_extra_fields() {
        // user name flag set but no user name follows
        assert_eq!(
            decode_err(&with_flags(0x82), Protocol::V311),
            ProtocolError::Truncated("user name")
        );
        // will flag set but no will topic follows
        assert_eq!(
            decode_err(&with_flags(0x06), Protocol::V311),
            ProtocolError::Truncated("will topic")
        );
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x0D,
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
            0xAA, // nothing announced this byte
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V311),
            ProtocolError::TrailingBytes(1)
        );
        // client identifier length 5 but only 1 byte left in the packet
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x0D,
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00, 0x00, 0x05, b'a',
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V311),
            ProtocolError::Truncated("client identifier")
        );
    }

    #[test]
    fn rejects_bad_client_identifier_strings() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x0E,
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00,
            0x00, 0x02, 0xC3, 0x28, // invalid UTF-8 sequence
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V311),
            ProtocolError::InvalidUtf8
        );
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x0E,
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00,
            0x00, 0x02, b'a', 0x00, // U+0000
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V311),
            ProtocolError::NullCharacter
        );
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x0F,
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x00,
            0x00, 0x03, 0xED, 0xA0, 0x80, // UTF-16 surrogate U+D800 [MQTT-1.5.4-1]
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V311),
            ProtocolError::InvalidUtf8
        );
    }

    #[test]
    fn rejects_properties_outside_their_packet() {
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x10,
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00,
            0x03, 0x23, 0x00, 0x01, // topic alias: PUBLISH only
            0x00, 0x00,
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V5),
            ProtocolError::PropertyNotAllowed {
                id: 0x23,
                packet: "CONNECT"
            }
        );
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x12,
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00,
            0x05, 0x18, 0x00, 0x00, 0x00, 0x01, // will delay interval outside the will
            0x00, 0x00,
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V5),
            ProtocolError::PropertyNotAllowed {
                id: 0x18,
                packet: "CONNECT"
            }
        );
        #[rustfmt::skip]
        let bytes = [
            0x10, 0x18,
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x00, // will, clean start
            0x00,                               // no CONNECT properties
            0x00, 0x00,                         // client identifier
            0x05, 0x11, 0x00, 0x00, 0x00, 0x01, // session expiry inside the will properties
            0x00, 0x01, b't', 0x00, 0x00,
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V5),
            ProtocolError::PropertyNotAllowed {
                id: 0x11,
                packet: "will properties"
            }
        );
    }

    #[test]
    fn v311_connack() {
        // session present, accepted
        golden(
            &[0x20, 0x02, 0x01, 0x00],
            Protocol::V311,
            &Packet::ConnAck(ConnAck {
                session_present: true,
                ..ConnAck::default()
            }),
        );
        // return code 5, not authorized
        golden(
            &[0x20, 0x02, 0x00, 0x05],
            Protocol::V311,
            &Packet::ConnAck(ConnAck {
                code: ReasonCode::NOT_AUTHORIZED,
                ..ConnAck::default()
            }),
        );
        // return code 1, unacceptable protocol version; 3.1 uses the same bytes
        golden(
            &[0x20, 0x02, 0x00, 0x01],
            Protocol::V31,
            &Packet::ConnAck(ConnAck {
                code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                ..ConnAck::default()
            }),
        );
    }

    #[test]
    fn v311_connack_maps_v5_codes_and_drops_properties() {
        let ack = ConnAck {
            session_present: false,
            code: ReasonCode::BAD_AUTHENTICATION_METHOD,
            properties: Properties {
                reason_string: Some("no".into()),
                ..Properties::default()
            },
        };
        assert_encodes(
            &Packet::ConnAck(ack),
            Protocol::V311,
            &[0x20, 0x02, 0x00, 0x04],
        );
        let ack = ConnAck {
            code: ReasonCode::SERVER_BUSY,
            ..ConnAck::default()
        };
        assert_encodes(
            &Packet::ConnAck(ack),
            Protocol::V311,
            &[0x20, 0x02, 0x00, 0x03],
        );
    }

    #[test]
    fn v5_connack() {
        golden(
            &[0x20, 0x03, 0x00, 0x00, 0x00], // accepted, no properties
            Protocol::V5,
            &Packet::ConnAck(ConnAck::default()),
        );
        #[rustfmt::skip]
        let bytes = [
            0x20, 0x0E,                               // CONNACK, remaining length 14
            0x01,                                     // session present
            0x00,                                     // success
            0x0B,                                     // properties: 11 bytes
            0x12, 0x00, 0x03, b'a', b'b', b'c',       //   assigned client identifier
            0x21, 0x00, 0x0A,                         //   receive maximum 10
            0x24, 0x01,                               //   maximum QoS 1
        ];
        let ack = ConnAck {
            session_present: true,
            code: ReasonCode::SUCCESS,
            properties: Properties {
                assigned_client_identifier: Some("abc".into()),
                receive_maximum: Some(10),
                maximum_qos: Some(1),
                ..Properties::default()
            },
        };
        golden(&bytes, Protocol::V5, &Packet::ConnAck(ack));
        golden(
            &[0x20, 0x03, 0x00, 0x87, 0x00], // not authorized
            Protocol::V5,
            &Packet::ConnAck(ConnAck {
                code: ReasonCode::NOT_AUTHORIZED,
                ..ConnAck::default()
            }),
        );
    }

    #[test]
    fn v5_connack_round_trip_with_every_allowed_property() {
        let ack = ConnAck {
            session_present: true,
            code: ReasonCode::SUCCESS,
            properties: Properties {
                session_expiry_interval: Some(7),
                assigned_client_identifier: Some("auto-1".into()),
                server_keep_alive: Some(120),
                authentication_method: Some("m".into()),
                authentication_data: Some(Bytes::from_static(b"d")),
                response_information: Some("info".into()),
                server_reference: Some("other:1883".into()),
                reason_string: Some("ok".into()),
                receive_maximum: Some(65535),
                topic_alias_maximum: Some(0),
                maximum_qos: Some(0),
                retain_available: Some(1),
                user_properties: vec![("k".into(), "v".into())],
                maximum_packet_size: Some(u32::MAX),
                wildcard_subscription_available: Some(0),
                subscription_identifier_available: Some(1),
                shared_subscription_available: Some(0),
                ..Properties::default()
            },
        };
        round_trip(&Packet::ConnAck(ack), Protocol::V5);
    }

    #[test]
    fn connack_errors() {
        assert_eq!(
            decode_err(&[0x20, 0x02, 0x02, 0x00], Protocol::V311),
            ProtocolError::ConnAckReservedFlags(0x02)
        );
        // v5 CONNACK always has a property length
        assert_eq!(
            decode_err(&[0x20, 0x02, 0x00, 0x00], Protocol::V5),
            ProtocolError::Truncated("property length")
        );
        assert_eq!(
            decode_err(&[0x20, 0x03, 0x00, 0x00, 0x00], Protocol::V311),
            ProtocolError::TrailingBytes(1)
        );
        assert_eq!(
            decode_err(&[0x20, 0x01, 0x00], Protocol::V311),
            ProtocolError::Truncated("connect reason code")
        );
    }
}
