//! The unbuffered TLS stream against tokio-rustls' client, over in-memory pipes small enough
//! that every write fills them.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::tls::{parse_private_key, provider, server_config};

struct Pki {
    cert: CertificateDer<'static>,
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
    let (s, c) = pair(
        pki.config.clone(),
        client(&pki, &rustls::version::TLS13),
        4096,
    )
    .await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
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
    let (s, c) = pair(
        pki.config.clone(),
        client(&pki, &rustls::version::TLS13),
        4096,
    )
    .await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
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
    let (s, c) = pair(
        pki.config.clone(),
        client(&pki, &rustls::version::TLS13),
        4096,
    )
    .await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
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
