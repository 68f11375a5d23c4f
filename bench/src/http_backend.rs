//! A minimal HTTP/1.1 server for benchmarks: answers every request with a fixed 200 response,
//! keeps connections alive unless the request says `Connection: close`. Used as the backend
//! when nginx is not installed.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::runtime_thread::{Flavor, RuntimeThread};

const KEEP_ALIVE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n";
const CLOSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

pub struct HttpBackend {
    pub addr: SocketAddr,
    _rt: RuntimeThread,
}

/// Starts the server on 127.0.0.1 (a free port) on its own `workers`-thread runtime.
pub fn start(workers: usize) -> Result<HttpBackend> {
    let std_listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding the HTTP backend")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let rt = RuntimeThread::start(
        "http-backend",
        Flavor::MultiThread(workers),
        move |stop| async move {
            let listener = match TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("http backend: {e}");
                    return;
                }
            };
            let conns = TaskTracker::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = listener.accept() => if let Ok((s, _)) = r {
                        conns.spawn(serve(s));
                    }
                }
            }
            conns.close();
        },
    )?;
    Ok(HttpBackend { addr, _rt: rt })
}

async fn serve(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    loop {
        while let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
            let head_len = end + 4;
            let close = contains_ignore_case(&buf[..head_len], b"connection: close");
            let response = if close { CLOSE } else { KEEP_ALIVE };
            if s.write_all(response).await.is_err() {
                return;
            }
            if close {
                let _ = s.shutdown().await;
                return;
            }
            buf.copy_within(head_len..filled, 0);
            filled -= head_len;
        }
        if filled == buf.len() {
            return; // header larger than the buffer: not a benchmark request
        }
        match s.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn answers_keep_alive_requests_then_closes_on_connection_close() {
        let backend = start(1).expect("start");
        let mut c = std::net::TcpStream::connect(backend.addr).expect("connect");
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut got = vec![0u8; KEEP_ALIVE.len()];
        c.read_exact(&mut got).expect("first response");
        assert_eq!(got, KEEP_ALIVE);
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n")
            .expect("write");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).expect("second response then EOF");
        assert_eq!(rest, CLOSE);
    }
}
