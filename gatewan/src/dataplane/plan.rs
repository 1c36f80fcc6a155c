//! The data plane planner, pure: from the fabric settings, the tunnel table and the
//! datacenters' networks, every device, rule, route, neighbour, FDB entry and sysctl the
//! host must have. Local repair is part of it: a Down tunnel's table simply points at
//! another tunnel.
//!
//! Numbers (all ours, so the reconciler may remove anything else it finds in them):
//! - rule priorities [`PRIORITY_FIRST`]..=[`PRIORITY_LAST`], by role, not by tunnel: they
//!   must sort before the main table's 32766 while tunnel indexes run into the millions, and
//!   rules of one role can share a priority because each matches its own input interface;
//! - tables [`TABLE_FIRST`]..=[`TABLE_LAST`]: egress, replies, then one per tunnel at
//!   [`TUNNEL_TABLE_BASE`] + tunnel index (unique in the mesh, so stable across restarts);
//! - macvlans `gwm<index>` (at most 3 + 8 characters, within IFNAMSIZ).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use gatewan_proto::v1;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub const VXLAN_DEVICE: &str = "gwvx0";
pub const MACVLAN_PREFIX: &str = "gwm";
pub const DEFAULT_VXLAN_PORT: u16 = 4789;

/// `iif lo goto` [`PRIORITY_REPLIES`]: the gatewan's own packets (above all wireguard's
/// encrypted ones) skip the per-tunnel rules below, which match only forwarded packets;
/// without it each of them would be checked against four rules per tunnel per family.
pub const PRIORITY_OWN_TRAFFIC: u32 = 1000;
/// `iif <macvlan> lookup <tunnel table>`.
pub const PRIORITY_INGRESS: u32 = 1001;
/// `iif <macvlan> unreachable`: a table without a usable route ends here, not in main.
pub const PRIORITY_INGRESS_END: u32 = 1002;
/// `iif gwvx0 unreachable`: frames sent to the VXLAN device's own MAC.
pub const PRIORITY_FABRIC_END: u32 = 1003;
/// `iif <tunnel> lookup egress`.
pub const PRIORITY_EGRESS: u32 = 1010;
pub const PRIORITY_EGRESS_END: u32 = 1011;
/// `iif lo lookup replies`: the gatewan's own packets to tenants (ICMP errors: unreachable,
/// fragmentation needed, time exceeded) follow the data plane instead of the main table,
/// whose default route leads out of a transit in clear.
pub const PRIORITY_REPLIES: u32 = 1020;
pub const PRIORITY_FIRST: u32 = 1000;
pub const PRIORITY_LAST: u32 = 1029;

pub const TABLE_FIRST: u32 = 0x5d00_0000;
pub const TABLE_LAST: u32 = 0x5dff_ffff;
pub const EGRESS_TABLE: u32 = TABLE_FIRST;
/// Holds no default route: a lookup that finds nothing falls through to the next rule, so
/// the gatewan's own traffic to anything but a tenant prefix is untouched.
pub const REPLIES_TABLE: u32 = TABLE_FIRST + 1;
pub const TUNNEL_TABLE_BASE: u32 = TABLE_FIRST + 16;
/// Largest tunnel index with a table in range.
pub const MAX_TUNNEL_INDEX: u64 = (TABLE_LAST - TUNNEL_TABLE_BASE) as u64;

pub const FORWARD_METRIC: u32 = 100;
/// The `unreachable default` under every forwarding default: when the forwarding route
/// goes (its device deleted), the packet is dropped here, never looked up in main.
pub const UNREACHABLE_METRIC: u32 = 0xffff;

pub type Mac = [u8; 6];

pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

pub fn mac_string(m: &Mac) -> String {
    m.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fabric side, from `fabric{vtep, vni, interface, port}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricSettings {
    pub vtep: Ipv4Addr,
    pub vni: u32,
    /// The underlay interface the VXLAN device sends through.
    pub interface: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Established,
    Degraded,
    Down,
    /// Nothing measured yet, i.e. no probe's timeout has passed since the start (a
    /// restart): the tunnel keeps its own route, so a restarted daemon does not move live
    /// flows before it has measured anything. A tunnel silent since the start is
    /// measured as lost once its first probes time out, and is Down from then on.
    Unknown,
}

/// A tunnel as the data plane sees it (a row of the tunnel table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelInput {
    pub interface: String,
    pub index: u64,
    pub router_mac: Mac,
    pub target_datacenter: String,
    pub health: Health,
    pub latency_ns: u64,
    /// The peer gatewan's addresses on the tunnel (the source of its ICMP errors).
    pub peer_addresses: Vec<IpAddr>,
}

impl TunnelInput {
    /// None for a row whose MAC does not parse (the tunnel manager writes it; never seen).
    pub fn from_info(t: &v1::TunnelInfo) -> Option<TunnelInput> {
        let health = match t.state.as_str() {
            "Established" => Health::Established,
            "Degraded" => Health::Degraded,
            _ if t.measurements == 0 => Health::Unknown,
            _ => Health::Down,
        };
        Some(TunnelInput {
            interface: t.interface.clone(),
            index: t.index,
            router_mac: parse_mac(&t.router_mac)?,
            target_datacenter: t.target_datacenter.clone(),
            health,
            latency_ns: t.latency_ns,
            peer_addresses: t
                .peer_info
                .iter()
                .flat_map(|p| [&p.local_address_v4, &p.local_address_v6])
                .filter_map(|a| a.parse().ok())
                .collect(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum NextHop {
    /// A fabric VTEP and its Router's MAC (an EVPN type-5 route, through bgpctl).
    Vtep { vtep: Ipv4Addr, router_mac: Mac },
    /// A plain gateway (`networks[].via`).
    Gateway(IpAddr),
}

/// A prefix of our datacenter and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalNetwork {
    pub prefix: IpNet,
    pub next_hop: NextHop,
}

/// A prefix of another datacenter (for the replies table).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteNetwork {
    pub prefix: IpNet,
    pub datacenter: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    pub fabric: FabricSettings,
    pub tunnels: Vec<TunnelInput>,
    pub local_networks: Vec<LocalNetwork>,
    pub remote_networks: Vec<RemoteNetwork>,
    /// Links on the host: a tunnel whose interface is missing cannot carry anything, and
    /// the kernel refuses routes into it.
    pub present: BTreeSet<String>,
    /// The tunnel each of our forwarding routes points at on the host now, so a choice
    /// among near-equal tunnels sticks (see [`best_healthy`]); filled from the host like
    /// `present`, so it survives a restart.
    pub installed: BTreeMap<RouteKey, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub vni: u32,
    pub local: Ipv4Addr,
    pub port: u16,
    pub underlay: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub v6: bool,
    pub priority: u32,
    pub iif: String,
    pub to: RuleTo,
}

/// What a rule does with the packets it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleTo {
    Lookup(u32),
    Unreachable,
    /// Continue at the rules of this priority.
    Goto(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub table: u32,
    pub prefix: IpNet,
    pub metric: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteAction {
    Unreachable,
    /// Into an interface (a tunnel), no gateway.
    Dev(String),
    /// `via VTEP dev gwvx0 onlink`, one next hop per VTEP (ECMP). An IPv6 prefix goes via
    /// `::ffff:VTEP`, as FRR installs type-5 routes: IPv6 routes take no IPv4 gateway
    /// (RTA_VIA is IPv4-only in Linux), and the mapped address gets its own neighbour.
    Vteps(BTreeSet<Ipv4Addr>),
    /// A normal gateway route; the kernel finds the interface.
    Gateway(IpAddr),
    /// Seen on the host in one of our tables, of a shape we never plan (it is replaced).
    Other(String),
}

/// Everything the data plane wants on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub vxlan: VxlanSpec,
    /// Macvlan name → its MAC (the tunnel's Router's MAC).
    pub macvlans: BTreeMap<String, Mac>,
    pub rules: BTreeSet<Rule>,
    pub routes: BTreeMap<RouteKey, RouteAction>,
    /// On the VXLAN device, permanent.
    pub neighbours: BTreeMap<IpAddr, Mac>,
    /// On the VXLAN device: Router's MAC → VTEP.
    pub fdb: BTreeMap<Mac, Ipv4Addr>,
    /// Path under /proc/sys → value.
    pub sysctls: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    IndexTooLarge {
        interface: String,
    },
    /// Two tunnel rows with the same Router's MAC would need two macvlans with one MAC.
    DuplicateMac {
        interface: String,
    },
    /// One VTEP announced with several Router's MACs: a neighbour entry holds one.
    RouterMacs {
        vtep: Ipv4Addr,
        kept: Mac,
    },
    /// One Router's MAC behind several VTEPs: an FDB entry holds one.
    SharedMac {
        router_mac: Mac,
        kept: Ipv4Addr,
    },
    /// A prefix both in `networks[]` and learned from the fabric: the static one is used.
    StaticOverrides {
        prefix: IpNet,
    },
    UnusableNetwork {
        prefix: String,
        why: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::IndexTooLarge { interface } => write!(
                f,
                "tunnel {interface}: index above {MAX_TUNNEL_INDEX}, no routing table; its traffic is dropped"
            ),
            Problem::DuplicateMac { interface } => {
                write!(f, "tunnel {interface} has another tunnel's Router's MAC")
            }
            Problem::RouterMacs { vtep, kept } => write!(
                f,
                "VTEP {vtep} is announced with several Router's MACs; using {}",
                mac_string(kept)
            ),
            Problem::SharedMac { router_mac, kept } => write!(
                f,
                "Router's MAC {} is announced by several VTEPs; sending it to {kept}",
                mac_string(router_mac)
            ),
            Problem::StaticOverrides { prefix } => write!(
                f,
                "{prefix} is in networks[] and learned from the fabric; using networks[]"
            ),
            Problem::UnusableNetwork { prefix, why } => write!(f, "network {prefix}: {why}"),
        }
    }
}

pub fn macvlan_name(index: u64) -> String {
    format!("{MACVLAN_PREFIX}{index}")
}

/// Our macvlans: the prefix and digits only.
pub fn is_our_macvlan(name: &str) -> bool {
    name.strip_prefix(MACVLAN_PREFIX)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

pub fn tunnel_table(index: u64) -> Option<u32> {
    (index <= MAX_TUNNEL_INDEX).then(|| TUNNEL_TABLE_BASE + index as u32)
}

fn defaults(table: u32, action: RouteAction, out: &mut BTreeMap<RouteKey, RouteAction>) {
    // The defaults of ipnet's types are 0.0.0.0/0 and ::/0.
    for prefix in [IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())] {
        if action != RouteAction::Unreachable {
            out.insert(
                RouteKey {
                    table,
                    prefix,
                    metric: FORWARD_METRIC,
                },
                action.clone(),
            );
        }
        out.insert(
            RouteKey {
                table,
                prefix,
                metric: UNREACHABLE_METRIC,
            },
            RouteAction::Unreachable,
        );
    }
}

fn both_families(priority: u32, iif: &str, to: RuleTo, out: &mut BTreeSet<Rule>) {
    for v6 in [false, true] {
        out.insert(Rule {
            v6,
            priority,
            iif: iif.to_string(),
            to,
        });
    }
}

/// A tunnel already carrying a repaired table's traffic keeps it against a sibling faster
/// by less than this (or a fifth of the sibling's latency, if more): probes of near-equal
/// tunnels with jitter swap ranks every few seconds, and moving live flows on each swap
/// reorders them for nothing.
pub const STICKY_LATENCY_NS: u64 = 5_000_000;

/// The healthy tunnel that carries traffic for `target_datacenter`: Established before
/// Degraded, then the lowest latency, then the interface name; but `current`, the one the
/// route uses now, while it is as healthy and not clearly slower ([`STICKY_LATENCY_NS`]).
fn best_healthy<'a>(
    tunnels: &'a [TunnelInput],
    present: &BTreeSet<String>,
    target_datacenter: &str,
    current: Option<&String>,
) -> Option<&'a TunnelInput> {
    let healthy = || {
        tunnels.iter().filter(|t| {
            t.target_datacenter == target_datacenter
                && matches!(t.health, Health::Established | Health::Degraded)
                && present.contains(&t.interface)
        })
    };
    let best = healthy().min_by(|a, b| {
        (a.health, a.latency_ns, &a.interface).cmp(&(b.health, b.latency_ns, &b.interface))
    })?;
    let margin = STICKY_LATENCY_NS.max(best.latency_ns / 5);
    let kept = current.and_then(|c| {
        healthy().find(|t| {
            &t.interface == c
                && t.health == best.health
                && t.latency_ns <= best.latency_ns.saturating_add(margin)
        })
    });
    Some(kept.unwrap_or(best))
}

/// Where a tunnel's table sends its traffic. A Down (or missing) tunnel's traffic goes to
/// its best healthy sibling toward the same datacenter. With no such sibling, a tunnel
/// that is still there keeps its own route: Down is a loss threshold, not proof that
/// nothing gets through, the traffic stays encrypted, and every tunnel reads Down for a
/// moment after a restart. A missing tunnel with no sibling gets nothing (unreachable).
fn tunnel_target(
    t: &TunnelInput,
    all: &[TunnelInput],
    present: &BTreeSet<String>,
    current: Option<&String>,
) -> RouteAction {
    let there = present.contains(&t.interface);
    if there && t.health != Health::Down {
        return RouteAction::Dev(t.interface.clone());
    }
    match best_healthy(all, present, &t.target_datacenter, current) {
        Some(b) => RouteAction::Dev(b.interface.clone()),
        None if there => RouteAction::Dev(t.interface.clone()),
        None => RouteAction::Unreachable,
    }
}

/// The host state the inputs call for, and what could not be planned.
pub fn plan(inputs: &Inputs) -> (Desired, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut macvlans = BTreeMap::new();
    let mut rules = BTreeSet::new();
    let mut routes = BTreeMap::new();
    let mut sysctls = BTreeMap::new();
    let mut tunnels = inputs.tunnels.clone();
    tunnels.sort_by(|a, b| (a.index, &a.interface).cmp(&(b.index, &b.interface)));
    tunnels.dedup_by(|a, b| a.interface == b.interface);
    let mut macs_seen = BTreeSet::new();

    for t in &tunnels {
        let Some(table) = tunnel_table(t.index) else {
            problems.push(Problem::IndexTooLarge {
                interface: t.interface.clone(),
            });
            continue;
        };
        if !macs_seen.insert(t.router_mac) {
            problems.push(Problem::DuplicateMac {
                interface: t.interface.clone(),
            });
            continue;
        }
        let mv = macvlan_name(t.index);
        macvlans.insert(mv.clone(), t.router_mac);
        both_families(PRIORITY_INGRESS, &mv, RuleTo::Lookup(table), &mut rules);
        both_families(PRIORITY_INGRESS_END, &mv, RuleTo::Unreachable, &mut rules);
        let current = inputs.installed.get(&RouteKey {
            table,
            prefix: IpNet::V4(Ipv4Net::default()),
            metric: FORWARD_METRIC,
        });
        defaults(
            table,
            tunnel_target(t, &tunnels, &inputs.present, current),
            &mut routes,
        );
        both_families(
            PRIORITY_EGRESS,
            &t.interface,
            RuleTo::Lookup(EGRESS_TABLE),
            &mut rules,
        );
        both_families(
            PRIORITY_EGRESS_END,
            &t.interface,
            RuleTo::Unreachable,
            &mut rules,
        );
        sysctls.insert(quiet_ipv6_path(&mv), "1".into());
        sysctls.insert(rp_filter_path(&mv), "0".into());
        if inputs.present.contains(&t.interface) {
            sysctls.insert(rp_filter_path(&t.interface), "0".into());
        }
    }
    both_families(
        PRIORITY_FABRIC_END,
        VXLAN_DEVICE,
        RuleTo::Unreachable,
        &mut rules,
    );
    both_families(
        PRIORITY_OWN_TRAFFIC,
        "lo",
        RuleTo::Goto(PRIORITY_REPLIES),
        &mut rules,
    );
    both_families(
        PRIORITY_REPLIES,
        "lo",
        RuleTo::Lookup(REPLIES_TABLE),
        &mut rules,
    );
    defaults(EGRESS_TABLE, RouteAction::Unreachable, &mut routes);

    // Egress: every local prefix, ECMP over the VTEPs that announce it.
    let mut by_prefix: BTreeMap<IpNet, (BTreeSet<Ipv4Addr>, Option<IpAddr>)> = BTreeMap::new();
    let mut vtep_macs: BTreeMap<Ipv4Addr, BTreeSet<Mac>> = BTreeMap::new();
    for n in &inputs.local_networks {
        let prefix = n.prefix.trunc();
        let entry = by_prefix.entry(prefix).or_default();
        match n.next_hop {
            NextHop::Vtep { vtep, router_mac } => {
                entry.0.insert(vtep);
                vtep_macs.entry(vtep).or_default().insert(router_mac);
            }
            NextHop::Gateway(via) if via.is_ipv4() == prefix.addr().is_ipv4() => {
                entry.1 = Some(entry.1.map_or(via, |v| v.min(via)));
            }
            NextHop::Gateway(via) => problems.push(Problem::UnusableNetwork {
                prefix: prefix.to_string(),
                why: format!("gateway {via} is of the other address family"),
            }),
        }
    }
    let mut used_vteps = BTreeSet::new();
    let mut local_routes = BTreeMap::new();
    for (prefix, (vteps, static_via)) in by_prefix {
        let action = match static_via {
            Some(via) => {
                if !vteps.is_empty() {
                    problems.push(Problem::StaticOverrides { prefix });
                }
                RouteAction::Gateway(via)
            }
            None if vteps.is_empty() => continue,
            None => {
                used_vteps.extend(vteps.iter().copied());
                RouteAction::Vteps(vteps)
            }
        };
        local_routes.insert(prefix, action);
    }
    let mut neighbours = BTreeMap::new();
    let mut fdb: BTreeMap<Mac, Ipv4Addr> = BTreeMap::new();
    for vtep in used_vteps {
        let Some(macs) = vtep_macs.get(&vtep) else {
            continue;
        };
        let Some(&mac) = macs.first() else {
            continue;
        };
        if macs.len() > 1 {
            problems.push(Problem::RouterMacs { vtep, kept: mac });
        }
        neighbours.insert(IpAddr::V4(vtep), mac);
        neighbours.insert(IpAddr::V6(vtep.to_ipv6_mapped()), mac);
        // VTEPs come in order, so the lowest VTEP keeps a shared MAC.
        match fdb.entry(mac) {
            std::collections::btree_map::Entry::Occupied(e) => problems.push(Problem::SharedMac {
                router_mac: mac,
                kept: *e.get(),
            }),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(vtep);
            }
        }
    }
    for (prefix, action) in &local_routes {
        for table in [EGRESS_TABLE, REPLIES_TABLE] {
            routes.insert(
                RouteKey {
                    table,
                    prefix: *prefix,
                    metric: FORWARD_METRIC,
                },
                action.clone(),
            );
        }
    }

    // Replies toward other datacenters go into one of their tunnels (any, even Down, is
    // better than the main table); with none, nowhere.
    for r in &inputs.remote_networks {
        let prefix = r.prefix.trunc();
        if local_routes.contains_key(&prefix) {
            continue;
        }
        let key = RouteKey {
            table: REPLIES_TABLE,
            prefix,
            metric: FORWARD_METRIC,
        };
        let current = inputs.installed.get(&key);
        let usable = |t: &&TunnelInput| {
            t.target_datacenter == r.datacenter && inputs.present.contains(&t.interface)
        };
        // Without a healthy tunnel (a restart, before any probe) the one in use stays.
        let action = best_healthy(&tunnels, &inputs.present, &r.datacenter, current)
            .or_else(|| {
                tunnels
                    .iter()
                    .filter(usable)
                    .find(|t| Some(&t.interface) == current)
            })
            .or_else(|| tunnels.iter().find(usable))
            .map_or(RouteAction::Unreachable, |t| {
                RouteAction::Dev(t.interface.clone())
            });
        routes.insert(key, action);
    }

    sysctls.insert("net/ipv4/ip_forward".into(), "1".into());
    sysctls.insert("net/ipv6/conf/all/forwarding".into(), "1".into());
    sysctls.insert(quiet_ipv6_path(VXLAN_DEVICE), "1".into());
    sysctls.insert(rp_filter_path(VXLAN_DEVICE), "0".into());

    let f = &inputs.fabric;
    (
        Desired {
            vxlan: VxlanSpec {
                vni: f.vni,
                local: f.vtep,
                port: f.port,
                underlay: f.interface.clone(),
            },
            macvlans,
            rules,
            routes,
            neighbours,
            fdb,
            sysctls,
        },
        problems,
    )
}

/// addr_gen_mode 1: no link-local address, so the device sends no DAD, MLD or router
/// solicitations into the fabric or the tunnels.
pub fn quiet_ipv6_path(dev: &str) -> String {
    format!("net/ipv6/conf/{dev}/addr_gen_mode")
}

pub fn rp_filter_path(dev: &str) -> String {
    format!("net/ipv4/conf/{dev}/rp_filter")
}

/// Reverse-path filtering. Traffic through the gatewan is asymmetric by design (a flow may
/// enter by one tunnel and leave by another; sources are tenants the main table does not
/// route), so our devices need rp_filter 0. The kernel applies max(all, device): with
/// `all` above 0 no device setting can lower it. So when `all` is not 0, every other
/// device (and `default`, for devices yet to come) is first raised to at least the old
/// `all`, which keeps their effective value unchanged, and `all` is then set to 0.
///
/// `all` and `others` are the current values (`others`: device or `default` → value);
/// returns the writes in order, as (path, value).
pub fn rp_filter_writes(all: u8, others: &BTreeMap<String, u8>) -> Vec<(String, String)> {
    if all == 0 {
        return Vec::new();
    }
    let mut out: Vec<(String, String)> = others
        .iter()
        .filter(|(_, v)| **v < all)
        .map(|(dev, _)| (rp_filter_path(dev), all.to_string()))
        .collect();
    out.push((rp_filter_path("all"), "0".into()));
    out
}

/// The networks of the mesh as the plan takes them: `records` are (datacenter of the
/// announcing member, network). Our datacenter's records with a VTEP are local networks
/// (records without one are static networks, which come from our own config); the others
/// are remote. Records of another VNI are not for our one VXLAN device.
pub fn networks_from_mesh<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a v1::Network)>,
    our_datacenter: &str,
    vni: u32,
) -> (Vec<LocalNetwork>, Vec<RemoteNetwork>, Vec<Problem>) {
    let mut local = BTreeSet::new();
    let mut remote = BTreeSet::new();
    let mut problems = Vec::new();
    for (dc, n) in records {
        let Ok(prefix) = n.prefix.parse::<IpNet>() else {
            problems.push(Problem::UnusableNetwork {
                prefix: n.prefix.clone(),
                why: "not a prefix".into(),
            });
            continue;
        };
        if dc != our_datacenter {
            remote.insert(RemoteNetwork {
                prefix: prefix.trunc(),
                datacenter: dc.to_string(),
            });
            continue;
        }
        if n.vtep.is_empty() {
            continue;
        }
        let unusable = |why: String| Problem::UnusableNetwork {
            prefix: n.prefix.clone(),
            why,
        };
        let Ok(vtep) = n.vtep.parse::<Ipv4Addr>() else {
            problems.push(unusable(format!(
                "VTEP {:?} is not an IPv4 address",
                n.vtep
            )));
            continue;
        };
        let Ok(router_mac) = <Mac>::try_from(n.router_mac.as_ref()) else {
            problems.push(unusable("no 6-byte Router's MAC".into()));
            continue;
        };
        if n.vni != vni && n.vni != 0 {
            problems.push(unusable(format!("VNI {} is not fabric.vni {vni}", n.vni)));
            continue;
        }
        local.insert(LocalNetwork {
            prefix: prefix.trunc(),
            next_hop: NextHop::Vtep { vtep, router_mac },
        });
    }
    (
        local.into_iter().collect(),
        remote.into_iter().collect(),
        problems,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn fabric() -> FabricSettings {
        FabricSettings {
            vtep: "10.9.255.2".parse().unwrap(),
            vni: 100,
            interface: "fab0".into(),
            port: DEFAULT_VXLAN_PORT,
        }
    }

    pub(crate) fn tunnel(i: u64, dc: &str, health: Health, latency_ms: u64) -> TunnelInput {
        TunnelInput {
            interface: format!("sdwan{i}"),
            index: i,
            router_mac: [0x02, 0x5d, 0, 0, 0, i as u8],
            target_datacenter: dc.into(),
            health,
            latency_ns: latency_ms * 1_000_000,
            peer_addresses: Vec::new(),
        }
    }

    pub(crate) fn inputs(tunnels: Vec<TunnelInput>) -> Inputs {
        let present = tunnels.iter().map(|t| t.interface.clone()).collect();
        Inputs {
            fabric: fabric(),
            tunnels,
            local_networks: vec![
                LocalNetwork {
                    prefix: "172.30.1.0/24".parse().unwrap(),
                    next_hop: NextHop::Vtep {
                        vtep: "10.9.255.1".parse().unwrap(),
                        router_mac: [2, 0xaa, 0, 0, 0, 1],
                    },
                },
                LocalNetwork {
                    prefix: "fd30:1::/64".parse().unwrap(),
                    next_hop: NextHop::Vtep {
                        vtep: "10.9.255.1".parse().unwrap(),
                        router_mac: [2, 0xaa, 0, 0, 0, 1],
                    },
                },
            ],
            remote_networks: vec![RemoteNetwork {
                prefix: "172.31.2.0/24".parse().unwrap(),
                datacenter: "par1".into(),
            }],
            present,
            installed: BTreeMap::new(),
        }
    }

    fn default_of(d: &Desired, table: u32, v6: bool) -> Option<&RouteAction> {
        let prefix = if v6 { "::/0" } else { "0.0.0.0/0" };
        d.routes.get(&RouteKey {
            table,
            prefix: prefix.parse().unwrap(),
            metric: FORWARD_METRIC,
        })
    }

    fn has_unreachable_default(d: &Desired, table: u32) -> bool {
        ["0.0.0.0/0", "::/0"].iter().all(|p| {
            d.routes.get(&RouteKey {
                table,
                prefix: p.parse().unwrap(),
                metric: UNREACHABLE_METRIC,
            }) == Some(&RouteAction::Unreachable)
        })
    }

    #[test]
    fn each_tunnel_gets_a_macvlan_with_its_mac_a_rule_and_a_table_into_its_interface() {
        let (d, problems) = plan(&inputs(vec![
            tunnel(1, "par1", Health::Established, 10),
            tunnel(2, "par1", Health::Established, 20),
        ]));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(d.macvlans.get("gwm1"), Some(&[0x02, 0x5d, 0, 0, 0, 1]));
        assert_eq!(d.macvlans.get("gwm2"), Some(&[0x02, 0x5d, 0, 0, 0, 2]));
        for v6 in [false, true] {
            assert!(d.rules.contains(&Rule {
                v6,
                priority: PRIORITY_INGRESS,
                iif: "gwm2".into(),
                to: RuleTo::Lookup(TUNNEL_TABLE_BASE + 2),
            }));
            assert_eq!(
                default_of(&d, TUNNEL_TABLE_BASE + 2, v6),
                Some(&RouteAction::Dev("sdwan2".into()))
            );
        }
        assert_eq!(d.vxlan.vni, 100);
        assert!(macvlan_name(u64::from(u32::MAX)).len() <= 15);
    }

    #[test]
    fn the_gatewans_own_packets_jump_over_the_per_tunnel_rules_which_cannot_match_them() {
        let (d, _) = plan(&inputs(vec![
            tunnel(1, "par1", Health::Established, 10),
            tunnel(2, "par1", Health::Established, 20),
        ]));
        for v6 in [false, true] {
            assert!(d.rules.contains(&Rule {
                v6,
                priority: PRIORITY_OWN_TRAFFIC,
                iif: "lo".into(),
                to: RuleTo::Goto(PRIORITY_REPLIES),
            }));
        }
        // The goto first; what it skips matches forwarded packets only (its input is a
        // macvlan, the VXLAN device or a tunnel, never lo); it lands on the replies rule.
        assert!(d.rules.iter().all(|r| r.priority >= PRIORITY_OWN_TRAFFIC));
        let skipped: Vec<&Rule> = d
            .rules
            .iter()
            .filter(|r| r.priority > PRIORITY_OWN_TRAFFIC && r.priority < PRIORITY_REPLIES)
            .collect();
        assert_eq!(skipped.len(), 2 * (4 * 2 + 1));
        assert!(skipped.iter().all(|r| r.iif != "lo"), "{skipped:?}");
        assert!(
            d.rules
                .iter()
                .any(|r| r.priority == PRIORITY_REPLIES && r.iif == "lo")
        );
    }

    #[test]
    fn every_table_ends_in_unreachable_and_every_input_in_an_unreachable_rule() {
        let (d, _) = plan(&inputs(vec![tunnel(1, "par1", Health::Established, 10)]));
        assert!(has_unreachable_default(&d, TUNNEL_TABLE_BASE + 1));
        assert!(has_unreachable_default(&d, EGRESS_TABLE));
        for (iif, after) in [
            ("gwm1", PRIORITY_INGRESS_END),
            ("sdwan1", PRIORITY_EGRESS_END),
            (VXLAN_DEVICE, PRIORITY_FABRIC_END),
        ] {
            for v6 in [false, true] {
                assert!(
                    d.rules.contains(&Rule {
                        v6,
                        priority: after,
                        iif: iif.into(),
                        to: RuleTo::Unreachable
                    }),
                    "{iif}"
                );
            }
        }
        // Every priority in our documented range.
        assert!(
            d.rules
                .iter()
                .all(|r| (PRIORITY_FIRST..=PRIORITY_LAST).contains(&r.priority))
        );
        assert!(d.routes.keys().all(|k| k.table >= TABLE_FIRST));
    }

    #[test]
    fn a_down_tunnel_sends_its_traffic_to_the_best_healthy_tunnel_of_the_same_datacenter() {
        let (d, _) = plan(&inputs(vec![
            tunnel(1, "par1", Health::Down, 5),
            tunnel(2, "par1", Health::Degraded, 1),
            tunnel(3, "par1", Health::Established, 30),
            tunnel(4, "par1", Health::Established, 20),
            tunnel(5, "fra1", Health::Established, 1),
        ]));
        // Established before Degraded, then the lowest latency; never another datacenter.
        for v6 in [false, true] {
            assert_eq!(
                default_of(&d, TUNNEL_TABLE_BASE + 1, v6),
                Some(&RouteAction::Dev("sdwan4".into()))
            );
        }
        // The others keep their own tunnels.
        assert_eq!(
            default_of(&d, TUNNEL_TABLE_BASE + 2, false),
            Some(&RouteAction::Dev("sdwan2".into()))
        );
    }

    #[test]
    fn equal_siblings_are_chosen_by_interface_name() {
        let (d, _) = plan(&inputs(vec![
            tunnel(1, "par1", Health::Down, 5),
            tunnel(3, "par1", Health::Established, 20),
            tunnel(2, "par1", Health::Established, 20),
        ]));
        assert_eq!(
            default_of(&d, TUNNEL_TABLE_BASE + 1, false),
            Some(&RouteAction::Dev("sdwan2".into()))
        );
    }

    #[test]
    fn a_down_tunnel_with_no_healthy_sibling_keeps_its_own_encrypted_route() {
        let (d, _) = plan(&inputs(vec![
            tunnel(1, "par1", Health::Down, 5),
            tunnel(2, "par1", Health::Down, 5),
        ]));
        assert_eq!(
            default_of(&d, TUNNEL_TABLE_BASE + 1, false),
            Some(&RouteAction::Dev("sdwan1".into()))
        );
    }

    #[test]
    fn a_repaired_table_keeps_its_sibling_while_a_near_equal_one_measures_faster() {
        // Tunnel 1 is Down; 2 and 3 are near-equal (jitter swaps them); 2 carries 1's
        // traffic now.
        let mut i = inputs(vec![
            tunnel(1, "par1", Health::Down, 10),
            tunnel(2, "par1", Health::Established, 12),
            tunnel(3, "par1", Health::Established, 10),
        ]);
        let key = |table: u32, prefix: &str| RouteKey {
            table,
            prefix: prefix.parse().unwrap(),
            metric: FORWARD_METRIC,
        };
        i.installed
            .insert(key(TUNNEL_TABLE_BASE + 1, "0.0.0.0/0"), "sdwan2".into());
        i.installed
            .insert(key(REPLIES_TABLE, "172.31.2.0/24"), "sdwan2".into());
        let (d, _) = plan(&i);
        assert_eq!(
            default_of(&d, TUNNEL_TABLE_BASE + 1, false),
            Some(&RouteAction::Dev("sdwan2".into()))
        );
        assert_eq!(
            default_of(&d, TUNNEL_TABLE_BASE + 1, true),
            Some(&RouteAction::Dev("sdwan2".into())),
            "both families follow the IPv4 route's choice"
        );
        assert_eq!(
            d.routes.get(&key(REPLIES_TABLE, "172.31.2.0/24")),
            Some(&RouteAction::Dev("sdwan2".into()))
        );
        // Clearly slower (more than 5 ms and a fifth): it moves to the faster one.
        i.tunnels[1].latency_ns = 16_000_000;
        let (d, _) = plan(&i);
        assert_eq!(
            default_of(&d, TUNNEL_TABLE_BASE + 1, false),
            Some(&RouteAction::Dev("sdwan3".into()))
        );
        // Less healthy: it moves whatever the latency.
        i.tunnels[1].latency_ns = 9_000_000;
        i.tunnels[1].health = Health::Degraded;
        let (d, _) = plan(&i);
        assert_eq!(
            default_of(&d, TUNNEL_TABLE_BASE + 1, false),
            Some(&RouteAction::Dev("sdwan3".into()))
        );
        // With nothing installed, the fastest.
        i.tunnels[1].health = Health::Established;
        i.tunnels[1].latency_ns = 12_000_000;
        i.installed.clear();
        let (d, _) = plan(&i);
        assert_eq!(
            default_of(&d, TUNNEL_TABLE_BASE + 1, false),
            Some(&RouteAction::Dev("sdwan3".into()))
        );
    }

    #[test]
    fn tunnels_not_yet_probed_keep_their_own_route_and_are_no_repair_target() {
        let (d, _) = plan(&inputs(vec![
            tunnel(1, "par1", Health::Down, 5),
            tunnel(2, "par1", Health::Unknown, 0),
            tunnel(3, "par1", Health::Unknown, 0),
        ]));
        assert_eq!(
            default_of(&d, TUNNEL_TABLE_BASE + 2, false),
            Some(&RouteAction::Dev("sdwan2".into()))
        );
        assert_eq!(
            default_of(&d, TUNNEL_TABLE_BASE + 1, false),
            Some(&RouteAction::Dev("sdwan1".into()))
        );
    }

    #[test]
    fn a_missing_tunnel_leaves_an_unreachable_table_not_the_main_table() {
        let mut i = inputs(vec![
            tunnel(1, "par1", Health::Established, 5),
            tunnel(2, "par1", Health::Down, 5),
        ]);
        i.present.remove("sdwan1");
        let (d, _) = plan(&i);
        // The missing tunnel's table: only the unreachable defaults (and still its rules).
        assert_eq!(default_of(&d, TUNNEL_TABLE_BASE + 1, false), None);
        assert_eq!(default_of(&d, TUNNEL_TABLE_BASE + 1, true), None);
        assert!(has_unreachable_default(&d, TUNNEL_TABLE_BASE + 1));
        assert!(d.rules.contains(&Rule {
            v6: false,
            priority: PRIORITY_INGRESS_END,
            iif: "gwm1".into(),
            to: RuleTo::Unreachable
        }));
        // A missing tunnel is no repair target either.
        assert_eq!(
            default_of(&d, TUNNEL_TABLE_BASE + 2, false),
            Some(&RouteAction::Dev("sdwan2".into()))
        );
        // With a healthy sibling, the missing tunnel's traffic goes there.
        let mut i = inputs(vec![
            tunnel(1, "par1", Health::Established, 5),
            tunnel(2, "par1", Health::Established, 5),
        ]);
        i.present.remove("sdwan1");
        let (d, _) = plan(&i);
        assert_eq!(
            default_of(&d, TUNNEL_TABLE_BASE + 1, false),
            Some(&RouteAction::Dev("sdwan2".into()))
        );
    }

    #[test]
    fn egress_routes_local_prefixes_to_their_vteps_with_ecmp_neighbours_and_fdb() {
        let mut i = inputs(vec![tunnel(1, "par1", Health::Established, 5)]);
        i.local_networks.push(LocalNetwork {
            prefix: "172.30.1.0/24".parse().unwrap(),
            next_hop: NextHop::Vtep {
                vtep: "10.9.255.3".parse().unwrap(),
                router_mac: [2, 0xaa, 0, 0, 0, 3],
            },
        });
        let (d, problems) = plan(&i);
        assert!(problems.is_empty(), "{problems:?}");
        let v4 = RouteKey {
            table: EGRESS_TABLE,
            prefix: "172.30.1.0/24".parse().unwrap(),
            metric: FORWARD_METRIC,
        };
        let both: BTreeSet<Ipv4Addr> = ["10.9.255.1", "10.9.255.3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(d.routes.get(&v4), Some(&RouteAction::Vteps(both)));
        let v6 = RouteKey {
            table: EGRESS_TABLE,
            prefix: "fd30:1::/64".parse().unwrap(),
            metric: FORWARD_METRIC,
        };
        assert!(matches!(d.routes.get(&v6), Some(RouteAction::Vteps(_))));
        assert_eq!(
            d.neighbours
                .get(&"::ffff:10.9.255.3".parse::<IpAddr>().unwrap()),
            Some(&[2, 0xaa, 0, 0, 0, 3])
        );
        assert_eq!(
            d.fdb.get(&[2, 0xaa, 0, 0, 0, 1]),
            Some(&"10.9.255.1".parse().unwrap())
        );
        // The same prefixes answer the gatewan's own ICMP errors.
        let replies = RouteKey {
            table: REPLIES_TABLE,
            ..v4
        };
        assert!(d.routes.contains_key(&replies));
    }

    #[test]
    fn static_networks_route_via_their_gateway_and_win_over_the_fabric() {
        let mut i = inputs(vec![]);
        i.local_networks.push(LocalNetwork {
            prefix: "172.30.1.0/24".parse().unwrap(),
            next_hop: NextHop::Gateway("10.1.0.1".parse().unwrap()),
        });
        i.local_networks.push(LocalNetwork {
            prefix: "fd40::/48".parse().unwrap(),
            next_hop: NextHop::Gateway("10.1.0.1".parse().unwrap()),
        });
        let (d, problems) = plan(&i);
        assert_eq!(
            d.routes.get(&RouteKey {
                table: EGRESS_TABLE,
                prefix: "172.30.1.0/24".parse().unwrap(),
                metric: FORWARD_METRIC
            }),
            Some(&RouteAction::Gateway("10.1.0.1".parse().unwrap()))
        );
        assert!(problems.contains(&Problem::StaticOverrides {
            prefix: "172.30.1.0/24".parse().unwrap()
        }));
        assert!(problems.iter().any(
            |p| matches!(p, Problem::UnusableNetwork { prefix, .. } if prefix == "fd40::/48")
        ));
    }

    #[test]
    fn replies_to_other_datacenters_go_into_their_tunnels_or_nowhere() {
        let mut i = inputs(vec![
            tunnel(1, "par1", Health::Down, 5),
            tunnel(2, "par1", Health::Established, 5),
        ]);
        i.remote_networks.push(RemoteNetwork {
            prefix: "172.32.0.0/16".parse().unwrap(),
            datacenter: "fra1".into(),
        });
        let (d, _) = plan(&i);
        let key = |p: &str| RouteKey {
            table: REPLIES_TABLE,
            prefix: p.parse().unwrap(),
            metric: FORWARD_METRIC,
        };
        assert_eq!(
            d.routes.get(&key("172.31.2.0/24")),
            Some(&RouteAction::Dev("sdwan2".into()))
        );
        assert_eq!(
            d.routes.get(&key("172.32.0.0/16")),
            Some(&RouteAction::Unreachable)
        );
        // No default in the replies table: the gatewan's other traffic is untouched.
        assert!(
            !d.routes
                .keys()
                .any(|k| k.table == REPLIES_TABLE && k.prefix.prefix_len() == 0)
        );
    }

    #[test]
    fn conflicting_macs_are_reported_and_resolved_the_same_way_every_time() {
        let mut i = inputs(vec![]);
        i.local_networks.push(LocalNetwork {
            prefix: "172.30.9.0/24".parse().unwrap(),
            next_hop: NextHop::Vtep {
                vtep: "10.9.255.1".parse().unwrap(),
                router_mac: [2, 0xaa, 0, 0, 0, 0],
            },
        });
        let (d, problems) = plan(&i);
        assert_eq!(
            d.neighbours.get(&"10.9.255.1".parse::<IpAddr>().unwrap()),
            Some(&[2, 0xaa, 0, 0, 0, 0])
        );
        assert!(matches!(problems[..], [Problem::RouterMacs { .. }]));
        let (again, _) = plan(&i);
        assert_eq!(d, again);
    }

    #[test]
    fn a_tunnel_index_beyond_the_table_range_is_reported_not_planned() {
        let mut t = tunnel(1, "par1", Health::Established, 5);
        t.index = MAX_TUNNEL_INDEX + 1;
        let (d, problems) = plan(&inputs(vec![t]));
        assert!(d.macvlans.is_empty());
        assert!(matches!(problems[..], [Problem::IndexTooLarge { .. }]));
    }

    #[test]
    fn rp_filter_is_lowered_only_where_it_changes_nothing_for_other_devices() {
        assert!(rp_filter_writes(0, &BTreeMap::new()).is_empty());
        let others: BTreeMap<String, u8> = [("eth0".into(), 0), ("eth1".into(), 2)].into();
        assert_eq!(
            rp_filter_writes(1, &others),
            vec![
                ("net/ipv4/conf/eth0/rp_filter".into(), "1".into()),
                ("net/ipv4/conf/all/rp_filter".into(), "0".into()),
            ]
        );
    }

    #[test]
    fn mesh_networks_split_into_local_and_remote() {
        let n = |prefix: &str, vtep: &str, vni: u32| v1::Network {
            prefix: prefix.into(),
            vtep: vtep.into(),
            router_mac: vec![2, 0xaa, 0, 0, 0, 1].into(),
            vni,
        };
        let a = n("172.30.1.0/24", "10.9.255.1", 100);
        let b = n("172.31.2.0/24", "10.8.255.1", 200);
        let c = n("172.30.2.0/24", "10.9.255.1", 300);
        let d = n("172.30.3.0/24", "", 0);
        let e = n("172.30.4.0/24", "fd00::1", 100);
        let (local, remote, problems) = networks_from_mesh(
            [
                ("sg1", &a),
                ("par1", &b),
                ("sg1", &c),
                ("sg1", &d),
                ("sg1", &e),
            ],
            "sg1",
            100,
        );
        assert_eq!(local.len(), 1);
        assert_eq!(remote[0].datacenter, "par1");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn tunnel_rows_convert_with_their_health() {
        let mut row = v1::TunnelInfo {
            interface: "sdwan7".into(),
            index: 7,
            router_mac: "02:5d:00:00:00:07".into(),
            target_datacenter: "par1".into(),
            state: "Down".into(),
            ..Default::default()
        };
        assert_eq!(
            TunnelInput::from_info(&row).map(|t| t.health),
            Some(Health::Unknown)
        );
        row.measurements = 10;
        assert_eq!(
            TunnelInput::from_info(&row).map(|t| t.health),
            Some(Health::Down)
        );
        row.router_mac = "nonsense".into();
        assert_eq!(TunnelInput::from_info(&row), None);
    }
}
