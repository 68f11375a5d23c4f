//! Microservices by name across hosts: a three-tier app on three hosts, each with its own
//! Docker engine. `web` (2 replicas) calls `http://api:8080/` by Service name; `api` calls its
//! store through a headless Service (`store`, clusterIP None) by name and port; every pod has
//! its own address from its node's pod CIDR and reaches pods on other hosts over host-gw
//! routes. web is `type: LoadBalancer`, served on every node's address at port 80; a hostPort
//! pod at the api Service's port never captures the api ClusterIP. Calls through web's
//! nodePort keep succeeding while every API server is down (DNS and proxies serve their last
//! state), across an agent's SIGKILL and restart (pods adopted with their IPs), when a pod's
//! sandbox dies (the pod restarts in a new one), and while a store pod, a whole node and the
//! leader server are killed; a pod asking for a deleted Service gets NXDOMAIN.

use std::time::Duration;

use berth_proto::types::{Pod, Service};

use crate::harness::{wait_until, Cluster, Opts};

/// One image for all three tiers: busybox's httpd with CGI scripts that call the next tier by
/// name (`api`, `store`) through the cluster DNS.
/// (No `wget -T`: busybox 1.35's static wget crashes with it.)
const DOCKERFILE: &str = r#"FROM berth-busybox:1
RUN ["/bin/busybox", "mkdir", "-p", "/bin", "/www/cgi-bin", "/store"]
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/sh", "-c", "printf '#!/bin/sh\\necho Content-type: text/plain\\necho\\nwget -q -O - http://api:8080/cgi-bin/api || echo web-failed\\n' > /www/cgi-bin/web && printf '#!/bin/sh\\necho Content-type: text/plain\\necho\\nwget -q -O - http://store:7000/data || echo api-failed\\n' > /www/cgi-bin/api && echo store-ok > /store/data && chmod +x /www/cgi-bin/web /www/cgi-bin/api"]
"#;

fn manifests(image: &str) -> String {
    let deploy = |name: &str, replicas: u32, port: u16, root: &str, port_name: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n      - name: {name}\n        image: {image}\n        imagePullPolicy: Never\n        command: [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"{port}\", \"-h\", \"{root}\"]\n        ports:\n        - name: {port_name}\n          containerPort: {port}\n        readinessProbe:\n          tcpSocket:\n            port: {port}\n          periodSeconds: 1\n---\n"
        )
    };
    let mut out = String::new();
    out += &deploy("store", 2, 7000, "/store", "data");
    out += &deploy("api", 2, 8080, "/www", "http");
    out += &deploy("web", 2, 8080, "/www", "http");
    // On every node, a pod publishing hostPort 8080 — the api Service's port. Its hostPort is
    // published on the node address only, so calls to the api ClusterIP:8080 (from pods and
    // the node) still reach api, not this pod (which would answer 404 for /cgi-bin/api); a
    // wildcard publish would not even bind beside the proxy's ClusterIP listener.
    out += &format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: edge\nspec:\n  replicas: 3\n  selector:\n    matchLabels:\n      app: edge\n  template:\n    metadata:\n      labels:\n        app: edge\n    spec:\n      containers:\n      - name: edge\n        image: {image}\n        imagePullPolicy: Never\n        command: [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/store\"]\n        ports:\n        - containerPort: 8080\n          hostPort: 8080\n        readinessProbe:\n          tcpSocket:\n            port: 8080\n          periodSeconds: 1\n---\n"
    );
    out += "apiVersion: v1\nkind: Service\nmetadata:\n  name: store\nspec:\n  clusterIP: None\n  selector:\n    app: store\n  ports:\n  - name: data\n    port: 7000\n---\n";
    out += "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\nspec:\n  type: ClusterIP\n  selector:\n    app: api\n  ports:\n  - name: http\n    port: 8080\n---\n";
    out += "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: LoadBalancer\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n    nodePort: 30080\n";
    out
}

/// Ready pods per app, with their nodes and IPs.
fn ready_pods(c: &Cluster, app: &str) -> Result<Vec<(String, String, String)>, String> {
    let pods: Vec<Pod> = c.get_list("pods")?;
    Ok(pods
        .into_iter()
        .filter(|p| p.metadata.labels.get("app").map(String::as_str) == Some(app))
        .filter(|p| p.metadata.deletion_timestamp.is_none() && p.is_ready())
        .map(|p| {
            let ip = p.status.clone().unwrap_or_default().pod_ip;
            (p.metadata.name.clone(), p.spec.node_name.clone(), ip)
        })
        .collect())
}

/// A call through web's nodePort on host `via` that went all the way to the store.
fn call(c: &Cluster, via: usize) -> Result<(), String> {
    let (status, body) = c.http_get(c.ip(via), 30080, "/cgi-bin/web")?;
    if status == 200 && body.trim() == "store-ok" {
        Ok(())
    } else {
        Err(format!("via host {}: {status} {body:?}", via + 1))
    }
}

/// `n` calls spread over the hosts in `via`; every one must succeed.
fn calls_succeed(c: &Cluster, via: &[usize], n: usize, what: &str) {
    for k in 0..n {
        let h = via[k % via.len()];
        if let Err(e) = call(c, h) {
            panic!("{what}: call {k} failed: {e}");
        }
    }
}

#[test]
fn a_three_tier_app_finds_its_services_by_name_across_hosts_through_pod_node_and_leader_loss() {
    berth_testkit::images::build_busybox();
    let Some(mut c) = Cluster::start(
        "network",
        15,
        Opts {
            agents: true,
            docker: true,
            docker_everywhere: true,
            ..Opts::default()
        },
    ) else {
        return;
    };
    // The image, built once in the root engine and loaded into every host's engine.
    let image = format!("e2e{}/tiers:1", std::process::id());
    let ctx = c.dir().join("ctx");
    std::fs::create_dir_all(&ctx).expect("ctx");
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).expect("Dockerfile");
    let built = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &image, &ctx.display().to_string()])
        .output()
        .expect("docker build");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let tar = c.dir().join("tiers.tar");
    let saved = std::process::Command::new("docker")
        .args(["save", "-o", &tar.display().to_string(), &image])
        .status()
        .expect("docker save");
    assert!(saved.success());
    let _ = std::process::Command::new("docker")
        .args(["rmi", &image])
        .output();
    for i in 0..3 {
        c.docker_on(i, &["load", "-i", &tar.display().to_string()])
            .expect("docker load");
    }

    let file = c.write_file("tiers.yaml", &manifests(&image));
    c.cli_ok(&["apply", "-f", &file]);
    let limit = Duration::from_secs(90);
    for app in ["store", "api", "web"] {
        wait_until(&format!("2 {app} pods Ready"), limit, || {
            let p = ready_pods(&c, app)?;
            (p.len() == 2).then_some(p.clone()).ok_or(format!("{p:?}"))
        });
    }
    // Every pod has an address of its node's pod CIDR, not the node's address.
    let nodes: Vec<berth_proto::types::Node> = c.get_list("nodes").expect("nodes");
    for app in ["store", "api", "web"] {
        for (name, node, ip) in ready_pods(&c, app).expect("pods") {
            let n = nodes
                .iter()
                .find(|n| n.metadata.name == node)
                .expect("node");
            let cidr = n.spec.pod_cidr.clone().expect("node has a pod CIDR");
            let prefix = cidr.trim_end_matches("0/24");
            assert!(
                ip.starts_with(prefix),
                "{name} on {node}: {ip} not in {cidr}"
            );
        }
    }
    let api: Service = c
        .get_one("service", "api")
        .expect("api service")
        .expect("api exists");
    let api_ip = api.spec.cluster_ip.clone().expect("api has a ClusterIP");
    assert!(api_ip.starts_with("10.43."), "{api_ip}");

    // What a pod sees (printed, for when a call fails).
    for host in 0..3 {
        let names = c
            .docker_on(host, &["ps", "--format", "{{.Names}}"])
            .unwrap_or_default();
        if let Some(web) = names
            .lines()
            .find(|n| n.contains("_web-") && !n.contains("_POD_"))
        {
            for cmd in [
                "cat /etc/resolv.conf; nslookup api.default.svc.cluster.local. 2>&1; echo rc=$?",
                "nslookup store.default.svc.cluster.local. 2>&1; echo rc=$?",
                "wget -O - http://api:8080/cgi-bin/api 2>&1; echo rc=$?",
                "wget -O - http://store:7000/data 2>&1; echo rc=$?",
            ] {
                let args = vec!["exec", web, "sh", "-c", cmd];
                eprintln!(
                    "host {} {web}: {cmd:?}: {:?}",
                    host + 1,
                    c.docker_on(host, &args)
                );
            }
            eprintln!(
                "host {} routes: {:?}",
                host + 1,
                c.sh_on(host, &["ip", "route"])
            );
            eprintln!(
                "host {} addrs: {:?}",
                host + 1,
                c.sh_on(host, &["ip", "-4", "-o", "addr"])
            );
        }
    }

    wait_until("3 edge pods Ready", limit, || {
        let p = ready_pods(&c, "edge")?;
        (p.len() == 3).then_some(()).ok_or(format!("{p:?}"))
    });
    for i in 0..3 {
        // The hostPort answers on the node address...
        let (status, body) = c.http_get(c.ip(i), 8080, "/data").expect("hostPort 8080");
        assert_eq!(
            (status, body.trim()),
            (200, "store-ok"),
            "edge on host {}",
            i + 1
        );
        // ...and the api ClusterIP at the same port, from the node itself, is still api.
        let api_vip: std::net::SocketAddr =
            format!("{api_ip}:8080").parse().expect("api ClusterIP");
        let got = wait_until(
            &format!("api's ClusterIP from host {}", i + 1),
            Duration::from_secs(20),
            || c.http_get_on(i, api_vip, "/cgi-bin/api"),
        )
        .0;
        assert_eq!(
            (got.0, got.1.trim()),
            (200, "store-ok"),
            "{api_vip} from host {} reached something other than api",
            i + 1
        );
    }

    // Steady state: through every host's nodePort, web -> api (ClusterIP by name) -> store
    // (headless, by name) succeeds every time.
    wait_until("the first call through", limit, || call(&c, 0));
    calls_succeed(&c, &[0, 1, 2], 30, "steady state");
    // web is `type: LoadBalancer`: every node serves it on its own address at the Service
    // port, and the Service's status lists those addresses (k3s's service load balancer).
    let mut hosts: Vec<String> = (0..3).map(|i| c.ip(i).to_string()).collect();
    hosts.sort();
    wait_until(
        "web's status.loadBalancer.ingress to list the 3 nodes",
        Duration::from_secs(20),
        || {
            let web: Service = c
                .get_one("service", "web")?
                .ok_or_else(|| "web not found".to_string())?;
            let mut ingress: Vec<String> = web
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .map(|lb| lb.ingress.iter().map(|i| i.ip.clone()).collect())
                .unwrap_or_default();
            ingress.sort();
            (ingress == hosts)
                .then_some(())
                .ok_or(format!("{ingress:?}"))
        },
    );
    for i in 0..3 {
        let (status, body) = c
            .http_get(c.ip(i), 80, "/cgi-bin/web")
            .unwrap_or_else(|e| panic!("web's load balancer on host {}: {e}", i + 1));
        assert_eq!((status, body.trim()), (200, "store-ok"), "host {}", i + 1);
    }

    // Every API server down: each node's DNS and proxy serve what they last saw, so calls by
    // name keep succeeding. Then the servers come back from their data dirs.
    for i in 0..3 {
        c.kill9_server(i);
    }
    calls_succeed(&c, &[0, 1, 2], 30, "with every API server down");
    for i in 0..3 {
        c.restart_server(i);
    }
    wait_until(
        "one leader among the restarted servers",
        Duration::from_secs(30),
        || c.agreed_leader(&[0, 1, 2]),
    );
    wait_until("the API answering again", Duration::from_secs(30), || {
        c.get_list::<Pod>("pods").map(|_| ())
    });

    // The agent of node 1 is killed with SIGKILL and started again: it adopts its pods' sandboxes
    // and containers as they are (same pod IPs, same containers, no restart).
    let on_node1 = |c: &Cluster| -> Result<Vec<(String, String, i32, String)>, String> {
        let pods: Vec<Pod> = c.get_list("pods")?;
        let mut v: Vec<_> = pods
            .into_iter()
            .filter(|p| p.spec.node_name == "node1" && p.metadata.deletion_timestamp.is_none())
            .map(|p| {
                let st = p.status.clone().unwrap_or_default();
                let restarts = st.container_statuses.iter().map(|s| s.restart_count).sum();
                (
                    p.metadata.uid.clone(),
                    p.metadata.name.clone(),
                    restarts,
                    st.pod_ip,
                )
            })
            .collect();
        v.sort();
        Ok(v)
    };
    let before = on_node1(&c).expect("pods on node1");
    assert!(!before.is_empty(), "no pods on node1");
    let containers_before = c
        .docker_on(0, &["ps", "-q", "--no-trunc"])
        .expect("docker ps");
    let hb = |c: &Cluster| -> Result<String, String> {
        let n: berth_proto::types::Node = c
            .get_one("node", "node1")?
            .ok_or_else(|| "node1 not found".to_string())?;
        Ok(format!(
            "{:?}",
            n.status.and_then(|s| s.last_heartbeat_time)
        ))
    };
    let hb0 = hb(&c).expect("heartbeat");
    c.kill9_agent(0);
    c.restart_agent(0);
    let mut seen = vec![hb0];
    wait_until(
        "two heartbeats from node1's restarted agent",
        Duration::from_secs(30),
        || {
            let h = hb(&c)?;
            if seen.last() != Some(&h) {
                seen.push(h);
            }
            (seen.len() >= 3).then_some(()).ok_or(format!("{seen:?}"))
        },
    );
    assert_eq!(
        on_node1(&c).expect("pods on node1"),
        before,
        "node1's pods (uid, name, restarts, pod IP) changed across its agent's restart"
    );
    let mut a: Vec<&str> = containers_before.lines().collect();
    let after = c
        .docker_on(0, &["ps", "-q", "--no-trunc"])
        .expect("docker ps");
    let mut b: Vec<&str> = after.lines().collect();
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "containers on node1 changed across its agent's restart"
    );
    calls_succeed(&c, &[0, 1, 2], 15, "after node1's agent restarted");

    // A store pod's sandbox dies (its network namespace and address with it): the agent
    // restarts the pod's containers in a new sandbox (the engine may hand out the same
    // address again), and the name follows.
    let (victim, node, _) = ready_pods(&c, "store").expect("store")[0].clone();
    let host = node
        .trim_start_matches("node")
        .parse::<usize>()
        .expect("node N")
        - 1;
    let restarts_of = |c: &Cluster| -> Result<i32, String> {
        let p: Pod = c
            .get_one("pod", &victim)?
            .ok_or_else(|| format!("{victim} not found"))?;
        Ok(p.status
            .unwrap_or_default()
            .container_statuses
            .iter()
            .map(|s| s.restart_count)
            .sum())
    };
    let restarts = restarts_of(&c).expect("restarts");
    let sandbox_filter = format!("name=_{victim}_POD_");
    let sandbox = c
        .docker_on(
            host,
            &["ps", "-q", "--no-trunc", "--filter", &sandbox_filter],
        )
        .expect("docker ps");
    let sandbox = sandbox.trim().to_string();
    assert!(!sandbox.is_empty(), "no sandbox of {victim} on {node}");
    c.docker_on(host, &["kill", &sandbox]).expect("docker kill");
    wait_until(
        &format!("{victim} Ready again in a new sandbox, its containers restarted"),
        limit,
        || {
            let now = c.docker_on(
                host,
                &["ps", "-q", "--no-trunc", "--filter", &sandbox_filter],
            )?;
            let now = now.trim();
            if now.is_empty() || now == sandbox {
                return Err(format!("sandbox {now:?} (was {sandbox})"));
            }
            let r = restarts_of(&c)?;
            if r <= restarts {
                return Err(format!("restarts {r} (were {restarts})"));
            }
            let p = ready_pods(&c, "store")?;
            p.iter()
                .any(|(n, _, ip)| *n == victim && !ip.is_empty())
                .then_some(())
                .ok_or(format!("{p:?}"))
        },
    );
    let events = c.cli_ok(&["get", "events"]);
    assert!(
        events.contains("SandboxChanged"),
        "no SandboxChanged event for {victim}: {events}"
    );
    wait_until(
        "calls succeed after the store pod's new sandbox",
        limit,
        || (0..3).try_for_each(|h| call(&c, h)),
    );
    calls_succeed(
        &c,
        &[0, 1, 2],
        15,
        "after a store pod's sandbox was replaced",
    );

    // Kill a store pod: the other one serves meanwhile, the replacement joins.
    let (victim, _, _) = ready_pods(&c, "store").expect("store")[0].clone();
    c.cli_ok(&["delete", "pod", &victim]);
    wait_until("a replacement store pod Ready", limit, || {
        let p = ready_pods(&c, "store")?;
        (p.len() == 2 && p.iter().all(|(n, _, _)| *n != victim))
            .then_some(())
            .ok_or(format!("{p:?}"))
    });
    wait_until(
        "calls succeed after the store pod's replacement",
        limit,
        || (0..3).try_for_each(|h| call(&c, h)),
    );
    calls_succeed(&c, &[0, 1, 2], 20, "after a store pod was replaced");

    // Lose node 3 (agent and its pods' host): its pods are replaced on nodes 1 and 2, routes
    // to its pod CIDR go away, and calls through nodes 1 and 2 keep succeeding.
    c.cut_node(2);
    wait_until(
        "every tier Ready again on nodes 1 and 2",
        Duration::from_secs(120),
        || {
            for app in ["store", "api", "web"] {
                let p = ready_pods(&c, app)?;
                if p.len() < 2 || p.iter().any(|(_, n, _)| n == "node3") {
                    return Err(format!("{app}: {p:?}"));
                }
            }
            (0..2).try_for_each(|h| call(&c, h))
        },
    );
    calls_succeed(&c, &[0, 1], 20, "after node 3 was lost");

    // Kill the leader server: the agents keep their routes and DNS answers; calls succeed.
    // Node 3 comes back (its server rejoins, so two servers are left after the kill).
    c.heal(2);
    let leader = wait_until(
        "one leader among the three servers",
        Duration::from_secs(30),
        || c.agreed_leader(&[0, 1, 2]),
    )
    .0;
    c.kill9_server(leader);
    let via: Vec<usize> = (0..2).collect();
    calls_succeed(&c, &via, 20, "right after the leader was killed");

    // A deleted Service's name no longer resolves, from inside a pod.
    let survivors: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| c.api_addr(i))
        .collect();
    let cli = c.cli_handle_for(&survivors.join(","));
    wait_until("api Service deleted", limit, || {
        let out = cli.run(&["delete", "service", "api"]);
        if out.ok() || out.stderr.contains("not found") {
            Ok(())
        } else {
            Err(out.to_string())
        }
    });
    let (_, node, _) = ready_pods(&c, "web").map_or_else(|_| Default::default(), |p| p[0].clone());
    let host = node
        .trim_start_matches("node")
        .parse::<usize>()
        .unwrap_or(1)
        - 1;
    wait_until(
        "api gives NXDOMAIN inside a web pod",
        Duration::from_secs(20),
        || {
            let names = c.docker_on(host, &["ps", "--format", "{{.Names}}"])?;
            let web = names
                .lines()
                .find(|n| n.contains("_web-") && !n.contains("_POD_"))
                .ok_or("no web container")?
                .to_string();
            let out = std::process::Command::new("docker")
                .args(["exec", &web, "nslookup", "api.default.svc.cluster.local."])
                .env(
                    "DOCKER_HOST",
                    format!("unix://{}", c.engine_socket(host).display()),
                )
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            (text.contains("NXDOMAIN") && !text.contains(&api_ip))
                .then_some(())
                .ok_or(text)
        },
    );
}
