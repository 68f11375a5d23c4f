//! iptables for the cluster CIDR (flannel's rules), in Berth's own chains:
//!
//! ```text
//! filter FORWARD -> DOCKER-USER (when Docker jumps there) -> BERTH-FORWARD
//!        -s CLUSTER -j ACCEPT
//!        -d CLUSTER -j ACCEPT
//! nat POSTROUTING -> BERTH-POSTROUTING
//!        -s CLUSTER -d CLUSTER -j RETURN          pod to pod keeps its source
//!        -s CLUSTER ! -d 224.0.0.0/4 -j MASQUERADE pod egress leaving the cluster
//! ```
//!
//! Docker's FORWARD policy is DROP and its DOCKER chain only accepts published ports, so
//! routed pod traffic between nodes must be accepted before that: in DOCKER-USER, which Docker
//! jumps to first, or at the top of FORWARD when there is no Docker.
//!
//! Each sync reads a table once (`iptables -S`) and, unless Berth's chain and jump already
//! match, writes it once with `iptables-restore --noflush`: the own chain is declared (which
//! creates or flushes it) and refilled, and the jump is inserted at position 1 when missing,
//! all in one transaction, so there is never a moment without the ACCEPT rules. The jump is
//! only ever added or removed, never reordered (check-then-insert, like kube-proxy and
//! flannel).
//!
//! Note for whoever creates the Docker pod network: Docker adds its own
//! `-s POD_CIDR ! -o BRIDGE -j MASQUERADE` to POSTROUTING for a bridge network, which would
//! masquerade pod-to-pod traffic to other nodes (the RETURN above only leaves Berth's chain).
//! Create the network with `com.docker.network.bridge.enable_ip_masquerade=false`; Berth's
//! MASQUERADE rule covers egress instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;

use super::{NetError, IPTABLES_PERMISSION_HINT};

/// Berth's chain in the filter table.
pub const FORWARD_CHAIN: &str = "BERTH-FORWARD";
/// Berth's chain in the nat table.
pub const POSTROUTING_CHAIN: &str = "BERTH-POSTROUTING";

const DOCKER_USER: &str = "DOCKER-USER";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Bounds each iptables run; `-w` waits for the xtables lock without a limit otherwise.
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(30);

/// What one [`Firewall::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallSync {
    /// The filter chain jumping to [`FORWARD_CHAIN`]: `DOCKER-USER` or `FORWARD`.
    pub forward_parent: &'static str,
    /// Jumps inserted, as "table/CHAIN".
    pub jumps_added: Vec<String>,
    /// Jumps deleted (duplicates, or FORWARD's once Docker's DOCKER-USER took over).
    pub jumps_removed: Vec<String>,
    /// Tables whose Berth chain or jumps were written ("filter", "nat"); empty when all
    /// matched already.
    pub rewritten: Vec<&'static str>,
    /// `net.ipv4.ip_forward` was 0 and is now 1.
    pub enabled_ip_forward: bool,
}

/// The iptables binaries to run; [`Firewall::default`] takes them from `PATH`.
#[derive(Debug, Clone)]
pub struct Firewall {
    iptables: PathBuf,
    iptables_restore: PathBuf,
}

impl Default for Firewall {
    fn default() -> Self {
        Firewall::with_binaries("iptables", "iptables-restore")
    }
}

/// [`Firewall::sync`] with the binaries from `PATH`.
pub async fn sync_firewall(cluster_cidr: Ipv4Net) -> Result<FirewallSync, NetError> {
    Firewall::default().sync(cluster_cidr).await
}

/// [`Firewall::teardown`] with the binaries from `PATH`.
pub async fn teardown_firewall() -> Result<(), NetError> {
    Firewall::default().teardown().await
}

impl Firewall {
    pub fn with_binaries(
        iptables: impl Into<PathBuf>,
        iptables_restore: impl Into<PathBuf>,
    ) -> Self {
        Firewall {
            iptables: iptables.into(),
            iptables_restore: iptables_restore.into(),
        }
    }

    /// Enables `net.ipv4.ip_forward` and makes Berth's chains and jumps match `cluster_cidr`.
    /// The three steps (sysctl, filter, nat) are independent: all are tried, failures come
    /// back together.
    pub async fn sync(&self, cluster_cidr: Ipv4Net) -> Result<FirewallSync, NetError> {
        let cluster = cluster_cidr.trunc();
        let mut done = FirewallSync {
            forward_parent: "FORWARD",
            ..FirewallSync::default()
        };
        let mut errors = Vec::new();
        match enable_ip_forward() {
            Ok(changed) => done.enabled_ip_forward = changed,
            Err(e) => errors.push(e),
        }
        for table in [Table::Filter, Table::Nat] {
            match self.sync_table(table, cluster).await {
                Ok(plan) => {
                    if table == Table::Filter {
                        done.forward_parent = plan.parent;
                    }
                    if plan.script.is_some() {
                        done.rewritten.push(table.name());
                    }
                    done.jumps_added.extend(plan.added);
                    done.jumps_removed.extend(plan.removed);
                }
                Err(e) => errors.push(e),
            }
        }
        NetError::from_steps("firewall", errors)?;
        Ok(done)
    }

    /// Removes Berth's jumps and chains from both tables; a no-op when they are absent.
    /// Leaves `ip_forward` on: Docker and others rely on it too.
    pub async fn teardown(&self) -> Result<(), NetError> {
        let mut errors = Vec::new();
        for table in [Table::Filter, Table::Nat] {
            let result = async {
                let dump = self.dump(table).await?;
                let script = teardown_script(table, &dump);
                if let Some(script) = script {
                    self.restore(&script).await?;
                }
                Ok::<_, NetError>(())
            }
            .await;
            if let Err(e) = result {
                errors.push(e);
            }
        }
        NetError::from_steps("firewall teardown", errors)
    }

    async fn sync_table(&self, table: Table, cluster: Ipv4Net) -> Result<TablePlan, NetError> {
        let dump = self.dump(table).await?;
        let plan = sync_script(table, cluster, &dump);
        if let Some(script) = &plan.script {
            self.restore(script).await?;
        }
        Ok(plan)
    }

    async fn dump(&self, table: Table) -> Result<String, NetError> {
        run(&self.iptables, &["-w", "-t", table.name(), "-S"], None).await
    }

    async fn restore(&self, script: &str) -> Result<(), NetError> {
        run(&self.iptables_restore, &["-w", "--noflush"], Some(script))
            .await
            .map(drop)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    Filter,
    Nat,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }

    fn chain(self) -> &'static str {
        match self {
            Table::Filter => FORWARD_CHAIN,
            Table::Nat => POSTROUTING_CHAIN,
        }
    }

    /// Chains that may hold Berth's jump (all are cleaned; the first present one is used).
    fn parents(self) -> &'static [&'static str] {
        match self {
            Table::Filter => &[DOCKER_USER, "FORWARD"],
            Table::Nat => &["POSTROUTING"],
        }
    }

    /// The rules of Berth's chain, in iptables-restore syntax (without `-A CHAIN`).
    fn rules(self, cluster: Ipv4Net) -> Vec<String> {
        match self {
            Table::Filter => vec![
                format!("-s {cluster} -m comment --comment \"berth: pod traffic from the cluster CIDR\" -j ACCEPT"),
                format!("-d {cluster} -m comment --comment \"berth: pod traffic to the cluster CIDR\" -j ACCEPT"),
            ],
            Table::Nat => vec![
                format!("-s {cluster} -d {cluster} -m comment --comment \"berth: pod to pod keeps its source\" -j RETURN"),
                format!("-s {cluster} ! -d 224.0.0.0/4 -m comment --comment \"berth: pod egress leaving the cluster CIDR\" -j MASQUERADE"),
            ],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TablePlan {
    /// None when the table already matches.
    pub script: Option<String>,
    pub parent: &'static str,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// The pure step: from `iptables -t TABLE -S` output to the iptables-restore input that
/// refills Berth's chain and fixes its jump.
pub(crate) fn sync_script(table: Table, cluster: Ipv4Net, dump: &str) -> TablePlan {
    let chain = table.chain();
    // Docker's DOCKER-USER is used only when FORWARD really jumps to it; otherwise it would
    // hold Berth's rules where no packet looks.
    let parent = match table {
        Table::Filter if jump_count(dump, "FORWARD", DOCKER_USER) > 0 => DOCKER_USER,
        Table::Filter => "FORWARD",
        Table::Nat => "POSTROUTING",
    };
    let wanted: Vec<String> = table
        .rules(cluster)
        .iter()
        .map(|r| format!("-A {chain} {r}"))
        .collect();
    let have: Vec<&str> = dump
        .lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with(&format!("-A {chain} ")))
        .collect();
    let chain_exists = dump.lines().any(|l| l.trim_end() == format!("-N {chain}"));
    // The rules are written in the form `iptables -S` prints them, so an unchanged chain
    // compares equal; if some iptables version prints them differently, this only costs a
    // rewrite per sync.
    let mut rewrite = !chain_exists || have != wanted;
    let mut script = format!("*{}\n:{chain} - [0:0]\n", table.name());
    for rule in &wanted {
        script.push_str(rule);
        script.push('\n');
    }
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for &p in table.parents() {
        let have = jump_count(dump, p, chain);
        let keep = usize::from(p == parent);
        for _ in keep..have {
            script.push_str(&format!("-D {p} -j {chain}\n"));
            removed.push(format!("{}/{p}", table.name()));
        }
        if have == 0 && keep == 1 {
            script.push_str(&format!("-I {p} 1 -j {chain}\n"));
            added.push(format!("{}/{p}", table.name()));
        }
    }
    script.push_str("COMMIT\n");
    rewrite |= !added.is_empty() || !removed.is_empty();
    TablePlan {
        script: rewrite.then_some(script),
        parent,
        added,
        removed,
    }
}

/// The iptables-restore input that removes Berth's jumps and chain, or None if there are none.
pub(crate) fn teardown_script(table: Table, dump: &str) -> Option<String> {
    let chain = table.chain();
    let mut body = String::new();
    for &p in table.parents() {
        for _ in 0..jump_count(dump, p, chain) {
            body.push_str(&format!("-D {p} -j {chain}\n"));
        }
    }
    if dump.lines().any(|l| l.trim_end() == format!("-N {chain}")) {
        body.push_str(&format!("-F {chain}\n-X {chain}\n"));
    }
    (!body.is_empty()).then(|| format!("*{}\n{body}COMMIT\n", table.name()))
}

/// How many times `parent` holds the plain jump `-j target` (as `iptables -S` prints it).
fn jump_count(dump: &str, parent: &str, target: &str) -> usize {
    let line = format!("-A {parent} -j {target}");
    dump.lines().filter(|l| l.trim_end() == line).count()
}

/// Sets `net.ipv4.ip_forward` to 1; `Ok(true)` if it was off. Plain std::fs on purpose: /proc
/// is instant, and a blocking-pool thread might sit in another network namespace than the
/// caller's thread.
fn enable_ip_forward() -> Result<bool, NetError> {
    let err = |source| NetError::Sysctl {
        path: IP_FORWARD.to_string(),
        source,
    };
    let now = std::fs::read_to_string(IP_FORWARD).map_err(err)?;
    if now.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(IP_FORWARD, "1\n").map_err(err)?;
    Ok(true)
}

/// Runs an iptables binary, feeding `stdin`, and returns its stdout.
async fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let shown = {
        let mut s = format!("{} {}", program.display(), args.join(" "));
        if let Some(input) = stdin {
            s.push_str(&format!(" < [{}]", input.trim_end().replace('\n', "; ")));
        }
        s
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NetError::IptablesMissing {
            program: program.display().to_string(),
            source,
        })?;
    let io_failed = |e: std::io::Error| NetError::Iptables {
        command: shown.clone(),
        status: "I/O error".to_string(),
        stderr: e.to_string(),
        hint: "the next sync retries",
    };
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await.map_err(io_failed)?;
        // Dropping the pipe closes it: iptables-restore reads to EOF.
    }
    let output = tokio::time::timeout(IPTABLES_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| NetError::IptablesTimeout {
            command: shown.clone(),
            seconds: IPTABLES_TIMEOUT.as_secs(),
        })?
        .map_err(io_failed)?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr)
        .trim()
        .replace('\n', " | ");
    let hint = if stderr.contains("Permission denied") || stderr.contains("must be root") {
        IPTABLES_PERMISSION_HINT
    } else if stderr.contains("incompatible") {
        "the table holds rules this iptables cannot parse (written with nft directly, or by \
         another iptables version); inspect with `nft list ruleset`"
    } else {
        "the next sync retries"
    };
    Err(NetError::Iptables {
        command: shown,
        status: output.status.to_string(),
        stderr,
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_FILTER: &str = "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-N DOCKER\n\
        -N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
        -A FORWARD -o docker0 -j DOCKER\n-A DOCKER-USER -j RETURN\n";

    fn cluster() -> Ipv4Net {
        "10.42.0.0/16".parse().expect("cidr")
    }

    #[test]
    fn jumps_from_docker_user_when_docker_jumps_there() {
        let plan = sync_script(Table::Filter, cluster(), DOCKER_FILTER);
        assert_eq!(plan.parent, DOCKER_USER);
        assert_eq!(plan.added, vec!["filter/DOCKER-USER"]);
        let script = plan.script.expect("written");
        assert!(
            script.contains("-I DOCKER-USER 1 -j BERTH-FORWARD\n"),
            "{script}"
        );
        assert!(script.starts_with("*filter\n:BERTH-FORWARD - [0:0]\n"));
        assert!(script.contains("-A BERTH-FORWARD -s 10.42.0.0/16 "));
        assert!(script.contains("-A BERTH-FORWARD -d 10.42.0.0/16 "));
        assert!(script.ends_with("COMMIT\n"));
    }

    #[test]
    fn jumps_from_forward_without_docker_and_moves_once_docker_appears() {
        let plain = "-P FORWARD ACCEPT\n";
        let plan = sync_script(Table::Filter, cluster(), plain);
        assert_eq!(
            (plan.parent, plan.added.clone()),
            ("FORWARD", vec!["filter/FORWARD".to_string()])
        );

        let later = format!("{DOCKER_FILTER}-N BERTH-FORWARD\n-A FORWARD -j BERTH-FORWARD\n");
        let plan = sync_script(Table::Filter, cluster(), &later);
        assert_eq!(plan.removed, vec!["filter/FORWARD"]);
        assert_eq!(plan.added, vec!["filter/DOCKER-USER"]);
    }

    #[test]
    fn an_existing_jump_is_kept_and_duplicates_removed() {
        let dump = "-N BERTH-POSTROUTING\n-A POSTROUTING -j BERTH-POSTROUTING\n\
            -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n\
            -A POSTROUTING -j BERTH-POSTROUTING\n";
        let plan = sync_script(Table::Nat, cluster(), dump);
        assert!(plan.added.is_empty());
        assert_eq!(plan.removed, vec!["nat/POSTROUTING"]);
        let script = plan.script.expect("written");
        let rules: Vec<&str> = script
            .lines()
            .filter(|l| l.starts_with("-A BERTH-POSTROUTING"))
            .collect();
        assert_eq!(rules.len(), 2);
        assert!(rules[0].contains("-d 10.42.0.0/16") && rules[0].ends_with("-j RETURN"));
        assert!(rules[1].contains("! -d 224.0.0.0/4") && rules[1].ends_with("-j MASQUERADE"));
    }

    #[test]
    fn nothing_is_written_when_chain_and_jump_already_match() {
        let first = sync_script(Table::Nat, cluster(), "-P POSTROUTING ACCEPT\n");
        let script = first.script.expect("first sync writes");
        // What `iptables -t nat -S` prints after that restore.
        let mut dump = String::from("-P POSTROUTING ACCEPT\n-N BERTH-POSTROUTING\n");
        dump.push_str("-A POSTROUTING -j BERTH-POSTROUTING\n");
        for l in script
            .lines()
            .filter(|l| l.starts_with("-A BERTH-POSTROUTING "))
        {
            dump.push_str(l);
            dump.push('\n');
        }
        assert_eq!(sync_script(Table::Nat, cluster(), &dump).script, None);
        let other: Ipv4Net = "10.50.0.0/16".parse().expect("cidr");
        assert!(
            sync_script(Table::Nat, other, &dump).script.is_some(),
            "CIDR changed"
        );
    }

    #[test]
    fn teardown_removes_jumps_and_chain_and_is_nothing_when_absent() {
        let dump = format!("{DOCKER_FILTER}-N BERTH-FORWARD\n-A DOCKER-USER -j BERTH-FORWARD\n");
        assert_eq!(
            teardown_script(Table::Filter, &dump).as_deref(),
            Some("*filter\n-D DOCKER-USER -j BERTH-FORWARD\n-F BERTH-FORWARD\n-X BERTH-FORWARD\nCOMMIT\n")
        );
        assert_eq!(teardown_script(Table::Filter, DOCKER_FILTER), None);
    }
}
