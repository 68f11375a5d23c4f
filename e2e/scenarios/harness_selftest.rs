//! The harness itself: hosts get their own addresses and reach each other and the root
//! namespace; a partition cuts exactly one host off and heal restores it; teardown leaves no
//! namespace, bridge or process behind. Needs only busybox (`httpd`), which CI installs.

use std::time::Duration;

use crate::harness::net::{netns_available, sh, Net};
use crate::harness::proc::Proc;
use crate::harness::{cluster::http_get, wait_until};

/// Can a process in `from_ns` open a TCP connection to `ip:port`? (bash's /dev/tcp.)
fn tcp_from(from_ns: &str, ip: &str, port: u16) -> bool {
    sh(&[
        "ip",
        "netns",
        "exec",
        from_ns,
        "timeout",
        "2",
        "bash",
        "-c",
        &format!("exec 3<>/dev/tcp/{ip}/{port}"),
    ])
    .is_ok()
}

#[test]
fn hosts_reach_each_other_a_partition_cuts_one_off_and_teardown_leaves_nothing() {
    if !berth_testkit::skip::require("e2e harness self-test", netns_available()) {
        return;
    }
    let _serial = crate::harness::cluster::serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let net = Net::create(9, 3).expect("hosts");
    let ns: Vec<String> = net.hosts.iter().map(|h| h.ns.clone()).collect();
    let ip2 = net.hosts[1].ip;
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www dir");
    std::fs::write(www.join("index.html"), "hello from selftest\n").expect("index.html");
    let mut demo = Proc::new(
        "httpd",
        &ns[1],
        vec![
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            "8080".into(),
            "-h".into(),
            www.display().to_string(),
        ],
        dir.path().join("httpd.log"),
    )
    .with_program("busybox");
    demo.start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let get = || {
        rt.block_on(http_get((ip2, 8080).into(), "/", Duration::from_secs(2)))
            .and_then(|(code, body)| {
                if code == 200 {
                    Ok(body)
                } else {
                    Err(format!("HTTP {code}"))
                }
            })
    };
    // Root namespace -> host 2, and host 1 -> host 2 across the bridge.
    let (body, _) = wait_until(
        "demo server on host 2 to answer",
        Duration::from_secs(10),
        get,
    );
    assert!(body.contains("hello from selftest"), "{body}");
    assert!(
        tcp_from(&ns[0], &ip2.to_string(), 8080),
        "host 1 cannot reach host 2"
    );
    // Host 2 reaches itself on loopback and on its own address.
    assert!(tcp_from(&ns[1], "127.0.0.1", 8080));

    net.partition(1);
    assert!(
        get().is_err(),
        "host 2 still answers the root namespace while partitioned"
    );
    assert!(
        !tcp_from(&ns[0], &ip2.to_string(), 8080),
        "host 1 still reaches host 2"
    );
    assert!(
        tcp_from(&ns[1], "127.0.0.1", 8080),
        "a partition must not cut loopback"
    );
    net.heal(1);
    wait_until(
        "host 2 to answer again after heal",
        Duration::from_secs(5),
        get,
    );

    // Teardown: processes in the namespaces killed, namespaces and bridge gone.
    drop(net);
    assert!(!demo.is_running(), "the demo server survived the teardown");
    let left = sh(&["ip", "netns", "list"]).expect("ip netns list");
    assert!(
        !left.contains("berth-e2e9-"),
        "namespaces left behind: {left}"
    );
    assert!(
        sh(&["ip", "link", "show", "berthbr9"]).is_err(),
        "bridge left behind"
    );
}
