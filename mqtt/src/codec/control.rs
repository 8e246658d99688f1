//! DISCONNECT (§3.14) and AUTH (§3.15) bodies, plus the golden tests for PINGREQ and PINGRESP,
//! which have no body at all (`mod.rs` handles them).
//!
//! Both packets shrink in v5 like the publish acknowledgements: remaining length 0 means
//! Success with no properties, 1 means a reason code with no properties. Whether an AUTH is
//! expected, or a DISCONNECT's Session Expiry is allowed, is for the session to decide.

use bytes::{BufMut, BytesMut};

use super::primitives::Reader;
use super::properties::{self, Ctx};
use crate::error::ProtocolError;
use crate::packet::{Auth, Disconnect, Packet, Properties, Protocol};
use crate::reason::ReasonCode;

/// The shared v5 "reason code, then optional properties" tail.
fn decode_tail(ctx: Ctx, r: &mut Reader) -> Result<(ReasonCode, Properties), ProtocolError> {
    if r.is_empty() {
        return Ok((ReasonCode::SUCCESS, Properties::default()));
    }
    let code = ReasonCode(r.u8("reason code")?);
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        properties::decode(r, ctx)?
    };
    Ok((code, properties))
}

fn tail_len(code: ReasonCode, props: &Properties) -> usize {
    if !props.is_empty() {
        1 + properties::encoded_len(props)
    } else if code != ReasonCode::SUCCESS {
        1
    } else {
        0
    }
}

fn encode_tail(code: ReasonCode, props: &Properties, out: &mut BytesMut) {
    if !props.is_empty() {
        out.put_u8(code.0);
        properties::encode(props, out);
    } else if code != ReasonCode::SUCCESS {
        out.put_u8(code.0);
    }
}

/// 3.1.1 DISCONNECT has no body; any byte left over fails `decode`'s trailing-bytes check.
pub(super) fn decode_disconnect(
    protocol: Protocol,
    r: &mut Reader,
) -> Result<Packet, ProtocolError> {
    let mut d = Disconnect::default();
    if protocol.is_v5() {
        (d.code, d.properties) = decode_tail(Ctx::DISCONNECT, r)?;
    }
    Ok(Packet::Disconnect(d))
}

pub(super) fn disconnect_len(d: &Disconnect, protocol: Protocol) -> usize {
    if protocol.is_v5() {
        tail_len(d.code, &d.properties)
    } else {
        0
    }
}

pub(super) fn encode_disconnect(d: &Disconnect, protocol: Protocol, out: &mut BytesMut) {
    if protocol.is_v5() {
        encode_tail(d.code, &d.properties, out);
    }
}

/// Only reached on v5 connections: before v5, type 15 is reserved and rejected in the header.
pub(super) fn decode_auth(r: &mut Reader) -> Result<Packet, ProtocolError> {
    let (code, properties) = decode_tail(Ctx::AUTH, r)?;
    Ok(Packet::Auth(Auth { code, properties }))
}

pub(super) fn auth_len(a: &Auth) -> usize {
    tail_len(a.code, &a.properties)
}

pub(super) fn encode_auth(a: &Auth, out: &mut BytesMut) {
    encode_tail(a.code, &a.properties, out);
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::test_util::{assert_encodes, decode_err, decode_ok, golden, round_trip};
    use super::*;

    const ALL: [Protocol; 3] = [Protocol::V31, Protocol::V311, Protocol::V5];

    #[test]
    fn pings_in_every_version() {
        for protocol in ALL {
            golden(&[0xC0, 0x00], protocol, &Packet::PingReq);
            golden(&[0xD0, 0x00], protocol, &Packet::PingResp);
        }
    }

    #[test]
    fn ping_errors() {
        assert_eq!(
            decode_err(&[0xC0, 0x01, 0x00], Protocol::V311),
            ProtocolError::TrailingBytes(1)
        );
        assert_eq!(
            decode_err(&[0xD0, 0x02, 0x00, 0x00], Protocol::V5),
            ProtocolError::TrailingBytes(2)
        );
        assert_eq!(
            decode_err(&[0xC1, 0x00], Protocol::V311),
            ProtocolError::InvalidHeaderFlags {
                packet_type: 12,
                flags: 1
            }
        );
        assert_eq!(
            decode_err(&[0xD8], Protocol::V5),
            ProtocolError::InvalidHeaderFlags {
                packet_type: 13,
                flags: 8
            }
        );
    }

    #[test]
    fn v311_disconnect() {
        golden(
            &[0xE0, 0x00],
            Protocol::V311,
            &Packet::Disconnect(Disconnect::default()),
        );
        golden(
            &[0xE0, 0x00],
            Protocol::V31,
            &Packet::Disconnect(Disconnect::default()),
        );
        // a v5 reason code has no room in 3.1.1
        let d = Disconnect {
            code: ReasonCode::DISCONNECT_WITH_WILL,
            properties: Properties {
                session_expiry_interval: Some(1),
                ..Properties::default()
            },
        };
        assert_encodes(&Packet::Disconnect(d), Protocol::V311, &[0xE0, 0x00]);
        assert_eq!(
            decode_err(&[0xE0, 0x01, 0x04], Protocol::V311),
            ProtocolError::TrailingBytes(1)
        );
        assert_eq!(
            decode_err(&[0xE2, 0x00], Protocol::V311),
            ProtocolError::InvalidHeaderFlags {
                packet_type: 14,
                flags: 2
            }
        );
    }

    #[test]
    fn v5_disconnect() {
        // remaining length 0: normal disconnection
        golden(
            &[0xE0, 0x00],
            Protocol::V5,
            &Packet::Disconnect(Disconnect::default()),
        );
        // remaining length 1: reason code only
        golden(
            &[0xE0, 0x01, 0x04], // disconnect with will message
            Protocol::V5,
            &Packet::Disconnect(Disconnect {
                code: ReasonCode::DISCONNECT_WITH_WILL,
                ..Disconnect::default()
            }),
        );
        #[rustfmt::skip]
        let bytes = [
            0xE0, 0x08,                         // DISCONNECT, remaining length 8
            0x8B,                               // server shutting down
            0x06,                               // properties: 6 bytes
            0x1F, 0x00, 0x03, b'b', b'y', b'e', //   reason string
        ];
        let d = Disconnect {
            code: ReasonCode::SERVER_SHUTTING_DOWN,
            properties: Properties {
                reason_string: Some("bye".into()),
                ..Properties::default()
            },
        };
        golden(&bytes, Protocol::V5, &Packet::Disconnect(d));
        // reason code 0 with an empty property section: accepted, re-encoded short
        assert_eq!(
            decode_ok(&[0xE0, 0x02, 0x00, 0x00], Protocol::V5),
            Packet::Disconnect(Disconnect::default())
        );
    }

    #[test]
    fn v5_disconnect_round_trip_with_every_allowed_property() {
        let d = Disconnect {
            code: ReasonCode::USE_ANOTHER_SERVER,
            properties: Properties {
                session_expiry_interval: Some(0),
                server_reference: Some("elsewhere:1883".into()),
                reason_string: Some("moving".into()),
                user_properties: vec![("a".into(), "b".into())],
                ..Properties::default()
            },
        };
        round_trip(&Packet::Disconnect(d), Protocol::V5);
    }

    #[test]
    fn disconnect_errors() {
        assert_eq!(
            decode_err(&[0xE0, 0x05, 0x00, 0x03, 0x21, 0x00, 0x01], Protocol::V5),
            ProtocolError::PropertyNotAllowed {
                id: 0x21,
                packet: "DISCONNECT"
            }
        );
        // property length 5 in a section of 1 byte
        assert_eq!(
            decode_err(&[0xE0, 0x03, 0x00, 0x05, 0x11], Protocol::V5),
            ProtocolError::Truncated("properties")
        );
        // property length as a five-byte variable byte integer
        assert_eq!(
            decode_err(
                &[0xE0, 0x06, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
                Protocol::V5
            ),
            ProtocolError::MalformedVarInt
        );
    }

    #[test]
    fn v5_auth() {
        golden(&[0xF0, 0x00], Protocol::V5, &Packet::Auth(Auth::default()));
        golden(
            &[0xF0, 0x01, 0x19], // re-authenticate
            Protocol::V5,
            &Packet::Auth(Auth {
                code: ReasonCode::REAUTHENTICATE,
                ..Auth::default()
            }),
        );
        #[rustfmt::skip]
        let bytes = [
            0xF0, 0x0F,                                   // AUTH, remaining length 15
            0x18,                                         // continue authentication
            0x0D,                                         // properties: 13 bytes
            0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // authentication method
            0x16, 0x00, 0x02, 0x01, 0x02,                 //   authentication data
        ];
        let a = Auth {
            code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties {
                authentication_method: Some("SCRAM".into()),
                authentication_data: Some(Bytes::from_static(&[1, 2])),
                ..Properties::default()
            },
        };
        golden(&bytes, Protocol::V5, &Packet::Auth(a));
        let a = Auth {
            code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties {
                authentication_method: Some("m".into()),
                authentication_data: Some(Bytes::from_static(b"data")),
                reason_string: Some("more".into()),
                user_properties: vec![("a".into(), "b".into())],
                ..Properties::default()
            },
        };
        round_trip(&Packet::Auth(a), Protocol::V5);
    }

    #[test]
    fn auth_errors() {
        // AUTH does not exist before v5: type 15 is reserved there.
        for protocol in [Protocol::V31, Protocol::V311] {
            assert_eq!(
                decode_err(&[0xF0, 0x00], protocol),
                ProtocolError::ReservedPacketType(15)
            );
        }
        assert_eq!(
            decode_err(&[0xF1, 0x00], Protocol::V5),
            ProtocolError::InvalidHeaderFlags {
                packet_type: 15,
                flags: 1
            }
        );
        // session expiry interval is not an AUTH property
        assert_eq!(
            decode_err(
                &[0xF0, 0x07, 0x18, 0x05, 0x11, 0x00, 0x00, 0x00, 0x01],
                Protocol::V5
            ),
            ProtocolError::PropertyNotAllowed {
                id: 0x11,
                packet: "AUTH"
            }
        );
        // a second authentication method
        #[rustfmt::skip]
        let bytes = [
            0xF0, 0x0A, 0x18, 0x08,
            0x15, 0x00, 0x01, b'a',
            0x15, 0x00, 0x01, b'b',
        ];
        assert_eq!(
            decode_err(&bytes, Protocol::V5),
            ProtocolError::DuplicateProperty(0x15)
        );
    }
}
