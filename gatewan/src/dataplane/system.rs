//! The host side of the data plane, over rtnetlink and /proc/sys: reads our objects back
//! (one dump per kind) and applies the reconciler's steps. Decides nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::{StreamExt as _, TryStreamExt as _};
use ipnet::IpNet;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::link::{
    InfoData, InfoMacVlan, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, MacVlanMode,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHop, RouteNextHopFlags,
    RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, IpVersion, LinkMacVlan, LinkUnspec, LinkVxlan};

use super::plan::{
    self, Mac, PRIORITY_FIRST, PRIORITY_LAST, RouteAction, RouteKey, Rule, RuleTo, TABLE_FIRST,
    TABLE_LAST, VXLAN_DEVICE, VxlanSpec,
};
use super::reconcile::{Observed, SeenMacvlan, SeenVxlan, Step};
use crate::netlink::netlink_err;

/// A VXLAN device's identity as dumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanAttributes {
    pub vni: u32,
    pub local: Option<Ipv4Addr>,
    pub port: u16,
    pub underlay: Option<u32>,
    pub learning: bool,
}

/// A link as dumped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub up: bool,
    pub mac: Option<Mac>,
    pub lower: Option<u32>,
    pub kind: Option<String>,
    pub vxlan: Option<VxlanAttributes>,
    pub macvlan_private: bool,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub mtu: u32,
}

/// Everything of ours on the host, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub links: BTreeMap<String, LinkState>,
    rules: BTreeSet<Rule>,
    routes: BTreeMap<RouteKey, RouteAction>,
    neighbours: BTreeMap<IpAddr, (Mac, bool)>,
    fdb: BTreeMap<Mac, BTreeSet<IpAddr>>,
    /// The local table's `local` prefixes: what the host takes as its own.
    pub local: BTreeSet<IpNet>,
}

impl Snapshot {
    pub fn present(&self) -> BTreeSet<String> {
        self.links.keys().cloned().collect()
    }

    /// Our routes that go into an interface (a tunnel), by key: what a repair uses now.
    pub fn installed(&self) -> BTreeMap<RouteKey, String> {
        self.routes
            .iter()
            .filter_map(|(k, a)| match a {
                RouteAction::Dev(i) => Some((*k, i.clone())),
                _ => None,
            })
            .collect()
    }

    fn name_of(&self, index: u32) -> Option<&str> {
        self.links
            .iter()
            .find(|(_, l)| l.index == index)
            .map(|(n, _)| n.as_str())
    }

    /// The reconciler's view; `sysctls` are the current values of the desired ones.
    pub fn observed(&self, sysctls: BTreeMap<String, Option<String>>) -> Observed {
        let vxlan = self.links.get(VXLAN_DEVICE).map(|l| SeenVxlan {
            spec: l.vxlan.and_then(|v| {
                Some(VxlanSpec {
                    vni: v.vni,
                    local: v.local?,
                    port: v.port,
                    underlay: self.name_of(v.underlay?)?.to_string(),
                })
                .filter(|_| !v.learning)
            }),
            up: l.up,
        });
        let vxlan_index = self.links.get(VXLAN_DEVICE).map(|l| l.index);
        let macvlans = self
            .links
            .iter()
            .filter(|(n, _)| plan::is_our_macvlan(n))
            .map(|(n, l)| {
                (
                    n.clone(),
                    SeenMacvlan {
                        mac: l.mac.unwrap_or_default(),
                        shaped: l.kind.as_deref() == Some("macvlan")
                            && l.macvlan_private
                            && l.lower.is_some()
                            && l.lower == vxlan_index,
                        up: l.up,
                    },
                )
            })
            .collect();
        Observed {
            vxlan,
            macvlans,
            rules: self.rules.clone(),
            routes: self.routes.clone(),
            neighbours: self.neighbours.clone(),
            fdb: self.fdb.clone(),
            sysctls,
        }
    }
}

fn mac_of(bytes: &[u8]) -> Option<Mac> {
    <Mac>::try_from(bytes).ok()
}

pub fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn write_sysctl(path: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value)
        .map_err(|e| io::Error::new(e.kind(), format!("/proc/sys/{path}: {e}")))
}

pub struct System {
    handle: Handle,
}

impl System {
    /// Replaces the source filter's nftables table with `script` (one transaction).
    pub async fn apply_filter(script: &str) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "nft -f: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// The source filter's counters as `nft -j` prints them (empty when the table is gone).
    pub async fn filter_counters() -> io::Result<String> {
        let out = tokio::process::Command::new("nft")
            .args([
                "-j",
                "list",
                "counters",
                "table",
                "inet",
                super::filter::TABLE,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Opens a netlink connection in the caller's network namespace (the socket stays
    /// there). Needs a tokio runtime.
    pub fn new() -> io::Result<System> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(System { handle })
    }

    /// Sends one request and waits for its acknowledgement.
    async fn request(&self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut resp = handle.request(req).map_err(netlink_err)?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                return Err(netlink_err(rtnetlink::Error::NetlinkError(e)));
            }
        }
        Ok(())
    }

    pub async fn snapshot(&self) -> io::Result<Snapshot> {
        let mut snap = Snapshot::default();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(netlink_err)? {
            let mut name = String::new();
            let mut st = LinkState {
                index: l.header.index,
                up: l.header.flags.contains(LinkFlags::Up),
                ..Default::default()
            };
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = n.clone(),
                    LinkAttribute::Address(m) => st.mac = mac_of(m),
                    LinkAttribute::Link(i) => st.lower = Some(*i),
                    LinkAttribute::Mtu(m) => st.mtu = *m,
                    LinkAttribute::Stats64(s) => {
                        st.rx_packets = s.rx_packets;
                        st.tx_packets = s.tx_packets;
                    }
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            match i {
                                LinkInfo::Kind(k) => st.kind = Some(k.to_string()),
                                LinkInfo::Data(InfoData::Vxlan(v)) => {
                                    let mut spec = VxlanAttributes {
                                        vni: 0,
                                        local: None,
                                        port: plan::DEFAULT_VXLAN_PORT,
                                        underlay: None,
                                        learning: true,
                                    };
                                    for x in v {
                                        match x {
                                            InfoVxlan::Id(id) => spec.vni = *id,
                                            InfoVxlan::Local(a) => spec.local = Some(*a),
                                            InfoVxlan::Port(p) => spec.port = *p,
                                            InfoVxlan::Link(i) => spec.underlay = Some(*i),
                                            InfoVxlan::Learning(b) => spec.learning = *b,
                                            _ => {}
                                        }
                                    }
                                    st.vxlan = Some(spec);
                                }
                                LinkInfo::Data(InfoData::MacVlan(m)) => {
                                    st.macvlan_private = m.iter().any(|x| {
                                        matches!(x, InfoMacVlan::Mode(MacVlanMode::Private))
                                    });
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            snap.links.insert(name, st);
        }
        for v in [IpVersion::V4, IpVersion::V6] {
            let v6 = v == IpVersion::V6;
            let mut rules = self.handle.rule().get(v).execute();
            while let Some(r) = rules.try_next().await.map_err(netlink_err)? {
                if let Some(rule) = parse_rule(&r, v6) {
                    snap.rules.insert(rule);
                }
            }
        }
        let vxlan_index = snap.links.get(VXLAN_DEVICE).map(|l| l.index);
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            let mut routes = self.handle.route().get(msg).execute();
            while let Some(r) = routes.try_next().await.map_err(netlink_err)? {
                if let Some((k, a)) = parse_route(&r, vxlan_index, &snap) {
                    snap.routes.insert(k, a);
                } else if let Some(p) = parse_local(&r) {
                    snap.local.insert(p);
                }
            }
        }
        if let Some(vx) = vxlan_index {
            for family in [
                AddressFamily::Inet,
                AddressFamily::Inet6,
                AddressFamily::Bridge,
            ] {
                let mut neigh = self
                    .handle
                    .neighbours()
                    .get()
                    .set_address_family(family)
                    .execute();
                while let Some(n) = neigh.try_next().await.map_err(netlink_err)? {
                    if n.header.ifindex != vx {
                        continue;
                    }
                    let mut dst = None;
                    let mut mac = None;
                    for a in &n.attributes {
                        match a {
                            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                                dst = Some(IpAddr::V4(*v4))
                            }
                            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                                dst = Some(IpAddr::V6(*v6))
                            }
                            // In the bridge family the address comes raw.
                            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                                dst = <[u8; 4]>::try_from(b.as_slice())
                                    .map(IpAddr::from)
                                    .or_else(|_| {
                                        <[u8; 16]>::try_from(b.as_slice()).map(IpAddr::from)
                                    })
                                    .ok()
                            }
                            NeighbourAttribute::LinkLayerAddress(m) => mac = mac_of(m),
                            _ => {}
                        }
                    }
                    match (family, dst, mac) {
                        (AddressFamily::Bridge, Some(dst), Some(mac)) => {
                            snap.fdb.entry(mac).or_default().insert(dst);
                        }
                        (AddressFamily::Bridge, _, _) => {}
                        (_, Some(dst), Some(mac)) => {
                            let permanent = n.header.state == NeighbourState::Permanent;
                            snap.neighbours.insert(dst, (mac, permanent));
                        }
                        (_, Some(dst), None) => {
                            // An incomplete entry the kernel made; not permanent, so kept.
                            snap.neighbours.insert(dst, ([0; 6], false));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(snap)
    }

    pub async fn apply(&self, step: &Step, snap: &Snapshot) -> io::Result<()> {
        match step {
            Step::DeleteVxlan => self.delete_link(VXLAN_DEVICE).await,
            Step::CreateVxlan(spec) => {
                let lower = self.require(&spec.underlay).await?;
                self.handle
                    .link()
                    .add(
                        LinkVxlan::new(VXLAN_DEVICE, spec.vni)
                            .dev(lower)
                            .local(spec.local)
                            .port(spec.port)
                            .learning(false)
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(netlink_err)?;
                self.quiet_and_up(VXLAN_DEVICE).await
            }
            Step::SetUp { device } => {
                let index = self.require(device).await?;
                self.handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute()
                    .await
                    .map_err(netlink_err)
            }
            Step::CreateMacvlan { name, mac } => {
                let lower = self.require(VXLAN_DEVICE).await?;
                self.handle
                    .link()
                    .add(
                        LinkMacVlan::new(name, lower, MacVlanMode::Private)
                            .address(mac.to_vec())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(netlink_err)?;
                self.quiet_and_up(name).await
            }
            Step::SetMac { name, mac } => {
                let index = self.require(name).await?;
                self.handle
                    .link()
                    .set(
                        LinkUnspec::new_with_index(index)
                            .address(mac.to_vec())
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(netlink_err)
            }
            Step::DeleteMacvlan { name } => self.delete_link(name).await,
            Step::SetSysctl { path, value } => write_sysctl(path, value),
            Step::SetNeighbour { address, mac } => {
                let msg = neighbour(*address, self.require(VXLAN_DEVICE).await?, Some(mac));
                self.request(
                    RouteNetlinkMessage::NewNeighbour(msg),
                    NLM_F_CREATE | NLM_F_REPLACE,
                )
                .await
            }
            Step::DeleteNeighbour { address } => {
                let msg = neighbour(*address, self.require(VXLAN_DEVICE).await?, None);
                self.request(RouteNetlinkMessage::DelNeighbour(msg), 0)
                    .await
            }
            Step::AddFdb { mac, vtep } => {
                let msg = fdb(*mac, IpAddr::V4(*vtep), self.require(VXLAN_DEVICE).await?);
                // Append: a MAC that moves keeps its old destination until it is deleted.
                self.request(
                    RouteNetlinkMessage::NewNeighbour(msg),
                    NLM_F_CREATE | NLM_F_APPEND,
                )
                .await
            }
            Step::DeleteFdb { mac, dst } => {
                let msg = fdb(*mac, *dst, self.require(VXLAN_DEVICE).await?);
                self.request(RouteNetlinkMessage::DelNeighbour(msg), 0)
                    .await
            }
            Step::SetRoute { key, action } => {
                let msg = route_message(key, action, snap, self).await?;
                self.request(
                    RouteNetlinkMessage::NewRoute(msg),
                    NLM_F_CREATE | NLM_F_REPLACE,
                )
                .await
            }
            Step::DeleteRoute { key } => {
                let mut msg = route_header(key);
                msg.header.scope = RouteScope::NoWhere;
                self.request(RouteNetlinkMessage::DelRoute(msg), 0).await
            }
            Step::AddRule(r) => {
                self.request(RouteNetlinkMessage::NewRule(rule_message(r)), NLM_F_CREATE)
                    .await
            }
            Step::DeleteRule(r) => {
                self.request(RouteNetlinkMessage::DelRule(rule_message(r)), 0)
                    .await
            }
        }
    }

    /// The device exists (down): quiet its IPv6 before it comes up, so it never sends a
    /// router solicitation or DAD probe, then bring it up.
    async fn quiet_and_up(&self, name: &str) -> io::Result<()> {
        write_sysctl(&plan::quiet_ipv6_path(name), "1")?;
        let index = self.require(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink_err)
    }

    async fn delete_link(&self, name: &str) -> io::Result<()> {
        match self.link_index(name).await? {
            Some(index) => self
                .handle
                .link()
                .del(index)
                .execute()
                .await
                .map_err(netlink_err),
            None => Ok(()),
        }
    }

    /// Makes every address of `pool` local (`ip route replace local POOL dev lo table
    /// local`): the tunnels' own VTEPs, without an address per tunnel. Idempotent.
    pub async fn ensure_local_pool(&self, pool: ipnet::Ipv4Net) -> io::Result<()> {
        let lo = self.require("lo").await?;
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(pool.network(), pool.prefix_len())
            .table_id(255) // the kernel's local table
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .output_interface(lo)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(netlink_err)
    }

    pub async fn link_index(&self, name: &str) -> io::Result<Option<u32>> {
        crate::netlink::link_index(&self.handle, name).await
    }

    async fn require(&self, name: &str) -> io::Result<u32> {
        self.link_index(name).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("interface {name} is not there"),
            )
        })
    }

    /// Reverse-path filtering for the data plane (see [`plan::rp_filter_writes`]): returns
    /// the writes made.
    pub fn relax_rp_filter(ours: &BTreeSet<String>) -> io::Result<Vec<(String, String)>> {
        let all = read_sysctl("net/ipv4/conf/all/rp_filter")
            .and_then(|v| v.parse::<u8>().ok())
            .unwrap_or(0);
        if all == 0 {
            return Ok(Vec::new());
        }
        let mut others = BTreeMap::new();
        for e in std::fs::read_dir("/proc/sys/net/ipv4/conf")?.flatten() {
            let dev = e.file_name().to_string_lossy().into_owned();
            if dev == "all" || ours.contains(&dev) {
                continue;
            }
            if let Some(v) =
                read_sysctl(&plan::rp_filter_path(&dev)).and_then(|v| v.parse::<u8>().ok())
            {
                others.insert(dev, v);
            }
        }
        let writes = plan::rp_filter_writes(all, &others);
        for (path, value) in &writes {
            write_sysctl(path, value)?;
        }
        Ok(writes)
    }
}

fn parse_rule(r: &RuleMessage, v6: bool) -> Option<Rule> {
    let mut priority = None;
    let mut iif = String::new();
    let mut table = u32::from(r.header.table);
    let mut goto = None;
    for a in &r.attributes {
        match a {
            RuleAttribute::Priority(p) => priority = Some(*p),
            RuleAttribute::Iifname(n) => iif = n.clone(),
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Goto(g) => goto = Some(*g),
            _ => {}
        }
    }
    let priority = priority.filter(|p| (PRIORITY_FIRST..=PRIORITY_LAST).contains(p))?;
    let to = match r.header.action {
        RuleAction::ToTable => RuleTo::Lookup(table),
        RuleAction::Unreachable => RuleTo::Unreachable,
        RuleAction::Goto => RuleTo::Goto(goto?),
        _ => return None,
    };
    Some(Rule {
        v6,
        priority,
        iif,
        to,
    })
}

fn rule_message(r: &Rule) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = if r.v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    m.attributes.push(RuleAttribute::Priority(r.priority));
    m.attributes.push(RuleAttribute::Iifname(r.iif.clone()));
    match r.to {
        RuleTo::Lookup(t) => {
            m.header.action = RuleAction::ToTable;
            m.attributes.push(RuleAttribute::Table(t));
        }
        RuleTo::Unreachable => m.header.action = RuleAction::Unreachable,
        RuleTo::Goto(priority) => {
            m.header.action = RuleAction::Goto;
            m.attributes.push(RuleAttribute::Goto(priority));
        }
    }
    m
}

fn v4_of(a: &RouteAddress) -> Option<Ipv4Addr> {
    match a {
        RouteAddress::Inet(v4) => Some(*v4),
        RouteAddress::Inet6(v6) => v6.to_ipv4_mapped(),
        _ => None,
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A `local` route of the local table (an address of the host, or a prefix made local).
fn parse_local(r: &RouteMessage) -> Option<IpNet> {
    let mut table = u32::from(r.header.table);
    let mut dst = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = ip_of(d),
            _ => {}
        }
    }
    if table != 255 || r.header.kind != RouteType::Local {
        return None;
    }
    IpNet::new(dst?, r.header.destination_prefix_length).ok()
}

fn parse_route(
    r: &RouteMessage,
    vxlan: Option<u32>,
    snap: &Snapshot,
) -> Option<(RouteKey, RouteAction)> {
    let mut table = u32::from(r.header.table);
    let mut dst = None;
    let mut metric = 0;
    let mut gateway = None;
    let mut oif = None;
    let mut multipath = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = ip_of(d),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Gateway(g) => gateway = Some(g.clone()),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::MultiPath(n) => multipath = Some(n.clone()),
            _ => {}
        }
    }
    if !(TABLE_FIRST..=TABLE_LAST).contains(&table) {
        return None;
    }
    let v6 = r.header.address_family == AddressFamily::Inet6;
    let addr = dst.unwrap_or(if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let prefix = IpNet::new(addr, r.header.destination_prefix_length).ok()?;
    let key = RouteKey {
        table,
        prefix,
        metric,
    };
    let other = || RouteAction::Other(format!("{r:?}"));
    let via_vxlan = |gw: &RouteAddress, dev: Option<u32>, onlink: bool| {
        (vxlan.is_some() && dev == vxlan && onlink)
            .then(|| v4_of(gw))
            .flatten()
    };
    let action = match r.header.kind {
        RouteType::Unreachable => RouteAction::Unreachable,
        RouteType::Unicast => match (multipath, gateway, oif) {
            (Some(hops), _, _) => {
                let vteps: Option<BTreeSet<Ipv4Addr>> = hops
                    .iter()
                    .map(|h| {
                        let gw = h.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Gateway(g) => Some(g),
                            _ => None,
                        })?;
                        via_vxlan(
                            gw,
                            Some(h.interface_index),
                            h.flags.contains(RouteNextHopFlags::Onlink),
                        )
                    })
                    .collect();
                vteps.map_or_else(other, RouteAction::Vteps)
            }
            (None, Some(gw), dev) => {
                match via_vxlan(&gw, dev, r.header.flags.contains(RouteFlags::Onlink)) {
                    Some(vtep) => RouteAction::Vteps([vtep].into()),
                    None if dev == vxlan => other(),
                    None => ip_of(&gw).map_or_else(other, RouteAction::Gateway),
                }
            }
            (None, None, Some(dev)) => snap
                .name_of(dev)
                .map_or_else(other, |n| RouteAction::Dev(n.to_string())),
            _ => other(),
        },
        _ => other(),
    };
    Some((key, action))
}

fn route_header(key: &RouteKey) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match key.prefix {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    m.header.destination_prefix_length = key.prefix.prefix_len();
    // Tables above 255 only fit the attribute; the header then says "unspecified".
    m.header.table = 0;
    m.attributes.push(RouteAttribute::Table(key.table));
    if key.prefix.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(key.prefix.addr().into()));
    }
    m.attributes.push(RouteAttribute::Priority(key.metric));
    m
}

/// A VTEP as the gateway of a route of `v6`: IPv6 routes go via `::ffff:VTEP`.
fn vtep_gateway(vtep: Ipv4Addr, v6: bool) -> RouteAddress {
    if v6 {
        RouteAddress::Inet6(vtep.to_ipv6_mapped())
    } else {
        RouteAddress::Inet(vtep)
    }
}

async fn route_message(
    key: &RouteKey,
    action: &RouteAction,
    snap: &Snapshot,
    system: &System,
) -> io::Result<RouteMessage> {
    let mut m = route_header(key);
    m.header.protocol = RouteProtocol::Static;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    let v6 = key.prefix.addr().is_ipv6();
    // Indexes from this reconcile's snapshot, or asked for when the step created the device.
    let index = async |name: &str| match snap.links.get(name) {
        Some(l) => Ok(l.index),
        None => system.require(name).await,
    };
    match action {
        RouteAction::Unreachable => m.header.kind = RouteType::Unreachable,
        RouteAction::Dev(dev) => m.attributes.push(RouteAttribute::Oif(index(dev).await?)),
        RouteAction::Gateway(gw) => m
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(*gw))),
        RouteAction::Vteps(vteps) => {
            let vx = index(VXLAN_DEVICE).await?;
            if vteps.len() == 1
                && let Some(vtep) = vteps.first()
            {
                m.header.flags = RouteFlags::Onlink;
                m.attributes
                    .push(RouteAttribute::Gateway(vtep_gateway(*vtep, v6)));
                m.attributes.push(RouteAttribute::Oif(vx));
            } else {
                let hops = vteps
                    .iter()
                    .map(|v| {
                        let mut h = RouteNextHop::default();
                        h.flags = RouteNextHopFlags::Onlink;
                        h.interface_index = vx;
                        h.attributes = vec![RouteAttribute::Gateway(vtep_gateway(*v, v6))];
                        h
                    })
                    .collect();
                m.attributes.push(RouteAttribute::MultiPath(hops));
            }
        }
        RouteAction::Other(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a route of an unplanned shape cannot be installed",
            ));
        }
    }
    Ok(m)
}

fn neighbour(address: IpAddr, vxlan: u32, mac: Option<&Mac>) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.ifindex = vxlan;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(match address {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    if let Some(mac) = mac {
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    m
}

fn fdb(mac: Mac, dst: IpAddr, vxlan: u32) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = vxlan;
    m.header.state = NeighbourState::Permanent;
    // On the VXLAN device itself ("self"), not on a bridge above it.
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(match dst {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    m
}
