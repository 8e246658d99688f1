//! Server-side TLS over rustls' unbuffered API: a stream that holds no buffers while the
//! connection idles.
//!
//! `tokio_rustls` drives a buffered `rustls::ServerConnection`, which keeps a 4 KiB receive
//! buffer (plus a few smaller ones) allocated for the whole life of the connection. For a broker
//! holding tens of thousands of mostly idle connections, that buffer alone was half of what an
//! idle TLS connection cost. Here the caller side of rustls' unbuffered API owns the buffers:
//! ciphertext is read through a buffer on the stack, and the heap only holds what is in flight
//! (a partial record, decrypted bytes the reader has not taken, ciphertext the socket has not
//! taken); each buffer is freed as soon as it is empty.
//!
//! Behaviour follows `tokio_rustls::server::TlsStream`: the handshake completes (and its last
//! flight, session tickets included, is sent) before [`accept`] returns; a fatal alert is sent,
//! best effort, when processing fails; a read after the peer closed the socket without
//! close_notify fails with `UnexpectedEof`; `poll_shutdown` sends close_notify. Records that
//! reading produces after the handshake (a KeyUpdate answer) go out before the next
//! application data, as RFC 8446 §4.6.3 asks, with the next write or flush.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most ciphertext one read takes from the socket (rustls' own buffered reads take as much).
const READ_SIZE: usize = 4096;

/// Most received ciphertext held unprocessed: a handshake message of up to 64 KiB (rustls'
/// own limit) or one record. A peer that sends more without completing either is refused.
const MAX_INCOMING: usize = 0xffff + 16 * 1024 + 2048 + 5;

/// Most plaintext one write encrypts: bounds the ciphertext queued for the socket.
const MAX_WRITE: usize = 64 * 1024;

/// A server-side TLS connection on `IO`, after its handshake.
pub struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Received ciphertext not processed yet: at most an incomplete record (or handshake
    /// message) between calls. No allocation while empty.
    incoming: Vec<u8>,
    /// Ciphertext for the socket; `outgoing[sent..]` is still to be written.
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted data the reader has not taken; `plaintext[taken..]` is left.
    plaintext: Vec<u8>,
    taken: usize,
    /// The peer sent close_notify, or closed the socket: no more data comes.
    read_closed: bool,
    /// The socket reached end of file without close_notify.
    eof: bool,
    /// close_notify was queued (by `poll_shutdown`).
    close_notify: bool,
    /// Processing failed: the connection is dead and rustls must not be run again, as it would
    /// process the offending record again (and queue a second fatal alert, which rustls
    /// asserts against in debug builds). The error's kind and text, for every later call.
    failed: Option<(io::ErrorKind, String)>,
    /// The reader's waker, for the rare case that writing decrypts data for it.
    read_waker: Option<Waker>,
}

/// Accept a TLS connection on `io`: the whole handshake, including sending its last flight.
/// The caller bounds the time it may take.
pub async fn accept<IO>(config: Arc<ServerConfig>, io: IO) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
    let mut stream = TlsStream {
        io,
        conn,
        incoming: Vec::new(),
        outgoing: Vec::new(),
        sent: 0,
        plaintext: Vec::new(),
        taken: 0,
        read_closed: false,
        eof: false,
        close_notify: false,
        failed: None,
        read_waker: None,
    };
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// What a pass over the received records is for, once nothing received is left to process.
#[derive(Clone, Copy)]
enum Goal<'a> {
    /// Only process (decrypt, answer handshake messages).
    Read,
    /// Then encrypt this application data.
    Write(&'a [u8]),
    /// Then queue close_notify.
    CloseNotify,
}

impl<IO> TlsStream<IO> {
    /// The client's certificate chain, leaf first, as verified in the handshake.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Run rustls over the received ciphertext until it needs more: decrypted data goes to
    /// `plaintext`, handshake records and alerts to `outgoing`. Then do what `goal` says.
    /// Once this fails, it fails again without running rustls.
    fn process(&mut self, goal: Goal<'_>) -> io::Result<()> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let result = self.run(goal);
        if let Err(e) = &result {
            self.failed = Some((e.kind(), e.to_string()));
            // Never processed again: what is left of it is of no use.
            self.incoming = Vec::new();
        }
        result
    }

    /// The error processing failed with, again.
    fn failure(&self) -> Option<io::Error> {
        self.failed
            .as_ref()
            .map(|(kind, why)| io::Error::new(*kind, why.clone()))
    }

    fn run(&mut self, goal: Goal<'_>) -> io::Result<()> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    discard_front(&mut self.incoming, discard);
                    self.queue_alert();
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            let mut done = true;
            let mut result = Ok(());
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                self.plaintext.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                result = Err(io::Error::new(io::ErrorKind::InvalidData, e));
                                break;
                            }
                        }
                    }
                    done = result.is_err();
                    if !matches!(goal, Goal::Read)
                        && let Some(waker) = self.read_waker.take()
                    {
                        waker.wake();
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    result = append_with(&mut self.outgoing, 512, |out| {
                        encode.encode(out).map_err(|e| match e {
                            EncodeError::InsufficientSize(e) => Some(e.required_size),
                            EncodeError::AlreadyEncoded => None,
                        })
                    });
                    done = result.is_err();
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // Queued in `outgoing`, which goes out in order before anything encrypted
                    // later: as good as transmitted.
                    transmit.done();
                    done = false;
                }
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    done = false;
                    if !matches!(goal, Goal::Read)
                        && let Some(waker) = self.read_waker.take()
                    {
                        waker.wake();
                    }
                }
                ConnectionState::Closed => {
                    self.read_closed = true;
                    if matches!(goal, Goal::Write(_)) {
                        result = Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "TLS connection closed",
                        ));
                    }
                }
                ConnectionState::BlockedHandshake => {
                    if !matches!(goal, Goal::Read) {
                        result = Err(io::Error::new(
                            io::ErrorKind::NotConnected,
                            "TLS handshake not complete",
                        ));
                    }
                }
                ConnectionState::WriteTraffic(mut traffic) => match goal {
                    Goal::Read => {}
                    Goal::Write(data) => {
                        // Room for the data plus each record's header, type and tag.
                        let estimate = data.len() + (data.len() / 16384 + 1) * 64;
                        result = append_with(&mut self.outgoing, estimate, |out| {
                            traffic.encrypt(data, out).map_err(|e| match e {
                                EncryptError::InsufficientSize(e) => Some(e.required_size),
                                EncryptError::EncryptExhausted => None,
                            })
                        });
                    }
                    Goal::CloseNotify => {
                        result = append_with(&mut self.outgoing, 64, |out| {
                            traffic.queue_close_notify(out).map_err(|e| match e {
                                EncryptError::InsufficientSize(e) => Some(e.required_size),
                                EncryptError::EncryptExhausted => None,
                            })
                        });
                    }
                },
                ConnectionState::ReadEarlyData(_) => {
                    // Never offered: `max_early_data_size` is left at 0.
                    result = Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS early data",
                    ));
                }
                _ => {
                    result = Err(io::Error::other("unexpected TLS connection state"));
                }
            }
            discard_front(&mut self.incoming, discard);
            result?;
            if done {
                return Ok(());
            }
        }
    }

    /// After a processing error: move the fatal alert rustls queued (if any, behind a queued
    /// KeyUpdate perhaps) to `outgoing`, for whoever writes next. Best effort.
    ///
    /// Only while rustls has records queued: `process_tls_records` hands those out before it
    /// looks at `incoming`. Past them it would process the offending record again, and fail
    /// again with a second fatal alert (a debug assertion in rustls).
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            if !self.conn.wants_write() {
                return;
            }
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let more = match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    append_with(&mut self.outgoing, 512, |out| {
                        encode.encode(out).map_err(|e| match e {
                            EncodeError::InsufficientSize(e) => Some(e.required_size),
                            EncodeError::AlreadyEncoded => None,
                        })
                    })
                    .is_ok()
                }
                _ => false,
            };
            discard_front(&mut self.incoming, discard);
            if !more {
                return;
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Err(e) = self.process(Goal::Read) {
                // Let the client know why, if the socket takes the alert now.
                let _ = self.poll_send(cx);
                return Poll::Ready(Err(e));
            }
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_closed || self.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                )));
            }
            ready!(self.poll_fill(cx))?;
        }
    }

    /// Read ciphertext from the socket into `incoming`. Sets `eof` at end of file.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message too large",
            )));
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_SIZE];
        let mut buf = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        if buf.filled().is_empty() {
            self.eof = true;
        } else {
            self.incoming.extend_from_slice(buf.filled());
        }
        Poll::Ready(Ok(()))
    }

    /// Write `outgoing` to the socket; ready once all of it is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.plaintext.len() {
                let n = buf.remaining().min(this.plaintext.len() - this.taken);
                buf.put_slice(&this.plaintext[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.failure() {
                return Poll::Ready(Err(e));
            }
            if this.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            match this.poll_fill(cx) {
                Poll::Pending => {
                    if !this
                        .read_waker
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        this.read_waker = Some(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                Poll::Ready(result) => result?,
            }
            // A failure is reported once the data decrypted before it is taken.
            let _ = this.process(Goal::Read);
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Ciphertext waits here only as long as the socket does not take it: a write waits
        // for the previous one.
        ready!(this.poll_send(cx))?;
        let n = data.len().min(MAX_WRITE);
        this.process(Goal::Write(&data[..n]))?;
        // Start sending now; what the socket does not take yet goes with the next call.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Also sends what reading queued (a KeyUpdate answer, an alert).
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify {
            this.close_notify = true;
            // Best effort, as tokio-rustls: a connection that failed sends no close_notify.
            let _ = this.process(Goal::CloseNotify);
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Remove `n` processed bytes from the front of `buf`, freeing it once empty.
fn discard_front(buf: &mut Vec<u8>, n: usize) {
    if n == 0 {
        return;
    }
    if n >= buf.len() {
        *buf = Vec::new();
    } else {
        buf.drain(..n);
    }
}

/// Append what `f` writes into a slice at the end of `out`; `f` fails with the size it needs
/// (retried once more room is made) or `None`.
fn append_with(
    out: &mut Vec<u8>,
    estimate: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = estimate;
    loop {
        out.resize(start + room, 0);
        match f(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Some(needed)) if needed > room => room = needed,
            Err(_) => {
                out.truncate(start);
                return Err(io::Error::other("TLS record could not be encoded"));
            }
        }
    }
}

#[cfg(test)]
#[path = "tls_stream_tests.rs"]
mod tests;
