//! What a publisher puts on the wire: emqtt-bench's payload headers (`--payload-hdrs cnt64,ts`),
//! the payload body (`-s` filler, a `-m` literal or a `template://` file), and a pre-encoded
//! PUBLISH that is copied and patched per message instead of being re-encoded.
//!
//! Header layout, as emqtt-bench writes it: each header is 8 bytes big-endian, in the order
//! given, before the body. `cnt64` counts from 0 per publisher. `ts` is where we differ on
//! purpose: we write nanoseconds since the Unix epoch, because emqtt-bench's milliseconds cannot
//! resolve loopback latencies. On receipt both units are accepted (see [`ts_to_ns`]), so an
//! emqtt-bench publisher can still feed our subscriber.
//!
//! Nothing here touches a socket or a clock other than the wall clock read for `ts`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use mqtt::codec::{PublishView, encode_publish_view};
use mqtt::{Properties, Protocol, QoS};
use rand::RngCore;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hdr {
    /// A strictly increasing per-publisher counter, for loss and ordering checks.
    Cnt64,
    /// The send time, for publish-to-deliver latency.
    Ts,
}

/// The `--payload-hdrs` list. The subscriber must be given the same list as the publisher.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hdrs(pub Vec<Hdr>);

/// The header values found in a received payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HdrValues {
    pub cnt: Option<u64>,
    pub ts: Option<u64>,
}

impl Hdrs {
    /// `""` (none), `"ts"`, `"cnt64,ts"`...: emqtt-bench's accepted names only.
    pub fn parse(s: &str) -> Result<Hdrs, String> {
        s.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| match t {
                "cnt64" => Ok(Hdr::Cnt64),
                "ts" => Ok(Hdr::Ts),
                other => Err(format!(
                    "unsupported payload header {other:?} (expected cnt64 and/or ts)"
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Hdrs)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len_bytes(&self) -> usize {
        8 * self.0.len()
    }

    pub fn has(&self, h: Hdr) -> bool {
        self.0.contains(&h)
    }

    /// Fill the first [`len_bytes`](Self::len_bytes) bytes of `out`.
    pub fn write(&self, out: &mut [u8], cnt: u64, ts: u64) {
        for (i, h) in self.0.iter().enumerate() {
            let v = match h {
                Hdr::Cnt64 => cnt,
                Hdr::Ts => ts,
            };
            out[8 * i..8 * i + 8].copy_from_slice(&v.to_be_bytes());
        }
    }

    /// The headers at the front of `payload`; `None` if it is too short to hold them.
    pub fn read(&self, payload: &[u8]) -> Option<HdrValues> {
        if payload.len() < self.len_bytes() {
            return None;
        }
        let mut v = HdrValues::default();
        for (i, h) in self.0.iter().enumerate() {
            let n = u64::from_be_bytes(payload[8 * i..8 * i + 8].try_into().ok()?);
            match h {
                Hdr::Cnt64 => v.cnt = Some(n),
                Hdr::Ts => v.ts = Some(n),
            }
        }
        Some(v)
    }
}

/// Wall-clock nanoseconds since the Unix epoch. The wall clock, not a monotonic one, because
/// publisher and subscriber are different processes.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch stay below 10^14 until the year 5138 and nanoseconds have been
/// above it since 1973, so one threshold tells emqtt-bench's unit from ours.
const MS_NS_THRESHOLD: u64 = 100_000_000_000_000;

/// A `ts` header value in nanoseconds, whichever tool wrote it.
pub fn ts_to_ns(ts: u64) -> u64 {
    if ts < MS_NS_THRESHOLD {
        ts.saturating_mul(1_000_000)
    } else {
        ts
    }
}

/// Publish-to-receive latency in microseconds; a timestamp from the future (clock skew between
/// machines) counts as zero rather than wrapping.
pub fn latency_us(ts: u64, now_ns: u64) -> u64 {
    now_ns.saturating_sub(ts_to_ns(ts)) / 1_000
}

/// The payload body after the headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Fixed(Vec<u8>),
    /// A `template://` file with placeholders, rendered per message. `size` is `-s`, used by
    /// `%RANDOM%`.
    Template {
        text: Vec<u8>,
        size: usize,
    },
}

const PLACEHOLDERS: [&[u8]; 6] = [
    b"%TIMESTAMP%",
    b"%TIMESTAMPMS%",
    b"%TIMESTAMPUS%",
    b"%TIMESTAMPNS%",
    b"%UNIQUE%",
    b"%RANDOM%",
];

static UNIQUE: AtomicU64 = AtomicU64::new(1);

impl Body {
    /// emqtt-bench's rules: `-m` wins over `-s`; without `-m` the body is `size` bytes of `a`.
    pub fn from_args(message: Option<&str>, size: usize) -> Result<Body, String> {
        match message {
            None => Ok(Body::Fixed(vec![b'a'; size])),
            Some(m) => match m.strip_prefix("template://") {
                None => Ok(Body::Fixed(m.as_bytes().to_vec())),
                Some(path) => {
                    let text = std::fs::read(path)
                        .map_err(|e| format!("cannot read payload template {path}: {e}"))?;
                    Ok(Body::template(text, size))
                }
            },
        }
    }

    /// A template without placeholders is just a fixed body.
    pub fn template(text: Vec<u8>, size: usize) -> Body {
        let has_placeholder = PLACEHOLDERS
            .iter()
            .any(|p| text.windows(p.len()).any(|w| w == *p));
        if has_placeholder {
            Body::Template { text, size }
        } else {
            Body::Fixed(text)
        }
    }

    pub fn is_dynamic(&self) -> bool {
        matches!(self, Body::Template { .. })
    }

    /// Append the body for one message to `out`.
    pub fn render(&self, out: &mut Vec<u8>) {
        let (text, size) = match self {
            Body::Fixed(b) => {
                out.extend_from_slice(b);
                return;
            }
            Body::Template { text, size } => (text, *size),
        };
        let ns = now_ns();
        let mut rest = &text[..];
        while let Some(at) = rest.iter().position(|&b| b == b'%') {
            out.extend_from_slice(&rest[..at]);
            rest = &rest[at..];
            let Some(p) = PLACEHOLDERS.iter().find(|p| rest.starts_with(p)) else {
                out.push(b'%');
                rest = &rest[1..];
                continue;
            };
            match *p {
                b"%TIMESTAMP%" | b"%TIMESTAMPMS%" => push_num(out, ns / 1_000_000),
                b"%TIMESTAMPUS%" => push_num(out, ns / 1_000),
                b"%TIMESTAMPNS%" => push_num(out, ns),
                b"%UNIQUE%" => push_num(out, UNIQUE.fetch_add(1, Ordering::Relaxed)),
                _ => {
                    let start = out.len();
                    out.resize(start + size, 0);
                    rand::rng().fill_bytes(&mut out[start..]);
                }
            }
            rest = &rest[p.len()..];
        }
        out.extend_from_slice(rest);
    }
}

fn push_num(out: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    let _ = write!(out, "{n}");
}

/// One client's PUBLISH, encoded once by the codec; each message is a copy with the packet id
/// and the payload headers patched in. A topic or body that changes per message (`%s`,
/// `%rand_N`, a payload template) re-encodes into the same buffer, which keeps its capacity.
#[derive(Debug, Default)]
pub struct PublishTemplate {
    bytes: BytesMut,
    payload: Vec<u8>,
    pid_at: Option<usize>,
    hdr_at: usize,
}

impl PublishTemplate {
    /// Encode a PUBLISH of `topic` whose payload is `hdr_len` header bytes then `body`.
    pub fn build(
        &mut self,
        protocol: Protocol,
        qos: QoS,
        retain: bool,
        topic: &str,
        hdr_len: usize,
        body: &Body,
    ) {
        self.payload.clear();
        self.payload.resize(hdr_len, 0);
        body.render(&mut self.payload);
        let properties = Properties::default();
        let view = PublishView {
            dup: false,
            qos,
            retain,
            topic,
            // A placeholder: `emit` patches the real one in.
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            payload: &self.payload,
            properties: &properties,
            message_expiry_interval: None,
            topic_alias: None,
            subscription_identifiers: &[],
        };
        self.bytes.clear();
        encode_publish_view(&view, protocol, &mut self.bytes);
        self.hdr_at = self.bytes.len() - self.payload.len();
        // Between the packet id and the payload there is only the v5 property length, which
        // is one zero byte because we send no properties.
        let props_len = usize::from(protocol.is_v5());
        self.pid_at = (qos != QoS::AtMostOnce).then(|| self.hdr_at - props_len - 2);
    }

    /// Append one message to `out`.
    pub fn emit(&mut self, out: &mut BytesMut, packet_id: u16, hdrs: &Hdrs, cnt: u64, ts: u64) {
        if let Some(at) = self.pid_at {
            self.bytes[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        if !hdrs.is_empty() {
            hdrs.write(&mut self.bytes[self.hdr_at..], cnt, ts);
        }
        out.extend_from_slice(&self.bytes);
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use mqtt::Packet;
    use mqtt::codec::decode;

    use super::*;

    #[test]
    fn parse_header_lists() {
        assert_eq!(Hdrs::parse("").unwrap(), Hdrs(vec![]));
        assert_eq!(
            Hdrs::parse("cnt64,ts").unwrap(),
            Hdrs(vec![Hdr::Cnt64, Hdr::Ts])
        );
        assert_eq!(
            Hdrs::parse("ts, cnt64").unwrap(),
            Hdrs(vec![Hdr::Ts, Hdr::Cnt64])
        );
        assert!(Hdrs::parse("ts,seq").is_err());
    }

    #[test]
    fn headers_are_big_endian_in_order() {
        let hdrs = Hdrs(vec![Hdr::Cnt64, Hdr::Ts]);
        let mut buf = [0u8; 20];
        hdrs.write(&mut buf, 0x0102, 0x1122_3344_5566_7788);
        assert_eq!(&buf[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(
            &buf[8..16],
            &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
        assert_eq!(
            hdrs.read(&buf),
            Some(HdrValues {
                cnt: Some(0x0102),
                ts: Some(0x1122_3344_5566_7788)
            })
        );
        // Reading with the other order swaps the meaning, as in emqtt-bench.
        let swapped = Hdrs(vec![Hdr::Ts, Hdr::Cnt64]).read(&buf).unwrap();
        assert_eq!(swapped.ts, Some(0x0102));
        assert_eq!(hdrs.read(&buf[..15]), None);
    }

    #[test]
    fn timestamps_in_either_unit() {
        let now = 1_750_000_000_123_456_789u64;
        // Ours: nanoseconds.
        assert_eq!(latency_us(now - 250_000, now), 250);
        // emqtt-bench's: milliseconds.
        let ms = now / 1_000_000 - 3;
        assert_eq!(latency_us(ms, now), 3_456);
        // From the future: zero, not a wrap-around.
        assert_eq!(latency_us(now + 5_000, now), 0);
        assert!(now_ns() > MS_NS_THRESHOLD);
    }

    #[test]
    fn body_from_args() {
        assert_eq!(
            Body::from_args(None, 3).unwrap(),
            Body::Fixed(b"aaa".to_vec())
        );
        assert_eq!(
            Body::from_args(Some("hello"), 100).unwrap(),
            Body::Fixed(b"hello".to_vec())
        );
        assert!(Body::from_args(Some("template:///no/such/file"), 1).is_err());
        assert!(!Body::template(b"plain".to_vec(), 1).is_dynamic());
    }

    #[test]
    fn template_placeholders() {
        let render = |t: &str, size| {
            let body = Body::template(t.as_bytes().to_vec(), size);
            let mut out = Vec::new();
            body.render(&mut out);
            out
        };
        assert_eq!(render("%RANDOM%", 4).len(), 4);
        assert_eq!(render("x%RANDOM%y", 0), b"xy");
        let before = now_ns();
        let ns: u64 = String::from_utf8(render("%TIMESTAMPNS%", 0))
            .unwrap()
            .parse()
            .unwrap();
        assert!(ns >= before && ns <= now_ns());
        let ms: u64 = String::from_utf8(render("%TIMESTAMP%", 0))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(ms / 1000, ns / 1_000_000_000);
        assert_ne!(render("%UNIQUE%", 0), render("%UNIQUE%", 0));
        // Unknown placeholders and lone percent signs are kept as they are.
        assert!(render("%UNIQUE%5% %FOO% 100%", 0).ends_with(b"5% %FOO% 100%"));
    }

    fn decode_publish(bytes: &[u8], protocol: Protocol) -> mqtt::Publish {
        let mut buf = BytesMut::from(bytes);
        match decode(&mut buf, protocol, usize::MAX).unwrap().unwrap() {
            Packet::Publish(p) => {
                assert!(buf.is_empty());
                p
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn template_patches_decode_like_fresh_encodes() {
        let hdrs = Hdrs(vec![Hdr::Cnt64, Hdr::Ts]);
        for protocol in [Protocol::V31, Protocol::V311, Protocol::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let mut t = PublishTemplate::default();
                t.build(
                    protocol,
                    qos,
                    true,
                    "bench/7",
                    hdrs.len_bytes(),
                    &Body::Fixed(b"xyz".to_vec()),
                );
                let mut out = BytesMut::new();
                t.emit(&mut out, 0xBEEF, &hdrs, 41, 1_750_000_000_000_000_000);
                t.emit(&mut out, 0x0102, &hdrs, 42, 1_750_000_000_000_000_001);
                assert_eq!(out.len(), 2 * t.len());
                let first = decode_publish(&out[..t.len()], protocol);
                let second = decode_publish(&out[t.len()..], protocol);
                assert_eq!(first.topic, "bench/7");
                assert_eq!((first.qos, first.retain, first.dup), (qos, true, false));
                let want_id = |id| if qos == QoS::AtMostOnce { 0 } else { id };
                assert_eq!(first.packet_id, want_id(0xBEEF));
                assert_eq!(second.packet_id, want_id(0x0102));
                assert_eq!(&first.payload[16..], b"xyz");
                let v = hdrs.read(&second.payload).unwrap();
                assert_eq!(v.cnt, Some(42));
                assert_eq!(v.ts, Some(1_750_000_000_000_000_001));
                assert!(first.properties.is_empty());
            }
        }
    }

    #[test]
    fn rebuild_reuses_the_buffer() {
        let mut t = PublishTemplate::default();
        let body = Body::Fixed(vec![b'a'; 64]);
        t.build(Protocol::V5, QoS::AtLeastOnce, false, "a/1", 0, &body);
        let mut out = BytesMut::new();
        t.emit(&mut out, 5, &Hdrs::default(), 0, 0);
        t.build(Protocol::V5, QoS::AtLeastOnce, false, "a/22", 0, &body);
        t.emit(&mut out, 6, &Hdrs::default(), 0, 0);
        let mut buf = out;
        let p1 = decode(&mut buf, Protocol::V5, usize::MAX).unwrap().unwrap();
        let p2 = decode(&mut buf, Protocol::V5, usize::MAX).unwrap().unwrap();
        assert!(matches!(p1, Packet::Publish(ref p) if p.topic == "a/1" && p.packet_id == 5));
        assert!(matches!(p2, Packet::Publish(ref p) if p.topic == "a/22" && p.packet_id == 6));
    }
}
