//! Several runtimes behind one [`Runtime`]: a node with a Docker engine offers both `docker`
//! (the default) and `process`, and each pod picks one with `runtimeClassName` (like Nomad's
//! per-task driver).
//!
//! Creation goes to the runtime the spec names ([`ContainerSpec::runtime_class`], else the
//! first); every other call is by container id and goes to the runtime that owns the id (learnt
//! from `create` and `list`, else found by asking each in turn).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::*;

pub struct MultiRuntime {
    /// The default first.
    runtimes: Vec<Arc<dyn Runtime>>,
    owners: Mutex<HashMap<String, usize>>,
}

impl MultiRuntime {
    /// `runtimes` must not be empty; the first is the default.
    pub fn new(runtimes: Vec<Arc<dyn Runtime>>) -> MultiRuntime {
        assert!(!runtimes.is_empty(), "MultiRuntime needs a runtime");
        MultiRuntime {
            runtimes,
            owners: Mutex::default(),
        }
    }

    fn remember(&self, id: &str, idx: usize) {
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), idx);
    }

    fn owner(&self, id: &str) -> Option<usize> {
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
    }

    /// Run `op` on the owner of `id`; when the owner is unknown, on each runtime until one
    /// does not answer NotFound.
    async fn by_id<'a, T, F, Fut>(&'a self, id: &str, op: F) -> Result<T, RuntimeError>
    where
        F: Fn(&'a dyn Runtime) -> Fut,
        Fut: std::future::Future<Output = Result<T, RuntimeError>> + 'a,
    {
        if let Some(i) = self.owner(id) {
            return op(self.runtimes[i].as_ref()).await;
        }
        for (i, rt) in self.runtimes.iter().enumerate() {
            match op(rt.as_ref()).await {
                Err(RuntimeError::NotFound { .. }) => continue,
                r => {
                    self.remember(id, i);
                    return r;
                }
            }
        }
        Err(RuntimeError::NotFound { id: id.to_string() })
    }

    fn for_class(&self, class: Option<&str>) -> Result<(usize, &dyn Runtime), RuntimeError> {
        match class {
            None => Ok((0, self.runtimes[0].as_ref())),
            Some(c) => self
                .runtimes
                .iter()
                .enumerate()
                .find(|(_, r)| r.name() == c)
                .map(|(i, r)| (i, r.as_ref()))
                .ok_or_else(|| {
                    RuntimeError::Other(format!(
                        "runtime {c:?} is not available on this node (it has: {})",
                        self.runtimes
                            .iter()
                            .map(|r| r.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }),
        }
    }

    /// The runtime that pulls images (the first that uses them).
    fn images(&self) -> Option<&dyn Runtime> {
        self.runtimes
            .iter()
            .find(|r| r.uses_images())
            .map(|r| r.as_ref())
    }
}

#[async_trait::async_trait]
impl Runtime for MultiRuntime {
    fn name(&self) -> &'static str {
        self.runtimes[0].name()
    }

    async fn version(&self) -> Result<String, RuntimeError> {
        self.runtimes[0].version().await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let (i, rt) = self.for_class(spec.runtime_class.as_deref())?;
        let id = rt.create(spec).await?;
        self.remember(&id, i);
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.by_id(id, |rt| rt.start(id)).await
    }

    async fn stop(
        &self,
        id: &str,
        grace: Duration,
        signal: Option<&str>,
    ) -> Result<(), RuntimeError> {
        self.by_id(id, |rt| rt.stop(id, grace, signal)).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let r = self.by_id(id, |rt| rt.remove(id)).await;
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        match r {
            Err(RuntimeError::NotFound { .. }) => Ok(()),
            r => r,
        }
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut all = Vec::new();
        for (i, rt) in self.runtimes.iter().enumerate() {
            let list = rt.list().await?;
            for c in &list {
                self.remember(&c.id, i);
            }
            all.extend(list);
        }
        Ok(all)
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        self.by_id(id, |rt| rt.inspect(id)).await
    }

    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        self.by_id(id, |rt| rt.logs(id, opts)).await
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        self.by_id(id, |rt| rt.exec(id, cmd, timeout)).await
    }

    async fn exec_stream(
        &self,
        id: &str,
        spec: &crate::exec::ExecSpec,
    ) -> Result<crate::exec::ExecSession, RuntimeError> {
        self.by_id(id, |rt| rt.exec_stream(id, spec)).await
    }

    fn uses_images(&self) -> bool {
        self.images().is_some()
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.images() {
            Some(rt) => rt.image_present(image).await,
            None => Ok(true),
        }
    }

    async fn pull(&self, image: &str) -> Result<Pulled, RuntimeError> {
        match self.images() {
            Some(rt) => rt.pull(image).await,
            None => Ok(Pulled::default()),
        }
    }

    async fn pull_with(
        &self,
        image: &str,
        keyring: &crate::pullsecrets::Keyring,
    ) -> Result<Pulled, RuntimeError> {
        match self.images() {
            Some(rt) => rt.pull_with(image, keyring).await,
            None => Ok(Pulled::default()),
        }
    }

    async fn image_digests(&self, image: &str) -> Result<Option<Vec<String>>, RuntimeError> {
        match self.images() {
            Some(rt) => rt.image_digests(image).await,
            None => Ok(None),
        }
    }

    async fn images(&self) -> Result<Vec<berth_proto::types::ContainerImage>, RuntimeError> {
        match self.images() {
            Some(rt) => rt.images().await,
            None => Ok(Vec::new()),
        }
    }

    async fn pod_ip(&self, pod_uid: &str) -> Option<String> {
        for rt in &self.runtimes {
            if let Some(ip) = rt.pod_ip(pod_uid).await {
                return Some(ip);
            }
        }
        None
    }

    async fn prepare_pod_network(&self) -> Result<bool, RuntimeError> {
        let mut any = false;
        for rt in &self.runtimes {
            any |= rt.prepare_pod_network().await?;
        }
        Ok(any)
    }

    async fn ensure_pod_sandbox(
        &self,
        spec: &ContainerSpec,
    ) -> Result<Option<String>, RuntimeError> {
        let (_, rt) = self.for_class(spec.runtime_class.as_deref())?;
        rt.ensure_pod_sandbox(spec).await
    }

    async fn lost_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        let mut lost = Vec::new();
        for rt in &self.runtimes {
            lost.extend(rt.lost_sandboxes().await?);
        }
        Ok(lost)
    }

    async fn remove_sandboxes(
        &self,
        keep: &std::collections::BTreeSet<String>,
    ) -> Result<(), RuntimeError> {
        for rt in &self.runtimes {
            rt.remove_sandboxes(keep).await?;
        }
        Ok(())
    }

    fn handlers(&self) -> Vec<Handler> {
        self.runtimes.iter().flat_map(|r| r.handlers()).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;

    /// A fake under another name, to stand for a second runtime.
    struct Named(&'static str, FakeRuntime);

    #[async_trait::async_trait]
    impl Runtime for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn version(&self) -> Result<String, RuntimeError> {
            self.1.version().await
        }
        async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
            let id = self.1.create(spec).await?;
            Ok(format!("{}-{id}", self.0))
        }
        async fn start(&self, id: &str) -> Result<(), RuntimeError> {
            self.1.start(self.strip(id)?).await
        }
        async fn stop(&self, id: &str, g: Duration, s: Option<&str>) -> Result<(), RuntimeError> {
            self.1.stop(self.strip(id)?, g, s).await
        }
        async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
            self.1.remove(self.strip(id)?).await
        }
        async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
            let mut l = self.1.list().await?;
            for c in &mut l {
                c.id = format!("{}-{}", self.0, c.id);
                c.runtime = self.0;
            }
            Ok(l)
        }
        async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
            self.1.inspect(self.strip(id)?).await
        }
        async fn logs(&self, id: &str, o: LogOptions) -> Result<LogStream, RuntimeError> {
            self.1.logs(self.strip(id)?, o).await
        }
        async fn exec(
            &self,
            id: &str,
            cmd: &[String],
            t: Duration,
        ) -> Result<ExecOutput, RuntimeError> {
            self.1.exec(self.strip(id)?, cmd, t).await
        }
        fn uses_images(&self) -> bool {
            self.0 == "docker"
        }
    }

    impl Named {
        fn strip<'a>(&self, id: &'a str) -> Result<&'a str, RuntimeError> {
            id.strip_prefix(self.0)
                .and_then(|r| r.strip_prefix('-'))
                .ok_or(RuntimeError::NotFound { id: id.to_string() })
        }
    }

    #[tokio::test]
    async fn pods_choose_a_runtime_by_class_and_calls_by_id_reach_the_owner() {
        let (d, p) = (FakeRuntime::new(), FakeRuntime::new());
        let m = MultiRuntime::new(vec![
            Arc::new(Named("docker", d.clone())),
            Arc::new(Named("process", p.clone())),
        ]);
        assert_eq!(
            m.handlers().iter().map(|h| h.name).collect::<Vec<_>>(),
            ["docker", "process"]
        );
        assert!(m.uses_images());
        let spec = |name: &str, class: Option<&str>| ContainerSpec {
            pod_uid: format!("uid-{name}"),
            container_name: name.into(),
            runtime_class: class.map(str::to_string),
            ..Default::default()
        };
        let a = m.create(&spec("a", None)).await.unwrap();
        let b = m.create(&spec("b", Some("process"))).await.unwrap();
        assert!(
            a.starts_with("docker-") && b.starts_with("process-"),
            "{a} {b}"
        );
        m.start(&b).await.unwrap();
        assert!(p.calls().iter().any(|c| c.starts_with("start ")));
        assert!(!d.calls().iter().any(|c| c.starts_with("start ")));
        let listed = m.list().await.unwrap();
        let runtimes: Vec<_> = listed
            .iter()
            .map(|c| (c.container_name.as_str(), c.runtime))
            .collect();
        assert_eq!(runtimes, [("a", "docker"), ("b", "process")]);
        let err = m.create(&spec("c", Some("gvisor"))).await.unwrap_err();
        assert!(err.to_string().contains("docker, process"), "{err}");
        // An id nobody told it about is found by asking each runtime.
        let fresh = MultiRuntime::new(vec![
            Arc::new(Named("docker", d.clone())),
            Arc::new(Named("process", p.clone())),
        ]);
        fresh.stop(&b, Duration::from_secs(1), None).await.unwrap();
        assert!(p.calls().iter().any(|c| c.starts_with("stop ")));
        m.remove(&a).await.unwrap();
        assert_eq!(m.list().await.unwrap().len(), 1);
    }
}
