//! A bounded open-loop HTTP load: `rate` requests per second (each on a fresh connection),
//! spread round-robin over the targets (node proxies), for at most `limit`. Every request is
//! recorded with when it started, whether it got a 200, and the body, so a test can count
//! failures and check which version answered after a switch.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::http_get;

#[derive(Debug, Clone)]
pub struct Sample {
    pub started: Instant,
    pub target: SocketAddr,
    pub ok: bool,
    /// Body on success, the error (or non-200 status and body) otherwise.
    pub text: String,
}

impl Sample {
    /// `target: text`, for failure messages.
    pub fn describe(&self) -> String {
        format!("{}: {}", self.target, self.text.trim())
    }

    /// The version the demo server reported (`hello from POD version V`).
    pub fn version(&self) -> Option<&str> {
        self.text
            .split_whitespace()
            .skip_while(|w| *w != "version")
            .nth(1)
    }
}

pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
    rt: Option<tokio::runtime::Handle>,
    /// [`Load::start_in_hosts`]: one sender thread per host namespace.
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

/// The open loop: `rate` requests per second round-robin over `targets` until `stop` or `limit`.
async fn drive(
    targets: Vec<SocketAddr>,
    rate: u32,
    limit: Duration,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
) {
    let begin = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) && begin.elapsed() < limit {
        tick.tick().await;
        let target = targets[n % targets.len()];
        n += 1;
        let s = samples.clone();
        inflight.spawn(async move {
            let started = Instant::now();
            let (ok, text) = match http_get(target, "/", Duration::from_secs(5)).await {
                Ok((200, body)) => (true, body),
                Ok((code, body)) => (false, format!("HTTP {code}: {body}")),
                Err(e) => (false, e),
            };
            s.lock().unwrap_or_else(|e| e.into_inner()).push(Sample {
                started,
                target,
                ok,
                text,
            });
        });
        while inflight.try_join_next().is_some() {}
    }
    while inflight.join_next().await.is_some() {}
}

impl Load {
    pub fn start(
        rt: &tokio::runtime::Runtime,
        targets: Vec<SocketAddr>,
        rate: u32,
        limit: Duration,
    ) -> Load {
        assert!(!targets.is_empty() && rate > 0);
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = rt.spawn(drive(targets, rate, limit, samples.clone(), stop.clone()));
        Load {
            samples,
            stop,
            task: Some(task),
            rt: Some(rt.handle().clone()),
            threads: Vec::new(),
        }
    }

    /// The same load sent from inside hosts: `(netns, target)` pairs, `rate` requests per
    /// second in all, each pair's share sent by a thread in that namespace. For addresses only
    /// a node itself can reach, such as a ClusterIP.
    pub fn start_in_hosts(targets: Vec<(String, SocketAddr)>, rate: u32, limit: Duration) -> Load {
        assert!(!targets.is_empty() && rate as usize >= targets.len());
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let share = rate / targets.len() as u32;
        let threads = targets
            .into_iter()
            .map(|(ns, target)| {
                let (s, st) = (samples.clone(), stop.clone());
                super::net::in_netns(&ns, move |rt| {
                    rt.block_on(drive(vec![target], share, limit, s, st))
                })
            })
            .collect();
        Load {
            samples,
            stop,
            task: None,
            rt: None,
            threads,
        }
    }

    /// How many requests have completed since `t`-started ones (started at or after `t`).
    pub fn completed_since(&self, t: Instant) -> usize {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.started >= t)
            .count()
    }

    /// Stop sending, wait for the requests in flight, and return every sample.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        if let (Some(t), Some(rt)) = (self.task.take(), &self.rt) {
            let _ = rt.block_on(t);
        }
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("load sender: {e}"),
                Err(_) => panic!("a load sender thread panicked"),
            }
        }
        let mut v = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.sort_by_key(|s| s.started);
        v
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
