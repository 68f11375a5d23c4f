//! The Docker runtime: containers in the Docker Engine through bollard.
//!
//! Each attempt is one container named `berth_<ns>_<pod>_<container>_<attempt>_<uid8>` and
//! labelled with its identity (see [`ContainerSpec::labels`]), so `list` rebuilds the agent's
//! view from the engine alone. Images are pulled through the engine ([`Runtime::pull`], the
//! engine's `POST /images/create`, so registries the engine knows work as they do for `docker
//! pull`); the pod sync loop decides when, following `imagePullPolicy`. `create` still checks the
//! image is present and fails fast with [`RuntimeError::ImageNotPresent`] if it is not. A
//! reference by digest (`nginx:1.14.2@sha256:...`, what a pinned Deployment's pods carry) is
//! pulled from the cluster registry when named without a registry, found on the node by its
//! repo digest and run as `REPO@sha256:...`.

use std::collections::HashMap;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding as DockerPortBinding};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, KillContainerOptions,
    ListContainersOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;

use super::*;

/// Docker Engine runtime. Cheap to clone.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// Only list containers labelled with this node (see [`LABEL_NODE`]).
    node: Option<String>,
    /// The cluster registry as this node's engine reaches it (`127.0.0.1:5000` in berth dev):
    /// images named without a registry (`nginx:1.14.2`) come from there when it has them.
    cluster_registry: Option<String>,
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn parse_time(s: &Option<String>) -> Option<Time> {
    let s = s.as_deref()?;
    if s.starts_with("0001-") {
        return None; // Docker's zero time
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// The names the engine may hold `image` under, in the order to try. A reference by digest is
/// looked up without its tag (`REPO@sha256:...`, what the engine's RepoDigests hold; a tag
/// cannot be put on a digest); one named without a registry under the cluster registry's name
/// first, where the agent pulls it from (a digest is the same bytes wherever it came from).
/// Anything else: as written.
fn local_names(cluster_registry: Option<&str>, image: &str) -> Vec<String> {
    let Ok(r) = berth_proto::image::ImageRef::parse(image) else {
        return vec![image.to_string()];
    };
    let Some(by_digest) = r.by_digest() else {
        return vec![image.to_string()];
    };
    match (cluster_registry, &r.domain) {
        (Some(reg), None) => vec![format!("{reg}/{by_digest}"), by_digest],
        _ => vec![by_digest],
    }
}

impl DockerRuntime {
    /// Connect to the local engine (DOCKER_HOST or the default socket) and agree on an API
    /// version, so older engines work too.
    pub async fn connect() -> Result<DockerRuntime, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()?
            .negotiate_version()
            .await?;
        docker.ping().await?;
        Ok(DockerRuntime {
            docker,
            node: None,
            cluster_registry: None,
        })
    }

    /// Scope listing to one node's containers, so agents sharing an engine never adopt or
    /// clean up each other's workloads.
    pub fn for_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    /// Does a Docker engine answer on the default socket (within `timeout`)?
    pub async fn available(timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, Self::connect()).await,
            Ok(Ok(_))
        )
    }

    /// Pull images named without a registry from `registry` (HOST:PORT) when it has them.
    pub fn with_cluster_registry(mut self, registry: Option<String>) -> Self {
        self.cluster_registry = registry.filter(|r| !r.is_empty());
        self
    }

    /// The first of [`local_names`] the engine has, with its size, if any.
    async fn local_image(&self, image: &str) -> Result<Option<(String, u64)>, RuntimeError> {
        for name in local_names(self.cluster_registry.as_deref(), image) {
            match self.docker.inspect_image(&name).await {
                Ok(i) => return Ok(Some((name, i.size.unwrap_or(0).max(0) as u64))),
                Err(e) if not_found(&e) => {}
                // The engine refuses some references outright (400): not present under it.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 400, ..
                }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// Pull `name:tag` (the engine's `POST /images/create`); Err((kind, message)).
    async fn engine_pull(
        &self,
        name: &str,
        tag: Option<String>,
    ) -> Result<(), Result<(PullFailure, String), RuntimeError>> {
        let opts = CreateImageOptions {
            from_image: Some(name.to_string()),
            tag,
            ..Default::default()
        };
        let mut progress = self.docker.create_image(Some(opts), None, None);
        while let Some(item) = progress.next().await {
            let message = match item {
                Ok(_) => continue,
                Err(bollard::errors::Error::DockerStreamError { error }) => error,
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code,
                    message,
                }) => match status_code {
                    404 => return Err(Ok((PullFailure::NotFound, message))),
                    401 | 403 => return Err(Ok((PullFailure::Unauthorized, message))),
                    _ => message,
                },
                Err(e) => return Err(Err(e.into())),
            };
            return Err(Ok((PullFailure::classify(&message), message)));
        }
        Ok(())
    }

    /// The size of `image` once pulled.
    async fn pulled_size(
        &self,
        image: &str,
        failed: &(dyn Fn(PullFailure, String) -> RuntimeError + Sync),
    ) -> Result<Pulled, RuntimeError> {
        let Some((_, size)) = self.local_image(image).await? else {
            return Err(failed(
                PullFailure::Other,
                "the engine reported success but does not have the image".into(),
            ));
        };
        Ok(Pulled { size })
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn container_name(spec: &ContainerSpec) -> String {
        format!("berth_{}", spec.instance_name())
    }
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn version(&self) -> Result<String, RuntimeError> {
        let v = self.docker.version().await?;
        Ok(format!("docker://{}", v.version.unwrap_or_default()))
    }

    fn uses_images(&self) -> bool {
        true
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        Ok(self.local_image(image).await?.is_some())
    }

    async fn image_digests(&self, image: &str) -> Result<Option<Vec<String>>, RuntimeError> {
        let Ok(want) = berth_proto::image::ImageRef::parse(image) else {
            return Ok(None);
        };
        // A pinned `REPO:TAG@sha256:..` is held under its digest names (see `local_names`).
        let mut found = None;
        for name in local_names(self.cluster_registry.as_deref(), image) {
            match self.docker.inspect_image(&name).await {
                Ok(i) => {
                    found = Some(i);
                    break;
                }
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let Some(info) = found else {
            return Ok(Some(Vec::new()));
        };
        // `127.0.0.1:5000/shop@sha256:..` (pulled from the cluster registry) counts for `shop`.
        Ok(Some(repo_digests_of(
            &want.repository,
            info.repo_digests.unwrap_or_default(),
        )))
    }

    async fn images(&self) -> Result<Vec<berth_proto::types::ContainerImage>, RuntimeError> {
        let list = self
            .docker
            .list_images(None::<bollard::query_parameters::ListImagesOptions>)
            .await?;
        Ok(list
            .into_iter()
            .map(|i| berth_proto::types::ContainerImage {
                names: i
                    .repo_digests
                    .into_iter()
                    .chain(i.repo_tags)
                    .filter(|n| !n.starts_with("<none>"))
                    .collect(),
                size_bytes: i.size,
            })
            .filter(|i| !i.names.is_empty())
            .collect())
    }

    async fn pull(&self, image: &str) -> Result<Pulled, RuntimeError> {
        let failed = |kind: PullFailure, message: String| RuntimeError::Pull {
            image: image.to_string(),
            kind,
            message,
        };
        let r = berth_proto::image::ImageRef::parse(image)
            .map_err(|e| failed(PullFailure::InvalidReference, e))?;
        // As the docker CLI does: the name in fromImage, the tag or digest apart (an empty tag
        // would make the engine pull every tag of the repository).
        let mut name = r.clone();
        name.tag = None;
        name.digest = None;
        let tag = r
            .digest
            .clone()
            .or_else(|| r.tag_or_latest().map(str::to_string));
        // A name without a registry: the cluster registry first, then wherever the engine
        // resolves it (Docker Hub). A tag is re-tagged under the name as written; a digest
        // (`nginx:1.14.2@sha256:...`, a pinned Deployment's pods) cannot be and need not be:
        // it is found again under `REGISTRY/REPO@sha256:...` (see `local_names`).
        let mut cluster_miss = None;
        if let (Some(reg), None) = (&self.cluster_registry, &r.domain) {
            let from = format!("{reg}/{}", r.repository);
            match self.engine_pull(&from, tag.clone()).await {
                Ok(()) if r.digest.is_some() => return self.pulled_size(image, &failed).await,
                Ok(()) => {
                    let t = tag.clone().unwrap_or_else(|| "latest".into());
                    self.docker
                        .tag_image(
                            &format!("{from}:{t}"),
                            Some(bollard::query_parameters::TagImageOptions {
                                repo: Some(name.to_string()),
                                tag: Some(t),
                            }),
                        )
                        .await?;
                    return self.pulled_size(image, &failed).await;
                }
                Err(Ok((PullFailure::NotFound, m))) => cluster_miss = Some(m),
                Err(Ok((kind, m))) => {
                    return Err(failed(kind, format!("cluster registry {reg}: {m}")))
                }
                Err(Err(e)) => return Err(e),
            }
        }
        match self.engine_pull(&name.to_string(), tag).await {
            Ok(()) => {}
            Err(Ok((kind, m))) => {
                let m = match cluster_miss {
                    Some(_) => format!("{m} (and the cluster registry does not have it)"),
                    None => m,
                };
                return Err(failed(kind, m));
            }
            Err(Err(e)) => return Err(e),
        }
        self.pulled_size(image, &failed).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        // The engine's name for the image (a digest reference is run by `REPO@sha256:...`).
        let Some((image, _)) = self.local_image(&spec.image).await? else {
            return Err(RuntimeError::ImageNotPresent {
                image: spec.image.clone(),
            });
        };
        let mut exposed = HashMap::new();
        let mut bindings: HashMap<String, Option<Vec<DockerPortBinding>>> = HashMap::new();
        for p in &spec.ports {
            let key = format!("{}/{}", p.container_port, p.protocol.to_ascii_lowercase());
            exposed.insert(key.clone(), HashMap::new());
            bindings.insert(
                key,
                Some(vec![DockerPortBinding {
                    host_ip: Some("0.0.0.0".to_string()),
                    host_port: Some(p.host_port.to_string()),
                }]),
            );
        }
        let mut env: Vec<String> = port_env(&spec.ports, false)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let body = ContainerCreateBody {
            image: Some(image),
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(env),
            working_dir: spec.working_dir.clone(),
            labels: Some(spec.labels().into_iter().collect()),
            exposed_ports: Some(exposed),
            stop_signal: spec.stop_signal.clone(),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                memory: spec.memory_limit_bytes.map(|m| m as i64),
                nano_cpus: spec.cpu_limit_millis.map(|m| (m as i64) * 1_000_000),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = Self::container_name(spec);
        let opts = || {
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            })
        };
        let resp = match self.docker.create_container(opts(), body.clone()).await {
            Ok(r) => r,
            // A leftover with this name (a create whose start never ran): replace it.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                let _ = self
                    .docker
                    .remove_container(
                        &name,
                        Some(RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
                self.docker.create_container(opts(), body).await?
            }
            Err(e) => return Err(e.into()),
        };
        Ok(resp.id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await?;
        Ok(())
    }

    async fn stop(
        &self,
        id: &str,
        grace: Duration,
        signal: Option<&str>,
    ) -> Result<(), RuntimeError> {
        let t = grace.as_secs().min(i32::MAX as u64) as i32;
        let r = self
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    signal: signal.map(str::to_string),
                    t: Some(t),
                }),
            )
            .await;
        match r {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) if not_found(&e) => Err(RuntimeError::NotFound { id: id.to_string() }),
            Err(e) => {
                // Last resort so a stop never leaves the container running.
                let _ = self
                    .docker
                    .kill_container(
                        id,
                        Some(KillContainerOptions {
                            signal: "SIGKILL".into(),
                        }),
                    )
                    .await;
                Err(e.into())
            }
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        match self
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut filters = HashMap::new();
        let mut labels = vec![format!("{LABEL_MANAGED}=true")];
        if let Some(n) = &self.node {
            labels.push(format!("{LABEL_NODE}={n}"));
        }
        filters.insert("label".to_string(), labels);
        let summaries = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?;
        let mut out = Vec::new();
        for s in summaries {
            let Some(id) = s.id else { continue };
            match self.inspect(&id).await {
                Ok(i) => out.push(i),
                Err(RuntimeError::NotFound { .. }) => {} // removed meanwhile
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let c = match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c,
            Err(e) if not_found(&e) => return Err(RuntimeError::NotFound { id: id.to_string() }),
            Err(e) => return Err(e.into()),
        };
        let config = c.config.unwrap_or_default();
        let labels: std::collections::BTreeMap<String, String> =
            config.labels.unwrap_or_default().into_iter().collect();
        let st = c.state.unwrap_or_default();
        use bollard::models::ContainerStateStatusEnum as S;
        let started_at = parse_time(&st.started_at);
        let state = match st.status {
            Some(S::RUNNING) | Some(S::PAUSED) | Some(S::RESTARTING) => RunState::Running {
                started_at: started_at.unwrap_or_else(chrono::Utc::now),
            },
            Some(S::CREATED) | Some(S::EMPTY) | None => RunState::Created,
            Some(S::EXITED) | Some(S::DEAD) | Some(S::REMOVING) => {
                let code = st.exit_code.unwrap_or(0) as i32;
                let oom = st.oom_killed.unwrap_or(false);
                RunState::Exited(ExitInfo {
                    exit_code: code,
                    signal: (code > 128).then_some(code - 128),
                    reason: if oom {
                        "OOMKilled".to_string()
                    } else if code == 0 {
                        "Completed".to_string()
                    } else {
                        "Error".to_string()
                    },
                    message: st.error.unwrap_or_default(),
                    started_at,
                    finished_at: parse_time(&st.finished_at),
                })
            }
        };
        ContainerInfo::from_labels(
            "docker",
            c.id.unwrap_or_else(|| id.to_string()),
            config.image.unwrap_or_default(),
            &labels,
            state,
        )
        .ok_or_else(|| RuntimeError::Other(format!("container {id} has no Berth labels")))
    }

    async fn logs(&self, id: &str, opts: LogOptions) -> Result<LogStream, RuntimeError> {
        // Check existence first so a missing container is a clear error, not an empty stream.
        self.inspect(id).await?;
        let s = self.docker.logs(
            id,
            Some(LogsOptions {
                follow: opts.follow,
                stdout: true,
                stderr: true,
                tail: opts
                    .tail
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "all".to_string()),
                ..Default::default()
            }),
        );
        Ok(Box::pin(s.map(|item| {
            item.map(|o| match o {
                LogOutput::StdOut { message }
                | LogOutput::StdErr { message }
                | LogOutput::Console { message }
                | LogOutput::StdIn { message } => message,
            })
            .map_err(RuntimeError::from)
        })))
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let run = async {
            let exec = self
                .docker
                .create_exec(
                    id,
                    CreateExecOptions {
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        cmd: Some(cmd.to_vec()),
                        ..Default::default()
                    },
                )
                .await?;
            let mut output = Vec::new();
            if let StartExecResults::Attached {
                output: mut out, ..
            } = self.docker.start_exec(&exec.id, None).await?
            {
                while let Some(item) = out.next().await {
                    output.extend_from_slice(&item?.into_bytes());
                }
            }
            let info = self.docker.inspect_exec(&exec.id).await?;
            Ok::<_, RuntimeError>(ExecOutput {
                exit_code: info.exit_code.unwrap_or(-1) as i32,
                output,
            })
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| RuntimeError::Timeout {
                op: "exec",
                after: timeout,
            })?
    }
}

/// The digests in Docker's RepoDigests (`HOST/REPO@sha256:..`) whose repository is `repository`.
fn repo_digests_of(repository: &str, repo_digests: Vec<String>) -> Vec<String> {
    repo_digests
        .into_iter()
        .filter_map(|rd| {
            let r = berth_proto::image::ImageRef::parse(&rd).ok()?;
            (r.repository == repository).then_some(r.digest?)
        })
        .collect()
}

#[cfg(test)]
mod trust_tests {
    use super::repo_digests_of;

    #[test]
    fn repo_digests_count_only_for_the_same_repository_whatever_the_registry_host() {
        let d = berth_proto::image::sha256_digest(b"m");
        let e = berth_proto::image::sha256_digest(b"e");
        let got = repo_digests_of(
            "shop",
            vec![
                format!("127.0.0.1:5000/shop@{d}"),
                format!("127.0.0.1:5000/shop/web@{e}"),
                format!("bank@{e}"),
                "<none>@<none>".to_string(),
            ],
        );
        assert_eq!(got, vec![d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_references_are_looked_up_by_repository_and_digest_cluster_registry_first() {
        let d = berth_proto::image::sha256_digest(b"m");
        let reg = Some("127.0.0.1:5000");
        assert_eq!(
            local_names(reg, &format!("nginx:1.14.2@{d}")),
            vec![format!("127.0.0.1:5000/nginx@{d}"), format!("nginx@{d}")]
        );
        assert_eq!(
            local_names(reg, &format!("127.0.0.1:5000/shop/web:1@{d}")),
            vec![format!("127.0.0.1:5000/shop/web@{d}")]
        );
        assert_eq!(
            local_names(None, &format!("nginx@{d}")),
            vec![format!("nginx@{d}")]
        );
        // Tags are looked up as written (the cluster registry's are re-tagged on pull).
        assert_eq!(local_names(reg, "nginx:1.14.2"), vec!["nginx:1.14.2"]);
    }
}
