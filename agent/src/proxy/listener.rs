//! Node-port sockets and their accept loops. One accept task per bound address; each accepted
//! connection becomes a task in the proxy's `TaskTracker`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{self, ConnEnv};
use super::ServiceShared;

/// Binds with SO_REUSEADDR (a restarted agent gets its ports back despite TIME_WAIT) and an
/// explicit backlog (bursts of new connections are queued, not refused).
pub(crate) fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ServiceShared>,
    env: Arc<ConnEnv>,
    conns: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _peer)) => {
                    conns.spawn(conn::serve(client, shared.clone(), env.clone()));
                }
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(error = %e, "accept: connection aborted before accept");
                }
                Err(e) => {
                    // Typically EMFILE/ENFILE: back off instead of spinning; the queued
                    // connections wait in the backlog.
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
        }
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}
