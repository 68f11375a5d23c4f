//! Security over the real binaries: who may join, who may talk to a server, and what a node's
//! certificate allows.
//!
//! - a server started with a wrong join token (wrong secret, another cluster's CA fingerprint,
//!   malformed) exits non-zero with an error about the token, gets no CA key and leaves the
//!   membership unchanged; the same command with the right token (`--token`) joins;
//! - a CLI without credentials (a config with only `servers:`, or no config at all) says "no
//!   credentials", a CLI with a self-made admin certificate is refused, and the server itself
//!   refuses raw clients without a certificate (UNAUTHENTICATED) or without TLS; the store
//!   revision does not move;
//! - with the certificate an agent bootstrapped into its data dir, a raw client reads pods but
//!   is refused (PERMISSION_DENIED naming `system:node:NAME`) creating a Deployment, updating the
//!   status of another node's pod, and anything else beyond the node rules, through every
//!   server (followers forward on the caller's behalf).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_proto::pb::{self, ClusterStatusRequest, ObjectKey};
use berth_proto::types::Pod;
use berth_tls::{AdminConfig, ClientTls, ClusterCa, Identity};
use tonic::Code;

use crate::harness::cluster::{api_client, describe_status, innermost};
use crate::harness::proc::Proc;
use crate::harness::{repo_manifest, seq_service, wait_until, Cluster, Opts};

/// Every member (id, address) as server `i` reports it.
fn members(c: &Cluster, i: usize) -> Result<BTreeSet<(u64, String)>, String> {
    Ok(c.status(i)?
        .members
        .into_iter()
        .map(|m| (m.id, m.address))
        .collect())
}

/// The leader's store revision (the latest committed one).
fn leader_revision(c: &mut Cluster) -> u64 {
    let l = c.leader();
    c.status(l)
        .map(|s| s.revision)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Unix permission bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_server_with_a_wrong_join_token_is_refused_and_the_membership_is_unchanged() {
    let Some(c) = Cluster::start(
        "wrong-token",
        11,
        Opts {
            agents: false,
            ..Opts::default()
        },
    ) else {
        return;
    };
    let before = members(&c, 0).expect("members before");
    assert_eq!(before.len(), 3, "{before:?}");
    let good = c.join_token().to_string();
    let (good_prefix, good_secret) = good.split_once("::").expect("token K10<fp>::<secret>");
    let wrong_secret = if good_secret.starts_with('0') {
        "1".repeat(64)
    } else {
        "0".repeat(64)
    };
    let with_wrong_secret = format!("{good_prefix}::{wrong_secret}");
    // Another cluster's CA fingerprint, with this cluster's real secret: the joiner must not
    // trust this cluster's servers, so the secret is never sent.
    let other_cluster = ClusterCa::generate().expect("another CA");
    let foreign = format!(
        "{}{}::{good_secret}",
        berth_tls::TOKEN_PREFIX,
        other_cluster.fingerprint_hex()
    );

    // A fourth server on host 3 (its own data dir and port), joining through server 1.
    let host = 2;
    let listen = format!("{}:7001", c.ip(host));
    let cases: [(&str, &str, bool); 3] = [
        (
            "a token with the wrong secret (--token)",
            with_wrong_secret.as_str(),
            true,
        ),
        (
            "a token naming another cluster's CA (BERTH_TOKEN)",
            foreign.as_str(),
            false,
        ),
        ("a malformed token (BERTH_TOKEN)", "not-a-join-token", false),
    ];
    for (k, (what, token, as_flag)) in cases.into_iter().enumerate() {
        let data = c.dir().join("h3").join(format!("refused-{k}"));
        std::fs::create_dir_all(&data).expect("data dir");
        let data_s = data.display().to_string();
        let join = c.api_addr(0);
        let mut args = vec![
            "server",
            "--data-dir",
            &data_s,
            "--listen",
            &listen,
            "--join",
            &join,
        ];
        let mut env = Vec::new();
        if as_flag {
            args.extend(["--token", token]);
        } else {
            env.push(("BERTH_TOKEN", token));
        }
        let started = Instant::now();
        let out = c.run_on_host(host, &args, &env, Duration::from_secs(20));
        let took = started.elapsed();
        eprintln!("join with {what} -> exit after {took:?}: {out}");
        assert!(
            out.code.is_some(),
            "a server joining with {what} did not exit within 20 s: {out}"
        );
        assert!(!out.ok(), "a server joining with {what} exited 0: {out}");
        let text = format!("{}\n{}", out.stdout, out.stderr);
        assert!(
            text.to_ascii_lowercase().contains("token"),
            "the error of a join with {what} does not mention the token: {out}"
        );
        assert!(
            !text.contains(good_secret),
            "the output of a refused join shows the cluster's secret: {out}"
        );
        if token.contains("::") {
            let presented = token.split_once("::").map(|x| x.1).unwrap_or_default();
            assert!(
                !text.contains(presented),
                "the output of a refused join echoes the presented secret: {out}"
            );
        }
        let pki = data.join("pki");
        for f in ["ca.key", "server.key", "server.crt"] {
            assert!(
                !pki.join(f).exists(),
                "a server refused at join ({what}) got pki/{f}"
            );
        }
        for i in 0..3 {
            let now = members(&c, i).expect("members after a refused join");
            assert_eq!(
                now,
                before,
                "server{} reports other members after a join with {what}",
                i + 1
            );
        }
    }

    // The same command with the right token (as a flag this time) joins: the refusals above
    // were about the token, nothing else.
    let data = c.dir().join("h3").join("accepted");
    std::fs::create_dir_all(&data).expect("data dir");
    let mut joiner = Proc::new(
        "server4",
        &c.net.hosts[host].ns,
        vec![
            "server".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            listen.clone(),
            "--join".into(),
            c.api_addr(0),
            "--token".into(),
            good.clone(),
        ],
        c.dir().join("server4.log"),
    );
    joiner.start();
    let (_, took) = wait_until(
        "server4 (right token) to be a member",
        Duration::from_secs(20),
        || {
            if !joiner.is_running() {
                panic!("server4 (right token) exited:\n{}", joiner.tail(40));
            }
            let now = members(&c, 0)?;
            if now.len() == 4 && now.iter().any(|(_, a)| a.ends_with(&listen)) {
                Ok(())
            } else {
                Err(format!("members: {now:?}"))
            }
        },
    );
    eprintln!("the same join with the right token was a member after {took:?}");
    assert!(data.join("pki").join("server.crt").exists());
    joiner.kill9();
}

#[test]
fn without_credentials_the_cli_and_raw_clients_are_refused_and_nothing_is_written() {
    let Some(mut c) = Cluster::start(
        "no-credentials",
        12,
        Opts {
            agents: false,
            ..Opts::default()
        },
    ) else {
        return;
    };
    assert_eq!(
        mode(&c.admin_config_path()),
        0o600,
        "{} holds the admin key and must be 0600",
        c.admin_config_path().display()
    );
    let rev0 = leader_revision(&mut c);
    let manifest = c.write_file("svc.yaml", &seq_service("uncredentialed"));
    let servers: Vec<String> = (0..3).map(|i| c.api_addr(i)).collect();

    // 1. The CLI with a config that names the servers but holds no credential, and with no
    // config at all: a clear local error, nothing sent.
    let only_servers = c.write_file(
        "only-servers.yaml",
        &format!("servers: [{}]\n", servers.join(", ")),
    );
    for (what, cli) in [
        (
            "a config with only servers",
            c.cli_handle().with_config(Some(only_servers.into())),
        ),
        ("no config at all", c.cli_handle().with_config(None)),
    ] {
        for args in [vec!["apply", "-f", manifest.as_str()], vec!["get", "pods"]] {
            let out = cli.run(&args);
            eprintln!(
                "CLI with {what}: berth {} -> {}",
                args.join(" "),
                out.stderr.trim()
            );
            assert!(
                !out.ok(),
                "berth {} succeeded with {what}: {out}",
                args.join(" ")
            );
            assert!(
                out.stderr.contains("no credentials"),
                "berth {} with {what} does not say \"no credentials\": {out}",
                args.join(" ")
            );
            assert!(
                out.stderr.contains("admin.yaml"),
                "berth {} with {what} does not point at the admin config: {out}",
                args.join(" ")
            );
        }
    }

    // 2. A self-made admin certificate (from a CA of one's own), with the cluster's real CA
    // certificate to trust the servers: the servers refuse it.
    let own_ca = ClusterCa::generate().expect("a CA of one's own");
    let forged = own_ca
        .issue_client(&Identity::Admin)
        .expect("a self-made admin certificate");
    let forged_cfg = AdminConfig {
        servers: servers.clone(),
        certificate_authority: c.admin_tls().ca_cert_pem.clone(),
        client_certificate: forged.cert_pem.clone(),
        client_key: forged.key_pem.clone(),
    };
    let forged_path = c.dir().join("forged-admin.yaml");
    forged_cfg.write(&forged_path).expect("write forged config");
    let forged_cli = c.cli_handle().with_config(Some(forged_path));
    let started = Instant::now();
    let out = forged_cli.run(&["apply", "-f", &manifest, "--request-timeout", "5s"]);
    eprintln!(
        "CLI with a self-made admin certificate -> after {:?}: {}",
        started.elapsed(),
        out.stderr.trim()
    );
    assert!(out.code.is_some(), "{out}");
    assert!(
        !out.ok(),
        "a self-made admin certificate was accepted: {out}"
    );

    // 3. Raw gRPC clients: TLS trusting the cluster CA but presenting no certificate gets
    // UNAUTHENTICATED for writes and reads alike; plain text (no TLS) gets nothing.
    let object = seq_service("uncredentialed-raw");
    let object = serde_json::to_vec(
        &serde_yaml_ng::from_str::<serde_json::Value>(&object).expect("manifest as JSON"),
    )
    .expect("json");
    let ca_pem = c.admin_tls().ca_cert_pem.clone();
    c.rt.block_on(async {
        for addr in &servers {
            let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
                .expect("endpoint")
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
                        .assume_http2(true),
                )
                .expect("tls config")
                .connect_timeout(Duration::from_secs(2))
                .connect()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "TLS without a client certificate to {addr}: {}",
                        innermost(&e)
                    )
                });
            let mut client = pb::api_client::ApiClient::new(channel);
            let write = tokio::time::timeout(
                Duration::from_secs(5),
                client.apply(pb::ApplyRequest {
                    object: object.clone(),
                    dry_run: false,
                }),
            )
            .await
            .expect("Apply without a certificate: no answer within 5 s");
            let err = write.expect_err("Apply without a client certificate was accepted");
            eprintln!(
                "Apply on {addr} without a client certificate -> {}",
                describe_status(&err)
            );
            assert_eq!(
                err.code(),
                Code::Unauthenticated,
                "{}",
                describe_status(&err)
            );
            assert!(
                err.message().contains("client certificate"),
                "{}",
                describe_status(&err)
            );
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                client.list(pb::ListRequest {
                    kind: "Pod".into(),
                    namespace: String::new(),
                    label_selector: String::new(),
                }),
            )
            .await
            .expect("List without a certificate: no answer within 5 s");
            let err = read.expect_err("List without a client certificate was answered");
            assert_eq!(
                err.code(),
                Code::Unauthenticated,
                "{}",
                describe_status(&err)
            );

            let plain = async {
                let mut c = pb::api_client::ApiClient::connect(format!("http://{addr}"))
                    .await
                    .map_err(|e| innermost(&e))?;
                c.apply(pb::ApplyRequest {
                    object: object.clone(),
                    dry_run: false,
                })
                .await
                .map(|_| ())
                .map_err(|e| describe_status(&e))
            };
            match tokio::time::timeout(Duration::from_secs(5), plain).await {
                Ok(Ok(())) => panic!("a plain-text (no TLS) Apply to {addr} was accepted"),
                Ok(Err(e)) => eprintln!("plain-text Apply on {addr} -> {e}"),
                Err(_) => eprintln!("plain-text Apply on {addr} -> no answer within 5 s"),
            }
        }
    });

    // Nothing reached the store.
    let rev1 = leader_revision(&mut c);
    assert_eq!(
        rev1, rev0,
        "the store revision moved although every uncredentialed request was refused"
    );
    let names: Vec<berth_proto::types::Service> = c.get_list("services").expect("list services");
    for s in &names {
        assert!(
            !s.metadata.name.starts_with("uncredentialed"),
            "{} was stored by an uncredentialed client",
            s.metadata.name
        );
    }
}

/// Assert that `res` is PERMISSION_DENIED with a message naming `identity` (and each of
/// `also`); returns the refusal on one line.
fn expect_denied(
    what: &str,
    res: Result<(), tonic::Status>,
    identity: &str,
    also: &[&str],
) -> String {
    let err = match res {
        Ok(()) => panic!("{what} was allowed for {identity}"),
        Err(e) => e,
    };
    let line = describe_status(&err);
    assert_eq!(err.code(), Code::PermissionDenied, "{what}: {line}");
    assert!(
        err.message().contains(identity),
        "{what}: the refusal does not name {identity}: {line}"
    );
    for a in also {
        assert!(
            err.message().contains(a),
            "{what}: the refusal does not mention {a:?}: {line}"
        );
    }
    line
}

#[test]
fn a_nodes_certificate_reads_pods_but_may_not_create_deployments_or_touch_other_nodes_pods() {
    let Some(c) = Cluster::start(
        "node-authz",
        13,
        Opts {
            agents: true,
            ..Opts::default()
        },
    ) else {
        return;
    };
    c.cli_ok(&["apply", "-f", &repo_manifest("hello.yaml")]);
    // A hello pod bound to some node X; the certificate of a node that is not X.
    let (pod, _) = wait_until(
        "a hello pod bound to a node",
        Duration::from_secs(30),
        || {
            let pods: Vec<Pod> = c.get_list("pods")?;
            pods.into_iter()
                .find(|p| {
                    p.metadata.labels.get("app").map(String::as_str) == Some("hello")
                        && !p.spec.node_name.is_empty()
                })
                .ok_or_else(|| "no hello pod bound yet".to_string())
        },
    );
    let bound_to = pod.spec.node_name.clone();
    let me = (0..3)
        .find(|&j| format!("node{}", j + 1) != bound_to)
        .expect("a node other than the pod's");
    let my_name = format!("node{}", me + 1);
    let identity = format!("system:node:{my_name}");
    let pki = c.agent_data(me).join("pki");
    assert_eq!(
        mode(&pki.join("node.key")),
        0o600,
        "the node key must be 0600"
    );
    let tls: ClientTls = c.node_tls(me).expect("the node's credential");
    assert_eq!(
        tls.identity().expect("identity of node.crt"),
        Identity::Node(my_name.clone())
    );
    let ns = pod.metadata.namespace.clone();
    let pod_name = pod.metadata.name.clone();
    eprintln!(
        "using {identity}'s certificate from {}; target pod {ns}/{pod_name} is bound to {bound_to}",
        pki.display()
    );

    let deployment = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "forged-by-node", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "forged"}},
            "template": {
                "metadata": {"labels": {"app": "forged"}},
                "spec": {"containers": [{"name": "web", "image": "berth-demo:latest"}]}
            }
        }
    });
    let addrs: Vec<String> = (0..3).map(|i| c.api_addr(i)).collect();
    let (pod_name_c, ns_c, bound_c, identity_c) = (
        pod_name.clone(),
        ns.clone(),
        bound_to.clone(),
        identity.clone(),
    );
    c.rt.block_on(async move {
        for addr in &addrs {
            let mut client = api_client(addr, &tls)
                .await
                .unwrap_or_else(|e| panic!("{identity_c} cannot connect: {e}"));
            // Reading pods is allowed (the agent needs it).
            let list = tokio::time::timeout(
                Duration::from_secs(5),
                client.list(pb::ListRequest {
                    kind: "Pod".into(),
                    namespace: String::new(),
                    label_selector: String::new(),
                }),
            )
            .await
            .expect("List pods: no answer within 5 s")
            .unwrap_or_else(|e| {
                panic!(
                    "{identity_c} may not list pods on {addr}: {}",
                    describe_status(&e)
                )
            })
            .into_inner();
            assert!(
                !list.objects.is_empty(),
                "{identity_c} lists no pods on {addr}"
            );
            let got = client
                .get(pb::GetRequest {
                    key: Some(ObjectKey {
                        kind: "Pod".into(),
                        namespace: ns_c.clone(),
                        name: pod_name_c.clone(),
                    }),
                })
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{identity_c} may not get pod {pod_name_c} on {addr}: {}",
                        describe_status(&e)
                    )
                })
                .into_inner();
            let mut forged: serde_json::Value =
                serde_json::from_slice(&got.object).expect("pod JSON");
            eprintln!(
                "{identity_c} on {addr}: listed {} pods, read {pod_name_c}",
                list.objects.len()
            );

            // Creating a Deployment is not.
            let res = tokio::time::timeout(
                Duration::from_secs(10),
                client.create(pb::CreateRequest {
                    object: deployment.to_string().into_bytes(),
                    dry_run: false,
                }),
            )
            .await
            .expect("Create: no answer within 10 s")
            .map(|_| ());
            let line = expect_denied(
                &format!("creating a Deployment on {addr}"),
                res,
                &identity_c,
                &["Deployment"],
            );
            eprintln!("{identity_c} creates a Deployment on {addr} -> {line}");

            // Nor is updating the status of a pod bound to another node.
            forged["status"]["phase"] = "Failed".into();
            forged["status"]["reason"] = "Forged".into();
            forged["status"]["message"] = "forged by the e2e test".into();
            let res = tokio::time::timeout(
                Duration::from_secs(10),
                client.update_status(pb::UpdateRequest {
                    object: forged.to_string().into_bytes(),
                    dry_run: false,
                }),
            )
            .await
            .expect("UpdateStatus: no answer within 10 s")
            .map(|_| ());
            let line = expect_denied(
                &format!("updating the status of {bound_c}'s pod {pod_name_c} on {addr}"),
                res,
                &identity_c,
                &[&pod_name_c, &bound_c],
            );
            eprintln!("{identity_c} updates the status of {bound_c}'s pod on {addr} -> {line}");
        }

        // The rest of what the node rules leave out, on one server.
        let mut client = api_client(&addrs[0], &tls).await.expect("connect");
        let other_node = bound_c.clone();
        let r = client
            .list(pb::ListRequest {
                kind: "Deployment".into(),
                namespace: String::new(),
                label_selector: String::new(),
            })
            .await
            .map(|_| ());
        expect_denied("listing Deployments", r, &identity_c, &[]);
        let r = client
            .delete(pb::DeleteRequest {
                grace_period_seconds: None,
                key: Some(ObjectKey {
                    kind: "Pod".into(),
                    namespace: ns_c.clone(),
                    name: pod_name_c.clone(),
                }),
                resource_version: 0,
            })
            .await
            .map(|_| ());
        expect_denied("deleting a pod", r, &identity_c, &[]);
        let node_obj = client
            .get(pb::GetRequest {
                key: Some(ObjectKey {
                    kind: "Node".into(),
                    namespace: String::new(),
                    name: other_node.clone(),
                }),
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{identity_c} may not read Node {other_node}: {}",
                    describe_status(&e)
                )
            })
            .into_inner();
        let r = client
            .update_status(pb::UpdateRequest {
                object: node_obj.object,
                dry_run: false,
            })
            .await
            .map(|_| ());
        expect_denied(
            &format!("updating the status of Node {other_node}"),
            r,
            &identity_c,
            &[],
        );
        let st = client
            .cluster_status(ClusterStatusRequest {})
            .await
            .map(|r| r.into_inner());
        // Membership is for servers and the admin only (ClusterStatus itself may be readable).
        let victim = st
            .ok()
            .and_then(|s| s.members.iter().map(|m| m.id).find(|&id| id != s.leader_id))
            .unwrap_or(2);
        let r = client
            .remove_member(pb::RemoveMemberRequest { id: victim })
            .await
            .map(|_| ());
        expect_denied("removing a cluster member", r, &identity_c, &[]);
    });

    // Nothing the node was refused happened.
    let forged: Option<berth_proto::types::Deployment> = c
        .get_one("deployment", "forged-by-node")
        .expect("get deployment");
    assert!(
        forged.is_none(),
        "the node's Deployment was stored: {forged:?}"
    );
    let now: Option<Pod> = c.get_one("pod", &pod_name).expect("get pod");
    let now =
        now.unwrap_or_else(|| panic!("pod {pod_name} is gone after the node's refused delete"));
    assert_eq!(
        now.metadata.uid, pod.metadata.uid,
        "pod {pod_name} was replaced"
    );
    let status = now.status.unwrap_or_default();
    assert!(
        status.reason != "Forged" && !status.message.contains("forged"),
        "the refused status update of {pod_name} was stored: {status:?}"
    );
    for i in 0..3 {
        let m = members(&c, i).expect("members");
        assert_eq!(
            m.len(),
            3,
            "server{} members after the node's refused removal: {m:?}",
            i + 1
        );
    }
}
