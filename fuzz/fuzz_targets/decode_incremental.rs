//! The decoder must not care how the bytes arrive: the rest of the input, fed in chunks whose
//! sizes come from the first byte, gives the same packets and the same ending (error, or the
//! same leftover bytes) as decoding it in one go.
//!
//! First byte: bit 7 = protocol (0: 3.1.1, 1: 5.0), bits 0-1 = largest chunk (1, 3, 16, 512
//! bytes), bits 2-6 = seed for the chunk sizes.
#![no_main]

use bytes::BytesMut;
use gatehouse_fuzz::{End, MAX_PACKET, Rng, decode_all, decode_one, hex, max_chunk};
use libfuzzer_sys::fuzz_target;
use mqtt::Protocol;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let protocol = if selector & 0x80 != 0 {
        Protocol::V5
    } else {
        Protocol::V311
    };
    let max = max_chunk(selector);
    let mut rng = Rng::new(u64::from(selector >> 2));

    let (whole, whole_end) = decode_all(stream, protocol, MAX_PACKET);

    let mut buf = BytesMut::new();
    let mut pieces = Vec::new();
    // `buf` holds stream[taken..fed].
    let mut taken = 0;
    let mut fed = 0;
    let end = 'feed: loop {
        if fed < stream.len() {
            let n = rng.chunk(max).min(stream.len() - fed);
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
        }
        loop {
            match decode_one(&mut buf, &stream[taken..fed], protocol, MAX_PACKET) {
                (Ok(Some(p)), n) => {
                    pieces.push(p);
                    taken += n;
                }
                (Ok(None), _) if fed < stream.len() => continue 'feed,
                (Ok(None), _) => break 'feed End::NeedMore(buf.to_vec()),
                (Err(e), _) => break 'feed End::Error(e),
            }
        }
    };

    let whole: Vec<_> = whole.into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        whole,
        pieces,
        "chunked decoding (max chunk {max}) gave different packets for {}",
        hex(stream)
    );
    assert_eq!(
        whole_end,
        end,
        "chunked decoding (max chunk {max}) ended differently for {}",
        hex(stream)
    );
});
