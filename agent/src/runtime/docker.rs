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
//!
//! With a pod network ([`DockerRuntime::with_pod_network`]) each pod gets a sandbox first: a
//! container of the pause image ([`super::pause`]) attached to the node's Berth bridge network
//! (the Node's `spec.podCIDR`, made by [`DockerRuntime`] when first needed) that holds the pod's
//! address, hostname, published hostPorts and resolv.conf; the pod's containers join its network
//! namespace (`container:<sandbox>`), so they reach each other on localhost and listen on their
//! containerPort at the pod's IP, as in Kubernetes.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
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
    /// Pods on their own addresses (None: containers publish host ports, the older model).
    pod_net: Option<Arc<PodNet>>,
}

/// The pod network side of the runtime.
struct PodNet {
    network: crate::podnet::PodNetwork,
    /// The sandbox image (the built-in one, or --pod-infra-image).
    infra_image: String,
    /// Where the pods' resolv.conf files are written (bind-mounted into their containers).
    state_dir: PathBuf,
    /// The pod CIDR the engine's network was checked or made for.
    ensured: tokio::sync::Mutex<Option<crate::podnet::Ipv4Cidr>>,
    /// pod uid -> its sandbox.
    sandboxes: Mutex<HashMap<String, Sandbox>>,
}

#[derive(Debug, Clone)]
struct Sandbox {
    id: String,
    ip: String,
}

/// The engine's network for `node` (one per node: agents sharing an engine each have their
/// own pod CIDR) and the Linux bridge behind it (at most 15 characters).
pub fn network_names(node: Option<&str>) -> (String, String) {
    match node {
        None | Some("") => ("berth".to_string(), "berth0".to_string()),
        Some(n) => {
            let mut h: u32 = 0x811c_9dc5;
            for b in n.bytes() {
                h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
            }
            (format!("berth-{n}"), format!("berth{h:08x}"))
        }
    }
}

/// Where a pod's resolv.conf is written (and bind-mounted from).
fn resolv_conf_path(net: &PodNet, uid: &str) -> PathBuf {
    net.state_dir.join("pods").join(uid).join("resolv.conf")
}

type Exposed = HashMap<String, HashMap<(), ()>>;
type Bindings = HashMap<String, Option<Vec<DockerPortBinding>>>;

/// The engine's exposed ports and port bindings publishing `ports` on `on` (None: every host
/// address).
fn published<'a>(
    ports: impl Iterator<Item = &'a PortBinding>,
    on: Option<std::net::IpAddr>,
) -> (Exposed, Bindings) {
    let host_ip = on.map_or_else(|| "0.0.0.0".to_string(), |ip| ip.to_string());
    let mut exposed = HashMap::new();
    let mut bindings = HashMap::new();
    for p in ports {
        let key = format!("{}/{}", p.container_port, p.protocol.to_ascii_lowercase());
        exposed.insert(key.clone(), HashMap::new());
        bindings.insert(
            key,
            Some(vec![DockerPortBinding {
                host_ip: Some(host_ip.clone()),
                host_port: Some(p.host_port.to_string()),
            }]),
        );
    }
    (exposed, bindings)
}

/// The label marking the engine networks Berth made.
const LABEL_NETWORK: &str = "berth.pod-cidr";

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
            pod_net: None,
        })
    }

    /// Run pods on the node's pod network (see the module docs) once `network` knows the pod
    /// CIDR; `infra_image` None: the built-in sandbox image. Resolv.conf files go under
    /// `state_dir`.
    pub fn with_pod_network(
        mut self,
        network: crate::podnet::PodNetwork,
        infra_image: Option<String>,
        state_dir: PathBuf,
    ) -> Self {
        self.pod_net = Some(Arc::new(PodNet {
            network,
            infra_image: infra_image.unwrap_or_else(|| super::pause::BUILTIN_IMAGE.to_string()),
            state_dir,
            ensured: tokio::sync::Mutex::new(None),
            sandboxes: Mutex::new(HashMap::new()),
        }));
        self
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

    /// Pull `name:tag` with each of `creds` in turn until one works (none: anonymously);
    /// Err((kind, message)) of the last attempt, naming each secret tried (never its values).
    async fn engine_pull(
        &self,
        name: &str,
        tag: Option<String>,
        creds: &[&crate::pullsecrets::RegistryAuth],
    ) -> Result<(), Result<(PullFailure, String), RuntimeError>> {
        if creds.is_empty() {
            return self.engine_pull_once(name, tag, None).await;
        }
        let server = berth_proto::image::ImageRef::parse(name)
            .ok()
            .and_then(|r| r.domain)
            .unwrap_or_else(|| "docker.io".to_string());
        let mut errors = Vec::new();
        let mut kind = PullFailure::Other;
        for a in creds {
            let c = bollard::auth::DockerCredentials {
                username: Some(a.username.clone()).filter(|s| !s.is_empty()),
                password: Some(a.password.clone()).filter(|s| !s.is_empty()),
                email: Some(a.email.clone()).filter(|s| !s.is_empty()),
                identitytoken: Some(a.identity_token.clone()).filter(|s| !s.is_empty()),
                serveraddress: Some(server.clone()),
                ..Default::default()
            };
            match self.engine_pull_once(name, tag.clone(), Some(c)).await {
                Ok(()) => return Ok(()),
                Err(Ok((k, m))) => {
                    kind = k;
                    errors.push(format!(
                        "{m} (with the credentials for {:?} of secret {:?})",
                        a.key, a.secret
                    ));
                }
                Err(Err(e)) => return Err(Err(e)),
            }
        }
        Err(Ok((kind, errors.join("; "))))
    }

    /// One pull of `name:tag` (the engine's `POST /images/create`); Err((kind, message)).
    async fn engine_pull_once(
        &self,
        name: &str,
        tag: Option<String>,
        creds: Option<bollard::auth::DockerCredentials>,
    ) -> Result<(), Result<(PullFailure, String), RuntimeError>> {
        let opts = CreateImageOptions {
            from_image: Some(name.to_string()),
            tag,
            ..Default::default()
        };
        let mut progress = self.docker.create_image(Some(opts), None, creds);
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

    /// The engine network for the node's pod CIDR: checked once per CIDR, made if missing.
    /// A network of that name that Berth did not make, or made for another CIDR while pods
    /// still use it, is an error that says what to do; nothing is changed then.
    async fn ensure_network(
        &self,
        net: &PodNet,
    ) -> Result<(String, crate::podnet::NetConfig), RuntimeError> {
        let Some(cfg) = net.network.get() else {
            return Err(RuntimeError::Other(
                "this node has no pod CIDR yet (spec.podCIDR, given by the API server when the \
                 node registers); the pod starts once it has one"
                    .into(),
            ));
        };
        let (name, bridge) = network_names(self.node.as_deref());
        let mut ensured = net.ensured.lock().await;
        if *ensured == Some(cfg.pod_cidr) {
            return Ok((name, (*cfg).clone()));
        }
        let cidr = cfg.pod_cidr.to_string();
        match self
            .docker
            .inspect_network(
                &name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(existing) => {
                let labels = existing.labels.clone().unwrap_or_default();
                if labels.get(LABEL_MANAGED).map(String::as_str) != Some("true") {
                    return Err(RuntimeError::Other(format!(
                        "the Docker network {name:?} exists but was not made by Berth: remove it \
                         (docker network rm {name}) so the agent can make the pod network"
                    )));
                }
                let subnets: Vec<String> = existing
                    .ipam
                    .and_then(|i| i.config)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| c.subnet)
                    .collect();
                if subnets != [cidr.clone()] {
                    let in_use = existing.containers.map(|c| c.len()).unwrap_or(0);
                    if in_use > 0 {
                        return Err(RuntimeError::Other(format!(
                            "the Docker network {name:?} is for pod CIDR {} but this node now has \
                             {cidr}, and {in_use} container(s) still use it: drain the node's \
                             pods (or remove them) and the agent remakes it",
                            subnets.join(",")
                        )));
                    }
                    tracing::info!(network = %name, old = %subnets.join(","), new = %cidr, "pod CIDR changed; remaking the pod network");
                    self.docker.remove_network(&name).await?;
                } else {
                    *ensured = Some(cfg.pod_cidr);
                    return Ok((name, (*cfg).clone()));
                }
            }
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let mut labels = HashMap::new();
        labels.insert(LABEL_MANAGED.to_string(), "true".to_string());
        labels.insert(LABEL_NETWORK.to_string(), cidr.clone());
        if let Some(n) = &self.node {
            labels.insert(LABEL_NODE.to_string(), n.clone());
        }
        let options: HashMap<String, String> = [
            ("com.docker.network.bridge.name", bridge.as_str()),
            // Berth masquerades only what leaves the cluster CIDR, so pod-to-pod traffic
            // across nodes keeps the pod's source address.
            ("com.docker.network.bridge.enable_ip_masquerade", "false"),
            ("com.docker.network.bridge.enable_icc", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let req = bollard::models::NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            ipam: Some(bollard::models::Ipam {
                driver: Some("default".into()),
                config: Some(vec![bollard::models::IpamConfig {
                    subnet: Some(cidr.clone()),
                    gateway: Some(cfg.pod_cidr.gateway().to_string()),
                    ..Default::default()
                }]),
                options: None,
            }),
            options: Some(options),
            labels: Some(labels),
            ..Default::default()
        };
        if let Err(e) = self.docker.create_network(req.clone()).await {
            // A network Berth left behind for this CIDR (another node name on this engine, a
            // cluster that is gone): remove it if nothing uses it, and try once more.
            if !self.remove_stale_networks(&cidr, &name).await? {
                return Err(RuntimeError::Other(format!(
                    "cannot make the pod network {name:?} (bridge {bridge}, {cidr}): {e}"
                )));
            }
            self.docker.create_network(req).await.map_err(|e| {
                RuntimeError::Other(format!(
                    "cannot make the pod network {name:?} (bridge {bridge}, {cidr}): {e}"
                ))
            })?;
        }
        tracing::info!(network = %name, %bridge, pod_cidr = %cidr, "pod network ready");
        *ensured = Some(cfg.pod_cidr);
        Ok((name, (*cfg).clone()))
    }

    /// Remove Berth's networks (other than `keep`) for `cidr` that no container uses; true if
    /// any was removed. One in use is an error naming it.
    async fn remove_stale_networks(&self, cidr: &str, keep: &str) -> Result<bool, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_NETWORK}={cidr}"),
            ],
        )]);
        let list = self
            .docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters),
            }))
            .await?;
        let mut removed = false;
        for n in list {
            let Some(other) = n.name else { continue };
            if other == keep {
                continue;
            }
            let full = self
                .docker
                .inspect_network(
                    &other,
                    None::<bollard::query_parameters::InspectNetworkOptions>,
                )
                .await?;
            let users = full.containers.map(|c| c.len()).unwrap_or(0);
            if users > 0 {
                return Err(RuntimeError::Other(format!(
                    "pod CIDR {cidr} is already the Docker network {other:?} of another Berth node on \
                     this engine ({users} container(s)): agents sharing one engine need distinct pod \
                     CIDRs (distinct clusters: distinct --cluster-cidr)"
                )));
            }
            tracing::info!(network = %other, %cidr, "removing a pod network Berth left behind");
            self.docker.remove_network(&other).await?;
            removed = true;
        }
        Ok(removed)
    }

    /// The sandbox image in the engine: imported from the built-in root filesystem when it is
    /// the built-in one and missing.
    async fn ensure_infra_image(&self, net: &PodNet) -> Result<(), RuntimeError> {
        if self.local_image(&net.infra_image).await?.is_some() {
            return Ok(());
        }
        if net.infra_image != super::pause::BUILTIN_IMAGE {
            return self.pull(&net.infra_image).await.map(|_| ());
        }
        let Some(tar) = super::pause::rootfs_tar() else {
            return Err(RuntimeError::Other(format!(
                "there is no built-in pod sandbox image for {}: pass --pod-infra-image with a \
                 pause image for this architecture",
                std::env::consts::ARCH
            )));
        };
        let (repo, tag) = net
            .infra_image
            .rsplit_once(':')
            .unwrap_or((net.infra_image.as_str(), "latest"));
        let opts = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
            ..Default::default()
        };
        let mut progress =
            self.docker
                .create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
        while let Some(item) = progress.next().await {
            item.map_err(|e| RuntimeError::Other(format!("importing the pod sandbox image: {e}")))?;
        }
        Ok(())
    }

    fn cached_sandbox(net: &PodNet, uid: &str) -> Option<Sandbox> {
        net.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    /// This node's Berth containers (running or not), with one more label filter if given.
    async fn list_labelled(
        &self,
        extra: Option<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let mut labels = vec![format!("{LABEL_MANAGED}=true")];
        if let Some(n) = &self.node {
            labels.push(format!("{LABEL_NODE}={n}"));
        }
        labels.extend(extra);
        let filters = HashMap::from([("label".to_string(), labels)]);
        Ok(self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?)
    }

    /// The sandbox containers of this node, by pod uid (running or not).
    async fn list_sandboxes(&self) -> Result<Vec<(String, String, bool)>, RuntimeError> {
        let list = self
            .list_labelled(Some(format!("{LABEL_SANDBOX}=true")))
            .await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let uid = c.labels.as_ref()?.get(LABEL_POD_UID)?.clone();
                let running = c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING);
                Some((uid, c.id?, running))
            })
            .collect())
    }

    /// The sandbox's address on `network` (empty until it runs).
    async fn sandbox_ip(
        &self,
        id: &str,
        network: &str,
    ) -> Result<Option<(String, bool)>, RuntimeError> {
        match self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => {
                let running = c.state.and_then(|s| s.running).unwrap_or(false);
                let ip = c
                    .network_settings
                    .and_then(|n| n.networks)
                    .and_then(|mut n| n.remove(network))
                    .and_then(|e| e.ip_address)
                    .unwrap_or_default();
                Ok(Some((ip, running)))
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The running sandbox of the pod `spec` belongs to, made (or started again) if needed.
    async fn ensure_sandbox(
        &self,
        net: &PodNet,
        spec: &ContainerSpec,
    ) -> Result<String, RuntimeError> {
        let (network, cfg) = self.ensure_network(net).await?;
        let uid = &spec.pod_uid;
        let known = match Self::cached_sandbox(net, uid) {
            Some(s) => Some(s.id),
            None => self
                .list_sandboxes()
                .await?
                .into_iter()
                .find(|(u, _, _)| u == uid)
                .map(|(_, id, _)| id),
        };
        if let Some(id) = known {
            match self.sandbox_ip(&id, &network).await? {
                Some((ip, true)) if !ip.is_empty() => {
                    self.remember_sandbox(net, uid, &id, ip);
                    return Ok(id);
                }
                Some(_) => {
                    // Stopped (the engine restarted, or it was killed): the pod's address
                    // goes with it, so start over with a new sandbox.
                    tracing::info!(pod = %spec.pod_name, sandbox = %id, "pod sandbox not running; making a new one");
                    let _ = self.remove(&id).await;
                }
                None => {}
            }
            net.sandboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(uid);
        }
        self.ensure_infra_image(net).await?;
        let resolv = match &spec.dns {
            Some(text) => Some(self.write_resolv_conf(net, uid, text)?),
            None => None,
        };
        let (exposed, bindings) = published(
            spec.pod_host_ports.iter().filter(|p| p.host_port != 0),
            spec.host_port_ip,
        );
        let mut labels: HashMap<String, String> = HashMap::new();
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_SANDBOX.into(), "true".into());
        labels.insert(LABEL_POD_UID.into(), uid.clone());
        labels.insert(LABEL_POD_NAMESPACE.into(), spec.pod_namespace.clone());
        labels.insert(LABEL_POD_NAME.into(), spec.pod_name.clone());
        labels.insert(LABEL_NETWORK.into(), cfg.pod_cidr.to_string());
        if let Some(n) = &self.node {
            labels.insert(LABEL_NODE.into(), n.clone());
        }
        let hostname: String = spec.pod_name.chars().take(63).collect();
        let body = ContainerCreateBody {
            image: Some(net.infra_image.clone()),
            cmd: (net.infra_image == super::pause::BUILTIN_IMAGE)
                .then(|| vec!["/pause".to_string()]),
            hostname: Some(hostname),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            host_config: Some(HostConfig {
                network_mode: Some(network.clone()),
                port_bindings: Some(bindings),
                binds: resolv.map(|p| vec![format!("{}:/etc/resolv.conf:ro", p.display())]),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let uid8: String = uid.chars().take(8).collect();
        let name = format!(
            "berth_{}_{}_POD_{uid8}",
            spec.pod_namespace
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
            spec.pod_name
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
        );
        let opts = Some(CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        });
        let id = match self
            .docker
            .create_container(opts.clone(), body.clone())
            .await
        {
            Ok(r) => r.id,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                self.remove(&name).await?;
                self.docker.create_container(opts, body).await?.id
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = self
            .docker
            .start_container(
                &id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            let _ = self.remove(&id).await;
            return Err(RuntimeError::Other(format!(
                "starting the pod sandbox on {network}: {e}"
            )));
        }
        let ip = self
            .sandbox_ip(&id, &network)
            .await?
            .map(|(ip, _)| ip)
            .unwrap_or_default();
        tracing::debug!(pod = %spec.pod_name, sandbox = %id, %ip, "pod sandbox started");
        self.remember_sandbox(net, uid, &id, ip);
        Ok(id)
    }

    fn remember_sandbox(&self, net: &PodNet, uid: &str, id: &str, ip: String) {
        net.sandboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                uid.to_string(),
                Sandbox {
                    id: id.to_string(),
                    ip,
                },
            );
    }

    /// Write the pod's resolv.conf (0644, read by the containers' users) and return its path.
    fn write_resolv_conf(
        &self,
        net: &PodNet,
        uid: &str,
        text: &str,
    ) -> Result<PathBuf, RuntimeError> {
        let path = resolv_conf_path(net, uid);
        let dir = net.state_dir.join("pods").join(uid);
        let state = |source| RuntimeError::State {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(state)?;
        let tmp = dir.join(".resolv.conf.tmp");
        std::fs::write(&tmp, text).map_err(state)?;
        std::fs::rename(&tmp, &path).map_err(state)?;
        Ok(path)
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

    fn handlers(&self) -> Vec<Handler> {
        vec![Handler {
            name: self.name(),
            uses_images: true,
            pod_network: self.pod_net.is_some(),
        }]
    }

    async fn pod_ip(&self, pod_uid: &str) -> Option<String> {
        let net = self.pod_net.as_ref()?;
        if let Some(s) = Self::cached_sandbox(net, pod_uid) {
            return Some(s.ip).filter(|ip| !ip.is_empty());
        }
        // After an agent restart: find the running sandbox and adopt it.
        let (network, _) = network_names(self.node.as_deref());
        let (_, id, _) = self
            .list_sandboxes()
            .await
            .ok()?
            .into_iter()
            .find(|(u, _, running)| u == pod_uid && *running)?;
        let (ip, running) = self.sandbox_ip(&id, &network).await.ok()??;
        if !running || ip.is_empty() {
            return None;
        }
        self.remember_sandbox(net, pod_uid, &id, ip.clone());
        Some(ip)
    }

    async fn prepare_pod_network(&self) -> Result<bool, RuntimeError> {
        match &self.pod_net {
            Some(net) if net.network.get().is_some() => {
                self.ensure_network(net).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn ensure_pod_sandbox(
        &self,
        spec: &ContainerSpec,
    ) -> Result<Option<String>, RuntimeError> {
        let Some(net) = &self.pod_net else {
            return Ok(None);
        };
        self.ensure_sandbox(net, spec).await?;
        Ok(Self::cached_sandbox(net, &spec.pod_uid)
            .map(|s| s.ip)
            .filter(|ip| !ip.is_empty()))
    }

    async fn lost_sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        let Some(net) = &self.pod_net else {
            return Ok(Vec::new());
        };
        let all = self.list_sandboxes().await?;
        let running_ids: BTreeSet<&str> = all
            .iter()
            .filter(|(_, _, running)| *running)
            .map(|(_, id, _)| id.as_str())
            .collect();
        let running_pods: BTreeSet<&str> = all
            .iter()
            .filter(|(_, _, running)| *running)
            .map(|(uid, _, _)| uid.as_str())
            .collect();
        let mut lost = BTreeSet::new();
        {
            // Seen running before (cached), now stopped or gone.
            let mut cache = net.sandboxes.lock().unwrap_or_else(|e| e.into_inner());
            cache.retain(|uid, s| {
                let alive = running_ids.contains(s.id.as_str());
                if !alive {
                    lost.insert(uid.clone());
                }
                alive
            });
        }
        // Stopped while no agent was watching (found after a restart). A stopped sandbox is
        // of no further use (its address is gone), so it is removed: reported once.
        for (uid, id, running) in &all {
            if !running && !running_pods.contains(uid.as_str()) {
                lost.insert(uid.clone());
            }
            if !running {
                if let Err(error) = self.remove(id).await {
                    tracing::debug!(sandbox = %id, %error, "removing a stopped pod sandbox");
                }
            }
        }
        Ok(lost.into_iter().collect())
    }

    async fn remove_sandboxes(&self, keep: &BTreeSet<String>) -> Result<(), RuntimeError> {
        let Some(net) = &self.pod_net else {
            return Ok(());
        };
        for (uid, id, _) in self.list_sandboxes().await? {
            if keep.contains(&uid) {
                continue;
            }
            self.remove(&id).await?;
            net.sandboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&uid);
            let _ = std::fs::remove_dir_all(net.state_dir.join("pods").join(&uid));
            tracing::debug!(pod_uid = %uid, sandbox = %id, "pod sandbox removed");
        }
        Ok(())
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
        self.pull_with(image, &crate::pullsecrets::Keyring::default())
            .await
    }

    async fn pull_with(
        &self,
        image: &str,
        keyring: &crate::pullsecrets::Keyring,
    ) -> Result<Pulled, RuntimeError> {
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
            let creds = keyring.lookup(Some(reg), &r.repository);
            match self.engine_pull(&from, tag.clone(), &creds).await {
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
        let creds = keyring.lookup(r.domain.as_deref(), &r.repository);
        match self.engine_pull(&name.to_string(), tag, &creds).await {
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
        let sandbox = match &self.pod_net {
            Some(net) => Some((self.ensure_sandbox(net, spec).await?, net.clone())),
            None => None,
        };
        let (exposed, bindings) = published(spec.ports.iter().filter(|_| sandbox.is_none()), None);
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
                network_mode: sandbox.as_ref().map(|(id, _)| format!("container:{id}")),
                binds: {
                    let mut binds: Vec<String> = match (&sandbox, &spec.dns) {
                        (Some((_, net)), Some(_)) => vec![format!(
                            "{}:/etc/resolv.conf:ro",
                            resolv_conf_path(net, &spec.pod_uid).display()
                        )],
                        _ => Vec::new(),
                    };
                    binds.extend(spec.mounts.iter().map(|m| {
                        format!(
                            "{}:{}{}",
                            m.host_path.display(),
                            m.container_path,
                            if m.read_only { ":ro" } else { "" }
                        )
                    }));
                    (!binds.is_empty()).then_some(binds)
                },
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
        let summaries = self.list_labelled(None).await?;
        let mut out = Vec::new();
        for s in summaries {
            if s.labels
                .as_ref()
                .is_some_and(|l| l.contains_key(LABEL_SANDBOX))
            {
                continue;
            }
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

    async fn exec_stream(
        &self,
        id: &str,
        spec: &crate::exec::ExecSpec,
    ) -> Result<crate::exec::ExecSession, RuntimeError> {
        self.exec_attached(id, spec).await
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

/// A Docker exec's resize and exit code.
struct DockerExec {
    docker: Docker,
    exec_id: String,
}

#[async_trait::async_trait]
impl crate::exec::ExecControl for DockerExec {
    async fn resize(&self, width: u16, height: u16) -> Result<(), RuntimeError> {
        self.docker
            .resize_exec(&self.exec_id, ResizeExecOptions { height, width })
            .await?;
        Ok(())
    }

    async fn wait(&self) -> Result<i32, RuntimeError> {
        // The output ends as the process exits; the engine records the code a moment later.
        for _ in 0..50 {
            let info = self.docker.inspect_exec(&self.exec_id).await?;
            if info.running != Some(true) {
                if let Some(code) = info.exit_code {
                    return Ok(code as i32);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(RuntimeError::Other(format!(
            "exec {} has not reported an exit code",
            self.exec_id
        )))
    }
}

impl DockerRuntime {
    /// `docker exec [-i] [-t] ID CMD...` with the streams attached.
    pub(crate) async fn exec_attached(
        &self,
        id: &str,
        spec: &crate::exec::ExecSpec,
    ) -> Result<crate::exec::ExecSession, RuntimeError> {
        use crate::exec::{ExecFrame, ExecSession};
        let exec = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    attach_stdin: Some(spec.stdin),
                    attach_stdout: Some(spec.stdout),
                    attach_stderr: Some(spec.stderr),
                    tty: Some(spec.tty),
                    cmd: Some(spec.command.clone()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                } => RuntimeError::NotFound { id: id.to_string() },
                e => e.into(),
            })?;
        let started = self
            .docker
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: spec.tty,
                    output_capacity: None,
                }),
            )
            .await?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(RuntimeError::Other("docker exec did not attach".into()));
        };
        let output = output.filter_map(|item| {
            futures::future::ready(match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    Some(ExecFrame::Stdout(message))
                }
                Ok(LogOutput::StdErr { message }) => Some(ExecFrame::Stderr(message)),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "docker exec output");
                    None
                }
            })
        });
        Ok(ExecSession {
            stdin: spec.stdin.then_some(input),
            output: Box::pin(output),
            control: Box::new(DockerExec {
                docker: self.docker.clone(),
                exec_id: exec.id,
            }),
        })
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
