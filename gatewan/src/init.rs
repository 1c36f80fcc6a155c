//! `gatewan init`: a commented starting config from the host's interfaces, so that a new
//! gatewan needs only its datacenter, its seeds and the mesh's keyring (ADR 0043).
//!
//! [`render`] is pure (a [`HostDescription`] and the arguments in, the config's text or
//! the argument to fix out); [`run`] reads the host ([`crate::host::describe`]) and writes
//! the file.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use gatewan_kit::config::{DEFAULT_MESH_PORT, NAME_RULE, is_name};
use gatewan_kit::units::Rate;

use crate::host::{HostDescription, HostInterface};
use crate::tunnels::plan::MAX_TRANSITS;

/// Where the config points for the keyring unless told otherwise.
pub const DEFAULT_KEYRING: &str = "/etc/gatewan/keyring";
const DEFAULT_STATE_DIR: &str = "/var/lib/gatewan";

#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// This gatewan's datacenter, as the other gatewans and bgpctls of it name it.
    #[arg(long, value_name = "DC", value_parser = parse_name)]
    pub datacenter: String,
    /// A member of the mesh to join by (a gatewan of any datacenter): ip:port, or ip for
    /// port 7946. Repeat it for more; none makes this the mesh's first member.
    #[arg(long = "seed", value_name = "ADDR:PORT", value_parser = parse_seed)]
    pub seeds: Vec<SocketAddr>,
    /// Names the transit on interface IFACE (default: the interface's name). Repeatable.
    #[arg(long = "transit", value_name = "IFACE=NAME", value_parser = parse_transit)]
    pub transits: Vec<(String, String)>,
    /// The capacity of every transit (RATE), or of the one on IFACE (IFACE=RATE): what the
    /// provider commits to, e.g. 1Gbps. Default: the link's speed, where the host knows it.
    #[arg(long = "capacity", value_name = "[IFACE=]RATE", value_parser = parse_capacity)]
    pub capacities: Vec<(Option<String>, Rate)>,
    /// The mesh keyring file the config names (`gatewan keygen` makes one).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_KEYRING)]
    pub keyring: PathBuf,
    /// The gatewan's name. Default: the hostname's first label, in lower case.
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,
    /// Write the config to FILE rather than to standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Replace --output if it exists.
    #[arg(long, requires = "output")]
    pub force: bool,
}

fn parse_name(s: &str) -> Result<String, String> {
    if is_name(s) {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} must be {NAME_RULE}"))
    }
}

fn parse_seed(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .ok()
        .or_else(|| {
            s.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, DEFAULT_MESH_PORT))
        })
        .filter(|a| !a.ip().is_unspecified() && !a.ip().is_multicast() && a.port() != 0)
        .ok_or_else(|| {
            "not a member's address: ip:port or ip, e.g. 192.0.2.1:7946 or [2001:db8::1]:7946"
                .to_string()
        })
}

fn parse_transit(s: &str) -> Result<(String, String), String> {
    let (iface, name) = s
        .split_once('=')
        .ok_or_else(|| "write IFACE=NAME, e.g. eth1=lumen".to_string())?;
    if iface.is_empty() {
        return Err("write IFACE=NAME, e.g. eth1=lumen".to_string());
    }
    Ok((iface.to_string(), parse_name(name)?))
}

fn parse_capacity(s: &str) -> Result<(Option<String>, Rate), String> {
    match s.split_once('=') {
        Some(("", _)) => Err("write RATE or IFACE=RATE, e.g. 1Gbps or eth1=500Mbps".into()),
        Some((iface, rate)) => Ok((Some(iface.to_string()), Rate::parse(rate)?)),
        None => Ok((None, Rate::parse(s)?)),
    }
}

/// Why no config was written: the message names what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitError {
    /// An argument does not fit this host (exit 2).
    Usage(String),
    /// The host lacks what a gatewan needs (exit 1).
    Host(String),
}

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitError::Usage(m) | InitError::Host(m) => f.write_str(m),
        }
    }
}

/// A transit as it will be written.
struct PlannedTransit<'a> {
    name: String,
    interface: &'a HostInterface,
    addresses: Vec<IpAddr>,
    capacity: Rate,
    /// Where the capacity came from, for the operator who reviews it.
    capacity_from: String,
}

/// Lines of YAML, comments on a line aligned as in docs/examples/gatewan.yaml.
#[derive(Default)]
struct Doc(String);

impl Doc {
    const COMMENT_COLUMN: usize = 37;

    fn line(&mut self, text: &str) {
        self.0.push_str(text);
        self.0.push('\n');
    }

    /// `text`, then `# comment` at the comment column (a space after a longer text).
    fn noted(&mut self, text: &str, comment: &str) {
        let pad = Self::COMMENT_COLUMN.saturating_sub(text.len()).max(1);
        self.line(&format!("{text}{:pad$}# {comment}", ""));
    }
}

/// The starting config for `host`: its text, commented, or the argument to fix.
pub fn render(host: &HostDescription, args: &InitArgs) -> Result<String, InitError> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => name_from_hostname(&host.hostname)?,
    };
    let Transits {
        planned: transits,
        not_transits,
    } = plan_transits(host, args)?;
    let mut d = Doc::default();
    d.line(&format!(
        "# gatewan.yaml of {name} in datacenter {}, written by `gatewan init` from this",
        args.datacenter
    ));
    d.line("# host's interfaces and routes. Review it (each transit's capacity above all), then");
    d.line("# `gatewan --check -c FILE`. Every option: docs/examples/gatewan.yaml.");
    d.line("");
    d.line(
        "# The member's name in the mesh, routingctl's tables and the logs: unique in the mesh.",
    );
    d.line(&format!("name: {name}"));
    d.line("# Tunnels go to the gatewans of every other datacenter, never within one.");
    d.line(&format!("datacenter: {}", args.datacenter));
    d.line(
        "# Node id, signing key, WireGuard key, tunnel slot, transit positions: what keeps this",
    );
    d.line("# member itself across restarts. Back it up; emptied, the gatewan is a new member.");
    d.line(&format!("state_dir: {DEFAULT_STATE_DIR}"));
    d.line("");

    d.line("mesh:");
    if args.seeds.is_empty() {
        d.line("  # No seed: this is the mesh's first member, which the next ones name as theirs.");
        d.line("  seeds: []");
    } else {
        d.line(
            "  # One reachable member of any datacenter is enough to join; more ride out one down.",
        );
        let seeds: Vec<String> = args.seeds.iter().map(|s| format!("\"{s}\"")).collect();
        d.line(&format!("  seeds: [{}]", seeds.join(", ")));
    }
    d.line(
        "  # Seals every gossip datagram: the same keys on every gatewan and bgpctl of the mesh.",
    );
    d.line(&format!(
        "  keyring: {}",
        scalar(&args.keyring.to_string_lossy())
    ));
    d.line("  # advertise: left out, every transit address and the fabric VTEP, on the bind port:");
    d.line("  # the other datacenters reach this gatewan over its transits, its bgpctls over the fabric.");
    d.line(&format!("  # bind: \"[::]:{DEFAULT_MESH_PORT}\""));
    d.line("");

    d.line(
        "# The IP transits: one per interface with a default route. Each one's tunnels and gossip",
    );
    d.line("# leave by its own interface and gateway, whatever the main table says, so a transit");
    d.line("# that fails costs only its own tunnels. Addresses must be on the host (no NAT): the");
    d.line("# peers send to them. Capacity is what the controller counts on when it sizes a");
    d.line("# datacenter's tunnels: the rate the provider commits to, not the port's speed.");
    for (iface, why) in &not_transits {
        d.line(&format!("# Not a transit: {iface}, {why}."));
    }
    d.line("transits:");
    for t in &transits {
        d.line(&format!("  - name: {}", t.name));
        d.line(&format!("    interface: {}", scalar(&t.interface.name)));
        d.line(&format!("    addresses: [{}]", address_list(&t.addresses)));
        d.noted(
            &format!(
                "    # gateway: [{}]",
                address_list(&t.interface.default_gateways)
            ),
            "in the main table at start; written, pinned",
        );
        d.noted(
            &format!("    capacity: {}", rate(t.capacity)),
            &t.capacity_from,
        );
        d.noted(
            "    # cost: 0",
            "higher: the controller prefers other transits",
        );
    }
    d.line("");

    d.line(
        "# One WireGuard tunnel per pair of transits to every gatewan of the other datacenters,",
    );
    d.line("# each measured by its probes. No slot: the gatewan claims a free tunnel slot through");
    d.line("# the mesh and keeps it in state_dir. `slot: N` pins one (a pinned slot that another");
    d.line("# gatewan holds is refused, loudly).");
    d.line("tunnels:");
    d.noted(
        "  pairing: all",
        "same-transit where providers do not reach each other",
    );
    d.noted(
        "  wireguard: auto",
        "the kernel's WireGuard if there is one, else wireguard-go",
    );
    d.line("  # slot: 7");
    d.line("");

    render_fabric(&mut d, host, &transits);

    d.line("# routingctl reaches the daemon here (mode 0600).");
    d.line("# api:");
    d.line(&format!(
        "#   socket: {}",
        crate::config::DEFAULT_API_SOCKET
    ));
    d.line("# Prometheus: the tunnels' loss, latency and rates, the mesh's health.");
    d.line("# metrics:");
    d.line("#   listen: \"127.0.0.1:9469\"");
    Ok(d.0)
}

/// The fabric section, commented: the data plane needs the fabric's L3 VNI, which the host
/// cannot tell. The interface toward the fabric is the one that is no transit, when there
/// is exactly one.
fn render_fabric(d: &mut Doc, host: &HostDescription, transits: &[PlannedTransit<'_>]) {
    use crate::dataplane::plan::{MACVLAN_PREFIX, VXLAN_DEVICE};
    let tunnel_prefix = crate::tunnels::plan::PlanSettings::default().interface_prefix;
    let candidates: Vec<&HostInterface> = host
        .interfaces
        .iter()
        .filter(|i| {
            !i.loopback
                && !transits.iter().any(|t| t.interface.name == i.name)
                && i.default_gateways.is_empty()
                // The gatewan's own devices, from an earlier run.
                && i.name != VXLAN_DEVICE
                && !i.name.starts_with(MACVLAN_PREFIX)
                && !i.name.starts_with(&tunnel_prefix)
                && i.global_addresses().any(|a| a.is_ipv4())
        })
        .collect();
    d.line(
        "# The data plane toward this datacenter's VXLAN fabric: tenant traffic enters and leaves",
    );
    d.line(
        "# the tunnels here. It needs the fabric's L3 VNI, which the host cannot tell: uncomment",
    );
    d.line("# the section with it.");
    match candidates.as_slice() {
        [one] => {
            let v4: Vec<IpAddr> = one.global_addresses().filter(|a| a.is_ipv4()).collect();
            d.line("# fabric:");
            d.noted(
                &format!("#   interface: {}", scalar(&one.name)),
                "the one interface that is no transit",
            );
            d.noted("#   vni: 100", "the tenant's L3 VNI");
            match v4.as_slice() {
                [vtep] => d.line(&format!(
                    "#   # vtep: left out, {}'s one IPv4 address ({vtep} now), read at start",
                    one.name
                )),
                several => d.noted(
                    &format!("#   vtep: {}", several[0]),
                    &format!(
                        "{} has {}: {}; the one the leaves send to",
                        one.name,
                        several.len(),
                        address_list(several)
                    ),
                ),
            }
        }
        several => {
            if several.is_empty() {
                d.line("# No interface but the transits has an IPv4 address to face the fabric.");
            } else {
                let names: Vec<&str> = several.iter().map(|i| i.name.as_str()).collect();
                d.line(&format!(
                    "# {} interfaces could face the fabric: {}.",
                    several.len(),
                    names.join(", ")
                ));
            }
            d.line("# fabric:");
            d.noted(
                "#   interface: eth0",
                "the underlay interface toward the leaves",
            );
            d.noted("#   vni: 100", "the tenant's L3 VNI");
            d.line("#   # vtep: left out, the interface's one IPv4 address, read at start");
        }
    }
    d.line("");
}

/// The transits to write, and the interfaces with a default route that cannot be one.
struct Transits<'a> {
    planned: Vec<PlannedTransit<'a>>,
    /// (interface, why), said in the config.
    not_transits: Vec<(String, String)>,
}

/// The transits (one per interface with a default route, as the arguments name them) and
/// the interfaces with a default route that cannot be one, with why.
fn plan_transits<'a>(
    host: &'a HostDescription,
    args: &InitArgs,
) -> Result<Transits<'a>, InitError> {
    let routed: Vec<&HostInterface> = host
        .interfaces
        .iter()
        .filter(|i| !i.loopback && !i.default_gateways.is_empty())
        .collect();
    let mut not_transits = Vec::new();
    let mut with_addresses = Vec::new();
    for i in routed {
        let addresses: Vec<IpAddr> = i.global_addresses().collect();
        if addresses.is_empty() {
            not_transits.push((
                i.name.clone(),
                "which has a default route but no global address".to_string(),
            ));
        } else {
            with_addresses.push((i, addresses));
        }
    }
    let transit_list = || {
        with_addresses
            .iter()
            .map(|(i, _)| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Each argument must name an interface that is a transit here: a typo would otherwise
    // be silently ignored.
    let named = |flag: &str, iface: &str| -> Result<(), InitError> {
        if with_addresses.iter().any(|(i, _)| i.name == iface) {
            return Ok(());
        }
        Err(InitError::Usage(format!(
            "{flag}: {iface} is no transit of this host (interfaces with a default route and a global address: {})",
            if with_addresses.is_empty() {
                "none".to_string()
            } else {
                transit_list()
            }
        )))
    };
    for (k, (iface, _)) in args.transits.iter().enumerate() {
        named(&format!("--transit {iface}="), iface)?;
        if args.transits[..k].iter().any(|(i, _)| i == iface) {
            return Err(InitError::Usage(format!(
                "--transit {iface}=: {iface} is named twice"
            )));
        }
    }
    for (iface, _) in args.capacities.iter() {
        if let Some(iface) = iface {
            named(&format!("--capacity {iface}="), iface)?;
        }
    }
    if args.capacities.iter().filter(|(i, _)| i.is_none()).count() > 1 {
        return Err(InitError::Usage(
            "--capacity: one RATE for every transit at most; IFACE=RATE for each one".into(),
        ));
    }
    if with_addresses.is_empty() {
        return Err(InitError::Host(
            "no interface of this host has a default route (main table) and a global address, so there is no transit to write: a gatewan reaches the other datacenters through its transits (write them by hand after docs/examples/gatewan.yaml if their routes are elsewhere)".into(),
        ));
    }
    if with_addresses.len() > MAX_TRANSITS {
        return Err(InitError::Host(format!(
            "{} interfaces have a default route ({}), and a gatewan has at most {MAX_TRANSITS} transits: write the config by hand after docs/examples/gatewan.yaml",
            with_addresses.len(),
            transit_list()
        )));
    }
    let mut transits: Vec<PlannedTransit<'a>> = Vec::new();
    for (interface, addresses) in with_addresses {
        let name = match args.transits.iter().find(|(i, _)| *i == interface.name) {
            Some((_, n)) => n.clone(),
            None if is_name(&interface.name) => interface.name.clone(),
            None => {
                return Err(InitError::Usage(format!(
                    "--transit: interface {0} is a transit, but {0:?} is no transit name ({NAME_RULE}): name it with --transit {0}=NAME",
                    interface.name
                )));
            }
        };
        if let Some(other) = transits.iter().find(|t| t.name == name) {
            return Err(InitError::Usage(format!(
                "--transit: the transits on {} and {} would both be named {name}: name one with --transit IFACE=NAME",
                other.interface.name, interface.name
            )));
        }
        let own = args
            .capacities
            .iter()
            .find(|(i, _)| i.as_deref() == Some(interface.name.as_str()));
        let every = args.capacities.iter().find(|(i, _)| i.is_none());
        let (capacity, capacity_from) = match (own, every, interface.speed_bps) {
            (Some((_, r)), _, _) => (*r, format!("given with --capacity {}=", interface.name)),
            (None, Some((_, r)), _) => (*r, "given with --capacity".to_string()),
            (None, None, Some(bps)) => (
                Rate(bps),
                format!(
                    "{}'s link speed: lower it to what the provider commits",
                    interface.name
                ),
            ),
            (None, None, None) => {
                return Err(InitError::Usage(format!(
                    "--capacity: the link speed of {0} is unknown (virtual NICs often report none), and a transit's capacity is the rate its provider commits to: give it with --capacity {0}=RATE or --capacity RATE (e.g. 1Gbps)",
                    interface.name
                )));
            }
        };
        transits.push(PlannedTransit {
            name,
            interface,
            addresses,
            capacity,
            capacity_from,
        });
    }
    Ok(Transits {
        planned: transits,
        not_transits,
    })
}

/// The hostname's first label in lower case (DNS names ignore case), if it is a name.
fn name_from_hostname(hostname: &str) -> Result<String, InitError> {
    let label = hostname
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if is_name(&label) {
        Ok(label)
    } else {
        Err(InitError::Usage(format!(
            "--name: the hostname {hostname:?} makes no gatewan name ({NAME_RULE}): give one with --name NAME"
        )))
    }
}

/// A rate as the config reads it, in the largest unit that writes it whole.
fn rate(r: Rate) -> String {
    for (unit, size) in [
        ("Tbps", 1e12 as u64),
        ("Gbps", 1e9 as u64),
        ("Mbps", 1e6 as u64),
    ] {
        if r.0 >= size && r.0.is_multiple_of(size) {
            return format!("{}{unit}", r.0 / size);
        }
    }
    if r.0 >= 1000 && r.0.is_multiple_of(1000) {
        return format!("{}Kbps", r.0 / 1000);
    }
    format!("{}bps", r.0)
}

/// Addresses for a YAML flow sequence: IPv6 quoted, as the example config writes them.
fn address_list(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(|a| match a {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"{v6}\""),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A YAML scalar for text from the host (an interface name, a path): plain when it cannot
/// be read as anything but a string, else double-quoted (JSON's escapes are YAML's).
fn scalar(s: &str) -> String {
    let plain = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain {
        s.to_string()
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}

/// `gatewan init`: reads the host, writes the config. Exit 2 for an argument to change,
/// 1 for what the host lacks or a write that failed.
pub fn run(args: &InitArgs) -> ExitCode {
    if let Some(path) = &args.output
        && !args.force
        && path.exists()
    {
        eprintln!(
            "error: --output: {} exists: give --force to replace it",
            path.display()
        );
        return ExitCode::from(2);
    }
    let host = match read_host() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: cannot read this host's interfaces and routes: {e}");
            return ExitCode::from(1);
        }
    };
    let text = match render(&host, args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(match e {
                InitError::Usage(_) => 2,
                InitError::Host(_) => 1,
            });
        }
    };
    let Some(path) = &args.output else {
        return match std::io::stdout().lock().write_all(text.as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write the config: {e}");
                ExitCode::from(1)
            }
        };
    };
    match write_file(path, &text, args.force) {
        Ok(()) => {
            eprintln!(
                "{0}: written; review it, then `gatewan --check -c {0}`",
                path.display()
            );
            ExitCode::SUCCESS
        }
        // Created since the check above: still not ours to replace.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "error: --output: {} exists: give --force to replace it",
                path.display()
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}

fn write_file(path: &std::path::Path, text: &str, force: bool) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new();
    f.write(true);
    if force {
        f.create(true).truncate(true);
    } else {
        // Never replaces a file created since the check: the operator's config is theirs.
        f.create_new(true);
    }
    let mut file = f.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn read_host() -> std::io::Result<HostDescription> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        crate::host::describe(&handle).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewanConfig;
    use crate::host::HostAddress;

    fn addr(a: &str, global: bool) -> HostAddress {
        let net: ipnet::IpNet = a.parse().unwrap();
        HostAddress {
            address: net.addr(),
            prefix_len: net.prefix_len(),
            global,
        }
    }

    fn iface(
        name: &str,
        addrs: &[(&str, bool)],
        gateways: &[&str],
        speed: Option<u64>,
    ) -> HostInterface {
        HostInterface {
            name: name.into(),
            loopback: name == "lo",
            addresses: addrs.iter().map(|&(a, g)| addr(a, g)).collect(),
            default_gateways: gateways.iter().map(|g| g.parse().unwrap()).collect(),
            speed_bps: speed,
        }
    }

    /// lo; eth0 toward the fabric; eth1 (lumen) with the host's default routes and a known
    /// link speed; eth2 (cogent), a second default route through a virtual NIC.
    fn host() -> HostDescription {
        HostDescription {
            hostname: "GW01-sg1.example.net".into(),
            interfaces: vec![
                iface(
                    "lo",
                    &[("127.0.0.1/8", false), ("::1/128", false)],
                    &[],
                    None,
                ),
                iface(
                    "eth0",
                    &[("10.1.255.11/32", true), ("fe80::11/64", false)],
                    &[],
                    None,
                ),
                iface(
                    "eth1",
                    &[
                        ("198.51.100.10/24", true),
                        ("2001:db8:10::10/64", true),
                        ("fe80::10/64", false),
                    ],
                    &["198.51.100.1", "fe80::1"],
                    Some(10_000_000_000),
                ),
                iface("eth2", &[("203.0.113.10/24", true)], &["203.0.113.1"], None),
            ],
        }
    }

    fn parse(argv: &[&str]) -> Result<InitArgs, clap::Error> {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            init: InitArgs,
        }
        Cli::try_parse_from(argv).map(|c| c.init)
    }

    fn args(extra: &[&str]) -> Result<InitArgs, clap::Error> {
        let mut argv = vec!["init", "--datacenter", "sg1", "--seed", "192.0.2.1:7946"];
        argv.extend_from_slice(extra);
        parse(&argv)
    }

    fn load(text: &str) -> Result<crate::config::GatewanSettings, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gatewan.yaml");
        std::fs::write(&p, text).unwrap();
        GatewanConfig::load(&p).map_err(|e| {
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
                + text
        })
    }

    /// What `gatewan init` writes is a valid config. `GatewanConfig::load` reads no
    /// keyring (`--check` does, after it): the integration test `init_writes_a_config_that_
    /// passes_check` checks the written file with a real keyring.
    #[test]
    fn the_config_written_loads_and_says_what_the_host_has() {
        let a = args(&["--transit", "eth1=lumen", "--capacity", "eth2=500Mbps"]).unwrap();
        let text = render(&host(), &a).unwrap();
        let p = load(&text).unwrap();
        assert_eq!(p.name, "gw01-sg1", "the hostname's first label, lower case");
        assert_eq!(p.datacenter, "sg1");
        assert_eq!(p.mesh.seeds, ["192.0.2.1:7946".parse().unwrap()]);
        assert_eq!(p.mesh.keyring_file, PathBuf::from(DEFAULT_KEYRING));
        let t: Vec<_> = p
            .transits
            .iter()
            .map(|t| (t.name.as_str(), t.interface.as_deref(), t.capacity.0))
            .collect();
        assert_eq!(
            t,
            [
                ("lumen", Some("eth1"), 10_000_000_000),
                ("eth2", Some("eth2"), 500_000_000)
            ]
        );
        assert_eq!(
            p.transits[0].addresses,
            [
                "198.51.100.10".parse::<IpAddr>().unwrap(),
                "2001:db8:10::10".parse().unwrap()
            ],
            "global addresses only"
        );
        assert!(
            p.transits[0].gateways.is_empty(),
            "found in the main table at start"
        );
        assert!(
            text.contains("# gateway: [198.51.100.1, \"fe80::1\"]"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{:<37}# eth1's link speed: lower it",
                "    capacity: 10Gbps"
            )),
            "{text}"
        );
        assert!(p.tunnels.is_some(), "tunnels, no slot: {text}");
        assert!(!text.contains("\n  slot:"), "{text}");
        // The fabric is commented: its VNI is not the host's to tell.
        assert!(p.dataplane.is_none() && p.vtep_from_interface.is_none());
        assert_eq!(p.mesh.advertise.len(), 3);
        for line in text.lines() {
            assert!(line.len() <= 100, "{line}");
        }
    }

    /// The commented fabric section, uncommented, takes the VTEP from the interface it
    /// names; once read, the VTEP is announced to the mesh with the transits.
    #[test]
    fn the_fabric_section_uncommented_reads_the_vtep_from_its_interface() {
        let a = args(&["--capacity", "1Gbps"]).unwrap();
        let text = render(&host(), &a).unwrap();
        assert!(
            text.contains(&format!(
                "{:<37}# the one interface that is no transit",
                "#   interface: eth0"
            )),
            "{text}"
        );
        assert!(
            text.contains("eth0's one IPv4 address (10.1.255.11 now)"),
            "{text}"
        );
        let (before, block) = text.split_once("# fabric:\n").expect("a fabric section");
        let (block, after) = block.split_once("\n\n").expect("the section ends");
        let block: String = block
            .lines()
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
            .collect();
        let uncommented = format!("{before}fabric:\n{block}\n{after}");
        let p = load(&uncommented).unwrap();
        let from = p
            .vtep_from_interface
            .as_ref()
            .expect("the VTEP is left to the host");
        assert_eq!(from.interface, "eth0");
        let eth0 = host().interfaces[1].addresses.clone();
        let p = p.with_vtep_interface_addresses(Some(&eth0)).unwrap();
        assert_eq!(p.vtep, Some("10.1.255.11".parse().unwrap()));
        assert_eq!(
            p.mesh.advertise.last(),
            Some(&"10.1.255.11:7946".parse().unwrap())
        );
        assert!(p.dataplane.is_some());
    }

    #[test]
    fn several_fabric_candidates_or_addresses_are_named_not_chosen() {
        let a = args(&["--capacity", "1Gbps"]).unwrap();
        let mut h = host();
        h.interfaces
            .push(iface("eth3", &[("10.9.0.1/24", true)], &[], None));
        let text = render(&h, &a).unwrap();
        assert!(
            text.contains("# 2 interfaces could face the fabric: eth0, eth3.\n# fabric:"),
            "{text}"
        );
        let mut h = host();
        h.interfaces[1].addresses.push(addr("10.1.255.12/32", true));
        let text = render(&h, &a).unwrap();
        assert!(
            text.contains(&format!(
                "{:<37}# eth0 has 2: 10.1.255.11, 10.1.255.12; the one",
                "#   vtep: 10.1.255.11"
            )),
            "{text}"
        );
        load(&text).unwrap();
    }

    #[test]
    fn a_capacity_the_host_cannot_tell_must_be_given() {
        let e = render(&host(), &args(&[]).unwrap()).unwrap_err();
        assert!(
            matches!(&e, InitError::Usage(m) if m.starts_with("--capacity: the link speed of eth2 is unknown") && m.contains("--capacity eth2=RATE")),
            "{e}"
        );
        // One for every transit overrides the link speed too.
        let text = render(&host(), &args(&["--capacity", "2Gbps"]).unwrap()).unwrap();
        let p = load(&text).unwrap();
        assert!(p.transits.iter().all(|t| t.capacity.0 == 2_000_000_000));
    }

    #[test]
    fn arguments_that_do_not_fit_the_host_name_their_flag() {
        let usage = |extra: &[&str], h: &HostDescription| match render(h, &args(extra).unwrap()) {
            Err(InitError::Usage(m)) => m,
            other => panic!("{other:?}"),
        };
        let m = usage(
            &["--capacity", "1Gbps", "--transit", "eth0=fabric"],
            &host(),
        );
        assert!(
            m.starts_with("--transit eth0=: eth0 is no transit of this host")
                && m.contains("eth1, eth2"),
            "{m}"
        );
        let m = usage(
            &["--capacity", "1Gbps", "--capacity", "eth9=1Gbps"],
            &host(),
        );
        assert!(m.starts_with("--capacity eth9=: eth9 is no transit"), "{m}");
        let m = usage(
            &[
                "--capacity",
                "1Gbps",
                "--transit",
                "eth1=x",
                "--transit",
                "eth2=x",
            ],
            &host(),
        );
        assert!(m.contains("both be named x"), "{m}");
        let m = usage(
            &[
                "--capacity",
                "1Gbps",
                "--transit",
                "eth1=x",
                "--transit",
                "eth1=y",
            ],
            &host(),
        );
        assert!(m.contains("eth1 is named twice"), "{m}");
        let mut h = host();
        h.hostname = "web_01.example.net".into();
        let m = usage(&["--capacity", "1Gbps"], &h);
        assert!(
            m.starts_with("--name: the hostname \"web_01.example.net\" makes no gatewan name"),
            "{m}"
        );
        let text = render(
            &h,
            &args(&["--capacity", "1Gbps", "--name", "gw9"]).unwrap(),
        )
        .unwrap();
        assert_eq!(load(&text).unwrap().name, "gw9");
        let mut h = host();
        h.interfaces[2].name = "wan.100".into();
        let m = usage(&["--capacity", "1Gbps"], &h);
        assert!(m.contains("name it with --transit wan.100=NAME"), "{m}");
        let text = render(
            &h,
            &args(&["--capacity", "1Gbps", "--transit", "wan.100=lumen"]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            load(&text).unwrap().transits[0].interface.as_deref(),
            Some("wan.100")
        );
    }

    #[test]
    fn a_host_without_a_default_route_has_no_transit_to_write() {
        let mut h = host();
        for i in &mut h.interfaces {
            i.default_gateways.clear();
        }
        let e = render(&h, &args(&["--capacity", "1Gbps"]).unwrap()).unwrap_err();
        assert!(
            matches!(&e, InitError::Host(m) if m.contains("no interface of this host has a default route")),
            "{e}"
        );
        // One with a default route but only a link-local address is said not to be one.
        let mut h = host();
        h.interfaces
            .push(iface("ppp0", &[("fe80::9/64", false)], &["fe80::1"], None));
        let text = render(&h, &args(&["--capacity", "1Gbps"]).unwrap()).unwrap();
        assert!(
            text.contains(
                "# Not a transit: ppp0, which has a default route but no global address."
            ),
            "{text}"
        );
        assert_eq!(load(&text).unwrap().transits.len(), 2);
    }

    #[test]
    fn no_seed_makes_the_first_member_and_the_keyring_path_is_the_operators() {
        let a = parse(&[
            "init",
            "--datacenter",
            "sg1",
            "--capacity",
            "1Gbps",
            "--keyring",
            "/srv/gw keys/ring",
        ])
        .unwrap();
        let text = render(&host(), &a).unwrap();
        assert!(text.contains("seeds: []"), "{text}");
        let p = load(&text).unwrap();
        assert!(p.mesh.seeds.is_empty());
        assert_eq!(p.mesh.keyring_file, PathBuf::from("/srv/gw keys/ring"));
    }

    #[test]
    fn bad_arguments_are_refused_by_the_parser_naming_the_flag() {
        for (extra, flag) in [
            (&["--seed", "seed.example.net"][..], "--seed"),
            (&["--seed", "0.0.0.0:7946"][..], "--seed"),
            (&["--transit", "eth1"][..], "--transit"),
            (&["--transit", "eth1=Lumen"][..], "--transit"),
            (&["--capacity", "eth1=fast"][..], "--capacity"),
            (&["--capacity", "=1Gbps"][..], "--capacity"),
            (&["--name", "GW_1"][..], "--name"),
            (&["--force"][..], "--output"),
        ] {
            let e = args(extra)
                .err()
                .unwrap_or_else(|| panic!("{extra:?} accepted"));
            assert_eq!(e.exit_code(), 2, "{extra:?}");
            assert!(e.to_string().contains(flag), "{extra:?}: {e}");
        }
        let e = parse(&["init", "--datacenter", "SG1"]).expect_err("refused");
        assert!(e.to_string().contains("--datacenter"), "{e}");
        let e = parse(&["init"]).expect_err("refused");
        assert!(e.to_string().contains("--datacenter"), "{e}");
        assert_eq!(
            parse_seed("192.0.2.1"),
            Ok("192.0.2.1:7946".parse().unwrap())
        );
        assert_eq!(
            parse_seed("[2001:db8::1]:7000"),
            Ok("[2001:db8::1]:7000".parse().unwrap())
        );
    }

    #[test]
    fn rates_and_host_text_are_written_as_the_config_reads_them() {
        assert_eq!(rate(Rate(10_000_000_000)), "10Gbps");
        assert_eq!(rate(Rate(2_500_000_000)), "2500Mbps");
        assert_eq!(rate(Rate(1_500)), "1500bps");
        assert_eq!(rate(Rate(64_000)), "64Kbps");
        for r in [10_000_000_000, 2_500_000_000, 1_500, 64_000, 1] {
            assert_eq!(Rate::parse(&rate(Rate(r))), Ok(Rate(r)));
        }
        assert_eq!(scalar("eth0"), "eth0");
        assert_eq!(scalar("/etc/gatewan/keyring"), "/etc/gatewan/keyring");
        assert_eq!(scalar("no"), "\"no\"");
        assert_eq!(scalar("1"), "\"1\"");
        assert_eq!(scalar("a #b"), "\"a #b\"");
    }
}
