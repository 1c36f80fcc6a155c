//! A stand-in for a hardware EVPN leaf, which no package here provides (`lab leaf`).
//!
//! A hardware leaf holds one Router's MAC per route: two type-5 routes with the same VTEP
//! and two Router's MACs send traffic to both MACs. Linux (and FRR on it) holds one per
//! next-hop IP, a neighbour entry. This program plays either, inside a lab node whose VRF
//! has an L3 VNI (`lab.vrf.NAME`), next to a gobgpd that peers with the fabric:
//! - it reads the type-5 routes of that gobgpd (`gobgp -j global rib -a evpn`) and
//!   programs the VRF's namespace: per route a next hop on the L3 VNI bridge, its
//!   neighbour entry (the Router's MAC) and the FDB entry of that MAC (the VTEP);
//! - it originates the VRF's connected prefixes through that gobgpd, as a leaf with
//!   `redistribute connected` does, and withdraws those that go.
//!
//! `--mac-per route` gives each (VTEP, Router's MAC) its own next hop, an address of
//! 169.254.0.0/16 that exists only in this leaf's tables, as a hardware FIB gives each its
//! own adjacency. `--mac-per next-hop` uses the VTEP itself, one MAC per VTEP (the lowest,
//! so the choice does not depend on arrival order), as Linux does.
//!
//! The plan is pure ([`plan`], [`changes`]); [`run`] polls and applies with `ip`, `bridge`
//! and `gobgp`. Polling (every 500 ms) is what this stand-in can afford: it is not on the
//! failover path, which the gatewans repair locally.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::IpNet;
use serde_json::Value;

pub type Mac = [u8; 6];

// The same two helpers as gatewan's data plane (`gatewan::dataplane::plan`): the lab stays
// free of the gatewan crate and its runtime, and these are six lines each.

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

/// Which next hop a route's Router's MAC hangs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacPer {
    /// Hardware: one per route.
    Route,
    /// Linux: one per next-hop IP (the VTEP).
    NextHop,
}

impl std::str::FromStr for MacPer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "route" => Ok(MacPer::Route),
            "next-hop" => Ok(MacPer::NextHop),
            _ => Err(format!("`{s}`: expected `route` or `next-hop`")),
        }
    }
}

/// The leaf's VRF.
#[derive(Debug, Clone)]
pub struct LeafSettings {
    /// The VRF's network namespace as this node sees it (`/run/netns/NAME`).
    pub vrf: String,
    pub vni: u32,
    pub vtep: Ipv4Addr,
    pub router_mac: Mac,
    /// The route target imported and exported, `ASN:N`.
    pub route_target: String,
    /// The route distinguisher of originated routes.
    pub rd: String,
    /// Interfaces of the VRF whose prefixes are originated.
    pub interfaces: Vec<String>,
    pub mac_per: MacPer,
}

impl LeafSettings {
    pub fn bridge(&self) -> String {
        format!("br{}", self.vni)
    }
    pub fn vxlan(&self) -> String {
        format!("vx{}", self.vni)
    }
}

/// A received type-5 route (the best path of one NLRI).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Type5 {
    pub rd: String,
    pub prefix: IpNet,
    pub vtep: Ipv4Addr,
    pub router_mac: Mac,
    pub route_targets: Vec<String>,
}

/// The type-5 routes of `gobgp -j global rib -a evpn`: the best path of each NLRI. Paths
/// without an IPv4 next hop or a Router's MAC cannot be installed and are left out (and
/// counted in the second value).
pub fn parse_rib(json: &str) -> Result<(Vec<Type5>, usize)> {
    let v: Value = serde_json::from_str(json).context("gobgp rib is not JSON")?;
    let Some(map) = v.as_object() else {
        // gobgp prints `null` for an empty RIB.
        return if v.is_null() {
            Ok((Vec::new(), 0))
        } else {
            Err(anyhow!("gobgp rib is not a JSON object"))
        };
    };
    let mut out = Vec::new();
    let mut skipped = 0;
    for paths in map.values() {
        let Some(best) = paths
            .as_array()
            .and_then(|a| a.iter().find(|p| p["best"].as_bool() == Some(true)))
        else {
            continue;
        };
        if best["nlri"]["type"].as_u64() != Some(5) {
            continue;
        }
        match type5_of(best) {
            Some(r) => out.push(r),
            None => skipped += 1,
        }
    }
    out.sort();
    Ok((out, skipped))
}

fn type5_of(path: &Value) -> Option<Type5> {
    let value = &path["nlri"]["value"];
    let prefix: IpNet = value["prefix"].as_str()?.parse().ok()?;
    let rd = &value["rd"];
    // gobgp writes a type-0 RD's administrator as a number, a type-1's as a string.
    let admin = match &rd["admin"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let rd = format!("{admin}:{}", rd["assigned"].as_u64()?);
    let attrs = path["attrs"].as_array()?;
    let mut vtep = None;
    let mut router_mac = None;
    let mut route_targets = Vec::new();
    for a in attrs {
        match a["type"].as_u64() {
            Some(14) => vtep = a["nexthop"].as_str().and_then(|s| s.parse().ok()),
            Some(16) => {
                for c in a["value"].as_array()? {
                    match (c["type"].as_u64(), c["subtype"].as_u64()) {
                        (Some(6), Some(3)) => router_mac = c["mac"].as_str().and_then(parse_mac),
                        (Some(0..=2), Some(2)) => {
                            route_targets.extend(c["value"].as_str().map(str::to_string))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Type5 {
        rd,
        prefix: prefix.trunc(),
        vtep: vtep?,
        router_mac: router_mac?,
        route_targets,
    })
}

/// What the VRF's tables hold: next hops on the L3 VNI bridge with their MAC, the FDB
/// (MAC → VTEP) and the routes (prefix → next hops, ECMP).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fib {
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
    pub fdb: BTreeMap<Mac, Ipv4Addr>,
    pub routes: BTreeMap<IpNet, BTreeSet<Ipv4Addr>>,
}

/// Next-hop addresses for `MacPer::Route`, kept while in use so a route that stays keeps
/// its adjacency (no neighbour rewritten under live traffic).
#[derive(Debug, Default)]
pub struct Adjacencies {
    given: BTreeMap<(Ipv4Addr, Mac), Ipv4Addr>,
}

impl Adjacencies {
    fn take(&mut self, key: (Ipv4Addr, Mac), in_use: &BTreeSet<(Ipv4Addr, Mac)>) -> Ipv4Addr {
        self.given.retain(|k, _| in_use.contains(k));
        if let Some(a) = self.given.get(&key) {
            return *a;
        }
        let used: BTreeSet<Ipv4Addr> = self.given.values().copied().collect();
        // 169.254.0.1 upward; 65 000 adjacencies is more than any lab holds.
        let a = (1u32..0xfffe)
            .map(|i| Ipv4Addr::from(0xa9fe_0000 | i))
            .find(|a| !used.contains(a))
            .unwrap_or(Ipv4Addr::new(169, 254, 255, 254));
        self.given.insert(key, a);
        a
    }
}

/// The FIB for `routes`: those that carry our route target, from another VTEP.
pub fn plan(routes: &[Type5], s: &LeafSettings, adj: &mut Adjacencies) -> Fib {
    let wanted: Vec<&Type5> = routes
        .iter()
        .filter(|r| r.vtep != s.vtep && r.route_targets.contains(&s.route_target))
        .collect();
    let mut fib = Fib::default();
    match s.mac_per {
        MacPer::Route => {
            let in_use: BTreeSet<(Ipv4Addr, Mac)> =
                wanted.iter().map(|r| (r.vtep, r.router_mac)).collect();
            for r in &wanted {
                let nh = adj.take((r.vtep, r.router_mac), &in_use);
                fib.neighbours.insert(nh, r.router_mac);
                fib.fdb.insert(r.router_mac, r.vtep);
                fib.routes.entry(r.prefix).or_default().insert(nh);
            }
        }
        MacPer::NextHop => {
            for r in &wanted {
                let mac = fib.neighbours.entry(r.vtep).or_insert(r.router_mac);
                *mac = (*mac).min(r.router_mac);
                fib.routes.entry(r.prefix).or_default().insert(r.vtep);
            }
            for (vtep, mac) in &fib.neighbours {
                fib.fdb.insert(*mac, *vtep);
            }
        }
    }
    fib
}

/// An IPv6 route cannot take an IPv4 next hop in Linux: it goes via the mapped address,
/// as FRR installs type-5 routes, with its own neighbour entry.
fn mapped(a: Ipv4Addr) -> Ipv6Addr {
    a.to_ipv6_mapped()
}

/// The program a batch of lines is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Ip,
    Bridge,
}

impl Tool {
    fn program(self) -> &'static str {
        match self {
            Tool::Ip => "ip",
            Tool::Bridge => "bridge",
        }
    }
}

/// The `ip -batch` and `bridge -batch` runs, in the order they must run, that turn `old`
/// into `new` (everything of `new` when `old` is None: a full re-apply, which repairs what
/// was changed by hand). The order is the point: new FDB entries, then neighbours and
/// routes, then what is no longer used. A neighbour or route that pointed at a MAC without
/// its FDB entry for the few milliseconds between two batches sent a packet to nowhere
/// (the bridge floods it to a VXLAN device without a default destination); one packet of
/// a 200/s stream was lost that way when routes moved.
pub fn changes(old: Option<&Fib>, new: &Fib, s: &LeafSettings) -> Vec<(Tool, Vec<String>)> {
    let empty = Fib::default();
    let full = old.is_none();
    let old = old.unwrap_or(&empty);
    let (br, vx) = (s.bridge(), s.vxlan());
    let mut fdb = Vec::new();
    for (mac, vtep) in &new.fdb {
        if full || old.fdb.get(mac) != Some(vtep) {
            let m = mac_string(mac);
            fdb.push(format!("fdb replace {m} dev {vx} dst {vtep} self static"));
            fdb.push(format!("fdb replace {m} dev {vx} master static"));
        }
    }
    // Neighbours first, so a new route never points at an unresolved next hop.
    let mut routes = Vec::new();
    for (nh, mac) in &new.neighbours {
        if full || old.neighbours.get(nh) != Some(mac) {
            let m = mac_string(mac);
            routes.push(format!("neigh replace {nh} lladdr {m} dev {br} nud noarp"));
            routes.push(format!(
                "neigh replace {} lladdr {m} dev {br} nud noarp",
                mapped(*nh)
            ));
        }
    }
    for (prefix, nhs) in &new.routes {
        if full || old.routes.get(prefix) != Some(nhs) {
            let hops: Vec<String> = nhs
                .iter()
                .map(|nh| match prefix {
                    IpNet::V4(_) => format!("nexthop via {nh} dev {br} onlink"),
                    IpNet::V6(_) => format!("nexthop via {} dev {br} onlink", mapped(*nh)),
                })
                .collect();
            // The family follows from the prefix (batch lines take no `-6`).
            routes.push(format!(
                "route replace {prefix} proto bgp {}",
                hops.join(" ")
            ));
        }
    }
    for prefix in old.routes.keys().filter(|p| !new.routes.contains_key(p)) {
        routes.push(format!("route del {prefix} proto bgp"));
    }
    for nh in old
        .neighbours
        .keys()
        .filter(|n| !new.neighbours.contains_key(n))
    {
        routes.push(format!("neigh del {nh} dev {br}"));
        routes.push(format!("neigh del {} dev {br}", mapped(*nh)));
    }
    let mut unused_fdb = Vec::new();
    for mac in old.fdb.keys().filter(|m| !new.fdb.contains_key(*m)) {
        let m = mac_string(mac);
        unused_fdb.push(format!("fdb del {m} dev {vx} self"));
        unused_fdb.push(format!("fdb del {m} dev {vx} master"));
    }
    [
        (Tool::Bridge, fdb),
        (Tool::Ip, routes),
        (Tool::Bridge, unused_fdb),
    ]
    .into_iter()
    .filter(|(_, lines)| !lines.is_empty())
    .collect()
}

/// Prefixes of global addresses in `ip -j addr show` output, on `interfaces`.
pub fn connected(json: &str, interfaces: &[String]) -> Result<BTreeSet<IpNet>> {
    let v: Value = serde_json::from_str(json).context("`ip -j addr` is not JSON")?;
    let mut out = BTreeSet::new();
    for link in v.as_array().into_iter().flatten() {
        let Some(name) = link["ifname"].as_str() else {
            continue;
        };
        if !interfaces.iter().any(|i| i == name) {
            continue;
        }
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if a["scope"].as_str() != Some("global") {
                continue;
            }
            let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else {
                continue;
            };
            let Ok(addr) = local.parse::<IpAddr>() else {
                continue;
            };
            if let Ok(n) = IpNet::new(addr, len as u8) {
                out.insert(n.trunc());
            }
        }
    }
    Ok(out)
}

/// `gobgp global rib -a evpn add|del` arguments for an originated prefix.
pub fn origination(prefix: &IpNet, s: &LeafSettings, add: bool) -> Vec<String> {
    let mut a: Vec<String> = ["global", "rib", "-a", "evpn"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    a.push(if add { "add" } else { "del" }.into());
    a.extend(
        [
            "prefix",
            &prefix.to_string(),
            "etag",
            "0",
            "rd",
            s.rd.as_str(),
        ]
        .map(str::to_string),
    );
    if add {
        a.extend([
            "rt".to_string(),
            s.route_target.clone(),
            "encap".into(),
            "vxlan".into(),
            "router-mac".into(),
            mac_string(&s.router_mac),
            "label".into(),
            s.vni.to_string(),
            "nexthop".into(),
            s.vtep.to_string(),
        ]);
    }
    a
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn batch(program: &str, vrf: &str, lines: &[String]) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(program)
        // -force: one refused line (a neighbour already gone) must not stop the rest.
        .args(["-n", vrf, "-force", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("run {program}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(lines.join("\n").as_bytes())?;
        stdin.write_all(b"\n")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{program} -batch: {}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(())
}

/// What the running leaf has done so far.
struct Leaf<'a> {
    s: &'a LeafSettings,
    gobgp: &'a [String],
    adj: Adjacencies,
    /// None: apply everything at the next step.
    applied: Option<Fib>,
    last_full: Instant,
    originated: BTreeSet<IpNet>,
}

impl Leaf<'_> {
    const REAPPLY: Duration = Duration::from_secs(10);

    fn step(&mut self) -> Result<()> {
        let s = self.s;
        let rib = output(
            Command::new("gobgp")
                .args(self.gobgp)
                .args(["-j", "global", "rib", "-a", "evpn"]),
        )?;
        let (routes, skipped) = parse_rib(&rib)?;
        let fib = plan(&routes, s, &mut self.adj);
        let full = self.last_full.elapsed() >= Self::REAPPLY;
        if full || self.applied.as_ref() != Some(&fib) {
            let old = if full { None } else { self.applied.as_ref() };
            let runs = changes(old, &fib, s);
            if self.applied.as_ref() != Some(&fib) {
                eprintln!(
                    "lab leaf: {} routes ({} prefixes, {} next hops), {} unusable paths",
                    routes.len(),
                    fib.routes.len(),
                    fib.neighbours.len(),
                    skipped
                );
            }
            // Forgotten until applied: a failed batch is redone in full.
            self.applied = None;
            for (tool, lines) in &runs {
                batch(tool.program(), &s.vrf, lines)?;
            }
            self.applied = Some(fib);
            if full {
                self.last_full = Instant::now();
            }
        }
        let addrs = output(Command::new("ip").args(["-n", &s.vrf, "-j", "addr", "show"]))?;
        let want = connected(&addrs, &s.interfaces)?;
        for p in want
            .difference(&self.originated)
            .cloned()
            .collect::<Vec<_>>()
        {
            output(
                Command::new("gobgp")
                    .args(self.gobgp)
                    .args(origination(&p, s, true)),
            )?;
            eprintln!("lab leaf: originates {p}");
            self.originated.insert(p);
        }
        for p in self
            .originated
            .difference(&want)
            .cloned()
            .collect::<Vec<_>>()
        {
            output(
                Command::new("gobgp")
                    .args(self.gobgp)
                    .args(origination(&p, s, false)),
            )?;
            eprintln!("lab leaf: withdraws {p}");
            self.originated.remove(&p);
        }
        Ok(())
    }
}

/// Polls and applies until killed. Errors are logged once per change of message.
pub fn run(s: &LeafSettings, gobgp: &[String]) -> Result<()> {
    const POLL: Duration = Duration::from_millis(500);
    eprintln!(
        "lab leaf: VRF {} (L3 VNI {}, VTEP {}, Router's MAC {}), one Router's MAC per {}",
        s.vrf,
        s.vni,
        s.vtep,
        mac_string(&s.router_mac),
        match s.mac_per {
            MacPer::Route => "route (a hardware leaf)",
            MacPer::NextHop => "next hop (a Linux leaf)",
        }
    );
    // A leaf spreads flows over the next hops of a route by their ports, as fabrics do
    // (Linux hashes on addresses alone by default: one host pair, one tunnel).
    for family in ["ipv4", "ipv6"] {
        let set = format!("net.{family}.fib_multipath_hash_policy=1");
        if let Err(e) =
            output(Command::new("ip").args(["netns", "exec", &s.vrf, "sysctl", "-qw", &set]))
        {
            eprintln!("lab leaf: {e:#}");
        }
    }
    let mut leaf = Leaf {
        s,
        gobgp,
        adj: Adjacencies::default(),
        applied: None,
        last_full: Instant::now(),
        originated: BTreeSet::new(),
    };
    let mut last_error = String::new();
    loop {
        match leaf.step() {
            Ok(()) => last_error.clear(),
            Err(e) => {
                let m = format!("{e:#}");
                if m != last_error {
                    eprintln!("lab leaf: {m}");
                    last_error = m;
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mac_per: MacPer) -> LeafSettings {
        LeafSettings {
            vrf: "tenant".into(),
            vni: 10100,
            vtep: "10.1.255.1".parse().unwrap(),
            router_mac: [2, 0, 0, 1, 0, 1],
            route_target: "65001:100".into(),
            rd: "10.1.255.1:1".into(),
            interfaces: vec!["eth6".into()],
            mac_per,
        }
    }

    fn route(rd: &str, prefix: &str, vtep: &str, mac: u8) -> Type5 {
        Type5 {
            rd: rd.into(),
            prefix: prefix.parse().unwrap(),
            vtep: vtep.parse().unwrap(),
            router_mac: [2, 0x5d, 0, 0, 0, mac],
            route_targets: vec!["65001:100".into()],
        }
    }

    const RIB: &str = r#"{
 "[type:Prefix][rd:10.1.255.1:1][etag:0][prefix:172.16.1.0/24]":[{"nlri":{"type":5,"value":{"rd":{"type":1,"admin":"10.1.255.1","assigned":1},"esi":"single-homed","etag":0,"prefix":"172.16.1.0/24","gateway":"0.0.0.0","label":10100}},"best":true,"attrs":[{"type":1,"value":2},{"type":16,"value":[{"type":3,"subtype":12,"tunnel_type":8},{"type":0,"subtype":2,"value":"65001:100"},{"type":6,"subtype":3,"mac":"02:00:00:01:00:01"}]},{"type":14,"nexthop":"10.1.255.1","afi":25,"safi":70}]}],
 "[type:Prefix][rd:10936:117][etag:0][prefix:2001:db8:a2::/48]":[
   {"nlri":{"type":5,"value":{"rd":{"type":0,"admin":"10936","assigned":117},"prefix":"2001:db8:a2::/48","label":10100}},"best":false,"attrs":[{"type":16,"value":[{"type":0,"subtype":2,"value":"65001:100"},{"type":6,"subtype":3,"mac":"02:5d:00:00:00:99"}]},{"type":14,"nexthop":"10.1.254.9"}]},
   {"nlri":{"type":5,"value":{"rd":{"type":0,"admin":10936,"assigned":117},"prefix":"2001:db8:a2::/48","label":10100}},"best":true,"attrs":[{"type":16,"value":[{"type":0,"subtype":2,"value":"65001:100"},{"type":6,"subtype":3,"mac":"02:5d:00:00:00:75"}]},{"type":14,"nexthop":"10.1.254.3"}]}],
 "[type:Prefix][rd:1:1][etag:0][prefix:10.9.0.0/16]":[{"nlri":{"type":5,"value":{"rd":{"admin":1,"assigned":1},"prefix":"10.9.0.0/16"}},"best":true,"attrs":[{"type":14,"nexthop":"10.1.254.4"}]}]
}"#;

    #[test]
    fn the_best_path_of_each_nlri_is_read_and_a_path_without_router_mac_is_counted() {
        let (routes, skipped) = parse_rib(RIB).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(routes.len(), 2);
        let v6 = routes.iter().find(|r| r.prefix.addr().is_ipv6()).unwrap();
        assert_eq!(v6.vtep, "10.1.254.3".parse::<Ipv4Addr>().unwrap());
        assert_eq!(v6.router_mac, [2, 0x5d, 0, 0, 0, 0x75]);
        assert_eq!(v6.rd, "10936:117");
        assert_eq!(parse_rib("null").unwrap().0, vec![]);
        assert!(parse_rib("[1]").is_err());
    }

    #[test]
    fn a_hardware_leaf_keeps_two_macs_behind_one_vtep_apart() {
        let routes = [
            route("1:1", "172.16.2.0/24", "10.1.255.11", 1),
            route("1:2", "172.16.2.0/24", "10.1.255.11", 2),
        ];
        let fib = plan(
            &routes,
            &settings(MacPer::Route),
            &mut Adjacencies::default(),
        );
        let nhs = &fib.routes[&"172.16.2.0/24".parse().unwrap()];
        assert_eq!(nhs.len(), 2, "two adjacencies, ECMP: {fib:?}");
        let macs: BTreeSet<Mac> = nhs.iter().map(|n| fib.neighbours[n]).collect();
        assert_eq!(macs.len(), 2);
        assert!(nhs.iter().all(|n| n.octets()[..2] == [169, 254]));
        // The FDB has both MACs at the one VTEP.
        assert_eq!(fib.fdb.len(), 2);
    }

    #[test]
    fn a_linux_leaf_keeps_one_mac_per_vtep_whatever_the_order() {
        let a = route("1:1", "172.16.2.0/24", "10.1.255.11", 2);
        let b = route("1:2", "172.16.2.0/24", "10.1.255.11", 1);
        let s = settings(MacPer::NextHop);
        let one = plan(&[a.clone(), b.clone()], &s, &mut Adjacencies::default());
        let two = plan(&[b, a], &s, &mut Adjacencies::default());
        assert_eq!(one, two);
        assert_eq!(one.routes.values().next().unwrap().len(), 1);
        assert_eq!(
            one.neighbours[&"10.1.255.11".parse().unwrap()],
            [2, 0x5d, 0, 0, 0, 1]
        );
    }

    #[test]
    fn own_routes_and_other_route_targets_are_not_installed() {
        let mut foreign = route("1:3", "172.20.0.0/16", "10.1.254.1", 3);
        foreign.route_targets = vec!["65001:999".into()];
        let routes = [route("1:1", "172.16.1.0/24", "10.1.255.1", 1), foreign];
        let fib = plan(
            &routes,
            &settings(MacPer::Route),
            &mut Adjacencies::default(),
        );
        assert_eq!(fib, Fib::default());
    }

    #[test]
    fn a_route_that_stays_keeps_its_adjacency_when_another_goes() {
        let s = settings(MacPer::Route);
        let mut adj = Adjacencies::default();
        let a = route("1:1", "172.16.2.0/24", "10.1.254.1", 1);
        let b = route("1:2", "172.16.2.0/24", "10.1.254.2", 2);
        let before = plan(&[a.clone(), b.clone()], &s, &mut adj);
        let after = plan(std::slice::from_ref(&b), &s, &mut adj);
        let nh_b = |f: &Fib| {
            *f.neighbours
                .iter()
                .find(|(_, m)| **m == b.router_mac)
                .unwrap()
                .0
        };
        assert_eq!(nh_b(&before), nh_b(&after));
        let runs = changes(Some(&before), &after, &s);
        let (ip, bridge) = (lines(&runs, Tool::Ip), lines(&runs, Tool::Bridge));
        // The neighbour of b is not rewritten; a's goes, with its FDB entry.
        assert!(
            !ip.iter()
                .any(|l| l.starts_with("neigh replace") && l.contains(&nh_b(&after).to_string())),
            "{ip:?}"
        );
        assert!(ip.iter().any(|l| l.starts_with("neigh del")), "{ip:?}");
        assert!(
            bridge
                .iter()
                .any(|l| l.contains("fdb del 02:5d:00:00:00:01"))
        );
        assert!(
            ip.iter()
                .any(|l| l.starts_with("route replace 172.16.2.0/24"))
        );
        // Nothing changed: nothing to do.
        assert_eq!(changes(Some(&after), &after, &s), vec![]);
    }

    /// All lines of one tool, in order.
    fn lines(runs: &[(Tool, Vec<String>)], tool: Tool) -> Vec<String> {
        runs.iter()
            .filter(|(t, _)| *t == tool)
            .flat_map(|(_, l)| l.clone())
            .collect()
    }

    #[test]
    fn a_route_or_neighbour_moves_only_once_its_new_mac_has_an_fdb_entry() {
        // Per route, the adjacency of a withdrawn route may be reused with another MAC;
        // per next hop, the route moves to another next hop.
        for mac_per in [MacPer::Route, MacPer::NextHop] {
            let s = settings(mac_per);
            let mut adj = Adjacencies::default();
            let a = route("1:1", "172.16.2.0/24", "10.1.254.1", 1);
            let b = route("1:2", "172.16.2.0/24", "10.1.254.2", 2);
            let before = plan(std::slice::from_ref(&a), &s, &mut adj);
            let after = plan(std::slice::from_ref(&b), &s, &mut adj);
            let runs = changes(Some(&before), &after, &s);
            let flat: Vec<String> = runs.iter().flat_map(|(_, l)| l.clone()).collect();
            let at = |p: &str| flat.iter().position(|l| l.starts_with(p));
            let fdb_new = at("fdb replace 02:5d:00:00:00:02").expect("new FDB entry");
            let uses: Vec<usize> = ["neigh replace", "route replace"]
                .iter()
                .filter_map(|p| at(p))
                .collect();
            assert!(!uses.is_empty(), "{mac_per:?}: {runs:?}");
            assert!(uses.iter().all(|&u| fdb_new < u), "{mac_per:?}: {runs:?}");
            // What the old route used goes only once nothing points at it.
            let last_use = *uses.iter().max().unwrap();
            let fdb_old = at("fdb del 02:5d:00:00:00:01").expect("old FDB entry deleted");
            assert!(last_use < fdb_old, "{mac_per:?}: {runs:?}");
            if let Some(del) = at("neigh del") {
                assert!(last_use < del, "{mac_per:?}: {runs:?}");
            }
        }
    }

    #[test]
    fn ipv6_routes_go_via_the_mapped_next_hop() {
        let s = settings(MacPer::Route);
        let fib = plan(
            &[route("1:1", "2001:db8:a2::/48", "10.1.254.3", 7)],
            &s,
            &mut Adjacencies::default(),
        );
        let ip = lines(&changes(None, &fib, &s), Tool::Ip);
        assert!(
            ip.contains(&"route replace 2001:db8:a2::/48 proto bgp nexthop via ::ffff:169.254.0.1 dev br10100 onlink".to_string()),
            "{ip:?}"
        );
        assert!(
            ip.iter()
                .any(|l| l.starts_with("neigh replace ::ffff:169.254.0.1"))
        );
    }

    #[test]
    fn connected_prefixes_are_those_of_global_addresses_on_the_vrf_interfaces() {
        let json = r#"[{"ifname":"eth6","addr_info":[{"family":"inet","local":"172.16.1.1","prefixlen":24,"scope":"global"},{"family":"inet6","local":"2001:db8:a1::1","prefixlen":48,"scope":"global"},{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},{"ifname":"br10100","addr_info":[{"family":"inet","local":"10.0.0.1","prefixlen":24,"scope":"global"}]}]"#;
        let c = connected(json, &["eth6".to_string()]).unwrap();
        let want: BTreeSet<IpNet> = ["172.16.1.0/24", "2001:db8:a1::/48"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(c, want);
    }

    #[test]
    fn an_originated_route_carries_the_vrf_attributes_and_a_withdrawal_only_the_key() {
        let s = settings(MacPer::Route);
        let p: IpNet = "172.16.1.0/24".parse().unwrap();
        assert_eq!(
            origination(&p, &s, true).join(" "),
            "global rib -a evpn add prefix 172.16.1.0/24 etag 0 rd 10.1.255.1:1 rt 65001:100 encap vxlan router-mac 02:00:00:01:00:01 label 10100 nexthop 10.1.255.1"
        );
        assert_eq!(
            origination(&p, &s, false).join(" "),
            "global rib -a evpn del prefix 172.16.1.0/24 etag 0 rd 10.1.255.1:1"
        );
    }
}
