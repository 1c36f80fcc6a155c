//! Between the mesh and BGP, pure:
//! - the controller's decision → the type-5 routes bgpctl advertises to its fabric: per
//!   remote prefix × chosen tunnel, RD of the tunnel, next hop the local gatewan's VTEP,
//!   Router's MAC the tunnel's MAC, label the L3 VNI;
//! - the type-5 routes received from the fabric → the datacenter's networks, published
//!   into the mesh;
//! - the type-5 routes received from the fabric → the decision they express (the other
//!   bgpctl's), which a restarted bgpctl adopts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use gatewan_mesh::NodeId;
use gatewan_mesh::store::{RecordKey, StateStore};
use gatewan_proto::v1;
use gatewan_tunnel_plan::route_distinguisher;
use ipnet::IpNet;

use crate::bgp::{ReceivedRoutes, RouteDistinguisher, RouteTarget, Type5Route};
use crate::controller::{Snapshot, Tunnel, TunnelId};

/// What every advertised route carries from bgpctl's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    /// The L3 VNI of this datacenter's fabric.
    pub vni: u32,
    pub route_targets: Vec<RouteTarget>,
    pub link_bandwidth: bool,
}

/// A datacenter's prefixes as the mesh holds them (from its bgpctls, or static on its
/// gatewans), keyed by datacenter; only those of members `alive` says are: a bgpctl that
/// died cannot withdraw what its fabric withdraws meanwhile, and its records linger until
/// collected (`mesh.departed_record_ttl`); the datacenter's other bgpctl publishes the
/// same networks while it lives.
///
/// Fail static: a datacenter none of whose bgpctls (nor publishers of networks) is alive
/// keeps the networks its members published last. Those members may only look dead: a
/// passive bgpctl is reachable through its own gatewans alone, and when they are cut off
/// from us the mesh may hold it down for seconds. Dropping its networks withdrew every
/// route to that datacenter, although its tunnels still carried traffic. A prefix its
/// fabric withdrew meanwhile stays advertised until a publisher is back, and is dropped
/// at the far gatewan, whose egress follows its own fabric.
pub fn networks_by_datacenter(
    store: &StateStore,
    alive: impl Fn(NodeId) -> bool,
) -> BTreeMap<String, BTreeSet<IpNet>> {
    let datacenter = |origin: NodeId| store.node(origin).map(|r| r.datacenter.clone());
    let with_live_publisher: BTreeSet<String> = store
        .iter()
        .filter(|r| {
            matches!(&r.record.body, Some(v1::record::Body::Node(n)) if n.role == v1::Role::Bgpctl as i32)
        })
        .map(|r| r.key.origin)
        .chain(store.networks().map(|(o, _)| o))
        .filter(|o| alive(*o))
        .filter_map(datacenter)
        .collect();
    let mut out: BTreeMap<String, BTreeSet<IpNet>> = BTreeMap::new();
    for (origin, n) in store.networks() {
        let Some(dc) = datacenter(origin) else {
            continue;
        };
        if !alive(origin) && with_live_publisher.contains(&dc) {
            continue;
        }
        if let Ok(p) = n.prefix.parse::<IpNet>() {
            out.entry(dc).or_default().insert(p.trunc());
        }
    }
    out
}

/// The VTEPs of the gatewans: each gatewan's own, each tunnel's, and the pools tunnels
/// take theirs from (`fabric.tunnel_vteps`), which also cover a tunnel's address from
/// before a restart that the fabric may still hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewanVteps {
    pub addresses: BTreeSet<IpAddr>,
    pub pools: BTreeSet<IpNet>,
}

impl GatewanVteps {
    pub fn contains(&self, a: &IpAddr) -> bool {
        let a = a.to_canonical();
        self.addresses.contains(&a) || self.pools.iter().any(|p| p.contains(&a))
    }
}

/// The VTEPs of every gatewan in the mesh, and of every tunnel that has its own.
pub fn gatewan_vteps(store: &StateStore) -> GatewanVteps {
    let mut out = GatewanVteps::default();
    for g in store.gatewans() {
        out.addresses.extend(g.vtep_address);
        out.pools.extend(g.tunnel_vteps);
    }
    for r in store.iter() {
        if let Some(v1::record::Body::TunnelMetrics(m)) = &r.record.body {
            out.addresses.extend(
                m.tunnels
                    .iter()
                    .filter_map(|t| t.vtep.parse::<IpAddr>().ok()),
            );
        }
    }
    out
}

/// The RD of a tunnel's routes (ADR 0022): type 0, the administrator a hash of the
/// tunnel id's text form, the assigned number its RD index; what `routingctl tunnels`
/// shows for the tunnel.
pub fn tunnel_rd(tunnel: TunnelId, rd_index: u32) -> RouteDistinguisher {
    let (admin, assigned) = route_distinguisher(&NodeId(tunnel.0).to_string(), rd_index);
    RouteDistinguisher::as2(admin, assigned)
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
            let Some(id) = TunnelId::from_slice(&t.id) else {
                continue;
            };
            let rd = tunnel_rd(id, t.rd_index);
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
/// prefixes the other bgpctl of the datacenter advertised (reflected by the route
/// reflector), not networks of this datacenter: [`fabric_decision`] reads those.
pub fn learned_networks(
    received: &ReceivedRoutes,
    gatewan_vteps: &GatewanVteps,
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

/// Our own networks from a previous life of this bgpctl (same node id, before a restart)
/// that the mesh still holds and the fabric no longer announces: to withdraw, but only
/// once the fabric's table is complete (End-of-RIB from every peer, or the grace for it
/// is over), since until then a network missing from `learned` may still be on its way.
pub fn stale_networks(
    previous_life: &[RecordKey],
    learned: &BTreeMap<String, v1::Network>,
    fabric_complete: bool,
) -> Vec<String> {
    if !fabric_complete {
        return Vec::new();
    }
    previous_life
        .iter()
        .filter(|k| k.kind == v1::RecordKind::Network as i32)
        .filter(|k| !learned.contains_key(&k.name))
        .map(|k| k.name.clone())
        .collect()
}

/// The decision the fabric holds, the mirror image of [`routes`]: a received route whose
/// next hop is the VTEP of a local gatewan and whose RD (or else Router's MAC) is that of
/// one of the gatewan's tunnels means that tunnel is chosen for its remote datacenter.
/// Only the other bgpctl of the datacenter sends us such routes (a route reflector never
/// reflects ours back), so this is its choice. Routes that map to no known tunnel of this
/// datacenter's gatewans (fabric tenant routes, other RDs and MACs, another gatewan's
/// VTEP) are ignored.
///
/// Deterministic: remotes by name, tunnels by id (routes do not carry the rank). The
/// capacity figures are 0 (routes do not carry them either); a tunnel's weight is the
/// largest link bandwidth its routes carry.
pub fn fabric_decision(received: &ReceivedRoutes, snapshot: &Snapshot) -> v1::Decision {
    let vteps: HashMap<NodeId, (IpAddr, &str)> = snapshot
        .gatewans()
        .filter(|g| g.datacenter == snapshot.local_datacenter())
        .filter_map(|g| {
            let ip = g.vtep.parse::<IpAddr>().ok()?.to_canonical();
            Some((g.id, (ip, g.vtep.as_str())))
        })
        .collect();
    let mut by_rd: HashMap<RouteDistinguisher, (IpAddr, &Tunnel)> = HashMap::new();
    let mut by_mac: HashMap<(IpAddr, [u8; 6]), &Tunnel> = HashMap::new();
    for t in snapshot.tunnels() {
        // Its own VTEP, else its gatewan's; without either it has no routes (`routes`).
        let own = t.vtep.parse::<IpAddr>().ok().map(|v| v.to_canonical());
        let Some(vtep) = own.or_else(|| vteps.get(&t.gatewan).map(|v| v.0)) else {
            continue;
        };
        by_rd.insert(tunnel_rd(t.id, t.rd_index), (vtep, t));
        by_mac.insert((vtep, t.router_mac), t);
    }

    let mut chosen: BTreeMap<&str, BTreeMap<TunnelId, v1::ChosenTunnel>> = BTreeMap::new();
    for r in received.iter() {
        let next_hop = r.route.next_hop.to_canonical();
        let tunnel = by_rd
            .get(&r.route.rd)
            .filter(|(vtep, _)| *vtep == next_hop)
            .map(|&(_, t)| t)
            .or_else(|| by_mac.get(&(next_hop, r.route.router_mac)).copied());
        let Some(t) = tunnel else {
            continue;
        };
        let Some(dc) = snapshot.datacenter_of(t.id) else {
            continue;
        };
        let weight = r.route.link_bandwidth.unwrap_or(0);
        chosen
            .entry(dc)
            .or_default()
            .entry(t.id)
            .and_modify(|c| c.weight_bps = c.weight_bps.max(weight))
            .or_insert_with(|| v1::ChosenTunnel {
                id: t.id.0.to_vec().into(),
                gatewan: t.gatewan.0.to_vec().into(),
                peer: t.peer.0.to_vec().into(),
                local_transit: t.local_transit.clone(),
                peer_transit: t.peer_transit.clone(),
                // The tunnel's VTEP (its own, or its gatewan's), as the route carries it.
                vtep: next_hop.to_string(),
                router_mac: t.router_mac.to_vec().into(),
                rd_index: t.rd_index,
                weight_bps: weight,
            });
    }
    v1::Decision {
        datacenter: snapshot.local_datacenter().to_string(),
        remotes: chosen
            .into_iter()
            .map(|(dc, tunnels)| v1::DatacenterDecision {
                datacenter: dc.to_string(),
                tunnels: tunnels.into_values().collect(),
                ..Default::default()
            })
            .collect(),
    }
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

    mod fabric {
        use super::*;
        use crate::bgp::ReceivedRoute;
        use crate::controller::{Gatewan, Measurements, Transit};

        const RR1: &str = "10.1.255.2";
        const RR2: &str = "10.1.255.3";

        fn gw(dc: u8, i: u8, dc_name: &str, vtep: &str) -> Gatewan {
            let mut id = [0u8; 16];
            (id[0], id[1]) = (dc, i);
            Gatewan {
                id: NodeId(id),
                name: format!("gatewan{i:02}-{dc_name}"),
                datacenter: dc_name.into(),
                vtep: vtep.into(),
                transits: vec![Transit {
                    name: "lumen".into(),
                    capacity_bps: 1_000_000_000,
                    cost: 0,
                    drained: false,
                }],
                alive: true,
            }
        }

        fn tun(n: u8, g: &Gatewan, p: &Gatewan) -> Tunnel {
            Tunnel {
                id: TunnelId([n; 16]),
                gatewan: g.id,
                peer: p.id,
                local_transit: "lumen".into(),
                peer_transit: "lumen".into(),
                interface: format!("sdwan{n}"),
                router_mac: [0x02, 0x5d, 0, 0, 0, n],
                rd_index: u32::from(n),
                vtep: String::new(),
                measurements: Measurements::default(),
                disabled: false,
            }
        }

        /// sg1 (local): gatewan01 and gatewan02; one gatewan in par1 and one in iad1.
        /// Tunnels 1, 2 lead to par1, 3 and 4 to iad1.
        fn snapshot() -> Snapshot {
            let g1 = gw(1, 1, "sg1", "10.1.255.11");
            let g2 = gw(1, 2, "sg1", "10.1.255.12");
            let p1 = gw(2, 1, "par1", "10.2.255.11");
            let i1 = gw(3, 1, "iad1", "10.3.255.11");
            let tunnels = vec![
                tun(1, &g1, &p1),
                tun(2, &g2, &p1),
                tun(3, &g1, &i1),
                tun(4, &g2, &i1),
            ];
            Snapshot::new("sg1", vec![g1, g2, p1, i1], tunnels)
        }

        fn chosen(s: &Snapshot, n: u8, weight_bps: u64) -> v1::ChosenTunnel {
            let t = s.tunnel(TunnelId([n; 16])).expect("tunnel");
            let vtep = s
                .gatewans()
                .find(|g| g.id == t.gatewan)
                .map(|g| g.vtep.clone())
                .expect("gatewan");
            v1::ChosenTunnel {
                id: t.id.0.to_vec().into(),
                gatewan: t.gatewan.0.to_vec().into(),
                peer: t.peer.0.to_vec().into(),
                local_transit: t.local_transit.clone(),
                peer_transit: t.peer_transit.clone(),
                vtep,
                router_mac: t.router_mac.to_vec().into(),
                rd_index: t.rd_index,
                weight_bps,
            }
        }

        /// A decision choosing tunnels `(datacenter, tunnel numbers)`, weight 1 Gbps.
        fn decision(s: &Snapshot, remotes: &[(&str, &[u8])]) -> v1::Decision {
            v1::Decision {
                datacenter: "sg1".into(),
                remotes: remotes
                    .iter()
                    .map(|(dc, ns)| v1::DatacenterDecision {
                        datacenter: dc.to_string(),
                        tunnels: ns.iter().map(|&n| chosen(s, n, 1_000_000_000)).collect(),
                        ..Default::default()
                    })
                    .collect(),
            }
        }

        /// What the other bgpctl advertises for `d`, as received from route reflector `rr`.
        fn advertised(d: &v1::Decision, rr: &str) -> Vec<ReceivedRoute> {
            let mut networks = BTreeMap::new();
            for (dc, prefixes) in [
                ("par1", ["10.2.0.0/16", "2001:db8:2::/48"]),
                ("iad1", ["10.3.0.0/16", "2001:db8:3::/48"]),
            ] {
                networks.insert(
                    dc.to_string(),
                    prefixes.iter().map(|p| p.parse().unwrap()).collect(),
                );
            }
            routes(d, &networks, &settings(true))
                .into_iter()
                .map(|route| received(rr, route))
                .collect()
        }

        fn received(rr: &str, route: Type5Route) -> ReceivedRoute {
            ReceivedRoute {
                peer: rr.parse().unwrap(),
                route,
                ethernet_tag: 0,
                gateway: "0.0.0.0".parse().unwrap(),
                stale: false,
            }
        }

        /// A route with the given RD, next hop and last octet of the Router's MAC.
        fn route(rd: RouteDistinguisher, prefix: &str, next_hop: &str, mac: u8) -> Type5Route {
            Type5Route {
                rd,
                prefix: prefix.parse().unwrap(),
                label_vni: 10100,
                next_hop: next_hop.parse().unwrap(),
                router_mac: [0x02, 0x5d, 0, 0, 0, mac],
                route_targets: vec!["65001:100".parse().unwrap()],
                link_bandwidth: None,
            }
        }

        fn rd_of(n: u8) -> RouteDistinguisher {
            tunnel_rd(TunnelId([n; 16]), u32::from(n))
        }

        /// (datacenter, tunnel numbers) of a decision.
        fn summary(d: &v1::Decision) -> Vec<(String, Vec<u8>)> {
            d.remotes
                .iter()
                .map(|r| {
                    let ns = r.tunnels.iter().map(|t| t.id[0]).collect();
                    (r.datacenter.clone(), ns)
                })
                .collect()
        }

        #[test]
        fn received_routes_to_the_decision_they_express() {
            let s = snapshot();
            let other: RouteDistinguisher = "65001:999".parse().unwrap();
            type Case = (
                &'static str,
                Vec<ReceivedRoute>,
                Vec<(&'static str, Vec<u8>)>,
            );
            let cases: Vec<Case> = vec![
                (
                    "two tunnels to par1, IPv4 and IPv6 prefixes",
                    advertised(&decision(&s, &[("par1", &[2, 1])]), RR1),
                    vec![("par1", vec![1, 2])],
                ),
                (
                    "two datacenters, from both route reflectors",
                    [
                        advertised(&decision(&s, &[("iad1", &[4]), ("par1", &[1])]), RR1),
                        advertised(&decision(&s, &[("iad1", &[4]), ("par1", &[1])]), RR2),
                    ]
                    .concat(),
                    vec![("iad1", vec![4]), ("par1", vec![1])],
                ),
                (
                    "IPv6 prefix alone",
                    vec![received(
                        RR1,
                        route(rd_of(3), "2001:db8:3::/48", "10.1.255.11", 3),
                    )],
                    vec![("iad1", vec![3])],
                ),
                (
                    "unknown RD and Router's MAC at a gatewan's VTEP: ignored",
                    vec![received(
                        RR1,
                        route(other, "10.2.0.0/16", "10.1.255.11", 0x99),
                    )],
                    vec![],
                ),
                (
                    "RD of no tunnel, Router's MAC of one: that tunnel",
                    vec![received(RR1, route(other, "10.2.0.0/16", "10.1.255.12", 2))],
                    vec![("par1", vec![2])],
                ),
                (
                    "fabric tenant routes (next hop a leaf, not a gatewan's VTEP): ignored",
                    vec![
                        received(RR1, route(rd_of(1), "10.1.8.0/24", "10.1.0.5", 1)),
                        received(RR1, route(other, "2001:db8:1:8::/64", "10.1.0.6", 0x42)),
                    ],
                    vec![],
                ),
                (
                    "a tunnel's RD and Router's MAC via another gatewan's VTEP: ignored",
                    vec![received(
                        RR1,
                        route(rd_of(1), "10.2.0.0/16", "10.1.255.12", 1),
                    )],
                    vec![],
                ),
                (
                    "routes via a remote datacenter's gatewan: ignored",
                    vec![received(
                        RR1,
                        route(rd_of(1), "10.1.0.0/16", "10.2.255.11", 1),
                    )],
                    vec![],
                ),
                ("nothing received", vec![], vec![]),
            ];
            for (name, routes, want) in cases {
                let rx = ReceivedRoutes {
                    routes,
                    ..Default::default()
                };
                let d = fabric_decision(&rx, &s);
                assert_eq!(d.datacenter, "sg1", "{name}");
                let want: Vec<(String, Vec<u8>)> = want
                    .into_iter()
                    .map(|(dc, ns)| (dc.to_string(), ns))
                    .collect();
                assert_eq!(summary(&d), want, "{name}");
            }
        }

        #[test]
        fn inverts_routes_exactly_and_in_any_order() {
            let s = snapshot();
            let d = decision(&s, &[("iad1", &[3, 4]), ("par1", &[2, 1])]);
            let mut rx = ReceivedRoutes {
                routes: advertised(&d, RR1),
                ..Default::default()
            };
            let got = fabric_decision(&rx, &s);
            // The same tunnels with every field, sorted by id (routes carry no rank).
            let mut want = d.clone();
            for r in &mut want.remotes {
                r.tunnels.sort_by(|a, b| a.id.cmp(&b.id));
            }
            assert_eq!(got, want);
            rx.routes.reverse();
            assert_eq!(fabric_decision(&rx, &s), got);
        }
    }

    #[test]
    fn routes_toward_gatewan_vteps_or_their_tunnel_pools_are_not_fabric_networks() {
        let received = |nh: &str, i: u32| crate::bgp::ReceivedRoute {
            peer: "10.1.255.2".parse().unwrap(),
            route: crate::bgp::codec::tests::route(i, nh),
            ethernet_tag: 0,
            gateway: "0.0.0.0".parse().unwrap(),
            stale: false,
        };
        let routes = crate::bgp::ReceivedRoutes {
            routes: vec![
                received("10.1.255.1", 1),  // the leaf: a network of the fabric
                received("10.1.255.11", 2), // a gatewan's own VTEP
                received("10.1.254.3", 3),  // a tunnel's VTEP the mesh names
                // An address of a gatewan's pool no tunnel has now (the tunnel's before a
                // restart, still in the fabric for a moment).
                received("10.1.254.42", 4),
            ],
            end_of_rib: Default::default(),
        };
        let vteps = GatewanVteps {
            addresses: ["10.1.255.11", "10.1.254.3"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
            pools: ["10.1.254.32/27".parse().unwrap()].into_iter().collect(),
        };
        let nets = learned_networks(&routes, &vteps);
        assert_eq!(nets.keys().collect::<Vec<_>>(), vec!["10.0.1.0/24"]);
        // Without the pool, the stale tunnel VTEP would pass for a fabric network.
        let no_pool = GatewanVteps {
            pools: Default::default(),
            ..vteps
        };
        assert_eq!(learned_networks(&routes, &no_pool).len(), 2);
    }

    fn record(
        origin: u8,
        version: u64,
        body: v1::record::Body,
    ) -> gatewan_mesh::store::StoredRecord {
        gatewan_mesh::store::encode_record(&v1::Record {
            origin: vec![origin; 16].into(),
            version,
            body: Some(body),
            ..Default::default()
        })
        .unwrap()
    }

    fn node(origin: u8, dc: &str) -> v1::record::Body {
        v1::record::Body::Node(v1::NodeRecord {
            id: vec![origin; 16].into(),
            name: format!("bgpctl-{origin}"),
            datacenter: dc.into(),
            role: v1::Role::Bgpctl as i32,
            ..Default::default()
        })
    }

    fn net(p: &str) -> v1::record::Body {
        v1::record::Body::Network(v1::Network {
            prefix: p.into(),
            vni: 1,
            ..Default::default()
        })
    }

    #[test]
    fn only_networks_of_live_members_are_exported() {
        let mut store = StateStore::default();
        // Two bgpctls of par1: 1 alive, 2 dead (it still holds a withdrawn prefix).
        for r in [
            record(1, 1, node(1, "par1")),
            record(1, 2, net("10.2.0.0/16")),
            record(2, 1, node(2, "par1")),
            record(2, 2, net("10.2.0.0/16")),
            record(2, 3, net("10.99.0.0/16")),
            record(3, 1, node(3, "iad1")),
            record(3, 2, net("10.3.0.0/16")),
        ] {
            store.merge(r);
        }
        let dead = NodeId([2; 16]);
        let got = networks_by_datacenter(&store, |id| id != dead);
        let text = |dc: &str| -> Vec<String> {
            got.get(dc)
                .map(|s| s.iter().map(ToString::to_string).collect())
                .unwrap_or_default()
        };
        assert_eq!(text("par1"), ["10.2.0.0/16"]);
        assert_eq!(text("iad1"), ["10.3.0.0/16"]);
        let all = networks_by_datacenter(&store, |_| true);
        assert_eq!(all["par1"].len(), 2, "with every member alive, both");
        // A live bgpctl with no network left: the dead one's networks still go.
        let mut emptied = StateStore::default();
        for r in [
            record(1, 1, node(1, "par1")),
            record(2, 1, node(2, "par1")),
            record(2, 2, net("10.99.0.0/16")),
        ] {
            emptied.merge(r);
        }
        assert!(networks_by_datacenter(&emptied, |id| id != dead).is_empty());
    }

    #[test]
    fn a_datacenter_whose_bgpctls_all_look_dead_keeps_its_last_networks() {
        let mut store = StateStore::default();
        for r in [
            record(1, 1, node(1, "sg1")),
            record(1, 2, net("172.16.1.0/24")),
            record(2, 1, node(2, "sg1")),
            record(2, 2, net("172.16.1.0/24")),
            record(3, 1, node(3, "par1")),
            record(3, 2, net("172.16.2.0/24")),
        ] {
            store.merge(r);
        }
        // Both sg1 bgpctls held down at once (a partial partition): sg1's routes stay.
        let sg1 = [NodeId([1; 16]), NodeId([2; 16])];
        let got = networks_by_datacenter(&store, |id| !sg1.contains(&id));
        assert_eq!(
            got.get("sg1")
                .map(|s| s.iter().map(ToString::to_string).collect::<Vec<_>>()),
            Some(vec!["172.16.1.0/24".to_string()])
        );
        // One of them back: its networks alone.
        let got = networks_by_datacenter(&store, |id| id != sg1[1]);
        assert_eq!(got["sg1"].len(), 1);
    }

    #[test]
    fn networks_of_a_previous_life_the_fabric_dropped_are_withdrawn_once_its_table_is_complete() {
        let key = |kind: v1::RecordKind, name: &str| RecordKey {
            origin: NodeId([1; 16]),
            kind: kind as i32,
            name: name.into(),
        };
        let previous = vec![
            key(v1::RecordKind::Network, "10.1.0.0/16"),
            key(v1::RecordKind::Network, "10.2.0.0/16"),
            key(v1::RecordKind::Choice, "par1"),
        ];
        let mut learned = BTreeMap::new();
        learned.insert(
            "10.1.0.0/16".to_string(),
            v1::Network {
                prefix: "10.1.0.0/16".into(),
                ..Default::default()
            },
        );
        assert!(
            stale_networks(&previous, &learned, false).is_empty(),
            "the fabric's table is still arriving"
        );
        assert_eq!(stale_networks(&previous, &learned, true), ["10.2.0.0/16"]);
        assert!(stale_networks(&[], &learned, true).is_empty());
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
