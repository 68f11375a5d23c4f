//! An in-memory [`Runtime`] for unit tests: containers "run" on tokio's clock, so paused time
//! drives exits; behaviours (exit after a delay, ignore SIGTERM) and exec results are scripted
//! per container name; every call is recorded for assertions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::*;

/// What a fake container does once started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Behavior {
    /// Exit on its own with this code after this long.
    pub exit_after: Option<(Duration, i32)>,
    /// Ignore the stop signal: stop then takes the whole grace period and ends in SIGKILL.
    pub ignore_stop_signal: bool,
}

#[derive(Debug)]
struct FakeContainer {
    spec: ContainerSpec,
    behavior: Behavior,
    state: FakeState,
    started_instant: Option<Instant>,
}

#[derive(Debug, Clone)]
enum FakeState {
    Created,
    Running { started_at: Time },
    Exited(ExitInfo),
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    containers: BTreeMap<String, FakeContainer>,
    behaviors: HashMap<String, Behavior>,
    exec_exit: HashMap<String, i32>,
    missing_images: HashSet<String>,
    uses_images: bool,
    pulls: HashMap<String, PullScript>,
    calls: Vec<String>,
    /// What `image_digests` answers per image (None when not set: "cannot tell").
    image_digests: HashMap<String, Vec<String>>,
}

/// How a fake pull of one image goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullScript {
    /// The pull takes this long (on tokio's clock).
    pub delay: Duration,
    /// Fail with this instead of bringing the image.
    pub fail: Option<(PullFailure, String)>,
    /// Size reported on success.
    pub size: u64,
}

impl Inner {
    /// Add a container under the next `fake-N` id, scripted by its name's behavior.
    fn insert(
        &mut self,
        spec: ContainerSpec,
        state: FakeState,
        started_instant: Option<Instant>,
    ) -> String {
        self.next_id += 1;
        let id = format!("fake-{}", self.next_id);
        let behavior = self
            .behaviors
            .get(&spec.container_name)
            .copied()
            .unwrap_or_default();
        self.containers.insert(
            id.clone(),
            FakeContainer {
                spec,
                behavior,
                state,
                started_instant,
            },
        );
        id
    }
}

/// Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a test already panicked.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Script containers with this name (applies to attempts created afterwards).
    pub fn set_behavior(&self, container_name: &str, b: Behavior) {
        self.lock().behaviors.insert(container_name.to_string(), b);
    }

    /// Exit code of exec (probe) commands in containers with this name (default 0).
    pub fn set_exec_exit(&self, container_name: &str, code: i32) {
        self.lock()
            .exec_exit
            .insert(container_name.to_string(), code);
    }

    pub fn set_image_missing(&self, image: &str) {
        self.lock().missing_images.insert(image.to_string());
    }

    /// Behave like an image runtime (Docker): the pod sync loop then follows imagePullPolicy.
    pub fn set_uses_images(&self, yes: bool) {
        self.lock().uses_images = yes;
    }

    /// The registry digests the node's copy of `image` has (as Docker's RepoDigests).
    pub fn set_image_digests(&self, image: &str, digests: Vec<String>) {
        self.lock().image_digests.insert(image.to_string(), digests);
    }

    /// Script the pulls of `image` (default: instant success).
    pub fn set_pull(&self, image: &str, script: PullScript) {
        self.lock().pulls.insert(image.to_string(), script);
    }

    /// Pulls of `image` started so far.
    pub fn pull_count(&self, image: &str) -> usize {
        let want = format!("pull {image}");
        self.lock().calls.iter().filter(|c| **c == want).count()
    }

    /// Calls so far, e.g. "create web#0", "start fake-1", "stop fake-1".
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Make a running container exit now (a crash).
    pub fn crash(&self, id: &str, code: i32) {
        let mut g = self.lock();
        if let Some(c) = g.containers.get_mut(id) {
            if let FakeState::Running { started_at } = c.state {
                c.state = FakeState::Exited(ExitInfo {
                    started_at: Some(started_at),
                    finished_at: Some(chrono::Utc::now()),
                    ..ExitInfo::from_code(code, None)
                });
            }
        }
    }

    fn settle(c: &mut FakeContainer, now: Instant) {
        if let (FakeState::Running { started_at }, Some(t0), Some((after, code))) =
            (&c.state, c.started_instant, c.behavior.exit_after)
        {
            if now >= t0 + after {
                c.state = FakeState::Exited(ExitInfo {
                    started_at: Some(*started_at),
                    finished_at: Some(chrono::Utc::now()),
                    ..ExitInfo::from_code(code, None)
                });
            }
        }
    }

    fn info(id: &str, c: &FakeContainer) -> ContainerInfo {
        let state = match &c.state {
            FakeState::Created => RunState::Created,
            FakeState::Running { started_at } => RunState::Running {
                started_at: *started_at,
            },
            FakeState::Exited(e) => RunState::Exited(e.clone()),
        };
        ContainerInfo {
            id: id.to_string(),
            pod_uid: c.spec.pod_uid.clone(),
            pod_namespace: c.spec.pod_namespace.clone(),
            pod_name: c.spec.pod_name.clone(),
            container_name: c.spec.container_name.clone(),
            attempt: c.spec.attempt,
            image: c.spec.image.clone(),
            ports: c.spec.ports.clone(),
            grace_seconds: c.spec.grace_seconds,
            state,
            runtime: "fake",
        }
    }

    /// Put a running container in place as if started by an earlier agent (for adoption tests).
    pub fn insert_running(&self, spec: ContainerSpec) -> String {
        let state = FakeState::Running {
            started_at: chrono::Utc::now(),
        };
        self.lock().insert(spec, state, Some(Instant::now()))
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn version(&self) -> Result<String, RuntimeError> {
        Ok("fake://0".to_string())
    }

    fn uses_images(&self) -> bool {
        self.lock().uses_images
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        Ok(!self.lock().missing_images.contains(image))
    }

    async fn image_digests(&self, image: &str) -> Result<Option<Vec<String>>, RuntimeError> {
        Ok(self.lock().image_digests.get(image).cloned())
    }

    async fn pull(&self, image: &str) -> Result<Pulled, RuntimeError> {
        let script = {
            let mut g = self.lock();
            g.calls.push(format!("pull {image}"));
            g.pulls.get(image).cloned().unwrap_or_default()
        };
        if !script.delay.is_zero() {
            tokio::time::sleep(script.delay).await;
        }
        if let Some((kind, message)) = script.fail {
            return Err(RuntimeError::Pull {
                image: image.to_string(),
                kind,
                message,
            });
        }
        self.lock().missing_images.remove(image);
        Ok(Pulled { size: script.size })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let mut g = self.lock();
        g.calls
            .push(format!("create {}#{}", spec.container_name, spec.attempt));
        if g.missing_images.contains(&spec.image) {
            return Err(RuntimeError::ImageNotPresent {
                image: spec.image.clone(),
            });
        }
        Ok(g.insert(spec.clone(), FakeState::Created, None))
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        g.calls.push(format!("start {id}"));
        let c = g
            .containers
            .get_mut(id)
            .ok_or(RuntimeError::NotFound { id: id.to_string() })?;
        c.state = FakeState::Running {
            started_at: chrono::Utc::now(),
        };
        c.started_instant = Some(Instant::now());
        Ok(())
    }

    async fn stop(
        &self,
        id: &str,
        grace: Duration,
        _signal: Option<&str>,
    ) -> Result<(), RuntimeError> {
        let ignore = {
            let mut g = self.lock();
            g.calls.push(format!("stop {id}"));
            let now = Instant::now();
            let c = g
                .containers
                .get_mut(id)
                .ok_or(RuntimeError::NotFound { id: id.to_string() })?;
            Self::settle(c, now);
            if !matches!(c.state, FakeState::Running { .. }) {
                return Ok(());
            }
            c.behavior.ignore_stop_signal
        };
        let (code, signal) = if ignore {
            tokio::time::sleep(grace).await;
            (137, 9)
        } else {
            (143, 15)
        };
        let mut g = self.lock();
        if let Some(c) = g.containers.get_mut(id) {
            if let FakeState::Running { started_at } = c.state {
                c.state = FakeState::Exited(ExitInfo {
                    started_at: Some(started_at),
                    finished_at: Some(chrono::Utc::now()),
                    ..ExitInfo::from_code(code, Some(signal))
                });
            }
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        g.calls.push(format!("remove {id}"));
        g.containers.remove(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut g = self.lock();
        let now = Instant::now();
        Ok(g.containers
            .iter_mut()
            .map(|(id, c)| {
                Self::settle(c, now);
                Self::info(id, c)
            })
            .collect())
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let mut g = self.lock();
        let now = Instant::now();
        let c = g
            .containers
            .get_mut(id)
            .ok_or(RuntimeError::NotFound { id: id.to_string() })?;
        Self::settle(c, now);
        Ok(Self::info(id, c))
    }

    /// One line; when following, the stream then stays open (a running container).
    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        let c = self.inspect(id).await?;
        let line = Bytes::from(format!(
            "log of {} attempt {}\n",
            c.container_name, c.attempt
        ));
        let lines = futures::stream::iter(vec![Ok::<_, RuntimeError>(line)]);
        if opts.follow {
            return Ok(Box::pin(futures::StreamExt::chain(
                lines,
                futures::stream::pending(),
            )));
        }
        Ok(Box::pin(lines))
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let mut g = self.lock();
        g.calls.push(format!("exec {id} {}", cmd.join(" ")));
        let name = g
            .containers
            .get(id)
            .map(|c| c.spec.container_name.clone())
            .ok_or(RuntimeError::NotFound { id: id.to_string() })?;
        Ok(ExecOutput {
            exit_code: g.exec_exit.get(&name).copied().unwrap_or(0),
            output: Vec::new(),
        })
    }
}

impl FakeRuntime {
    /// Ids of all containers (any state).
    pub async fn list_ids(&self) -> Vec<String> {
        self.lock().containers.keys().cloned().collect()
    }
}
