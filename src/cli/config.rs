//! Which servers the CLI talks to.
//!
//! Precedence, highest first: `--server` flag, `BERTH_SERVER` environment variable, the
//! config file (`--config PATH`, else `$BERTH_CONFIG`, else `~/.berth/config`; YAML
//! `servers: [HOST:PORT, ..]`, written by `berth dev`), then the default `127.0.0.1:7440`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

pub use berth_client::DEFAULT_SERVER;

/// The CLI config file. Unknown keys are ignored so newer files still load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CliConfig {
    #[serde(default)]
    pub servers: Vec<String>,
}

impl CliConfig {
    pub fn load(path: &Path) -> anyhow::Result<CliConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let cfg: CliConfig = serde_yaml::from_str(&text).with_context(|| {
            format!(
                "config file {} is not valid: expected YAML like `servers: [\"127.0.0.1:7440\"]`",
                path.display()
            )
        })?;
        Ok(cfg)
    }

    /// Write the file (creating its directory), e.g. from `berth dev`.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_yaml::to_string(self)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }
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
        };
        cfg.save(&p).expect("save");
        assert_eq!(CliConfig::load(&p).expect("load"), cfg);
    }
}
