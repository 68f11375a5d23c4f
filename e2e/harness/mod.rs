//! The e2e harness: hosts ([`net`]), processes ([`proc`]), the cluster and its CLI
//! ([`cluster`]), a resuming watch ([`watch`]) and an HTTP load generator ([`load`]);
//! for the proof scenarios a recorded store load ([`history`]) and watch checks ([`watchcheck`]).

pub mod cluster;
pub mod history;
pub mod load;
pub mod net;
pub mod proc;
pub mod watch;
pub mod watchcheck;

pub use cluster::{wait_until, Cluster, Opts};

/// A small Service manifest (no nodePort, selects nothing that runs): cheap objects that
/// scenarios write in sequence to prove that nothing acknowledged is lost.
pub fn seq_service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  labels:\n    e2e: seq\nspec:\n  selector:\n    app: {name}\n  ports:\n    - port: 80\n      targetPort: 8080\n"
    )
}

/// Path of a manifest shipped in the repo's `manifests/` directory.
pub fn repo_manifest(name: &str) -> String {
    format!("{}/manifests/{name}", env!("CARGO_MANIFEST_DIR"))
}
