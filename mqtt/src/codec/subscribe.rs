//! SUBSCRIBE (§3.8), SUBACK (§3.9), UNSUBSCRIBE (§3.10) and UNSUBACK (§3.11) bodies.
//!
//! Topic filters are decoded as plain UTF-8 strings; their wildcard and shared-subscription
//! syntax is checked by the session through `topic`. Reason codes are carried as they arrive,
//! known or not, for the session to judge.

use bytes::{BufMut, BytesMut};

use super::primitives::{Reader, prefixed_len, put_u16_prefixed};
use super::properties::{self, Ctx};
use crate::error::ProtocolError;
use crate::packet::{
    Packet, Properties, Protocol, QoS, SubAck, SubOptions, Subscribe, UnsubAck, Unsubscribe,
};
use crate::reason::ReasonCode;

const NO_LOCAL: u8 = 0x04;
const RETAIN_AS_PUBLISHED: u8 = 0x08;
const RETAIN_HANDLING_SHIFT: u8 = 4;
/// Everything above the QoS bits is reserved in 3.1.1 ([MQTT-3.8.3-4] there); v5 gave bits 2-5
/// meanings and kept 6-7 reserved ([MQTT-3.8.3-5]).
const RESERVED_V3: u8 = 0xFC;
const RESERVED_V5: u8 = 0xC0;

fn decode_options(byte: u8, protocol: Protocol) -> Result<SubOptions, ProtocolError> {
    let reserved = if protocol.is_v5() {
        RESERVED_V5
    } else {
        RESERVED_V3
    };
    if byte & reserved != 0 {
        return Err(ProtocolError::SubscriptionOptionsReserved);
    }
    let qos = QoS::from_u8(byte & 0x03).ok_or(ProtocolError::InvalidSubscriptionQoS)?;
    let retain_handling = (byte >> RETAIN_HANDLING_SHIFT) & 0x03;
    if retain_handling == 3 {
        return Err(ProtocolError::InvalidRetainHandling);
    }
    Ok(SubOptions {
        qos,
        no_local: byte & NO_LOCAL != 0,
        retain_as_published: byte & RETAIN_AS_PUBLISHED != 0,
        retain_handling,
    })
}

fn encode_options(o: &SubOptions, protocol: Protocol) -> u8 {
    let mut byte = o.qos as u8;
    if protocol.is_v5() {
        if o.no_local {
            byte |= NO_LOCAL;
        }
        if o.retain_as_published {
            byte |= RETAIN_AS_PUBLISHED;
        }
        byte |= (o.retain_handling & 0x03) << RETAIN_HANDLING_SHIFT;
    }
    byte
}

fn decode_props(protocol: Protocol, ctx: Ctx, r: &mut Reader) -> Result<Properties, ProtocolError> {
    if protocol.is_v5() {
        properties::decode(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

fn props_len(props: &Properties, protocol: Protocol) -> usize {
    if protocol.is_v5() {
        properties::encoded_len(props)
    } else {
        0
    }
}

fn encode_props(props: &Properties, protocol: Protocol, out: &mut BytesMut) {
    if protocol.is_v5() {
        properties::encode(props, out);
    }
}

pub(super) fn decode_subscribe(
    protocol: Protocol,
    r: &mut Reader,
) -> Result<Packet, ProtocolError> {
    let packet_id = r.packet_id()?;
    let properties = decode_props(protocol, Ctx::SUBSCRIBE, r)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        let options = decode_options(r.u8("subscription options")?, protocol)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(ProtocolError::EmptySubscribe);
    }
    Ok(Packet::Subscribe(Subscribe {
        packet_id,
        filters,
        properties,
    }))
}

pub(super) fn subscribe_len(s: &Subscribe, protocol: Protocol) -> usize {
    2 + props_len(&s.properties, protocol)
        + s.filters
            .iter()
            .map(|(f, _)| prefixed_len(f.len()) + 1)
            .sum::<usize>()
}

pub(super) fn encode_subscribe(s: &Subscribe, protocol: Protocol, out: &mut BytesMut) {
    out.put_u16(s.packet_id);
    encode_props(&s.properties, protocol, out);
    for (filter, options) in &s.filters {
        put_u16_prefixed(out, filter.as_bytes());
        out.put_u8(encode_options(options, protocol));
    }
}

pub(super) fn decode_suback(protocol: Protocol, r: &mut Reader) -> Result<Packet, ProtocolError> {
    let packet_id = r.packet_id()?;
    let properties = decode_props(protocol, Ctx::SUBACK, r)?;
    // 3.1.1 return codes (0, 1, 2, 0x80) are already valid v5 codes with the same meaning.
    let codes = r.rest().iter().map(|&b| ReasonCode(b)).collect();
    Ok(Packet::SubAck(SubAck {
        packet_id,
        codes,
        properties,
    }))
}

pub(super) fn suback_len(s: &SubAck, protocol: Protocol) -> usize {
    2 + props_len(&s.properties, protocol) + s.codes.len()
}

pub(super) fn encode_suback(s: &SubAck, protocol: Protocol, out: &mut BytesMut) {
    out.put_u16(s.packet_id);
    encode_props(&s.properties, protocol, out);
    for code in &s.codes {
        out.put_u8(if protocol.is_v5() {
            code.0
        } else {
            code.to_v3_suback()
        });
    }
}

pub(super) fn decode_unsubscribe(
    protocol: Protocol,
    r: &mut Reader,
) -> Result<Packet, ProtocolError> {
    let packet_id = r.packet_id()?;
    let properties = decode_props(protocol, Ctx::UNSUBSCRIBE, r)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(ProtocolError::EmptyUnsubscribe);
    }
    Ok(Packet::Unsubscribe(Unsubscribe {
        packet_id,
        filters,
        properties,
    }))
}

pub(super) fn unsubscribe_len(u: &Unsubscribe, protocol: Protocol) -> usize {
    2 + props_len(&u.properties, protocol)
        + u.filters
            .iter()
            .map(|f| prefixed_len(f.len()))
            .sum::<usize>()
}

pub(super) fn encode_unsubscribe(u: &Unsubscribe, protocol: Protocol, out: &mut BytesMut) {
    out.put_u16(u.packet_id);
    encode_props(&u.properties, protocol, out);
    for filter in &u.filters {
        put_u16_prefixed(out, filter.as_bytes());
    }
}

/// 3.1.1 UNSUBACK is just the packet identifier; anything after it is left for `decode`'s
/// trailing-bytes check.
pub(super) fn decode_unsuback(protocol: Protocol, r: &mut Reader) -> Result<Packet, ProtocolError> {
    let packet_id = r.packet_id()?;
    let mut ack = UnsubAck {
        packet_id,
        ..UnsubAck::default()
    };
    if protocol.is_v5() {
        ack.properties = properties::decode(r, Ctx::UNSUBACK)?;
        ack.codes = r.rest().iter().map(|&b| ReasonCode(b)).collect();
    }
    Ok(Packet::UnsubAck(ack))
}

pub(super) fn unsuback_len(u: &UnsubAck, protocol: Protocol) -> usize {
    if protocol.is_v5() {
        2 + properties::encoded_len(&u.properties) + u.codes.len()
    } else {
        2
    }
}

pub(super) fn encode_unsuback(u: &UnsubAck, protocol: Protocol, out: &mut BytesMut) {
    out.put_u16(u.packet_id);
    if protocol.is_v5() {
        properties::encode(&u.properties, out);
        out.extend(u.codes.iter().map(|c| c.0));
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_encodes, decode_err, golden, round_trip};
    use super::*;

    fn qos(q: QoS) -> SubOptions {
        SubOptions {
            qos: q,
            ..SubOptions::default()
        }
    }

    #[test]
    fn v311_subscribe() {
        #[rustfmt::skip]
        let bytes = [
            0x82, 0x0E,                   // SUBSCRIBE (flags 0b0010), remaining length 14
            0x00, 0x01,                   // packet identifier 1
            0x00, 0x03, b'a', b'/', b'b', // topic filter
            0x01,                         //   QoS 1
            0x00, 0x03, b'c', b'/', b'#', // topic filter
            0x02,                         //   QoS 2
        ];
        let s = Subscribe {
            packet_id: 1,
            filters: vec![
                ("a/b".into(), qos(QoS::AtLeastOnce)),
                ("c/#".into(), qos(QoS::ExactlyOnce)),
            ],
            properties: Properties::default(),
        };
        golden(&bytes, Protocol::V311, &Packet::Subscribe(s.clone()));
        golden(&bytes, Protocol::V31, &Packet::Subscribe(s));
    }

    #[test]
    fn v5_subscribe_with_options_and_identifier() {
        #[rustfmt::skip]
        let bytes = [
            0x82, 0x0D,             // SUBSCRIBE, remaining length 13
            0x00, 0x02,             // packet identifier 2
            0x02,                   // properties: 2 bytes
            0x0B, 0x07,             //   subscription identifier 7
            0x00, 0x01, b'x',       // topic filter
            0x2D,                   //   retain handling 2, RAP, no local, QoS 1
            0x00, 0x01, b'y',       // topic filter
            0x00,                   //   defaults
        ];
        let s = Subscribe {
            packet_id: 2,
            filters: vec![
                (
                    "x".into(),
                    SubOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: 2,
                    },
                ),
                ("y".into(), SubOptions::default()),
            ],
            properties: Properties {
                subscription_identifiers: vec![7],
                ..Properties::default()
            },
        };
        golden(&bytes, Protocol::V5, &Packet::Subscribe(s));
    }

    #[test]
    fn v5_subscribe_round_trip_with_every_allowed_property() {
        let s = Subscribe {
            packet_id: 65535,
            filters: vec![(
                "$share/g/a/+".into(),
                SubOptions {
                    retain_handling: 1,
                    ..qos(QoS::ExactlyOnce)
                },
            )],
            properties: Properties {
                subscription_identifiers: vec![268_435_455],
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            },
        };
        round_trip(&Packet::Subscribe(s), Protocol::V5);
    }

    #[test]
    fn v311_subscribe_encoding_drops_v5_options() {
        let s = Subscribe {
            packet_id: 1,
            filters: vec![(
                "t".into(),
                SubOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: 2,
                },
            )],
            properties: Properties::default(),
        };
        assert_encodes(
            &Packet::Subscribe(s),
            Protocol::V311,
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x01],
        );
    }

    #[test]
    fn subscribe_errors() {
        assert_eq!(
            decode_err(&[0x82, 0x02, 0x00, 0x01], Protocol::V311),
            ProtocolError::EmptySubscribe
        );
        assert_eq!(
            decode_err(&[0x82, 0x03, 0x00, 0x01, 0x00], Protocol::V5),
            ProtocolError::EmptySubscribe
        );
        assert_eq!(
            decode_err(
                &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b't', 0x00],
                Protocol::V311
            ),
            ProtocolError::ZeroPacketId
        );
        // v3: no local bit is reserved
        assert_eq!(
            decode_err(
                &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x04],
                Protocol::V311
            ),
            ProtocolError::SubscriptionOptionsReserved
        );
        // v5: bits 6-7 reserved
        assert_eq!(
            decode_err(
                &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b't', 0x40],
                Protocol::V5
            ),
            ProtocolError::SubscriptionOptionsReserved
        );
        assert_eq!(
            decode_err(
                &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x03],
                Protocol::V311
            ),
            ProtocolError::InvalidSubscriptionQoS
        );
        assert_eq!(
            decode_err(
                &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b't', 0x30],
                Protocol::V5
            ),
            ProtocolError::InvalidRetainHandling
        );
        // filter without its options byte
        assert_eq!(
            decode_err(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b't'], Protocol::V311),
            ProtocolError::Truncated("subscription options")
        );
        // flags must be 0b0010
        assert_eq!(
            decode_err(
                &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x00],
                Protocol::V311
            ),
            ProtocolError::InvalidHeaderFlags {
                packet_type: 8,
                flags: 0
            }
        );
        // only one subscription identifier in SUBSCRIBE
        #[rustfmt::skip]
        let bytes = [
            0x82, 0x0B, 0x00, 0x01,
            0x04, 0x0B, 0x01, 0x0B, 0x02,
            0x00, 0x01, b't', 0x00,
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V5),
            ProtocolError::DuplicateProperty(0x0B)
        );
        // subscription identifier 0
        let bytes = [
            0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b't', 0x00,
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V5),
            ProtocolError::InvalidPropertyValue { id: 0x0B, value: 0 }
        );
        // subscription identifier whose variable byte integer runs past the property section
        let bytes = [
            0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x80, 0x00, 0x01, b't', 0x00,
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V5),
            ProtocolError::Truncated("property value")
        );
    }

    #[test]
    fn v311_suback() {
        #[rustfmt::skip]
        let bytes = [
            0x90, 0x05,             // SUBACK, remaining length 5
            0x00, 0x01,             // packet identifier 1
            0x01, 0x02, 0x80,       // granted QoS 1, granted QoS 2, failure
        ];
        let ack = SubAck {
            packet_id: 1,
            codes: vec![
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_2,
                ReasonCode(0x80),
            ],
            properties: Properties::default(),
        };
        golden(&bytes, Protocol::V311, &Packet::SubAck(ack));
    }

    #[test]
    fn v311_suback_maps_v5_failures_to_0x80() {
        let ack = SubAck {
            packet_id: 1,
            codes: vec![ReasonCode::GRANTED_QOS_0, ReasonCode::NOT_AUTHORIZED],
            properties: Properties {
                reason_string: Some("x".into()),
                ..Properties::default()
            },
        };
        assert_encodes(
            &Packet::SubAck(ack),
            Protocol::V311,
            &[0x90, 0x04, 0x00, 0x01, 0x00, 0x80],
        );
    }

    #[test]
    fn v5_suback() {
        #[rustfmt::skip]
        let bytes = [
            0x90, 0x06,             // SUBACK, remaining length 6
            0x00, 0x02,             // packet identifier 2
            0x00,                   // no properties
            0x00, 0x01, 0xA2,       // QoS 0, QoS 1, wildcard subscriptions not supported
        ];
        let ack = SubAck {
            packet_id: 2,
            codes: vec![
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            ],
            properties: Properties::default(),
        };
        golden(&bytes, Protocol::V5, &Packet::SubAck(ack));
        let ack = SubAck {
            packet_id: 2,
            codes: vec![ReasonCode::QUOTA_EXCEEDED],
            properties: Properties {
                reason_string: Some("full".into()),
                user_properties: vec![("a".into(), "b".into())],
                ..Properties::default()
            },
        };
        round_trip(&Packet::SubAck(ack), Protocol::V5);
    }

    #[test]
    fn v311_unsubscribe() {
        #[rustfmt::skip]
        let bytes = [
            0xA2, 0x0A,                   // UNSUBSCRIBE (flags 0b0010), remaining length 10
            0x00, 0x03,                   // packet identifier 3
            0x00, 0x03, b'a', b'/', b'b', // topic filter
            0x00, 0x01, b'c',             // topic filter
        ];
        let u = Unsubscribe {
            packet_id: 3,
            filters: vec!["a/b".into(), "c".into()],
            properties: Properties::default(),
        };
        golden(&bytes, Protocol::V311, &Packet::Unsubscribe(u));
    }

    #[test]
    fn v5_unsubscribe() {
        #[rustfmt::skip]
        let bytes = [
            0xA2, 0x0D,                               // UNSUBSCRIBE, remaining length 13
            0x00, 0x03,                               // packet identifier 3
            0x07,                                     // properties: 7 bytes
            0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', //   user property k=v
            0x00, 0x01, b'c',                         // topic filter
        ];
        let u = Unsubscribe {
            packet_id: 3,
            filters: vec!["c".into()],
            properties: Properties {
                user_properties: vec![("k".into(), "v".into())],
                ..Properties::default()
            },
        };
        golden(&bytes, Protocol::V5, &Packet::Unsubscribe(u));
    }

    #[test]
    fn unsubscribe_errors() {
        assert_eq!(
            decode_err(&[0xA2, 0x02, 0x00, 0x01], Protocol::V311),
            ProtocolError::EmptyUnsubscribe
        );
        assert_eq!(
            decode_err(&[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b't'], Protocol::V311),
            ProtocolError::InvalidHeaderFlags {
                packet_type: 10,
                flags: 0
            }
        );
        // subscription identifier is a SUBSCRIBE property, not an UNSUBSCRIBE one
        let bytes = [0xA2, 0x08, 0x00, 0x01, 0x02, 0x0B, 0x01, 0x00, 0x01, b't'];
        assert_eq!(
            decode_err(&bytes, Protocol::V5),
            ProtocolError::PropertyNotAllowed {
                id: 0x0B,
                packet: "UNSUBSCRIBE"
            }
        );
        assert_eq!(
            decode_err(&[0xA2, 0x04, 0x00, 0x01, 0x00, 0x05], Protocol::V311),
            ProtocolError::Truncated("topic filter")
        );
    }

    #[test]
    fn v311_unsuback() {
        golden(
            &[0xB0, 0x02, 0x00, 0x03], // UNSUBACK, packet identifier 3
            Protocol::V311,
            &Packet::UnsubAck(UnsubAck {
                packet_id: 3,
                ..UnsubAck::default()
            }),
        );
        // 3.1.1 has no per-filter codes: they are dropped.
        let ack = UnsubAck {
            packet_id: 3,
            codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
            properties: Properties::default(),
        };
        assert_encodes(
            &Packet::UnsubAck(ack),
            Protocol::V311,
            &[0xB0, 0x02, 0x00, 0x03],
        );
        assert_eq!(
            decode_err(&[0xB0, 0x03, 0x00, 0x03, 0x00], Protocol::V311),
            ProtocolError::TrailingBytes(1)
        );
    }

    #[test]
    fn v5_unsuback() {
        #[rustfmt::skip]
        let bytes = [
            0xB0, 0x05,             // UNSUBACK, remaining length 5
            0x00, 0x03,             // packet identifier 3
            0x00,                   // no properties
            0x00, 0x11,             // success, no subscription existed
        ];
        let ack = UnsubAck {
            packet_id: 3,
            codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
            properties: Properties::default(),
        };
        golden(&bytes, Protocol::V5, &Packet::UnsubAck(ack));
        let ack = UnsubAck {
            packet_id: 9,
            codes: vec![ReasonCode::NOT_AUTHORIZED],
            properties: Properties {
                reason_string: Some("no".into()),
                user_properties: vec![("a".into(), "b".into())],
                ..Properties::default()
            },
        };
        round_trip(&Packet::UnsubAck(ack), Protocol::V5);
        assert_eq!(
            decode_err(&[0xB0, 0x02, 0x00, 0x03], Protocol::V5),
            ProtocolError::Truncated("property length")
        );
    }
}
