//! `imagePullSecrets`: registry credentials from `kubernetes.io/dockerconfigjson` (and legacy
//! `kubernetes.io/dockercfg`) Secrets, matched to an image's registry the way the kubelet's
//! credential keyring does (`pkg/credentialprovider`).
//!
//! A key of the config (`registry.example.com:5000`, `https://index.docker.io/v1/`,
//! `*.example.com/team`) matches an image when its host matches the image's registry host (a
//! `*` label matches one label), its port is the same, and its path is a prefix of the image's
//! repository; Docker Hub's names (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are
//! one host. Every matching credential is tried in turn, most specific first; with none, the
//! pull is anonymous. Credentials never appear in `Debug` output, logs, events or errors.

use std::hash::{Hash, Hasher};

use base64::Engine as _;
use berth_proto::types::Secret;
use serde::Deserialize;

pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
pub const DOCKER_CFG: &str = "kubernetes.io/dockercfg";

/// The names Docker Hub goes by: one registry for matching.
const DOCKER_HUB: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// One registry's credentials from a pull secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RegistryAuth {
    /// The config key as written, normalized: host\[:port\]\[/path\] without a scheme.
    pub key: String,
    /// The Secret it came from (for messages).
    pub secret: String,
    pub username: String,
    pub password: String,
    pub identity_token: String,
    pub email: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("key", &self.key)
            .field("secret", &self.secret)
            .field("username", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The credentials of a pod's pull secrets, in the order the pod lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Keyring {
    pub entries: Vec<RegistryAuth>,
}

#[derive(Deserialize, Default)]
struct Entry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    identitytoken: String,
}

#[derive(Deserialize)]
struct ConfigJson {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, Entry>,
}

/// `https://host:port/path/` -> `host:port/path`.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let k = k.trim_end_matches('/');
    // Docker Hub's legacy key names the v1 index: the path is no repository prefix.
    match k.split_once('/') {
        Some((host, "v1" | "v2")) => host.to_string(),
        _ => k.to_string(),
    }
}

impl Keyring {
    /// Add the credentials of `secret`. Err: why the Secret cannot be used (no values).
    pub fn add_secret(&mut self, secret: &Secret) -> Result<(), String> {
        let name = &secret.metadata.name;
        let entries: std::collections::BTreeMap<String, Entry> = match secret.type_.as_str() {
            DOCKER_CONFIG_JSON => {
                let raw = secret
                    .value(".dockerconfigjson")
                    .ok_or_else(|| format!("secret {name:?} has no key .dockerconfigjson"))?;
                serde_json::from_slice::<ConfigJson>(&raw)
                    .map_err(|e| {
                        format!(
                            "secret {name:?}: .dockerconfigjson is not a Docker config \
                             ({{\"auths\": {{REGISTRY: {{\"username\", \"password\"}}}}}}): {}",
                            redact_serde(&e)
                        )
                    })?
                    .auths
            }
            DOCKER_CFG => {
                let raw = secret
                    .value(".dockercfg")
                    .ok_or_else(|| format!("secret {name:?} has no key .dockercfg"))?;
                serde_json::from_slice(&raw).map_err(|e| {
                    format!(
                        "secret {name:?}: .dockercfg is not a legacy Docker config \
                         ({{REGISTRY: {{\"username\", \"password\"}}}}): {}",
                        redact_serde(&e)
                    )
                })?
            }
            other => {
                return Err(format!(
                    "secret {name:?} is of type {:?}, not {DOCKER_CONFIG_JSON} or {DOCKER_CFG} \
                     (create one with `berth create secret docker-registry`)",
                    if other.is_empty() { "Opaque" } else { other }
                ))
            }
        };
        for (key, e) in entries {
            let (mut username, mut password) = (e.username, e.password);
            if !e.auth.is_empty() {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(e.auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        format!("secret {name:?}: the \"auth\" of registry {key:?} is not base64")
                    })?;
                let (u, p) = decoded.split_once(':').ok_or_else(|| {
                    format!(
                        "secret {name:?}: the \"auth\" of registry {key:?} is not base64 of \
                         USERNAME:PASSWORD"
                    )
                })?;
                (username, password) = (u.to_string(), p.to_string());
            }
            self.entries.push(RegistryAuth {
                key: normalize_key(&key),
                secret: name.clone(),
                username,
                password,
                identity_token: e.identitytoken,
                email: e.email,
            });
        }
        Ok(())
    }

    /// The credentials for pulling `repository` from `registry` (host\[:port\]; Docker Hub
    /// for None), most specific key first.
    pub fn lookup(&self, registry: Option<&str>, repository: &str) -> Vec<&RegistryAuth> {
        let registry = registry.unwrap_or("docker.io");
        let mut found: Vec<&RegistryAuth> = self
            .entries
            .iter()
            .filter(|a| key_matches(&a.key, registry, repository))
            .collect();
        // Longer keys (with a path) are more specific; the sort is stable, so secrets keep the
        // pod's order among equals.
        found.sort_by_key(|a| std::cmp::Reverse(a.key.len()));
        found
    }

    /// A fingerprint of the credentials (pulls with different credentials are not joined).
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// serde's message without the input it quotes (which could be a credential).
fn redact_serde(e: &serde_json::Error) -> String {
    format!("invalid JSON at line {} column {}", e.line(), e.column())
}

fn split_port(hostport: &str) -> (&str, &str) {
    match hostport.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
        _ => (hostport, ""),
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    let hub = |h: &str| DOCKER_HUB.contains(&h);
    if hub(pattern) && hub(host) {
        return true;
    }
    let pl: Vec<&str> = pattern.split('.').collect();
    let hl: Vec<&str> = host.split('.').collect();
    pl.len() == hl.len()
        && pl
            .iter()
            .zip(&hl)
            .all(|(p, h)| *p == "*" || p.eq_ignore_ascii_case(h))
}

fn key_matches(key: &str, registry: &str, repository: &str) -> bool {
    let (key_host, key_path) = key.split_once('/').unwrap_or((key, ""));
    let (kh, kp) = split_port(key_host);
    let (rh, rp) = split_port(registry);
    if kp != rp || !host_matches(kh, rh) {
        return false;
    }
    if key_path.is_empty() {
        return true;
    }
    let mut repo = repository.to_string();
    if DOCKER_HUB.contains(&rh) && !repo.contains('/') {
        repo = format!("library/{repo}");
    }
    repo == key_path || repo.starts_with(&format!("{key_path}/"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn secret(name: &str, type_: &str, key: &str, json: &str) -> Secret {
        let mut s = Secret {
            type_: type_.into(),
            data: BTreeMap::from([(
                key.to_string(),
                base64::engine::general_purpose::STANDARD.encode(json),
            )]),
            ..Default::default()
        };
        s.metadata.name = name.into();
        s
    }

    #[test]
    fn dockerconfigjson_and_legacy_dockercfg_credentials_match_their_registry() {
        let mut k = Keyring::default();
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        k.add_secret(&secret(
            "regcred",
            DOCKER_CONFIG_JSON,
            ".dockerconfigjson",
            &format!(
                r#"{{"auths":{{"127.0.0.1:5000":{{"username":"alice","password":"pw"}},
                "https://index.docker.io/v1/":{{"auth":"{auth}"}},
                "*.example.com/team":{{"username":"t","password":"p"}}}}}}"#
            ),
        ))
        .unwrap();
        k.add_secret(&secret(
            "legacy",
            DOCKER_CFG,
            ".dockercfg",
            r#"{"quay.io":{"username":"q","password":"qp"}}"#,
        ))
        .unwrap();
        let users = |reg: Option<&str>, repo: &str| -> Vec<String> {
            k.lookup(reg, repo)
                .iter()
                .map(|a| a.username.clone())
                .collect()
        };
        assert_eq!(users(Some("127.0.0.1:5000"), "demo/busybox"), ["alice"]);
        assert!(
            users(Some("127.0.0.1:5001"), "demo/busybox").is_empty(),
            "port differs"
        );
        assert!(users(Some("127.0.0.1"), "demo/busybox").is_empty());
        assert_eq!(users(None, "nginx"), ["bob"], "Docker Hub by its v1 key");
        assert_eq!(users(Some("docker.io"), "library/nginx"), ["bob"]);
        assert_eq!(k.lookup(None, "nginx")[0].password, "s3cret");
        assert_eq!(users(Some("r.example.com"), "team/app"), ["t"]);
        assert!(
            users(Some("r.example.com"), "other/app").is_empty(),
            "path prefix"
        );
        assert!(
            users(Some("a.r.example.com"), "team/app").is_empty(),
            "* is one label"
        );
        assert_eq!(users(Some("quay.io"), "x/y"), ["q"]);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("alice"), "{dbg}");
    }

    #[test]
    fn unusable_pull_secrets_say_why_without_their_values() {
        let mut k = Keyring::default();
        let e = k
            .add_secret(&secret(
                "opaque",
                "",
                "x",
                r#"{"auths":{"r":{"password":"hunter2"}}}"#,
            ))
            .unwrap_err();
        assert!(e.contains("not kubernetes.io/dockerconfigjson"), "{e}");
        let e = k
            .add_secret(&secret(
                "broken",
                DOCKER_CONFIG_JSON,
                ".dockerconfigjson",
                r#"{"auths": "hunter2"}"#,
            ))
            .unwrap_err();
        assert!(
            e.contains("not a Docker config") && !e.contains("hunter2"),
            "{e}"
        );
        assert!(k.entries.is_empty());
    }

    #[test]
    fn most_specific_key_first_and_fingerprints_differ_by_credentials() {
        let mut a = Keyring::default();
        a.add_secret(&secret(
            "s",
            DOCKER_CONFIG_JSON,
            ".dockerconfigjson",
            r#"{"auths":{"r.io":{"username":"any","password":"1"},"r.io/team":{"username":"team","password":"2"}}}"#,
        ))
        .unwrap();
        let order: Vec<&str> = a
            .lookup(Some("r.io"), "team/app")
            .iter()
            .map(|x| x.username.as_str())
            .collect();
        assert_eq!(order, ["team", "any"]);
        let mut b = a.clone();
        b.entries[0].password = "other".into();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}
