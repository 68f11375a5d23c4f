//! Which servers the CLI talks to, and the credential it presents.
//!
//! Servers, highest first: `--server` flag, `BERTH_SERVER` environment variable, the config
//! file (`--config PATH`, else `$BERTH_CONFIG`, else `~/.berth/config`), then the default
//! `127.0.0.1:7440`.
//!
//! The config file is YAML, like a kubeconfig (mode 0600; `berth dev` writes
//! `~/.berth/config`, `berth server --init` writes `DATA/admin.yaml`):
//!
//! ```yaml
//! servers: ["10.0.0.1:7440"]
//! certificateAuthority: "-----BEGIN CERTIFICATE-----..."   # the cluster CA
//! clientCertificate: "-----BEGIN CERTIFICATE-----..."      # the admin's certificate
//! clientKey: "-----BEGIN PRIVATE KEY-----..."
//! ```
//!
//! Every server requires mutual TLS, so the credential fields are needed to reach one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub use berth_client::DEFAULT_SERVER;

/// The CLI config file. Unknown keys are ignored so newer files still load. The same shape
/// as [`berth_tls::AdminConfig`].
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CliConfig {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

impl std::fmt::Debug for CliConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliConfig")
            .field("servers", &self.servers)
            .field("has_credential", &self.client_key.is_some())
            .finish()
    }
}

impl From<berth_tls::AdminConfig> for CliConfig {
    fn from(a: berth_tls::AdminConfig) -> CliConfig {
        CliConfig {
            servers: a.servers,
            certificate_authority: Some(a.certificate_authority),
            client_certificate: Some(a.client_certificate),
            client_key: Some(a.client_key),
        }
    }
}

impl CliConfig {
    pub fn load(path: &Path) -> anyhow::Result<CliConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let cfg: CliConfig = serde_yaml_ng::from_str(&text).with_context(|| {
            format!(
                "config file {} is not valid: expected YAML like `servers: [\"127.0.0.1:7440\"]`",
                path.display()
            )
        })?;
        Ok(cfg)
    }

    /// Write the file (creating its directory, 0700; the file 0600: it holds a private key),
    /// e.g. from `berth dev`.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                berth_tls::create_private_dir(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
        }
        let text = serde_yaml_ng::to_string(self)?;
        berth_tls::write_private(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The credential in the file: all three fields, or none.
    pub fn tls(&self, path: &Path) -> anyhow::Result<Option<berth_tls::ClientTls>> {
        match (
            &self.certificate_authority,
            &self.client_certificate,
            &self.client_key,
        ) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(berth_tls::ClientTls::new(
                ca.clone(),
                berth_tls::Credential {
                    cert_pem: cert.clone(),
                    key_pem: key.clone(),
                },
            ))),
            _ => bail!(
                "config file {}: certificateAuthority, clientCertificate and clientKey must be \
                 given together",
                path.display()
            ),
        }
    }
}

/// What the CLI connects with.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub servers: Vec<String>,
    /// The credential from the config file, if any; with it, the file's path.
    pub tls: Option<berth_tls::ClientTls>,
    pub config_path: Option<PathBuf>,
}

/// Resolve servers and credential (see the module docs).
pub fn resolve(
    flag: Option<&str>,
    env: Option<&str>,
    explicit_config: Option<&Path>,
    default_config: Option<&Path>,
) -> anyhow::Result<Resolved> {
    let servers = resolve_servers(flag, env, explicit_config, default_config)?;
    let path = match explicit_config {
        Some(p) => Some(p),
        None => default_config.filter(|p| p.exists()),
    };
    let (tls, config_path) = match path {
        Some(p) => (CliConfig::load(p)?.tls(p)?, Some(p.to_path_buf())),
        None => (None, None),
    };
    Ok(Resolved {
        servers,
        tls,
        config_path,
    })
}

/// Environment variable naming the config file (like `--config`).
pub const CONFIG_ENV: &str = "BERTH_CONFIG";

/// `~/.berth/config`, if HOME is known.
pub fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".berth").join("config"))
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// Resolve the server list. `explicit_config` is `--config` (must exist); otherwise
/// `default_config` is used only if it exists.
pub fn resolve_servers(
    flag: Option<&str>,
    env: Option<&str>,
    explicit_config: Option<&Path>,
    default_config: Option<&Path>,
) -> anyhow::Result<Vec<String>> {
    if let Some(f) = flag {
        let list = split_list(f);
        if list.is_empty() {
            bail!("--server is empty: pass HOST:PORT[,HOST:PORT..]");
        }
        return Ok(list);
    }
    if let Some(e) = env {
        let list = split_list(e);
        if !list.is_empty() {
            return Ok(list);
        }
    }
    let file = match explicit_config {
        Some(p) => Some(CliConfig::load(p)?),
        None => match default_config {
            Some(p) if p.exists() => Some(CliConfig::load(p)?),
            _ => None,
        },
    };
    if let Some(cfg) = file {
        if !cfg.servers.is_empty() {
            return Ok(cfg.servers);
        }
    }
    Ok(vec![DEFAULT_SERVER.to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn flag_beats_env_beats_config_beats_default() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = write(dir.path(), "config", "servers: [\"10.0.0.1:7440\"]\n");
        let r =
            |flag, env, cfg: Option<&Path>| resolve_servers(flag, env, None, cfg).expect("resolve");
        assert_eq!(
            r(Some("a:1,b:2"), Some("e:1"), Some(&cfg)),
            vec!["a:1", "b:2"]
        );
        assert_eq!(r(None, Some("e:1, e:2"), Some(&cfg)), vec!["e:1", "e:2"]);
        assert_eq!(r(None, None, Some(&cfg)), vec!["10.0.0.1:7440"]);
        assert_eq!(r(None, Some(""), None), vec![DEFAULT_SERVER]);
        let missing = dir.path().join("nope");
        assert_eq!(r(None, None, Some(&missing)), vec![DEFAULT_SERVER]);
    }

    #[test]
    fn explicit_config_must_exist_and_parse() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = dir.path().join("nope");
        let err = resolve_servers(None, None, Some(&missing), None).expect_err("missing");
        assert!(format!("{err:#}").contains("cannot read config file"));
        let bad = write(dir.path(), "bad", "servers: 7\n");
        let err = resolve_servers(None, None, Some(&bad), None).expect_err("bad");
        assert!(format!("{err:#}").contains("not valid"));
        // Unknown keys are tolerated.
        let extra = write(dir.path(), "extra", "servers: [x:1]\ncontext: dev\n");
        assert_eq!(
            resolve_servers(None, None, Some(&extra), None).expect("ok"),
            vec!["x:1"]
        );
    }

    #[test]
    fn saved_config_loads_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("sub").join("config");
        let cfg = CliConfig {
            servers: vec!["127.0.0.1:7441".into()],
            ..CliConfig::default()
        };
        cfg.save(&p).expect("save");
        assert_eq!(CliConfig::load(&p).expect("load"), cfg);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the config holds a private key");
    }
}
