//! Topology files: parses the supported containerlab subset plus the `lab.*` node labels
//! into a validated [`Topology`]. Every rejection names the file, line and key; nothing
//! here touches the system, so a bad file is refused before anything is created.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use crate::wan::Impairment;

/// Prefix of the node labels that carry lab extensions (see docs/lab.md).
pub const LABEL_PREFIX: &str = "lab.";

/// A topology file that could not be accepted.
#[derive(Debug, thiserror::Error)]
pub struct TopologyError {
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: u64,
    /// Dotted path of the offending key, e.g. `topology.nodes.r1.labels.lab.addr.eth1`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.file.display(), self.line)?;
        } else {
            write!(f, "{}: ", self.file.display())?;
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "key `{}`: {}", self.key, self.message)
        }
    }
}

/// What a node is realized as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRole {
    /// A plain Linux node: namespaces, interfaces, addresses, processes.
    Host,
    /// Forwards frames between `ports` in userspace, applying `impairment`.
    WanEmulator {
        ports: [String; 2],
        impairment: Impairment,
    },
}

/// A route installed in a node with `ip route replace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `None` means default route of the gateway's (or `dev`'s v4) family.
    pub dst: Option<IpNet>,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
}

impl Route {
    /// Arguments for `ip route replace`.
    pub fn ip_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        match (&self.dst, &self.via) {
            (Some(d), _) => a.push(d.to_string()),
            (None, Some(IpAddr::V6(_))) => a.push("::/0".into()),
            (None, _) => a.push("0.0.0.0/0".into()),
        }
        if let Some(v) = &self.via {
            a.push("via".into());
            a.push(v.to_string());
        }
        if let Some(d) = &self.dev {
            a.push("dev".into());
            a.push(d.clone());
        }
        a
    }
}

/// A validated node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub role: NodeRole,
    pub image: Option<String>,
    pub exec: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// (host path, absolute; path in node; read-only)
    pub binds: Vec<(PathBuf, PathBuf, bool)>,
    pub addresses: BTreeMap<String, Vec<IpNet>>,
    pub routes: Vec<Route>,
    pub sysctls: BTreeMap<String, String>,
    /// Long-running, supervised processes: name -> shell command line.
    pub run: BTreeMap<String, String>,
    /// Interfaces this node gets from links, in file order.
    pub interfaces: Vec<String>,
    /// Tenant VRFs (`lab.vrf.*` labels), by name.
    #[serde(default)]
    pub vrfs: BTreeMap<String, Vrf>,
    /// TCP ports published on the host (containerlab's `ports:`).
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    /// The node's Prometheus endpoint (`lab.prometheus.scrape`), if it has one.
    #[serde(default)]
    pub scrape: Option<Scrape>,
}

/// A TCP port of a node published on the host (containerlab's `ports: ["HOST:NODE"]`):
/// connections to `127.0.0.1:host` on the host are forwarded to `127.0.0.1:node` inside
/// the node's network namespace (the `ports` module forwards them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub host: u16,
    pub node: u16,
}

/// A node's Prometheus endpoint (`lab.prometheus.scrape: "PORT key=value…"`): `/metrics`
/// on `port` of the node, which must be published, scraped with these target labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scrape {
    /// The port in the node (the container port of a `ports:` entry).
    pub port: u16,
    /// Target labels; `job` picks the scrape job (default `lab`), `instance` defaults to
    /// the node's name.
    pub labels: BTreeMap<String, String>,
}

impl Node {
    /// The VRF that interface `ifname` belongs to, if any.
    pub fn vrf_of(&self, ifname: &str) -> Option<&str> {
        self.vrfs
            .values()
            .find(|v| v.interfaces.iter().any(|i| i == ifname))
            .map(|v| v.name.as_str())
    }
}

/// A tenant VRF of a node. `lab` realizes it as a network namespace of its own (the
/// kernels it runs on may lack the VRF module); see docs/lab.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vrf {
    pub name: String,
    /// Interfaces of the node (from links) that belong to the VRF.
    pub interfaces: Vec<String>,
    /// The VRF's EVPN layer-3 VNI, if it has one.
    pub l3vni: Option<L3Vni>,
}

/// What an EVPN leaf needs in the kernel for a VRF's L3 VNI: a VXLAN device whose UDP
/// socket lives in the node's underlay, enslaved to a bridge that carries the Router's MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L3Vni {
    pub vni: u32,
    /// Local VXLAN tunnel endpoint: an IPv4 address of the node's underlay.
    pub vtep: Ipv4Addr,
    /// The Router's MAC (the bridge's address), lower-case `aa:bb:cc:dd:ee:ff`.
    pub rmac: String,
}

impl L3Vni {
    /// Name of the VXLAN device (unique per node because VNIs are).
    pub fn vxlan_dev(&self) -> String {
        format!("vx{}", self.vni)
    }

    /// Name of the bridge device.
    pub fn bridge_dev(&self) -> String {
        format!("br{}", self.vni)
    }
}

/// One veth pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub a: (String, String),
    pub b: (String, String),
}

/// A validated topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub name: String,
    pub nodes: BTreeMap<String, Node>,
    pub links: Vec<Link>,
    /// The file it came from, absolute, if any.
    pub source: Option<PathBuf>,
    /// A Prometheus the lab runs on the host, scraping every `lab.prometheus.scrape`
    /// endpoint. Not read from the file (it is how this host runs the lab, not what the
    /// lab is): `lab up --prometheus` or a test sets it.
    #[serde(default)]
    pub prometheus: Option<PrometheusSettings>,
}

/// How the lab's Prometheus runs (the `prometheus` module runs it). Here, with the
/// topology that carries it, so that the topology depends on no module that reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrometheusSettings {
    /// Where it serves its UI and HTTP API on the host, e.g. `127.0.0.1:19090`.
    pub listen: std::net::SocketAddr,
    /// Its scrape and rule evaluation interval (one value: an alert then fires at most
    /// two intervals after its condition shows in a daemon's metrics).
    pub interval: std::time::Duration,
    /// Rule files (absolute paths), e.g. `monitoring/prometheus/gatewan-alerts.yml`.
    pub rules: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Spanned<String>,
    topology: Spanned<RawTopology>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    defaults: Option<RawDefaults>,
    #[serde(default)]
    nodes: BTreeMap<String, Spanned<RawNode>>,
    #[serde(default)]
    links: Vec<Spanned<RawLink>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    kind: Option<Spanned<String>>,
    image: Option<String>,
    group: Option<String>,
    #[serde(default)]
    exec: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    binds: Vec<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<String>>,
    /// containerlab's published ports, `HOST:CONTAINER[/tcp]`.
    #[serde(default)]
    ports: Vec<Spanned<String>>,
}

/// `topology.defaults`: values every node inherits (node values win; env and labels
/// are merged key by key, binds are merged by container path).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    kind: Option<Spanned<String>>,
    image: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    binds: Vec<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    endpoints: Spanned<Vec<Spanned<String>>>,
}

/// Names of labs, nodes and processes end up in paths and namespace names.
fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether `s` can name a lab.
pub fn valid_lab_name(s: &str) -> bool {
    valid_name(s, 24)
}

/// Linux IFNAMSIZ is 16 including the NUL.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "lo"
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, line: u64, key: impl Into<String>, msg: impl Into<String>) -> TopologyError {
        TopologyError {
            file: self.file.to_path_buf(),
            line,
            key: key.into(),
            message: msg.into(),
        }
    }
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|e| TopologyError {
            file: path.to_path_buf(),
            line: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut t = Self::parse(&text, &abs)?;
        t.source = Some(abs);
        Ok(t)
    }

    /// Parses and validates topology text; `file` names it in errors and anchors
    /// relative bind paths.
    pub fn parse(text: &str, file: &Path) -> Result<Topology, TopologyError> {
        let cx = Ctx { file };
        let raw: RawFile = serde_saphyr::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line()).unwrap_or(0);
            // The library's message already names the unknown or missing field;
            // keep only its first line, the rest is a source snippet.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid YAML");
            let first = strip_location(first.strip_prefix("error: ").unwrap_or(first)).to_string();
            cx.err(line, key_on_line(text, line), first)
        })?;
        let name_line = raw.name.referenced.line();
        let name = raw.name.value;
        if !valid_name(&name, 24) {
            return Err(cx.err(
                name_line,
                "name",
                format!("`{name}` must be 1-24 characters of [A-Za-z0-9_-]"),
            ));
        }
        let topo = raw.topology.value;
        if topo.nodes.is_empty() {
            return Err(cx.err(raw.topology.referenced.line(), "topology.nodes", "no nodes"));
        }
        let base = file.parent().unwrap_or(Path::new("/")).to_path_buf();

        // Links first: they define which interfaces exist.
        let mut ifaces: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut links = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, l) in topo.links.iter().enumerate() {
            let key = format!("topology.links[{i}].endpoints");
            let line = l.value.endpoints.referenced.line();
            let eps = &l.value.endpoints.value;
            if eps.len() != 2 {
                return Err(cx.err(line, key, "a link needs exactly two endpoints"));
            }
            let mut parsed = Vec::new();
            for ep in eps {
                let eline = ep.referenced.line();
                let Some((n, ifn)) = ep.value.split_once(':') else {
                    return Err(cx.err(
                        eline,
                        &key,
                        format!("endpoint `{}` is not `node:interface`", ep.value),
                    ));
                };
                if n == "host" || n == "mgmt-net" || n == "macvlan" || n == "bridge" {
                    return Err(cx.err(
                        eline,
                        &key,
                        format!(
                            "endpoint `{}`: `{n}` endpoints are not supported by lab",
                            ep.value
                        ),
                    ));
                }
                if !topo.nodes.contains_key(n) {
                    return Err(cx.err(eline, &key, format!("unknown node `{n}`")));
                }
                if !valid_ifname(ifn) {
                    return Err(cx.err(
                        eline,
                        &key,
                        format!("interface `{ifn}` must be 1-15 characters of [A-Za-z0-9_.-] and not `lo`"),
                    ));
                }
                if !seen.insert((n.to_string(), ifn.to_string())) {
                    return Err(cx.err(eline, &key, format!("`{n}:{ifn}` is used by two links")));
                }
                ifaces
                    .entry(n.to_string())
                    .or_default()
                    .push(ifn.to_string());
                parsed.push((n.to_string(), ifn.to_string()));
            }
            let b = parsed.pop().unwrap_or_default();
            let a = parsed.pop().unwrap_or_default();
            if a.0 == b.0 {
                return Err(cx.err(line, key, "a link must join two different nodes"));
            }
            links.push(Link { a, b });
        }

        let mut nodes = BTreeMap::new();
        // Host port -> the node that publishes it (and its line).
        let mut published: BTreeMap<u16, (String, u64)> = BTreeMap::new();
        let defaults = topo.defaults.unwrap_or_default();
        for (nname, rn) in &topo.nodes {
            let nline = rn.referenced.line();
            let pk = format!("topology.nodes.{nname}");
            if !valid_name(nname, 32) {
                return Err(cx.err(
                    nline,
                    &pk,
                    "node names must be 1-32 characters of [A-Za-z0-9_-]",
                ));
            }
            let rn = &rn.value;
            let mut env = defaults.env.clone();
            env.extend(rn.env.iter().map(|(k, v)| (k.clone(), v.clone())));
            let mut labels = defaults.labels.clone();
            labels.extend(rn.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            match rn.kind.as_ref().or(defaults.kind.as_ref()) {
                Some(k) if k.value == "linux" => {}
                Some(k) => {
                    return Err(cx.err(
                        k.referenced.line(),
                        format!("{pk}.kind"),
                        format!("kind `{}` is not supported (only `linux`)", k.value),
                    ));
                }
                None => {
                    return Err(cx.err(nline, format!("{pk}.kind"), "missing (use `kind: linux`)"));
                }
            }
            let _ = &rn.group;
            let interfaces = ifaces.get(nname).cloned().unwrap_or_default();
            let mut node = Node {
                name: nname.clone(),
                role: NodeRole::Host,
                image: rn.image.clone().or_else(|| defaults.image.clone()),
                exec: rn.exec.iter().map(|s| s.value.clone()).collect(),
                env: env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.clone()))
                    .collect(),
                binds: Vec::new(),
                addresses: BTreeMap::new(),
                routes: Vec::new(),
                sysctls: BTreeMap::new(),
                run: BTreeMap::new(),
                interfaces: interfaces.clone(),
                vrfs: BTreeMap::new(),
                ports: Vec::new(),
                scrape: None,
            };
            for (k, v) in &env {
                if k.is_empty() || k.contains('=') || k.contains('\0') || v.value.contains('\0') {
                    return Err(cx.err(
                        v.referenced.line(),
                        format!("{pk}.env.{k}"),
                        "invalid environment variable",
                    ));
                }
            }
            for (i, b) in defaults.binds.iter().enumerate() {
                let bind = parse_bind(
                    &cx,
                    &base,
                    &b.value,
                    b.referenced.line(),
                    &format!("topology.defaults.binds[{i}]"),
                )?;
                node.binds.push(bind);
            }
            for (i, b) in rn.binds.iter().enumerate() {
                let bind = parse_bind(
                    &cx,
                    &base,
                    &b.value,
                    b.referenced.line(),
                    &format!("{pk}.binds[{i}]"),
                )?;
                node.binds.retain(|x| x.1 != bind.1);
                node.binds.push(bind);
            }
            for (i, p) in rn.ports.iter().enumerate() {
                let key = format!("{pk}.ports[{i}]");
                let line = p.referenced.line();
                let port = parse_port(&cx, line, &key, &p.value)?;
                if let Some((other, _)) = published.get(&port.host) {
                    return Err(cx.err(
                        line,
                        key,
                        format!(
                            "host port {} is already published by node `{other}`",
                            port.host
                        ),
                    ));
                }
                if node.ports.iter().any(|q| q.node == port.node) {
                    return Err(cx.err(
                        line,
                        key,
                        format!("port {} of the node is published twice", port.node),
                    ));
                }
                published.insert(port.host, (nname.clone(), line));
                node.ports.push(port);
            }
            parse_labels(&cx, &pk, &labels, &mut node)?;
            nodes.insert(nname.clone(), node);
        }
        Ok(Topology {
            name,
            nodes,
            links,
            source: None,
            prometheus: None,
        })
    }

    /// Which node is at the other end of `node:iface`, if linked.
    pub fn peer_of(&self, node: &str, iface: &str) -> Option<(&str, &str)> {
        self.links.iter().find_map(|l| {
            if l.a.0 == node && l.a.1 == iface {
                Some((l.b.0.as_str(), l.b.1.as_str()))
            } else if l.b.0 == node && l.b.1 == iface {
                Some((l.a.0.as_str(), l.a.1.as_str()))
            } else {
                None
            }
        })
    }
}

/// The mapping key written on `line` (1-based) of `text`, to name it in errors that the
/// YAML library reports only by position.
fn key_on_line(text: &str, line: u64) -> String {
    let Some(l) = line
        .checked_sub(1)
        .and_then(|i| text.lines().nth(i as usize))
    else {
        return String::new();
    };
    let l = l.trim_start().trim_start_matches("- ");
    match l.split_once(':') {
        Some((k, _)) if !k.is_empty() && !k.contains([' ', '"', '\'', '[', '{']) => k.to_string(),
        _ => String::new(),
    }
}

/// Drops a leading `line N column M: ` that the YAML library adds; we print our own.
fn strip_location(s: &str) -> &str {
    if let Some(rest) = s.strip_prefix("line ")
        && let Some((_, tail)) = rest.split_once(": ")
    {
        return tail;
    }
    s
}

fn parse_bind(
    cx: &Ctx,
    base: &Path,
    s: &str,
    line: u64,
    key: &str,
) -> Result<(PathBuf, PathBuf, bool), TopologyError> {
    let parts: Vec<&str> = s.split(':').collect();
    let (host, inner, ro) = match parts.as_slice() {
        [h, c] => (*h, *c, false),
        [h, c, "ro"] => (*h, *c, true),
        [h, c, "rw"] => (*h, *c, false),
        _ => {
            return Err(cx.err(line, key, format!("`{s}` is not `host:container[:ro|rw]`")));
        }
    };
    let hp = if Path::new(host).is_absolute() {
        PathBuf::from(host)
    } else {
        base.join(host)
    };
    if !hp.exists() {
        return Err(cx.err(
            line,
            key,
            format!("host path `{}` does not exist", hp.display()),
        ));
    }
    if !Path::new(inner).is_absolute() || inner.split('/').any(|c| c == "..") {
        return Err(cx.err(
            line,
            key,
            format!("container path `{inner}` must be absolute without `..`"),
        ));
    }
    Ok((hp, PathBuf::from(inner), ro))
}

fn parse_labels(
    cx: &Ctx,
    pk: &str,
    labels: &BTreeMap<String, Spanned<String>>,
    node: &mut Node,
) -> Result<(), TopologyError> {
    let mut wan_ports: Option<(u64, String)> = None;
    let mut wan_impair: Option<(u64, String)> = None;
    let mut is_wan = false;
    let mut kind_line = 0;
    // VRFs first: routes and sysctls that name a VRF's interface are refused on their own
    // line below.
    let vteps = parse_vrfs(cx, pk, labels, node)?;
    for (k, v) in labels {
        let Some(rest) = k.strip_prefix(LABEL_PREFIX) else {
            // Plain labels are the user's, as in containerlab.
            continue;
        };
        let line = v.referenced.line();
        let key = format!("{pk}.labels.{k}");
        let val = v.value.trim();
        if rest.starts_with("vrf.") {
            continue;
        } else if let Some(ifn) = rest.strip_prefix("addr.") {
            if ifn != "lo" && !node.interfaces.iter().any(|i| i == ifn) {
                return Err(cx.err(
                    line,
                    key,
                    format!("node has no interface `{ifn}` (interfaces come from links)"),
                ));
            }
            let mut nets = Vec::new();
            for a in val.split([',', ' ']).filter(|s| !s.is_empty()) {
                let n: IpNet = a.parse().map_err(|_| {
                    cx.err(
                        line,
                        &key,
                        format!("`{a}` is not an address with prefix length"),
                    )
                })?;
                nets.push(n);
            }
            if nets.is_empty() {
                return Err(cx.err(line, key, "no addresses"));
            }
            node.addresses.insert(ifn.to_string(), nets);
        } else if rest.starts_with("route.") {
            node.routes.push(parse_route(cx, line, &key, val, node)?);
        } else if let Some(sk) = rest.strip_prefix("sysctl.") {
            // Only network sysctls are per namespace; others would change the host.
            if !(sk.starts_with("net.") && sk.split('.').all(|c| !c.is_empty() && c != ".."))
                || sk.contains('/')
            {
                return Err(cx.err(line, key, "only per-namespace `net.*` sysctls can be set"));
            }
            if val.is_empty() || val.contains('\n') {
                return Err(cx.err(line, key, "empty or multi-line value"));
            }
            // `net.ipv4.conf.IF.*`: a VRF's interface is not in the node's namespace here.
            if let Some(vrf) = sk.split('.').nth(3).and_then(|i| node.vrf_of(i))
                && sk.split('.').nth(2) == Some("conf")
            {
                return Err(cx.err(
                    line,
                    key,
                    format!("the interface is in VRF `{vrf}`, whose sysctls lab sets itself (forwarding on)"),
                ));
            }
            node.sysctls.insert(sk.to_string(), val.to_string());
        } else if let Some(rn) = rest.strip_prefix("run.") {
            if !valid_name(rn, 32) {
                return Err(cx.err(
                    line,
                    key,
                    "process names must be 1-32 characters of [A-Za-z0-9_-]",
                ));
            }
            if val.is_empty() {
                return Err(cx.err(line, key, "empty command"));
            }
            node.run.insert(rn.to_string(), val.to_string());
        } else if rest == "kind" {
            if val != "wan-emulator" {
                return Err(cx.err(
                    line,
                    key,
                    format!("`{val}` is not a lab kind (only `wan-emulator`)"),
                ));
            }
            is_wan = true;
            kind_line = line;
        } else if rest == "prometheus.scrape" {
            node.scrape = Some(parse_scrape(cx, line, &key, val, node)?);
        } else if rest == "wan.ports" {
            wan_ports = Some((line, val.to_string()));
        } else if rest == "wan.impair" {
            wan_impair = Some((line, val.to_string()));
        } else {
            return Err(cx.err(
                line,
                key,
                "unknown lab label (known: lab.addr.IF, lab.route.ID, lab.sysctl.KEY, lab.run.NAME, lab.vrf.NAME, lab.vrf.NAME.interfaces, lab.kind, lab.wan.ports, lab.wan.impair, lab.prometheus.scrape)",
            ));
        }
    }
    for (line, key, vtep) in vteps {
        let underlay = node
            .addresses
            .iter()
            .filter(|(i, _)| node.vrf_of(i).is_none())
            .flat_map(|(_, nets)| nets.iter())
            .any(|n| n.addr() == IpAddr::V4(vtep));
        if !underlay {
            return Err(cx.err(
                line,
                key,
                format!("vtep {vtep} is not an address of the node outside its VRFs (give it with lab.addr.lo or lab.addr.IF)"),
            ));
        }
    }
    if is_wan && !node.vrfs.is_empty() {
        return Err(cx.err(
            kind_line,
            format!("{pk}.labels.lab.kind"),
            "a WAN emulator cannot have VRFs",
        ));
    }
    if !is_wan {
        if let Some((line, _)) = wan_ports.or(wan_impair) {
            return Err(cx.err(
                line,
                format!("{pk}.labels"),
                "lab.wan.* labels need `lab.kind: wan-emulator`",
            ));
        }
        return Ok(());
    }
    let (pline, ports) = match wan_ports {
        Some((l, p)) => {
            let v: Vec<&str> = p.split([',', ' ']).filter(|s| !s.is_empty()).collect();
            if v.len() != 2 || v[0] == v[1] {
                return Err(cx.err(
                    l,
                    format!("{pk}.labels.lab.wan.ports"),
                    "needs two different interfaces",
                ));
            }
            (l, [v[0].to_string(), v[1].to_string()])
        }
        None => (kind_line, ["eth1".to_string(), "eth2".to_string()]),
    };
    for p in &ports {
        if !node.interfaces.iter().any(|i| i == p) {
            return Err(cx.err(
                pline,
                format!("{pk}.labels.lab.wan.ports"),
                format!("node has no interface `{p}` (interfaces come from links)"),
            ));
        }
        if node.addresses.contains_key(p) {
            return Err(cx.err(
                pline,
                format!("{pk}.labels.lab.addr.{p}"),
                "a WAN emulator port cannot have addresses",
            ));
        }
    }
    let impairment = match wan_impair {
        Some((l, s)) => {
            let words: Vec<&str> = s.split_whitespace().collect();
            Impairment::default()
                .apply(&words)
                .map_err(|e| cx.err(l, format!("{pk}.labels.lab.wan.impair"), e))?
        }
        None => Impairment::default(),
    };
    node.role = NodeRole::WanEmulator { ports, impairment };
    Ok(())
}

/// A VTEP to find among the node's underlay addresses: line, key, address.
type VtepCheck = (u64, String, Ipv4Addr);

/// Parses the `lab.vrf.NAME` and `lab.vrf.NAME.interfaces` labels into `node.vrfs`.
/// Returns the VTEPs to check against the node's addresses once those are parsed.
fn parse_vrfs(
    cx: &Ctx,
    pk: &str,
    labels: &BTreeMap<String, Spanned<String>>,
    node: &mut Node,
) -> Result<Vec<VtepCheck>, TopologyError> {
    let mut decls: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    let mut ifaces: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    for (k, v) in labels {
        let Some(rest) = k.strip_prefix("lab.vrf.") else {
            continue;
        };
        let line = v.referenced.line();
        let key = format!("{pk}.labels.{k}");
        let (name, sub) = match rest.split_once('.') {
            Some((n, s)) => (n, Some(s)),
            None => (rest, None),
        };
        // 15 characters: under containerlab the same name may be a kernel VRF device.
        if !valid_name(name, 15) || name == "default" {
            return Err(cx.err(
                line,
                key,
                "VRF names must be 1-15 characters of [A-Za-z0-9_-] and not `default` (FRR's main VRF)",
            ));
        }
        match sub {
            None => decls.insert(name, (line, v.value.trim())),
            Some("interfaces") => ifaces.insert(name, (line, v.value.trim())),
            Some(other) => {
                return Err(cx.err(
                    line,
                    key,
                    format!(
                        "unknown VRF label `{other}` (known: lab.vrf.NAME, lab.vrf.NAME.interfaces)"
                    ),
                ));
            }
        };
    }
    if let Some((name, (line, _))) = ifaces.iter().find(|(n, _)| !decls.contains_key(*n)) {
        return Err(cx.err(
            *line,
            format!("{pk}.labels.lab.vrf.{name}.interfaces"),
            format!("no VRF `{name}` (declare it with a `lab.vrf.{name}` label)"),
        ));
    }
    let mut vteps = Vec::new();
    let mut vnis: BTreeMap<u32, &str> = BTreeMap::new();
    for (name, (line, val)) in decls {
        let key = format!("{pk}.labels.lab.vrf.{name}");
        let l3vni = parse_l3vni(cx, line, &key, val)?;
        if let Some(l) = &l3vni {
            if let Some(other) = vnis.insert(l.vni, name) {
                return Err(cx.err(
                    line,
                    key,
                    format!("VNI {} is also the L3 VNI of VRF `{other}`", l.vni),
                ));
            }
            for dev in [l.vxlan_dev(), l.bridge_dev()] {
                if node.interfaces.contains(&dev) {
                    return Err(cx.err(
                        line,
                        key,
                        format!("lab creates device `{dev}` for this VRF, but a link already gives the node an interface of that name"),
                    ));
                }
            }
            vteps.push((line, key.clone(), l.vtep));
        }
        let mut interfaces: Vec<String> = Vec::new();
        if let Some((iline, ival)) = ifaces.get(name) {
            let ikey = format!("{key}.interfaces");
            for i in ival.split([',', ' ']).filter(|s| !s.is_empty()) {
                if !node.interfaces.iter().any(|x| x == i) {
                    return Err(cx.err(
                        *iline,
                        ikey,
                        format!("node has no interface `{i}` (interfaces come from links)"),
                    ));
                }
                if let Some(other) = node.vrf_of(i) {
                    return Err(cx.err(
                        *iline,
                        ikey,
                        format!("interface `{i}` is already in VRF `{other}`"),
                    ));
                }
                if interfaces.iter().any(|x| x == i) {
                    return Err(cx.err(*iline, ikey, format!("interface `{i}` is listed twice")));
                }
                interfaces.push(i.to_string());
            }
            if interfaces.is_empty() {
                return Err(cx.err(*iline, ikey, "no interfaces"));
            }
        }
        node.vrfs.insert(
            name.to_string(),
            Vrf {
                name: name.to_string(),
                interfaces,
                l3vni,
            },
        );
    }
    Ok(vteps)
}

/// The value of `lab.vrf.NAME`: empty (a VRF without EVPN), or
/// `vni=N vtep=IPV4 rmac=MAC` in any order.
fn parse_l3vni(cx: &Ctx, line: u64, key: &str, val: &str) -> Result<Option<L3Vni>, TopologyError> {
    if val.is_empty() {
        return Ok(None);
    }
    let bad = |m: String| {
        cx.err(
            line,
            key,
            format!("`{val}`: {m} (expected `vni=N vtep=IPV4 rmac=MAC`, or an empty value for a VRF without L3 VNI)"),
        )
    };
    let (mut vni, mut vtep, mut rmac) = (None, None, None);
    for w in val.split_whitespace() {
        let Some((k, v)) = w.split_once('=') else {
            return Err(bad(format!("`{w}` is not key=value")));
        };
        let dup = match k {
            "vni" => {
                let n: u32 = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=0xff_ffff).contains(n))
                    .ok_or_else(|| bad(format!("vni `{v}` is not in 1-16777215")))?;
                vni.replace(n).is_some()
            }
            "vtep" => {
                // FRR 8.4's EVPN only handles IPv4 VTEPs.
                let a: Ipv4Addr = v
                    .parse()
                    .map_err(|_| bad(format!("vtep `{v}` is not an IPv4 address")))?;
                vtep.replace(a).is_some()
            }
            "rmac" => rmac
                .replace(parse_unicast_mac(v).ok_or_else(|| {
                    bad(format!(
                        "rmac `{v}` is not a unicast MAC address like 02:00:00:00:00:01"
                    ))
                })?)
                .is_some(),
            _ => return Err(bad(format!("unknown key `{k}`"))),
        };
        if dup {
            return Err(bad(format!("`{k}` given twice")));
        }
    }
    match (vni, vtep, rmac) {
        (Some(vni), Some(vtep), Some(rmac)) => Ok(Some(L3Vni { vni, vtep, rmac })),
        _ => Err(bad("needs all of vni, vtep and rmac".into())),
    }
}

/// `aa:bb:cc:dd:ee:ff`, lower-cased, if it is a unicast address other than all zeros.
fn parse_unicast_mac(s: &str) -> Option<String> {
    let octets: Vec<u8> = s
        .split(':')
        .map(|o| {
            if o.len() == 2 {
                u8::from_str_radix(o, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    if octets.len() != 6 || octets[0] & 1 == 1 || octets.iter().all(|o| *o == 0) {
        return None;
    }
    Some(s.to_ascii_lowercase())
}

fn parse_route(
    cx: &Ctx,
    line: u64,
    key: &str,
    val: &str,
    node: &Node,
) -> Result<Route, TopologyError> {
    let w: Vec<&str> = val.split_whitespace().collect();
    let bad = |m: &str| {
        cx.err(
            line,
            key,
            format!("`{val}`: {m} (expected `DST|default [via GW] [dev IF]`)"),
        )
    };
    let Some(first) = w.first() else {
        return Err(bad("empty route"));
    };
    let dst = if *first == "default" {
        None
    } else {
        Some(
            first
                .parse::<IpNet>()
                .map_err(|_| bad("destination is not a prefix"))?,
        )
    };
    let mut r = Route {
        dst,
        via: None,
        dev: None,
    };
    let mut i = 1;
    while i < w.len() {
        let arg = w.get(i + 1).ok_or_else(|| bad("missing value"))?;
        match w[i] {
            "via" => r.via = Some(arg.parse().map_err(|_| bad("gateway is not an address"))?),
            "dev" => {
                if !node.interfaces.iter().any(|x| x == arg) {
                    return Err(bad("unknown interface"));
                }
                if let Some(vrf) = node.vrf_of(arg) {
                    return Err(bad(&format!(
                        "interface `{arg}` is in VRF `{vrf}`; lab.route.* routes are the node's own (its VRFs are routed by their daemons)"
                    )));
                }
                r.dev = Some(arg.to_string());
            }
            _ => return Err(bad("unknown word")),
        }
        i += 2;
    }
    if r.via.is_none() && r.dev.is_none() {
        return Err(bad("needs `via` or `dev`"));
    }
    if let (Some(d), Some(v)) = (&r.dst, &r.via)
        && matches!(d, IpNet::V4(_)) != v.is_ipv4()
    {
        return Err(bad("destination and gateway families differ"));
    }
    Ok(r)
}

/// One entry of containerlab's `ports:`: `HOST:CONTAINER`, optionally `/tcp`. lab
/// publishes TCP on the host's loopback only, so a host address or `/udp` is refused
/// rather than silently meaning something else than under containerlab.
fn parse_port(cx: &Ctx, line: u64, key: &str, val: &str) -> Result<PublishedPort, TopologyError> {
    let bad = |m: &str| {
        cx.err(
            line,
            key,
            format!("`{val}`: {m} (expected `HOST:CONTAINER`, e.g. `19111:9469`)"),
        )
    };
    let (pair, proto) = match val.split_once('/') {
        Some((p, proto)) => (p, Some(proto)),
        None => (val, None),
    };
    match proto {
        None | Some("tcp") => {}
        Some("udp") | Some("sctp") => {
            return Err(bad("lab publishes TCP ports only"));
        }
        Some(_) => return Err(bad("unknown protocol")),
    }
    let parts: Vec<&str> = pair.split(':').collect();
    let [host, node] = parts.as_slice() else {
        return Err(bad(
            "lab publishes on 127.0.0.1 only, so no host address can be given",
        ));
    };
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
    match (port(host), port(node)) {
        (Some(host), Some(node)) => Ok(PublishedPort { host, node }),
        _ => Err(bad("ports are numbers from 1 to 65535")),
    }
}

/// `lab.prometheus.scrape: "PORT [key=value]…"`: the node's metrics port (published in
/// `ports:`, so the host's Prometheus reaches it) and the target's labels.
fn parse_scrape(
    cx: &Ctx,
    line: u64,
    key: &str,
    val: &str,
    node: &Node,
) -> Result<Scrape, TopologyError> {
    let bad = |m: String| {
        cx.err(
            line,
            key,
            format!("`{val}`: {m} (expected `PORT [LABEL=VALUE]…`, e.g. `9469 job=gatewan`)"),
        )
    };
    let mut words = val.split_whitespace();
    let port: u16 = words
        .next()
        .and_then(|p| p.parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("the first word is the node's metrics port".into()))?;
    if !node.ports.iter().any(|p| p.node == port) {
        return Err(bad(format!(
            "port {port} is not published: add `HOST:{port}` to the node's `ports:`"
        )));
    }
    let mut labels = BTreeMap::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(bad(format!("`{w}` is not LABEL=VALUE")));
        };
        // Prometheus label names; `__*` are Prometheus's own (address, scheme, path).
        let name_ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with("__");
        if !name_ok {
            return Err(bad(format!(
                "`{k}` is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not __*)"
            )));
        }
        if v.is_empty() {
            return Err(bad(format!("label `{k}` has no value")));
        }
        if labels.insert(k.to_string(), v.to_string()).is_some() {
            return Err(bad(format!("label `{k}` given twice")));
        }
    }
    Ok(Scrape { port, labels })
}
