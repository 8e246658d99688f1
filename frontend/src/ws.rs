//! MQTT over WebSockets (MQTT 5.0 §6, 3.1.1 §6): the server side of the HTTP upgrade on
//! [`PATH`] with the `mqtt` subprotocol, and [`WsIo`], which turns the WebSocket back into the
//! byte stream a connection reads MQTT from.
//!
//! This module knows nothing about MQTT packets and does no TLS: the caller runs the TLS
//! handshake first (when the port has TLS) and hands the result to [`accept`], then gives the
//! [`WsIo`] to a connection exactly as it would a TCP stream. MQTT packets and WebSocket
//! messages do not line up ([MQTT-6.0.0-2]): a packet may span several messages and a message
//! may carry several packets, so the adapter is a plain byte stream and framing stays the
//! codec's job.
//!
//! [`WsIo`] is poll-based over tokio-tungstenite's `Stream`/`Sink`, not a pair of pump tasks:
//! no extra task, channel or copy per connection, and write backpressure reaches the caller
//! unchanged.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

/// The HTTP path MQTT is served on.
pub const PATH: &str = "/mqtt";

/// The WebSocket subprotocol the client must offer and the server selects ([MQTT-6.0.0-3],
/// [MQTT-6.0.0-4]).
pub const SUBPROTOCOL: &str = "mqtt";

/// How long [`accept`] waits for the client's upgrade request and for the 101 response to be
/// written. Matches the broker's CONNECT timeout: a client gets the same time to say something
/// useful whichever transport it uses. The TLS handshake before it is the caller's to bound.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest WebSocket message (and frame) [`accept`] takes: the largest MQTT packet,
/// 1 byte of type, 4 of remaining length and 268,435,455 of body. tungstenite buffers a whole
/// message before handing it over, so this bounds memory per connection; a listener with a
/// lower `maxPacketSizeBytes` can pass a tighter bound through [`WsOptions`].
pub const MAX_MESSAGE_SIZE: usize = 1 + 4 + 268_435_455;

/// The size of tungstenite's read buffer, allocated up front for every connection. Its default
/// (128 KiB) is sized for throughput on few sockets; a broker holds many mostly idle ones.
const READ_BUFFER_SIZE: usize = 16 * 1024;

/// Why [`accept`] did not produce a WebSocket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// The upgrade request was for another path; the client got HTTP 404.
    #[error("HTTP 404: request path {path:?} is not {PATH}")]
    NotFound { path: String },
    /// The client did not list `mqtt` in `Sec-WebSocket-Protocol`; it got HTTP 400.
    #[error(
        "HTTP 400: the client offered WebSocket subprotocols {offered:?}, not \"mqtt\" [MQTT-6.0.0-3]"
    )]
    NoMqttSubprotocol { offered: String },
    /// The upgrade did not complete within the handshake timeout.
    #[error("WebSocket handshake not completed within {0:?}")]
    Timeout(Duration),
    /// Not an HTTP upgrade at all (for example raw MQTT on a WebSocket port), a malformed
    /// request, or an IO error; the client got no response.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(#[source] tungstenite::Error),
}

/// Why [`WsIo`] stopped reading, carried inside the `io::Error` it returns (kind `InvalidData`)
/// so the caller can tell a misbehaving client from a broken socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsViolation {
    #[error("[MQTT-6.0.0-1] received a text frame; MQTT travels in binary frames only")]
    TextFrame,
}

/// Limits for one WebSocket connection.
#[derive(Debug, Clone)]
pub struct WsOptions {
    /// The largest message and frame accepted; see [`MAX_MESSAGE_SIZE`].
    pub max_message_size: usize,
    /// See [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
}

impl Default for WsOptions {
    fn default() -> Self {
        WsOptions {
            max_message_size: MAX_MESSAGE_SIZE,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

/// Performs the server side of the WebSocket handshake and returns a byte stream.
///
/// Refuses, with an HTTP error response and no upgrade, a request for another path than
/// [`PATH`] (404) or one that does not offer the `mqtt` subprotocol (400). Bounded by
/// [`HANDSHAKE_TIMEOUT`], so the caller needs no timeout of its own for this step.
pub async fn accept<S>(stream: S) -> Result<WsIo<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    accept_with(stream, &WsOptions::default()).await
}

/// [`accept`] with explicit limits.
pub async fn accept_with<S>(stream: S, options: &WsOptions) -> Result<WsIo<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        // The connection already batches its output into few large writes; buffering again
        // here would only delay them until the next flush.
        .write_buffer_size(0)
        .max_message_size(Some(options.max_message_size))
        .max_frame_size(Some(options.max_message_size));
    let mut refused = None;
    let check = UpgradeCheck {
        refused: &mut refused,
    };
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
    match tokio::time::timeout(options.handshake_timeout, handshake).await {
        Err(_) => Err(WsError::Timeout(options.handshake_timeout)),
        Ok(Err(e)) => Err(refused.unwrap_or(WsError::Handshake(e))),
        Ok(Ok(ws)) => Ok(WsIo::new(ws)),
    }
}

/// The upgrade callback. tungstenite reports a refusal only as the HTTP response it sent, so
/// the typed reason is kept aside for [`accept`] to return.
struct UpgradeCheck<'a> {
    refused: &'a mut Option<WsError>,
}

impl Callback for UpgradeCheck<'_> {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        check_request(request, response).map_err(|error| {
            let http = match &error {
                WsError::NotFound { .. } => {
                    refusal(StatusCode::NOT_FOUND, "MQTT is served on /mqtt\n")
                }
                _ => refusal(
                    StatusCode::BAD_REQUEST,
                    "offer the \"mqtt\" WebSocket subprotocol\n",
                ),
            };
            *self.refused = Some(error);
            http
        })
    }
}

/// Accepts the upgrade only on [`PATH`] with the `mqtt` subprotocol, and selects it.
fn check_request(request: &Request, mut response: Response) -> Result<Response, WsError> {
    let path = request.uri().path();
    if path != PATH {
        return Err(WsError::NotFound {
            path: path.to_owned(),
        });
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if !offered.contains(&SUBPROTOCOL) {
        return Err(WsError::NoMqttSubprotocol {
            offered: offered.join(", "),
        });
    }
    response.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(response)
}

fn refusal(status: StatusCode, body: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body.to_owned()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    response
}

/// An accepted MQTT WebSocket as a byte stream: reads yield the payloads of binary messages
/// in order, each write becomes one binary message.
///
/// Reading: pings are answered (tungstenite queues the pong and sends it on the next read or
/// write), pongs are skipped, a close frame is answered and then reads return EOF. A text
/// frame is a protocol error ([MQTT-6.0.0-1]): the peer gets a close frame 1003 and the read
/// fails with [`WsViolation::TextFrame`]; an oversized or malformed frame likewise gets 1009 or
/// 1002 and an `InvalidData` error.
///
/// Writing: `poll_write` accepts a buffer only after everything written before has reached the
/// underlying stream, so at most one message waits inside and the caller sees the socket's
/// backpressure. It also pushes the new message out straight away, so a caller that never
/// flushes still makes progress unless the socket is full; `poll_flush` finishes the job.
/// `poll_shutdown` sends a normal close frame and then shuts the underlying stream down.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    read_buf: Bytes,
    /// Reads return EOF from now on: the peer closed, or a read failed.
    read_done: bool,
    /// A message was accepted but pushing it out would have blocked.
    unflushed: bool,
    /// Our close frame is queued; nothing may be written after it.
    close_sent: bool,
}

impl<S> fmt::Debug for WsIo<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsIo")
            .field("buffered", &self.read_buf.len())
            .field("read_done", &self.read_done)
            .field("unflushed", &self.unflushed)
            .field("close_sent", &self.close_sent)
            .finish_non_exhaustive()
    }
}

impl<S> WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn new(ws: WebSocketStream<S>) -> Self {
        WsIo {
            ws,
            read_buf: Bytes::new(),
            read_done: false,
            unflushed: false,
            close_sent: false,
        }
    }

    /// The underlying stream, e.g. to read a TLS client certificate.
    pub fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }

    fn ws(&mut self) -> Pin<&mut WebSocketStream<S>> {
        Pin::new(&mut self.ws)
    }

    /// Best effort: tell the peer why we stop reading. The read error that follows is what
    /// actually ends the connection, so a close frame that cannot be queued now is not retried.
    fn send_close(&mut self, cx: &mut Context<'_>, code: CloseCode, reason: &'static str) {
        if self.close_sent {
            return;
        }
        if let Poll::Ready(Ok(())) = self.ws().poll_ready(cx) {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            if self.ws().start_send(Message::Close(Some(frame))).is_ok() {
                self.close_sent = true;
                let _ = self.ws().poll_flush(cx);
            }
        }
    }

    fn poll_push(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = ready!(self.ws().poll_flush(cx));
        self.unflushed = false;
        Poll::Ready(result.map_err(into_io))
    }
}

impl<S> AsyncRead for WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.ws().poll_next(cx)) {
                // An empty message carries no bytes; returning now would look like EOF.
                Some(Ok(Message::Binary(data))) => this.read_buf = data,
                // tungstenite has queued the pong, or the close reply; the next poll sends it
                // and, after a close, reports the end of the stream.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
                Some(Ok(Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    this.read_done = true;
                    this.send_close(
                        cx,
                        CloseCode::Unsupported,
                        "MQTT needs binary frames [MQTT-6.0.0-1]",
                    );
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        WsViolation::TextFrame,
                    )));
                }
                Some(Err(e)) => {
                    this.read_done = true;
                    match &e {
                        tungstenite::Error::Capacity(_) => {
                            this.send_close(cx, CloseCode::Size, "message too big")
                        }
                        tungstenite::Error::Protocol(_)
                        | tungstenite::Error::Utf8(_)
                        | tungstenite::Error::AttackAttempt => {
                            this.send_close(cx, CloseCode::Protocol, "WebSocket protocol error")
                        }
                        _ => {}
                    }
                    return Poll::Ready(Err(into_io(e)));
                }
                None => this.read_done = true,
            }
        }
    }
}

impl<S> AsyncWrite for WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.unflushed {
            ready!(this.poll_push(cx))?;
        }
        ready!(this.ws().poll_ready(cx)).map_err(into_io)?;
        this.ws()
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(into_io)?;
        match this.poll_push(cx) {
            Poll::Pending => this.unflushed = true,
            // The message is accepted; a broken socket shows up on the next call.
            Poll::Ready(_) => {}
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_push(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            let queued = match ready!(this.ws().poll_ready(cx)) {
                Ok(()) => this.ws().start_send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                }))),
                Err(e) => Err(e),
            };
            match queued {
                Ok(()) => {}
                Err(e) if is_closed(&e) => {}
                Err(e) => return Poll::Ready(Err(into_io(e))),
            }
            this.close_sent = true;
        }
        match ready!(this.ws().poll_flush(cx)) {
            Ok(()) => {}
            Err(e) if is_closed(&e) => {}
            Err(e) => return Poll::Ready(Err(into_io(e))),
        }
        this.unflushed = false;
        // The server closes the TCP connection first (RFC 6455 §7.1.1); the peer's close reply
        // can still be read from the half-closed socket.
        match ready!(Pin::new(this.ws.get_mut()).poll_shutdown(cx)) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// The WebSocket is already closing or closed, which is what a shutdown wants anyway.
fn is_closed(e: &tungstenite::Error) -> bool {
    matches!(
        e,
        tungstenite::Error::ConnectionClosed
            | tungstenite::Error::AlreadyClosed
            | tungstenite::Error::Protocol(tungstenite::error::ProtocolError::SendAfterClosing)
    )
}

fn into_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, e)
        }
        tungstenite::Error::Capacity(_)
        | tungstenite::Error::Protocol(_)
        | tungstenite::Error::Utf8(_)
        | tungstenite::Error::AttackAttempt => io::Error::new(io::ErrorKind::InvalidData, e),
        e => io::Error::other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::BytesMut;
    use futures_util::{SinkExt, StreamExt};
    use mqtt::codec::{decode, encode};
    use mqtt::{Connect, Packet, Properties, Protocol, Publish, QoS};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    /// Bound on every wait, so a broken adapter fails the test instead of hanging it.
    const WAIT: Duration = Duration::from_secs(10);

    type Client = WebSocketStream<DuplexStream>;

    async fn bounded<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(WAIT, f).await.expect("timed out")
    }

    fn request(path: &str, protocols: Option<&str>) -> Request {
        let mut req = format!("ws://localhost{path}")
            .into_client_request()
            .expect("request");
        if let Some(p) = protocols {
            req.headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, p.parse().expect("header"));
        }
        req
    }

    /// Runs both sides of a handshake over an in-memory pipe.
    async fn handshake(
        req: Request,
        options: WsOptions,
    ) -> (
        Result<WsIo<DuplexStream>, WsError>,
        Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { accept_with(server_io, &options).await });
        let client = bounded(tokio_tungstenite::client_async(req, client_io)).await;
        let server = bounded(server).await.expect("server task");
        (server, client)
    }

    async fn connected() -> (WsIo<DuplexStream>, Client) {
        let (server, client) = handshake(request(PATH, Some("mqtt")), WsOptions::default()).await;
        (server.expect("server side"), client.expect("client side").0)
    }

    fn connect_bytes() -> Vec<u8> {
        let connect = Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive: 30,
            client_id: "ws-unit".to_owned(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        encoded(&Packet::Connect(Box::new(connect)))
    }

    fn encoded(packet: &Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(packet, Protocol::V5, &mut out);
        out.to_vec()
    }

    /// Reads from the server side until `n` packets decode.
    async fn read_packets(server: &mut WsIo<DuplexStream>, n: usize) -> Vec<Packet> {
        let mut buf = BytesMut::new();
        let mut packets = Vec::new();
        while packets.len() < n {
            match decode(&mut buf, Protocol::V5, MAX_MESSAGE_SIZE).expect("decodes") {
                Some(p) => packets.push(p),
                None => {
                    let read = bounded(server.read_buf(&mut buf)).await.expect("read");
                    assert_ne!(read, 0, "EOF after {} packets", packets.len());
                }
            }
        }
        assert!(buf.is_empty(), "bytes left over: {buf:?}");
        packets
    }

    /// The next message the client receives, skipping nothing.
    async fn client_next(client: &mut Client) -> Option<Message> {
        bounded(client.next())
            .await
            .map(|m| m.expect("client read"))
    }

    #[tokio::test]
    async fn handshake_selects_mqtt_among_offered_subprotocols() {
        // [MQTT-6.0.0-4]: the server selects "mqtt" when the client lists it among others.
        let (server, client) =
            handshake(request(PATH, Some("mqttv3.1, mqtt")), WsOptions::default()).await;
        server.expect("accepted");
        let (_, response) = client.expect("client handshake");
        assert_eq!(
            response.headers().get(header::SEC_WEBSOCKET_PROTOCOL),
            Some(&HeaderValue::from_static("mqtt"))
        );
    }

    #[tokio::test]
    async fn query_string_does_not_change_the_path() {
        let (server, client) = handshake(
            request("/mqtt?client=a", Some("mqtt")),
            WsOptions::default(),
        )
        .await;
        server.expect("accepted");
        client.expect("client handshake");
    }

    #[tokio::test]
    async fn other_path_gets_404_and_no_upgrade() {
        let (server, client) = handshake(request("/ws", Some("mqtt")), WsOptions::default()).await;
        match server {
            Err(WsError::NotFound { path }) => assert_eq!(path, "/ws"),
            other => panic!("expected NotFound, got {other:?}"),
        }
        match client {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
            other => panic!("expected HTTP 404, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn missing_subprotocol_gets_400() {
        // [MQTT-6.0.0-3]: the client must offer "mqtt".
        for offered in [None, Some("mqttv3.1"), Some("MQTT")] {
            let (server, client) = handshake(request(PATH, offered), WsOptions::default()).await;
            assert!(
                matches!(server, Err(WsError::NoMqttSubprotocol { .. })),
                "{offered:?}: {server:?}"
            );
            match client {
                Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
                other => panic!("{offered:?}: expected HTTP 400, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn raw_mqtt_is_not_a_handshake() {
        // Scenario 5: MQTT bytes instead of an HTTP upgrade get no response at all.
        let (mut client, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(accept(server_io));
        client.write_all(&connect_bytes()).await.expect("write");
        let result = bounded(server).await.expect("server task");
        assert!(
            matches!(result, Err(WsError::Handshake(_))),
            "expected a handshake error, got {result:?}"
        );
        let mut rest = Vec::new();
        bounded(client.read_to_end(&mut rest))
            .await
            .expect("read to EOF");
        assert!(rest.is_empty(), "server answered raw MQTT with {rest:?}");
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (_client, server_io) = tokio::io::duplex(1024);
        let options = WsOptions {
            handshake_timeout: Duration::from_millis(50),
            ..WsOptions::default()
        };
        let result = bounded(accept_with(server_io, &options)).await;
        assert!(
            matches!(result, Err(WsError::Timeout(_))),
            "expected a timeout, got {result:?}"
        );
    }

    #[tokio::test]
    async fn packet_spanning_several_messages_and_frames() {
        // [MQTT-6.0.0-2]: packet boundaries need not match message or frame boundaries.
        let (mut server, mut client) = connected().await;
        let bytes = connect_bytes();
        let (a, rest) = bytes.split_at(3);
        let (b, c) = rest.split_at(5);
        client.send(Message::binary(a.to_vec())).await.expect("a");
        // One message as two frames: a non-final binary frame and a final continuation.
        client
            .send(Message::Frame(Frame::message(
                b[..2].to_vec(),
                OpCode::Data(Data::Binary),
                false,
            )))
            .await
            .expect("b1");
        client
            .send(Message::Frame(Frame::message(
                b[2..].to_vec(),
                OpCode::Data(Data::Continue),
                true,
            )))
            .await
            .expect("b2");
        client.send(Message::binary(c.to_vec())).await.expect("c");
        let packets = read_packets(&mut server, 1).await;
        assert_eq!(encoded(&packets[0]), bytes);
    }

    #[tokio::test]
    async fn several_packets_in_one_message() {
        let (mut server, mut client) = connected().await;
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".to_owned(),
            packet_id: 7,
            payload: Bytes::from_static(b"hello"),
            properties: Properties::default(),
        });
        let mut all = connect_bytes();
        all.extend(encoded(&publish));
        all.extend(encoded(&Packet::PingReq));
        client.send(Message::binary(all)).await.expect("send");
        let packets = read_packets(&mut server, 3).await;
        assert!(matches!(packets[0], Packet::Connect(_)), "{packets:?}");
        assert_eq!(packets[1], publish);
        assert_eq!(packets[2], Packet::PingReq);
    }

    #[tokio::test]
    async fn small_reads_drain_a_message_in_order() {
        let (mut server, mut client) = connected().await;
        let payload: Vec<u8> = (0..=255).collect();
        client
            .send(Message::binary(payload.clone()))
            .await
            .expect("send");
        let mut got = Vec::new();
        let mut chunk = [0u8; 10];
        while got.len() < payload.len() {
            let n = bounded(server.read(&mut chunk)).await.expect("read");
            assert_ne!(n, 0, "EOF");
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, payload);
    }

    #[tokio::test]
    async fn empty_binary_message_is_not_eof() {
        let (mut server, mut client) = connected().await;
        client
            .send(Message::binary(Vec::new()))
            .await
            .expect("empty");
        client
            .send(Message::binary(vec![0xc0, 0x00]))
            .await
            .expect("pingreq");
        assert_eq!(read_packets(&mut server, 1).await, vec![Packet::PingReq]);
    }

    #[tokio::test]
    async fn each_write_is_one_binary_message() {
        let (mut server, mut client) = connected().await;
        server.write_all(b"first").await.expect("write");
        server.write_all(b"second").await.expect("write");
        server.flush().await.expect("flush");
        assert_eq!(
            client_next(&mut client).await,
            Some(Message::binary(b"first".to_vec()))
        );
        assert_eq!(
            client_next(&mut client).await,
            Some(Message::binary(b"second".to_vec()))
        );
    }

    #[tokio::test]
    async fn write_without_flush_still_arrives() {
        // The broker's writer never flushes between writes (TCP needs no flush).
        let (mut server, mut client) = connected().await;
        server.write_all(b"unflushed").await.expect("write");
        assert_eq!(
            client_next(&mut client).await,
            Some(Message::binary(b"unflushed".to_vec()))
        );
    }

    #[tokio::test]
    async fn text_frame_is_a_protocol_error() {
        // [MQTT-6.0.0-1]
        let (mut server, mut client) = connected().await;
        client
            .send(Message::text("CONNECT"))
            .await
            .expect("send text");
        let err = bounded(server.read(&mut [0u8; 16]))
            .await
            .expect_err("text frame must fail the read");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            err.get_ref().and_then(|e| e.downcast_ref::<WsViolation>()),
            Some(&WsViolation::TextFrame)
        );
        match client_next(&mut client).await {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Unsupported),
            other => panic!("expected close 1003, got {other:?}"),
        }
        // Nothing more is read after the violation.
        assert_eq!(bounded(server.read(&mut [0u8; 16])).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn oversized_message_is_refused() {
        let options = WsOptions {
            max_message_size: 1024,
            ..WsOptions::default()
        };
        let (server, client) = handshake(request(PATH, Some("mqtt")), options).await;
        let (mut server, mut client) = (server.expect("server"), client.expect("client").0);
        client
            .send(Message::binary(vec![0u8; 2048]))
            .await
            .expect("send");
        let err = bounded(server.read(&mut [0u8; 16]))
            .await
            .expect_err("oversized message must fail the read");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        match client_next(&mut client).await {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Size),
            other => panic!("expected close 1009, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn close_frame_ends_the_stream() {
        let (mut server, mut client) = connected().await;
        client
            .send(Message::binary(vec![0xc0, 0x00]))
            .await
            .expect("pingreq");
        client.close(None).await.expect("close");
        // Data sent before the close is still delivered, then EOF.
        assert_eq!(read_packets(&mut server, 1).await, vec![Packet::PingReq]);
        assert_eq!(bounded(server.read(&mut [0u8; 16])).await.expect("eof"), 0);
        // The server answered the close, so the client's stream ends cleanly too.
        match client_next(&mut client).await {
            Some(Message::Close(_)) | None => {}
            other => panic!("expected the close reply, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn ping_is_answered_while_reading() {
        let (mut server, mut client) = connected().await;
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let n = bounded(server.read(&mut buf)).await.expect("read");
            buf[..n].to_vec()
        });
        client
            .send(Message::Ping(Bytes::from_static(b"hb")))
            .await
            .expect("ping");
        assert_eq!(
            client_next(&mut client).await,
            Some(Message::Pong(Bytes::from_static(b"hb")))
        );
        client
            .send(Message::binary(vec![1, 2, 3]))
            .await
            .expect("data");
        assert_eq!(bounded(reader).await.expect("reader"), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn shutdown_sends_a_normal_close() {
        let (mut server, mut client) = connected().await;
        server.write_all(b"last words").await.expect("write");
        bounded(server.shutdown()).await.expect("shutdown");
        assert_eq!(
            client_next(&mut client).await,
            Some(Message::binary(b"last words".to_vec()))
        );
        match client_next(&mut client).await {
            Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected close 1000, got {other:?}"),
        }
        assert!(server.write(b"more").await.is_err(), "write after shutdown");
    }

    #[tokio::test]
    async fn split_halves_work_from_separate_tasks() {
        // How the broker uses it: the connection reads in one task and writes in another.
        let (server, client) = connected().await;
        let (mut r, mut w) = tokio::io::split(server);
        let echo = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = r.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                w.write_all(&buf[..n]).await.expect("write");
            }
            w.shutdown().await.expect("shutdown");
        });
        // Larger than the pipe, so writes hit backpressure while reads continue.
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let (mut tx, mut rx) = client.split();
        let sender = tokio::spawn(async move {
            for chunk in big.chunks(50_000) {
                tx.send(Message::binary(chunk.to_vec()))
                    .await
                    .expect("send");
            }
            tx.send(Message::Close(None)).await.expect("close");
        });
        let mut echoed = Vec::new();
        while let Some(msg) = bounded(rx.next()).await {
            match msg.expect("client read") {
                Message::Binary(b) => echoed.extend_from_slice(&b),
                Message::Close(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        bounded(sender).await.expect("sender");
        bounded(echo).await.expect("echo");
        let expected: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(echoed.len(), expected.len());
        assert!(echoed == expected, "echoed bytes differ");
    }
}
