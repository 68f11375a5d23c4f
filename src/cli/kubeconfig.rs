//! `berth kubeconfig`: print a kubeconfig for kubectl and Kubernetes client libraries, with
//! this CLI's credential (the cluster CA, the client certificate and its key, embedded) and
//! one cluster entry per API server: `berth kubeconfig > ~/.kube/config`.
//!
//! Every `berth server` serves the Kubernetes REST API on its API port (the same port and
//! TLS as gRPC), so the `server:` URLs are the addresses the CLI already uses.

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use serde_json::json;

use super::{Ctx, Io};

#[derive(Debug, Clone, Args)]
pub struct KubeconfigArgs {
    /// Name of the cluster, user and context entries (the first server's; the others get
    /// NAME-2, NAME-3, ...).
    #[arg(long, default_value = "berth")]
    pub name: String,
}

/// A kubeconfig reaching `servers` (HOST:PORT) with this CA and client credential. The
/// context `name` uses the first server; `name-2`... the others (kubectl talks to one
/// server per context).
pub fn kubeconfig_yaml(
    name: &str,
    servers: &[String],
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let entry = |i: usize| {
        if i == 0 {
            name.to_string()
        } else {
            format!("{name}-{}", i + 1)
        }
    };
    let clusters: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"name": entry(i), "cluster": {
                "server": format!("https://{s}"),
                "certificate-authority-data": b64(ca_pem),
            }})
        })
        .collect();
    let contexts: Vec<_> = (0..servers.len())
        .map(|i| {
            json!({"name": entry(i), "context": {
                "cluster": entry(i), "user": name, "namespace": "default",
            }})
        })
        .collect();
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": clusters,
        "users": [{"name": name, "user": {
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }}],
        "contexts": contexts,
        "current-context": name,
    });
    serde_yaml_ng::to_string(&doc).context("encoding the kubeconfig")
}

/// A kubeconfig reaching `servers` with an API bearer token (`berth token create
/// --kubeconfig`).
pub fn token_kubeconfig_yaml(
    name: &str,
    servers: &[String],
    ca_pem: &str,
    token: &str,
) -> anyhow::Result<String> {
    let yaml = kubeconfig_yaml(name, servers, ca_pem, "", "")?;
    let mut doc: serde_json::Value = serde_yaml_ng::from_str(&yaml).context("kubeconfig")?;
    doc["users"] = json!([{"name": name, "user": {"token": token}}]);
    serde_yaml_ng::to_string(&doc).context("encoding the kubeconfig")
}

pub async fn run(ctx: &Ctx, a: KubeconfigArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let Some(tls) = &ctx.client_config.tls else {
        anyhow::bail!(
            "no credentials to put in a kubeconfig: `berth dev` writes ~/.berth/config; for a \
             cluster, pass --config DATA/admin.yaml (written by `berth server --init`)"
        );
    };
    let yaml = kubeconfig_yaml(
        &a.name,
        &ctx.servers,
        &tls.ca_cert_pem,
        &tls.credential.cert_pem,
        &tls.credential.key_pem,
    )?;
    io.out.write_all(yaml.as_bytes())?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_has_a_context_per_server_and_embedded_credentials() {
        let y = kubeconfig_yaml(
            "berth",
            &["10.0.0.1:7440".into(), "10.0.0.2:7440".into()],
            "CA",
            "CERT",
            "KEY",
        )
        .unwrap();
        let v: serde_json::Value = serde_yaml_ng::from_str(&y).unwrap();
        assert_eq!(v["current-context"], "berth");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://10.0.0.1:7440"
        );
        assert_eq!(v["contexts"][1]["name"], "berth-2");
        assert_eq!(v["contexts"][1]["context"]["cluster"], "berth-2");
        assert_eq!(
            v["users"][0]["user"]["client-key-data"],
            base64::engine::general_purpose::STANDARD.encode("KEY")
        );
    }
}
