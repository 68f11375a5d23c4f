//! The registry against real clients: `docker push` then `docker pull` of the busybox test
//! image through a registry backed by a real (one-server) Berth store and local blob files,
//! plus the protocol edges docker does not exercise (wrong digest, chunk out of order,
//! resumed chunked upload, tags pagination, missing manifests).

mod served;
use served::serve_registry;

use std::process::Command;
use std::time::Duration;

use berth_proto::image::sha256_digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One raw HTTP/1.1 exchange: (status, headers lowercased, body).
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let hs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, hs, out[split + 4..].to_vec())
}

fn header<'a>(hs: &'a [(String, String)], k: &str) -> &'a str {
    hs.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_push_then_pull_round_trips_an_image_through_the_cluster_registry() {
    let test = "docker_push_then_pull_round_trips_an_image_through_the_cluster_registry";
    if !berth_testkit::skip::require(test, docker(&["version"]).map(|_| ())) {
        return;
    }
    berth_testkit::images::build_busybox();
    let reg = serve_registry().await;
    let image = format!("127.0.0.1:{}/berth-test/busybox:v1", reg.addr.port());
    docker(&["tag", "berth-busybox:1", &image]).expect("tag");
    let pushed = tokio::task::spawn_blocking({
        let image = image.clone();
        move || docker(&["push", &image])
    })
    .await
    .expect("join");
    pushed.expect("docker push to the Berth registry");
    docker(&["rmi", &image]).expect("rmi");
    let pulled = tokio::task::spawn_blocking({
        let image = image.clone();
        move || docker(&["pull", &image])
    })
    .await
    .expect("join");
    pulled.expect("docker pull from the Berth registry");
    let out = docker(&["run", "--rm", &image, "echo", "pulled-and-ran"]).expect("run");
    assert!(out.contains("pulled-and-ran"), "{out}");
    let _ = docker(&["rmi", &image]);

    let (status, _, body) = http(
        reg.addr,
        "GET",
        "/v2/berth-test/busybox/tags/list",
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["tags"], serde_json::json!(["v1"]));
    let (status, _, body) = http(reg.addr, "GET", "/v2/_catalog", &[], b"").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("berth-test/busybox"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_check_digests_and_ranges_and_resume_where_they_stopped() {
    let reg = serve_registry().await;
    let a = reg.addr;
    // Monolithic upload with the wrong digest: refused, nothing stored.
    let wrong = sha256_digest(b"something else");
    let (status, _, body) = http(
        a,
        "POST",
        &format!("/v2/shop/web/blobs/uploads/?digest={wrong}"),
        &[],
        b"layer",
    )
    .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("DIGEST_INVALID"));
    let (status, _, _) = http(a, "HEAD", &format!("/v2/shop/web/blobs/{wrong}"), &[], b"").await;
    assert_eq!(status, 404);

    // Chunked: start, first chunk, an out-of-order chunk (416 with the current Range), then
    // resume from the offset the server reports and finish.
    let data = b"0123456789abcdefghij".to_vec();
    let d = sha256_digest(&data);
    let (status, hs, _) = http(a, "POST", "/v2/shop/web/blobs/uploads/", &[], b"").await;
    assert_eq!(status, 202);
    let loc = header(&hs, "location").to_string();
    let (status, hs, _) = http(a, "PATCH", &loc, &[("Content-Range", "0-9")], &data[..10]).await;
    assert_eq!((status, header(&hs, "range")), (202, "0-9"));
    let (status, hs, body) =
        http(a, "PATCH", &loc, &[("Content-Range", "15-19")], &data[15..]).await;
    assert_eq!(status, 416, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&hs, "range"), "0-9");
    let (status, hs, _) = http(a, "GET", &loc, &[], b"").await;
    assert_eq!((status, header(&hs, "range")), (204, "0-9"));
    let (status, _, _) = http(a, "PATCH", &loc, &[("Content-Range", "10-19")], &data[10..]).await;
    assert_eq!(status, 202);
    let (status, hs, _) = http(a, "PUT", &format!("{loc}?digest={d}"), &[], b"").await;
    assert_eq!(status, 201);
    assert_eq!(header(&hs, "docker-content-digest"), d);
    let (status, _, body) = http(a, "GET", &format!("/v2/shop/web/blobs/{d}"), &[], b"").await;
    assert_eq!((status, body), (200, data.clone()));

    // Cross-repository mount of a blob that exists: 201 without an upload.
    let (status, _, _) = http(
        a,
        "POST",
        &format!("/v2/shop/api/blobs/uploads/?mount={d}&from=shop/web"),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 201);

    // A manifest referencing a missing blob is refused; with its blobs present it is stored
    // under its tag and digest; tags paginate with a Link header.
    let missing = sha256_digest(b"missing");
    let bad = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": missing, "size": 7}, "layers": []});
    let bad = serde_json::to_vec(&bad).expect("json");
    let (status, _, body) = http(
        a,
        "PUT",
        "/v2/shop/web/manifests/v1",
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &bad,
    )
    .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("MANIFEST_BLOB_UNKNOWN"));
    let good = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": 20}, "layers": []});
    let good = serde_json::to_vec(&good).expect("json");
    for tag in ["v1", "v2", "v3"] {
        let (status, _, body) = http(
            a,
            "PUT",
            &format!("/v2/shop/web/manifests/{tag}"),
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            &good,
        )
        .await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    }
    let (status, hs, body) = http(a, "GET", "/v2/shop/web/manifests/v2", &[], b"").await;
    assert_eq!((status, body), (200, good.clone()));
    assert_eq!(header(&hs, "docker-content-digest"), sha256_digest(&good));
    let (status, hs, body) = http(a, "GET", "/v2/shop/web/tags/list?n=2", &[], b"").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["tags"], serde_json::json!(["v1", "v2"]));
    assert!(header(&hs, "link").contains("last=v2"));
    let (status, _, body) = http(a, "GET", "/v2/shop/web/manifests/v9", &[], b"").await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("MANIFEST_UNKNOWN"));
    let (status, _, _) = http(
        a,
        "DELETE",
        &format!("/v2/shop/web/manifests/{}", sha256_digest(&good)),
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 202);
    let (status, _, _) = http(a, "GET", "/v2/shop/web/manifests/v1", &[], b"").await;
    assert_eq!(status, 404, "deleting the manifest removed its tags");
}
