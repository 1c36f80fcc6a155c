//! The `fabric` and `networks` sections: the data plane toward this datacenter's VXLAN
//! fabric.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::GatewanConfig;
use gatewan_kit::config::Checker;

/// An address of an interface, as the host reports it (the host module reads them; the
/// config only chooses among them, so the type lives here and the dependency points one
/// way: host → config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostAddress {
    pub address: IpAddr,
    pub prefix_len: u8,
    /// Global scope, and not an IPv6 temporary (privacy) or deprecated address: those are
    /// replaced by the kernel over time, so no config should name them.
    pub global: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FabricConfig {
    /// The gatewan's VXLAN tunnel endpoint in the fabric: bgpctl advertises the remote
    /// datacenters' prefixes with it as next hop. Left out, it is the one IPv4 address of
    /// `interface`, read at start ([`vtep_from_addresses`]).
    #[serde(default)]
    pub vtep: Option<Spanned<String>>,
    /// The L3 VNI of the fabric's tenant; with `interface`, turns the data plane on.
    #[serde(default)]
    pub vni: Option<Spanned<u32>>,
    /// The underlay interface toward the fabric (the VXLAN device sends through it).
    #[serde(default)]
    pub interface: Option<Spanned<String>>,
    /// VXLAN UDP port, 4789 by default.
    #[serde(default)]
    pub port: Option<Spanned<u32>>,
    /// An IPv4 prefix the fabric routes to this gatewan: each tunnel gets its own VTEP
    /// address from it, the next hop of its type-5 routes, so leaves that keep one Router's
    /// MAC per next hop (Linux, FRR) tell the tunnels apart (ADR 0007).
    #[serde(default)]
    pub tunnel_vteps: Option<Spanned<String>>,
    /// The tc (eBPF) fast path for tenant packets (ADR 0067), on by default; `false`
    /// keeps every packet on the kernel path (for a host that filters forwarded tenant
    /// traffic with its own nftables or iptables rules, which the fast path skips).
    #[serde(default)]
    pub fast_path: Option<bool>,
}

/// A static network of this datacenter (`networks[]`), for a datacenter without EVPN.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    pub prefix: Spanned<String>,
    /// The next hop toward the prefix, on a network the gatewan is attached to.
    pub via: Spanned<String>,
}

/// The data plane's settings once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneSettings {
    pub fabric: crate::dataplane::plan::FabricSettings,
    pub static_networks: Vec<crate::dataplane::plan::LocalNetwork>,
    /// `fabric.tunnel_vteps`: the pool of per-tunnel VTEP addresses.
    pub tunnel_vteps: Option<ipnet::Ipv4Net>,
    /// `fabric.fast_path`, true by default.
    pub fast_path: bool,
}

/// The VTEP of a config that leaves `fabric.vtep` out: the one IPv4 address of global
/// scope of `fabric.interface` (`addresses` as the host has them, None when it has no such
/// interface). None or several is the operator's to settle: which of several addresses the
/// leaves send to cannot be guessed, and guessing wrong black-holes the datacenter's
/// traffic. The message is for a `fabric.vtep` error.
pub fn vtep_from_addresses(
    interface: &str,
    addresses: Option<&[HostAddress]>,
) -> Result<Ipv4Addr, String> {
    let Some(addresses) = addresses else {
        return Err(format!(
            "not set, so it is the IPv4 address of fabric.interface {interface}, but this host has no interface {interface}: set fabric.vtep, or fabric.interface to the interface toward the fabric"
        ));
    };
    let v4: Vec<Ipv4Addr> = addresses
        .iter()
        .filter(|a| a.global)
        .filter_map(|a| match a.address {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    match v4.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "not set, so it is the IPv4 address of fabric.interface {interface}, but {interface} has none of global scope: give {interface} its address in the fabric, or set fabric.vtep"
        )),
        several => Err(format!(
            "not set, so it is the IPv4 address of fabric.interface {interface}, but {interface} has {} ({}): set fabric.vtep to the one the fabric's leaves send to",
            several.len(),
            several
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Linux interface names: 1 to 15 bytes, no '/', no whitespace, not "." or "..".
fn valid_ifname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 15
        && n != "."
        && n != ".."
        && !n
            .chars()
            .any(|ch| ch == '/' || ch == ':' || ch.is_whitespace())
}

impl GatewanConfig {
    /// `fabric.{vni, interface, port}` and `networks[]`; None when the data plane is off.
    pub(super) fn validate_dataplane(
        &self,
        c: &mut Checker,
        vtep: Option<IpAddr>,
        has_tunnels: bool,
    ) -> Option<DataplaneSettings> {
        use crate::dataplane::plan::{DEFAULT_VXLAN_PORT, FabricSettings, LocalNetwork, NextHop};
        let before = c.errors.len();
        let mut static_networks = Vec::new();
        let mut prefixes = HashSet::new();
        for (i, n) in self.networks.iter().enumerate() {
            let prefix = match n.prefix.value.parse::<ipnet::IpNet>() {
                Ok(p) if p.trunc() == p => Some(p),
                Ok(p) => {
                    c.error(
                        Some(&n.prefix),
                        format!("networks[{i}].prefix"),
                        format!("{p} has host bits set: write {}", p.trunc()),
                    );
                    None
                }
                Err(_) => {
                    c.error(
                        Some(&n.prefix),
                        format!("networks[{i}].prefix"),
                        format!("{:?} is not a prefix, e.g. 10.20.0.0/16", n.prefix.value),
                    );
                    None
                }
            };
            let via = match n.via.value.parse::<IpAddr>() {
                Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => Some(ip),
                _ => {
                    c.error(
                        Some(&n.via),
                        format!("networks[{i}].via"),
                        format!("{:?} is not a unicast IP address", n.via.value),
                    );
                    None
                }
            };
            if let (Some(p), Some(v)) = (prefix, via) {
                if p.addr().is_ipv4() != v.is_ipv4() {
                    c.error(
                        Some(&n.via),
                        format!("networks[{i}].via"),
                        format!("{v} is not of {p}'s address family"),
                    );
                } else if !prefixes.insert(p) {
                    c.error(
                        Some(&n.prefix),
                        format!("networks[{i}].prefix"),
                        format!("{p} is listed twice"),
                    );
                } else {
                    static_networks.push(LocalNetwork {
                        prefix: p,
                        next_hop: NextHop::Gateway(v),
                    });
                }
            }
        }
        let f = self.fabric.as_ref();
        let vni = f.and_then(|f| f.vni.as_ref());
        let interface = f.and_then(|f| f.interface.as_ref());
        if let Some(v) = vni
            && !(1..=0xff_ffff).contains(&v.value)
        {
            c.error(
                Some(v),
                "fabric.vni",
                format!("{} is not a VNI: 1 to 16777215", v.value),
            );
        }
        if let Some(n) = interface
            && !valid_ifname(&n.value)
        {
            c.error(
                Some(n),
                "fabric.interface",
                format!(
                    "{:?} is not an interface name (1-15 characters, no '/', ':' or spaces)",
                    n.value
                ),
            );
        }
        let port = match f.and_then(|f| f.port.as_ref()) {
            None => DEFAULT_VXLAN_PORT,
            Some(p) => match u16::try_from(p.value) {
                Ok(port) if port > 0 => port,
                _ => {
                    c.error(
                        Some(p),
                        "fabric.port",
                        format!("{} is not a UDP port (1-65535)", p.value),
                    );
                    DEFAULT_VXLAN_PORT
                }
            },
        };
        let (vni, interface) = match (vni, interface) {
            (Some(v), Some(i)) => (v, i),
            (Some(v), None) => {
                c.error(Some(v), "fabric.interface", "the data plane needs the underlay interface toward the fabric as well as fabric.vni");
                return None;
            }
            (None, Some(i)) => {
                c.error(
                    Some(i),
                    "fabric.vni",
                    "the data plane needs the fabric's L3 VNI as well as fabric.interface",
                );
                return None;
            }
            (None, None) => {
                if let Some(n) = self.networks.first() {
                    c.error(
                        Some(&n.prefix),
                        "networks",
                        "static networks are routed by the data plane: set fabric.vni and fabric.interface",
                    );
                }
                return None;
            }
        };
        if !has_tunnels {
            c.error(
                Some(vni),
                "fabric.vni",
                "the data plane routes into tunnels: add a tunnels section, or remove fabric.vni and fabric.interface",
            );
        }
        let vtep = match vtep {
            Some(IpAddr::V4(v4)) => Some(v4),
            Some(IpAddr::V6(_)) => {
                c.error(
                    f.and_then(|f| f.vtep.as_ref()),
                    "fabric.vtep",
                    "the data plane needs an IPv4 VTEP (EVPN type-5 next hops are IPv4; IPv6 prefixes go via ::ffff:VTEP)",
                );
                None
            }
            None => None,
        };
        let tunnel_vteps = f.and_then(|f| f.tunnel_vteps.as_ref()).and_then(|t| match t
            .value
            .parse::<ipnet::Ipv4Net>(
        ) {
            Ok(n) if n.trunc() != n => {
                c.error(
                    Some(t),
                    "fabric.tunnel_vteps",
                    format!("{n} has host bits set: write {}", n.trunc()),
                );
                None
            }
            Ok(n) if n.prefix_len() > 30 => {
                c.error(
                    Some(t),
                    "fabric.tunnel_vteps",
                    "give at least a /30: one address per tunnel of this gatewan",
                );
                None
            }
            Ok(n) if vtep.is_some_and(|v| n.contains(&v)) => {
                c.error(
                    Some(t),
                    "fabric.tunnel_vteps",
                    "must not hold fabric.vtep: the pool is for the tunnels' own VTEPs",
                );
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                c.error(
                    Some(t),
                    "fabric.tunnel_vteps",
                    format!("{:?} is not an IPv4 prefix, e.g. 10.1.254.0/26", t.value),
                );
                None
            }
        });
        if c.errors.len() > before {
            return None;
        }
        Some(DataplaneSettings {
            fabric: FabricSettings {
                vtep: vtep?,
                vni: vni.value,
                interface: interface.value.clone(),
                port,
            },
            static_networks,
            tunnel_vteps,
            fast_path: f.and_then(|f| f.fast_path).unwrap_or(true),
        })
    }
}
