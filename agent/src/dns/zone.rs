//! The cluster zone: an immutable [`Snapshot`] of every name the DNS server answers for, built
//! from the Service and Endpoints caches, and the pure [`Snapshot::resolve`] over it.
//!
//! Names, as CoreDNS's `kubernetes` plugin (with `pods insecure`) answers them:
//!
//! - `SVC.NS.svc.DOMAIN` A/AAAA: the ClusterIP; for a headless Service (`clusterIP: None`)
//!   every ready endpoint address.
//! - `A-B-C-D.SVC.NS.svc.DOMAIN` A: a ready endpoint of the Service (the dashed IP; Berth's
//!   endpoint addresses have no hostname).
//! - `_PORT._PROTO.SVC.NS.svc.DOMAIN` SRV for a named port: target `SVC.NS.svc.DOMAIN.` and the
//!   Service port; headless, one SRV per ready endpoint with the endpoint's port and its dashed
//!   name as target. The targets' addresses go in the additional section.
//! - `A-B-C-D.NS.pod.DOMAIN` A (`X--1` AAAA): the IP spelled in the name, unchecked.
//! - PTR for `in-addr.arpa`/`ip6.arpa` names of cluster IPs and ready endpoint addresses (the
//!   `kubernetes cluster.local in-addr.arpa ip6.arpa` of the default Corefile); other reverse
//!   names fall through to the upstreams.
//!
//! A name that exists with no record of the asked type is NODATA (NOERROR, no answers), and so
//! is an empty non-terminal (`NS.svc.DOMAIN`, `svc.DOMAIN`, `_tcp.SVC...`): RFC 8020 resolvers
//! would otherwise take NXDOMAIN as "nothing below exists". Any other name under DOMAIN is
//! NXDOMAIN. Negative answers carry the zone's SOA (negative-caching TTL = the record TTL).
//!
//! Like CoreDNS, a headless Service with no ready endpoint has no name (NXDOMAIN), and so has
//! a Service whose `clusterIP` is missing or not an IP (the API server always allocates one,
//! so this is only a hand-made or half-written object). The snapshot has no expiry: it is
//! answered from until the next [`super::DnsHandle::set_state`], however long that takes.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use berth_proto::types::{EndpointAddress, EndpointSubset, Endpoints, Service};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA, SRV};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

use super::DnsError;

/// The zone's fixed parameters, validated once ([`Zone::new`]); snapshots are built from it.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Lowercase, without the trailing dot: `cluster.local`.
    domain: String,
    apex: LowerName,
    pod_zone: LowerName,
    ttl: u32,
}

/// One name's records.
#[derive(Debug, Default)]
struct Node {
    a: Vec<Record>,
    aaaa: Vec<Record>,
    srv: Vec<Record>,
    /// The SRV targets' address records (the additional section of an SRV answer).
    srv_additionals: Vec<Record>,
}

/// Every cluster name at one point in time. Immutable: the server swaps in a new one.
#[derive(Debug)]
pub struct Snapshot {
    zone: Zone,
    soa: Record,
    names: HashMap<LowerName, Node>,
    reverse: HashMap<LowerName, Vec<Record>>,
}

/// What the server does with one question.
#[derive(Debug, PartialEq)]
pub enum Resolution<'a> {
    /// An authoritative answer from the snapshot (AA set).
    Answer(Answer<'a>),
    /// Not a cluster name: ask the upstream resolvers.
    Forward,
}

/// An authoritative answer: records borrowed from the snapshot where they are stored there.
#[derive(Debug, PartialEq)]
pub struct Answer<'a> {
    pub rcode: ResponseCode,
    pub answers: Cow<'a, [Record]>,
    pub additionals: &'a [Record],
    /// The SOA for the authority section of a negative answer (NXDOMAIN or NODATA).
    pub soa: Option<&'a Record>,
}

impl Answer<'_> {
    /// The first answer's address (test and bench helper).
    pub fn ips(&self) -> Vec<IpAddr> {
        self.answers.iter().filter_map(record_ip).collect()
    }
}

/// The IP of an A or AAAA record.
pub fn record_ip(r: &Record) -> Option<IpAddr> {
    match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

/// A label of a name built from an object's name: non-empty, no dots (the API validates
/// DNS-1123 labels; this only keeps a bad object from making names in other places).
fn is_label(s: &str) -> bool {
    !s.is_empty() && !s.contains('.') && s.len() <= 63
}

/// The endpoint hostname CoreDNS uses when the address has none: the IP with `-` for `.`
/// (and for `:` in IPv6).
fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn protocol_label(p: Option<&str>) -> String {
    p.unwrap_or("TCP").to_ascii_lowercase()
}

fn parse_ip(a: &EndpointAddress) -> Option<IpAddr> {
    a.ip.parse().ok()
}

fn reverse_name(ip: IpAddr) -> Option<LowerName> {
    Some(LowerName::from(Name::from(ip)))
}

impl Zone {
    /// `domain` with or without the trailing dot, any case; fails when it is not a DNS name.
    pub fn new(domain: &str, ttl: u32) -> Result<Zone, DnsError> {
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        let invalid = |reason: String| DnsError::InvalidDomain {
            domain: domain.clone(),
            reason,
        };
        if domain.is_empty() {
            return Err(invalid("empty".into()));
        }
        let apex = Name::from_ascii(format!("{domain}.")).map_err(|e| invalid(e.to_string()))?;
        let pod_zone =
            Name::from_ascii(format!("pod.{domain}.")).map_err(|e| invalid(e.to_string()))?;
        Ok(Zone {
            apex: LowerName::from(apex),
            pod_zone: LowerName::from(pod_zone),
            domain,
            ttl,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn name(&self, relative: &str) -> Option<Name> {
        Name::from_ascii(format!("{relative}.{}.", self.domain)).ok()
    }

    fn address(&self, name: Name, ip: IpAddr) -> Record {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        Record::from_rdata(name, self.ttl, data)
    }

    fn soa(&self, serial: u32) -> Record {
        let name = Name::from(&self.apex);
        let mname = self.name("ns.dns").unwrap_or_else(|| name.clone());
        let rname = self.name("hostmaster").unwrap_or_else(|| name.clone());
        // CoreDNS's values; minimum = the TTL, so negative answers are cached as long as
        // positive ones.
        let soa = SOA::new(mname, rname, serial, 7200, 1800, 86400, self.ttl);
        Record::from_rdata(name, self.ttl, RData::SOA(soa))
    }

    /// The snapshot of these caches. `serial` is the SOA serial (the caller bumps it per
    /// change). Objects that cannot make a valid name are skipped, never an error.
    pub fn snapshot(&self, serial: u32, services: &[Service], endpoints: &[Endpoints]) -> Snapshot {
        let mut b = Builder {
            zone: self,
            names: HashMap::new(),
            reverse: HashMap::new(),
        };
        let by_key: HashMap<(&str, &str), &Endpoints> = endpoints
            .iter()
            .map(|e| ((e.metadata.namespace.as_str(), e.metadata.name.as_str()), e))
            .collect();
        for svc in services {
            let key = (svc.metadata.namespace.as_str(), svc.metadata.name.as_str());
            b.service(svc, by_key.get(&key).copied());
        }
        b.empty_non_terminals();
        Snapshot {
            zone: self.clone(),
            soa: self.soa(serial),
            names: b.names,
            reverse: b.reverse,
        }
    }
}

struct Builder<'z> {
    zone: &'z Zone,
    names: HashMap<LowerName, Node>,
    reverse: HashMap<LowerName, Vec<Record>>,
}

impl Builder<'_> {
    fn node(&mut self, name: &Name) -> &mut Node {
        self.names.entry(LowerName::new(name)).or_default()
    }

    fn add_address(&mut self, name: &Name, ip: IpAddr) {
        let r = self.zone.address(name.clone(), ip);
        let node = self.node(name);
        let set = if ip.is_ipv4() {
            &mut node.a
        } else {
            &mut node.aaaa
        };
        if !set.contains(&r) {
            set.push(r);
        }
    }

    fn add_ptr(&mut self, ip: IpAddr, target: &Name) {
        let Some(rev) = reverse_name(ip) else {
            return;
        };
        let r = Record::from_rdata(
            Name::from(&rev),
            self.zone.ttl,
            RData::PTR(PTR(target.clone())),
        );
        let set = self.reverse.entry(rev).or_default();
        if !set.contains(&r) {
            set.push(r);
        }
    }

    fn service(&mut self, svc: &Service, endpoints: Option<&Endpoints>) {
        let (ns, name) = (&svc.metadata.namespace, &svc.metadata.name);
        if !is_label(ns) || !is_label(name) {
            return;
        }
        // The namespace is known even when the Service has no name (NXDOMAIN, not NODATA,
        // for its unknown Services; NODATA for the namespace itself).
        if let Some(ns_name) = self.zone.name(&format!("{ns}.svc")) {
            self.node(&ns_name);
        }
        let Some(base) = self.zone.name(&format!("{name}.{ns}.svc")) else {
            return;
        };
        let subsets: &[EndpointSubset] = endpoints.map_or(&[], |e| &e.subsets);
        let mut ready: Vec<IpAddr> = Vec::new();
        for a in subsets.iter().flat_map(|s| &s.addresses) {
            if let Some(ip) = parse_ip(a) {
                if !ready.contains(&ip) {
                    ready.push(ip);
                }
            }
        }
        let headless = svc.spec.cluster_ip.as_deref() == Some("None");
        let service_ips: Vec<IpAddr> = if headless {
            ready.clone()
        } else {
            svc.spec
                .cluster_ip
                .as_deref()
                .and_then(|ip| ip.parse().ok())
                .into_iter()
                .collect()
        };
        if service_ips.is_empty() {
            return;
        }
        for ip in &service_ips {
            self.add_address(&base, *ip);
            if !headless {
                self.add_ptr(*ip, &base);
            }
        }
        for ip in &ready {
            if let Some(ep_name) = endpoint_name(&base, *ip) {
                self.add_address(&ep_name, *ip);
                self.add_ptr(*ip, &ep_name);
            }
        }
        for port in &svc.spec.ports {
            if port.name.is_empty() {
                continue; // Kubernetes: SRV records only for named ports.
            }
            let proto = protocol_label(port.protocol.as_deref());
            let Ok(srv_name) = base
                .prepend_label(format!("_{proto}").as_str())
                .and_then(|n| n.prepend_label(format!("_{}", port.name).as_str()))
            else {
                continue;
            };
            if headless {
                self.headless_srv(&srv_name, &base, &port.name, &proto, subsets);
            } else if let Ok(p) = u16::try_from(port.port) {
                let srv = SRV::new(0, 100, p, base.clone());
                let r = Record::from_rdata(srv_name.clone(), self.zone.ttl, RData::SRV(srv));
                let extra: Vec<Record> = service_ips
                    .iter()
                    .map(|ip| self.zone.address(base.clone(), *ip))
                    .collect();
                let node = self.node(&srv_name);
                node.srv.push(r);
                for e in extra {
                    if !node.srv_additionals.contains(&e) {
                        node.srv_additionals.push(e);
                    }
                }
            }
        }
    }

    /// One SRV per ready endpoint address and matching endpoint port (same name and protocol
    /// as the Service port), pointing at the address's dashed name.
    fn headless_srv(
        &mut self,
        srv_name: &Name,
        base: &Name,
        port_name: &str,
        proto: &str,
        subsets: &[EndpointSubset],
    ) {
        let mut targets: Vec<(Name, IpAddr, u16)> = Vec::new();
        for s in subsets {
            for p in &s.ports {
                if p.name != port_name || protocol_label(p.protocol.as_deref()) != proto {
                    continue;
                }
                let Ok(port) = u16::try_from(p.port) else {
                    continue;
                };
                for a in &s.addresses {
                    let Some(ip) = parse_ip(a) else { continue };
                    let Some(target) = endpoint_name(base, ip) else {
                        continue;
                    };
                    if !targets.iter().any(|(t, _, pt)| *t == target && *pt == port) {
                        targets.push((target, ip, port));
                    }
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        // CoreDNS: equal weights summing to ~100 within the one priority.
        let weight = u16::try_from(100 / targets.len()).unwrap_or(1).max(1);
        let ttl = self.zone.ttl;
        let records: Vec<(Record, Record)> = targets
            .into_iter()
            .map(|(target, ip, port)| {
                let extra = self.zone.address(target.clone(), ip);
                let srv = SRV::new(0, weight, port, target);
                (
                    Record::from_rdata(srv_name.clone(), ttl, RData::SRV(srv)),
                    extra,
                )
            })
            .collect();
        let node = self.node(srv_name);
        for (srv, extra) in records {
            node.srv.push(srv);
            if !node.srv_additionals.contains(&extra) {
                node.srv_additionals.push(extra);
            }
        }
    }

    /// Every ancestor of a name, up to the apex, exists (empty non-terminals answer NODATA);
    /// so do `svc.DOMAIN` and `pod.DOMAIN` with no Service at all.
    fn empty_non_terminals(&mut self) {
        let apex = self.zone.apex.clone();
        let mut ents: HashSet<LowerName> = HashSet::new();
        for name in self.names.keys() {
            let mut n = name.base_name();
            while n.num_labels() > apex.num_labels() && apex.zone_of(&n) {
                if !ents.insert(n.clone()) {
                    break;
                }
                n = n.base_name();
            }
        }
        ents.insert(apex);
        ents.insert(self.zone.pod_zone.clone());
        if let Some(svc) = self.zone.name("svc") {
            ents.insert(LowerName::from(svc));
        }
        for n in ents {
            self.names.entry(n).or_default();
        }
    }
}

fn endpoint_name(base: &Name, ip: IpAddr) -> Option<Name> {
    base.prepend_label(dashed(ip).as_str()).ok()
}

impl Snapshot {
    /// The snapshot with no Service (what the server answers before the first state).
    pub fn empty(zone: &Zone, serial: u32) -> Snapshot {
        zone.snapshot(serial, &[], &[])
    }

    pub fn domain(&self) -> &str {
        self.zone.domain()
    }

    /// Number of names (with records or empty non-terminals); for logs and tests.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn negative(&self, rcode: ResponseCode) -> Resolution<'_> {
        Resolution::Answer(Answer {
            rcode,
            answers: Cow::Borrowed(&[]),
            additionals: &[],
            soa: Some(&self.soa),
        })
    }

    /// The answer to one question. Names are compared case-insensitively (the query's
    /// [`LowerName`] is already lowercase, and so are the snapshot's keys).
    pub fn resolve(&self, name: &LowerName, qtype: RecordType, qclass: DNSClass) -> Resolution<'_> {
        if !self.zone.apex.zone_of(name) {
            return match self.reverse_ptr(name, qtype, qclass) {
                Some(ptr) => Resolution::Answer(Answer {
                    rcode: ResponseCode::NoError,
                    answers: Cow::Borrowed(ptr),
                    additionals: &[],
                    soa: None,
                }),
                None => Resolution::Forward,
            };
        }
        if !matches!(qclass, DNSClass::IN | DNSClass::ANY) {
            return Resolution::Answer(Answer {
                rcode: ResponseCode::Refused,
                answers: Cow::Borrowed(&[]),
                additionals: &[],
                soa: None,
            });
        }
        if let Some(node) = self.names.get(name) {
            let answers: Cow<'_, [Record]> = match qtype {
                RecordType::A => Cow::Borrowed(&node.a),
                RecordType::AAAA => Cow::Borrowed(&node.aaaa),
                RecordType::SRV => Cow::Borrowed(&node.srv),
                RecordType::SOA if *name == self.zone.apex => {
                    Cow::Borrowed(std::slice::from_ref(&self.soa))
                }
                RecordType::ANY => Cow::Owned(
                    node.a
                        .iter()
                        .chain(&node.aaaa)
                        .chain(&node.srv)
                        .cloned()
                        .collect(),
                ),
                _ => Cow::Borrowed(&[]),
            };
            if answers.is_empty() {
                return self.negative(ResponseCode::NoError);
            }
            let additionals: &[Record] = match qtype {
                RecordType::SRV | RecordType::ANY => &node.srv_additionals,
                _ => &[],
            };
            return Resolution::Answer(Answer {
                rcode: ResponseCode::NoError,
                answers,
                additionals,
                soa: None,
            });
        }
        match self.pod(name) {
            Pod::None => self.negative(ResponseCode::NXDomain),
            Pod::Namespace => self.negative(ResponseCode::NoError),
            Pod::Ip(ip) => {
                let fits = match qtype {
                    RecordType::A | RecordType::ANY => ip.is_ipv4(),
                    RecordType::AAAA => ip.is_ipv6(),
                    _ => false,
                };
                if !fits {
                    return self.negative(ResponseCode::NoError);
                }
                let r = self.zone.address(Name::from(name), ip);
                Resolution::Answer(Answer {
                    rcode: ResponseCode::NoError,
                    answers: Cow::Owned(vec![r]),
                    additionals: &[],
                    soa: None,
                })
            }
        }
    }

    /// Whether [`Snapshot::resolve`] would say [`Resolution::Forward`] (cheaper: no answer is
    /// built).
    pub fn is_forwarded(&self, name: &LowerName, qtype: RecordType, qclass: DNSClass) -> bool {
        !self.zone.apex.zone_of(name) && self.reverse_ptr(name, qtype, qclass).is_none()
    }

    fn reverse_ptr(
        &self,
        name: &LowerName,
        qtype: RecordType,
        qclass: DNSClass,
    ) -> Option<&[Record]> {
        if qtype == RecordType::PTR && matches!(qclass, DNSClass::IN | DNSClass::ANY) {
            self.reverse.get(name).map(Vec::as_slice)
        } else {
            None
        }
    }

    /// `IP.NS.pod.DOMAIN` (`pods insecure`: any IP, any namespace, nothing checked).
    fn pod(&self, name: &LowerName) -> Pod {
        let pz = &self.zone.pod_zone;
        if !pz.zone_of(name) {
            return Pod::None;
        }
        match name.num_labels().checked_sub(pz.num_labels()) {
            Some(1) => Pod::Namespace,
            Some(2) => name
                .iter()
                .next()
                .and_then(|l| std::str::from_utf8(l).ok())
                .and_then(parse_dashed_ip)
                .map_or(Pod::None, Pod::Ip),
            _ => Pod::None,
        }
    }
}

enum Pod {
    None,
    /// `NS.pod.DOMAIN`: an empty non-terminal (every IP is below it).
    Namespace,
    Ip(IpAddr),
}

/// `10-0-0-1` -> 10.0.0.1; `fd00--1` -> fd00::1.
fn parse_dashed_ip(label: &str) -> Option<IpAddr> {
    if let Ok(v4) = label.replace('-', ".").parse::<std::net::Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}
