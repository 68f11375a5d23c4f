//! The process runtime: each container is a host process in its own process group.
//!
//! Layout under `<data-dir>/containers/<id>/`: `state.json` (the spec, pid, the kernel's start
//! time of that pid, exit record), `container.log` (stdout and stderr, appended by the process
//! itself so it keeps working while no agent runs) and `container.log.1` (the previous chunk
//! after rotation, done copy-and-truncate), and `work/` (default working directory).
//!
//! Adoption: a new agent lists the directories, and a process whose pid is alive *with the
//! recorded start time* (so a recycled pid is not mistaken for it) is reported Running. Only the
//! agent that spawned a process can learn its exit code (it is the parent); a process that exits
//! while no agent is its parent is reported with reason `ContainerStatusUnknown`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::task::TaskTracker;

use super::*;

const LOG: &str = "container.log";
const LOG_OLD: &str = "container.log.1";
const STATE: &str = "state.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExitRecord {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: String,
    finished_at: Time,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ProcState {
    spec: ContainerSpec,
    workdir: PathBuf,
    pid: Option<i32>,
    /// Field 22 of /proc/<pid>/stat: distinguishes our process from a later one with its pid.
    proc_start_ticks: Option<u64>,
    started_at: Option<Time>,
    exit: Option<ExitRecord>,
}

/// Host processes as containers. Cheap to clone.
#[derive(Clone)]
pub struct ProcessRuntime {
    root: PathBuf,
    /// Rotate a log once it grows past this many bytes.
    max_log_bytes: u64,
    /// Serialises state-file writes (waiter tasks and API calls).
    lock: Arc<Mutex<()>>,
    /// Containers whose process this runtime spawned and is waiting on.
    children: Arc<Mutex<HashMap<String, ()>>>,
    tracker: TaskTracker,
}

impl ProcessRuntime {
    pub fn new(data_dir: &Path) -> Result<ProcessRuntime, RuntimeError> {
        let root = data_dir.join("containers");
        std::fs::create_dir_all(&root).map_err(|source| RuntimeError::State {
            path: root.display().to_string(),
            source,
        })?;
        Ok(ProcessRuntime {
            root,
            max_log_bytes: 10 * 1024 * 1024,
            lock: Arc::new(Mutex::new(())),
            children: Arc::new(Mutex::new(HashMap::new())),
            tracker: TaskTracker::new(),
        })
    }

    pub fn with_max_log_bytes(mut self, n: u64) -> Self {
        self.max_log_bytes = n;
        self
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn read_state(&self, id: &str) -> Result<ProcState, RuntimeError> {
        let path = self.dir(id).join(STATE);
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RuntimeError::NotFound { id: id.to_string() }
            } else {
                RuntimeError::State {
                    path: path.display().to_string(),
                    source: e,
                }
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| RuntimeError::State {
            path: path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    fn write_state(&self, id: &str, st: &ProcState) -> Result<(), RuntimeError> {
        let path = self.dir(id).join(STATE);
        let tmp = self.dir(id).join("state.json.tmp");
        let err = |source| RuntimeError::State {
            path: path.display().to_string(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(st)
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        std::fs::write(&tmp, bytes).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// Apply `f` to the state under the lock.
    fn update_state(
        &self,
        id: &str,
        f: impl FnOnce(&mut ProcState),
    ) -> Result<ProcState, RuntimeError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.read_state(id)?;
        f(&mut st);
        self.write_state(id, &st)?;
        Ok(st)
    }

    fn is_child(&self, id: &str) -> bool {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    /// Current state, recording an unobservable exit for a vanished non-child process.
    fn observe(&self, id: &str) -> Result<(ProcState, RunState), RuntimeError> {
        let st = self.read_state(id)?;
        let state = match (&st.exit, st.pid) {
            (Some(e), _) => RunState::Exited(exit_info(e, st.started_at)),
            (None, None) => RunState::Created,
            (None, Some(pid)) => {
                if process_alive(pid, st.proc_start_ticks) || self.is_child(id) {
                    RunState::Running {
                        started_at: st.started_at.unwrap_or_else(chrono::Utc::now),
                    }
                } else {
                    let rec = ExitRecord {
                        exit_code: 255,
                        signal: None,
                        reason: "ContainerStatusUnknown".to_string(),
                        message: "the process exited while no agent was its parent, so its exit code could not be observed".to_string(),
                        finished_at: chrono::Utc::now(),
                    };
                    let st = self.update_state(id, |s| {
                        if s.exit.is_none() {
                            s.exit = Some(rec);
                        }
                    })?;
                    let e = st
                        .exit
                        .clone()
                        .ok_or_else(|| RuntimeError::Other("exit not recorded".into()))?;
                    return Ok((st.clone(), RunState::Exited(exit_info(&e, st.started_at))));
                }
            }
        };
        Ok((st, state))
    }

    fn info(id: &str, st: &ProcState, state: RunState) -> ContainerInfo {
        ContainerInfo {
            id: id.to_string(),
            pod_uid: st.spec.pod_uid.clone(),
            pod_namespace: st.spec.pod_namespace.clone(),
            pod_name: st.spec.pod_name.clone(),
            container_name: st.spec.container_name.clone(),
            attempt: st.spec.attempt,
            image: st.spec.image.clone(),
            ports: st.spec.ports.clone(),
            grace_seconds: st.spec.grace_seconds,
            state,
            runtime: "process",
        }
    }

    fn rotate_log(&self, id: &str) {
        let dir = self.dir(id);
        let log = dir.join(LOG);
        let Ok(md) = std::fs::metadata(&log) else {
            return;
        };
        if md.len() <= self.max_log_bytes {
            return;
        }
        // Copy-and-truncate: the process keeps its O_APPEND descriptor and continues at 0.
        if std::fs::copy(&log, dir.join(LOG_OLD)).is_ok() {
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&log) {
                let _ = f.set_len(0);
            }
        }
    }

    /// Wait (polling) until the process is gone, for at most `limit`.
    async fn wait_exit(&self, id: &str, limit: Duration) -> Result<bool, RuntimeError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (_, state) = self.observe(id)?;
            if !state.is_running() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait for spawned processes' waiters (tests; shutdown).
    pub async fn close(&self) {
        self.tracker.close();
    }
}

fn exit_info(e: &ExitRecord, started_at: Option<Time>) -> ExitInfo {
    ExitInfo {
        exit_code: e.exit_code,
        signal: e.signal,
        reason: e.reason.clone(),
        message: e.message.clone(),
        started_at,
        finished_at: Some(e.finished_at),
    }
}

/// Start time (clock ticks since boot) of a live, non-zombie process.
fn proc_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn process_alive(pid: i32, ticks: Option<u64>) -> bool {
    match (proc_start_ticks(pid), ticks) {
        (Some(now), Some(rec)) => now == rec,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn version(&self) -> Result<String, RuntimeError> {
        Ok(format!("process://{}", env!("CARGO_PKG_VERSION")))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        if spec.command.is_empty() && spec.args.is_empty() {
            return Err(RuntimeError::NoCommand);
        }
        if !spec.mounts.is_empty() {
            check_mounts(spec)?;
        }
        let id = spec.instance_name();
        let dir = self.dir(&id);
        let workdir = dir.join("work");
        std::fs::create_dir_all(&workdir).map_err(|source| RuntimeError::State {
            path: workdir.display().to_string(),
            source,
        })?;
        let st = ProcState {
            spec: spec.clone(),
            workdir,
            pid: None,
            proc_start_ticks: None,
            started_at: None,
            exit: None,
        };
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.write_state(&id, &st)?;
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let st = self.read_state(id)?;
        let spec = &st.spec;
        let mut argv: Vec<String> = spec.command.clone();
        argv.extend(spec.args.iter().cloned());
        let Some((prog, rest)) = argv.split_first() else {
            return Err(RuntimeError::NoCommand);
        };
        let cwd = match &spec.working_dir {
            Some(w) if Path::new(w).is_absolute() => PathBuf::from(w),
            Some(w) => st.workdir.join(w),
            None => st.workdir.clone(),
        };
        let log_path = self.dir(id).join(LOG);
        let open_log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(|source| RuntimeError::State {
                    path: log_path.display().to_string(),
                    source,
                })
        };
        let (out, err) = (open_log()?, open_log()?);
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(rest)
            .current_dir(&cwd)
            .env_clear()
            .env("PATH", workload_path())
            .env("HOME", &st.workdir)
            .envs(port_env(&spec.ports, true))
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = if spec.mounts.is_empty() {
            cmd.spawn().map_err(|source| RuntimeError::Spawn {
                what: format!("{prog:?} in {}", cwd.display()),
                source,
            })?
        } else {
            spawn_with_mounts(cmd, spec, prog, &cwd).await?
        };
        let pid = child.id().map(|p| p as i32);
        let ticks = pid.and_then(proc_start_ticks);
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), ());
        self.update_state(id, |s| {
            s.pid = pid;
            s.proc_start_ticks = ticks;
            s.started_at = Some(chrono::Utc::now());
        })?;
        let this = self.clone();
        let id2 = id.to_string();
        self.tracker.spawn(async move {
            let status = child.wait().await;
            use std::os::unix::process::ExitStatusExt;
            let rec = match status {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(c), _) => ExitRecord {
                        exit_code: c,
                        signal: None,
                        reason: if c == 0 { "Completed" } else { "Error" }.into(),
                        message: String::new(),
                        finished_at: chrono::Utc::now(),
                    },
                    (None, sig) => ExitRecord {
                        exit_code: 128 + sig.unwrap_or(0),
                        signal: sig,
                        reason: "Error".into(),
                        message: String::new(),
                        finished_at: chrono::Utc::now(),
                    },
                },
                Err(e) => ExitRecord {
                    exit_code: 255,
                    signal: None,
                    reason: "ContainerStatusUnknown".into(),
                    message: format!("waiting for the process failed: {e}"),
                    finished_at: chrono::Utc::now(),
                },
            };
            if let Err(e) = this.update_state(&id2, |s| s.exit = Some(rec)) {
                tracing::warn!(container = %id2, error = %e, "recording process exit");
            }
            this.children
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id2);
        });
        Ok(())
    }

    async fn stop(
        &self,
        id: &str,
        grace: Duration,
        signal: Option<&str>,
    ) -> Result<(), RuntimeError> {
        let (st, state) = self.observe(id)?;
        let Some(pid) = st.pid else {
            return Ok(());
        };
        let group = Pid::from_raw(pid);
        if state.is_running() {
            let sig = signal.and_then(parse_signal).unwrap_or(Signal::SIGTERM);
            let _ = killpg(group, sig);
            if self.wait_exit(id, grace).await? {
                // Stragglers in the group (children of the leader) go too.
                let _ = killpg(group, Signal::SIGKILL);
                return Ok(());
            }
        }
        if process_alive(pid, st.proc_start_ticks) {
            let _ = killpg(group, Signal::SIGKILL);
            if !self.wait_exit(id, Duration::from_secs(10)).await? {
                return Err(RuntimeError::Timeout {
                    op: "SIGKILL",
                    after: Duration::from_secs(10),
                });
            }
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let (_, state) = match self.observe(id) {
            Ok(x) => x,
            Err(RuntimeError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if state.is_running() {
            self.stop(id, Duration::ZERO, Some("SIGKILL")).await?;
        }
        let dir = self.dir(id);
        std::fs::remove_dir_all(&dir).map_err(|source| RuntimeError::State {
            path: dir.display().to_string(),
            source,
        })
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let rd = std::fs::read_dir(&self.root).map_err(|source| RuntimeError::State {
            path: self.root.display().to_string(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let id = entry.file_name().to_string_lossy().to_string();
            match self.observe(&id) {
                Ok((st, state)) => {
                    if state.is_running() {
                        self.rotate_log(&id);
                    }
                    out.push(Self::info(&id, &st, state));
                }
                // A directory mid-creation or mid-removal.
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(container = %id, error = %e, "unreadable container state"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let (st, state) = self.observe(id)?;
        Ok(Self::info(id, &st, state))
    }

    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        let dir = self.dir(id);
        if !dir.exists() {
            return Err(RuntimeError::NotFound { id: id.to_string() });
        }
        let log = dir.join(LOG);
        let current = tokio::fs::read(&log).await.unwrap_or_default();
        let initial = match opts.tail {
            None => {
                let mut all = tokio::fs::read(dir.join(LOG_OLD)).await.unwrap_or_default();
                all.extend_from_slice(&current);
                all
            }
            Some(n) => {
                let mut all = tokio::fs::read(dir.join(LOG_OLD)).await.unwrap_or_default();
                all.extend_from_slice(&current);
                tail_lines(&all, n).to_vec()
            }
        };
        let first = futures::stream::iter(if initial.is_empty() {
            vec![]
        } else {
            vec![Ok(Bytes::from(initial))]
        });
        if !opts.follow {
            return Ok(Box::pin(first));
        }
        struct Follow {
            rt: ProcessRuntime,
            id: String,
            log: PathBuf,
            offset: u64,
            done: bool,
        }
        let f = Follow {
            rt: self.clone(),
            id: id.to_string(),
            log,
            offset: current.len() as u64,
            done: false,
        };
        let rest = futures::stream::unfold(f, |mut f| async move {
            loop {
                if f.done {
                    return None;
                }
                let running =
                    f.rt.observe(&f.id)
                        .map(|(_, s)| s.is_running())
                        .unwrap_or(false);
                let len = tokio::fs::metadata(&f.log)
                    .await
                    .map(|m| m.len())
                    .unwrap_or(0);
                if len < f.offset {
                    f.offset = 0; // rotated (truncated)
                }
                if len > f.offset {
                    let chunk = read_from(&f.log, f.offset, len - f.offset).await;
                    match chunk {
                        Ok(b) => {
                            f.offset += b.len() as u64;
                            return Some((Ok(Bytes::from(b)), f));
                        }
                        Err(e) => {
                            f.done = true;
                            return Some((
                                Err(RuntimeError::State {
                                    path: f.log.display().to_string(),
                                    source: e,
                                }),
                                f,
                            ));
                        }
                    }
                }
                if !running {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Box::pin(futures::StreamExt::chain(first, rest)))
    }

    async fn exec_stream(
        &self,
        id: &str,
        spec: &crate::exec::ExecSpec,
    ) -> Result<crate::exec::ExecSession, RuntimeError> {
        use crate::exec::{ExecFrame, ExecSession};
        if spec.tty {
            return Err(RuntimeError::Other(
                "the process runtime does not allocate terminals: run without -t (--tty)".into(),
            ));
        }
        let st = self.read_state(id)?;
        let Some((prog, rest)) = spec.command.split_first() else {
            return Err(RuntimeError::Other("exec: empty command".into()));
        };
        let cwd = match &st.spec.working_dir {
            Some(w) if Path::new(w).is_absolute() => PathBuf::from(w),
            Some(w) => st.workdir.join(w),
            None => st.workdir.clone(),
        };
        let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        // The container's environment, as its own process got it (not isolated: a host
        // process, like the container).
        let mut child = tokio::process::Command::new(prog)
            .args(rest)
            .current_dir(&cwd)
            .env_clear()
            .env("PATH", workload_path())
            .env("HOME", &st.workdir)
            .envs(port_env(&st.spec.ports, true))
            .envs(st.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(piped(spec.stdin))
            .stdout(piped(spec.stdout))
            .stderr(piped(spec.stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| RuntimeError::Spawn {
                what: format!("{prog:?}"),
                source,
            })?;
        fn chunks<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
            r: Option<R>,
            wrap: fn(bytes::Bytes) -> ExecFrame,
        ) -> futures::stream::BoxStream<'static, ExecFrame> {
            use futures::StreamExt as _;
            let Some(r) = r else {
                return futures::stream::empty().boxed();
            };
            futures::stream::unfold(r, move |mut r| async move {
                let mut buf = vec![0u8; 32 * 1024];
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((wrap(bytes::Bytes::from(buf)), r))
                    }
                }
            })
            .boxed()
        }
        let out = chunks(child.stdout.take(), ExecFrame::Stdout);
        let err = chunks(child.stderr.take(), ExecFrame::Stderr);
        let stdin = child
            .stdin
            .take()
            .map(|w| Box::pin(w) as std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>);
        Ok(ExecSession {
            stdin,
            output: Box::pin(futures::stream::select(out, err)),
            control: Box::new(HostExec(tokio::sync::Mutex::new(child))),
        })
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let st = self.read_state(id)?;
        let Some((prog, rest)) = cmd.split_first() else {
            return Err(RuntimeError::Other("exec: empty command".into()));
        };
        let out = tokio::time::timeout(
            timeout,
            tokio::process::Command::new(prog)
                .args(rest)
                .current_dir(&st.workdir)
                .envs(port_env(&st.spec.ports, true))
                .envs(st.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| RuntimeError::Timeout {
            op: "exec",
            after: timeout,
        })?
        .map_err(|source| RuntimeError::Spawn {
            what: format!("{prog:?}"),
            source,
        })?;
        let mut output = out.stdout;
        output.extend_from_slice(&out.stderr);
        Ok(ExecOutput {
            exit_code: out.status.code().unwrap_or(128),
            output,
        })
    }
}

/// A host process started by `exec_stream`: killed when dropped (the client went away).
struct HostExec(tokio::sync::Mutex<tokio::process::Child>);

#[async_trait::async_trait]
impl crate::exec::ExecControl for HostExec {
    async fn resize(&self, _width: u16, _height: u16) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn wait(&self) -> Result<i32, RuntimeError> {
        use std::os::unix::process::ExitStatusExt as _;
        let status = self
            .0
            .lock()
            .await
            .wait()
            .await
            .map_err(|source| RuntimeError::Spawn {
                what: "exec".into(),
                source,
            })?;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }
}

async fn read_from(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut f = tokio::fs::File::open(path).await?;
    f.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::with_capacity(len.min(1 << 20) as usize);
    f.take(len.min(1 << 20)).read_to_end(&mut buf).await?;
    Ok(buf)
}

/// The last `n` lines of `b` (a trailing newline does not count as an empty last line).
pub fn tail_lines(b: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    let body = b.strip_suffix(b"\n").unwrap_or(b);
    let mut seen = 0;
    for (i, c) in body.iter().enumerate().rev() {
        if *c == b'\n' {
            seen += 1;
            if seen == n {
                return &b[i + 1..];
            }
        }
    }
    b
}

/// `$PATH` for workloads: the agent's own directory first, so `command: ["berth", ...]`
/// (the built-in demo server) runs the same binary as the agent wherever it is installed.
fn workload_path() -> std::ffi::OsString {
    let base = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let own_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()));
    match own_dir {
        Some(dir) => {
            let paths = std::iter::once(dir).chain(std::env::split_paths(&base));
            std::env::join_paths(paths).unwrap_or(base)
        }
        None => base,
    }
}

/// Can the process runtime mount `spec`'s volumes? Each process pod with volumes runs in its
/// own mount namespace (see [`spawn_with_mounts`]), and it shares the host's filesystem: a
/// mountPath must already exist on the node (a directory for a directory volume, a file for a
/// file), because creating it would change the host. Err: what to do instead.
fn check_mounts(spec: &ContainerSpec) -> Result<(), RuntimeError> {
    for m in &spec.mounts {
        let target = Path::new(&m.container_path);
        let what = if !target.is_absolute() || target.parent().is_none() {
            format!(
                "mountPath {:?} must be an absolute path other than /",
                m.container_path
            )
        } else {
            let source_dir = m.host_path.is_dir();
            let kind = |dir: bool| if dir { "directory" } else { "file" };
            match std::fs::metadata(target) {
                Ok(t) if t.is_dir() == source_dir => continue,
                Ok(t) => format!(
                    "mountPath {} is a {} on this node but the volume is a {}",
                    m.container_path,
                    kind(t.is_dir()),
                    kind(source_dir)
                ),
                Err(_) => format!(
                    "mountPath {} does not exist on this node: process pods share the node's \
                     filesystem, so a mountPath must be an existing {} (what the node has \
                     there is hidden from the pod, not changed)",
                    m.container_path,
                    kind(source_dir)
                ),
            }
        };
        return Err(mount_error(spec, &what));
    }
    Ok(())
}

fn mount_error(spec: &ContainerSpec, what: &str) -> RuntimeError {
    RuntimeError::Other(format!(
        "container {} mounts volumes, which the process runtime does in a private mount \
         namespace: {what}. Or run the pod on Docker (runtimeClassName: docker)",
        spec.container_name
    ))
}

/// Spawn `cmd` in a new mount namespace holding the container's volume mounts: a fresh
/// thread (never a pooled one, which would keep the namespace) calls `unshare(CLONE_NEWNS)`,
/// which affects only that thread, makes every mount private (nothing propagates back to
/// the host), bind-mounts each volume at its mountPath (remounted read-only when asked) and
/// forks the process, which inherits the namespace; the thread then ends. The namespace and
/// its mounts go away with the pod's last process; the host's mount table never changes.
/// Needs CAP_SYS_ADMIN (root).
async fn spawn_with_mounts(
    mut cmd: tokio::process::Command,
    spec: &ContainerSpec,
    prog: &str,
    cwd: &Path,
) -> Result<tokio::process::Child, RuntimeError> {
    use nix::mount::{mount, MsFlags};
    let mounts = spec.mounts.clone();
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let what = format!(
        "{prog:?} in {} (in its own mount namespace with the pod's volumes)",
        cwd.display()
    );
    let thread = std::thread::Builder::new()
        .name("berth-mountns".into())
        .spawn(move || {
            let r = (|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| {
                    if e == nix::errno::Errno::EPERM {
                        Err(
                            "creating a mount namespace needs root (CAP_SYS_ADMIN), which \
                             this agent does not have: run the agent as root"
                                .to_string(),
                        )
                    } else {
                        Err(format!("unshare(CLONE_NEWNS): {e}"))
                    }
                })?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .map_err(|e| Err(format!("making the mounts private: {e}")))?;
                for m in &mounts {
                    mount(
                        Some(&m.host_path),
                        m.container_path.as_str(),
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None::<&str>,
                    )
                    .map_err(|e| {
                        Err(format!(
                            "bind-mounting {} at {}: {e}",
                            m.host_path.display(),
                            m.container_path
                        ))
                    })?;
                    if m.read_only {
                        mount(
                            None::<&str>,
                            m.container_path.as_str(),
                            None::<&str>,
                            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                            None::<&str>,
                        )
                        .map_err(|e| {
                            Err(format!("remounting {} read-only: {e}", m.container_path))
                        })?;
                    }
                }
                // The child's reaper is the runtime's (tokio::process needs its context).
                let _rt = handle.enter();
                cmd.spawn().map_err(Ok)
            })();
            let _ = tx.send(r);
        })
        .map_err(|source| RuntimeError::Spawn {
            what: what.clone(),
            source,
        })?;
    let r = rx.await;
    let _ = thread.join();
    match r {
        Ok(Ok(child)) => Ok(child),
        Ok(Err(Ok(source))) => Err(RuntimeError::Spawn { what, source }),
        Ok(Err(Err(m))) => Err(mount_error(spec, &m)),
        Err(_) => Err(mount_error(spec, "the mount namespace thread ended early")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn spec(name: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            pod_uid: "0123456789abcdef".into(),
            pod_namespace: "default".into(),
            pod_name: "p".into(),
            container_name: name.into(),
            attempt: 0,
            command: vec!["sh".into(), "-c".into(), script.into()],
            ports: vec![PortBinding {
                name: "http".into(),
                container_port: 80,
                host_port: 23456,
                protocol: "TCP".into(),
            }],
            env: vec![("GREETING".into(), "hi".into())],
            ..Default::default()
        }
    }

    async fn wait_exited(rt: &ProcessRuntime, id: &str) -> ExitInfo {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let RunState::Exited(e) = rt.inspect(id).await.expect("inspect").state {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "container never exited"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn collect(s: LogStream) -> String {
        let parts: Vec<_> = s.collect().await;
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(&p.expect("log chunk"));
        }
        String::from_utf8_lossy(&out).to_string()
    }

    #[test]
    fn tail_lines_counts_from_the_end() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 1), b"c");
        assert_eq!(tail_lines(b"a\n", 5), b"a\n");
        assert_eq!(tail_lines(b"a\nb\n", 0), b"");
    }

    #[tokio::test]
    async fn process_gets_port_env_and_its_exit_code_is_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = ProcessRuntime::new(dir.path()).expect("runtime");
        let id = rt
            .create(&spec(
                "c",
                "echo port=$PORT http=$PORT_HTTP g=$GREETING; pwd; exit 3",
            ))
            .await
            .expect("create");
        rt.start(&id).await.expect("start");
        let e = wait_exited(&rt, &id).await;
        assert_eq!(e.exit_code, 3);
        assert_eq!(e.reason, "Error");
        let logs = collect(rt.logs(&id, LogOptions::default()).await.expect("logs")).await;
        assert!(logs.contains("port=23456 http=23456 g=hi"), "{logs}");
        assert!(logs.contains("/work"), "{logs}");
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill_after_grace_when_sigterm_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = ProcessRuntime::new(dir.path()).expect("runtime");
        let id = rt
            .create(&spec(
                "c",
                "trap '' TERM; echo ready; while :; do sleep 0.05; done",
            ))
            .await
            .expect("create");
        rt.start(&id).await.expect("start");
        // Wait until the trap is installed.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !collect(rt.logs(&id, LogOptions::default()).await.expect("logs"))
            .await
            .contains("ready")
        {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t0 = std::time::Instant::now();
        rt.stop(&id, Duration::from_millis(500), None)
            .await
            .expect("stop");
        assert!(t0.elapsed() >= Duration::from_millis(500));
        let e = wait_exited(&rt, &id).await;
        assert_eq!(e.signal, Some(9));
        assert_eq!(e.exit_code, 137);
    }

    #[tokio::test]
    async fn a_new_runtime_on_the_same_data_dir_adopts_a_running_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = ProcessRuntime::new(dir.path()).expect("runtime");
        let id = rt.create(&spec("c", "sleep 30")).await.expect("create");
        rt.start(&id).await.expect("start");
        let rt2 = ProcessRuntime::new(dir.path()).expect("runtime");
        let listed = rt2.list().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert!(listed[0].state.is_running(), "{:?}", listed[0].state);
        assert_eq!(listed[0].pod_uid, "0123456789abcdef");
        assert_eq!(listed[0].ports[0].host_port, 23456);
        rt2.stop(&id, Duration::from_secs(5), None)
            .await
            .expect("stop");
        assert!(!rt2.inspect(&id).await.expect("inspect").state.is_running());
        rt2.remove(&id).await.expect("remove");
        assert!(rt2.list().await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn follow_streams_new_output_until_exit_and_tail_limits_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = ProcessRuntime::new(dir.path()).expect("runtime");
        let id = rt
            .create(&spec(
                "c",
                "for i in 1 2 3 4 5; do echo line$i; sleep 0.1; done",
            ))
            .await
            .expect("create");
        rt.start(&id).await.expect("start");
        let all = collect(
            rt.logs(
                &id,
                LogOptions {
                    tail: None,
                    follow: true,
                },
            )
            .await
            .expect("logs"),
        )
        .await;
        assert_eq!(all, "line1\nline2\nline3\nline4\nline5\n");
        let tail = collect(
            rt.logs(
                &id,
                LogOptions {
                    tail: Some(2),
                    follow: false,
                },
            )
            .await
            .expect("logs"),
        )
        .await;
        assert_eq!(tail, "line4\nline5\n");
    }

    #[tokio::test]
    async fn logs_rotate_by_copy_truncate_and_reads_span_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = ProcessRuntime::new(dir.path())
            .expect("runtime")
            .with_max_log_bytes(64);
        let id = rt
            .create(&spec(
                "c",
                "i=0; while [ $i -lt 20 ]; do echo old-line-$i; i=$((i+1)); done; \
                 while [ ! -e rotated ]; do sleep 0.02; done; echo new-line; sleep 30",
            ))
            .await
            .expect("create");
        rt.start(&id).await.expect("start");
        let log = dir.path().join("containers").join(&id).join(LOG);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("old-line-19\n")
        {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // list() rotates running containers' logs that grew past the limit.
        rt.list().await.expect("list");
        let old = dir.path().join("containers").join(&id).join(LOG_OLD);
        assert!(std::fs::read_to_string(&old)
            .expect("rotated")
            .contains("old-line-0"));
        std::fs::write(
            dir.path().join("containers").join(&id).join("work/rotated"),
            b"",
        )
        .expect("signal");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let cur = std::fs::read_to_string(&log).unwrap_or_default();
            if cur.contains("new-line") {
                // Truncated in place: the process's appends start again at offset 0.
                assert!(!cur.contains("old-line"), "{cur:?}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let all = collect(rt.logs(&id, LogOptions::default()).await.expect("logs")).await;
        assert!(
            all.starts_with("old-line-0\n") && all.ends_with("new-line\n"),
            "{all:?}"
        );
        rt.stop(&id, Duration::from_secs(2), None)
            .await
            .expect("stop");
    }

    #[tokio::test]
    async fn exec_runs_in_the_container_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = ProcessRuntime::new(dir.path()).expect("runtime");
        let id = rt.create(&spec("c", "sleep 5")).await.expect("create");
        let ok = rt
            .exec(
                &id,
                &["sh".into(), "-c".into(), "test \"$GREETING\" = hi".into()],
                Duration::from_secs(5),
            )
            .await
            .expect("exec");
        assert_eq!(ok.exit_code, 0);
        let bad = rt
            .exec(
                &id,
                &["sh".into(), "-c".into(), "exit 4".into()],
                Duration::from_secs(5),
            )
            .await
            .expect("exec");
        assert_eq!(bad.exit_code, 4);
        let slow = rt
            .exec(
                &id,
                &["sleep".into(), "5".into()],
                Duration::from_millis(100),
            )
            .await;
        assert!(matches!(slow, Err(RuntimeError::Timeout { .. })));
    }

    #[tokio::test]
    async fn exec_stream_attaches_stdin_and_output_with_the_container_env_and_exit_code() {
        use crate::exec::{ExecFrame, ExecSpec};
        use futures::StreamExt as _;
        use tokio::io::AsyncWriteExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = ProcessRuntime::new(dir.path()).expect("runtime");
        let id = rt.create(&spec("c", "sleep 5")).await.expect("create");
        let mut session = rt
            .exec_stream(
                &id,
                &ExecSpec {
                    command: vec![
                        "sh".into(),
                        "-c".into(),
                        "echo $GREETING; cat; echo err >&2; exit 6".into(),
                    ],
                    stdin: true,
                    stdout: true,
                    stderr: true,
                    tty: false,
                },
            )
            .await
            .expect("exec");
        let mut stdin = session.stdin.take().expect("stdin");
        stdin.write_all(b"typed\n").await.expect("write");
        stdin.shutdown().await.expect("flush stdin");
        // A child's stdin closes when dropped (what the exec endpoint's stdin task does).
        drop(stdin);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(f) = session.output.next().await {
            match f {
                ExecFrame::Stdout(b) => out.extend_from_slice(&b),
                ExecFrame::Stderr(b) => err.extend_from_slice(&b),
            }
        }
        assert_eq!(out, b"hi\ntyped\n");
        assert_eq!(err, b"err\n");
        assert_eq!(session.control.wait().await.expect("code"), 6);
        let tty = ExecSpec {
            command: vec!["true".into()],
            stdout: true,
            tty: true,
            ..Default::default()
        };
        match rt.exec_stream(&id, &tty).await {
            Err(RuntimeError::Other(m)) => assert!(m.contains("without -t"), "{m}"),
            _ => panic!("a TTY was accepted by the process runtime"),
        }
    }
}
