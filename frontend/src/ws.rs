//! MQTT over WebSockets (stub; being written).

use tokio::io::{AsyncRead, AsyncWrite};

/// The HTTP path MQTT is served on.
pub const PATH: &str = "/mqtt";

#[derive(Debug, thiserror::Error)]
#[error("websocket handshake failed: {0}")]
pub struct WsError(pub String);

/// Performs the server side of the WebSocket handshake and returns a byte stream.
pub async fn accept<S>(_stream: S) -> Result<tokio::io::DuplexStream, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Err(WsError("not implemented yet".into()))
}
