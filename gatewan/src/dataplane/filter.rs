//! The source filter, pure: what each tunnel may bring in. A peer gatewan forwards into a
//! tunnel only traffic of its own datacenter, so a packet arriving from tunnel t whose
//! source is outside t's datacenter's networks (and is not the peer's own tunnel address,
//! the source of its ICMP errors) is spoofed or misrouted: dropped and counted.
//!
//! Why nftables and not WireGuard's allowed IPs: allowed IPs would do the check inside
//! WireGuard, but wireguard-go counts nothing and the kernel backend only an interface
//! error total, and they are also WireGuard's outbound routing, which would make every
//! change of a datacenter's networks a change of every peer. Policy routing (`from` rules)
//! has no counters at all. One nftables table, replaced whole in one transaction
//! (`nft -f`), has a named counter per tunnel that `/metrics` reads.
//!
//! The same table clamps the MSS of TCP SYNs going into a tunnel to the tunnel's route MTU
//! (ADR 0012): a tenant host behind a firewall that drops ICMP fragmentation-needed /
//! packet-too-big would otherwise black-hole every TCP connection whose segments do not fit
//! the tunnel. Each gatewan clamps what enters its tunnels, so a connection's SYN is
//! clamped at one end and its SYN-ACK at the other.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use ipnet::IpNet;

use super::plan::Inputs;

/// Our nftables table (family inet).
pub const TABLE: &str = "gatewan";

/// Tunnel interface → the sources it may bring in.
pub type Allowed = BTreeMap<String, BTreeSet<IpNet>>;

/// The sources each tunnel may bring in: its datacenter's networks and its peer's
/// addresses on the tunnel.
pub fn allowed(inputs: &Inputs) -> Allowed {
    let mut out = Allowed::new();
    for t in &inputs.tunnels {
        let mut set: BTreeSet<IpNet> = inputs
            .remote_networks
            .iter()
            .filter(|n| n.datacenter == t.target_datacenter)
            .map(|n| n.prefix.trunc())
            .collect();
        set.extend(t.peer_addresses.iter().map(|a| IpNet::from(*a)));
        out.insert(t.interface.clone(), set);
    }
    out
}

/// An interface name as nftables object names take it: letters, digits, `_`.
fn object_safe(interface: &str) -> String {
    interface
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A counter's name for a tunnel interface.
pub fn counter_name(interface: &str) -> String {
    format!("spoofed_{}", object_safe(interface))
}

/// The `nft -f` script that replaces our table with one for `allowed`, in one transaction.
/// Without `check_sources` the table clamps MSS and drops nothing (its counters stay at
/// zero): what a gatewan applies while the other datacenters' networks are still arriving.
/// Interface names are the tunnel manager's (`[a-z0-9]`, checked by the configuration);
/// anything else is left out rather than quoted into the script.
pub fn script(allowed: &Allowed, check_sources: bool) -> String {
    let mut s = String::new();
    // Creating before deleting makes the delete valid whether or not the table exists.
    let _ = writeln!(s, "table inet {TABLE} {{}}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    let safe = |i: &str| {
        !i.is_empty()
            && i.len() <= 15
            && i.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    for iface in allowed.keys().filter(|i| safe(i)) {
        let _ = writeln!(s, "  counter {} {{}}", counter_name(iface));
    }
    // A chain per tunnel, entered through one verdict map lookup on the input interface:
    // each forwarded packet costs one hash lookup whatever the number of tunnels, where a
    // rule per tunnel and family would be 2 string compares per tunnel for every packet.
    for (iface, nets) in allowed.iter().filter(|(i, _)| check_sources && safe(i)) {
        let counter = counter_name(iface);
        let _ = writeln!(s, "  chain {} {{", chain_name(iface));
        for v6 in [false, true] {
            let list: Vec<String> = nets
                .iter()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .map(ToString::to_string)
                .collect();
            let (proto, field) = if v6 { ("ipv6", "ip6") } else { ("ipv4", "ip") };
            if list.is_empty() {
                let _ = writeln!(
                    s,
                    "    meta nfproto {proto} counter name \"{counter}\" drop"
                );
            } else {
                let _ = writeln!(
                    s,
                    "    {field} saddr != {{ {} }} counter name \"{counter}\" drop",
                    list.join(", ")
                );
            }
        }
        let _ = writeln!(s, "  }}");
    }
    // Before the host's own filters (priority filter = 0); forwarded traffic only: what a
    // tunnel brings to the gatewan itself (probes) is not tenant traffic.
    let _ = writeln!(s, "  chain forward {{");
    let _ = writeln!(
        s,
        "    type filter hook forward priority filter - 10; policy accept;"
    );
    let tunnels: Vec<&String> = allowed.keys().filter(|i| safe(i)).collect();
    if !tunnels.is_empty() {
        let names: Vec<String> = tunnels.iter().map(|i| format!("\"{i}\"")).collect();
        // `rt mtu` is the MSS the route's MTU allows (minus IPv4 or IPv6 and TCP headers);
        // the kernel only ever lowers an MSS option with it.
        let _ = writeln!(
            s,
            "    oifname {{ {} }} tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu",
            names.join(", ")
        );
        if check_sources {
            let jumps: Vec<String> = tunnels
                .iter()
                .map(|i| format!("\"{i}\" : jump {}", chain_name(i)))
                .collect();
            let _ = writeln!(s, "    iifname vmap {{ {} }}", jumps.join(", "));
        }
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

/// The chain holding a tunnel's source check.
fn chain_name(interface: &str) -> String {
    format!("from_{}", object_safe(interface))
}

/// Tunnel interface → packets dropped, from `nft -j list counters table inet gatewan`.
/// None when the output holds no table of ours (removed by hand: apply again).
pub fn parse_counters(json: &str, allowed: &Allowed) -> Option<BTreeMap<String, u64>> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let items = v.get("nftables")?.as_array()?;
    let by_name: BTreeMap<&str, u64> = items
        .iter()
        .filter_map(|i| {
            let c = i.get("counter")?;
            if c.get("table")?.as_str()? != TABLE {
                return None;
            }
            Some((c.get("name")?.as_str()?, c.get("packets")?.as_u64()?))
        })
        .collect();
    let out: BTreeMap<String, u64> = allowed
        .keys()
        .filter_map(|i| Some((i.clone(), *by_name.get(counter_name(i).as_str())?)))
        .collect();
    // A table with fewer counters than tunnels is not the one we applied.
    (out.len() == allowed.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::plan::{Health, RemoteNetwork, TunnelInput};

    fn tunnel(i: u64, dc: &str) -> TunnelInput {
        TunnelInput {
            interface: format!("sdwan{i}"),
            index: i,
            router_mac: [2, 0x5d, 0, 0, 0, i as u8],
            target_datacenter: dc.into(),
            health: Health::Established,
            latency_ns: 1,
            peer_addresses: vec![
                format!("100.64.0.{i}").parse().unwrap(),
                format!("fd5d:3a00::{i}").parse().unwrap(),
            ],
        }
    }

    fn inputs() -> Inputs {
        let mut i =
            crate::dataplane::plan::tests::inputs(vec![tunnel(1, "par1"), tunnel(2, "ams1")]);
        i.remote_networks = vec![
            RemoteNetwork {
                prefix: "172.16.2.0/24".parse().unwrap(),
                datacenter: "par1".into(),
            },
            RemoteNetwork {
                prefix: "2001:db8:a2::/48".parse().unwrap(),
                datacenter: "par1".into(),
            },
            RemoteNetwork {
                prefix: "172.16.3.7/24".parse().unwrap(),
                datacenter: "ams1".into(),
            },
        ];
        i
    }

    #[test]
    fn a_tunnel_may_bring_in_its_datacenters_networks_and_its_peers_addresses_only() {
        let a = allowed(&inputs());
        let nets = |i: &str| a[i].iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            nets("sdwan1"),
            vec![
                "100.64.0.1/32",
                "172.16.2.0/24",
                "2001:db8:a2::/48",
                "fd5d:3a00::1/128"
            ]
        );
        assert_eq!(
            nets("sdwan2"),
            vec!["100.64.0.2/32", "172.16.3.0/24", "fd5d:3a00::2/128"]
        );
    }

    #[test]
    fn the_script_replaces_the_table_whole_with_a_counted_drop_per_tunnel_and_family() {
        let s = script(&allowed(&inputs()), true);
        assert!(
            s.starts_with("table inet gatewan {}\ndelete table inet gatewan\n"),
            "{s}"
        );
        assert!(s.contains("counter spoofed_sdwan1 {}"), "{s}");
        assert!(s.contains(
            "  chain from_sdwan1 {\n    ip saddr != { 100.64.0.1/32, 172.16.2.0/24 } counter name \"spoofed_sdwan1\" drop\n    ip6 saddr != { 2001:db8:a2::/48, fd5d:3a00::1/128 } counter name \"spoofed_sdwan1\" drop\n  }"
        ), "{s}");
        assert!(s.contains("hook forward"), "{s}");
        // One lookup on the input interface leads to the tunnel's chain.
        assert!(
            s.contains(
                "    iifname vmap { \"sdwan1\" : jump from_sdwan1, \"sdwan2\" : jump from_sdwan2 }"
            ),
            "{s}"
        );
    }

    #[test]
    fn syns_into_a_tunnel_get_their_mss_clamped_to_the_route_mtu() {
        let s = script(&allowed(&inputs()), true);
        assert!(
            s.contains(
                "oifname { \"sdwan1\", \"sdwan2\" } tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu"
            ),
            "{s}"
        );
        assert!(!script(&Allowed::new(), true).contains("maxseg"));
    }

    #[test]
    fn without_source_checks_the_table_clamps_and_counts_but_drops_nothing() {
        let a = allowed(&inputs());
        let s = script(&a, false);
        assert!(s.contains("counter spoofed_sdwan1 {}"), "{s}");
        assert!(s.contains("tcp option maxseg size set rt mtu"), "{s}");
        assert!(!s.contains("drop") && !s.contains("vmap"), "{s}");
        // Its counters read like the full table's, so it is not taken for a missing one.
        let json = r#"{"nftables":[
            {"counter":{"family":"inet","name":"spoofed_sdwan1","table":"gatewan","handle":1,"packets":0,"bytes":0}},
            {"counter":{"family":"inet","name":"spoofed_sdwan2","table":"gatewan","handle":2,"packets":0,"bytes":0}}]}"#;
        assert!(parse_counters(json, &a).is_some());
    }

    #[test]
    fn a_family_with_nothing_allowed_is_dropped_whole() {
        let mut a = Allowed::new();
        a.insert(
            "sdwan9".into(),
            ["100.64.0.9/32".parse().unwrap()].into_iter().collect(),
        );
        let s = script(&a, true);
        assert!(
            s.contains(
                "  chain from_sdwan9 {\n    ip saddr != { 100.64.0.9/32 } counter name \"spoofed_sdwan9\" drop\n    meta nfproto ipv6 counter name \"spoofed_sdwan9\" drop\n  }"
            ),
            "{s}"
        );
    }

    #[test]
    fn an_interface_name_that_could_break_the_script_is_left_out() {
        let mut a = Allowed::new();
        a.insert("x\" accept; #".into(), BTreeSet::new());
        let s = script(&a, true);
        assert!(!s.contains("accept; #"), "{s}");
    }

    #[test]
    fn counters_are_read_per_tunnel_and_a_missing_table_says_so() {
        let a = allowed(&inputs());
        let json = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},
            {"counter":{"family":"inet","name":"spoofed_sdwan1","table":"gatewan","handle":1,"packets":7,"bytes":588}},
            {"counter":{"family":"inet","name":"spoofed_sdwan2","table":"gatewan","handle":2,"packets":0,"bytes":0}}]}"#;
        let c = parse_counters(json, &a).unwrap();
        assert_eq!(c["sdwan1"], 7);
        assert_eq!(c["sdwan2"], 0);
        assert_eq!(parse_counters(r#"{"nftables":[]}"#, &a), None);
        assert_eq!(parse_counters("garbage", &a), None);
    }
}
