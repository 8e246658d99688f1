//! PUBLISH (§3.3) and the four acknowledgements that share one shape: PUBACK, PUBREC, PUBREL
//! and PUBCOMP (§3.4–3.7).
//!
//! PUBLISH is the hot path: its payload is a slice of the input buffer, never a copy. Topic
//! names are checked only for being UTF-8 (and non-empty before v5); wildcards, aliases and
//! payload format checks belong to the session.

use super::PublishView;
use bytes::{BufMut, BytesMut};

use super::primitives::{Reader, prefixed_len, put_u16_prefixed};
use super::properties::{self, Ctx};
use crate::error::ProtocolError;
use crate::packet::{Packet, Properties, Protocol, PubResp, Publish, QoS};
use crate::reason::ReasonCode;

const DUP: u8 = 0b1000;
const QOS_SHIFT: u8 = 1;
const RETAIN: u8 = 0b0001;

/// The PUBLISH fixed header flags, checked before the body arrives.
pub(super) fn check_publish_flags(flags: u8) -> Result<(), ProtocolError> {
    match (flags >> QOS_SHIFT) & 0x03 {
        3 => Err(ProtocolError::InvalidQoS),
        0 if flags & DUP != 0 => Err(ProtocolError::DupOnQoS0),
        _ => Ok(()),
    }
}

/// DUP is only written for QoS > 0, mirroring the packet identifier: the struct may carry a
/// stale `dup` after a QoS downgrade, and writing it would make the packet malformed.
pub(super) fn publish_flags(p: &Publish) -> u8 {
    view_flags(&view_of(p))
}

pub(super) fn decode_publish(
    flags: u8,
    protocol: Protocol,
    r: &mut Reader,
) -> Result<Packet, ProtocolError> {
    check_publish_flags(flags)?;
    let qos = QoS::from_u8((flags >> QOS_SHIFT) & 0x03).ok_or(ProtocolError::InvalidQoS)?;
    let topic = r.string("topic name")?;
    if topic.is_empty() && !protocol.is_v5() {
        return Err(ProtocolError::EmptyTopic);
    }
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = if protocol.is_v5() {
        properties::decode(r, Ctx::PUBLISH)?
    } else {
        Properties::default()
    };
    Ok(Packet::Publish(Publish {
        dup: flags & DUP != 0,
        qos,
        retain: flags & RETAIN != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    }))
}

/// A `Publish` is written as the view of itself, so the two encodings cannot drift apart.
fn view_of(p: &Publish) -> PublishView<'_> {
    PublishView {
        dup: p.dup,
        qos: p.qos,
        retain: p.retain,
        topic: &p.topic,
        packet_id: p.packet_id,
        payload: &p.payload,
        properties: &p.properties,
        message_expiry_interval: p.properties.message_expiry_interval,
        topic_alias: p.properties.topic_alias,
        subscription_identifiers: &p.properties.subscription_identifiers,
    }
}

pub(super) fn publish_len(p: &Publish, protocol: Protocol) -> usize {
    view_len(&view_of(p), protocol)
}

pub(super) fn encode_publish(p: &Publish, protocol: Protocol, out: &mut BytesMut) {
    encode_view(&view_of(p), protocol, out)
}

/// Remaining length of a [`PublishView`].
pub(super) fn view_len(v: &PublishView, protocol: Protocol) -> usize {
    let mut n = prefixed_len(v.topic.len()) + v.payload.len();
    if v.qos != QoS::AtMostOnce {
        n += 2;
    }
    if protocol.is_v5() {
        n += properties::encoded_len_with(v.properties, &v.overlay());
    }
    n
}

pub(super) fn view_flags(v: &PublishView) -> u8 {
    let mut flags = (v.qos as u8) << QOS_SHIFT;
    if v.dup && v.qos != QoS::AtMostOnce {
        flags |= DUP;
    }
    if v.retain {
        flags |= RETAIN;
    }
    flags
}

pub(super) fn encode_view(v: &PublishView, protocol: Protocol, out: &mut BytesMut) {
    put_u16_prefixed(out, v.topic.as_bytes());
    if v.qos != QoS::AtMostOnce {
        out.put_u16(v.packet_id);
    }
    if protocol.is_v5() {
        properties::encode_with(v.properties, &v.overlay(), out);
    }
    out.put_slice(v.payload);
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP; `ctx` names which, for property errors.
///
/// v5 lets the tail shrink (§3.4.2.1): remaining length 2 means Success and no properties, 3
/// means a reason code and no properties.
pub(super) fn decode_pubresp(
    protocol: Protocol,
    ctx: Ctx,
    r: &mut Reader,
) -> Result<PubResp, ProtocolError> {
    let mut resp = PubResp {
        packet_id: r.packet_id()?,
        ..PubResp::default()
    };
    if protocol.is_v5() && !r.is_empty() {
        resp.code = ReasonCode(r.u8("reason code")?);
        if !r.is_empty() {
            resp.properties = properties::decode(r, ctx)?;
        }
    }
    Ok(resp)
}

pub(super) fn pubresp_len(p: &PubResp, protocol: Protocol) -> usize {
    if !protocol.is_v5() {
        2
    } else if !p.properties.is_empty() {
        3 + properties::encoded_len(&p.properties)
    } else if p.code != ReasonCode::SUCCESS {
        3
    } else {
        2
    }
}

pub(super) fn encode_pubresp(p: &PubResp, protocol: Protocol, out: &mut BytesMut) {
    out.put_u16(p.packet_id);
    if !protocol.is_v5() {
        return;
    }
    if !p.properties.is_empty() {
        out.put_u8(p.code.0);
        properties::encode(&p.properties, out);
    } else if p.code != ReasonCode::SUCCESS {
        out.put_u8(p.code.0);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::test_util::{assert_encodes, decode_err, decode_ok, golden, hex, round_trip};
    use super::*;

    fn publish(topic: &str, payload: &'static [u8]) -> Publish {
        Publish {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            ..Publish::default()
        }
    }

    #[test]
    fn v311_publish_qos0() {
        #[rustfmt::skip]
        let bytes = [
            0x30, 0x07,                   // PUBLISH QoS 0, remaining length 7
            0x00, 0x03, b'a', b'/', b'b', // topic name
            b'h', b'i',                   // payload
        ];
        golden(
            &bytes,
            Protocol::V311,
            &Packet::Publish(publish("a/b", b"hi")),
        );
        golden(
            &bytes,
            Protocol::V31,
            &Packet::Publish(publish("a/b", b"hi")),
        );
    }

    #[test]
    fn v311_publish_qos1_dup_retain() {
        #[rustfmt::skip]
        let bytes = [
            0x3B, 0x08,                   // PUBLISH DUP, QoS 1, RETAIN; remaining length 8
            0x00, 0x03, b'a', b'/', b'b', // topic name
            0x00, 0x0A,                   // packet identifier 10
            b'x',                         // payload
        ];
        let p = Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            packet_id: 10,
            ..publish("a/b", b"x")
        };
        golden(&bytes, Protocol::V311, &Packet::Publish(p));
    }

    #[test]
    fn v311_publish_qos2_empty_payload() {
        #[rustfmt::skip]
        let bytes = [
            0x34, 0x05,             // PUBLISH QoS 2, remaining length 5
            0x00, 0x01, b't',       // topic name
            0xFF, 0xFF,             // packet identifier 65535
        ];
        let p = Publish {
            qos: QoS::ExactlyOnce,
            packet_id: 65535,
            ..publish("t", b"")
        };
        golden(&bytes, Protocol::V311, &Packet::Publish(p));
    }

    #[test]
    fn multi_byte_remaining_length() {
        // 3 + 200 = 203 = 0xCB: 0xCB 0x01 as a variable byte integer
        let mut bytes = vec![0x30, 0xCB, 0x01, 0x00, 0x01, b't'];
        bytes.extend_from_slice(&[0x55; 200]);
        let p = Publish {
            payload: Bytes::from(vec![0x55; 200]),
            ..publish("t", b"")
        };
        golden(&bytes, Protocol::V311, &Packet::Publish(p));

        // 3 + 20002 = 20005: 0xA5 0x9C 0x01
        let mut bytes = vec![0x30, 0xA5, 0x9C, 0x01, 0x00, 0x01, b't'];
        bytes.extend_from_slice(&[0xAA; 20002]);
        let p = Publish {
            payload: Bytes::from(vec![0xAA; 20002]),
            ..publish("t", b"")
        };
        assert_eq!(
            decode_ok(&bytes, Protocol::V311),
            Packet::Publish(p.clone())
        );
        assert_encodes(&Packet::Publish(p), Protocol::V311, &bytes);
    }

    #[test]
    fn v5_publish_qos0_without_properties() {
        #[rustfmt::skip]
        let bytes = [
            0x30, 0x05,       // PUBLISH QoS 0, remaining length 5
            0x00, 0x01, b't', // topic name
            0x00,             // no properties
            b'p',             // payload
        ];
        golden(&bytes, Protocol::V5, &Packet::Publish(publish("t", b"p")));
    }

    #[test]
    fn v5_publish_qos1_with_properties() {
        #[rustfmt::skip]
        let bytes = [
            0x32, 0x17,                   // PUBLISH QoS 1, remaining length 23
            0x00, 0x03, b'a', b'/', b'b', // topic name
            0x00, 0x01,                   // packet identifier 1
            0x0C,                         // properties: 12 bytes
            0x01, 0x01,                   //   payload format indicator: UTF-8
            0x02, 0x00, 0x00, 0x00, 0x3C, //   message expiry interval 60
            0x0B, 0x05,                   //   subscription identifier 5
            0x23, 0x00, 0x02,             //   topic alias 2
            b'h', b'e', b'y',             // payload
        ];
        let p = Publish {
            qos: QoS::AtLeastOnce,
            packet_id: 1,
            properties: Properties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                subscription_identifiers: vec![5],
                topic_alias: Some(2),
                ..Properties::default()
            },
            ..publish("a/b", b"hey")
        };
        golden(&bytes, Protocol::V5, &Packet::Publish(p));
    }

    #[test]
    fn v5_publish_empty_topic_with_alias_and_repeated_subscription_ids() {
        #[rustfmt::skip]
        let bytes = [
            0x31, 0x0C,             // PUBLISH QoS 0 RETAIN, remaining length 12
            0x00, 0x00,             // empty topic name: the alias stands for it
            0x08,                   // properties: 8 bytes
            0x0B, 0x01,             //   subscription identifier 1
            0x0B, 0x80, 0x01,       //   subscription identifier 128
            0x23, 0x00, 0x07,       //   topic alias 7
            b'x',                   // payload
        ];
        let p = Publish {
            retain: true,
            properties: Properties {
                subscription_identifiers: vec![1, 128],
                topic_alias: Some(7),
                ..Properties::default()
            },
            ..publish("", b"x")
        };
        golden(&bytes, Protocol::V5, &Packet::Publish(p));
    }

    #[test]
    fn v5_publish_round_trip_with_every_allowed_property() {
        let p = Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "sensors/ümlaut/#not-validated-here".into(),
            packet_id: 4242,
            payload: Bytes::from(vec![7u8; 70_000]),
            properties: Properties {
                payload_format_indicator: Some(0),
                message_expiry_interval: Some(1),
                content_type: Some("application/json".into()),
                response_topic: Some("reply/here".into()),
                correlation_data: Some(Bytes::from_static(&[0, 1, 2, 3])),
                subscription_identifiers: vec![1, 16_384, 268_435_455],
                topic_alias: Some(0),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "".into())],
                ..Properties::default()
            },
        };
        round_trip(&Packet::Publish(p), Protocol::V5);
    }

    #[test]
    fn payload_shares_the_input_buffer() {
        let bytes = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
        let mut buf = BytesMut::from(&bytes[..]);
        let base = buf.as_ptr() as usize;
        let Some(Packet::Publish(p)) =
            super::super::decode(&mut buf, Protocol::V311, 1024).unwrap()
        else {
            panic!("expected PUBLISH");
        };
        assert_eq!(p.payload.as_ptr() as usize, base + 7, "payload was copied");
    }

    #[test]
    fn v311_encoding_drops_v5_fields_and_dup_on_qos0() {
        let p = Publish {
            dup: true,
            properties: Properties {
                topic_alias: Some(1),
                ..Properties::default()
            },
            ..publish("t", b"")
        };
        assert_encodes(
            &Packet::Publish(p),
            Protocol::V311,
            &[0x30, 0x03, 0x00, 0x01, b't'],
        );
    }

    /// The fan-out path (`PublishView`) must write exactly what encoding the equivalent
    /// `Publish` writes, for both versions, every QoS and with per-delivery properties.
    #[test]
    fn publish_view_matches_packet_encoding() {
        use crate::codec::{
            PublishView, encode, encode_publish_view, encoded_len, publish_view_len,
        };
        let shared = Properties {
            payload_format_indicator: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"cid")),
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        };
        for protocol in [Protocol::V311, Protocol::V5] {
            for (qos, pid) in [
                (QoS::AtMostOnce, 0),
                (QoS::AtLeastOnce, 7),
                (QoS::ExactlyOnce, 9),
            ] {
                for (topic, alias, ids, expiry) in [
                    ("a/b", None, &[][..], None),
                    ("a/b", Some(3), &[1u32, 300][..], Some(60)),
                    ("", Some(3), &[5u32][..], Some(0)),
                ] {
                    let mut props = shared.clone();
                    props.topic_alias = alias;
                    props.subscription_identifiers = ids.to_vec();
                    props.message_expiry_interval = expiry;
                    let packet = Packet::Publish(Publish {
                        dup: true,
                        qos,
                        retain: true,
                        topic: topic.into(),
                        packet_id: pid,
                        payload: Bytes::from_static(b"payload"),
                        properties: props,
                    });
                    let view = PublishView {
                        dup: true,
                        qos,
                        retain: true,
                        topic,
                        packet_id: pid,
                        payload: b"payload",
                        properties: &shared,
                        message_expiry_interval: expiry,
                        topic_alias: alias,
                        subscription_identifiers: ids,
                    };
                    let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
                    encode(&packet, protocol, &mut a);
                    encode_publish_view(&view, protocol, &mut b);
                    assert_eq!(a, b, "{protocol:?} {qos:?} {topic:?}");
                    assert_eq!(
                        encoded_len(&packet, protocol),
                        publish_view_len(&view, protocol)
                    );
                }
            }
        }
    }

    #[test]
    fn publish_errors() {
        // QoS 3 is rejected from the first byte alone.
        assert_eq!(
            decode_err(&[0x36], Protocol::V311),
            ProtocolError::InvalidQoS
        );
        assert_eq!(
            decode_err(&[0x38, 0x03, 0x00, 0x01, b't'], Protocol::V5),
            ProtocolError::DupOnQoS0
        );
        assert_eq!(
            decode_err(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00], Protocol::V311),
            ProtocolError::ZeroPacketId
        );
        assert_eq!(
            decode_err(&[0x30, 0x02, 0x00, 0x00], Protocol::V311),
            ProtocolError::EmptyTopic
        );
        assert_eq!(
            decode_err(&[0x32, 0x04, 0x00, 0x01, b't', 0x00], Protocol::V311),
            ProtocolError::Truncated("packet identifier")
        );
        assert_eq!(
            decode_err(&[0x30, 0x03, 0x00, 0x02, b't'], Protocol::V311),
            ProtocolError::Truncated("topic name")
        );
        assert_eq!(
            decode_err(&[0x30, 0x03, 0x00, 0x01, 0xFF], Protocol::V311),
            ProtocolError::InvalidUtf8
        );
        assert_eq!(
            decode_err(&[0x30, 0x03, 0x00, 0x01, 0x00], Protocol::V311),
            ProtocolError::NullCharacter
        );
        // v5: property length 3, but only 2 bytes in the packet after it
        assert_eq!(
            decode_err(
                &[0x30, 0x06, 0x00, 0x01, b't', 0x03, 0x23, 0x00],
                Protocol::V5
            ),
            ProtocolError::Truncated("properties")
        );
        // v5: session expiry interval is not a PUBLISH property
        assert_eq!(
            decode_err(
                &[
                    0x30, 0x09, 0x00, 0x01, b't', 0x05, 0x11, 0x00, 0x00, 0x00, 0x01
                ],
                Protocol::V5
            ),
            ProtocolError::PropertyNotAllowed {
                id: 0x11,
                packet: "PUBLISH"
            }
        );
        // v5: a second topic alias
        assert_eq!(
            decode_err(
                &[
                    0x30, 0x0A, 0x00, 0x01, b't', 0x06, 0x23, 0x00, 0x01, 0x23, 0x00, 0x02
                ],
                Protocol::V5
            ),
            ProtocolError::DuplicateProperty(0x23)
        );
        // v5: 0x05 is not a property identifier
        assert_eq!(
            decode_err(
                &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x05, 0x00],
                Protocol::V5
            ),
            ProtocolError::UnknownProperty(0x05)
        );
        // v5: payload format indicator 2
        assert_eq!(
            decode_err(
                &[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x01, 0x02],
                Protocol::V5
            ),
            ProtocolError::InvalidPropertyValue { id: 0x01, value: 2 }
        );
    }

    #[test]
    fn v311_acknowledgements() {
        let resp = PubResp {
            packet_id: 10,
            ..PubResp::default()
        };
        for protocol in [Protocol::V31, Protocol::V311] {
            golden(
                &[0x40, 0x02, 0x00, 0x0A],
                protocol,
                &Packet::PubAck(resp.clone()),
            );
            golden(
                &[0x50, 0x02, 0x00, 0x0A],
                protocol,
                &Packet::PubRec(resp.clone()),
            );
            golden(
                &[0x62, 0x02, 0x00, 0x0A],
                protocol,
                &Packet::PubRel(resp.clone()),
            );
            golden(
                &[0x70, 0x02, 0x00, 0x0A],
                protocol,
                &Packet::PubComp(resp.clone()),
            );
        }
        // A v5 reason code has no room in 3.1.1.
        let failed = PubResp {
            code: ReasonCode::QUOTA_EXCEEDED,
            ..resp
        };
        assert_encodes(
            &Packet::PubAck(failed),
            Protocol::V311,
            &[0x40, 0x02, 0x00, 0x0A],
        );
    }

    #[test]
    fn v5_acknowledgements_use_the_shortest_form() {
        let ok = PubResp {
            packet_id: 10,
            ..PubResp::default()
        };
        // remaining length 2: success, no properties
        golden(
            &[0x40, 0x02, 0x00, 0x0A],
            Protocol::V5,
            &Packet::PubAck(ok.clone()),
        );
        golden(
            &[0x70, 0x02, 0x00, 0x0A],
            Protocol::V5,
            &Packet::PubComp(ok.clone()),
        );
        // remaining length 3: reason code, no properties
        golden(
            &[0x40, 0x03, 0x00, 0x0A, 0x10], // no matching subscribers
            Protocol::V5,
            &Packet::PubAck(PubResp {
                code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                ..ok.clone()
            }),
        );
        golden(
            &[0x62, 0x03, 0x00, 0x0A, 0x92], // packet identifier not found
            Protocol::V5,
            &Packet::PubRel(PubResp {
                code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                ..ok.clone()
            }),
        );
        // remaining length 4 with an empty property section: accepted, re-encoded short
        assert_eq!(
            decode_ok(&[0x50, 0x04, 0x00, 0x0A, 0x00, 0x00], Protocol::V5),
            Packet::PubRec(ok.clone())
        );
        #[rustfmt::skip]
        let bytes = [
            0x50, 0x0B,                         // PUBREC, remaining length 11
            0x00, 0x0A,                         // packet identifier 10
            0x87,                               // not authorized
            0x07,                               // properties: 7 bytes
            0x1F, 0x00, 0x04, b'n', b'o', b'p', b'e', // reason string
        ];
        let resp = PubResp {
            code: ReasonCode::NOT_AUTHORIZED,
            properties: Properties {
                reason_string: Some("nope".into()),
                ..Properties::default()
            },
            ..ok.clone()
        };
        golden(&bytes, Protocol::V5, &Packet::PubRec(resp));
        #[rustfmt::skip]
        let bytes = [
            0x70, 0x0B,                         // PUBCOMP, remaining length 11
            0x00, 0x0A,                         // packet identifier 10
            0x00,                               // success, written because properties follow
            0x07,                               // properties: 7 bytes
            0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b', // user property a=b
        ];
        let resp = PubResp {
            properties: Properties {
                user_properties: vec![("a".into(), "b".into())],
                ..Properties::default()
            },
            ..ok
        };
        golden(&bytes, Protocol::V5, &Packet::PubComp(resp));
    }

    #[test]
    fn v5_acknowledgement_round_trip_with_every_allowed_property() {
        let resp = PubResp {
            packet_id: 1,
            code: ReasonCode::UNSPECIFIED_ERROR,
            properties: Properties {
                reason_string: Some("why".into()),
                user_properties: vec![("a".into(), "b".into()), ("c".into(), "d".into())],
                ..Properties::default()
            },
        };
        for p in [
            Packet::PubAck(resp.clone()),
            Packet::PubRec(resp.clone()),
            Packet::PubRel(resp.clone()),
            Packet::PubComp(resp.clone()),
        ] {
            round_trip(&p, Protocol::V5);
        }
    }

    #[test]
    fn acknowledgement_errors() {
        assert_eq!(
            decode_err(&[0x40, 0x02, 0x00, 0x00], Protocol::V311),
            ProtocolError::ZeroPacketId
        );
        assert_eq!(
            decode_err(&[0x40, 0x03, 0x00, 0x01, 0x00], Protocol::V311),
            ProtocolError::TrailingBytes(1)
        );
        assert_eq!(
            decode_err(&[0x40, 0x01, 0x00], Protocol::V5),
            ProtocolError::Truncated("packet identifier")
        );
        for (first, name) in [
            (0x40, "PUBACK"),
            (0x50, "PUBREC"),
            (0x62, "PUBREL"),
            (0x70, "PUBCOMP"),
        ] {
            // topic alias in an acknowledgement
            let bytes = [first, 0x07, 0x00, 0x01, 0x00, 0x03, 0x23, 0x00, 0x01];
            assert_eq!(
                decode_err(&bytes, Protocol::V5),
                ProtocolError::PropertyNotAllowed {
                    id: 0x23,
                    packet: name
                },
                "{}",
                hex(&bytes)
            );
        }
        // PUBREL must have flags 0b0010, the others 0
        assert_eq!(
            decode_err(&[0x60, 0x02, 0x00, 0x01], Protocol::V311),
            ProtocolError::InvalidHeaderFlags {
                packet_type: 6,
                flags: 0
            }
        );
        assert_eq!(
            decode_err(&[0x42, 0x02, 0x00, 0x01], Protocol::V311),
            ProtocolError::InvalidHeaderFlags {
                packet_type: 4,
                flags: 2
            }
        );
    }
}
