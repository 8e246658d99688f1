//! MQTT over WebSockets for the end-to-end tests: the client side of the upgrade
//! (tokio-tungstenite) and [`WsTransport`], a byte stream over binary messages so a
//! [`RawClient`] speaks MQTT over a WebSocket exactly as it does over TCP.
//!
//! Each write of the client becomes one binary message, so a test controls message boundaries
//! with [`RawClient::send_raw`]: one call per message. It is a test client, not a reusable
//! transport: text frames and protocol errors surface as read errors, which [`RawClient`]
//! reports as a closed connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use mqtt::{ConnAck, Connect, ReasonCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::WAIT;
use crate::raw::{RawClient, connect_v5, connect_v311};

/// The path the broker serves MQTT on.
pub const PATH: &str = "/mqtt";

pub type WsStream = WebSocketStream<TcpStream>;

/// Open TCP to `addr` and run the upgrade for `path`, offering `subprotocols` (the value of
/// `Sec-WebSocket-Protocol`, or none). Returns the handshake's result as tungstenite reports
/// it, so tests can check refusals; panics only if TCP or the handshake hangs.
pub async fn handshake(
    addr: SocketAddr,
    path: &str,
    subprotocols: Option<&str>,
) -> Result<(WsStream, Response), tungstenite::Error> {
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("TCP connect timed out")
        .unwrap_or_else(|e| panic!("TCP connect to {addr}: {e}"));
    tcp.set_nodelay(true).expect("nodelay");
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("a valid request");
    if let Some(p) = subprotocols {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            p.parse().expect("a valid header value"),
        );
    }
    tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tcp))
        .await
        .expect("WebSocket handshake timed out")
}

/// A WebSocket on [`PATH`] with the `mqtt` subprotocol, as a [`RawClient`] that has sent
/// nothing yet. Checks that the broker selected `mqtt` ([MQTT-6.0.0-4]).
pub async fn raw(addr: SocketAddr) -> RawClient {
    let (ws, response) = handshake(addr, PATH, Some("mqtt"))
        .await
        .unwrap_or_else(|e| panic!("WebSocket upgrade at {addr}{PATH}: {e}"));
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mqtt"),
        "the broker must select the mqtt subprotocol"
    );
    RawClient::over(WsTransport::new(ws))
}

/// CONNECT over a WebSocket; returns the CONNACK whatever its code.
pub async fn connect(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
    raw(addr).await.connect_on(connect).await
}

/// A v5 client with a clean start over a WebSocket, CONNACK Success checked.
pub async fn v5(addr: SocketAddr, client_id: &str) -> RawClient {
    let (c, ack) = connect(addr, connect_v5(client_id)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "CONNACK {ack:?}");
    c
}

/// A 3.1.1 client with a clean session over a WebSocket, CONNACK Success checked.
pub async fn v311(addr: SocketAddr, client_id: &str) -> RawClient {
    let (c, ack) = connect(addr, connect_v311(client_id, true)).await;
    assert_eq!(ack.code, ReasonCode::SUCCESS, "CONNACK {ack:?}");
    c
}

/// The client side of an MQTT WebSocket as a byte stream: reads yield binary payloads in
/// order, each write is one binary message (sent on flush).
pub struct WsTransport {
    ws: WsStream,
    /// The unread rest of the last binary message.
    read_buf: Bytes,
    eof: bool,
}

impl WsTransport {
    pub fn new(ws: WsStream) -> WsTransport {
        WsTransport {
            ws,
            read_buf: Bytes::new(),
            eof: false,
        }
    }
}

fn into_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        e => io::Error::other(e),
    }
}

impl AsyncRead for WsTransport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.read_buf.is_empty() {
                let n = this.read_buf.len().min(buf.remaining());
                buf.put_slice(&this.read_buf.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => this.read_buf = b,
                Some(Ok(Message::Text(t))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("broker sent a text frame: {t:?}"),
                    )));
                }
                // Pongs are queued by tungstenite; a close is answered, then the stream ends.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(into_io(e))),
                None => this.eof = true,
            }
        }
    }
}

impl AsyncWrite for WsTransport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(into_io)?;
        Pin::new(&mut this.ws)
            .start_send(Message::binary(buf.to_vec()))
            .map_err(into_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(into_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_close(cx)
            .map_err(into_io)
    }
}
