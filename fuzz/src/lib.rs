//! Helpers shared by the fuzz targets in `fuzz_targets/`. Not part of Gatehouse itself.
//!
//! The properties asserted here are the ones the codec documents (see `mqtt/src/codec/mod.rs`):
//! `Ok(None)` leaves the buffer untouched, `encoded_len` is exact, and whatever decodes
//! re-encodes to something that decodes back to the same packet. The one documented lossy
//! spot is normalised before comparing, rather than dropping the assertion:
//!
//! - 3.1.1 SUBACK return codes: the decoder keeps any byte as a `ReasonCode`, the encoder writes
//!   `to_v3_suback` (granted QoS 0..=2, anything else 0x80).
//!
//! Spots that look lossy but are not, so they are compared as is:
//! - 3.1.1 CONNACK return codes > 5 decode to Not authorized, which re-encodes as 5 and decodes
//!   to Not authorized again: the bytes change, the packet does not.
//! - AUTH on 3.1.1 never decodes (type 15 is reserved there), so its v5-only encoding is moot.
//! - v5 "short form" acknowledgements and DISCONNECT/AUTH (`00 00` tails), non-minimal variable
//!   byte integers and property order all re-encode differently but to an equal packet.

use bytes::BytesMut;
use mqtt::codec::{decode, encode, encoded_len};
use mqtt::{Packet, ProtocolError, Protocol, ReasonCode};

/// The decoder's packet size limit in the decode targets: small, so that lengths just above
/// it are reachable, but large enough for any input libFuzzer makes by default.
pub const MAX_PACKET: usize = 64 * 1024;

pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a decode loop over one buffer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// `Ok(None)`, with the bytes still buffered.
    NeedMore(Vec<u8>),
    Error(ProtocolError),
}

/// Calls `decode` once on `buf`, which holds exactly `held`, checking the `Ok(None)` and
/// `Ok(Some)` buffer contracts. Returns the result and how many bytes it consumed.
pub fn decode_one(
    buf: &mut BytesMut,
    held: &[u8],
    protocol: Protocol,
    max: usize,
) -> (Result<Option<Packet>, ProtocolError>, usize) {
    debug_assert_eq!(&buf[..], held);
    let result = decode(buf, protocol, max);
    match &result {
        Ok(None) => assert!(
            &buf[..] == held,
            "Ok(None) must leave the buffer untouched"
        ),
        Ok(Some(_)) => assert!(
            buf.len() < held.len() && held.ends_with(&buf[..]),
            "Ok(Some) must consume a non-empty prefix of the buffer"
        ),
        Err(_) => {}
    }
    let consumed = held.len().saturating_sub(buf.len());
    (result, consumed)
}

/// Decode `data` in one go: every packet (with the bytes it came from) and how it ended.
pub fn decode_all<'a>(
    data: &'a [u8],
    protocol: Protocol,
    max: usize,
) -> (Vec<(Packet, &'a [u8])>, End) {
    let mut buf = BytesMut::from(data);
    let mut at = 0;
    let mut packets = Vec::new();
    loop {
        match decode_one(&mut buf, &data[at..], protocol, max) {
            (Ok(Some(p)), n) => {
                packets.push((p, &data[at..at + n]));
                at += n;
            }
            (Ok(None), _) => return (packets, End::NeedMore(buf.to_vec())),
            (Err(e), _) => return (packets, End::Error(e)),
        }
    }
}

/// What the decoder would give back for `encode(p)`, where `encode` is documented to lose
/// information.
pub fn normalize(p: &Packet, protocol: Protocol) -> Packet {
    let mut p = p.clone();
    if let Packet::SubAck(s) = &mut p
        && !protocol.is_v5()
    {
        for code in &mut s.codes {
            *code = ReasonCode(code.to_v3_suback());
        }
    }
    p
}

/// `p` was decoded from `wire` on a `protocol` connection. Check that `encoded_len` is exact,
/// that the encoding is no longer than what was decoded, decodes back to the same packet
/// (modulo [`normalize`]) using exactly its own bytes, and is a fixed point of
/// decode-then-encode.
pub fn check_round_trip(p: &Packet, wire: &[u8], protocol: Protocol) {
    let mut first = BytesMut::new();
    encode(p, protocol, &mut first);
    assert_eq!(
        first.len(),
        encoded_len(p, protocol),
        "encoded_len of {p:?} disagrees with encode ({})",
        hex(&first)
    );
    assert!(
        first.len() <= wire.len(),
        "{p:?} decoded from {} bytes re-encodes to {} bytes: {}",
        wire.len(),
        first.len(),
        hex(&first)
    );
    // Exactly the encoding's size is enough room: `encode` must not write a packet that the
    // same decoder would reject as too large.
    let mut again = first.clone();
    let p2 = match decode_one(&mut again, &first, protocol, first.len()) {
        (Ok(Some(p2)), _) => p2,
        (other, _) => panic!(
            "re-decoding the encoding of {p:?} ({}) from {}: {other:?}",
            hex(&first),
            hex(wire)
        ),
    };
    assert!(
        again.is_empty(),
        "{} bytes left after re-decoding {}",
        again.len(),
        hex(&first)
    );
    assert_eq!(
        normalize(p, protocol),
        p2,
        "round trip changed the packet; wire {} re-encoded as {}",
        hex(wire),
        hex(&first)
    );
    let mut second = BytesMut::new();
    encode(&p2, protocol, &mut second);
    assert!(
        first == second,
        "encode(decode(encode(p))) != encode(p) for {p:?}: {} then {}",
        hex(&first),
        hex(&second)
    );
}

/// The `decode_v311` / `decode_v5` target body.
pub fn fuzz_decode(data: &[u8], protocol: Protocol) {
    let (packets, _end) = decode_all(data, protocol, MAX_PACKET);
    for (p, wire) in &packets {
        check_round_trip(p, wire, protocol);
    }
}

/// xorshift64*: deterministic, dependency-free randomness seeded from the fuzz input, so that a
/// crash reproduces from its artifact alone.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Never zero, and spread small seeds.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `1..=max` (`max` >= 1).
    pub fn chunk(&mut self, max: usize) -> usize {
        1 + (self.next() % max as u64) as usize
    }
}

/// The chunk size ceilings selectable by the low bits of a selector byte: byte-at-a-time,
/// small, medium and large pieces.
pub fn max_chunk(selector: u8) -> usize {
    [1, 3, 16, 512][usize::from(selector & 0x03)]
}
