//! A watch that behaves like a careful client: it follows one server's Watch stream and, when
//! the stream breaks (server killed or restarted), resumes on the next server from the last
//! revision it saw. Everything it receives is recorded so a test can check that every change
//! arrived exactly once, in order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_proto::pb::{EventType, WatchRequest};
use berth_tls::ClientTls;

use super::cluster::api_client;

/// One delivered change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub revision: u64,
    pub event: i32,
    pub name: String,
}

pub struct Watcher {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// How many times the stream broke and was resumed on another server.
    pub resumes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Watch `kind` (all namespaces) from `from_revision` (exclusive) across `addrs`, over
    /// mutual TLS with `tls` (e.g. the admin's).
    pub fn start(
        rt: &tokio::runtime::Runtime,
        addrs: Vec<String>,
        tls: ClientTls,
        kind: &str,
        from_revision: u64,
    ) -> Watcher {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let resumes = Arc::new(AtomicUsize::new(0));
        let kind = kind.to_string();
        let (s, r) = (seen.clone(), resumes.clone());
        let task = rt.spawn(async move {
            let mut last = from_revision;
            let mut idx = 0usize;
            loop {
                let addr = &addrs[idx % addrs.len()];
                if let Ok(Ok(mut client)) =
                    tokio::time::timeout(Duration::from_secs(2), api_client(addr, &tls)).await
                {
                    let req = WatchRequest {
                        kind: kind.clone(),
                        namespace: String::new(),
                        label_selector: String::new(),
                        from_revision: last,
                    };
                    if let Ok(resp) = client.watch(req).await {
                        let mut stream = resp.into_inner();
                        while let Ok(Some(ev)) = stream.message().await {
                            if ev.r#type != EventType::Bookmark as i32 {
                                let name = serde_json::from_slice::<serde_json::Value>(&ev.object)
                                    .ok()
                                    .and_then(|v| {
                                        v["metadata"]["name"].as_str().map(str::to_string)
                                    })
                                    .unwrap_or_default();
                                s.lock().unwrap_or_else(|e| e.into_inner()).push(Seen {
                                    revision: ev.revision,
                                    event: ev.r#type,
                                    name,
                                });
                            }
                            last = last.max(ev.revision);
                        }
                    }
                }
                r.fetch_add(1, Ordering::SeqCst);
                idx += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Watcher {
            seen,
            resumes,
            task,
        }
    }

    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
