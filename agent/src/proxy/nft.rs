//! The in-kernel Service datapath: the [`ProxyPlan`] rendered as one Berth-owned nftables table
//! (`table ip berth`) and programmed with the `nft` binary, the way kube-proxy's nftables mode
//! does it.
//!
//! # The table
//!
//! ```text
//! nat-prerouting / nat-output (dstnat)
//!   ip daddr . tcp dport vmap @service-ips
//!     ClusterIP . port             -> goto svc-NS/NAME/tcp/PORT
//!     node address . nodePort      -> goto ext-NS/NAME/tcp/PORT   (and 127.0.0.1 . nodePort,
//!     node address . LB port       -> goto ext-...                  like the userspace listeners)
//! ext-*   mark for masquerade (the client may not route back through this node), goto svc-*
//! svc-*   mark for masquerade unless the source is a pod (cluster CIDR);
//!         numgen random mod N vmap { 0 : goto ep-..., 1 : goto ep-..., ... }  (ready endpoints)
//! ep-*    hairpin: a pod reaching itself is masqueraded; dnat to IP:PORT
//! nat-postrouting (srcnat)   marked and not leaving through lo -> masquerade fully-random
//! filter-input/forward/output   new connections to a Service port without ready endpoints are
//!         rejected with a TCP reset (@no-endpoints); packets from outside to 127.0.0.0/8 are
//!         dropped (route_localnet is on for loopback nodePorts)
//! ```
//!
//! # Programming
//!
//! Every change is ONE `nft -f` transaction that deletes and re-creates the whole table, so
//! the kernel switches every new connection from the old rules to the new ones at once (a
//! blue-green switch is atomic), and a rule set the kernel rejects changes nothing (the
//! previous table stays). Established connections keep their conntrack entries and drain:
//! NAT rules only see a connection's first packet. The agent owns only this table: it
//! rebuilds it from the cluster state when it starts (adoption: the table a previous agent
//! left keeps forwarding until then) and [`remove_table`] deletes it (`berth agent --cleanup`).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;

use super::{ProxyPlan, ServiceBackends};

/// The nftables family and name of Berth's table.
pub const TABLE: &str = "ip berth";
/// The packet mark bit meaning "masquerade this connection" (kube-proxy's bit).
pub const MASQUERADE_MARK: u32 = 0x4000;
/// How long one `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(20);

/// What the rendered rules need to know about this node besides the plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The pod address range: connections from inside it to a ClusterIP keep their source
    /// (the endpoint answers the pod directly); from outside it they are masqueraded. None:
    /// masquerade every Service connection.
    pub cluster_cidr: Option<Ipv4Net>,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("`{program}` is not runnable: {source}; install nftables (`apt-get install nftables`) or run the agent with --proxy-mode userspace")]
    Missing {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}{hint}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
        hint: &'static str,
    },
    #[error("`{command}` did not finish within {}s; the previous Service rules stay", NFT_TIMEOUT.as_secs())]
    Timeout { command: String },
}

impl NftError {
    /// The kernel refused for lack of privileges (not root / no CAP_NET_ADMIN).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, NftError::Failed { stderr, .. } if stderr.contains("Operation not permitted"))
    }
}

/// A chain-name-safe rendering of a name: Kubernetes names are `[a-z0-9.-]`; anything else
/// (never valid in a stored object) becomes `_` so one odd name cannot break the transaction.
fn ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `NS/NAME/tcp[/PORT]`: the Service port's part of its chain names.
fn service_id(s: &ServiceBackends) -> String {
    let mut id = format!("{}/{}/tcp", ident(&s.namespace), ident(&s.name));
    if !s.port_name.is_empty() {
        id.push('/');
        id.push_str(&ident(&s.port_name));
    }
    id
}

fn v4(addr: &SocketAddr) -> Option<(Ipv4Addr, u16)> {
    match addr.ip() {
        IpAddr::V4(ip) => Some((ip, addr.port())),
        IpAddr::V6(_) => None,
    }
}

/// The addresses a Service port is reached at on this node: `(address, port, external)`,
/// external meaning a nodePort or load-balancer port (always masqueraded). IPv6 addresses are
/// left out (the table is IPv4, as the cluster network is).
fn frontends(s: &ServiceBackends) -> Vec<(Ipv4Addr, u16, bool)> {
    let mut out = Vec::new();
    for (i, a) in s.also_listen.iter().enumerate() {
        if let Some((ip, port)) = v4(a) {
            // The ClusterIP comes first; the rest are load-balancer ports on node addresses.
            let external = i > 0 || s.listen_addrs.contains(&a.ip());
            out.push((ip, port, external));
        }
    }
    if s.node_port != 0 {
        for ip in &s.listen_addrs {
            if let IpAddr::V4(ip) = ip {
                out.push((*ip, s.node_port, true));
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    out
}

/// The whole `table ip berth { ... }` for `plan` (deterministic: the same plan gives the same
/// text, which is what the golden-file test and the "unchanged, skip" check rely on).
pub fn render(plan: &ProxyPlan, facts: &NodeFacts) -> String {
    let mut service_ips: Vec<String> = Vec::new();
    let mut no_endpoints: Vec<String> = Vec::new();
    let mut chains = String::new();
    for s in &plan.services {
        let id = service_id(s);
        let backends: Vec<(Ipv4Addr, u16)> = {
            let mut b: Vec<_> = s.backends.iter().filter_map(v4).collect();
            b.sort();
            b.dedup();
            b
        };
        let fronts = frontends(s);
        if fronts.is_empty() {
            continue;
        }
        if backends.is_empty() {
            for (ip, port, _) in &fronts {
                no_endpoints.push(format!("{ip} . {port}"));
            }
            continue;
        }
        let mut has_external = false;
        for (ip, port, external) in &fronts {
            let target = if *external { "ext" } else { "svc" };
            has_external |= *external;
            service_ips.push(format!("{ip} . {port} : goto {target}-{id}"));
        }
        if has_external {
            let _ = write!(
                chains,
                "\n\tchain ext-{id} {{\n\t\tjump mark-for-masquerade\n\t\tgoto svc-{id}\n\t}}\n"
            );
        }
        let _ = write!(chains, "\n\tchain svc-{id} {{\n");
        match facts.cluster_cidr {
            Some(cidr) => {
                let _ = writeln!(chains, "\t\tip saddr != {cidr} jump mark-for-masquerade");
            }
            None => chains.push_str("\t\tjump mark-for-masquerade\n"),
        }
        let ep_chain = |(ip, port): &(Ipv4Addr, u16)| format!("ep-{id}__{ip}/{port}");
        if backends.len() == 1 {
            let _ = writeln!(chains, "\t\tgoto {}", ep_chain(&backends[0]));
        } else {
            let arms: Vec<String> = backends
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{i} : goto {}", ep_chain(b)))
                .collect();
            let _ = writeln!(
                chains,
                "\t\tnumgen random mod {} vmap {{ {} }}",
                backends.len(),
                arms.join(", ")
            );
        }
        chains.push_str("\t}\n");
        for b in &backends {
            let (ip, port) = b;
            let _ = write!(
                chains,
                "\n\tchain {} {{\n\t\tip saddr {ip} jump mark-for-masquerade\n\t\tmeta l4proto tcp dnat to {ip}:{port}\n\t}}\n",
                ep_chain(b)
            );
        }
    }
    service_ips.sort();
    no_endpoints.sort();
    let elements = |v: &[String]| {
        if v.is_empty() {
            String::new()
        } else {
            format!("\t\telements = {{ {} }}\n", v.join(",\n\t\t\t     "))
        }
    };
    let mark = format!("0x{MASQUERADE_MARK:08x}");
    let mut out = String::new();
    let _ = write!(
        out,
        "# Berth's Service datapath (berth agent --proxy-mode nftables), rebuilt whole by the\n\
         # agent on every Service or Endpoints change; revision {revision}. Do not edit.\n\
         table {TABLE} {{\n\
         \tmap service-ips {{\n\
         \t\ttype ipv4_addr . inet_service : verdict\n\
         {service_elements}\
         \t}}\n\
         \n\
         \tset no-endpoints {{\n\
         \t\ttype ipv4_addr . inet_service\n\
         {no_endpoint_elements}\
         \t}}\n\
         \n\
         \tchain nat-prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip protocol tcp ip daddr . tcp dport vmap @service-ips\n\
         \t}}\n\
         \n\
         \tchain nat-output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip protocol tcp ip daddr . tcp dport vmap @service-ips\n\
         \t}}\n\
         \n\
         \tchain nat-postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {mark} == 0x00000000 return\n\
         \t\tmeta mark set meta mark ^ {mark}\n\
         \t\toifname \"lo\" return\n\
         \t\tmasquerade fully-random\n\
         \t}}\n\
         \n\
         \tchain mark-for-masquerade {{\n\
         \t\tmeta mark set meta mark | {mark}\n\
         \t}}\n\
         \n\
         \tchain reject-no-endpoints {{\n\
         \t\tip protocol tcp ip daddr . tcp dport @no-endpoints reject with tcp reset\n\
         \t}}\n\
         \n\
         \tchain filter-input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tct state new jump reject-no-endpoints\n\
         \t\tiifname != \"lo\" ip daddr 127.0.0.0/8 drop\n\
         \t}}\n\
         \n\
         \tchain filter-forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tct state new jump reject-no-endpoints\n\
         \t}}\n\
         \n\
         \tchain filter-output {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\tct state new jump reject-no-endpoints\n\
         \t}}\n\
         {chains}\
         }}\n",
        revision = plan.revision,
        service_elements = elements(&service_ips),
        no_endpoint_elements = elements(&no_endpoints),
    );
    out
}

/// The transaction that replaces Berth's table with `table` atomically (creating it first
/// makes the delete valid when there is none).
fn replace_transaction(table: &str) -> String {
    format!("add table {TABLE}\ndelete table {TABLE}\n{table}")
}

/// Runs `nft ARGS` with `stdin` as its input file.
async fn run_nft(
    program: &std::path::Path,
    args: &[&str],
    stdin: &str,
) -> Result<String, NftError> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NftError::Missing {
            program: program.display().to_string(),
            source,
        })?;
    let input = stdin.to_string();
    let mut pipe = child.stdin.take();
    let run = async move {
        if let Some(p) = pipe.as_mut() {
            // A write error shows up as nft's own failure below.
            let _ = p.write_all(input.as_bytes()).await;
        }
        drop(pipe);
        child.wait_with_output().await
    };
    let out = match tokio::time::timeout(NFT_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(source)) => {
            return Err(NftError::Missing {
                program: program.display().to_string(),
                source,
            })
        }
        Err(_) => return Err(NftError::Timeout { command }),
    };
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let hint = if stderr.contains("Operation not permitted") {
        "; needs root / CAP_NET_ADMIN"
    } else if stderr.contains("No such file or directory") && args.contains(&"-f") {
        "; the kernel lacks an nftables feature Berth uses (nf_tables, nft_nat, nft_numgen, nft_fib, nft_reject, nft_masq)"
    } else {
        ""
    };
    Err(NftError::Failed {
        command,
        status: out.status.to_string(),
        stderr,
        hint,
    })
}

/// The nftables datapath of one node: renders plans and programs them, one transaction each.
#[derive(Debug)]
pub struct NftDatapath {
    program: PathBuf,
    facts: NodeFacts,
    /// The table text last accepted by the kernel: an identical plan is not programmed again.
    applied: Option<String>,
}

impl NftDatapath {
    pub fn new(facts: NodeFacts) -> NftDatapath {
        NftDatapath::with_program("nft", facts)
    }

    /// With another `nft` binary (tests point this at a missing or failing one).
    pub fn with_program(program: impl Into<PathBuf>, facts: NodeFacts) -> NftDatapath {
        NftDatapath {
            program: program.into(),
            facts,
            applied: None,
        }
    }

    pub fn program_path(&self) -> &std::path::Path {
        &self.program
    }

    /// Whether this node can run the datapath: `nft` runs, we may change the ruleset, and the
    /// kernel has every feature the table uses. A dry run (`nft -c`) of an empty plan's table:
    /// nothing is changed, a table a previous agent left keeps forwarding.
    pub async fn probe(&self) -> Result<(), NftError> {
        let table = render(&ProxyPlan::default(), &self.facts);
        run_nft(
            &self.program,
            &["-c", "-f", "-"],
            &replace_transaction(&table),
        )
        .await?;
        Ok(())
    }

    /// Makes the kernel forward what the table DNATs: `net.ipv4.ip_forward` (endpoints on
    /// other nodes) and `net.ipv4.conf.all.route_localnet` (127.0.0.1:nodePort to an endpoint
    /// elsewhere, as kube-proxy's iptables mode did; the table drops packets from outside
    /// addressed to 127.0.0.0/8).
    pub fn enable_forwarding() -> Result<(), String> {
        for path in [
            "/proc/sys/net/ipv4/ip_forward",
            "/proc/sys/net/ipv4/conf/all/route_localnet",
        ] {
            let current = std::fs::read_to_string(path).unwrap_or_default();
            if current.trim() != "1" {
                std::fs::write(path, "1").map_err(|e| {
                    format!("cannot set {path} to 1: {e}; needs root and a writable /proc/sys")
                })?;
            }
        }
        Ok(())
    }

    /// Programs `plan` as one transaction; `Ok(false)` when the kernel already has exactly
    /// this table. On an error nothing changed: the previous table keeps forwarding.
    pub async fn program(&mut self, plan: &ProxyPlan) -> Result<bool, NftError> {
        let table = render(plan, &self.facts);
        // The revision comment differs between plans with the same rules; compare without it.
        let rules = table.lines().skip(2).collect::<Vec<_>>().join("\n");
        if self.applied.as_deref() == Some(rules.as_str()) {
            return Ok(false);
        }
        run_nft(&self.program, &["-f", "-"], &replace_transaction(&table)).await?;
        self.applied = Some(rules);
        Ok(true)
    }

    /// Forget what was programmed (the next [`NftDatapath::program`] writes the table again).
    pub fn forget(&mut self) {
        self.applied = None;
    }
}

/// Deletes Berth's table; `Ok(false)` when there was none. Leaves everything else alone.
pub async fn remove_table(program: &std::path::Path) -> Result<bool, NftError> {
    match run_nft(program, &["delete", "table", "ip", "berth"], "").await {
        Ok(_) => Ok(true),
        Err(NftError::Failed { stderr, .. })
            if stderr.contains("No such file or directory")
                || stderr.contains("does not exist") =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// The current ruleset of Berth's table as `nft list table` prints it (None: no table).
pub async fn list_table(program: &std::path::Path) -> Result<Option<String>, NftError> {
    match run_nft(program, &["list", "table", "ip", "berth"], "").await {
        Ok(text) => Ok(Some(text)),
        Err(NftError::Failed { stderr, .. })
            if stderr.contains("No such file or directory")
                || stderr.contains("does not exist") =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(
        name: &str,
        port_name: &str,
        node_port: u16,
        also: &[&str],
        backends: &[&str],
    ) -> ServiceBackends {
        ServiceBackends {
            namespace: "default".into(),
            name: name.into(),
            port_name: port_name.into(),
            node_port,
            listen_addrs: if node_port == 0 {
                Vec::new()
            } else {
                vec!["10.0.0.5".parse().expect("ip"), super::super::LOOPBACK]
            },
            also_listen: also.iter().map(|a| a.parse().expect("addr")).collect(),
            backends: backends.iter().map(|a| a.parse().expect("addr")).collect(),
        }
    }

    fn golden_plan() -> ProxyPlan {
        ProxyPlan {
            revision: 42,
            services: vec![
                // ClusterIP only, two endpoints, one of them listed twice.
                port(
                    "api",
                    "",
                    0,
                    &["10.43.0.20:8080"],
                    &["10.42.1.7:9000", "10.42.0.5:9000", "10.42.0.5:9000"],
                ),
                // No ready endpoint: rejected, not hung.
                port("empty", "http", 30081, &["10.43.0.30:80"], &[]),
                // LoadBalancer: ClusterIP, node address at the Service port, and nodePort.
                port(
                    "shop",
                    "http",
                    30090,
                    &["10.43.0.10:80", "10.0.0.5:80"],
                    &["10.42.0.9:8080"],
                ),
            ],
        }
    }

    #[test]
    fn rendered_table_matches_the_golden_file() {
        let facts = NodeFacts {
            cluster_cidr: Some("10.42.0.0/16".parse().expect("cidr")),
        };
        let got = render(&golden_plan(), &facts);
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/proxy/testdata/berth.nft");
        if std::env::var_os("BERTH_UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &got).expect("write golden file");
        }
        let want = std::fs::read_to_string(path).expect("read the golden file");
        assert_eq!(
            got, want,
            "the rendered table differs from {path}; if the change is intended, rerun with \
             BERTH_UPDATE_GOLDEN=1 and review the diff"
        );
    }

    #[test]
    fn endpoints_are_spread_by_numgen_over_ready_ones_and_hairpin_is_masqueraded() {
        let facts = NodeFacts::default();
        let table = render(&golden_plan(), &facts);
        assert!(table.contains(
            "numgen random mod 2 vmap { 0 : goto ep-default/api/tcp__10.42.0.5/9000, \
             1 : goto ep-default/api/tcp__10.42.1.7/9000 }"
        ));
        assert!(table.contains("ip saddr 10.42.0.5 jump mark-for-masquerade"));
        // Without a cluster CIDR every ClusterIP connection is masqueraded.
        assert!(table.contains("chain svc-default/api/tcp {\n\t\tjump mark-for-masquerade"));
        // The Service without endpoints is rejected on every address it has.
        assert!(table.contains("10.43.0.30 . 80"));
        assert!(table.contains("127.0.0.1 . 30081"));
        assert!(!table.contains("svc-default/empty"));
    }

    #[test]
    fn node_ports_and_load_balancer_ports_go_through_the_external_chain() {
        let table = render(&golden_plan(), &NodeFacts::default());
        for key in ["10.0.0.5 . 30090", "127.0.0.1 . 30090", "10.0.0.5 . 80"] {
            assert!(
                table.contains(&format!("{key} : goto ext-default/shop/tcp/http")),
                "{key} missing:\n{table}"
            );
        }
        assert!(table.contains("10.43.0.10 . 80 : goto svc-default/shop/tcp/http"));
    }

    #[test]
    fn odd_names_cannot_break_the_chain_names() {
        let mut p = port("we b\"x", "p{1}", 0, &["10.43.0.1:80"], &["10.42.0.1:80"]);
        p.namespace = "n;s".into();
        let table = render(
            &ProxyPlan {
                revision: 1,
                services: vec![p],
            },
            &NodeFacts::default(),
        );
        assert!(table.contains("chain svc-n_s/we_b_x/tcp/p_1_ {"), "{table}");
    }
}
