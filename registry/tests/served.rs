//! A one-server cluster registry for the registry's tests: a real Berth store (in-process
//! TestCluster) for tags and manifests, blob files in a temp dir, plain HTTP on 127.0.0.1.
#![allow(dead_code)]

use std::time::Duration;

use berth_apiserver::testing::TestCluster;
use berth_client::{Client, ClientConfig};
use berth_registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Served {
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    _cluster: TestCluster,
    stop: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn serve_registry() -> Served {
    let cluster = TestCluster::start(1).await.expect("cluster");
    cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let client = Client::new(
        &[cluster.addr(0).to_string()],
        ClientConfig::with_tls(cluster.admin_tls()),
    )
    .expect("client");
    let dir = tempfile::tempdir().expect("tmp");
    let reg = Registry::in_store(client, dir.path()).expect("registry");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(berth_registry::serve::serve(
        listener,
        None,
        reg.router(),
        stop.clone(),
    ));
    Served {
        addr,
        _dir: dir,
        _cluster: cluster,
        stop,
    }
}
