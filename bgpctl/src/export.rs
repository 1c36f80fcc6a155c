//! Between the mesh and BGP, pure:
//! - the controller's decision → the type-5 routes bgpctl advertises to its fabric: per
//!   remote prefix × chosen tunnel, RD of the tunnel, next hop the local gatewan's VTEP,
//!   Router's MAC the tunnel's MAC, label the L3 VNI;
//! - the type-5 routes received from the fabric → the datacenter's networks, published
//!   into the mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use gatewan::mesh::NodeId;
use gatewan::mesh::store::StateStore;
use gatewan::tunnels::plan::route_distinguisher;
use gatewan_proto::v1;
use ipnet::IpNet;

use crate::bgp::{ReceivedRoutes, RouteDistinguisher, RouteTarget, Type5Route};

/// What every advertised route carries from bgpctl's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    /// The L3 VNI of this datacenter's fabric.
    pub vni: u32,
    pub route_targets: Vec<RouteTarget>,
    pub link_bandwidth: bool,
}

/// A datacenter's prefixes as the mesh holds them (from its bgpctls, or static on its
/// gatewans), keyed by datacenter.
pub fn networks_by_datacenter(store: &StateStore) -> BTreeMap<String, BTreeSet<IpNet>> {
    let mut out: BTreeMap<String, BTreeSet<IpNet>> = BTreeMap::new();
    for (origin, n) in store.networks() {
        let Some(dc) = store.node(origin).map(|r| r.datacenter.clone()) else {
            continue;
        };
        if let Ok(p) = n.prefix.parse::<IpNet>() {
            out.entry(dc).or_default().insert(p.trunc());
        }
    }
    out
}

/// The VTEPs of every gatewan in the mesh.
pub fn gatewan_vteps(store: &StateStore) -> BTreeSet<IpAddr> {
    store
        .iter()
        .filter_map(|r| match &r.record.body {
            Some(v1::record::Body::Node(n)) if n.role == v1::Role::Gatewan as i32 => {
                n.vtep.parse().ok()
            }
            _ => None,
        })
        .collect()
}

/// The type-5 routes for a decision. Deterministic: the same decision and networks give
/// the same routes in the same order, on every bgpctl of the datacenter.
pub fn routes(
    decision: &v1::Decision,
    networks: &BTreeMap<String, BTreeSet<IpNet>>,
    s: &ExportSettings,
) -> Vec<Type5Route> {
    let mut out = BTreeMap::new();
    for remote in &decision.remotes {
        let Some(prefixes) = networks.get(&remote.datacenter) else {
            continue;
        };
        for t in &remote.tunnels {
            let (Ok(mac), Ok(next_hop)) = (
                <[u8; 6]>::try_from(t.router_mac.as_ref()),
                t.vtep.parse::<IpAddr>(),
            ) else {
                // A gatewan without a VTEP cannot receive fabric traffic: no route via it.
                continue;
            };
            let Some(id) = NodeId::from_slice(&t.id) else {
                continue;
            };
            let (admin, assigned) = route_distinguisher(&id.to_string(), t.rd_index);
            let rd = RouteDistinguisher::as2(admin, assigned);
            for p in prefixes {
                let r = Type5Route {
                    rd,
                    prefix: *p,
                    label_vni: s.vni,
                    next_hop,
                    router_mac: mac,
                    route_targets: s.route_targets.clone(),
                    link_bandwidth: (s.link_bandwidth && t.weight_bps > 0).then_some(t.weight_bps),
                };
                out.insert(r.key(), r);
            }
        }
    }
    out.into_values().collect()
}

/// The datacenter's networks from the fabric: each received prefix once, with the first
/// route's VTEP, Router's MAC and VNI (stale routes of a restarting peer included: the
/// prefix is still there). Routes whose next hop is a gatewan's VTEP are the remote
/// prefixes a bgpctl advertised (the other bgpctl of the datacenter, reflected back), not
/// networks of this datacenter.
pub fn learned_networks(
    received: &ReceivedRoutes,
    gatewan_vteps: &BTreeSet<IpAddr>,
) -> BTreeMap<String, v1::Network> {
    let mut out = BTreeMap::new();
    for r in received
        .routes
        .iter()
        .filter(|r| !gatewan_vteps.contains(&r.route.next_hop))
    {
        let prefix = r.route.prefix.trunc().to_string();
        out.entry(prefix.clone()).or_insert_with(|| v1::Network {
            prefix,
            vtep: r.route.next_hop.to_string(),
            router_mac: r.route.router_mac.to_vec().into(),
            vni: r.route.label_vni,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel(id: u8, mac: u8, vtep: &str, weight: u64) -> v1::ChosenTunnel {
        v1::ChosenTunnel {
            id: vec![id; 16].into(),
            router_mac: vec![0x02, 0x5d, 0, 0, 0, mac].into(),
            vtep: vtep.into(),
            rd_index: u32::from(id),
            weight_bps: weight,
            ..Default::default()
        }
    }

    fn settings(link_bandwidth: bool) -> ExportSettings {
        ExportSettings {
            vni: 10100,
            route_targets: vec!["65001:100".parse().unwrap()],
            link_bandwidth,
        }
    }

    #[test]
    fn one_route_per_prefix_and_chosen_tunnel() {
        let decision = v1::Decision {
            datacenter: "sg1".into(),
            remotes: vec![v1::DatacenterDecision {
                datacenter: "par1".into(),
                tunnels: vec![
                    tunnel(1, 1, "10.1.255.11", 500_000_000),
                    tunnel(2, 2, "10.1.255.12", 250_000_000),
                ],
                ..Default::default()
            }],
        };
        let mut networks = BTreeMap::new();
        networks.insert(
            "par1".to_string(),
            ["10.2.0.0/16", "2001:db8:2::/48"]
                .iter()
                .map(|p| p.parse().unwrap())
                .collect(),
        );
        networks.insert("iad1".to_string(), ["10.3.0.0/16".parse().unwrap()].into());
        let r = routes(&decision, &networks, &settings(true));
        assert_eq!(r.len(), 4, "{r:#?}");
        let via1: Vec<&Type5Route> = r
            .iter()
            .filter(|x| x.router_mac == [0x02, 0x5d, 0, 0, 0, 1])
            .collect();
        assert_eq!(via1.len(), 2);
        assert!(via1.iter().all(|x| x.next_hop.to_string() == "10.1.255.11"
            && x.label_vni == 10100
            && x.link_bandwidth == Some(500_000_000)));
        // RDs differ per tunnel and match what the gatewan shows for it.
        let rds: BTreeSet<_> = r.iter().map(|x| x.rd).collect();
        assert_eq!(rds.len(), 2);
        let id = NodeId([1; 16]).to_string();
        let (admin, assigned) = route_distinguisher(&id, 1);
        assert!(rds.contains(&RouteDistinguisher::as2(admin, assigned)));
        // Without link bandwidth, no community.
        let r = routes(&decision, &networks, &settings(false));
        assert!(r.iter().all(|x| x.link_bandwidth.is_none()));
    }

    #[test]
    fn nothing_without_networks_or_vtep() {
        let decision = v1::Decision {
            datacenter: "sg1".into(),
            remotes: vec![v1::DatacenterDecision {
                datacenter: "par1".into(),
                tunnels: vec![tunnel(1, 1, "", 0)],
                ..Default::default()
            }],
        };
        let mut networks = BTreeMap::new();
        assert!(routes(&decision, &networks, &settings(false)).is_empty());
        networks.insert("par1".to_string(), ["10.2.0.0/16".parse().unwrap()].into());
        assert!(routes(&decision, &networks, &settings(false)).is_empty());
    }
}
