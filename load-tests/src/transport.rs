//! Opening one connection's byte stream: TCP from an optional source address, then optionally
//! TLS (rustls with ring), then optionally a WebSocket (path `/mqtt`, subprotocol `mqtt`, binary
//! frames) presented as a plain byte stream so the MQTT client above never knows which it got.
//!
//! Not here: MQTT. TLS policy mirrors emqtt-bench: without `--cacertfile` the server certificate
//! is not verified (the handshake signature still is), and sessions are never resumed, so every
//! connection pays for a full handshake, which is what a connection-rate test wants to measure.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Any byte stream a client can run on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connected stream. Plain TCP stays unboxed so its halves can be borrowed without a lock.
pub enum Transport {
    Tcp(TcpStream),
    Other(Box<dyn Io>),
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The name given on the command line: TLS server name and WebSocket `Host`.
    pub host: String,
    pub tls: Option<TlsConnector>,
    pub ws: bool,
}

/// Why a connection attempt failed, as far as the counters care.
#[derive(Debug)]
pub enum ConnectError {
    Refused(io::Error),
    Unreachable(io::Error),
    /// Any other failure below MQTT: TCP, TLS or the WebSocket upgrade.
    Io(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(e) | ConnectError::Unreachable(e) => write!(f, "{e}"),
            ConnectError::Io(s) => f.write_str(s),
        }
    }
}

fn classify(e: io::Error) -> ConnectError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectError::Refused(e),
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
            ConnectError::Unreachable(e)
        }
        _ => ConnectError::Io(format!("tcp: {e}")),
    }
}

/// TCP (bound to `local` if given), then TLS and/or WebSocket as `target` says.
pub async fn open(target: &Target, local: Option<IpAddr>) -> Result<Transport, ConnectError> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(classify)?;
    if let Some(ip) = local {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| ConnectError::Io(format!("cannot bind source address {ip}: {e}")))?;
    }
    let tcp = socket.connect(target.addr).await.map_err(classify)?;
    // MQTT packets are small and latency is measured: never wait for Nagle.
    tcp.set_nodelay(true).map_err(classify)?;
    match (&target.tls, target.ws) {
        (None, false) => Ok(Transport::Tcp(tcp)),
        (None, true) => Ok(Transport::Other(Box::new(ws(tcp, target, "ws").await?))),
        (Some(tls), ws_too) => {
            let name = server_name(&target.host)?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| ConnectError::Io(format!("tls: {e}")))?;
            if ws_too {
                Ok(Transport::Other(Box::new(ws(stream, target, "wss").await?)))
            } else {
                Ok(Transport::Other(Box::new(stream)))
            }
        }
    }
}

fn server_name(host: &str) -> Result<ServerName<'static>, ConnectError> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| ConnectError::Io(format!("tls: bad server name {host:?}: {e}")))
}

async fn ws<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    target: &Target,
    scheme: &str,
) -> Result<WsIo<S>, ConnectError> {
    let host = if target.host.contains(':') {
        format!("[{}]", target.host)
    } else {
        target.host.clone()
    };
    let url = format!("{scheme}://{host}:{}/mqtt", target.addr.port());
    let mut request = url
        .into_client_request()
        .map_err(|e| ConnectError::Io(format!("websocket: {e}")))?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, _response) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| ConnectError::Io(format!("websocket: {e}")))?;
    Ok(WsIo::new(ws))
}

/// A WebSocket carrying MQTT, seen as a byte stream: reads yield the payloads of binary
/// messages back to back (MQTT packets may span or share messages), each write becomes one
/// binary message. Ping/pong is answered by tungstenite; a close or a text message ends the
/// stream. Used by the client here and by test servers.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
}

impl<S> WsIo<S> {
    pub fn new(ws: WebSocketStream<S>) -> WsIo<S> {
        WsIo {
            ws,
            pending: Bytes::new(),
        }
    }
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(b))) => self.pending = b,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text frame on an MQTT WebSocket",
                    )));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(ws_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_err)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_err)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(ws_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(ws_err)
    }
}

/// The rustls client configuration for `-S`, built once and shared by every connection.
pub fn tls_config(
    cacertfile: Option<&Path>,
    certfile: Option<&Path>,
    keyfile: Option<&Path>,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match cacertfile {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read --cacertfile {}: {e}", path.display()))?
            {
                let cert =
                    cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertCheck(provider))),
    };
    let mut config = match (certfile, keyfile) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read --certfile {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read --keyfile {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("tls client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Accepts any server certificate (emqtt-bench's `verify_none`), but still checks that the
/// server holds the key for the certificate it sent.
#[derive(Debug)]
struct NoCertCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    use super::*;

    /// A WebSocket echo server that insists on the `mqtt` subprotocol.
    async fn ws_echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            #[allow(clippy::result_large_err, reason = "tungstenite's callback signature")]
            let check = |req: &Request, mut resp: Response| {
                assert_eq!(req.uri().path(), "/mqtt");
                assert_eq!(req.headers()["Sec-WebSocket-Protocol"], "mqtt");
                resp.headers_mut()
                    .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
                Ok(resp)
            };
            let ws = tokio_tungstenite::accept_hdr_async(tcp, check)
                .await
                .unwrap();
            let mut io = WsIo::new(ws);
            let mut buf = [0u8; 64];
            loop {
                let n = io.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                io.write_all(&buf[..n]).await.unwrap();
                io.flush().await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn websocket_is_a_byte_stream() {
        let addr = ws_echo().await;
        let target = Target {
            addr,
            host: "127.0.0.1".into(),
            tls: None,
            ws: true,
        };
        let Transport::Other(mut io) = open(&target, None).await.unwrap() else {
            panic!("a WebSocket is not plain TCP")
        };
        io.write_all(b"\x10\x02hi").await.unwrap();
        io.flush().await.unwrap();
        let mut got = [0u8; 4];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x10\x02hi");
    }

    #[tokio::test]
    async fn refused_is_classified() {
        // Bind then drop, so the port is (almost certainly) closed.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let target = Target {
            addr,
            host: "127.0.0.1".into(),
            tls: None,
            ws: false,
        };
        assert!(matches!(
            open(&target, None).await,
            Err(ConnectError::Refused(_))
        ));
    }

    #[test]
    fn tls_config_files() {
        assert!(tls_config(None, None, None).is_ok());
        assert!(tls_config(Some(Path::new("/no/such/ca.pem")), None, None).is_err());
    }
}
