//! A tokio runtime with a fixed number of workers on its own OS thread, so a component under
//! test gets exactly the CPU share it would get in production (e.g. one worker, like HAProxy's
//! `nbthread 1`), separate from the harness.

use std::future::Future;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

/// Which tokio scheduler runs the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `new_current_thread`: everything on the one OS thread.
    CurrentThread,
    /// `new_multi_thread` with this many workers.
    MultiThread(usize),
}

pub struct RuntimeThread {
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl RuntimeThread {
    /// Runs `body(stop)` on a new runtime of `flavor` until it returns; `stop` is cancelled
    /// when the `RuntimeThread` is dropped (which waits for the thread).
    pub fn start<F, Fut>(name: &str, flavor: Flavor, body: F) -> Result<Self>
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let mut builder = match flavor {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Flavor::MultiThread(workers) => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(workers.max(1));
                b
            }
        };
        let rt = builder
            .thread_name(format!("{name}-worker"))
            .enable_all()
            .build()
            .with_context(|| format!("building the {name} runtime"))?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || rt.block_on(body(token)))
            .with_context(|| format!("starting the {name} thread"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
