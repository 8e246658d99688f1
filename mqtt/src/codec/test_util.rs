//! Assertions shared by the codec's unit tests. Test-only; not part of the codec.
//!
//! Golden tests state the expected bytes by hand and check both directions against them; this
//! module never produces expected bytes itself.

use bytes::BytesMut;

use super::{decode, encode, encoded_len};
use crate::error::ProtocolError;
use crate::packet::{Packet, Protocol};

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `bytes` decodes to exactly `packet`, `packet` encodes to exactly `bytes`, `encoded_len`
/// agrees, and feeding the bytes one at a time yields nothing until the last one.
#[track_caller]
pub(crate) fn golden(bytes: &[u8], protocol: Protocol, packet: &Packet) {
    assert_eq!(
        &decode_ok(bytes, protocol),
        packet,
        "decoding {}",
        hex(bytes)
    );
    assert_encodes(packet, protocol, bytes);
    assert_bytewise(bytes, protocol, packet);
}

/// Encoder side only, for packets whose decoding is lossy (e.g. v3 return codes).
#[track_caller]
pub(crate) fn assert_encodes(packet: &Packet, protocol: Protocol, bytes: &[u8]) {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    assert_eq!(hex(&out), hex(bytes), "encoding {packet:?}");
    assert_eq!(
        encoded_len(packet, protocol),
        bytes.len(),
        "encoded_len of {packet:?}"
    );
}

/// Decode one whole packet, insisting that it consumed the whole buffer.
#[track_caller]
pub(crate) fn decode_ok(bytes: &[u8], protocol: Protocol) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, protocol, usize::MAX)
        .unwrap_or_else(|e| panic!("decoding {}: {e}", hex(bytes)))
        .unwrap_or_else(|| panic!("decoding {}: incomplete", hex(bytes)));
    assert!(
        buf.is_empty(),
        "{} bytes left after decoding {}",
        buf.len(),
        hex(bytes)
    );
    packet
}

#[track_caller]
pub(crate) fn decode_err(bytes: &[u8], protocol: Protocol) -> ProtocolError {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, protocol, usize::MAX) {
        Err(e) => e,
        Ok(p) => panic!("decoding {} should fail, got {p:?}", hex(bytes)),
    }
}

/// Encode then decode, for packets too big to spell out byte by byte.
#[track_caller]
pub(crate) fn round_trip(packet: &Packet, protocol: Protocol) {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    assert_eq!(
        encoded_len(packet, protocol),
        out.len(),
        "encoded_len of {packet:?}"
    );
    assert_eq!(&decode_ok(&out, protocol), packet);
}

#[track_caller]
fn assert_bytewise(bytes: &[u8], protocol: Protocol, packet: &Packet) {
    let mut buf = BytesMut::new();
    for (i, &b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[b]);
        let before = buf.len();
        let got = decode(&mut buf, protocol, usize::MAX).expect("prefix of a valid packet");
        if i + 1 < bytes.len() {
            assert_eq!(
                got,
                None,
                "decoded from a {}-byte prefix of {}",
                i + 1,
                hex(bytes)
            );
            assert_eq!(
                buf.len(),
                before,
                "Ok(None) must leave the buffer untouched"
            );
        } else {
            assert_eq!(got.as_ref(), Some(packet));
            assert!(buf.is_empty());
        }
    }
}
