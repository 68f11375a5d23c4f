//! The hostPath policy: which node paths a pod may mount as `hostPath` volumes, checked at
//! admission (after authorization, before the write is proposed, so a refused object is
//! never stored) for Pods and the pod templates of Deployments and ReplicaSets.
//!
//! Modelled on PodSecurityPolicy's `allowedHostPaths` and Pod Security's "baseline" level
//! (which forbids hostPath outright):
//!
//! - `--forbidden-host-paths PREFIX,...` (default [`DEFAULT_FORBIDDEN`] plus the server's data
//!   dir): a hostPath equal to, under, **or above** a forbidden prefix is refused (`/` or
//!   `/var` would expose `/var/lib/docker`).
//! - `--allowed-host-paths PREFIX,...` (default: empty, any path not forbidden): when given,
//!   a hostPath must also be equal to or under one of them; `none` forbids hostPath volumes
//!   entirely, as the baseline level does.
//!
//! Paths are compared by path segments after removing `.` segments, repeated and trailing
//! slashes (`/etc/` is `/etc`, `/etcetera` is not under `/etc`). The API server cannot follow
//! symlinks on the nodes: the agent (same flags) checks the path it resolved again before
//! mounting it.

use crate::{DynObject, Kind};

/// What a hostPath may not be, be under, or contain, unless told otherwise: the node's
/// configuration and credentials, kernel interfaces, devices, runtime state and sockets (the
/// Docker socket is root on the node), and Berth's and the container engines' data.
pub const DEFAULT_FORBIDDEN: &[&str] = &[
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/root",
    "/run",
    "/var/run",
    "/var/lib/berth",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/lib/kubelet",
];

/// The admission policy for hostPath volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPathPolicy {
    /// Normalized prefixes.
    forbidden: Vec<String>,
    /// None: any path not forbidden; Some(empty): no hostPath at all.
    allowed: Option<Vec<String>>,
}

impl Default for HostPathPolicy {
    fn default() -> Self {
        HostPathPolicy::new::<_, &str>(DEFAULT_FORBIDDEN, &[])
    }
}

/// `/a//b/./c/` -> `/a/b/c`; `/` stays `/`.
fn normalize(p: &str) -> String {
    let segs: Vec<&str> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    format!("/{}", segs.join("/"))
}

/// Is `path` equal to or under `prefix` (both normalized)?
fn under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl HostPathPolicy {
    /// `forbidden` and `allowed` as the flags give them; `allowed` empty: any path not
    /// forbidden; `allowed == ["none"]`: no hostPath volumes.
    pub fn new<F: AsRef<str>, A: AsRef<str>>(forbidden: &[F], allowed: &[A]) -> HostPathPolicy {
        fn clean<S: AsRef<str>>(v: &[S]) -> Vec<String> {
            v.iter()
                .map(|s| s.as_ref().trim())
                .filter(|s| !s.is_empty())
                .map(normalize)
                .collect()
        }
        let allowed_raw: Vec<&str> = allowed.iter().map(|s| s.as_ref().trim()).collect();
        let allowed = if allowed_raw.iter().all(|s| s.is_empty()) {
            None
        } else if allowed_raw.iter().any(|s| s.eq_ignore_ascii_case("none")) {
            Some(Vec::new())
        } else {
            Some(clean(allowed))
        };
        let mut forbidden = clean(forbidden);
        forbidden.sort();
        forbidden.dedup();
        HostPathPolicy { forbidden, allowed }
    }

    /// Add a forbidden prefix (the server's data dir).
    pub fn forbid(&mut self, prefix: &str) {
        let p = normalize(prefix);
        if !self.forbidden.contains(&p) {
            self.forbidden.push(p);
            self.forbidden.sort();
        }
    }

    /// Why `path` may not be a hostPath (None: it may).
    pub fn check(&self, path: &str) -> Option<String> {
        let p = normalize(path);
        match &self.allowed {
            Some(a) if a.is_empty() => {
                return Some(
                    "hostPath volumes are forbidden on this cluster (--allowed-host-paths none, \
                     as Pod Security's baseline level): use an emptyDir, configMap or secret \
                     volume"
                        .to_string(),
                )
            }
            Some(a) if !a.iter().any(|pre| under(&p, pre)) => {
                return Some(format!(
                    "{p} is not under a path this cluster allows for hostPath volumes \
                     (--allowed-host-paths {})",
                    a.join(",")
                ))
            }
            _ => {}
        }
        let policy = || {
            format!(
                "this cluster forbids hostPath volumes at, under or above {} \
                 (--forbidden-host-paths)",
                self.forbidden.join(", ")
            )
        };
        for f in &self.forbidden {
            if under(&p, f) {
                return Some(format!("{p} is under {f}: {}", policy()));
            }
            if under(f, &p) {
                return Some(format!("{p} contains {f}: {}", policy()));
            }
        }
        None
    }

    /// The hostPaths of a Pod, Deployment or ReplicaSet with their field paths.
    fn host_paths(obj: &DynObject) -> Vec<(String, String)> {
        let (spec, prefix) = match obj.kind {
            Kind::Pod => (obj.value.get("spec"), "spec"),
            Kind::Deployment | Kind::ReplicaSet => (
                obj.value
                    .get("spec")
                    .and_then(|s| s.get("template"))
                    .and_then(|t| t.get("spec")),
                "spec.template.spec",
            ),
            _ => return Vec::new(),
        };
        let Some(vols) = spec
            .and_then(|s| s.get("volumes"))
            .and_then(|v| v.as_array())
        else {
            return Vec::new();
        };
        vols.iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let p = v.get("hostPath")?.get("path")?.as_str()?;
                Some((
                    format!("{prefix}.volumes[{i}].hostPath.path"),
                    p.to_string(),
                ))
            })
            .collect()
    }

    /// Admission of `obj` (`old`: the stored object an update replaces). An object whose
    /// hostPaths are those of the stored one passes (a policy tightened later does not block
    /// scaling what was admitted). Err: the message for the caller, naming the object, the
    /// field and the policy.
    /// `old` is only read when `obj` has hostPaths (most writes have none).
    pub fn admit(
        &self,
        obj: &DynObject,
        old: impl FnOnce() -> Option<DynObject>,
    ) -> Result<(), String> {
        let paths = Self::host_paths(obj);
        if paths.is_empty() {
            return Ok(());
        }
        if old().is_some_and(|o| Self::host_paths(&o) == paths) {
            return Ok(());
        }
        let mut why = Vec::new();
        for (field, path) in &paths {
            if let Some(w) = self.check(path) {
                why.push(format!("{field}: Forbidden: {w}"));
            }
        }
        if why.is_empty() {
            return Ok(());
        }
        let ns = obj.namespace();
        let name = obj.name();
        let who = if ns.is_empty() {
            format!("{} {name}", obj.kind)
        } else {
            format!("{} {ns}/{name}", obj.kind)
        };
        Err(format!(
            "{who} violates the hostPath policy: {}",
            why.join("; ")
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(paths: &[&str]) -> DynObject {
        let vols: Vec<serde_json::Value> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| serde_json::json!({"name": format!("v{i}"), "hostPath": {"path": p}}))
            .collect();
        DynObject::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": vols}
        }))
        .unwrap()
    }

    #[test]
    fn the_default_refuses_system_paths_their_parents_and_the_docker_socket() {
        let p = HostPathPolicy::default();
        for bad in [
            "/etc",
            "/etc/",
            "/etc/ssl/certs",
            "//etc",
            "/./etc",
            "/proc/1",
            "/sys",
            "/dev/sda",
            "/var/run/docker.sock",
            "/run/docker.sock",
            "/var/lib/docker/overlay2",
            "/var/lib/berth",
            "/",
            "/var",
            "/var/lib",
        ] {
            assert!(p.check(bad).is_some(), "{bad} must be refused");
        }
        for ok in [
            "/srv/data",
            "/tmp/x",
            "/etcetera",
            "/var/log/app",
            "/home/u/www",
        ] {
            assert_eq!(p.check(ok), None, "{ok} is allowed");
        }
        assert!(p.check("/var").unwrap().contains("/var contains /var/lib/"));
    }

    #[test]
    fn allowed_prefixes_and_none_restrict_further() {
        let p = HostPathPolicy::new(DEFAULT_FORBIDDEN, &["/srv", "/data/"]);
        assert_eq!(p.check("/srv/app"), None);
        assert_eq!(p.check("/data"), None);
        assert!(p
            .check("/tmp/x")
            .unwrap()
            .contains("--allowed-host-paths /srv,/data"));
        let none = HostPathPolicy::new(DEFAULT_FORBIDDEN, &["none"]);
        assert!(none.check("/srv/app").unwrap().contains("baseline"));
        let mut mine = HostPathPolicy::new(&[] as &[&str], &[] as &[&str]);
        assert_eq!(mine.check("/etc"), None);
        mine.forbid("/home/u/.berth/");
        assert!(mine.check("/home/u/.berth/agent").is_some());
    }

    #[test]
    fn admission_names_the_object_the_field_and_the_policy() {
        let p = HostPathPolicy::default();
        let err = p
            .admit(&pod(&["/srv/ok", "/etc/ssl"]), || None)
            .unwrap_err();
        assert!(
            err.starts_with("Pod default/web violates the hostPath policy: spec.volumes[1].hostPath.path: Forbidden: /etc/ssl is under /etc"),
            "{err}"
        );
        assert!(err.contains("--forbidden-host-paths"), "{err}");
        assert!(p.admit(&pod(&["/srv/ok"]), || None).is_ok());
        // An update that keeps the stored object's hostPaths passes (policy tightened later).
        let old = pod(&["/etc/ssl"]);
        assert!(p.admit(&pod(&["/etc/ssl"]), || Some(old.clone())).is_ok());
        assert!(p
            .admit(&pod(&["/etc/ssl", "/proc"]), || Some(old.clone()))
            .is_err());
        let dep = DynObject::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i"}],
                         "volumes": [{"name": "s", "hostPath": {"path": "/var/run/docker.sock"}}]}}}
        }))
        .unwrap();
        let err = p.admit(&dep, || None).unwrap_err();
        assert!(
            err.contains("spec.template.spec.volumes[0].hostPath.path: Forbidden"),
            "{err}"
        );
    }
}
