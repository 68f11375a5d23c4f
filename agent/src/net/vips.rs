//! Service VIPs: each ClusterIP as a /32 on the dummy interface [`VIPS_INTERFACE`], like
//! kube-proxy's `kube-ipvs0`, so the ClusterIP is a local address and the node's userspace
//! proxy can bind ClusterIP:port.
//!
//! [`sync_vips`] finds (or creates, up) the interface, lists its IPv4 addresses, and lets the
//! pure `plan` decide what to add and remove. A `berth-svc` that is not a dummy belongs to
//! someone else and is never touched ([`NetError::NotDummy`]).
//!
//! Kernels built without the dummy driver (CONFIG_DUMMY unset; e.g. some minimal VM kernels,
//! where creating one fails with EOPNOTSUPP) get an `ifb` device instead: like a dummy it is
//! NOARP and carries no traffic of its own (packets to a local address are delivered through
//! loopback whatever interface holds it), so it works the same as an address holder. Because
//! an ifb could be someone's traffic-shaping device, it counts as Berth's only when it carries
//! the alias [`VIPS_ALIAS`], which Berth sets on both kinds.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkDummy, LinkIfb, LinkUnspec};

use super::{errno_of, netlink_error, with_netlink, NetError};

/// The dummy interface holding the ClusterIPs.
pub const VIPS_INTERFACE: &str = "berth-svc";
/// The interface alias (`ip -d link show berth-svc`) marking it as Berth's.
pub const VIPS_ALIAS: &str = "berth: Service ClusterIPs";

/// What one [`sync_vips`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipSync {
    pub created_interface: bool,
    /// The interface's kind: "dummy", or "ifb" where the kernel has no dummy driver.
    pub kind: &'static str,
    /// The interface existed but was down.
    pub brought_up: bool,
    pub added: Vec<Ipv4Addr>,
    /// Addresses removed, with their prefix length (a ClusterIP held with another length is
    /// removed and re-added as /32).
    pub removed: Vec<Ipv4Net>,
    pub unchanged: usize,
}

impl VipSync {
    pub fn changed(&self) -> bool {
        self.created_interface
            || self.brought_up
            || !self.added.is_empty()
            || !self.removed.is_empty()
    }
}

/// Makes [`VIPS_INTERFACE`] exist, be up, and hold exactly `vips` as /32 IPv4 addresses.
pub async fn sync_vips(vips: &BTreeSet<Ipv4Addr>) -> Result<VipSync, NetError> {
    with_netlink("sync Service VIPs", async |handle| {
        let mut done = VipSync::default();
        let index = match find_link(&handle, VIPS_INTERFACE).await? {
            Some(link) => {
                let (index, kind) = vips_link(&link)?;
                done.kind = kind;
                if !link.header.flags.contains(LinkFlags::Up) {
                    handle
                        .link()
                        .set(LinkUnspec::new_with_index(index).up().build())
                        .execute()
                        .await
                        .map_err(|e| {
                            netlink_error("bring up", format!("interface {VIPS_INTERFACE}"), e, "")
                        })?;
                    done.brought_up = true;
                }
                index
            }
            None => {
                done.created_interface = create_link(&handle).await?;
                let link = find_link(&handle, VIPS_INTERFACE).await?.ok_or_else(|| {
                    NetError::Vanished {
                        object: format!("interface {VIPS_INTERFACE}"),
                    }
                })?;
                if !has_alias(&link) {
                    // Kernels that ignore IFLA_IFALIAS on creation. An ifb left without the
                    // alias would be refused by every later sync, so undo the creation when
                    // the alias cannot be set.
                    let index = link.header.index;
                    let set = handle
                        .link()
                        .set(LinkUnspec::new_with_index(index).alias(VIPS_ALIAS).build())
                        .execute()
                        .await;
                    if let Err(e) = set {
                        let _ = handle.link().del(index).execute().await;
                        return Err(netlink_error(
                            "set the alias of",
                            format!("interface {VIPS_INTERFACE}"),
                            e,
                            "",
                        ));
                    }
                }
                let link = find_link(&handle, VIPS_INTERFACE).await?.ok_or_else(|| {
                    NetError::Vanished {
                        object: format!("interface {VIPS_INTERFACE}"),
                    }
                })?;
                let (index, kind) = vips_link(&link)?;
                done.kind = kind;
                index
            }
        };

        let observed = addresses(&handle, index).await?;
        let views: Vec<(Ipv4Addr, u8)> = observed.iter().map(|(a, l, _)| (*a, *l)).collect();
        let (add, remove) = plan(vips, &views);
        done.unchanged = views.len() - remove.len();

        let mut errors = Vec::new();
        // Remove first: a ClusterIP held as, say, /24 must go before it comes back as /32.
        for i in remove {
            let (addr, len, msg) = &observed[i];
            match handle.address().del(msg.clone()).execute().await {
                Ok(()) => done.removed.push(to_net(*addr, *len)),
                Err(e) if errno_of(&e) == Some(libc::EADDRNOTAVAIL) => {
                    done.removed.push(to_net(*addr, *len))
                }
                Err(e) => errors.push(netlink_error(
                    "remove address",
                    format!("{addr}/{len} from {VIPS_INTERFACE}"),
                    e,
                    "",
                )),
            }
        }
        for addr in add {
            match handle
                .address()
                .add(index, IpAddr::V4(addr), 32)
                .execute()
                .await
            {
                Ok(()) => done.added.push(addr),
                Err(e) if errno_of(&e) == Some(libc::EEXIST) => done.added.push(addr),
                Err(e) => errors.push(netlink_error(
                    "add address",
                    format!("{addr}/32 to {VIPS_INTERFACE}"),
                    e,
                    "",
                )),
            }
        }
        NetError::from_steps("Service VIP", errors)?;
        Ok(done)
    })
    .await
}

/// Deletes [`VIPS_INTERFACE`] (and with it every VIP). `Ok(false)` if it was not there.
pub async fn remove_vips_interface() -> Result<bool, NetError> {
    with_netlink("remove the Service VIP interface", async |handle| {
        let Some(link) = find_link(&handle, VIPS_INTERFACE).await? else {
            return Ok(false);
        };
        let (index, _) = vips_link(&link)?;
        match handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(netlink_error(
                "delete",
                format!("interface {VIPS_INTERFACE}"),
                e,
                "",
            )),
        }
    })
    .await
}

/// The pure step: which desired VIPs to add, and which observed (address, prefix length)
/// entries to remove (anything not a desired /32).
pub(crate) fn plan(
    desired: &BTreeSet<Ipv4Addr>,
    observed: &[(Ipv4Addr, u8)],
) -> (Vec<Ipv4Addr>, Vec<usize>) {
    let mut present = BTreeSet::new();
    let mut remove = Vec::new();
    for (i, &(addr, len)) in observed.iter().enumerate() {
        if len == 32 && desired.contains(&addr) && present.insert(addr) {
            continue;
        }
        remove.push(i);
    }
    let add = desired.difference(&present).copied().collect();
    (add, remove)
}

fn to_net(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    Ipv4Net::new(addr, len).unwrap_or_else(|_| Ipv4Net::from(addr))
}

async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(netlink_error("look up", format!("interface {name}"), e, "")),
    }
}

/// The link's index and kind if it is Berth's: a dummy, or an ifb with [`VIPS_ALIAS`];
/// [`NetError::NotDummy`] otherwise.
fn vips_link(link: &LinkMessage) -> Result<(u32, &'static str), NetError> {
    let kind = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    });
    match kind {
        Some(InfoKind::Dummy) => Ok((link.header.index, "dummy")),
        Some(InfoKind::Ifb) if has_alias(link) => Ok((link.header.index, "ifb")),
        Some(InfoKind::Ifb) => Err(NetError::NotDummy {
            name: VIPS_INTERFACE.to_string(),
            kind: format!("ifb (without Berth's alias {VIPS_ALIAS:?})"),
        }),
        Some(other) => Err(NetError::NotDummy {
            name: VIPS_INTERFACE.to_string(),
            kind: other.to_string(),
        }),
        // Physical devices and loopback carry no kind at all.
        None => Err(NetError::NotDummy {
            name: VIPS_INTERFACE.to_string(),
            kind: "device (no link kind)".to_string(),
        }),
    }
}

fn has_alias(link: &LinkMessage) -> bool {
    link.attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::IfAlias(s) if s == VIPS_ALIAS))
}

/// Creates the interface, up: a dummy, or an ifb where the kernel has no dummy driver.
/// `Ok(false)` if it appeared concurrently.
async fn create_link(handle: &Handle) -> Result<bool, NetError> {
    let dummy = LinkDummy::new(VIPS_INTERFACE)
        .up()
        .alias(VIPS_ALIAS)
        .build();
    let e = match handle.link().add(dummy).execute().await {
        Ok(()) => return Ok(true),
        Err(e) if errno_of(&e) == Some(libc::EEXIST) => return Ok(false),
        Err(e) => e,
    };
    if errno_of(&e) != Some(libc::EOPNOTSUPP) {
        return Err(netlink_error(
            "create",
            format!("dummy interface {VIPS_INTERFACE}"),
            e,
            "",
        ));
    }
    tracing::info!(
        interface = VIPS_INTERFACE,
        "the kernel has no dummy driver (CONFIG_DUMMY); holding Service IPs on an ifb device"
    );
    let ifb = LinkIfb::new(VIPS_INTERFACE).up().alias(VIPS_ALIAS).build();
    match handle.link().add(ifb).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(netlink_error(
            "create",
            format!("interface {VIPS_INTERFACE} (neither the dummy nor the ifb driver is available: EOPNOTSUPP for dummy)"),
            e,
            "",
        )),
    }
}

/// The interface's IPv4 addresses: (address, prefix length, the kernel's message).
async fn addresses(
    handle: &Handle,
    index: u32,
) -> Result<Vec<(Ipv4Addr, u8, AddressMessage)>, NetError> {
    let mut dump = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut out = Vec::new();
    while let Some(msg) = dump.try_next().await.map_err(|e| {
        netlink_error(
            "list addresses of",
            format!("interface {VIPS_INTERFACE}"),
            e,
            "",
        )
    })? {
        if msg.header.family != AddressFamily::Inet {
            continue;
        }
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
            _ => None,
        });
        let addr = addr.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(a)) => Some(*a),
                _ => None,
            })
        });
        if let Some(addr) = addr {
            out.push((addr, msg.header.prefix_len, msg));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    fn link(kind: Option<InfoKind>, alias: Option<&str>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        if let Some(k) = kind {
            m.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(k)]));
        }
        if let Some(a) = alias {
            m.attributes.push(LinkAttribute::IfAlias(a.to_string()));
        }
        m
    }

    #[test]
    fn a_dummy_or_an_ifb_with_berths_alias_is_berths_and_anything_else_is_refused() {
        assert_eq!(
            vips_link(&link(Some(InfoKind::Dummy), None)).ok(),
            Some((7, "dummy"))
        );
        assert_eq!(
            vips_link(&link(Some(InfoKind::Ifb), Some(VIPS_ALIAS))).ok(),
            Some((7, "ifb"))
        );
        for (kind, alias) in [
            (Some(InfoKind::Ifb), None),
            (Some(InfoKind::Bridge), Some(VIPS_ALIAS)),
            (None, None),
        ] {
            let err = vips_link(&link(kind, alias)).expect_err("not Berth's");
            assert!(matches!(err, NetError::NotDummy { .. }), "{err:?}");
        }
    }

    #[test]
    fn adds_missing_and_removes_extra_vips() {
        let desired: BTreeSet<_> = [ip("10.43.0.1"), ip("10.43.0.10")].into();
        let observed = [(ip("10.43.0.10"), 32), (ip("10.43.0.99"), 32)];
        assert_eq!(plan(&desired, &observed), (vec![ip("10.43.0.1")], vec![1]));
    }

    #[test]
    fn a_vip_held_with_another_prefix_length_is_re_added_as_host_address() {
        let desired: BTreeSet<_> = [ip("10.43.0.10")].into();
        let observed = [(ip("10.43.0.10"), 24)];
        assert_eq!(plan(&desired, &observed), (vec![ip("10.43.0.10")], vec![0]));
    }

    #[test]
    fn nothing_to_do_when_in_sync_and_everything_goes_when_empty() {
        let desired: BTreeSet<_> = [ip("10.43.0.10")].into();
        assert_eq!(plan(&desired, &[(ip("10.43.0.10"), 32)]), (vec![], vec![]));
        assert_eq!(
            plan(&BTreeSet::new(), &[(ip("10.43.0.10"), 32)]),
            (vec![], vec![0])
        );
    }
}
