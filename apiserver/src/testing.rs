//! In-process API server clusters for tests (feature `testing`; the testkit reuses it).
//!
//! [`TestCluster::start`] runs N real servers on `127.0.0.1:0` in this process, each with its
//! own data dir under one temp dir: member 0 `--init`, the others `--join` member 0. Members
//! can be stopped (graceful shutdown, data dir kept) and restarted on the same address.
//! Everything waits on conditions with deadlines ([`wait_until`]), never on bare sleeps.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use berth_proto::pb::api_client::ApiClient;
use tonic::transport::Channel;

use crate::server::{start, ServerArgs, ServerError, ServerHandle};

/// Poll `check` until it returns Some, or fail after `timeout` with `what` in the message.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A gRPC client to one server over mutual TLS with `tls` (e.g. [`TestCluster::admin_tls`]).
pub async fn client(
    addr: SocketAddr,
    tls: &berth_tls::ClientTls,
) -> Result<ApiClient<Channel>, tonic::transport::Error> {
    let channel = tls.endpoint(&addr.to_string())?.connect().await?;
    Ok(ApiClient::new(channel).max_decoding_message_size(usize::MAX))
}

struct Member {
    args: ServerArgs,
    addr: SocketAddr,
    handle: Option<ServerHandle>,
}

/// N servers in this process. Dropping it without [`TestCluster::shutdown`] aborts the
/// servers' tasks; shut down to stop them gracefully.
pub struct TestCluster {
    _dir: tempfile::TempDir,
    members: Vec<Member>,
    /// The cluster's join token and admin credential (from member 0's `--init`).
    token: String,
    admin: Option<berth_tls::ClientTls>,
}

impl TestCluster {
    /// Start `n` members with default settings.
    pub async fn start(n: usize) -> Result<TestCluster, ServerError> {
        Self::start_with(n, |_| {}).await
    }

    /// Start `n` members; `configure` adjusts every member's args (e.g. snapshot threshold).
    pub async fn start_with(
        n: usize,
        configure: impl Fn(&mut ServerArgs),
    ) -> Result<TestCluster, ServerError> {
        let dir = tempfile::tempdir().map_err(|source| ServerError::DataDir {
            path: PathBuf::from("<tempdir>"),
            source,
        })?;
        let mut cluster = TestCluster {
            _dir: dir,
            members: Vec::new(),
            token: String::new(),
            admin: None,
        };
        for i in 0..n {
            let mut args = ServerArgs::new(cluster._dir.path().join(format!("member-{i}")));
            args.listen = "127.0.0.1:0".to_string();
            args.watch_bookmark_ms = 500;
            if i == 0 {
                args.init = true;
            } else {
                args.join = Some(cluster.members[0].addr.to_string());
                args.token = Some(berth_tls::Secret::new(cluster.token.clone()));
            }
            configure(&mut args);
            let handle = start(args.clone()).await?;
            if i == 0 {
                cluster.token = handle.join_token();
                let admin = berth_tls::AdminConfig::read(&handle.admin_config_path())?;
                cluster.admin = Some(berth_tls::ClientTls::new(
                    admin.certificate_authority.clone(),
                    admin.credential(),
                ));
            }
            let addr = handle.addr();
            // Restarts reuse the same address: it is the member's identity in the cluster.
            args.listen = addr.to_string();
            cluster.members.push(Member {
                args,
                addr,
                handle: Some(handle),
            });
            if i == 0 {
                cluster
                    .wait_for_leader(Duration::from_secs(20))
                    .await
                    .map_err(|message| ServerError::Join {
                        target: addr.to_string(),
                        message,
                    })?;
            }
        }
        Ok(cluster)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The address of member `i` (stable across restarts).
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.members[i].addr
    }

    /// The running server of member `i` (None while stopped).
    pub fn server(&self, i: usize) -> Option<&ServerHandle> {
        self.members[i].handle.as_ref()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].handle.is_some()
    }

    /// A client to member `i`, as the admin.
    pub async fn client(&self, i: usize) -> Result<ApiClient<Channel>, tonic::transport::Error> {
        client(self.addr(i), &self.admin_tls()).await
    }

    /// The admin's CLI config file written by member 0's `--init` (for `berth --config`).
    pub fn admin_config_path(&self) -> PathBuf {
        crate::pki::admin_config_path(&self._dir.path().join("member-0"))
    }

    /// The join token (for agents and extra servers).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The admin's credential (what `berth server --init` wrote to DATA/admin.yaml).
    pub fn admin_tls(&self) -> berth_tls::ClientTls {
        self.admin.clone().unwrap_or_else(|| {
            berth_tls::ClientTls::new(
                String::new(),
                berth_tls::Credential {
                    cert_pem: String::new(),
                    key_pem: String::new(),
                },
            )
        })
    }

    /// A credential for `identity` signed by the cluster CA (e.g. a node's, to test what it
    /// may do).
    pub fn credential_for(
        &self,
        identity: &berth_tls::Identity,
    ) -> Result<berth_tls::ClientTls, berth_tls::TlsError> {
        let pki = self
            .members
            .iter()
            .find_map(|m| m.handle.as_ref())
            .map(|h| h.pki().clone())
            .ok_or_else(|| berth_tls::TlsError::Rejected("no member is running".into()))?;
        Ok(berth_tls::ClientTls::new(
            pki.ca.cert_pem(),
            pki.ca.issue_client(identity)?,
        ))
    }

    /// The index of the member that every running member agrees is the leader.
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<&ServerHandle> = self
            .members
            .iter()
            .filter_map(|m| m.handle.as_ref())
            .collect();
        let leader = running.iter().find(|h| h.is_leader())?;
        let id = leader.id();
        if running.iter().all(|h| h.raft().leader_id() == Some(id)) {
            self.members
                .iter()
                .position(|m| m.handle.as_ref().is_some_and(|h| h.id() == id))
        } else {
            None
        }
    }

    /// Wait until the running members agree on a leader; returns its index.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<usize, String> {
        wait_until(timeout, "an agreed raft leader", || async { self.leader() }).await
    }

    /// Wait until every running member has applied at least `index`.
    pub async fn wait_for_applied(&self, index: u64, timeout: Duration) -> Result<(), String> {
        wait_until(timeout, &format!("all members applied {index}"), || async {
            self.members
                .iter()
                .filter_map(|m| m.handle.as_ref())
                .all(|h| h.raft().status().applied >= index)
                .then_some(())
        })
        .await
    }

    /// Start one more member that joins through member `via` (which forwards the join to the
    /// leader if it is a follower). Returns the new member's index.
    pub async fn add_member(&mut self, via: usize) -> Result<usize, ServerError> {
        let i = self.members.len();
        let mut args = self.members[0].args.clone();
        args.data_dir = Some(self._dir.path().join(format!("member-{i}")));
        args.listen = "127.0.0.1:0".to_string();
        args.init = false;
        args.join = Some(self.addr(via).to_string());
        args.token = Some(berth_tls::Secret::new(self.token.clone()));
        let handle = start(args.clone()).await?;
        let addr = handle.addr();
        args.listen = addr.to_string();
        self.members.push(Member {
            args,
            addr,
            handle: Some(handle),
        });
        Ok(i)
    }

    /// Gracefully stop member `i`, keeping its data dir.
    pub async fn stop(&mut self, i: usize) -> Result<(), ServerError> {
        match self.members[i].handle.take() {
            Some(h) => h.shutdown().await,
            None => Ok(()),
        }
    }

    /// Restart a stopped member `i` from its data dir on its old address.
    pub async fn restart(&mut self, i: usize) -> Result<(), ServerError> {
        self.stop(i).await?;
        let handle = start(self.members[i].args.clone()).await?;
        self.members[i].handle = Some(handle);
        Ok(())
    }

    /// Stop every member.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        let mut first = Ok(());
        for i in 0..self.members.len() {
            let r = self.stop(i).await;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}
