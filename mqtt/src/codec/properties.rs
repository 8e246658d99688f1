//! MQTT 5 properties (§2.2.2): the property length prefix, every property identifier with its
//! wire type, and the table of which packet may carry which property.
//!
//! Decoding rejects unknown identifiers, properties the packet may not carry, duplicates and the
//! out-of-range values the spec calls out. It does not apply rules that need connection state
//! (topic alias ranges, subscription identifiers sent by a client in PUBLISH, Session Expiry
//! after zero): those belong to the session. Encoding writes whatever the struct holds, in
//! ascending identifier order; choosing which properties a packet should carry is the caller's.

use bytes::{BufMut, BytesMut};

use super::primitives::{Reader, prefixed_len, put_u16_prefixed, put_varint, varint_len};
use crate::error::ProtocolError;
use crate::packet::Properties;

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// Where a property section sits: one bit per column of the spec's property table, plus the
/// name reported in [`ProtocolError::PropertyNotAllowed`]. The four publish acknowledgements
/// share a column because they allow exactly the same properties.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    bit: u16,
    name: &'static str,
}

const B_CONNECT: u16 = 1 << 0;
const B_WILL: u16 = 1 << 1;
const B_CONNACK: u16 = 1 << 2;
const B_PUBLISH: u16 = 1 << 3;
const B_PUBRESP: u16 = 1 << 4;
const B_SUBSCRIBE: u16 = 1 << 5;
const B_SUBACK: u16 = 1 << 6;
const B_UNSUBSCRIBE: u16 = 1 << 7;
const B_UNSUBACK: u16 = 1 << 8;
const B_DISCONNECT: u16 = 1 << 9;
const B_AUTH: u16 = 1 << 10;
const B_ALL: u16 = (1 << 11) - 1;

impl Ctx {
    pub(crate) const CONNECT: Ctx = Ctx {
        bit: B_CONNECT,
        name: "CONNECT",
    };
    pub(crate) const WILL: Ctx = Ctx {
        bit: B_WILL,
        name: "will properties",
    };
    pub(crate) const CONNACK: Ctx = Ctx {
        bit: B_CONNACK,
        name: "CONNACK",
    };
    pub(crate) const PUBLISH: Ctx = Ctx {
        bit: B_PUBLISH,
        name: "PUBLISH",
    };
    pub(crate) const PUBACK: Ctx = Ctx {
        bit: B_PUBRESP,
        name: "PUBACK",
    };
    pub(crate) const PUBREC: Ctx = Ctx {
        bit: B_PUBRESP,
        name: "PUBREC",
    };
    pub(crate) const PUBREL: Ctx = Ctx {
        bit: B_PUBRESP,
        name: "PUBREL",
    };
    pub(crate) const PUBCOMP: Ctx = Ctx {
        bit: B_PUBRESP,
        name: "PUBCOMP",
    };
    pub(crate) const SUBSCRIBE: Ctx = Ctx {
        bit: B_SUBSCRIBE,
        name: "SUBSCRIBE",
    };
    pub(crate) const SUBACK: Ctx = Ctx {
        bit: B_SUBACK,
        name: "SUBACK",
    };
    pub(crate) const UNSUBSCRIBE: Ctx = Ctx {
        bit: B_UNSUBSCRIBE,
        name: "UNSUBSCRIBE",
    };
    pub(crate) const UNSUBACK: Ctx = Ctx {
        bit: B_UNSUBACK,
        name: "UNSUBACK",
    };
    pub(crate) const DISCONNECT: Ctx = Ctx {
        bit: B_DISCONNECT,
        name: "DISCONNECT",
    };
    pub(crate) const AUTH: Ctx = Ctx {
        bit: B_AUTH,
        name: "AUTH",
    };
    /// Every column at once, so tests can decode any property.
    #[cfg(test)]
    const ANY: Ctx = Ctx {
        bit: B_ALL,
        name: "any",
    };
}

/// The spec's property table (§2.2.2.2): which packets may carry `id`, or `None` if `id` is
/// not a property at all.
fn allowed_in(id: u8) -> Option<u16> {
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => B_PUBLISH | B_WILL,
        SUBSCRIPTION_IDENTIFIER => B_PUBLISH | B_SUBSCRIBE,
        SESSION_EXPIRY_INTERVAL => B_CONNECT | B_CONNACK | B_DISCONNECT,
        ASSIGNED_CLIENT_IDENTIFIER | SERVER_KEEP_ALIVE | RESPONSE_INFORMATION => B_CONNACK,
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => B_CONNECT | B_CONNACK | B_AUTH,
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => B_CONNECT,
        WILL_DELAY_INTERVAL => B_WILL,
        SERVER_REFERENCE => B_CONNACK | B_DISCONNECT,
        REASON_STRING => B_CONNACK | B_PUBRESP | B_SUBACK | B_UNSUBACK | B_DISCONNECT | B_AUTH,
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => B_CONNECT | B_CONNACK,
        TOPIC_ALIAS => B_PUBLISH,
        MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => B_CONNACK,
        USER_PROPERTY => B_ALL,
        _ => return None,
    })
}

/// Properties whose value space the spec narrows to 0 or 1 ("It is a Protocol Error to ...
/// have a value other than 0 or 1").
fn zero_or_one(id: u8, value: u8) -> Result<u8, ProtocolError> {
    if value > 1 {
        Err(ProtocolError::InvalidPropertyValue {
            id,
            value: u32::from(value),
        })
    } else {
        Ok(value)
    }
}

fn non_zero_u16(id: u16, prop: u8) -> Result<u16, ProtocolError> {
    if id == 0 {
        Err(ProtocolError::InvalidPropertyValue { id: prop, value: 0 })
    } else {
        Ok(id)
    }
}

fn non_zero_u32(value: u32, prop: u8) -> Result<u32, ProtocolError> {
    if value == 0 {
        Err(ProtocolError::InvalidPropertyValue { id: prop, value: 0 })
    } else {
        Ok(value)
    }
}

/// Decode a property section: its variable byte integer length, then the properties, which
/// must end exactly where the length says.
pub(crate) fn decode(r: &mut Reader, ctx: Ctx) -> Result<Properties, ProtocolError> {
    let len = r.varint("property length")? as usize;
    let mut props = Properties::default();
    if len == 0 {
        return Ok(props);
    }
    // A sub-reader, so a value that claims to run past the section is caught as truncation
    // rather than silently eating the payload that follows.
    let mut r = Reader::new(r.take(len, "properties")?);
    // Identifiers are all below 0x40, so a u64 bitmap tracks duplicates.
    let mut seen: u64 = 0;
    while !r.is_empty() {
        // The identifier is a variable byte integer, but every defined one fits in its first
        // byte; a first byte with the continuation bit set is therefore unknown already.
        let id = r.u8("property identifier")?;
        let allowed = allowed_in(id).ok_or(ProtocolError::UnknownProperty(id))?;
        if allowed & ctx.bit == 0 {
            return Err(ProtocolError::PropertyNotAllowed {
                id,
                packet: ctx.name,
            });
        }
        let bit = 1u64 << id;
        let repeatable =
            id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && ctx.bit & B_PUBLISH != 0);
        if seen & bit != 0 && !repeatable {
            return Err(ProtocolError::DuplicateProperty(id));
        }
        seen |= bit;
        decode_value(&mut r, id, &mut props)?;
    }
    Ok(props)
}

fn decode_value(r: &mut Reader, id: u8, p: &mut Properties) -> Result<(), ProtocolError> {
    const W: &str = "property value";
    match id {
        PAYLOAD_FORMAT_INDICATOR => p.payload_format_indicator = Some(zero_or_one(id, r.u8(W)?)?),
        MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(r.u32(W)?),
        CONTENT_TYPE => p.content_type = Some(r.string(W)?),
        RESPONSE_TOPIC => p.response_topic = Some(r.string(W)?),
        CORRELATION_DATA => p.correlation_data = Some(r.binary(W)?),
        SUBSCRIPTION_IDENTIFIER => {
            let v = non_zero_u32(r.varint(W)?, id)?;
            p.subscription_identifiers.push(v);
        }
        SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(r.u32(W)?),
        ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = Some(r.string(W)?),
        SERVER_KEEP_ALIVE => p.server_keep_alive = Some(r.u16(W)?),
        AUTHENTICATION_METHOD => p.authentication_method = Some(r.string(W)?),
        AUTHENTICATION_DATA => p.authentication_data = Some(r.binary(W)?),
        REQUEST_PROBLEM_INFORMATION => {
            p.request_problem_information = Some(zero_or_one(id, r.u8(W)?)?)
        }
        WILL_DELAY_INTERVAL => p.will_delay_interval = Some(r.u32(W)?),
        REQUEST_RESPONSE_INFORMATION => {
            p.request_response_information = Some(zero_or_one(id, r.u8(W)?)?)
        }
        RESPONSE_INFORMATION => p.response_information = Some(r.string(W)?),
        SERVER_REFERENCE => p.server_reference = Some(r.string(W)?),
        REASON_STRING => p.reason_string = Some(r.string(W)?),
        RECEIVE_MAXIMUM => p.receive_maximum = Some(non_zero_u16(r.u16(W)?, id)?),
        TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(r.u16(W)?),
        // Alias 0 is a protocol error too, but the session reports it together with the other
        // alias range checks ([MQTT-3.3.2-8]) so it can name the negotiated maximum.
        TOPIC_ALIAS => p.topic_alias = Some(r.u16(W)?),
        MAXIMUM_QOS => p.maximum_qos = Some(zero_or_one(id, r.u8(W)?)?),
        RETAIN_AVAILABLE => p.retain_available = Some(zero_or_one(id, r.u8(W)?)?),
        USER_PROPERTY => {
            let key = r.string(W)?;
            let value = r.string(W)?;
            p.user_properties.push((key, value));
        }
        MAXIMUM_PACKET_SIZE => p.maximum_packet_size = Some(non_zero_u32(r.u32(W)?, id)?),
        WILDCARD_SUBSCRIPTION_AVAILABLE => {
            p.wildcard_subscription_available = Some(zero_or_one(id, r.u8(W)?)?)
        }
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            p.subscription_identifier_available = Some(zero_or_one(id, r.u8(W)?)?)
        }
        SHARED_SUBSCRIPTION_AVAILABLE => {
            p.shared_subscription_available = Some(zero_or_one(id, r.u8(W)?)?)
        }
        // `allowed_in` already rejected every identifier not listed above.
        _ => return Err(ProtocolError::UnknownProperty(id)),
    }
    Ok(())
}

/// The three PUBLISH properties that differ per subscriber. When the broker forwards one shared
/// message to many subscribers it writes the message's properties with these replaced, instead
/// of cloning the whole [`Properties`] for each delivery.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Overlay<'a> {
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub subscription_identifiers: &'a [u32],
}

impl<'a> Overlay<'a> {
    /// No replacement: the struct's own values.
    pub(crate) fn of(p: &'a Properties) -> Overlay<'a> {
        Overlay {
            message_expiry_interval: p.message_expiry_interval,
            topic_alias: p.topic_alias,
            subscription_identifiers: &p.subscription_identifiers,
        }
    }
}

/// Length of the properties themselves, without the length prefix.
fn content_len(p: &Properties, o: &Overlay) -> usize {
    // identifier byte + fixed-width value
    fn fixed<T>(v: &Option<T>, width: usize) -> usize {
        if v.is_some() { 1 + width } else { 0 }
    }
    fn string(v: &Option<String>) -> usize {
        v.as_ref().map_or(0, |s| 1 + prefixed_len(s.len()))
    }
    let mut n = fixed(&p.payload_format_indicator, 1)
        + fixed(&o.message_expiry_interval, 4)
        + string(&p.content_type)
        + string(&p.response_topic)
        + p.correlation_data
            .as_ref()
            .map_or(0, |b| 1 + prefixed_len(b.len()))
        + fixed(&p.session_expiry_interval, 4)
        + string(&p.assigned_client_identifier)
        + fixed(&p.server_keep_alive, 2)
        + string(&p.authentication_method)
        + p.authentication_data
            .as_ref()
            .map_or(0, |b| 1 + prefixed_len(b.len()))
        + fixed(&p.request_problem_information, 1)
        + fixed(&p.will_delay_interval, 4)
        + fixed(&p.request_response_information, 1)
        + string(&p.response_information)
        + string(&p.server_reference)
        + string(&p.reason_string)
        + fixed(&p.receive_maximum, 2)
        + fixed(&p.topic_alias_maximum, 2)
        + fixed(&o.topic_alias, 2)
        + fixed(&p.maximum_qos, 1)
        + fixed(&p.retain_available, 1)
        + fixed(&p.maximum_packet_size, 4)
        + fixed(&p.wildcard_subscription_available, 1)
        + fixed(&p.subscription_identifier_available, 1)
        + fixed(&p.shared_subscription_available, 1);
    for &id in o.subscription_identifiers {
        n += 1 + varint_len(id as usize);
    }
    for (k, v) in &p.user_properties {
        n += 1 + prefixed_len(k.len()) + prefixed_len(v.len());
    }
    n
}

/// Bytes [`encode`] writes: the property length prefix plus the properties.
pub(crate) fn encoded_len(p: &Properties) -> usize {
    encoded_len_with(p, &Overlay::of(p))
}

pub(crate) fn encoded_len_with(p: &Properties, o: &Overlay) -> usize {
    let n = content_len(p, o);
    varint_len(n) + n
}

/// Write the property length and then every property present, in ascending identifier order
/// so the same struct always produces the same bytes.
pub(crate) fn encode(p: &Properties, out: &mut BytesMut) {
    encode_with(p, &Overlay::of(p), out)
}

/// [`encode`] with the per-subscriber PUBLISH properties taken from `o`.
pub(crate) fn encode_with(p: &Properties, o: &Overlay, out: &mut BytesMut) {
    put_varint(out, content_len(p, o));
    fn byte(out: &mut BytesMut, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            out.put_u8(id);
            out.put_u8(v);
        }
    }
    fn two(out: &mut BytesMut, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            out.put_u8(id);
            out.put_u16(v);
        }
    }
    fn four(out: &mut BytesMut, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            out.put_u8(id);
            out.put_u32(v);
        }
    }
    fn data(out: &mut BytesMut, id: u8, v: Option<&[u8]>) {
        if let Some(v) = v {
            out.put_u8(id);
            put_u16_prefixed(out, v);
        }
    }
    fn s(v: &Option<String>) -> Option<&[u8]> {
        v.as_deref().map(str::as_bytes)
    }
    byte(out, PAYLOAD_FORMAT_INDICATOR, p.payload_format_indicator);
    four(out, MESSAGE_EXPIRY_INTERVAL, o.message_expiry_interval);
    data(out, CONTENT_TYPE, s(&p.content_type));
    data(out, RESPONSE_TOPIC, s(&p.response_topic));
    data(out, CORRELATION_DATA, p.correlation_data.as_deref());
    for &id in o.subscription_identifiers {
        out.put_u8(SUBSCRIPTION_IDENTIFIER);
        put_varint(out, id as usize);
    }
    four(out, SESSION_EXPIRY_INTERVAL, p.session_expiry_interval);
    data(
        out,
        ASSIGNED_CLIENT_IDENTIFIER,
        s(&p.assigned_client_identifier),
    );
    two(out, SERVER_KEEP_ALIVE, p.server_keep_alive);
    data(out, AUTHENTICATION_METHOD, s(&p.authentication_method));
    data(out, AUTHENTICATION_DATA, p.authentication_data.as_deref());
    byte(
        out,
        REQUEST_PROBLEM_INFORMATION,
        p.request_problem_information,
    );
    four(out, WILL_DELAY_INTERVAL, p.will_delay_interval);
    byte(
        out,
        REQUEST_RESPONSE_INFORMATION,
        p.request_response_information,
    );
    data(out, RESPONSE_INFORMATION, s(&p.response_information));
    data(out, SERVER_REFERENCE, s(&p.server_reference));
    data(out, REASON_STRING, s(&p.reason_string));
    two(out, RECEIVE_MAXIMUM, p.receive_maximum);
    two(out, TOPIC_ALIAS_MAXIMUM, p.topic_alias_maximum);
    two(out, TOPIC_ALIAS, o.topic_alias);
    byte(out, MAXIMUM_QOS, p.maximum_qos);
    byte(out, RETAIN_AVAILABLE, p.retain_available);
    for (k, v) in &p.user_properties {
        out.put_u8(USER_PROPERTY);
        put_u16_prefixed(out, k.as_bytes());
        put_u16_prefixed(out, v.as_bytes());
    }
    four(out, MAXIMUM_PACKET_SIZE, p.maximum_packet_size);
    byte(
        out,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        p.wildcard_subscription_available,
    );
    byte(
        out,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        p.subscription_identifier_available,
    );
    byte(
        out,
        SHARED_SUBSCRIPTION_AVAILABLE,
        p.shared_subscription_available,
    );
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    use super::super::test_util::hex;
    use super::*;

    fn decode_in(ctx: Ctx, bytes: &[u8]) -> Result<Properties, ProtocolError> {
        let mut r = Reader::new(Bytes::copy_from_slice(bytes));
        let props = decode(&mut r, ctx)?;
        assert!(r.is_empty(), "property section over-read or under-read");
        Ok(props)
    }

    fn every_property() -> Properties {
        Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(10),
            content_type: Some("c".into()),
            response_topic: Some("r".into()),
            correlation_data: Some(Bytes::from_static(&[0xCD])),
            subscription_identifiers: vec![2, 128],
            session_expiry_interval: Some(11),
            assigned_client_identifier: Some("a".into()),
            server_keep_alive: Some(12),
            authentication_method: Some("m".into()),
            authentication_data: Some(Bytes::from_static(&[0xDA])),
            request_problem_information: Some(1),
            will_delay_interval: Some(13),
            request_response_information: Some(1),
            response_information: Some("i".into()),
            server_reference: Some("s".into()),
            reason_string: Some("w".into()),
            receive_maximum: Some(14),
            topic_alias_maximum: Some(15),
            topic_alias: Some(16),
            maximum_qos: Some(1),
            retain_available: Some(0),
            user_properties: vec![("k".into(), "v".into())],
            maximum_packet_size: Some(17),
            wildcard_subscription_available: Some(1),
            subscription_identifier_available: Some(0),
            shared_subscription_available: Some(1),
        }
    }

    /// Every identifier with its wire type (§2.2.2.2), in the order the encoder writes them.
    #[rustfmt::skip]
    const EVERY_PROPERTY: [u8; 97] = [
        0x60,                               // property length 96
        0x01, 0x01,                         // payload format indicator: byte
        0x02, 0x00, 0x00, 0x00, 0x0A,       // message expiry interval: four-byte integer
        0x03, 0x00, 0x01, b'c',             // content type: UTF-8 string
        0x08, 0x00, 0x01, b'r',             // response topic: UTF-8 string
        0x09, 0x00, 0x01, 0xCD,             // correlation data: binary data
        0x0B, 0x02,                         // subscription identifier: variable byte integer
        0x0B, 0x80, 0x01,                   // subscription identifier 128
        0x11, 0x00, 0x00, 0x00, 0x0B,       // session expiry interval: four-byte integer
        0x12, 0x00, 0x01, b'a',             // assigned client identifier: UTF-8 string
        0x13, 0x00, 0x0C,                   // server keep alive: two-byte integer
        0x15, 0x00, 0x01, b'm',             // authentication method: UTF-8 string
        0x16, 0x00, 0x01, 0xDA,             // authentication data: binary data
        0x17, 0x01,                         // request problem information: byte
        0x18, 0x00, 0x00, 0x00, 0x0D,       // will delay interval: four-byte integer
        0x19, 0x01,                         // request response information: byte
        0x1A, 0x00, 0x01, b'i',             // response information: UTF-8 string
        0x1C, 0x00, 0x01, b's',             // server reference: UTF-8 string
        0x1F, 0x00, 0x01, b'w',             // reason string: UTF-8 string
        0x21, 0x00, 0x0E,                   // receive maximum: two-byte integer
        0x22, 0x00, 0x0F,                   // topic alias maximum: two-byte integer
        0x23, 0x00, 0x10,                   // topic alias: two-byte integer
        0x24, 0x01,                         // maximum QoS: byte
        0x25, 0x00,                         // retain available: byte
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property: UTF-8 string pair
        0x27, 0x00, 0x00, 0x00, 0x11,       // maximum packet size: four-byte integer
        0x28, 0x01,                         // wildcard subscription available: byte
        0x29, 0x00,                         // subscription identifier available: byte
        0x2A, 0x01,                         // shared subscription available: byte
    ];

    #[test]
    fn every_property_golden() {
        let props = every_property();
        let mut out = BytesMut::new();
        encode(&props, &mut out);
        assert_eq!(hex(&out), hex(&EVERY_PROPERTY));
        assert_eq!(encoded_len(&props), EVERY_PROPERTY.len());
        assert_eq!(decode_in(Ctx::ANY, &EVERY_PROPERTY), Ok(props));
    }

    #[test]
    fn empty_section() {
        assert_eq!(decode_in(Ctx::CONNECT, &[0x00]), Ok(Properties::default()));
        let mut out = BytesMut::new();
        encode(&Properties::default(), &mut out);
        assert_eq!(&out[..], &[0x00]);
        assert_eq!(encoded_len(&Properties::default()), 1);
    }

    #[test]
    fn the_property_table() {
        let defined = [
            0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19,
            0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
        ];
        for id in 0..=u8::MAX {
            assert_eq!(allowed_in(id).is_some(), defined.contains(&id), "{id:#04x}");
        }
        // Spot checks against the spec's table, one per column.
        let allowed = |id: u8, ctx: Ctx| allowed_in(id).unwrap() & ctx.bit != 0;
        assert!(allowed(SESSION_EXPIRY_INTERVAL, Ctx::CONNECT));
        assert!(allowed(SESSION_EXPIRY_INTERVAL, Ctx::CONNACK));
        assert!(allowed(SESSION_EXPIRY_INTERVAL, Ctx::DISCONNECT));
        assert!(!allowed(SESSION_EXPIRY_INTERVAL, Ctx::WILL));
        assert!(allowed(WILL_DELAY_INTERVAL, Ctx::WILL));
        assert!(!allowed(WILL_DELAY_INTERVAL, Ctx::CONNECT));
        assert!(allowed(TOPIC_ALIAS, Ctx::PUBLISH));
        assert!(!allowed(TOPIC_ALIAS, Ctx::WILL));
        assert!(allowed(REASON_STRING, Ctx::PUBCOMP));
        assert!(!allowed(REASON_STRING, Ctx::PUBLISH));
        assert!(!allowed(REASON_STRING, Ctx::SUBSCRIBE));
        assert!(!allowed(REASON_STRING, Ctx::UNSUBSCRIBE));
        assert!(allowed(SUBSCRIPTION_IDENTIFIER, Ctx::SUBSCRIBE));
        assert!(!allowed(SUBSCRIPTION_IDENTIFIER, Ctx::WILL));
        assert!(allowed(AUTHENTICATION_DATA, Ctx::AUTH));
        assert!(!allowed(AUTHENTICATION_DATA, Ctx::DISCONNECT));
        assert!(allowed(SERVER_REFERENCE, Ctx::DISCONNECT));
        assert!(allowed(MAXIMUM_PACKET_SIZE, Ctx::CONNECT));
        assert!(!allowed(MAXIMUM_QOS, Ctx::CONNECT));
        for ctx in [
            Ctx::CONNECT,
            Ctx::WILL,
            Ctx::CONNACK,
            Ctx::PUBLISH,
            Ctx::PUBACK,
            Ctx::SUBSCRIBE,
            Ctx::SUBACK,
            Ctx::UNSUBSCRIBE,
            Ctx::UNSUBACK,
            Ctx::DISCONNECT,
            Ctx::AUTH,
        ] {
            assert!(allowed(USER_PROPERTY, ctx), "{}", ctx.name);
        }
    }

    #[test]
    fn unknown_identifiers() {
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x02, 0x00, 0x00]),
            Err(ProtocolError::UnknownProperty(0))
        );
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x02, 0x04, 0x00]),
            Err(ProtocolError::UnknownProperty(4))
        );
        // a multi-byte identifier: no defined property needs one
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x02, 0x81, 0x01]),
            Err(ProtocolError::UnknownProperty(0x81))
        );
    }

    #[test]
    fn repeats() {
        // user properties repeat everywhere, keeping their order
        let props = decode_in(
            Ctx::SUBACK,
            &[
                0x0E, 0x26, 0, 1, b'a', 0, 1, b'1', 0x26, 0, 1, b'a', 0, 1, b'2',
            ],
        )
        .unwrap();
        assert_eq!(
            props.user_properties,
            vec![
                ("a".to_string(), "1".to_string()),
                ("a".to_string(), "2".to_string())
            ]
        );
        // subscription identifiers repeat in PUBLISH only
        let bytes = [0x04, 0x0B, 0x01, 0x0B, 0x02];
        assert_eq!(
            decode_in(Ctx::PUBLISH, &bytes)
                .unwrap()
                .subscription_identifiers,
            vec![1, 2]
        );
        assert_eq!(
            decode_in(Ctx::SUBSCRIBE, &bytes),
            Err(ProtocolError::DuplicateProperty(0x0B))
        );
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x04, 0x01, 0x00, 0x01, 0x01]),
            Err(ProtocolError::DuplicateProperty(0x01))
        );
        assert_eq!(
            decode_in(Ctx::CONNACK, &[0x06, 0x13, 0x00, 0x01, 0x13, 0x00, 0x01]),
            Err(ProtocolError::DuplicateProperty(0x13))
        );
    }

    #[test]
    fn invalid_values() {
        let bad = |id: u8, value: u32| Err(ProtocolError::InvalidPropertyValue { id, value });
        assert_eq!(decode_in(Ctx::WILL, &[0x02, 0x01, 0x02]), bad(0x01, 2));
        assert_eq!(decode_in(Ctx::CONNECT, &[0x02, 0x17, 0x02]), bad(0x17, 2));
        assert_eq!(decode_in(Ctx::CONNECT, &[0x02, 0x19, 0xFF]), bad(0x19, 255));
        assert_eq!(
            decode_in(Ctx::CONNECT, &[0x03, 0x21, 0x00, 0x00]),
            bad(0x21, 0)
        );
        assert_eq!(
            decode_in(Ctx::CONNECT, &[0x05, 0x27, 0, 0, 0, 0]),
            bad(0x27, 0)
        );
        assert_eq!(decode_in(Ctx::CONNACK, &[0x02, 0x24, 0x02]), bad(0x24, 2));
        assert_eq!(decode_in(Ctx::CONNACK, &[0x02, 0x25, 0x02]), bad(0x25, 2));
        assert_eq!(decode_in(Ctx::CONNACK, &[0x02, 0x28, 0x02]), bad(0x28, 2));
        assert_eq!(decode_in(Ctx::CONNACK, &[0x02, 0x29, 0x02]), bad(0x29, 2));
        assert_eq!(decode_in(Ctx::CONNACK, &[0x02, 0x2A, 0x02]), bad(0x2A, 2));
        assert_eq!(decode_in(Ctx::PUBLISH, &[0x02, 0x0B, 0x00]), bad(0x0B, 0));
        // topic alias 0 is left to the session
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x03, 0x23, 0, 0])
                .unwrap()
                .topic_alias,
            Some(0)
        );
    }

    #[test]
    fn section_bounds() {
        // the section claims 4 bytes but the value needs 5
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x04, 0x02, 0x00, 0x00, 0x00]),
            Err(ProtocolError::Truncated("property value"))
        );
        // a string whose length runs past the section
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x03, 0x03, 0x00, 0x05]),
            Err(ProtocolError::Truncated("property value"))
        );
        // the section length runs past the packet
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x09, 0x01]),
            Err(ProtocolError::Truncated("properties"))
        );
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x80]),
            Err(ProtocolError::Truncated("property length"))
        );
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(ProtocolError::MalformedVarInt)
        );
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x04, 0x03, 0x00, 0x01, 0xFF]),
            Err(ProtocolError::InvalidUtf8)
        );
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x04, 0x03, 0x00, 0x01, 0x00]),
            Err(ProtocolError::NullCharacter)
        );
        // user property value missing
        assert_eq!(
            decode_in(Ctx::PUBLISH, &[0x04, 0x26, 0x00, 0x01, b'k']),
            Err(ProtocolError::Truncated("property value"))
        );
    }
}
