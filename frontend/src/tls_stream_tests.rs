//! The unbuffered TLS stream against tokio-rustls' client, over in-memory pipes small enough
//! that every write fills them.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::tls::{parse_private_key, provider, server_config};

struct Pki {
    cert: CertificateDer<'static>,
    key_pem: String,
    config: Arc<ServerConfig>,
}

fn pki() -> Pki {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let private = parse_private_key(key.serialize_pem().as_bytes()).unwrap();
    let config = server_config(vec![cert.der().clone()], private, None).unwrap();
    Pki {
        cert: cert.der().clone(),
        key_pem: key.serialize_pem(),
        config: Arc::new(config),
    }
}

fn client(pki: &Pki, version: &'static rustls::SupportedProtocolVersion) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(pki.cert.clone()).unwrap();
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

type Client = tokio_rustls::client::TlsStream<DuplexStream>;

/// A handshake over a pipe that holds at most `pipe` bytes each way.
async fn pair(
    server: Arc<ServerConfig>,
    client: ClientConfig,
    pipe: usize,
) -> (io::Result<TlsStream<DuplexStream>>, io::Result<Client>) {
    let (a, b) = tokio::io::duplex(pipe);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from("localhost").unwrap();
    tokio::join!(accept(server, a), connector.connect(name, b))
}

/// A completed TLS 1.3 handshake over a pipe of `pipe` bytes.
async fn connected13(pki: &Pki, pipe: usize) -> (TlsStream<DuplexStream>, Client) {
    let (s, c) = pair(
        pki.config.clone(),
        client(pki, &rustls::version::TLS13),
        pipe,
    )
    .await;
    (s.unwrap(), c.unwrap())
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn holds_nothing(s: &TlsStream<DuplexStream>) -> bool {
    s.incoming.capacity() == 0 && s.outgoing.capacity() == 0 && s.plaintext.capacity() == 0
}

/// Both TLS versions, data both ways at once through `tokio::io::split` (as the broker uses
/// it), more than a pipe, a record and a write hold.
#[tokio::test]
async fn echoes_through_a_small_pipe_with_tls13_and_tls12() {
    let pki = pki();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (s, c) = pair(pki.config.clone(), client(&pki, version), 1000).await;
        let (s, c) = (s.unwrap(), c.unwrap());
        assert!(holds_nothing(&s), "nothing buffered after the handshake");
        let sent = data(300_000);
        let (mut sr, mut sw) = tokio::io::split(s);
        let echo = async {
            let mut buf = [0u8; 4096];
            let mut total = 0;
            while total < sent.len() {
                let n = sr.read(&mut buf).await.unwrap();
                assert!(n > 0, "early end of file");
                sw.write_all(&buf[..n]).await.unwrap();
                sw.flush().await.unwrap();
                total += n;
            }
        };
        let (mut cr, mut cw) = tokio::io::split(c);
        let write = async {
            cw.write_all(&sent).await.unwrap();
            cw.flush().await.unwrap();
        };
        let read = async {
            let mut got = vec![0u8; sent.len()];
            cr.read_exact(&mut got).await.unwrap();
            got
        };
        let ((), got, ()) = tokio::join!(echo, read, write);
        assert!(got == sent, "{version:?}: the echo differs");
        let s = sr.unsplit(sw);
        assert!(holds_nothing(&s), "{version:?}: buffers freed once idle");
    }
}

#[tokio::test]
async fn shutdown_sends_close_notify_and_close_notify_ends_reading() {
    let pki = pki();
    let (mut s, mut c) = connected13(&pki, 4096).await;
    s.write_all(b"bye").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye", "a clean end of file after the data");

    c.write_all(b"last words").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last words");
}

#[tokio::test]
async fn end_of_file_without_close_notify_is_an_error() {
    let pki = pki();
    let (mut s, mut c) = connected13(&pki, 4096).await;
    c.write_all(b"hello").await.unwrap();
    c.flush().await.unwrap();
    drop(c.into_inner().0);
    let mut got = Vec::new();
    let err = s.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(got, b"hello");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

/// Data the client sends right behind its Finished reaches the reader (it usually arrives
/// with the Finished, while the server is still in its handshake).
#[tokio::test]
async fn data_sent_with_the_handshake_is_kept() {
    let pki = pki();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client(&pki, &rustls::version::TLS13)));
    let name = ServerName::try_from("localhost").unwrap();
    let connect = async {
        let mut c = connector.connect(name, b).await.unwrap();
        c.write_all(b"CONNECT").await.unwrap();
        c.flush().await.unwrap();
        c
    };
    let (s, c) = tokio::join!(accept(pki.config.clone(), a), connect);
    let mut s = s.unwrap();
    let mut got = [0u8; 7];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"CONNECT");
    drop(c);
}

#[tokio::test]
async fn key_updates_are_followed() {
    let pki = pki();
    let (mut s, mut c) = connected13(&pki, 4096).await;
    for round in 0..3u8 {
        c.get_mut().1.refresh_traffic_keys().unwrap();
        c.write_all(&[round; 100]).await.unwrap();
        c.flush().await.unwrap();
        let mut got = [0u8; 100];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [round; 100]);
        s.write_all(&[round + 10; 100]).await.unwrap();
        s.flush().await.unwrap();
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [round + 10; 100]);
    }
}

/// A handshake the server refuses ends with an alert the client can name.
#[tokio::test]
async fn a_refused_handshake_tells_the_client_why() {
    let pki = pki();
    // Client certificates required, and this client has none.
    let mut roots = RootCertStore::empty();
    roots.add(pki.cert.clone()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let strict = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            parse_private_key(key.serialize_pem().as_bytes())
                .unwrap()
                .der()
                .clone_key(),
        )
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (s, c) = pair(Arc::new(strict), client, 64 * 1024).await;
    assert!(s.is_err(), "the server refuses the handshake");
    // TLS 1.3: the client finished its side before the server checked its certificate.
    let mut c = c.unwrap();
    let mut buf = [0u8; 16];
    let err = c.read(&mut buf).await.unwrap_err();
    assert!(
        err.to_string().contains("CertificateRequired"),
        "the client learns why: {err}"
    );
}

// ---- Hostile and unusual peers -----------------------------------------------------------------

/// Generous: only there so that a hang fails the test instead of stalling the run.
const HANG_GUARD: Duration = Duration::from_secs(10);

async fn guarded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .expect("hangs (no wakeup?)")
}

/// At most one byte per read and per write, either way.
struct Trickle<IO>(IO);

impl<IO: AsyncRead + Unpin> AsyncRead for Trickle<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut one = [0u8; 1];
        let mut small = ReadBuf::new(&mut one);
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut small))?;
        buf.put_slice(small.filled());
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Trickle<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = data.len().min(1);
        Pin::new(&mut self.0).poll_write(cx, &data[..n])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The client's socket: what the client writes while `held` is `Some` is kept there instead
/// of sent, so a test can send it cut, replayed or not at all.
struct Tap {
    io: DuplexStream,
    held: Arc<Mutex<Option<Vec<u8>>>>,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(held) = self.held.lock().unwrap().as_mut() {
            held.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

type TapClient = tokio_rustls::client::TlsStream<Tap>;

/// A handshake with the client behind a [`Tap`] (holding nothing yet), then "hello" from the
/// client, so that what the tap holds next is application data only.
async fn tapped(
    pki: &Pki,
    version: &'static rustls::SupportedProtocolVersion,
) -> (
    TlsStream<DuplexStream>,
    TapClient,
    Arc<Mutex<Option<Vec<u8>>>>,
) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let held = Arc::new(Mutex::new(None));
    let tap = Tap {
        io: b,
        held: held.clone(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client(pki, version)));
    let name = ServerName::try_from("localhost").unwrap();
    let (s, c) = tokio::join!(accept(pki.config.clone(), a), connector.connect(name, tap));
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    c.write_all(b"hello").await.unwrap();
    c.flush().await.unwrap();
    let mut got = [0u8; 5];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello");
    (s, c, held)
}

/// What the client writes for `data`, as records on the wire, without sending it.
async fn records_for(c: &mut TapClient, held: &Mutex<Option<Vec<u8>>>, data: &[u8]) -> Vec<u8> {
    *held.lock().unwrap() = Some(Vec::new());
    c.write_all(data).await.unwrap();
    c.flush().await.unwrap();
    held.lock().unwrap().take().unwrap()
}

/// Bytes no peer's record layer accepts after the handshake, and the alert each deserves.
fn hostile_records() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut bad_mac = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    bad_mac.extend([0xa5; 0x40]);
    let mut bad_type = vec![0x63, 0x03, 0x03, 0x00, 0x10];
    bad_type.extend([0; 0x10]);
    // Longer than any record may be (2^14 + 2048 of ciphertext): refused from its header.
    let oversized = vec![0x17, 0x03, 0x03, 0x48, 0x01];
    vec![
        ("a record that does not decrypt", bad_mac, "BadRecordMac"),
        ("an unknown record type", bad_type, "DecodeError"),
        ("an oversized record", oversized, "DecodeError"),
    ]
}

/// Garbage after the handshake fails the read (and every later read, write and shutdown) with
/// an error, never a panic, and the client is told why with a fatal alert.
#[tokio::test]
async fn garbage_after_the_handshake_fails_the_connection_and_the_client_learns_why() {
    let pki = pki();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for (what, garbage, alert) in hostile_records() {
            let (mut s, mut c, _held) = tapped(&pki, version).await;
            c.get_mut().0.io.write_all(&garbage).await.unwrap();
            let mut buf = [0u8; 64];
            let err = guarded(s.read(&mut buf)).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{version:?} {what}");
            // A broken connection stays broken, whatever the caller tries next.
            let again = guarded(s.read(&mut buf)).await.unwrap_err();
            assert_eq!(
                again.kind(),
                io::ErrorKind::InvalidData,
                "{version:?} {what}"
            );
            assert!(s.write_all(b"more").await.is_err(), "{version:?} {what}");
            guarded(s.shutdown()).await.unwrap();
            let err = guarded(c.read(&mut buf)).await.unwrap_err();
            assert!(
                err.to_string().contains(alert),
                "{version:?} {what}: the client learns why: {err}"
            );
        }
    }
}

/// A handshake (with a client certificate, so that the client's flight is several records)
/// and data both ways, over a socket that moves one byte per read and per write: every
/// record arrives in pieces, and every write the server makes is partial.
#[tokio::test]
async fn one_byte_at_a_time_with_tls13_and_tls12() {
    let pki = pki();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["device".to_owned()]).unwrap();
    let device = params.self_signed(&key).unwrap();
    let mut trusted = RootCertStore::empty();
    trusted.add(device.der().clone()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(trusted), provider())
            .build()
            .unwrap();
    let private = parse_private_key(pki.key_pem.as_bytes()).unwrap();
    let server = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.cert.clone()], private.der().clone_key())
        .unwrap();
    let server = Arc::new(server);
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut roots = RootCertStore::empty();
        roots.add(pki.cert.clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![device.der().clone()],
                parse_private_key(key.serialize_pem().as_bytes())
                    .unwrap()
                    .der()
                    .clone_key(),
            )
            .unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("localhost").unwrap();
        let (s, c) = guarded(async {
            tokio::join!(
                accept(server.clone(), Trickle(a)),
                connector.connect(name, b)
            )
        })
        .await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(
            s.peer_certificates(),
            Some(&[device.der().clone()][..]),
            "{version:?}: the client's chain is kept"
        );
        let up = data(40_000);
        let down = data(30_000);
        let server_side = async {
            let mut got = vec![0u8; up.len()];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(&down).await.unwrap();
            s.flush().await.unwrap();
            got
        };
        let client_side = async {
            c.write_all(&up).await.unwrap();
            c.flush().await.unwrap();
            let mut got = vec![0u8; down.len()];
            c.read_exact(&mut got).await.unwrap();
            got
        };
        let (got_up, got_down) = guarded(async { tokio::join!(server_side, client_side) }).await;
        assert!(got_up == up, "{version:?}: client to server");
        assert!(got_down == down, "{version:?}: server to client");
    }
}

/// Most ciphertext one record takes on the wire (rustls' limit).
const MAX_RECORD: usize = 16 * 1024 + 2048 + 5;

/// A mebibyte each way at once, with a client that reads slowly and a server that reads a
/// few bytes at a time: all of it arrives intact, and between calls the server never holds
/// more than an incomplete record received, one read's worth of records decrypted, and one
/// write's worth of ciphertext unsent.
#[tokio::test]
async fn a_mebibyte_each_way_with_slow_readers_keeps_buffers_bounded() {
    let pki = pki();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (s, c) = pair(pki.config.clone(), client(&pki, version), 16 * 1024).await;
        let (mut s, c) = (s.unwrap(), c.unwrap());
        let up = data(1 << 20);
        let down: Vec<u8> = data((1 << 20) + 3).into_iter().rev().collect();
        let mut got_up = Vec::new();
        let mut sent = 0;
        let mut flushed = false;
        let (mut most_incoming, mut most_plaintext, mut most_outgoing) = (0, 0, 0);
        let server_side = poll_fn(|cx| {
            loop {
                let mut progress = false;
                if got_up.len() < up.len() {
                    let mut buf = [0u8; 97];
                    let mut buf = ReadBuf::new(&mut buf);
                    if let Poll::Ready(r) = Pin::new(&mut s).poll_read(cx, &mut buf) {
                        r.unwrap();
                        assert!(!buf.filled().is_empty(), "early end of file");
                        got_up.extend_from_slice(buf.filled());
                        progress = true;
                    }
                }
                if sent < down.len() {
                    if let Poll::Ready(n) = Pin::new(&mut s).poll_write(cx, &down[sent..]) {
                        sent += n.unwrap();
                        progress = true;
                    }
                } else if !flushed && Pin::new(&mut s).poll_flush(cx).is_ready() {
                    flushed = true;
                    progress = true;
                }
                most_incoming = most_incoming.max(s.incoming.len());
                most_plaintext = most_plaintext.max(s.plaintext.len() - s.taken);
                most_outgoing = most_outgoing.max(s.outgoing.len() - s.sent);
                if got_up.len() == up.len() && flushed {
                    return Poll::Ready(());
                }
                if !progress {
                    return Poll::Pending;
                }
            }
        });
        let (mut cr, mut cw) = tokio::io::split(c);
        let client_write = async {
            cw.write_all(&up).await.unwrap();
            cw.flush().await.unwrap();
        };
        let client_read = async {
            let mut got = Vec::new();
            let mut buf = [0u8; 1000];
            while got.len() < down.len() {
                let n = cr.read(&mut buf).await.unwrap();
                assert!(n > 0, "early end of file");
                got.extend_from_slice(&buf[..n]);
                tokio::task::yield_now().await;
            }
            got
        };
        let ((), (), got_down) =
            guarded(async { tokio::join!(server_side, client_write, client_read) }).await;
        assert!(got_up == up, "{version:?}: client to server");
        assert!(got_down == down, "{version:?}: server to client");
        assert!(
            most_incoming < MAX_RECORD,
            "{version:?}: at most an incomplete record waits, not {most_incoming} bytes"
        );
        assert!(
            most_plaintext <= MAX_RECORD + READ_SIZE,
            "{version:?}: at most one read's worth decrypted ahead, not {most_plaintext} bytes"
        );
        assert!(
            most_outgoing <= MAX_WRITE + 1024,
            "{version:?}: at most one write's worth of ciphertext queued, not {most_outgoing} bytes"
        );
        assert!(holds_nothing(&s), "{version:?}: buffers freed once idle");
    }
}

/// The client updates its keys while the server has ciphertext queued that the client has
/// not read: the server's KeyUpdate answer goes out after that ciphertext (under the old
/// keys) and before anything newer, so the client decrypts all of it.
#[tokio::test]
async fn a_key_update_while_server_data_is_queued_keeps_the_order() {
    let pki = pki();
    let (mut s, mut c) = connected13(&pki, 4096).await;
    let big = data(100_000);
    let mut sent = 0;
    let mut cx = Context::from_waker(Waker::noop());
    while let Poll::Ready(n) = Pin::new(&mut s).poll_write(&mut cx, &big[sent..]) {
        sent += n.unwrap();
    }
    assert!(sent < big.len(), "the pipe stopped the server");
    assert!(s.outgoing.len() > s.sent, "ciphertext is queued");

    for round in 0..3u8 {
        c.get_mut().1.refresh_traffic_keys().unwrap();
        c.write_all(&[round; 300]).await.unwrap();
        c.flush().await.unwrap();
        let mut got = [0u8; 300];
        guarded(s.read_exact(&mut got)).await.unwrap();
        assert_eq!(got, [round; 300], "round {round}");
    }
    let server_side = async {
        s.write_all(&big[sent..]).await.unwrap();
        s.write_all(b"tail").await.unwrap();
        s.flush().await.unwrap();
    };
    let client_side = async {
        let mut got = vec![0u8; big.len() + 4];
        c.read_exact(&mut got).await.unwrap();
        got
    };
    let ((), got) = guarded(async { tokio::join!(server_side, client_side) }).await;
    assert!(
        got[..big.len()] == big[..],
        "the queued data, then the rest"
    );
    assert_eq!(&got[big.len()..], b"tail");

    // Both sides still agree on the keys.
    c.write_all(b"ping").await.unwrap();
    c.flush().await.unwrap();
    let mut got = [0u8; 4];
    guarded(s.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"ping");
    s.write_all(b"pong").await.unwrap();
    s.flush().await.unwrap();
    guarded(c.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"pong");
}

/// The socket closes in the middle of a record: the truncation is an error, and nothing of
/// the incomplete record is delivered.
#[tokio::test]
async fn end_of_file_inside_a_record_is_unexpected() {
    let pki = pki();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (mut s, mut c, held) = tapped(&pki, version).await;
        let whole = records_for(&mut c, &held, b"complete").await;
        let cut = records_for(&mut c, &held, &data(1000)).await;
        let raw = &mut c.get_mut().0.io;
        raw.write_all(&whole).await.unwrap();
        raw.write_all(&cut[..cut.len() / 2]).await.unwrap();
        raw.shutdown().await.unwrap();
        let mut got = Vec::new();
        let err = guarded(s.read_to_end(&mut got)).await.unwrap_err();
        assert_eq!(got, b"complete", "{version:?}");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{version:?}");
    }
}

/// A genuine record sent twice: the data is delivered once, then the replay fails the
/// connection (it does not decrypt under the next sequence number) and the client is told.
#[tokio::test]
async fn a_replayed_record_is_refused_after_the_data_before_it() {
    let pki = pki();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (mut s, mut c, held) = tapped(&pki, version).await;
        let once = records_for(&mut c, &held, b"once").await;
        // Both in one write: decrypted in the same pass as the failure.
        let twice = [once.clone(), once].concat();
        c.get_mut().0.io.write_all(&twice).await.unwrap();
        let mut got = [0u8; 16];
        let n = guarded(s.read(&mut got)).await.unwrap();
        assert_eq!(&got[..n], b"once", "{version:?}");
        let err = guarded(s.read(&mut got)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{version:?}");
        guarded(s.flush()).await.unwrap();
        let err = guarded(c.read(&mut got)).await.unwrap_err();
        assert!(
            err.to_string().contains("BadRecordMac"),
            "{version:?}: {err}"
        );
    }
}

/// The first flight of a TLS 1.3 client, as bytes.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(client(pki, &rustls::version::TLS13)), name)
            .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

/// A client that goes away during the handshake (before, inside or after its ClientHello)
/// fails `accept` with `UnexpectedEof`.
#[tokio::test]
async fn end_of_file_during_the_handshake_is_unexpected() {
    let pki = pki();
    let hello = client_hello(&pki);
    for cut in [0, 3, hello.len() / 2, hello.len()] {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        b.write_all(&hello[..cut]).await.unwrap();
        b.shutdown().await.unwrap();
        let err = match guarded(accept(pki.config.clone(), a)).await {
            Ok(_) => panic!("a handshake without a client"),
            Err(e) => e,
        };
        assert_eq!(
            err.kind(),
            io::ErrorKind::UnexpectedEof,
            "cut at {cut}: {err}"
        );
        drop(b);
    }
}

/// A ClientHello that announces more than a handshake message may hold is refused at once.
#[tokio::test]
async fn a_handshake_message_too_large_is_refused() {
    let pki = pki();
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    // ClientHello, 1 MiB long.
    record.extend([0x01, 0x10, 0x00, 0x00]);
    record.resize(5 + 0x4000, 0);
    b.write_all(&record).await.unwrap();
    let err = match guarded(accept(pki.config.clone(), a)).await {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

/// A ClientHello of legal size sent in one-byte records, whose headers rustls keeps until the
/// message is complete: the server refuses it once `MAX_INCOMING` is held, instead of
/// buffering the 6 bytes a byte this peer would send.
#[tokio::test]
async fn a_handshake_in_tiny_records_is_refused_once_too_much_is_held() {
    let pki = pki();
    let pipe = 16 * 1024;
    let (a, mut b) = tokio::io::duplex(pipe);
    let server = async {
        let result = accept(pki.config.clone(), a).await;
        // Drop the socket, so that the client's writes fail.
        result.map(|_| ())
    };
    let client = async {
        // ClientHello, 0xfff0 bytes long (legal), then filler, a byte a record.
        let body = [0x01, 0x00, 0xff, 0xf0]
            .into_iter()
            .chain(std::iter::repeat(0));
        let mut written = 0usize;
        for byte in body.take(0xfff4) {
            if b.write_all(&[0x16, 0x03, 0x03, 0x00, 0x01, byte])
                .await
                .is_err()
            {
                break;
            }
            written += 6;
        }
        written
    };
    let (result, written) = guarded(async { tokio::join!(server, client) }).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert!(
        written <= MAX_INCOMING + READ_SIZE + pipe,
        "the server stopped reading after about MAX_INCOMING, not after {written} bytes"
    );
}

/// The server's last flight (TLS 1.3 session tickets included) goes out before `accept`
/// returns: a second connection of the same client resumes, and keeps the client's chain.
#[tokio::test]
async fn the_session_tickets_sent_with_the_handshake_resume_the_next_one() {
    let pki = pki();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let client = client(&pki, version);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        for round in 0..2 {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let name = ServerName::try_from("localhost").unwrap();
            let (s, c) = guarded(async {
                tokio::join!(accept(pki.config.clone(), a), connector.connect(name, b))
            })
            .await;
            let (mut s, mut c) = (s.unwrap(), c.unwrap());
            let expected = match round {
                0 => rustls::HandshakeKind::Full,
                _ => rustls::HandshakeKind::Resumed,
            };
            assert_eq!(s.conn.handshake_kind(), Some(expected), "{version:?}");
            // The client takes the tickets in with the server's data.
            s.write_all(b"hi").await.unwrap();
            s.flush().await.unwrap();
            let mut got = [0u8; 2];
            guarded(c.read_exact(&mut got)).await.unwrap();
            assert_eq!(&got, b"hi");
        }
    }
}

/// The client guesses the key exchange group wrong: the handshake takes a HelloRetryRequest
/// and a second ClientHello, one byte at a time.
#[tokio::test]
async fn a_hello_retry_request_handshake_completes() {
    let pki = pki();
    let mut only_x25519 = (*provider()).clone();
    only_x25519.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    let server = ServerConfig::builder_with_provider(Arc::new(only_x25519))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert.clone()],
            parse_private_key(pki.key_pem.as_bytes())
                .unwrap()
                .der()
                .clone_key(),
        )
        .unwrap();
    let mut p256_first = (*provider()).clone();
    p256_first.kx_groups = vec![
        rustls::crypto::ring::kx_group::SECP256R1,
        rustls::crypto::ring::kx_group::X25519,
    ];
    let mut roots = RootCertStore::empty();
    roots.add(pki.cert.clone()).unwrap();
    let client = ClientConfig::builder_with_provider(Arc::new(p256_first))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from("localhost").unwrap();
    let (s, c) = guarded(async {
        tokio::join!(
            accept(Arc::new(server), Trickle(a)),
            connector.connect(name, b)
        )
    })
    .await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    assert_eq!(
        s.conn.handshake_kind(),
        Some(rustls::HandshakeKind::FullWithHelloRetryRequest)
    );
    c.write_all(b"after retry").await.unwrap();
    c.flush().await.unwrap();
    let mut got = [0u8; 11];
    guarded(s.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"after retry");
}
