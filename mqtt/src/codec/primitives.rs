//! The MQTT data representations of §1.5: integers, variable byte integers, UTF-8 strings and
//! binary data, as a bounds-checked [`Reader`] over one packet body and `put_*` writers.
//!
//! Every read is checked against what is actually left in the body, so a length field can never
//! make the decoder index past the end or allocate more than the packet holds. This module knows
//! nothing about packets or properties; it does not check topic syntax either.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// The largest value a four-byte variable byte integer can hold (§1.5.5).
pub(crate) const VARINT_MAX: u32 = 268_435_455;

/// Outcome of reading a variable byte integer from a buffer that may still be filling up.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum VarInt {
    /// The value and how many bytes encoded it.
    Done(u32, usize),
    /// Every byte present so far had the continuation bit set.
    Incomplete,
}

/// Read a variable byte integer from the front of `buf` without consuming it. Shared by the
/// fixed header (where running out means "wait for more bytes") and the [`Reader`] (where it
/// means the packet is truncated).
///
/// Non-minimal encodings (e.g. `0x80 0x00` for zero) are accepted: [MQTT-1.5.5-1] binds the
/// sender, and refusing them would buy nothing but interoperability trouble.
pub(crate) fn peek_varint(buf: &[u8]) -> Result<VarInt, ProtocolError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(VarInt::Done(value, i + 1));
        }
    }
    if buf.len() >= 4 {
        Err(ProtocolError::MalformedVarInt)
    } else {
        Ok(VarInt::Incomplete)
    }
}

/// Bytes needed to encode `value` as a variable byte integer. Exact for any value, including
/// out-of-range ones `put_varint` would (wrongly, and only in release builds) still write, so
/// `encoded_len` always matches what `encode` appends.
pub(crate) fn varint_len(value: usize) -> usize {
    let mut n = 1;
    let mut v = value >> 7;
    while v > 0 {
        n += 1;
        v >>= 7;
    }
    n
}

pub(crate) fn put_varint(out: &mut BytesMut, value: usize) {
    debug_assert!(
        value <= VARINT_MAX as usize,
        "variable byte integer {value} exceeds {VARINT_MAX}"
    );
    let mut v = value;
    loop {
        // Truncation to the low seven bits is the encoding itself.
        let mut byte = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

/// Two-byte length prefix plus the bytes (UTF-8 string or binary data).
pub(crate) fn prefixed_len(len: usize) -> usize {
    2 + len
}

pub(crate) fn put_u16_prefixed(out: &mut BytesMut, data: &[u8]) {
    debug_assert!(
        data.len() <= usize::from(u16::MAX),
        "string or binary data of {} bytes exceeds 65535",
        data.len()
    );
    // The debug assertion is the contract; a release build writes the wrapped length rather
    // than panicking inside the IO path.
    out.put_u16(data.len() as u16);
    out.put_slice(data);
}

/// Validate a UTF-8 string's bytes per §1.5.4.
pub(crate) fn check_utf8(data: &[u8]) -> Result<&str, ProtocolError> {
    let s = std::str::from_utf8(data).map_err(|_| ProtocolError::InvalidUtf8)?;
    if data.contains(&0) {
        return Err(ProtocolError::NullCharacter);
    }
    Ok(s)
}

/// A cursor over one packet body (or one property section). Owns a `Bytes` so binary fields
/// and the PUBLISH payload can be handed out as zero-copy slices of the input buffer.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fail with [`ProtocolError::TrailingBytes`] unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes(self.buf.len()))
        }
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), ProtocolError> {
        if self.buf.len() < n {
            Err(ProtocolError::Truncated(what))
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    /// A Packet Identifier, which must be non-zero wherever it appears ([MQTT-2.2.1-3]).
    pub(crate) fn packet_id(&mut self) -> Result<u16, ProtocolError> {
        match self.u16("packet identifier")? {
            0 => Err(ProtocolError::ZeroPacketId),
            id => Ok(id),
        }
    }

    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        match peek_varint(&self.buf)? {
            VarInt::Done(value, n) => {
                self.buf.advance(n);
                Ok(value)
            }
            VarInt::Incomplete => Err(ProtocolError::Truncated(what)),
        }
    }

    /// The next `n` bytes as a shared slice of the input.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, ProtocolError> {
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }

    /// Everything left, as a shared slice of the input.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Binary data (§1.5.6): two-byte length, then the bytes, shared with the input.
    pub(crate) fn binary(&mut self, what: &'static str) -> Result<Bytes, ProtocolError> {
        let len = usize::from(self.u16(what)?);
        self.take(len, what)
    }

    /// UTF-8 encoded string (§1.5.4), copied out because packets hold `String`.
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let len = usize::from(self.u16(what)?);
        self.need(len, what)?;
        let s = check_utf8(&self.buf[..len])?.to_owned();
        self.buf.advance(len);
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boundaries from the spec's table in §1.5.5.
    const VARINTS: [(usize, &[u8]); 8] = [
        (0, &[0x00]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ];

    #[test]
    fn varint_boundaries() {
        for (value, bytes) in VARINTS {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(&out[..], bytes, "{value}");
            assert_eq!(varint_len(value), bytes.len(), "{value}");
            assert_eq!(
                peek_varint(bytes),
                Ok(VarInt::Done(value as u32, bytes.len()))
            );
            // every strict prefix is incomplete, not an error
            for n in 0..bytes.len() {
                assert_eq!(
                    peek_varint(&bytes[..n]),
                    Ok(VarInt::Incomplete),
                    "{value}/{n}"
                );
            }
        }
    }

    #[test]
    fn varint_limits() {
        assert_eq!(
            peek_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(ProtocolError::MalformedVarInt)
        );
        // the error is known from four bytes, without waiting for a fifth
        assert_eq!(
            peek_varint(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(ProtocolError::MalformedVarInt)
        );
        // non-minimal but within four bytes: accepted
        assert_eq!(peek_varint(&[0x80, 0x00]), Ok(VarInt::Done(0, 2)));
        // only the first byte without continuation counts
        assert_eq!(peek_varint(&[0x05, 0xFF]), Ok(VarInt::Done(5, 1)));
    }

    #[test]
    fn reader_bounds() {
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x03, b'a', b'b']));
        assert_eq!(r.string("s"), Err(ProtocolError::Truncated("s")));
        let mut r = Reader::new(Bytes::from_static(&[0x01]));
        assert_eq!(r.u16("two"), Err(ProtocolError::Truncated("two")));
        let mut r = Reader::new(Bytes::from_static(&[0x01, 0x02, 0x03]));
        assert_eq!(r.u32("four"), Err(ProtocolError::Truncated("four")));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x02, 0xAB, 0xCD, 0xEF]));
        assert_eq!(&r.binary("b").unwrap()[..], &[0xAB, 0xCD]);
        assert_eq!(r.finish(), Err(ProtocolError::TrailingBytes(1)));
        assert_eq!(&r.rest()[..], &[0xEF]);
        assert_eq!(r.finish(), Ok(()));
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x00]));
        assert_eq!(r.packet_id(), Err(ProtocolError::ZeroPacketId));
    }

    #[test]
    fn strings() {
        assert_eq!(check_utf8("a/ü/€/𝄞".as_bytes()), Ok("a/ü/€/𝄞"));
        assert_eq!(check_utf8(&[0xC0, 0x80]), Err(ProtocolError::InvalidUtf8)); // overlong NUL
        assert_eq!(
            check_utf8(&[0xED, 0xBF, 0xBF]),
            Err(ProtocolError::InvalidUtf8)
        ); // surrogate
        assert_eq!(check_utf8(b"a\0"), Err(ProtocolError::NullCharacter));
    }
}
