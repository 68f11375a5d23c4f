//! Roles that compose several crates: `berth server` (the API server plus the leader-only
//! control loops) and `berth dev` (a whole single-node cluster in one process).
//!
//! The apiserver crate does not depend on the client, so the scheduler and controllers, which
//! talk to the API like every other loop, are started here: on every server, gated by
//! `run_while_leader` on the Raft leader id, so exactly one member runs them at a time and they
//! hand over on failover (every write they make is compare-and-swap, so an old leader's
//! in-flight writes cannot double-act).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_apiserver::{ServerArgs, ServerHandle};
use berth_client::{Client, ClientConfig};
use tokio_util::sync::CancellationToken;

/// Start the scheduler and the controllers on `server` whenever it is the Raft leader.
pub fn spawn_leader_loops(
    server: &ServerHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = Client::new(
        &[server.advertise_addr().to_string()],
        ClientConfig {
            deadline: Duration::from_secs(30),
            ..ClientConfig::default()
        },
    )
    .context("creating the control loops' client")?;
    let leader = server.leader_watch();
    let id = server.id();
    Ok(tokio::spawn(async move {
        berth_controllers::run::run_while_leader(leader, id, shutdown, move |token| {
            let client = client.clone();
            async move {
                let sched = tokio::spawn(berth_scheduler::run::run(
                    client.clone(),
                    berth_scheduler::run::Config::default(),
                    token.clone(),
                ));
                berth_controllers::run::run_controllers(
                    client,
                    berth_controllers::run::Config::default(),
                    token,
                )
                .await;
                let _ = sched.await;
            }
        })
        .await
    }))
}

/// `berth server`: an API server / Raft member, plus the control loops while it leads.
pub async fn run_server(args: ServerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut server = berth_apiserver::start(args).await?;
    tracing::info!(
        id = server.id(),
        addr = %server.advertise_addr(),
        "berth server is serving"
    );
    let loops_token = shutdown.child_token();
    let loops = spawn_leader_loops(&server, loops_token.clone())?;
    let res = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        r = server.wait() => r,
    };
    loops_token.cancel();
    let _ = loops.await;
    let stopped = server.shutdown().await;
    res.and(stopped)?;
    Ok(())
}

/// Default data directory of `berth dev`.
pub fn default_dev_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".berth").join("dev"))
}
