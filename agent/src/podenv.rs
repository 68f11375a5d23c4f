//! A container's environment from its pod: `env` (values, and `valueFrom` ConfigMap / Secret
//! keys, pod fields, container resources) over `envFrom` (every key of a ConfigMap or Secret),
//! resolved when the container starts, as the kubelet does.
//!
//! What is missing and not `optional` keeps the container from starting with
//! `CreateContainerConfigError` and kubelet's message (`configmap "x" not found`, `couldn't
//! find key k in Secret ns/x`); the pod sync retries, so the container starts once it appears.
//! Values are never logged or put in a message.

use std::collections::BTreeMap;

use berth_proto::types::{ConfigMap, Container, EnvVarSource, Pod, Secret};

use crate::api::{ApiError, NodeApi};

/// The ConfigMaps and Secrets a container's environment reads, fetched once per start.
#[derive(Default)]
pub struct Sources {
    config_maps: BTreeMap<String, Option<ConfigMap>>,
    secrets: BTreeMap<String, Option<Secret>>,
}

/// The addresses `status.podIP` / `status.hostIP` resolve to.
pub struct Addresses<'a> {
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
}

impl Sources {
    /// Fetch what `c` references (None: it does not exist).
    pub async fn fetch(
        api: &dyn NodeApi,
        namespace: &str,
        c: &Container,
    ) -> Result<Sources, ApiError> {
        let mut s = Sources::default();
        let mut cms = std::collections::BTreeSet::new();
        let mut secrets = std::collections::BTreeSet::new();
        c.env_config_refs(&mut cms, &mut secrets);
        for name in cms {
            let v = api.get_config_map(namespace, &name).await?;
            s.config_maps.insert(name, v);
        }
        for name in secrets {
            let v = api.get_secret(namespace, &name).await?;
            s.secrets.insert(name, v);
        }
        Ok(s)
    }

    #[cfg(test)]
    pub fn with(config_maps: Vec<ConfigMap>, secrets: Vec<Secret>) -> Sources {
        Sources {
            config_maps: config_maps
                .into_iter()
                .map(|c| (c.metadata.name.clone(), Some(c)))
                .collect(),
            secrets: secrets
                .into_iter()
                .map(|s| (s.metadata.name.clone(), Some(s)))
                .collect(),
        }
    }
}

/// Why a container cannot start yet (the message of `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Variables in order, and the envFrom keys skipped as invalid names.
pub type Resolved = (Vec<(String, String)>, Vec<String>);

/// What the container's own environment is: `envFrom` first, then `env` (which wins on a
/// clash), in the manifest's order. Also the envFrom keys that were skipped because they
/// cannot be variable names (for kubelet's `InvalidEnvironmentVariableNames` event).
pub fn resolve(
    pod: &Pod,
    c: &Container,
    sources: &Sources,
    addrs: &Addresses<'_>,
) -> Result<Resolved, ConfigError> {
    let ns = &pod.metadata.namespace;
    let mut out: Vec<(String, String)> = Vec::new();
    let mut skipped = Vec::new();
    for f in &c.env_from {
        let entries: Vec<(String, Vec<u8>)> = if let Some(r) = &f.config_map_ref {
            match sources.config_maps.get(&r.name).and_then(Option::as_ref) {
                Some(cm) => cm
                    .data
                    .keys()
                    .chain(cm.binary_data.keys())
                    .filter_map(|k| Some((k.clone(), cm.value(k)?)))
                    .collect(),
                None if r.optional == Some(true) => Vec::new(),
                None => return Err(ConfigError(format!("configmap {:?} not found", r.name))),
            }
        } else if let Some(r) = &f.secret_ref {
            match sources.secrets.get(&r.name).and_then(Option::as_ref) {
                Some(s) => s
                    .data
                    .keys()
                    .filter_map(|k| Some((k.clone(), s.value(k)?)))
                    .collect(),
                None if r.optional == Some(true) => Vec::new(),
                None => return Err(ConfigError(format!("secret {:?} not found", r.name))),
            }
        } else {
            Vec::new()
        };
        for (k, v) in entries {
            let name = format!("{}{k}", f.prefix);
            if !valid_env_name(&name) {
                skipped.push(name);
                continue;
            }
            out.push((name, String::from_utf8_lossy(&v).into_owned()));
        }
    }
    for e in &c.env {
        let value = match &e.value_from {
            None => Some(e.value.clone()),
            Some(src) => from_source(pod, c, ns, src, sources, addrs)?,
        };
        if let Some(v) = value {
            out.push((e.name.clone(), v));
        }
    }
    Ok((out, skipped))
}

/// Kubernetes (1.30+) accepts any printable ASCII but '=' in a variable name.
fn valid_env_name(n: &str) -> bool {
    !n.is_empty() && n.chars().all(|c| c.is_ascii_graphic() && c != '=')
}

/// One `valueFrom`; None: an optional reference that is missing (the variable is not set).
fn from_source(
    pod: &Pod,
    c: &Container,
    ns: &str,
    src: &EnvVarSource,
    sources: &Sources,
    addrs: &Addresses<'_>,
) -> Result<Option<String>, ConfigError> {
    if let Some(r) = &src.config_map_key_ref {
        let optional = r.optional == Some(true);
        return match sources.config_maps.get(&r.name).and_then(Option::as_ref) {
            None if optional => Ok(None),
            None => Err(ConfigError(format!("configmap {:?} not found", r.name))),
            Some(cm) => match cm.value(&r.key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
                None if optional => Ok(None),
                None => Err(ConfigError(format!(
                    "couldn't find key {} in ConfigMap {ns}/{}",
                    r.key, r.name
                ))),
            },
        };
    }
    if let Some(r) = &src.secret_key_ref {
        let optional = r.optional == Some(true);
        return match sources.secrets.get(&r.name).and_then(Option::as_ref) {
            None if optional => Ok(None),
            None => Err(ConfigError(format!("secret {:?} not found", r.name))),
            Some(s) => match s.value(&r.key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
                None if optional => Ok(None),
                None => Err(ConfigError(format!(
                    "couldn't find key {} in Secret {ns}/{}",
                    r.key, r.name
                ))),
            },
        };
    }
    if let Some(f) = &src.field_ref {
        return field(pod, &f.field_path, addrs).map(Some);
    }
    if let Some(r) = &src.resource_field_ref {
        return resource(pod, c, r).map(Some);
    }
    Ok(Some(String::new()))
}

/// The downward API's fields for environment variables.
fn field(pod: &Pod, path: &str, addrs: &Addresses<'_>) -> Result<String, ConfigError> {
    let m = &pod.metadata;
    let quoted = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "spec.nodeName" => pod.spec.node_name.clone(),
        "spec.serviceAccountName" => "default".to_string(),
        "status.hostIP" | "status.hostIPs" => addrs.host_ip.to_string(),
        "status.podIP" | "status.podIPs" => addrs.pod_ip.to_string(),
        _ => {
            if let Some(k) = quoted("metadata.labels['") {
                m.labels.get(&k).cloned().unwrap_or_default()
            } else if let Some(k) = quoted("metadata.annotations['") {
                m.annotations.get(&k).cloned().unwrap_or_default()
            } else {
                return Err(ConfigError(format!(
                    "unsupported fieldRef {path:?} in the environment"
                )));
            }
        }
    })
}

/// `resourceFieldRef`: the container's (or a named container's) limit or request, in units of
/// the divisor rounded up; an unset limit is the node's capacity, as the kubelet gives it.
fn resource(
    pod: &Pod,
    c: &Container,
    r: &berth_proto::types::ResourceFieldSelector,
) -> Result<String, ConfigError> {
    let target = if r.container_name.is_empty() {
        c
    } else {
        pod.spec
            .containers
            .iter()
            .chain(pod.spec.init_containers.iter())
            .find(|x| x.name == r.container_name)
            .ok_or_else(|| {
                ConfigError(format!(
                    "resourceFieldRef names container {:?}, which the pod does not have",
                    r.container_name
                ))
            })?
    };
    let (which, res) = r
        .resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported resource {:?}", r.resource)))?;
    let res_map = target.resources.as_ref().map(|rr| match which {
        "limits" => &rr.limits,
        _ => &rr.requests,
    });
    let q = res_map
        .and_then(|m| m.get(res))
        .and_then(|q| q.parsed().ok());
    let divisor = match &r.divisor {
        Some(d) => berth_proto::types::Quantity(d.clone())
            .parsed()
            .map_err(|e| ConfigError(format!("resourceFieldRef divisor {d:?}: {e}")))?,
        None => berth_proto::types::Quantity("1".into())
            .parsed()
            .map_err(|e| ConfigError(e.to_string()))?,
    };
    // In nano-units so "1m" cpu divisors and byte divisors both divide exactly.
    let nanos = |millis: u64| u128::from(millis) * 1_000_000;
    let value_nanos: u128 = match (q, which, res) {
        (Some(q), _, "cpu") => nanos(q.millis()),
        (Some(q), _, _) => u128::from(q.value()) * 1_000_000_000,
        (None, "requests", _) => 0,
        (None, _, "cpu") => {
            nanos(std::thread::available_parallelism().map_or(1, |n| n.get()) as u64 * 1000)
        }
        (None, _, "memory") => u128::from(node_memory_bytes()) * 1_000_000_000,
        (None, _, _) => 0,
    };
    let div_nanos: u128 = if res == "cpu" {
        nanos(divisor.millis())
    } else {
        u128::from(divisor.value()) * 1_000_000_000
    }
    .max(1);
    Ok(value_nanos.div_ceil(div_nanos).to_string())
}

/// MemTotal of this node (0 when /proc/meminfo cannot be read).
fn node_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use berth_proto::types::{
        EnvFromSource, EnvVar, KeySelector, LocalObjectRef, ObjectFieldSelector, ObjectMeta,
        PodSpec, ResourceFieldSelector, ResourceRequirements,
    };

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: name.into(),
            namespace: "shop".into(),
            ..Default::default()
        }
    }

    fn pod(c: &Container) -> Pod {
        let mut m = meta("web-1");
        m.uid = "u-1".into();
        m.labels.insert("app".into(), "web".into());
        Pod {
            metadata: m,
            spec: PodSpec {
                node_name: "n1".into(),
                containers: vec![c.clone()],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn key_ref(name: &str, key: &str, optional: bool) -> Option<KeySelector> {
        Some(KeySelector {
            name: name.into(),
            key: key.into(),
            optional: optional.then_some(true),
        })
    }

    fn var(name: &str, src: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: String::new(),
            value_from: Some(src),
        }
    }

    fn fixtures() -> Sources {
        let mut cm = ConfigMap {
            metadata: meta("cfg"),
            ..Default::default()
        };
        cm.data.insert("mode".into(), "fast".into());
        cm.data.insert("bad key".into(), "x".into());
        let mut s = Secret {
            metadata: meta("mysql-pass"),
            ..Default::default()
        };
        // base64 of "s3cr3t", as stored.
        s.data.insert("password".into(), "czNjcjN0".into());
        Sources::with(vec![cm], vec![s])
    }

    const ADDRS: Addresses<'static> = Addresses {
        pod_ip: "10.42.0.7",
        host_ip: "192.0.2.1",
    };

    #[test]
    fn env_takes_config_map_and_secret_keys_pod_fields_and_wins_over_env_from() {
        let c = Container {
            name: "app".into(),
            env_from: vec![EnvFromSource {
                prefix: "CFG_".into(),
                config_map_ref: Some(LocalObjectRef {
                    name: "cfg".into(),
                    optional: None,
                }),
                secret_ref: None,
            }],
            env: vec![
                var(
                    "WORDPRESS_DB_PASSWORD",
                    EnvVarSource {
                        secret_key_ref: key_ref("mysql-pass", "password", false),
                        ..Default::default()
                    },
                ),
                var(
                    "CFG_mode",
                    EnvVarSource {
                        config_map_key_ref: key_ref("cfg", "mode", false),
                        ..Default::default()
                    },
                ),
                var(
                    "MY_POD_IP",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            api_version: String::new(),
                            field_path: "status.podIP".into(),
                        }),
                        ..Default::default()
                    },
                ),
                var(
                    "APP",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            api_version: String::new(),
                            field_path: "metadata.labels['app']".into(),
                        }),
                        ..Default::default()
                    },
                ),
                var(
                    "MAYBE",
                    EnvVarSource {
                        secret_key_ref: key_ref("absent", "k", true),
                        ..Default::default()
                    },
                ),
            ],
            ..Default::default()
        };
        let (env, skipped) = resolve(&pod(&c), &c, &fixtures(), &ADDRS).unwrap();
        assert_eq!(skipped, vec!["CFG_bad key".to_string()]);
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("WORDPRESS_DB_PASSWORD"), Some("s3cr3t"));
        assert_eq!(get("CFG_mode"), Some("fast"));
        assert_eq!(get("MY_POD_IP"), Some("10.42.0.7"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(
            get("MAYBE"),
            None,
            "an optional missing Secret sets nothing"
        );
        // env comes after envFrom, so the runtime's last-wins order gives env precedence.
        let first = env.iter().position(|(n, _)| n == "CFG_mode").unwrap();
        let last = env.iter().rposition(|(n, _)| n == "CFG_mode").unwrap();
        assert!(first < last);
    }

    #[test]
    fn a_missing_object_or_key_gives_kubelets_message_without_any_value() {
        for (src, want) in [
            (
                EnvVarSource {
                    config_map_key_ref: key_ref("nope", "k", false),
                    ..Default::default()
                },
                "configmap \"nope\" not found",
            ),
            (
                EnvVarSource {
                    secret_key_ref: key_ref("mysql-pass", "user", false),
                    ..Default::default()
                },
                "couldn't find key user in Secret shop/mysql-pass",
            ),
            (
                EnvVarSource {
                    secret_key_ref: key_ref("gone", "password", false),
                    ..Default::default()
                },
                "secret \"gone\" not found",
            ),
        ] {
            let c = Container {
                name: "app".into(),
                env: vec![var("X", src)],
                ..Default::default()
            };
            let err = resolve(&pod(&c), &c, &fixtures(), &ADDRS).unwrap_err();
            assert_eq!(err.0, want);
            assert!(!err.0.contains("s3cr3t"));
        }
    }

    #[test]
    fn resource_field_refs_divide_and_round_up() {
        let mut limits = BTreeMap::new();
        limits.insert(
            "cpu".to_string(),
            berth_proto::types::Quantity("250m".into()),
        );
        limits.insert(
            "memory".to_string(),
            berth_proto::types::Quantity("64Mi".into()),
        );
        let c = Container {
            name: "app".into(),
            resources: Some(ResourceRequirements {
                limits,
                requests: BTreeMap::new(),
            }),
            env: vec![
                var(
                    "CPU",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            container_name: String::new(),
                            resource: "limits.cpu".into(),
                            divisor: None,
                        }),
                        ..Default::default()
                    },
                ),
                var(
                    "CPU_M",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            container_name: String::new(),
                            resource: "limits.cpu".into(),
                            divisor: Some("1m".into()),
                        }),
                        ..Default::default()
                    },
                ),
                var(
                    "MEM_MI",
                    EnvVarSource {
                        resource_field_ref: Some(ResourceFieldSelector {
                            container_name: String::new(),
                            resource: "limits.memory".into(),
                            divisor: Some("1Mi".into()),
                        }),
                        ..Default::default()
                    },
                ),
            ],
            ..Default::default()
        };
        let (env, _) = resolve(&pod(&c), &c, &fixtures(), &ADDRS).unwrap();
        let m: BTreeMap<_, _> = env.into_iter().collect();
        assert_eq!(m["CPU"], "1", "250m in cores, rounded up");
        assert_eq!(m["CPU_M"], "250");
        assert_eq!(m["MEM_MI"], "64");
    }
}
