//! The transits as the host routes them: each transit's own routing (a firewall mark, a
//! table whose default routes go through the transit's gateways, a rule from the mark to
//! the table), and the gateways found in the main table when the config names none.
//!
//! Everything this gatewan originates toward the WAN, the tunnels' WireGuard packets and
//! the mesh's gossip alike, carries its transit's mark, so it leaves by that transit
//! whatever the main table says: a host routes like most do, with one default route via
//! one transit, and that transit failing must cost only what uses it (ADR 0003). What
//! the kernel itself sends from a transit address (an echo reply to an operator's ping of
//! the cogent address, an ICMP error) follows a rule from that address to the same table,
//! so it too goes back by its own transit and not, with that source, into another one.
//!
//! [`plan_routing`] is pure (config + main table → routing or the fields to fix);
//! [`main_table`] reads the routes and [`ensure`] installs one transit's routing.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt as _;
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::Handle;

use crate::netlink::io_err;

use crate::config::Transit;

/// Routing of one transit: both address families share the mark, table and priority
/// (rules and routes are per family in the kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitRouting {
    pub interface: String,
    /// The transit's addresses: packets from them use its table too.
    pub sources: Vec<IpAddr>,
    pub gateway_v4: Option<Ipv4Addr>,
    pub gateway_v6: Option<Ipv6Addr>,
    pub mark: u32,
    pub table: u32,
    pub priority: u32,
}

impl TransitRouting {
    /// Mark, table and rule priority of the transit at `position` (its position kept in
    /// state_dir, ADR 0042: a transit added to the config changes no other's mark, which
    /// is every one of its tunnels' firewall mark).
    pub fn for_transit(
        position: usize,
        interface: &str,
        sources: &[IpAddr],
        gateways: &[IpAddr],
    ) -> TransitRouting {
        let n = position as u32 + 1;
        TransitRouting {
            interface: interface.to_string(),
            sources: sources.to_vec(),
            gateway_v4: gateways.iter().find_map(|g| match g {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            }),
            gateway_v6: gateways.iter().find_map(|g| match g {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            }),
            mark: 0x5d00 + n,
            table: 0x5d00 + n,
            priority: 10_000 + n,
        }
    }

    pub fn gateways(&self) -> impl Iterator<Item = IpAddr> {
        self.gateway_v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.gateway_v6.map(IpAddr::V6))
    }

    /// Whether a packet of `ip`'s family marked with this transit's mark has a route.
    pub fn routes_family_of(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.gateway_v4.is_some(),
            IpAddr::V6(_) => self.gateway_v6.is_some(),
        }
    }
}

/// A route of the main table that has a next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MainRoute {
    pub prefix_len: u8,
    pub interface: String,
    pub gateway: IpAddr,
}

/// What to fix in the config when routing cannot be planned: (field, message).
pub type Problem = (String, String);

/// The next hop of `family_v6` on `interface`: that of the default route through it, else
/// that of its widest route with a next hop (a host that routes only the transit's own
/// prefixes through it), the lowest address breaking ties so every run finds the same.
pub fn find_gateway(routes: &[MainRoute], interface: &str, family_v6: bool) -> Option<IpAddr> {
    routes
        .iter()
        .filter(|r| r.interface == interface && r.gateway.is_ipv6() == family_v6)
        .min_by_key(|r| (r.prefix_len, r.gateway))
        .map(|r| r.gateway)
}

/// Routing per transit name. With several transits every transit needs its interface
/// and, per address family it has addresses of, a gateway (configured or found in
/// `routes`): without them its packets would follow the main table into another transit.
/// A single transit gets routing only when its gateway is configured.
pub fn plan_routing(
    transits: &[Transit],
    positions: &BTreeMap<String, u32>,
    routes: &[MainRoute],
) -> Result<BTreeMap<String, TransitRouting>, Vec<Problem>> {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    let several = transits.len() > 1;
    for (i, t) in transits.iter().enumerate() {
        let Some(interface) = t.interface.as_deref() else {
            // The config refuses this with several transits.
            continue;
        };
        let mut gateways = t.gateways.clone();
        if several {
            for v6 in [false, true] {
                let has_family = t.addresses.iter().any(|a| a.is_ipv6() == v6);
                let configured = gateways.iter().any(|g| g.is_ipv6() == v6);
                if !has_family || configured {
                    continue;
                }
                match find_gateway(routes, interface, v6) {
                    Some(g) => gateways.push(g),
                    None => problems.push((
                        format!("transits[{i}].gateway"),
                        format!(
                            "transit {:?} has {} addresses but no route of the main table has a next hop through {interface}: set its {} gateway (e.g. gateway: [{}]) so that its traffic leaves by {interface}",
                            t.name,
                            if v6 { "IPv6" } else { "IPv4" },
                            if v6 { "IPv6" } else { "IPv4" },
                            if v6 { "\"2001:db8::1\"" } else { "192.0.2.1" },
                        ),
                    )),
                }
            }
        }
        if !gateways.is_empty() {
            out.insert(
                t.name.clone(),
                TransitRouting::for_transit(
                    positions.get(&t.name).map_or(i, |p| *p as usize),
                    interface,
                    &t.addresses,
                    &gateways,
                ),
            );
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The routes of the main table that have a next hop, both families.
pub async fn main_table(handle: &Handle) -> io::Result<Vec<MainRoute>> {
    let mut names = BTreeMap::new();
    let mut links = handle.link().get().execute();
    while let Some(l) = links.try_next().await.map_err(io_err)? {
        for a in &l.attributes {
            if let netlink_packet_route::link::LinkAttribute::IfName(n) = a {
                names.insert(l.header.index, n.clone());
            }
        }
    }
    let mut out = Vec::new();
    let requests = [
        rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build(),
        rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for req in requests {
        let mut routes = handle.route().get(req).execute();
        while let Some(r) = routes.try_next().await.map_err(io_err)? {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if table != u32::from(netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let mut gateway = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => {
                        gateway = Some(IpAddr::V4(*g))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(g)) => {
                        gateway = Some(IpAddr::V6(*g))
                    }
                    RouteAttribute::Oif(i) => oif = names.get(i).cloned(),
                    _ => {}
                }
            }
            if let (Some(gateway), Some(interface)) = (gateway, oif) {
                out.push(MainRoute {
                    prefix_len: r.header.destination_prefix_length,
                    interface,
                    gateway,
                });
            }
        }
    }
    Ok(out)
}

/// Installs one transit's routing: per family with a gateway, rules from its mark and from
/// each of its addresses to its table, and the table's default route through the gateway.
/// Idempotent.
pub async fn ensure(handle: &Handle, r: &TransitRouting) -> io::Result<()> {
    use netlink_packet_route::rule::{RuleAction, RuleAttribute};
    let index = crate::netlink::link_index(handle, &r.interface)
        .await?
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("interface {} is not there", r.interface),
            )
        })?;
    for gateway in r.gateways() {
        let version = if gateway.is_ipv6() {
            rtnetlink::IpVersion::V6
        } else {
            rtnetlink::IpVersion::V4
        };
        let mut seen: Vec<Vec<RuleAttribute>> = Vec::new();
        let mut rules = handle.rule().get(version.clone()).execute();
        while let Some(rule) = rules.try_next().await.map_err(io_err)? {
            if rule.header.action == RuleAction::ToTable
                && rule.attributes.contains(&RuleAttribute::Table(r.table))
            {
                seen.push(rule.attributes);
            }
        }
        let has = |want: &RuleAttribute| seen.iter().any(|attrs| attrs.contains(want));
        let add = || {
            handle
                .rule()
                .add()
                .table_id(r.table)
                .priority(r.priority)
                .action(RuleAction::ToTable)
        };
        if !has(&RuleAttribute::FwMark(r.mark)) {
            let add = add().fw_mark(r.mark);
            if gateway.is_ipv6() {
                add.v6().execute().await.map_err(io_err)?;
            } else {
                add.v4().execute().await.map_err(io_err)?;
            }
        }
        for source in r
            .sources
            .iter()
            .filter(|s| s.is_ipv6() == gateway.is_ipv6())
        {
            if has(&RuleAttribute::Source(*source)) {
                continue;
            }
            match *source {
                IpAddr::V4(a) => add().v4().source_prefix(a, 32).execute().await,
                IpAddr::V6(a) => add().v6().source_prefix(a, 128).execute().await,
            }
            .map_err(io_err)?;
        }
        let route = match gateway {
            IpAddr::V4(gw) => rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(r.table)
                .gateway(gw)
                .output_interface(index)
                .build(),
            IpAddr::V6(gw) => rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(r.table)
                .gateway(gw)
                .output_interface(index)
                .build(),
        };
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(io_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatewan_kit::units::Rate;

    /// Positions as a first start gives them: the config's order.
    fn in_order(transits: &[Transit]) -> BTreeMap<String, u32> {
        transits
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i as u32))
            .collect()
    }

    fn transit(
        name: &str,
        interface: Option<&str>,
        addresses: &[&str],
        gateways: &[&str],
    ) -> Transit {
        Transit {
            name: name.into(),
            interface: interface.map(Into::into),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            gateways: gateways.iter().map(|a| a.parse().unwrap()).collect(),
            capacity: Rate(1_000_000_000),
            cost: 0,
        }
    }

    fn route(len: u8, interface: &str, gateway: &str) -> MainRoute {
        MainRoute {
            prefix_len: len,
            interface: interface.into(),
            gateway: gateway.parse().unwrap(),
        }
    }

    #[test]
    fn the_default_route_through_the_transit_gives_its_gateway() {
        let routes = [
            route(24, "eth2", "198.51.100.9"),
            route(0, "eth2", "198.51.100.0"),
            route(0, "eth3", "2001:db8:200::1"),
        ];
        assert_eq!(
            find_gateway(&routes, "eth2", false),
            Some("198.51.100.0".parse().unwrap())
        );
        assert_eq!(find_gateway(&routes, "eth2", true), None);
        assert_eq!(
            find_gateway(&routes, "eth3", true),
            Some("2001:db8:200::1".parse().unwrap())
        );
    }

    #[test]
    fn a_host_with_one_default_route_needs_the_other_transits_gateway_named() {
        let transits = [
            transit("lumen", Some("eth2"), &["198.51.100.1"], &[]),
            transit("cogent", Some("eth3"), &["203.0.113.1"], &[]),
        ];
        let routes = [route(0, "eth2", "198.51.100.0")];
        let problems = plan_routing(&transits, &in_order(&transits), &routes).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "transits[1].gateway");
        assert!(problems[0].1.contains("eth3"), "{problems:?}");
        // Named in the config, it plans.
        let transits = [
            transit("lumen", Some("eth2"), &["198.51.100.1"], &[]),
            transit("cogent", Some("eth3"), &["203.0.113.1"], &["203.0.113.0"]),
        ];
        let routing = plan_routing(&transits, &in_order(&transits), &routes).unwrap();
        assert_eq!(
            routing["lumen"].gateway_v4,
            Some("198.51.100.0".parse().unwrap())
        );
        assert_eq!(
            routing["cogent"].gateway_v4,
            Some("203.0.113.0".parse().unwrap())
        );
        assert_ne!(routing["lumen"].mark, routing["cogent"].mark);
        // The mark follows the kept position, not the config's order.
        let kept = BTreeMap::from([("lumen".to_string(), 3), ("cogent".to_string(), 0)]);
        let moved = plan_routing(&transits, &kept, &routes).unwrap();
        assert_eq!(moved["lumen"].mark, 0x5d04);
        assert_eq!(moved["cogent"].mark, 0x5d01);
    }

    #[test]
    fn a_dual_stack_transit_gets_a_gateway_per_family() {
        let transits = [
            transit(
                "lumen",
                Some("eth2"),
                &["198.51.100.1", "2001:db8:100::2"],
                &["2001:db8:100::1"],
            ),
            transit("cogent", Some("eth3"), &["203.0.113.1"], &["203.0.113.0"]),
        ];
        let routes = [route(0, "eth2", "198.51.100.0")];
        let r = &plan_routing(&transits, &in_order(&transits), &routes).unwrap()["lumen"];
        assert_eq!(r.gateway_v4, Some("198.51.100.0".parse().unwrap()));
        assert_eq!(r.gateway_v6, Some("2001:db8:100::1".parse().unwrap()));
        assert!(r.routes_family_of("2001:db8::9".parse().unwrap()));
    }

    #[test]
    fn a_single_transit_follows_the_main_table_unless_its_gateway_is_named() {
        let transits = [transit("lumen", Some("eth2"), &["198.51.100.1"], &[])];
        assert!(
            plan_routing(&transits, &in_order(&transits), &[])
                .unwrap()
                .is_empty()
        );
        let transits = [transit(
            "lumen",
            Some("eth2"),
            &["198.51.100.1"],
            &["198.51.100.0"],
        )];
        assert_eq!(
            plan_routing(&transits, &in_order(&transits), &[])
                .unwrap()
                .len(),
            1
        );
    }
}
