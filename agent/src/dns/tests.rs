//! The cluster DNS: the pure zone from a cache fixture, the resolv.conf helpers, and one
//! component test of the real server on 127.0.0.1:0 with a fake upstream.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use berth_proto::types::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectMeta, Service, ServicePort,
    ServiceSpec,
};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

use super::zone::{record_ip, Answer, Resolution, Snapshot, Zone};
use super::*;

// ---------------------------------------------------------------------------------------------
// Fixture builders

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.into(),
        namespace: ns.into(),
        ..Default::default()
    }
}

fn port(name: &str, port: i32, protocol: Option<&str>) -> ServicePort {
    ServicePort {
        name: name.into(),
        port,
        protocol: protocol.map(str::to_string),
        ..Default::default()
    }
}

fn service(ns: &str, name: &str, cluster_ip: &str, ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: ServiceSpec {
            ports,
            cluster_ip: Some(cluster_ip.into()),
            cluster_ips: vec![cluster_ip.into()],
            ..Default::default()
        },
        ..Default::default()
    }
}

fn addr(ip: &str) -> EndpointAddress {
    EndpointAddress {
        ip: ip.into(),
        ..Default::default()
    }
}

fn endpoints(
    ns: &str,
    name: &str,
    ready: &[&str],
    not_ready: &[&str],
    ports: &[(&str, i32)],
) -> Endpoints {
    Endpoints {
        metadata: meta(ns, name),
        subsets: vec![EndpointSubset {
            addresses: ready.iter().map(|ip| addr(ip)).collect(),
            not_ready_addresses: not_ready.iter().map(|ip| addr(ip)).collect(),
            ports: ports
                .iter()
                .map(|(n, p)| EndpointPort {
                    name: n.to_string(),
                    port: *p,
                    protocol: Some("TCP".into()),
                })
                .collect(),
        }],
        ..Default::default()
    }
}

/// `default/redis-leader` (ClusterIP, named TCP port + named UDP port), `default/web`
/// (ClusterIP, one unnamed port), `default/db` (headless: 2 ready + 1 not ready endpoint),
/// `default/empty` (headless, no endpoints), `other/redis-leader` (same name, another IP).
fn fixture() -> (Vec<Service>, Vec<Endpoints>) {
    let services = vec![
        service(
            "default",
            "redis-leader",
            "10.43.0.10",
            vec![
                port("redis", 6379, None),
                port("metrics", 9121, Some("UDP")),
            ],
        ),
        service("default", "web", "10.43.0.11", vec![port("", 80, None)]),
        service("default", "db", "None", vec![port("pg", 5432, Some("TCP"))]),
        service("default", "empty", "None", vec![port("pg", 5432, None)]),
        service(
            "other",
            "redis-leader",
            "10.43.0.20",
            vec![port("redis", 6379, None)],
        ),
    ];
    let endpoints = vec![
        endpoints(
            "default",
            "redis-leader",
            &["10.0.0.9"],
            &[],
            &[("redis", 6379)],
        ),
        endpoints("default", "web", &["10.0.0.7"], &[], &[("", 8080)]),
        endpoints(
            "default",
            "db",
            &["10.0.0.1", "10.0.0.2"],
            &["10.0.0.3"],
            &[("pg", 15432)],
        ),
    ];
    (services, endpoints)
}

fn snapshot() -> Snapshot {
    let (s, e) = fixture();
    Zone::new("cluster.local", 5).unwrap().snapshot(7, &s, &e)
}

fn lname(s: &str) -> LowerName {
    LowerName::from(Name::from_ascii(s).unwrap())
}

fn ask<'a>(snap: &'a Snapshot, name: &str, qtype: RecordType) -> Answer<'a> {
    match snap.resolve(&lname(name), qtype, DNSClass::IN) {
        Resolution::Answer(a) => a,
        Resolution::Forward => panic!("{name} {qtype} was forwarded"),
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn assert_nodata(a: &Answer<'_>) {
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert!(a.answers.is_empty(), "{:?}", a.answers);
    assert_eq!(a.soa.map(|r| r.record_type()), Some(RecordType::SOA));
}

fn assert_nxdomain(a: &Answer<'_>) {
    assert_eq!(a.rcode, ResponseCode::NXDomain);
    assert!(a.answers.is_empty());
    assert_eq!(a.soa.map(|r| r.record_type()), Some(RecordType::SOA));
}

fn srv(r: &Record) -> &SRV {
    match &r.data {
        RData::SRV(s) => s,
        other => panic!("not SRV: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The zone

#[test]
fn cluster_ip_service_answers_a_with_its_cluster_ip() {
    let snap = snapshot();
    let a = ask(
        &snap,
        "redis-leader.default.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert_eq!(a.ips(), ips(&["10.43.0.10"]));
    assert_eq!(a.answers[0].ttl, 5);
    assert!(a.soa.is_none());
}

#[test]
fn headless_service_answers_every_ready_endpoint_but_not_the_not_ready_one() {
    let snap = snapshot();
    let a = ask(&snap, "db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(a.ips(), ips(&["10.0.0.1", "10.0.0.2"]));
}

#[test]
fn headless_service_without_ready_endpoints_is_nxdomain() {
    let snap = snapshot();
    assert_nxdomain(&ask(
        &snap,
        "empty.default.svc.cluster.local.",
        RecordType::A,
    ));
}

#[test]
fn names_are_case_insensitive() {
    let snap = snapshot();
    let a = ask(
        &snap,
        "Redis-LEADER.Default.SVC.cluster.LOCAL.",
        RecordType::A,
    );
    assert_eq!(a.ips(), ips(&["10.43.0.10"]));
    let srv = ask(
        &snap,
        "_PG._Tcp.DB.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(srv.answers.len(), 2);
}

#[test]
fn same_service_name_in_another_namespace_has_its_own_address() {
    let snap = snapshot();
    let a = ask(
        &snap,
        "redis-leader.other.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(a.ips(), ips(&["10.43.0.20"]));
}

#[test]
fn aaaa_for_an_ipv4_only_name_is_nodata_not_nxdomain() {
    let snap = snapshot();
    for name in [
        "redis-leader.default.svc.cluster.local.",
        "db.default.svc.cluster.local.",
        "10-0-0-1.db.default.svc.cluster.local.",
        "10-1-2-3.default.pod.cluster.local.",
    ] {
        assert_nodata(&ask(&snap, name, RecordType::AAAA));
    }
    // Any other type of an existing name, too.
    assert_nodata(&ask(
        &snap,
        "redis-leader.default.svc.cluster.local.",
        RecordType::TXT,
    ));
}

#[test]
fn unknown_cluster_names_are_nxdomain_with_the_soa() {
    let snap = snapshot();
    for name in [
        "nope.default.svc.cluster.local.",
        "redis-leader.nons.svc.cluster.local.",
        "foo.cluster.local.",
        "a.b.redis-leader.default.svc.cluster.local.",
        "_http._tcp.redis-leader.default.svc.cluster.local.",
        "10-0-0-3.db.default.svc.cluster.local.",
    ] {
        assert_nxdomain(&ask(&snap, name, RecordType::A));
    }
    let a = ask(&snap, "nope.default.svc.cluster.local.", RecordType::A);
    let soa = a.soa.unwrap();
    assert_eq!(soa.name, Name::from_ascii("cluster.local.").unwrap());
    match &soa.data {
        RData::SOA(s) => {
            assert_eq!(s.minimum, 5);
            assert_eq!(s.serial, 7);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_non_terminals_are_nodata() {
    let snap = snapshot();
    for name in [
        "default.svc.cluster.local.",
        "other.svc.cluster.local.",
        "svc.cluster.local.",
        "cluster.local.",
        "pod.cluster.local.",
        "default.pod.cluster.local.",
        "_tcp.db.default.svc.cluster.local.",
    ] {
        assert_nodata(&ask(&snap, name, RecordType::A));
    }
    let apex = ask(&snap, "cluster.local.", RecordType::SOA);
    assert_eq!(apex.answers.len(), 1);
}

#[test]
fn srv_of_a_cluster_ip_service_targets_the_service_name_with_the_service_port() {
    let snap = snapshot();
    let a = ask(
        &snap,
        "_redis._tcp.redis-leader.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(a.answers.len(), 1);
    let s = srv(&a.answers[0]);
    assert_eq!(s.port, 6379);
    assert_eq!(
        s.target,
        Name::from_ascii("redis-leader.default.svc.cluster.local.").unwrap()
    );
    assert_eq!(
        a.additionals
            .iter()
            .filter_map(record_ip)
            .collect::<Vec<_>>(),
        ips(&["10.43.0.10"])
    );
    // The protocol is part of the name: the UDP port is under _udp only.
    let udp = ask(
        &snap,
        "_metrics._udp.redis-leader.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(srv(&udp.answers[0]).port, 9121);
    assert_nxdomain(&ask(
        &snap,
        "_metrics._tcp.redis-leader.default.svc.cluster.local.",
        RecordType::SRV,
    ));
}

#[test]
fn srv_of_a_headless_service_has_one_record_per_ready_endpoint_with_dashed_targets() {
    let snap = snapshot();
    let a = ask(
        &snap,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    );
    let mut got: Vec<(String, u16)> = a
        .answers
        .iter()
        .map(|r| (srv(r).target.to_ascii(), srv(r).port))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("10-0-0-1.db.default.svc.cluster.local.".to_string(), 15432),
            ("10-0-0-2.db.default.svc.cluster.local.".to_string(), 15432),
        ]
    );
    let mut extra: Vec<(String, IpAddr)> = a
        .additionals
        .iter()
        .map(|r| (r.name.to_ascii(), record_ip(r).unwrap()))
        .collect();
    extra.sort();
    assert_eq!(extra[0].0, "10-0-0-1.db.default.svc.cluster.local.");
    assert_eq!(
        extra.iter().map(|e| e.1).collect::<Vec<_>>(),
        ips(&["10.0.0.1", "10.0.0.2"])
    );
    // The dashed targets answer A themselves.
    let t = ask(
        &snap,
        "10-0-0-2.db.default.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(t.ips(), ips(&["10.0.0.2"]));
}

#[test]
fn unnamed_ports_have_no_srv_record() {
    let snap = snapshot();
    assert_nxdomain(&ask(
        &snap,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    ));
    assert_nxdomain(&ask(
        &snap,
        "_._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    ));
    // SRV at the bare Service name: none (only `_port._proto` names have SRV).
    assert_nodata(&ask(
        &snap,
        "web.default.svc.cluster.local.",
        RecordType::SRV,
    ));
    assert!(!snap.is_empty());
}

#[test]
fn pod_names_answer_the_ip_spelled_in_them() {
    let snap = snapshot();
    let a = ask(&snap, "10-244-1-7.anyns.pod.cluster.local.", RecordType::A);
    assert_eq!(a.ips(), ips(&["10.244.1.7"]));
    assert_eq!(
        a.answers[0].name,
        Name::from_ascii("10-244-1-7.anyns.pod.cluster.local.").unwrap()
    );
    let v6 = ask(
        &snap,
        "fd00--1.default.pod.cluster.local.",
        RecordType::AAAA,
    );
    assert_eq!(v6.ips(), ips(&["fd00::1"]));
    assert_nxdomain(&ask(
        &snap,
        "10-244-1.default.pod.cluster.local.",
        RecordType::A,
    ));
    assert_nxdomain(&ask(
        &snap,
        "not-an-ip.default.pod.cluster.local.",
        RecordType::A,
    ));
    assert_nxdomain(&ask(
        &snap,
        "x.10-244-1-7.default.pod.cluster.local.",
        RecordType::A,
    ));
}

#[test]
fn names_outside_the_domain_are_forwarded_except_reverse_names_of_cluster_addresses() {
    let snap = snapshot();
    let fwd = |n: &str, t| snap.resolve(&lname(n), t, DNSClass::IN) == Resolution::Forward;
    assert!(fwd("example.com.", RecordType::A));
    assert!(fwd("cluster.local.example.com.", RecordType::A));
    assert!(fwd("local.", RecordType::SOA));
    assert!(fwd("1.1.1.1.in-addr.arpa.", RecordType::PTR));
    let ptr = ask(&snap, "10.0.43.10.in-addr.arpa.", RecordType::PTR);
    match &ptr.answers[0].data {
        RData::PTR(p) => assert_eq!(p.0.to_ascii(), "redis-leader.default.svc.cluster.local."),
        other => panic!("{other:?}"),
    }
    let ep = ask(&snap, "1.0.0.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(ep.answers.len(), 1);
}

#[test]
fn non_internet_classes_are_refused_for_cluster_names() {
    let snap = snapshot();
    match snap.resolve(
        &lname("db.default.svc.cluster.local."),
        RecordType::A,
        DNSClass::CH,
    ) {
        Resolution::Answer(a) => assert_eq!(a.rcode, ResponseCode::Refused),
        Resolution::Forward => panic!("forwarded"),
    }
}

#[test]
fn malformed_objects_are_skipped_without_failing_the_rest() {
    let (mut s, mut e) = fixture();
    s.push(service(
        "default",
        "bad-ip",
        "10.43.0.999",
        vec![port("x", 1, None)],
    ));
    s.push(service("default", "a.b", "10.43.0.12", vec![]));
    s.push(service("", "nons", "10.43.0.13", vec![]));
    s.push(service(
        "default",
        "bad-port",
        "10.43.0.14",
        vec![port("x", -1, None), port("y", 70000, None)],
    ));
    s.push(service(
        "default",
        "bad-eps",
        "None",
        vec![port("x", 1, None)],
    ));
    e.push(endpoints(
        "default",
        "bad-eps",
        &["nope", "10.0.0.5"],
        &[],
        &[("x", -5)],
    ));
    let snap = Zone::new("cluster.local.", 5).unwrap().snapshot(1, &s, &e);
    assert_nxdomain(&ask(
        &snap,
        "bad-ip.default.svc.cluster.local.",
        RecordType::A,
    ));
    assert_nxdomain(&ask(
        &snap,
        "_x._tcp.bad-port.default.svc.cluster.local.",
        RecordType::SRV,
    ));
    let eps = ask(&snap, "bad-eps.default.svc.cluster.local.", RecordType::A);
    assert_eq!(eps.ips(), ips(&["10.0.0.5"]));
    assert_eq!(
        ask(
            &snap,
            "redis-leader.default.svc.cluster.local.",
            RecordType::A
        )
        .ips(),
        ips(&["10.43.0.10"])
    );
}

#[test]
fn a_domain_that_is_not_a_dns_name_is_an_error() {
    assert!(matches!(
        Zone::new("", 5),
        Err(DnsError::InvalidDomain { .. })
    ));
    assert!(matches!(
        Zone::new("a..b", 5),
        Err(DnsError::InvalidDomain { .. })
    ));
    assert_eq!(
        Zone::new("Cluster.Local.", 5).unwrap().domain(),
        "cluster.local"
    );
}

// ---------------------------------------------------------------------------------------------
// resolv.conf

#[test]
fn upstreams_come_from_nameserver_lines_in_order_on_port_53() {
    let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver   127.0.0.53 # stub\n\
                ;nameserver 9.9.9.9\nnameserver 2001:db8::1\nnameserver 10.0.0.2\nnameserver bogus\n\
                nameserver fe80::1%eth0\noptions edns0 trust-ad\n";
    let got = upstreams_from_resolv_conf(text);
    let want: Vec<SocketAddr> = ["10.0.0.2:53", "127.0.0.53:53", "[2001:db8::1]:53"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(got, want);
    assert!(upstreams_from_resolv_conf("").is_empty());
}

#[test]
fn pod_resolv_conf_has_the_namespace_search_path_and_ndots_5() {
    assert_eq!(
        pod_resolv_conf("10.43.0.10".parse().unwrap(), "shop", "cluster.local"),
        "nameserver 10.43.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    );
}

#[test]
fn search_expansion_tries_the_search_path_first_for_short_names() {
    assert_eq!(
        search_expansions("redis-leader", "default", "cluster.local", 5),
        vec![
            "redis-leader.default.svc.cluster.local.",
            "redis-leader.svc.cluster.local.",
            "redis-leader.cluster.local.",
            "redis-leader.",
        ]
    );
    assert_eq!(
        search_expansions("a.b.c.d.e.f", "default", "cluster.local", 5)[0],
        "a.b.c.d.e.f."
    );
    assert_eq!(
        search_expansions("example.com.", "default", "cluster.local", 5),
        vec!["example.com."]
    );
}

/// What a stub resolver with the pod's resolv.conf gets: the first expansion that is not
/// NXDOMAIN/NODATA (glibc goes on after both).
fn resolve_like_a_pod(snap: &Snapshot, name: &str, namespace: &str) -> Option<Vec<IpAddr>> {
    for candidate in search_expansions(name, namespace, "cluster.local", 5) {
        match snap.resolve(&lname(&candidate), RecordType::A, DNSClass::IN) {
            Resolution::Answer(a) if !a.answers.is_empty() => return Some(a.ips()),
            Resolution::Answer(_) => continue,
            Resolution::Forward => return None,
        }
    }
    None
}

#[test]
fn short_names_from_a_pod_reach_the_service_through_the_search_path() {
    let snap = snapshot();
    let leader = Some(ips(&["10.43.0.10"]));
    for name in [
        "redis-leader",
        "redis-leader.default",
        "redis-leader.default.svc",
        "redis-leader.default.svc.cluster.local",
        "redis-leader.default.svc.cluster.local.",
    ] {
        assert_eq!(resolve_like_a_pod(&snap, name, "default"), leader, "{name}");
    }
    // From another namespace the short name is that namespace's Service; the qualified one
    // still reaches default's.
    assert_eq!(
        resolve_like_a_pod(&snap, "redis-leader", "other"),
        Some(ips(&["10.43.0.20"]))
    );
    assert_eq!(
        resolve_like_a_pod(&snap, "redis-leader.default", "other"),
        leader
    );
    assert_eq!(
        resolve_like_a_pod(&snap, "db", "default"),
        Some(ips(&["10.0.0.1", "10.0.0.2"]))
    );
}

// ---------------------------------------------------------------------------------------------
// Component: the real server on 127.0.0.1:0, a fake upstream, real clients

/// A fake upstream on 127.0.0.1 (UDP and TCP, one port): every A query is answered with
/// 192.0.2.1, except `big.example.`: over UDP truncated with no answer, over TCP 3 addresses.
async fn fake_upstream(stop: tokio_util::sync::CancellationToken) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn reply(query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let q = Message::from_vec(query).ok()?;
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.metadata.recursion_available = true;
        let question = q.queries.first()?.clone();
        let name = question.name().clone();
        m.add_query(question);
        if name.to_ascii() == "big.example." {
            if !tcp {
                m.metadata.truncation = true;
            } else {
                for i in 1..=3 {
                    m.add_answer(Record::from_rdata(
                        name.clone(),
                        60,
                        RData::A(A::new(192, 0, 2, i)),
                    ));
                }
            }
        } else {
            m.add_answer(Record::from_rdata(name, 60, RData::A(A::new(192, 0, 2, 1))));
        }
        m.to_vec().ok()
    }
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = udp.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(at).await.unwrap();
    let s = stop.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            tokio::select! {
                _ = s.cancelled() => return,
                r = udp.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { return };
                    if let Some(out) = reply(&buf[..n], false) {
                        let _ = udp.send_to(&out, from).await;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = tcp.accept() => {
                    let Ok((mut c, _)) = r else { return };
                    let Ok(n) = c.read_u16().await else { continue };
                    let mut q = vec![0u8; usize::from(n)];
                    if c.read_exact(&mut q).await.is_err() { continue }
                    if let Some(out) = reply(&q, true) {
                        let _ = c.write_u16(out.len() as u16).await;
                        let _ = c.write_all(&out).await;
                    }
                }
            }
        }
    });
    at
}

/// One query over UDP with a raw client (no EDNS), to look at flags and sections.
async fn raw_query(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.id = rand::random();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    raw_exchange(server, &m).await
}

/// One A query over TCP.
async fn tcp_query(server: SocketAddr, name: &str) -> Message {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut q = Message::query();
    q.metadata.id = 7;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let q = q.to_vec().unwrap();
    let mut c = tokio::net::TcpStream::connect(server).await.unwrap();
    c.write_u16(q.len() as u16).await.unwrap();
    c.write_all(&q).await.unwrap();
    let n = c.read_u16().await.unwrap();
    let mut buf = vec![0u8; usize::from(n)];
    c.read_exact(&mut buf).await.unwrap();
    let m = Message::from_vec(&buf).unwrap();
    assert_eq!(m.metadata.id, 7);
    m
}

async fn raw_exchange(server: SocketAddr, m: &Message) -> Message {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&m.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("no DNS reply within 5 s")
        .unwrap();
    let r = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(r.metadata.id, m.metadata.id);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    r
}

fn resolver(server: SocketAddr) -> hickory_resolver::TokioResolver {
    use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
    let mut ns = NameServerConfig::udp_and_tcp(server.ip());
    for c in &mut ns.connections {
        c.port = server.port();
    }
    let search = [
        "default.svc.cluster.local.",
        "svc.cluster.local.",
        "cluster.local.",
    ]
    .iter()
    .map(|s| Name::from_ascii(s).unwrap())
    .collect();
    let config = ResolverConfig::from_parts(None, search, vec![ns]);
    let mut opts = ResolverOpts::default();
    opts.ndots = 5;
    opts.cache_size = 0; // every lookup reaches the server
    opts.use_hosts_file = ResolveHosts::Never;
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 1;
    hickory_resolver::Resolver::builder_with_config(
        config,
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .unwrap()
}

async fn a_records(r: &hickory_resolver::TokioResolver, name: &str) -> Vec<IpAddr> {
    let l = r.lookup(name, RecordType::A).await.unwrap();
    l.answers().iter().filter_map(record_ip).collect()
}

#[tokio::test]
async fn server_answers_cluster_names_forwards_the_rest_and_sees_new_state_at_once() {
    let stop = tokio_util::sync::CancellationToken::new();
    let upstream = fake_upstream(stop.clone()).await;
    // An upstream that refuses (closed port) comes first: the forwarder moves on.
    let dead = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let cfg = DnsConfig {
        domain: "cluster.local".into(),
        upstreams: vec![dead, upstream],
        ttl: 5,
        threads: 0,
    };
    let (handle, bound) = serve(vec!["127.0.0.1:0".parse().unwrap()], cfg, stop.clone())
        .await
        .unwrap();
    assert_eq!(bound.len(), 1);
    let server = bound[0];
    assert_ne!(server.port(), 0);
    let (services, eps) = fixture();
    handle.set_state(&services, &eps);

    // A real resolver with a pod's search path: the short name reaches the Service.
    let r = resolver(server);
    assert_eq!(a_records(&r, "redis-leader").await, ips(&["10.43.0.10"]));
    assert_eq!(a_records(&r, "db.default").await.len(), 2);
    let srv = r
        .lookup("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV)
        .await
        .unwrap();
    assert_eq!(srv.answers().len(), 2);
    // Outside names go to the upstream (past the dead one).
    assert_eq!(a_records(&r, "www.example.com.").await, ips(&["192.0.2.1"]));

    // Flags and sections, seen raw.
    let m = raw_query(
        server,
        "REDIS-leader.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert!(m.metadata.authoritative);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        m.queries[0].name().to_ascii(),
        "REDIS-leader.default.svc.cluster.local."
    );
    let nx = raw_query(server, "nope.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
    let nodata = raw_query(server, "db.default.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    let fwd = raw_query(server, "www.example.com.", RecordType::A).await;
    assert!(!fwd.metadata.authoritative);
    assert!(fwd.metadata.recursion_available);
    // A truncated upstream reply is fetched again over TCP.
    let big = raw_query(server, "big.example.", RecordType::A).await;
    assert_eq!(big.answers.len(), 3, "{big:?}");
    assert!(!big.metadata.truncation);

    // A cluster answer too big for 512 bytes (no EDNS) is truncated over UDP, whole over TCP.
    let mut big_services = services.clone();
    let mut big_eps = eps.clone();
    let many: Vec<String> = (1..=60).map(|i| format!("10.9.0.{i}")).collect();
    let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    big_services.push(service("default", "wide", "None", vec![port("p", 1, None)]));
    big_eps.push(endpoints("default", "wide", &many_refs, &[], &[("p", 1)]));
    handle.set_state(&big_services, &big_eps);
    let udp = raw_query(server, "wide.default.svc.cluster.local.", RecordType::A).await;
    assert!(udp.metadata.truncation);
    assert!(udp.answers.len() < 60);
    assert_eq!(
        tcp_query(server, "wide.default.svc.cluster.local.")
            .await
            .answers
            .len(),
        60
    );
    // Two questions: FORMERR; not a query: NOTIMP.
    let mut two = Message::query();
    two.metadata.id = 99;
    for n in [
        "db.default.svc.cluster.local.",
        "web.default.svc.cluster.local.",
    ] {
        two.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
    }
    assert_eq!(
        raw_exchange(server, &two).await.metadata.response_code,
        ResponseCode::FormErr
    );
    let mut notify = Message::query();
    notify.metadata.id = 100;
    notify.metadata.op_code = OpCode::Notify;
    notify.add_query(Query::query(
        Name::from_ascii("cluster.local.").unwrap(),
        RecordType::SOA,
    ));
    assert_eq!(
        raw_exchange(server, &notify).await.metadata.response_code,
        ResponseCode::NotImp
    );

    // Garbage does not stop the server.
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for bytes in [
        &b""[..],
        b"\x00",
        b"\x12\x34\x01\x00\x00\x01",
        &[0xffu8; 64],
    ] {
        junk.send_to(bytes, server).await.unwrap();
    }

    // A change is visible to the next query.
    let mut services = services;
    services[0].spec.cluster_ip = Some("10.43.0.99".into());
    handle.set_state(&services, &eps);
    assert_eq!(a_records(&r, "redis-leader").await, ips(&["10.43.0.99"]));
    handle.set_state(&[], &[]);
    let gone = raw_query(
        server,
        "redis-leader.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(gone.metadata.response_code, ResponseCode::NXDomain);

    // TCP serves the same names.
    handle.set_state(&services, &eps);
    let m = tcp_query(server, "db.default.svc.cluster.local.").await;
    assert_eq!(m.answers.len(), 2);
    assert!(m.metadata.authoritative);

    // Queries are counted.
    let text = berth_metrics::text::render(&[handle.registry()]);
    let samples = berth_metrics::text::parse(&text).unwrap();
    let nxdomains = berth_metrics::text::find(
        &samples,
        "berth_agent_dns_queries_total",
        &[("zone", "cluster"), ("rcode", "NXDOMAIN")],
    );
    assert!(nxdomains.unwrap_or_default() >= 2.0, "{text}");
    stop.cancel();
}

#[tokio::test]
async fn outside_names_without_upstreams_are_refused_and_failing_upstreams_servfail() {
    let stop = tokio_util::sync::CancellationToken::new();
    let (_h, bound) = serve(
        vec!["127.0.0.1:0".parse().unwrap()],
        DnsConfig::default(),
        stop.clone(),
    )
    .await
    .unwrap();
    let m = raw_query(bound[0], "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.recursion_available);

    let dead = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    // On threads of its own this time.
    let cfg = DnsConfig {
        upstreams: vec![dead],
        threads: 2,
        ..DnsConfig::default()
    };
    let (_h, bound) = serve(vec!["127.0.0.1:0".parse().unwrap()], cfg, stop.clone())
        .await
        .unwrap();
    let m = raw_query(bound[0], "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    stop.cancel();
}
