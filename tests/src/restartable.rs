//! A fake server's accept loop that can be stopped and started again on the same port, so tests
//! can make a dependency (the Kubernetes API, a custom auth server) disappear and come back.
//!
//! Only the lifecycle; what the server answers is the fake's own business.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running accept loop. Dropping it stops the loop without waiting.
pub(crate) struct Running {
    accept: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

/// Listen on `addr` (port 0: any) and run `serve(listener, shutdown)` until stopped. `serve`
/// should end its connections once `shutdown` turns true. Returns the bound address.
pub(crate) fn listen<F>(
    addr: SocketAddr,
    serve: impl FnOnce(TcpListener, watch::Receiver<bool>) -> F,
) -> io::Result<(SocketAddr, Running)>
where
    F: Future<Output = ()> + Send + 'static,
{
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Restarting on the same port must not wait for TIME_WAIT to clear.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(128)?;
    let bound = listener.local_addr()?;
    let (shutdown, watcher) = watch::channel(false);
    let accept = tokio::spawn(serve(listener, watcher));
    Ok((bound, Running { accept, shutdown }))
}

impl Running {
    /// Close the port and every open connection; in-flight requests get no answer.
    pub(crate) async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        self.accept.abort();
        let _ = (&mut self.accept).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.accept.abort();
    }
}
