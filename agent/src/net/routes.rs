//! host-gw routes: one route per other node's pod CIDR via that node's address (flannel's
//! host-gw backend; all nodes on one L2 segment).
//!
//! [`sync_routes`] reads the host's addresses and the main routing table (two netlink dumps),
//! computes a `RoutePlan` with the pure `plan`, and applies it. Nothing is written when
//! nothing changed. Berth's routes carry [`ROUTE_PROTOCOL`] (`ip route` shows `proto 66`), the
//! way bird or zebra mark theirs, so a route without that mark is never touched: if one holds a
//! desired prefix it is reported as [`NetError::ForeignRoute`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{local_ipv4_addresses, netlink_error, with_netlink, NetError};

/// The route protocol number marking Berth's routes (`ip route ... proto 66`). Unassigned in
/// iproute2's rt_protos and by the routing daemons (bird 12, zebra 11, calico 80, bgp 186).
pub const ROUTE_PROTOCOL: u8 = 66;

const UNREACHABLE_HINT: &str = "the node address is not on a directly connected network of \
     this host; host-gw routes need every node on one L2 segment (check the node's \
     InternalIP)";

/// What one [`sync_routes`] call did, by pod CIDR.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSync {
    pub added: Vec<Ipv4Net>,
    /// Berth's route existed with another via-address and was replaced in place.
    pub replaced: Vec<Ipv4Net>,
    pub removed: Vec<Ipv4Net>,
    pub unchanged: Vec<Ipv4Net>,
    /// Pod CIDRs whose node address is an address of this host (its own bridge).
    pub skipped_local: Vec<Ipv4Net>,
}

impl RouteSync {
    /// Whether the routing table was written.
    pub fn changed(&self) -> bool {
        !(self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty())
    }
}

/// Makes the main table hold exactly one Berth route per pod CIDR in `desired` (pod CIDR,
/// node address), except those whose node address is local, and no other Berth route.
///
/// Level-triggered: pass the whole node list every time. Steps on different prefixes are
/// independent; when some fail the rest are still applied and the failures come back together
/// ([`NetError::Several`]), to be repaired by the next call.
pub async fn sync_routes(desired: &[(Ipv4Net, Ipv4Addr)]) -> Result<RouteSync, NetError> {
    with_netlink("sync routes", async |handle| {
        let local = local_ipv4_addresses(&handle).await?;
        let observed = main_table_routes(&handle).await?;
        let views: Vec<ObservedRoute> = observed.iter().map(|(v, _)| v.clone()).collect();
        let plan = plan(desired, &local, &views);
        apply(&handle, plan, &observed).await
    })
    .await
}

/// One IPv4 route of the main table, as much of it as the plan needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObservedRoute {
    pub prefix: Ipv4Net,
    pub protocol: u8,
    pub gateway: Option<Ipv4Addr>,
    pub priority: u32,
    pub oif: Option<u32>,
    pub kind: RouteType,
}

impl ObservedRoute {
    fn is_berths(&self) -> bool {
        self.protocol == ROUTE_PROTOCOL
    }

    /// Berth's route exactly as [`route_message`] writes it.
    fn is_exactly(&self, via: Ipv4Addr) -> bool {
        self.is_berths()
            && self.kind == RouteType::Unicast
            && self.gateway == Some(via)
            && self.priority == 0
    }

    /// `ip route`-like text, with the interface name when known.
    fn describe(&self, dev: Option<&str>) -> String {
        let mut s = String::new();
        if self.kind != RouteType::Unicast {
            s.push_str(&format!("{:?} ", self.kind).to_lowercase());
        }
        s.push_str(&self.prefix.to_string());
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        match (dev, self.oif) {
            (Some(name), _) => s.push_str(&format!(" dev {name}")),
            (None, Some(i)) => s.push_str(&format!(" dev #{i}")),
            (None, None) => {}
        }
        s.push_str(&format!(" proto {}", RouteProtocol::from(self.protocol)));
        if self.priority != 0 {
            s.push_str(&format!(" metric {}", self.priority));
        }
        s
    }
}

/// What to change, by index into the observed routes where a route is removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RoutePlan {
    pub add: Vec<(Ipv4Net, Ipv4Addr)>,
    pub replace: Vec<(Ipv4Net, Ipv4Addr)>,
    pub remove: Vec<usize>,
    pub unchanged: Vec<Ipv4Net>,
    pub skipped_local: Vec<Ipv4Net>,
    /// Desired prefixes held by someone else's route (index of the first such route).
    pub foreign: Vec<(Ipv4Net, usize)>,
    pub duplicates: Vec<(Ipv4Net, Ipv4Addr, Ipv4Addr)>,
}

/// The pure step: desired (pod CIDR, node address) pairs, this host's addresses and the main
/// table's routes in, the changes out.
pub(crate) fn plan(
    desired: &[(Ipv4Net, Ipv4Addr)],
    local: &BTreeSet<Ipv4Addr>,
    observed: &[ObservedRoute],
) -> RoutePlan {
    let mut out = RoutePlan::default();

    // Normalise (10.42.1.7/24 means 10.42.1.0/24) and refuse prefixes given twice with
    // different node addresses: which node is right is not ours to guess.
    let mut wanted: BTreeMap<Ipv4Net, Ipv4Addr> = BTreeMap::new();
    let mut contested: BTreeSet<Ipv4Net> = BTreeSet::new();
    for &(cidr, via) in desired {
        let prefix = cidr.trunc();
        match wanted.get(&prefix) {
            Some(&first) if first != via => {
                if contested.insert(prefix) {
                    out.duplicates.push((prefix, first, via));
                }
            }
            Some(_) => {}
            None => {
                wanted.insert(prefix, via);
            }
        }
    }
    for prefix in &contested {
        wanted.remove(prefix);
    }
    wanted.retain(|prefix, via| {
        let remote = !local.contains(via);
        if !remote {
            out.skipped_local.push(*prefix);
        }
        remote
    });

    for (&prefix, &via) in &wanted {
        let same: Vec<usize> = (0..observed.len())
            .filter(|&i| observed[i].prefix == prefix)
            .collect();
        if let Some(&i) = same.iter().find(|&&i| !observed[i].is_berths()) {
            out.foreign.push((prefix, i));
            continue;
        }
        let exact = same.iter().copied().find(|&i| observed[i].is_exactly(via));
        match exact {
            Some(_) => out.unchanged.push(prefix),
            // Replacing keys on (prefix, metric 0): Berth's metric-0 route, if any, changes
            // in place without a moment of no route.
            None if same.iter().any(|&i| observed[i].priority == 0) => {
                out.replace.push((prefix, via))
            }
            None => out.add.push((prefix, via)),
        }
        // Any other Berth route for this prefix (another metric, a leftover) goes.
        out.remove.extend(
            same.iter()
                .copied()
                .filter(|&i| Some(i) != exact && observed[i].priority != 0),
        );
    }

    for (i, r) in observed.iter().enumerate() {
        if r.is_berths() && !wanted.contains_key(&r.prefix) && !contested.contains(&r.prefix) {
            out.remove.push(i);
        }
    }
    out
}

/// The IPv4 routes of the main table, parsed, with the kernel's message for deleting them.
async fn main_table_routes(
    handle: &Handle,
) -> Result<Vec<(ObservedRoute, RouteMessage)>, NetError> {
    let mut dump = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut out = Vec::new();
    while let Some(msg) = dump
        .try_next()
        .await
        .map_err(|e| netlink_error("list", "the main routing table", e, ""))?
    {
        if let Some(view) = parse_main_route(&msg) {
            out.push((view, msg));
        }
    }
    Ok(out)
}

fn parse_main_route(msg: &RouteMessage) -> Option<ObservedRoute> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut priority = 0;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
            RouteAttribute::Priority(p) => priority = *p,
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let prefix = Ipv4Net::new(dst, msg.header.destination_prefix_length).ok()?;
    Some(ObservedRoute {
        prefix,
        protocol: u8::from(msg.header.protocol),
        gateway,
        priority,
        oif,
        kind: msg.header.kind,
    })
}

fn route_message(prefix: Ipv4Net, via: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(prefix.network(), prefix.prefix_len())
        .gateway(via)
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
        .build()
}

async fn apply(
    handle: &Handle,
    plan: RoutePlan,
    observed: &[(ObservedRoute, RouteMessage)],
) -> Result<RouteSync, NetError> {
    let mut errors = Vec::new();
    let mut done = RouteSync {
        unchanged: plan.unchanged,
        skipped_local: plan.skipped_local,
        ..RouteSync::default()
    };

    for (prefix, first, second) in plan.duplicates {
        errors.push(NetError::DuplicatePodCidr {
            prefix,
            first,
            second,
        });
    }
    for (prefix, i) in plan.foreign {
        let route = &observed[i].0;
        let dev = match route.oif {
            Some(index) => link_name(handle, index).await,
            None => None,
        };
        errors.push(NetError::ForeignRoute {
            prefix,
            existing: route.describe(dev.as_deref()),
        });
    }
    for (prefix, via) in plan.add {
        match handle
            .route()
            .add(route_message(prefix, via))
            .execute()
            .await
        {
            Ok(()) => done.added.push(prefix),
            Err(e) => errors.push(netlink_error(
                "add route",
                format!("{prefix} via {via}"),
                e,
                UNREACHABLE_HINT,
            )),
        }
    }
    for (prefix, via) in plan.replace {
        match handle
            .route()
            .add(route_message(prefix, via))
            .replace()
            .execute()
            .await
        {
            Ok(()) => done.replaced.push(prefix),
            Err(e) => errors.push(netlink_error(
                "replace route",
                format!("{prefix} via {via}"),
                e,
                UNREACHABLE_HINT,
            )),
        }
    }
    for i in plan.remove {
        let (route, msg) = &observed[i];
        match handle.route().del(msg.clone()).execute().await {
            Ok(()) => done.removed.push(route.prefix),
            // Already gone (ESRCH): that is the goal.
            Err(e) if super::errno_of(&e) == Some(libc::ESRCH) => done.removed.push(route.prefix),
            Err(e) => {
                errors.push(netlink_error("delete route", route.describe(None), e, ""));
            }
        }
    }
    NetError::from_steps("route", errors)?;
    Ok(done)
}

/// The interface name for an error message; best effort.
async fn link_name(handle: &Handle, index: u32) -> Option<String> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut links = handle.link().get().match_index(index).execute();
    let msg = links.try_next().await.ok().flatten()?;
    msg.attributes.into_iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("cidr")
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }
    fn berth(prefix: &str, via: &str) -> ObservedRoute {
        ObservedRoute {
            prefix: net(prefix),
            protocol: ROUTE_PROTOCOL,
            gateway: Some(ip(via)),
            priority: 0,
            oif: Some(2),
            kind: RouteType::Unicast,
        }
    }
    fn foreign(prefix: &str, via: &str) -> ObservedRoute {
        ObservedRoute {
            protocol: 3,
            ..berth(prefix, via)
        }
    }
    fn local() -> BTreeSet<Ipv4Addr> {
        [ip("10.99.0.1"), ip("127.0.0.1")].into()
    }

    #[test]
    fn adds_missing_routes_and_skips_cidrs_of_this_host() {
        let p = plan(
            &[
                (net("10.42.0.0/24"), ip("10.99.0.1")),
                (net("10.42.1.0/24"), ip("10.99.0.2")),
            ],
            &local(),
            &[],
        );
        assert_eq!(p.add, vec![(net("10.42.1.0/24"), ip("10.99.0.2"))]);
        assert_eq!(p.skipped_local, vec![net("10.42.0.0/24")]);
        assert!(p.remove.is_empty() && p.replace.is_empty() && p.foreign.is_empty());
    }

    #[test]
    fn nothing_to_do_when_the_table_already_matches() {
        let observed = [
            berth("10.42.1.0/24", "10.99.0.2"),
            foreign("0.0.0.0/0", "10.99.0.254"),
        ];
        let p = plan(
            &[(net("10.42.1.0/24"), ip("10.99.0.2"))],
            &local(),
            &observed,
        );
        assert_eq!(
            p,
            RoutePlan {
                unchanged: vec![net("10.42.1.0/24")],
                ..RoutePlan::default()
            }
        );
    }

    #[test]
    fn removes_berth_routes_of_nodes_that_left_but_never_foreign_ones() {
        let observed = [
            berth("10.42.1.0/24", "10.99.0.2"),
            berth("10.42.2.0/24", "10.99.0.3"),
            foreign("10.42.9.0/24", "10.99.0.9"),
        ];
        let p = plan(
            &[(net("10.42.1.0/24"), ip("10.99.0.2"))],
            &local(),
            &observed,
        );
        assert_eq!(p.remove, vec![1]);
    }

    #[test]
    fn replaces_a_berth_route_whose_node_address_changed() {
        let observed = [berth("10.42.1.0/24", "10.99.0.2")];
        let p = plan(
            &[(net("10.42.1.0/24"), ip("10.99.0.7"))],
            &local(),
            &observed,
        );
        assert_eq!(p.replace, vec![(net("10.42.1.0/24"), ip("10.99.0.7"))]);
        assert!(p.remove.is_empty() && p.add.is_empty());
    }

    #[test]
    fn reports_a_foreign_route_for_a_desired_prefix_and_leaves_it() {
        let observed = [foreign("10.42.1.0/24", "10.99.0.5")];
        let p = plan(
            &[(net("10.42.1.0/24"), ip("10.99.0.2"))],
            &local(),
            &observed,
        );
        assert_eq!(p.foreign, vec![(net("10.42.1.0/24"), 0)]);
        assert!(p.add.is_empty() && p.replace.is_empty() && p.remove.is_empty());
    }

    #[test]
    fn removes_its_own_route_once_the_cidr_became_local() {
        let observed = [berth("10.42.0.0/24", "10.99.0.5")];
        let p = plan(
            &[(net("10.42.0.0/24"), ip("10.99.0.1"))],
            &local(),
            &observed,
        );
        assert_eq!(p.remove, vec![0]);
        assert_eq!(p.skipped_local, vec![net("10.42.0.0/24")]);
    }

    #[test]
    fn a_prefix_given_for_two_nodes_is_reported_and_its_route_kept() {
        let observed = [berth("10.42.1.0/24", "10.99.0.2")];
        let p = plan(
            &[
                (net("10.42.1.0/24"), ip("10.99.0.2")),
                (net("10.42.1.0/24"), ip("10.99.0.3")),
                (net("10.42.1.0/24"), ip("10.99.0.4")),
            ],
            &local(),
            &observed,
        );
        assert_eq!(
            p.duplicates,
            vec![(net("10.42.1.0/24"), ip("10.99.0.2"), ip("10.99.0.3"))]
        );
        assert!(p.remove.is_empty() && p.add.is_empty() && p.replace.is_empty());
    }

    #[test]
    fn host_bits_in_a_pod_cidr_are_ignored_and_extra_berth_metrics_removed() {
        let observed = [
            berth("10.42.1.0/24", "10.99.0.2"),
            ObservedRoute {
                priority: 100,
                ..berth("10.42.1.0/24", "10.99.0.2")
            },
        ];
        let p = plan(
            &[(net("10.42.1.9/24"), ip("10.99.0.2"))],
            &local(),
            &observed,
        );
        assert_eq!(p.unchanged, vec![net("10.42.1.0/24")]);
        assert_eq!(p.remove, vec![1]);
    }

    #[test]
    fn describes_a_foreign_route_like_ip_route() {
        let r = ObservedRoute {
            priority: 5,
            ..foreign("10.42.1.0/24", "10.99.0.5")
        };
        assert_eq!(
            r.describe(Some("eth0")),
            "10.42.1.0/24 via 10.99.0.5 dev eth0 proto boot metric 5"
        );
        let b = ObservedRoute {
            kind: RouteType::BlackHole,
            gateway: None,
            oif: None,
            ..r
        };
        assert_eq!(
            b.describe(None),
            "blackhole 10.42.1.0/24 proto boot metric 5"
        );
    }
}
