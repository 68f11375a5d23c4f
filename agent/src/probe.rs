//! Container probes (startup, liveness, readiness): a pure state machine plus the three checks.
//!
//! [`ProbeState`] holds one probe's thresholds and streaks. The prober asks it when the next
//! check is due ([`ProbeState::next_due`]), runs the check ([`check`]: httpGet, tcpSocket or
//! exec, bounded by timeoutSeconds) and feeds the result back with [`ProbeState::observe`],
//! which returns the new [`ProbeStatus`] when it changes. Time is an input, so thresholds and
//! delays are unit-tested with paused time.
//!
//! Initial status follows Kubernetes: readiness and startup start `Unknown` (not ready / not
//! started), liveness `Unknown` is treated as alive; a status flips only after
//! successThreshold consecutive successes or failureThreshold consecutive failures.

use std::time::Duration;

use berth_proto::types::Probe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::runtime::Runtime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStatus {
    Unknown,
    Success,
    Failure,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    Failure(String),
}

/// One probe of one container attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    started: Instant,
    last_run: Option<Instant>,
    successes: u32,
    failures: u32,
    status: ProbeStatus,
}

fn secs(v: i32, min: i32) -> Duration {
    Duration::from_secs(v.max(min) as u64)
}

impl ProbeState {
    /// A probe for a container that started at `started`.
    pub fn new(probe: &Probe, started: Instant) -> ProbeState {
        ProbeState {
            initial_delay: secs(probe.initial_delay(), 0),
            period: secs(probe.period(), 1),
            timeout: secs(probe.timeout(), 1),
            success_threshold: probe.success().max(1) as u32,
            failure_threshold: probe.failure().max(1) as u32,
            started,
            last_run: None,
            successes: 0,
            failures: 0,
            status: ProbeStatus::Unknown,
        }
    }

    pub fn status(&self) -> ProbeStatus {
        self.status
    }

    /// Start from a known status instead of `Unknown` (an adopted container whose pod status
    /// already said it was ready/started, so an agent restart does not flap readiness).
    pub fn assume(&mut self, status: ProbeStatus) {
        self.status = status;
    }

    /// When the next check should run.
    pub fn next_due(&self) -> Instant {
        match self.last_run {
            None => self.started + self.initial_delay,
            Some(t) => t + self.period,
        }
    }

    /// Record a check result taken at `now`; returns the new status if it changed.
    pub fn observe(&mut self, result: &ProbeResult, now: Instant) -> Option<ProbeStatus> {
        self.last_run = Some(now);
        let before = self.status;
        match result {
            ProbeResult::Success => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                if self.successes >= self.success_threshold {
                    self.status = ProbeStatus::Success;
                }
            }
            ProbeResult::Failure(_) => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
                if self.failures >= self.failure_threshold {
                    self.status = ProbeStatus::Failure;
                }
            }
        }
        (self.status != before).then_some(self.status)
    }
}

/// Where a probe's network checks connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub host: String,
    pub port: u16,
}

/// The check a probe runs, with ports already resolved to where they are reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Http { target: ProbeTarget, path: String },
    Tcp { target: ProbeTarget },
    Exec { command: Vec<String> },
}

/// Run one check, bounded by `timeout`.
pub async fn check(
    c: &Check,
    timeout: Duration,
    runtime: &dyn Runtime,
    container_id: &str,
) -> ProbeResult {
    match c {
        Check::Http { target, path } => {
            match tokio::time::timeout(timeout, http_get(target, path)).await {
                Ok(r) => r,
                Err(_) => ProbeResult::Failure(format!(
                    "Get http://{}:{}{path}: timed out after {timeout:?}",
                    target.host, target.port
                )),
            }
        }
        Check::Tcp { target } => {
            let addr = format!("{}:{}", target.host, target.port);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => ProbeResult::Success,
                Ok(Err(e)) => ProbeResult::Failure(format!("dial tcp {addr}: {e}")),
                Err(_) => {
                    ProbeResult::Failure(format!("dial tcp {addr}: timed out after {timeout:?}"))
                }
            }
        }
        Check::Exec { command } => match runtime.exec(container_id, command, timeout).await {
            Ok(o) if o.exit_code == 0 => ProbeResult::Success,
            Ok(o) => ProbeResult::Failure(format!(
                "command {:?} exited with {}: {}",
                command.join(" "),
                o.exit_code,
                String::from_utf8_lossy(&o.output).trim()
            )),
            Err(e) => ProbeResult::Failure(format!("command {:?}: {e}", command.join(" "))),
        },
    }
}

/// HTTP/1.0 GET; 200-399 is success.
async fn http_get(target: &ProbeTarget, path: &str) -> ProbeResult {
    let addr = format!("{}:{}", target.host, target.port);
    let url = format!("http://{addr}{path}");
    let mut s = match tokio::net::TcpStream::connect(&addr).await {
        Ok(s) => s,
        Err(e) => return ProbeResult::Failure(format!("Get {url}: {e}")),
    };
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: berth-probe/1.0\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return ProbeResult::Failure(format!("Get {url}: {e}"));
    }
    // The status line is all we need; read until the first line ends.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return ProbeResult::Failure(format!("Get {url}: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let code: Option<u16> = line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    match code {
        Some(c) if (200..400).contains(&c) => ProbeResult::Success,
        Some(c) => ProbeResult::Failure(format!("HTTP probe failed with statuscode: {c}")),
        None => ProbeResult::Failure(format!("Get {url}: malformed HTTP response {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;

    fn probe(delay: i32, period: i32, succ: i32, fail: i32) -> Probe {
        Probe {
            initial_delay_seconds: Some(delay),
            period_seconds: Some(period),
            success_threshold: Some(succ),
            failure_threshold: Some(fail),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_check_waits_initial_delay_then_every_period() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(&probe(5, 3, 1, 3), t0);
        assert_eq!(p.next_due(), t0 + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(5)).await;
        p.observe(&ProbeResult::Success, Instant::now());
        assert_eq!(p.next_due(), t0 + Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    async fn status_flips_only_after_the_threshold_of_consecutive_results() {
        let now = Instant::now();
        let mut p = ProbeState::new(&probe(0, 1, 2, 3), now);
        assert_eq!(p.status(), ProbeStatus::Unknown);
        assert_eq!(p.observe(&ProbeResult::Success, now), None);
        assert_eq!(
            p.observe(&ProbeResult::Success, now),
            Some(ProbeStatus::Success)
        );
        let fail = ProbeResult::Failure("x".into());
        assert_eq!(p.observe(&fail, now), None);
        assert_eq!(p.observe(&fail, now), None);
        // A success in between resets the failure streak.
        assert_eq!(p.observe(&ProbeResult::Success, now), None);
        assert_eq!(p.observe(&fail, now), None);
        assert_eq!(p.observe(&fail, now), None);
        assert_eq!(p.observe(&fail, now), Some(ProbeStatus::Failure));
        assert_eq!(p.observe(&ProbeResult::Success, now), None);
        assert_eq!(
            p.observe(&ProbeResult::Success, now),
            Some(ProbeStatus::Success)
        );
    }

    #[test]
    fn defaults_match_kubernetes() {
        let p = ProbeState::new(&Probe::default(), Instant::now());
        assert_eq!(p.period, Duration::from_secs(10));
        assert_eq!(p.timeout, Duration::from_secs(1));
        assert_eq!((p.success_threshold, p.failure_threshold), (1, 3));
    }

    async fn serve_once(status: &'static str) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(format!("HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_check_accepts_2xx_3xx_and_rejects_errors_and_closed_ports() {
        let rt = FakeRuntime::new();
        let t = Duration::from_secs(5);
        for (status, ok) in [
            ("200 OK", true),
            ("302 Found", true),
            ("500 Oops", false),
            ("404 NF", false),
        ] {
            let port = serve_once(status).await;
            let c = Check::Http {
                target: ProbeTarget {
                    host: "127.0.0.1".into(),
                    port,
                },
                path: "/healthz".into(),
            };
            let r = check(&c, t, &rt, "x").await;
            assert_eq!(r == ProbeResult::Success, ok, "{status}: {r:?}");
        }
        // A port nobody listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        let target = ProbeTarget {
            host: "127.0.0.1".into(),
            port,
        };
        assert!(matches!(
            check(
                &Check::Tcp {
                    target: target.clone()
                },
                t,
                &rt,
                "x"
            )
            .await,
            ProbeResult::Failure(_)
        ));
        assert!(matches!(
            check(
                &Check::Http {
                    target,
                    path: "/".into()
                },
                t,
                &rt,
                "x"
            )
            .await,
            ProbeResult::Failure(_)
        ));
    }

    #[tokio::test]
    async fn tcp_check_succeeds_on_a_listening_port() {
        let rt = FakeRuntime::new();
        let port = serve_once("200 OK").await;
        let target = ProbeTarget {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(
            check(&Check::Tcp { target }, Duration::from_secs(5), &rt, "x").await,
            ProbeResult::Success
        );
    }

    #[tokio::test]
    async fn exec_check_uses_the_exit_code() {
        use crate::runtime::{ContainerSpec, Runtime};
        let rt = FakeRuntime::new();
        let id = rt
            .create(&ContainerSpec {
                container_name: "c".into(),
                ..Default::default()
            })
            .await
            .expect("create");
        let c = Check::Exec {
            command: vec!["true".into()],
        };
        assert_eq!(
            check(&c, Duration::from_secs(1), &rt, &id).await,
            ProbeResult::Success
        );
        rt.set_exec_exit("c", 1);
        assert!(matches!(
            check(&c, Duration::from_secs(1), &rt, &id).await,
            ProbeResult::Failure(_)
        ));
    }
}
