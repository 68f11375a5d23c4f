//! The cluster PKI: certificates chain to their CA only, expire, carry identities; join
//! tokens round-trip and refuse wrong secrets/CAs; keys and configs are 0600; and a real tonic
//! server with mutual TLS on 127.0.0.1:0 accepts the CA's clients and nobody else.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth_proto::pb;
use berth_tls::*;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Server};

fn past() -> Validity {
    let now = time::OffsetDateTime::now_utc();
    Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    }
}

#[test]
fn a_server_cert_validates_against_its_ca_for_its_addresses_only() {
    let ca = ClusterCa::generate().unwrap();
    let srv = ca
        .issue_server(&["127.0.0.1".into(), "berth-0.local".into()])
        .unwrap();
    let now = SystemTime::now();
    verify_server_cert(ca.cert_pem(), &srv.cert_pem, "127.0.0.1", now).unwrap();
    verify_server_cert(ca.cert_pem(), &srv.cert_pem, "berth-0.local", now).unwrap();
    let err = verify_server_cert(ca.cert_pem(), &srv.cert_pem, "10.0.0.9", now).unwrap_err();
    assert!(matches!(err, TlsError::Rejected(_)), "{err}");
}

#[test]
fn a_certificate_from_a_foreign_ca_is_rejected() {
    let ca = ClusterCa::generate().unwrap();
    let foreign = ClusterCa::generate().unwrap();
    let srv = foreign.issue_server(&["127.0.0.1".into()]).unwrap();
    let err = verify_server_cert(ca.cert_pem(), &srv.cert_pem, "127.0.0.1", SystemTime::now())
        .unwrap_err();
    assert!(
        matches!(err, TlsError::Rejected(_)) && err.to_string().contains("UnknownIssuer"),
        "{err}"
    );
    let client = foreign.issue_client(&Identity::Admin).unwrap();
    let err = verify_client_cert(ca.cert_pem(), &client.cert_pem, SystemTime::now()).unwrap_err();
    assert!(
        matches!(err, TlsError::Rejected(_)) && err.to_string().contains("UnknownIssuer"),
        "{err}"
    );
}

#[test]
fn expired_certificates_are_rejected() {
    let ca = ClusterCa::generate().unwrap();
    let srv = ca.issue_server_with(&["127.0.0.1".into()], past()).unwrap();
    let err = verify_server_cert(ca.cert_pem(), &srv.cert_pem, "127.0.0.1", SystemTime::now())
        .unwrap_err();
    assert!(err.to_string().contains("certificate expired"), "{err}");
    let client = ca.issue_client_with(&Identity::Admin, past()).unwrap();
    let err = verify_client_cert(ca.cert_pem(), &client.cert_pem, SystemTime::now()).unwrap_err();
    assert!(err.to_string().contains("certificate expired"), "{err}");
    // A valid certificate checked at a time after its expiry is refused too.
    let fresh = ca.issue_client(&Identity::Admin).unwrap();
    let later = SystemTime::now() + Duration::from_secs(400 * 86_400);
    assert!(verify_client_cert(ca.cert_pem(), &fresh.cert_pem, later).is_err());
}

#[test]
fn client_certs_carry_admin_or_node_identities() {
    let ca = ClusterCa::generate().unwrap();
    let now = SystemTime::now();
    let admin = ca.issue_client(&Identity::Admin).unwrap();
    assert_eq!(
        verify_client_cert(ca.cert_pem(), &admin.cert_pem, now).unwrap(),
        Identity::Admin
    );
    let node = ca.issue_client(&Identity::Node("worker-1".into())).unwrap();
    assert_eq!(
        verify_client_cert(ca.cert_pem(), &node.cert_pem, now).unwrap(),
        Identity::Node("worker-1".into())
    );
    assert_eq!(Identity::Node("w".into()).to_string(), "system:node:w");
    assert_eq!(
        Identity::parse("system:node:w").unwrap(),
        Identity::Node("w".into())
    );
    for bad in ["", "root", "system:node:", "system:node:a:b", "Admin"] {
        assert!(Identity::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_ca_written_to_disk_reloads_and_keeps_issuing_valid_certs() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate().unwrap();
    ca.write(dir.path()).unwrap();
    let again = ClusterCa::read(dir.path()).unwrap();
    assert_eq!(again.fingerprint(), ca.fingerprint());
    let srv = again.issue_server(&["127.0.0.1".into()]).unwrap();
    verify_server_cert(ca.cert_pem(), &srv.cert_pem, "127.0.0.1", SystemTime::now()).unwrap();
}

#[test]
fn join_tokens_round_trip_and_refuse_wrong_secrets_and_cas() {
    let ca = ClusterCa::generate().unwrap();
    let token = JoinToken::generate(&ca).unwrap();
    let text = token.reveal();
    assert!(
        text.starts_with(&format!("K10{}::", ca.fingerprint_hex())),
        "{text}"
    );
    let parsed = JoinToken::parse(&text).unwrap();
    assert_eq!(parsed, token);
    token.verify_secret(&parsed).unwrap();
    parsed.verify_ca(ca.cert_pem()).unwrap();
    // The secret never shows in Debug.
    let secret = text.split("::").nth(1).unwrap();
    assert!(!format!("{token:?}").contains(secret));

    // Same CA, other secret: refused.
    let other = JoinToken::generate(&ca).unwrap();
    assert!(matches!(
        token.verify_secret(&other),
        Err(TlsError::WrongSecret)
    ));
    let one_char_off = format!("{}x", &text[..text.len() - 1]);
    let err = token
        .verify_secret(&JoinToken::parse(&one_char_off).unwrap())
        .unwrap_err();
    assert!(matches!(err, TlsError::WrongSecret));
    // A token from another cluster: its fingerprint does not match our CA.
    let foreign = ClusterCa::generate().unwrap();
    let foreign_token = JoinToken::generate(&foreign).unwrap();
    assert!(token.verify_secret(&foreign_token).is_err());
    let err = foreign_token.verify_ca(ca.cert_pem()).unwrap_err();
    assert!(
        err.to_string()
            .contains("does not match the server's cluster CA"),
        "{err}"
    );

    for (bad, want) in [
        ("", "must start with \"K10\""),
        ("K10abcd", "expected K10<CA fingerprint>::<secret>"),
        ("K10zz::s", "64 hexadecimal digits"),
        (
            &format!("K10{}::", ca.fingerprint_hex()),
            "1 to 256 printable",
        ),
        (
            &format!("K10{}::a b", ca.fingerprint_hex()),
            "1 to 256 printable",
        ),
    ] {
        let err = JoinToken::parse(bad).unwrap_err();
        assert!(err.to_string().contains(want), "{bad:?}: {err}");
    }
}

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn private_dirs_are_0700_with_missing_parents_0700_and_existing_parents_untouched() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let existing = tmp.path().join("home");
    std::fs::create_dir(&existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o751)).unwrap();

    let dir = existing.join("a/b/agent");
    create_private_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(
        mode(&existing.join("a")),
        0o700,
        "a missing parent is created 0700"
    );
    assert_eq!(mode(&existing.join("a/b")), 0o700, "every missing parent");
    assert_eq!(mode(&existing), 0o751, "an existing parent keeps its mode");

    // Again on an existing, too-open directory: tightened, and not an error.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    create_private_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);

    // A file in the way: the error names the path.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let err = create_private_dir(&file.join("sub"))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[cfg(unix)]
#[test]
fn keys_and_admin_config_are_0600_and_private_dirs_0700() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data/pki");
    create_private_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    // An existing, too-open directory is tightened.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    create_private_dir(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);

    let ca = ClusterCa::generate().unwrap();
    ca.write(&dir).unwrap();
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    let srv = ca.issue_server(&["127.0.0.1".into()]).unwrap();
    srv.write(&dir, "server").unwrap();
    assert_eq!(mode(&dir.join("server.key")), 0o600);
    assert_eq!(Credential::read(&dir, "server").unwrap(), srv);

    // Overwriting a world-readable file makes it private.
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    srv.write(&dir, "server").unwrap();
    assert_eq!(mode(&key), 0o600);

    let cfg = AdminConfig::new(&ca, vec!["127.0.0.1:7443".into()]).unwrap();
    let path = dir.join("admin.yaml");
    cfg.write(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
    let back = AdminConfig::read(&path).unwrap();
    assert_eq!(back, cfg);
    assert_eq!(
        verify_client_cert(ca.cert_pem(), &back.client_certificate, SystemTime::now()).unwrap(),
        Identity::Admin
    );
    assert!(!format!("{cfg:?}").contains("PRIVATE KEY"));
}

/// A Raft service that records who called it.
#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<Option<Identity>>>>);

#[tonic::async_trait]
impl pb::raft_server::Raft for Recorder {
    async fn send(
        &self,
        req: tonic::Request<pb::RaftBatch>,
    ) -> Result<tonic::Response<pb::Empty>, tonic::Status> {
        self.0.lock().unwrap().push(peer_identity(&req));
        Ok(tonic::Response::new(pb::Empty {}))
    }
}

async fn call(endpoint: Endpoint) -> Result<(), String> {
    let channel: Channel = endpoint
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    pb::raft_client::RaftClient::new(channel)
        .send(pb::RaftBatch::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("call: {e:?}"))
}

#[tokio::test]
async fn a_mutual_tls_server_accepts_the_cas_clients_only() {
    let ca = ClusterCa::generate().unwrap();
    let server_cred = ca.issue_server(&["127.0.0.1".into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorder = Recorder::default();
    let server = tokio::spawn(
        Server::builder()
            .tls_config(server_tls_config(ca.cert_pem(), &server_cred))
            .unwrap()
            .add_service(pb::raft_server::RaftServer::new(recorder.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let url = format!("https://{addr}");
    let endpoint = |tls: ClientTlsConfig| {
        Endpoint::from_shared(url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };

    // The CA's admin and node clients get through, and the server sees who they are.
    let admin = ca.issue_client(&Identity::Admin).unwrap();
    call(endpoint(client_tls_config(
        ca.cert_pem(),
        &admin,
        "127.0.0.1",
    )))
    .await
    .unwrap();
    let node = ca.issue_client(&Identity::Node("n1".into())).unwrap();
    call(endpoint(client_tls_config(
        ca.cert_pem(),
        &node,
        "127.0.0.1",
    )))
    .await
    .unwrap();
    assert_eq!(
        *recorder.0.lock().unwrap(),
        vec![Some(Identity::Admin), Some(Identity::Node("n1".into()))]
    );

    // No client certificate: the handshake is refused.
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()))
        .domain_name("127.0.0.1");
    assert!(call(endpoint(anonymous)).await.is_err());
    // A client certificate from another CA: refused.
    let foreign = ClusterCa::generate().unwrap();
    let intruder = foreign.issue_client(&Identity::Admin).unwrap();
    assert!(call(endpoint(client_tls_config(
        ca.cert_pem(),
        &intruder,
        "127.0.0.1"
    )))
    .await
    .is_err());
    // An expired client certificate from the right CA: refused.
    let expired = ca.issue_client_with(&Identity::Admin, past()).unwrap();
    assert!(call(endpoint(client_tls_config(
        ca.cert_pem(),
        &expired,
        "127.0.0.1"
    )))
    .await
    .is_err());
    // Plain text to a TLS server: refused.
    let plain = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    assert!(call(plain).await.is_err());
    // A client that trusts another CA refuses the server.
    let other_admin = foreign.issue_client(&Identity::Admin).unwrap();
    assert!(call(endpoint(client_tls_config(
        foreign.cert_pem(),
        &other_admin,
        "127.0.0.1"
    )))
    .await
    .is_err());
    assert_eq!(
        recorder.0.lock().unwrap().len(),
        2,
        "no refused client reached the service"
    );
    server.abort();
}
