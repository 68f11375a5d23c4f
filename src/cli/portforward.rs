//! `berth port-forward POD|pod/NAME|deploy/NAME [LOCAL:]REMOTE... [--address ADDR,...]`: listen
//! on local ports and forward each connection to the pod's port, through the API server's
//! `pods/{name}/portforward` (the path kubectl takes), as kubectl port-forward does.
//!
//! Each local connection is one WebSocket to the API server with the channel protocol
//! `v4.channel.k8s.io` and `?ports=REMOTE`: channel 0 carries the bytes, channel 1 the error
//! (the first message on each is the port, 2 bytes little-endian). The server relays to the
//! agent of the pod's node, which connects to the pod. An error on the error channel (nobody
//! listening on that port, the pod is gone) ends the command with that message, as kubectl does.
//!
//! Ports as kubectl takes them: `8080` (same port locally), `5000:8080`, `:8080` or `0:8080`
//! (a free local port, printed), and REMOTE may name a container port (`5000:http`).
//! `--address` (default `localhost`: 127.0.0.1 and ::1, either may fail) takes IPs or
//! `localhost`; any explicit address that cannot be bound is an error.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use berth_proto::types::Pod;
use bytes::Bytes;
use clap::Args;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::Message;

use super::{Ctx, Io};

const PROTOCOL: &str = "v4.channel.k8s.io";

#[derive(Debug, Clone, Args)]
pub struct PortForwardArgs {
    /// POD, pod/NAME, or deploy/NAME (one of its pods, ready ones first).
    #[arg(value_name = "POD")]
    pub target: String,
    /// [LOCAL:]REMOTE: 8080, 5000:8080, :8080 (a free local port), 5000:http (a named port).
    #[arg(value_name = "[LOCAL:]REMOTE", required = true)]
    pub ports: Vec<String>,
    /// Addresses to listen on (comma-separated): IPs or localhost.
    #[arg(long, value_delimiter = ',', default_value = "localhost")]
    pub address: Vec<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// `[LOCAL:]REMOTE` -> (local port, 0 for any; remote port number or name).
pub fn parse_port_spec(s: &str) -> anyhow::Result<(u16, String)> {
    let (local, remote) = match s.split_once(':') {
        Some((l, r)) => (l, r),
        None => (s, s),
    };
    if remote.is_empty() {
        bail!("invalid port {s:?}: use [LOCAL:]REMOTE, e.g. 8080, 5000:8080 or :8080");
    }
    let local: u16 = if local.is_empty() {
        0
    } else {
        local.parse().map_err(|_| {
            anyhow!(
                "invalid local port {local:?} in {s:?}: use a number 0-65535 (0: any free port)"
            )
        })?
    };
    if remote.parse::<u16>().is_ok_and(|p| p == 0) {
        bail!("invalid remote port in {s:?}: the pod's port must be 1-65535");
    }
    // A name as local port ("http" alone) is only valid when remote is a number.
    if s.split_once(':').is_none() && remote.parse::<u16>().is_err() {
        bail!("invalid port {s:?}: a named port needs a local port, e.g. 8080:{remote}");
    }
    Ok((local, remote.to_string()))
}

/// The pod's port for a number or the name of one of its container ports.
pub fn resolve_remote(pod: &Pod, remote: &str) -> anyhow::Result<u16> {
    if let Ok(n) = remote.parse::<u16>() {
        return Ok(n);
    }
    pod.spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .find(|p| p.name == remote)
        .and_then(|p| u16::try_from(p.container_port).ok())
        .ok_or_else(|| {
            anyhow!(
                "Pod '{}' does not have a named port '{remote}'",
                pod.metadata.name
            )
        })
}

/// `--address` values -> (address, may this one fail as long as another works).
fn listen_addresses(addrs: &[String]) -> anyhow::Result<Vec<(IpAddr, bool)>> {
    let mut out = Vec::new();
    for a in addrs {
        let a = a.trim();
        if a == "localhost" {
            out.push((IpAddr::from([127, 0, 0, 1]), true));
            out.push((IpAddr::from(std::net::Ipv6Addr::LOCALHOST), true));
        } else {
            let ip: IpAddr = a
                .parse()
                .map_err(|_| anyhow!("{a} is not a valid IP: --address takes IPs or localhost"))?;
            out.push((ip, false));
        }
    }
    out.dedup();
    Ok(out)
}

/// What the forwarding tasks tell the command.
enum Event {
    Handling(u16),
    /// The pod side failed: the command ends with this.
    Lost(String),
    /// One connection failed without the pod saying why (printed, the command goes on).
    Warn(String),
}

/// How to reach the API server's port-forward endpoint of one pod.
struct Endpoint {
    servers: Vec<String>,
    tls: Arc<rustls::ClientConfig>,
    path: String,
}

pub async fn run(ctx: &Ctx, a: PortForwardArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let ns = a.namespace.as_deref().unwrap_or("default");
    let specs: Vec<(u16, String)> = a
        .ports
        .iter()
        .map(|s| parse_port_spec(s))
        .collect::<anyhow::Result<_>>()?;
    let addrs = listen_addresses(&a.address)?;
    let pod = super::logs::resolve_pod(&client, ns, &a.target).await?;
    let name = pod.metadata.name.clone();
    let phase = pod.status.as_ref().map(|s| s.phase.as_str()).unwrap_or("");
    if phase != "Running" {
        bail!(
            "unable to forward port because pod is not running. Current status={}",
            if phase.is_empty() { "Pending" } else { phase }
        );
    }
    let tls = ctx
        .client_config
        .tls
        .as_ref()
        .ok_or_else(|| anyhow!("no credentials: port forwarding needs the admin config"))?;
    let tls = berth_tls::mtls_client_config(tls)?;
    let endpoint = Arc::new(Endpoint {
        servers: ctx.servers.clone(),
        tls,
        path: format!("/api/v1/namespaces/{ns}/pods/{name}/portforward"),
    });
    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    let mut listeners = Vec::new();
    for (local, remote) in &specs {
        let remote = resolve_remote(&pod, remote)?;
        let mut local = *local;
        let mut errors = Vec::new();
        let mut bound = 0;
        for (ip, optional) in &addrs {
            match TcpListener::bind(SocketAddr::new(*ip, local)).await {
                Ok(l) => {
                    let port = l.local_addr()?.port();
                    // The first listener fixes a free port for the others (as kubectl does).
                    local = port;
                    writeln!(
                        io.out,
                        "Forwarding from {} -> {remote}",
                        SocketAddr::new(*ip, port)
                    )?;
                    io.out.flush()?;
                    bound += 1;
                    listeners.push(tokio::spawn(accept_loop(
                        l,
                        port,
                        remote,
                        endpoint.clone(),
                        events_tx.clone(),
                    )));
                }
                Err(e) if *optional => errors.push(format!("{ip}: {e}")),
                Err(e) => {
                    bail!("unable to listen on port {local} of {ip}: {e}")
                }
            }
        }
        if bound == 0 {
            bail!(
                "unable to listen on any of the requested ports: {}",
                errors.join("; ")
            );
        }
    }
    drop(events_tx);
    let result = loop {
        let ev = tokio::select! {
            _ = ctx.shutdown.cancelled() => break Ok(()),
            e = events.recv() => e,
        };
        match ev {
            Some(Event::Handling(port)) => {
                writeln!(io.out, "Handling connection for {port}")?;
                io.out.flush()?;
            }
            Some(Event::Warn(msg)) => {
                writeln!(io.err, "{msg}")?;
            }
            Some(Event::Lost(msg)) => break Err(anyhow!("lost connection to pod: {msg}")),
            None => break Ok(()),
        }
    };
    for l in listeners {
        l.abort();
    }
    result
}

async fn accept_loop(
    l: TcpListener,
    local: u16,
    remote: u16,
    endpoint: Arc<Endpoint>,
    events: mpsc::Sender<Event>,
) {
    loop {
        let conn = match l.accept().await {
            Ok((c, _)) => c,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        let _ = events.send(Event::Handling(local)).await;
        let (endpoint, events) = (endpoint.clone(), events.clone());
        tokio::spawn(async move {
            match forward(conn, remote, &endpoint).await {
                Ok(None) => {}
                Ok(Some(msg)) => {
                    let _ = events
                        .send(Event::Lost(format!(
                            "an error occurred forwarding {local} -> {remote}: {msg}"
                        )))
                        .await;
                }
                Err(e) => {
                    let _ = events
                        .send(Event::Warn(format!(
                            "error forwarding {local} -> {remote}: {e:#}"
                        )))
                        .await;
                }
            }
        });
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A WebSocket to the first API server that answers.
async fn connect(endpoint: &Endpoint, remote: u16) -> anyhow::Result<Ws> {
    let mut last = anyhow!("no API server address configured");
    for server in &endpoint.servers {
        match connect_one(endpoint, server, remote).await {
            Ok(ws) => return Ok(ws),
            // An answer from a server (Forbidden, NotFound) is final; an unreachable one is not.
            Err(e) if e.downcast_ref::<ServerSaid>().is_some() => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The API server refused the request (its Status message).
#[derive(Debug)]
struct ServerSaid(String);

impl std::fmt::Display for ServerSaid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerSaid {}

async fn connect_one(endpoint: &Endpoint, server: &str, remote: u16) -> anyhow::Result<Ws> {
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        TcpStream::connect(server),
    )
    .await
    .map_err(|_| anyhow!("connecting to {server} timed out"))?
    .with_context(|| format!("connecting to {server}"))?;
    let _ = tcp.set_nodelay(true);
    let name = berth_tls::server_name(server)?;
    let tls = tokio_rustls::TlsConnector::from(endpoint.tls.clone())
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with {server}"))?;
    let mut req =
        format!("wss://{server}{}?ports={remote}", endpoint.path).into_client_request()?;
    req.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(PROTOCOL),
    );
    match tokio_tungstenite::client_async(req, tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            // A Kubernetes Status: its message is the reason.
            let body = resp.body().as_deref().unwrap_or_default();
            let msg = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
            Err(ServerSaid(if msg.is_empty() {
                format!("the API server answered {}", resp.status())
            } else {
                msg
            })
            .into())
        }
        Err(e) => Err(anyhow!("WebSocket handshake with {server}: {e}")),
    }
}

/// Forward one local connection; `Ok(Some(msg))` is the pod side's error.
async fn forward(
    conn: TcpStream,
    remote: u16,
    endpoint: &Endpoint,
) -> anyhow::Result<Option<String>> {
    let ws = connect(endpoint, remote).await?;
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut lr, mut lw) = conn.into_split();
    let up = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match lr.read(&mut buf[1..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf[0] = 0;
                    let m = Message::Binary(Bytes::copy_from_slice(&buf[..=n]));
                    if ws_tx.send(m).await.is_err() {
                        break;
                    }
                }
            }
        }
        // The channel protocol has no half-close: keep the WebSocket open for the answer.
        ws_tx
    };
    let down = async {
        let mut port_seen = [false; 2];
        let mut error = Vec::new();
        while let Some(Ok(m)) = ws_rx.next().await {
            let b = match m {
                Message::Binary(b) if !b.is_empty() => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let ch = usize::from(b[0]);
            let mut data = &b[1..];
            if ch > 1 {
                continue;
            }
            if !port_seen[ch] {
                // The first message of each channel is the port.
                port_seen[ch] = true;
                data = data.get(2..).unwrap_or_default();
            }
            if ch == 0 {
                if !data.is_empty() && lw.write_all(data).await.is_err() {
                    break;
                }
            } else {
                error.extend_from_slice(data);
            }
        }
        let _ = lw.shutdown().await;
        error
    };
    tokio::pin!(up, down);
    let mut ws_tx = None;
    let error = loop {
        tokio::select! {
            e = &mut down => break e,
            tx = &mut up, if ws_tx.is_none() => ws_tx = Some(tx),
        }
    };
    if let Some(mut tx) = ws_tx {
        let _ = tx.close().await;
    }
    Ok((!error.is_empty()).then(|| String::from_utf8_lossy(&error).into_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_read_as_kubectl_reads_them() {
        assert_eq!(parse_port_spec("8080").unwrap(), (8080, "8080".into()));
        assert_eq!(parse_port_spec("5000:8080").unwrap(), (5000, "8080".into()));
        assert_eq!(parse_port_spec(":8080").unwrap(), (0, "8080".into()));
        assert_eq!(parse_port_spec("0:8080").unwrap(), (0, "8080".into()));
        assert_eq!(parse_port_spec("5000:http").unwrap(), (5000, "http".into()));
        assert!(parse_port_spec("http").is_err());
        assert!(parse_port_spec("5000:").is_err());
        assert!(parse_port_spec("70000:80").is_err());
        assert!(parse_port_spec("80:0").is_err());
    }

    #[test]
    fn localhost_means_both_loopbacks_and_other_addresses_must_be_ips() {
        let a = listen_addresses(&["localhost".into()]).unwrap();
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|(_, optional)| *optional));
        let a = listen_addresses(&["0.0.0.0".into()]).unwrap();
        assert_eq!(a, vec![(IpAddr::from([0, 0, 0, 0]), false)]);
        assert!(listen_addresses(&["example.com".into()]).is_err());
    }

    #[test]
    fn named_remote_ports_come_from_the_pods_containers() {
        let mut pod = Pod::default();
        pod.metadata.name = "web".into();
        pod.spec.containers.push(berth_proto::types::Container {
            name: "main".into(),
            ports: vec![berth_proto::types::ContainerPort {
                name: "http".into(),
                container_port: 8080,
                protocol: None,
                host_port: None,
            }],
            ..Default::default()
        });
        assert_eq!(resolve_remote(&pod, "http").unwrap(), 8080);
        assert_eq!(resolve_remote(&pod, "9090").unwrap(), 9090);
        assert_eq!(
            resolve_remote(&pod, "grpc").unwrap_err().to_string(),
            "Pod 'web' does not have a named port 'grpc'"
        );
    }
}
