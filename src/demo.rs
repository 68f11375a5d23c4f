//! `berth demo-server`: a tiny HTTP workload that needs nothing installed, for the quickstart,
//! the tests and the e2e suite on the process runtime.
//!
//! It listens on `$PORT` (set by the agent), answers `GET /` with its version and pod name,
//! `GET /healthz` with 200 (or 503 with `--fail-readiness`), and can crash on demand
//! (`--crash-after SECS`, `GET /crash`) to demonstrate restarts and CrashLoopBackOff. With
//! `--upstream NAME` it calls the Service `NAME` found through Kubernetes-style environment
//! variables (`NAME_SERVICE_HOST`, `NAME_SERVICE_PORT`) and includes its answer: that is how the
//! multi-tier example (web -> api -> store) is wired.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Port to listen on (defaults to $PORT, else 8080).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: String,
    /// Version reported in every answer (e.g. v1, v2 for blue-green demos).
    #[arg(long = "app-version", env = "VERSION", default_value = "v1")]
    pub app_version: String,
    /// Name reported in every answer (defaults to $POD_NAME, else $HOSTNAME).
    #[arg(long, env = "POD_NAME")]
    pub name: Option<String>,
    /// Answer /healthz with 503 (a readiness probe then never passes).
    #[arg(long)]
    pub fail_readiness: bool,
    /// Exit with status 1 after this many seconds (to demonstrate restarts).
    #[arg(long)]
    pub crash_after: Option<u64>,
    /// Call this Service (found via NAME_SERVICE_HOST/NAME_SERVICE_PORT) on every `GET /`.
    #[arg(long)]
    pub upstream: Vec<String>,
}

struct State {
    args: DemoArgs,
    name: String,
}

pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let addr: SocketAddr = format!("{}:{}", args.bind, args.port)
        .parse()
        .with_context(|| format!("invalid listen address {}:{}", args.bind, args.port))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let name = args
        .name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "demo".to_string());
    eprintln!(
        "demo-server {} ({}) listening on {}",
        args.app_version,
        name,
        listener.local_addr()?
    );
    let crash = args.crash_after;
    let state = Arc::new(State { args, name });
    let mut conns = tokio::task::JoinSet::new();
    let crash_timer = async {
        match crash {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(crash_timer);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = &mut crash_timer => {
                eprintln!("demo-server: crashing as asked (--crash-after)");
                std::process::exit(1);
            }
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => { eprintln!("accept: {e}"); continue; }
                };
                let st = state.clone();
                conns.spawn(async move {
                    let _ = serve(stream, st).await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
    Ok(())
}

async fn serve(stream: TcpStream, st: Arc<State>) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let http10 = parts.next().is_some_and(|v| v == "HTTP/1.0");
        let mut close = http10;
        let mut content_len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
                if k == "connection" {
                    close = v == "close";
                } else if k == "content-length" {
                    content_len = v.parse().unwrap_or(0);
                }
            }
        }
        if content_len > 0 {
            let mut body = vec![0u8; content_len.min(1 << 20)];
            reader.read_exact(&mut body).await?;
        }
        let (status, body) = respond(&method, &path, &st).await;
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Berth-Version: {}\r\n{}\r\n{body}",
            body.len(),
            st.args.app_version,
            if close { "Connection: close\r\n" } else { "" },
        );
        reader.get_mut().write_all(resp.as_bytes()).await?;
        if close {
            return Ok(());
        }
        if path == "/crash" {
            std::process::exit(1);
        }
    }
}

async fn respond(method: &str, path: &str, st: &State) -> (&'static str, String) {
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", "only GET\n".into());
    }
    match path {
        "/healthz" | "/readyz" => {
            if st.args.fail_readiness {
                (
                    "503 Service Unavailable",
                    "not ready (--fail-readiness)\n".into(),
                )
            } else {
                ("200 OK", "ok\n".into())
            }
        }
        "/livez" => ("200 OK", "ok\n".into()),
        "/version" => ("200 OK", format!("{}\n", st.args.app_version)),
        "/crash" => ("200 OK", "crashing\n".into()),
        _ => {
            let mut body = format!("hello from {} version {}\n", st.name, st.args.app_version);
            for up in &st.args.upstream {
                body.push_str(&format!("  {up} -> {}", call_upstream(up).await));
            }
            ("200 OK", body)
        }
    }
}

/// Find a Service through its environment variables, as Kubernetes pods do.
fn upstream_addr(service: &str) -> Option<String> {
    let prefix = service.to_ascii_uppercase().replace('-', "_");
    let host = std::env::var(format!("{prefix}_SERVICE_HOST")).ok()?;
    let port = std::env::var(format!("{prefix}_SERVICE_PORT")).ok()?;
    Some(format!("{host}:{port}"))
}

async fn call_upstream(service: &str) -> String {
    let Some(addr) = upstream_addr(service) else {
        return format!(
            "error: no {0}_SERVICE_HOST/{0}_SERVICE_PORT in the environment (was the Service created before this pod?)\n",
            service.to_ascii_uppercase().replace('-', "_")
        );
    };
    let fut = async {
        let mut s = TcpStream::connect(&addr).await?;
        s.write_all(b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    match tokio::time::timeout(Duration::from_secs(3), fut).await {
        Ok(Ok(resp)) => resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(resp),
        Ok(Err(e)) => format!("error calling {addr}: {e}\n"),
        Err(_) => format!("error calling {addr}: timed out after 3s\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_is_found_through_service_env_vars() {
        // Names with dashes map to underscores, as in Kubernetes.
        std::env::set_var("MY_API_SERVICE_HOST", "127.0.0.1");
        std::env::set_var("MY_API_SERVICE_PORT", "30001");
        assert_eq!(upstream_addr("my-api").as_deref(), Some("127.0.0.1:30001"));
        assert_eq!(upstream_addr("absent-svc"), None);
    }

    #[tokio::test]
    async fn demo_server_reports_version_and_health() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let args = DemoArgs {
            port,
            bind: "127.0.0.1".into(),
            app_version: "v7".into(),
            name: Some("pod-a".into()),
            fail_readiness: true,
            crash_after: None,
            upstream: vec![],
        };
        let token = CancellationToken::new();
        let task = tokio::spawn(run(args, token.clone()));
        let get = |path: &'static str| async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
                    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                        .await
                        .expect("write");
                    let mut out = String::new();
                    s.read_to_string(&mut out).await.expect("read");
                    return out;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "server never came up"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let root = get("/").await;
        assert!(root.contains("hello from pod-a version v7"), "{root}");
        let health = get("/healthz").await;
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        token.cancel();
        task.await.expect("join").expect("run");
    }
}
