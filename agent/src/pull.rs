//! Image pulls for the pod sync loop: single-flight per image and off the sync round.
//!
//! The sync round asks [`Puller::request`] for an image and gets a pull id; containers needing
//! an image whose pull is already in flight join it, so concurrent pods cause one pull. The
//! pull runs in its own task (a big image takes minutes; the round must not wait), records its
//! outcome and kicks the sync loop, which then reads it with [`Puller::outcome`]. Pulls with
//! different credentials (the pods' `imagePullSecrets`) are never joined: a pod must not run
//! an image it could not have pulled with its own secrets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::pullsecrets::Keyring;
use crate::runtime::{Pulled, Runtime, RuntimeError};

/// How a finished pull went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullDone {
    /// The image's size on success; on failure the reason as the user reads it
    /// ("not found: manifest unknown ...").
    pub result: Result<Pulled, String>,
    /// From the start of the pull to its end.
    pub took: Duration,
}

#[derive(Debug, Default)]
struct ImagePulls {
    next_id: u64,
    /// Id of the pull in flight.
    in_flight: Option<u64>,
    /// The latest finished pull.
    last: Option<(u64, PullDone)>,
}

/// Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Puller {
    runtime: Arc<dyn Runtime>,
    kick: Arc<Notify>,
    /// Keyed by image and [`Keyring::fingerprint`].
    images: Arc<Mutex<HashMap<(String, u64), ImagePulls>>>,
}

impl Puller {
    pub fn new(runtime: Arc<dyn Runtime>, kick: Arc<Notify>) -> Puller {
        Puller {
            runtime,
            kick,
            images: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, u64), ImagePulls>> {
        self.images.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pull of `image` with `keyring` that starts no earlier than now: the one in flight
    /// (with the same credentials), or a new one. Returns its id, for [`Puller::outcome`].
    pub fn request(&self, image: &str, keyring: &Keyring) -> u64 {
        let key = (image.to_string(), keyring.fingerprint());
        let mut g = self.lock();
        let e = g.entry(key.clone()).or_default();
        if let Some(id) = e.in_flight {
            return id;
        }
        e.next_id += 1;
        let id = e.next_id;
        e.in_flight = Some(id);
        drop(g);
        let this = self.clone();
        let image = image.to_string();
        let keyring = keyring.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let pulled = this.runtime.pull_with(&image, &keyring).await;
            let result = pulled.map_err(|e| match e {
                RuntimeError::Pull { kind, message, .. } => format!("{kind}: {message}"),
                other => other.to_string(),
            });
            let done = PullDone {
                result,
                took: t0.elapsed(),
            };
            {
                let mut g = this.lock();
                let e = g.entry(key).or_default();
                e.in_flight = None;
                e.last = Some((id, done));
            }
            this.kick.notify_one();
        });
        id
    }

    /// The outcome of pull `id` of `image` with credentials `fingerprint` once it finished
    /// (None while it runs).
    pub fn outcome(&self, image: &str, fingerprint: u64, id: u64) -> Option<PullDone> {
        let g = self.lock();
        match &g.get(&(image.to_string(), fingerprint))?.last {
            Some((last, done)) if *last >= id => Some(done.clone()),
            _ => None,
        }
    }

    /// Is a pull of `image` (with any credentials) running?
    pub fn pulling(&self, image: &str) -> bool {
        self.lock()
            .iter()
            .any(|((i, _), e)| i == image && e.in_flight.is_some())
    }
}

/// "1.2s", "850ms", "2m3s".
pub fn took(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// Decimal units, as `docker images` shows sizes: "34 MB", "1.2 GB", "512 kB".
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::runtime::fake::{FakeRuntime, PullScript};

    #[tokio::test(start_paused = true)]
    async fn requests_during_a_pull_join_it_and_later_ones_pull_again() {
        let rt = FakeRuntime::new();
        rt.set_pull(
            "web:1",
            PullScript {
                delay: Duration::from_secs(3),
                size: 34_000_000,
                ..Default::default()
            },
        );
        let kick = Arc::new(Notify::new());
        let p = Puller::new(Arc::new(rt.clone()), kick.clone());
        let none = Keyring::default();
        let a = p.request("web:1", &none);
        let b = p.request("web:1", &none);
        assert_eq!(a, b, "a second request joins the pull in flight");
        assert!(p.outcome("web:1", none.fingerprint(), a).is_none());
        assert!(p.pulling("web:1"));
        tokio::time::timeout(Duration::from_secs(10), kick.notified())
            .await
            .expect("the pull kicks the sync loop when it ends");
        let done = p.outcome("web:1", none.fingerprint(), a).expect("finished");
        assert_eq!(done.result, Ok(Pulled { size: 34_000_000 }));
        assert_eq!(done.took, Duration::from_secs(3));
        assert_eq!(rt.pull_count("web:1"), 1);
        let c = p.request("web:1", &none);
        assert!(c > a, "a request after the pull ended starts a new one");
        assert!(p.outcome("web:1", none.fingerprint(), c).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_pull_reports_the_reason() {
        let rt = FakeRuntime::new();
        rt.set_pull(
            "ghost:9",
            PullScript {
                fail: Some((
                    crate::runtime::PullFailure::NotFound,
                    "manifest unknown".into(),
                )),
                ..Default::default()
            },
        );
        let kick = Arc::new(Notify::new());
        let p = Puller::new(Arc::new(rt), kick.clone());
        let none = Keyring::default();
        let id = p.request("ghost:9", &none);
        kick.notified().await;
        assert_eq!(
            p.outcome("ghost:9", none.fingerprint(), id).unwrap().result,
            Err("not found: manifest unknown".to_string())
        );
    }

    #[test]
    fn sizes_and_durations_read_like_docker_and_kubelet() {
        assert_eq!(size(34_123_456), "34 MB");
        assert_eq!(size(1_234_000_000), "1.2 GB");
        assert_eq!(size(512_000), "512 kB");
        assert_eq!(took(Duration::from_millis(1234)), "1.2s");
        assert_eq!(took(Duration::from_millis(850)), "850ms");
        assert_eq!(took(Duration::from_secs(123)), "2m3s");
    }
}
