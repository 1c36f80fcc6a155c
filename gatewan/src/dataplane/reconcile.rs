//! The data plane reconciler's decision, pure: from the desired state and what the host
//! holds (only our objects: our devices, rules in our priority range, routes in our tables,
//! neighbours and FDB entries of our VXLAN device), the minimal steps that make them equal.
//!
//! Nothing still wanted is ever removed first: changed routes and neighbours are replaced
//! in place (one netlink message each, atomic), an FDB entry that moves gets its new
//! destination before the old one goes, and deletions come last, so a restart or a change
//! loses no packet of a live flow. The one exception is a VXLAN device whose identity (VNI,
//! address, port, underlay) changed: the kernel cannot change it, so it is recreated.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use super::plan::{Desired, Mac, RouteAction, RouteKey, Rule, VXLAN_DEVICE, VxlanSpec};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenVxlan {
    /// None when the device by that name is not a VXLAN device we can read.
    pub spec: Option<VxlanSpec>,
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenMacvlan {
    pub mac: Mac,
    /// On our VXLAN device, in private mode: otherwise it is recreated.
    pub shaped: bool,
    pub up: bool,
}

/// What the host holds of ours.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub vxlan: Option<SeenVxlan>,
    pub macvlans: BTreeMap<String, SeenMacvlan>,
    pub rules: BTreeSet<Rule>,
    pub routes: BTreeMap<RouteKey, RouteAction>,
    /// On the VXLAN device: address → (MAC, permanent).
    pub neighbours: BTreeMap<IpAddr, (Mac, bool)>,
    /// On the VXLAN device: MAC → destinations.
    pub fdb: BTreeMap<Mac, BTreeSet<IpAddr>>,
    /// The desired sysctls' current values (None: unreadable, e.g. no such device yet).
    pub sysctls: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    DeleteVxlan,
    /// Created down, its IPv6 quieted, then up.
    CreateVxlan(VxlanSpec),
    SetUp {
        device: String,
    },
    /// Created down, its IPv6 quieted, then up.
    CreateMacvlan {
        name: String,
        mac: Mac,
    },
    SetMac {
        name: String,
        mac: Mac,
    },
    SetSysctl {
        path: String,
        value: String,
    },
    /// Replaces (permanent).
    SetNeighbour {
        address: IpAddr,
        mac: Mac,
    },
    /// Appends a destination (creating the entry if needed).
    AddFdb {
        mac: Mac,
        vtep: Ipv4Addr,
    },
    /// Replaces.
    SetRoute {
        key: RouteKey,
        action: RouteAction,
    },
    AddRule(Rule),
    DeleteRule(Rule),
    DeleteRoute {
        key: RouteKey,
    },
    DeleteFdb {
        mac: Mac,
        dst: IpAddr,
    },
    DeleteNeighbour {
        address: IpAddr,
    },
    DeleteMacvlan {
        name: String,
    },
}

/// The steps, in order, that turn `seen` into `want`.
pub fn steps(want: &Desired, seen: &Observed) -> Vec<Step> {
    let mut out = Vec::new();
    let vxlan_ok = seen
        .vxlan
        .as_ref()
        .is_some_and(|v| v.spec.as_ref() == Some(&want.vxlan));
    // A recreated VXLAN device takes its macvlans, neighbours, FDB entries and the routes
    // through it along: plan all of them as missing.
    let empty = Observed::default();
    let recreate = !vxlan_ok && seen.vxlan.is_some();
    let kept_routes: BTreeMap<RouteKey, RouteAction> = if recreate {
        out.push(Step::DeleteVxlan);
        seen.routes
            .iter()
            .filter(|(_, a)| !matches!(a, RouteAction::Vteps(_)))
            .map(|(k, a)| (*k, a.clone()))
            .collect()
    } else {
        BTreeMap::new()
    };
    let (seen_dev, seen_routes) = if recreate {
        (&empty, &kept_routes)
    } else {
        (seen, &seen.routes)
    };
    if !vxlan_ok {
        out.push(Step::CreateVxlan(want.vxlan.clone()));
    } else if !seen.vxlan.as_ref().is_some_and(|v| v.up) {
        out.push(Step::SetUp {
            device: VXLAN_DEVICE.into(),
        });
    }

    for (name, mac) in &want.macvlans {
        match seen_dev.macvlans.get(name) {
            Some(m) if m.shaped => {
                if m.mac != *mac {
                    out.push(Step::SetMac {
                        name: name.clone(),
                        mac: *mac,
                    });
                }
                if !m.up {
                    out.push(Step::SetUp {
                        device: name.clone(),
                    });
                }
            }
            Some(_) => {
                out.push(Step::DeleteMacvlan { name: name.clone() });
                out.push(Step::CreateMacvlan {
                    name: name.clone(),
                    mac: *mac,
                });
            }
            None => out.push(Step::CreateMacvlan {
                name: name.clone(),
                mac: *mac,
            }),
        }
    }

    for (path, value) in &want.sysctls {
        let current = seen.sysctls.get(path).and_then(|v| v.as_deref());
        if current.map(str::trim) != Some(value.as_str()) {
            out.push(Step::SetSysctl {
                path: path.clone(),
                value: value.clone(),
            });
        }
    }

    for (address, mac) in &want.neighbours {
        if seen_dev.neighbours.get(address) != Some(&(*mac, true)) {
            out.push(Step::SetNeighbour {
                address: *address,
                mac: *mac,
            });
        }
    }
    for (mac, vtep) in &want.fdb {
        let has = seen_dev
            .fdb
            .get(mac)
            .is_some_and(|d| d.contains(&IpAddr::V4(*vtep)));
        if !has {
            out.push(Step::AddFdb {
                mac: *mac,
                vtep: *vtep,
            });
        }
    }

    for (key, action) in &want.routes {
        if seen_routes.get(key) != Some(action) {
            out.push(Step::SetRoute {
                key: *key,
                action: action.clone(),
            });
        }
    }
    for r in want.rules.difference(&seen.rules) {
        out.push(Step::AddRule(r.clone()));
    }

    // Removals last: nothing wanted depends on them any more.
    for r in seen.rules.difference(&want.rules) {
        out.push(Step::DeleteRule(r.clone()));
    }
    for key in seen_routes.keys() {
        if !want.routes.contains_key(key) {
            out.push(Step::DeleteRoute { key: *key });
        }
    }
    for (mac, dsts) in &seen_dev.fdb {
        for dst in dsts {
            let wanted = want.fdb.get(mac).is_some_and(|v| IpAddr::V4(*v) == *dst);
            if !wanted {
                out.push(Step::DeleteFdb {
                    mac: *mac,
                    dst: *dst,
                });
            }
        }
    }
    for (address, (_, permanent)) in &seen_dev.neighbours {
        // Entries the kernel resolved itself age out on their own.
        if *permanent && !want.neighbours.contains_key(address) {
            out.push(Step::DeleteNeighbour { address: *address });
        }
    }
    for name in seen_dev.macvlans.keys() {
        if !want.macvlans.contains_key(name) {
            out.push(Step::DeleteMacvlan { name: name.clone() });
        }
    }
    out
}

/// What the host holds once `want` is applied (for tests and for counting what a step
/// plan would leave).
pub fn as_applied(want: &Desired) -> Observed {
    Observed {
        vxlan: Some(SeenVxlan {
            spec: Some(want.vxlan.clone()),
            up: true,
        }),
        macvlans: want
            .macvlans
            .iter()
            .map(|(n, m)| {
                (
                    n.clone(),
                    SeenMacvlan {
                        mac: *m,
                        shaped: true,
                        up: true,
                    },
                )
            })
            .collect(),
        rules: want.rules.clone(),
        routes: want.routes.clone(),
        neighbours: want
            .neighbours
            .iter()
            .map(|(a, m)| (*a, (*m, true)))
            .collect(),
        fdb: want
            .fdb
            .iter()
            .map(|(m, v)| (*m, [IpAddr::V4(*v)].into()))
            .collect(),
        sysctls: want
            .sysctls
            .iter()
            .map(|(p, v)| (p.clone(), Some(v.clone())))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::{
        EGRESS_TABLE, FORWARD_METRIC, FabricSettings, Health, Inputs, LocalNetwork, NextHop,
        RemoteNetwork, TUNNEL_TABLE_BASE, TunnelInput, plan,
    };
    use super::*;
    use proptest::prelude::*;

    fn tunnel(i: u64, dc: &str, health: Health) -> TunnelInput {
        TunnelInput {
            interface: format!("sdwan{i}"),
            index: i,
            router_mac: [0x02, 0x5d, 0, 0, 0, i as u8],
            target_datacenter: dc.into(),
            health,
            latency_ns: i * 1000,
            peer_addresses: Vec::new(),
        }
    }

    fn inputs(tunnels: Vec<TunnelInput>) -> Inputs {
        Inputs {
            fabric: FabricSettings {
                vtep: "10.9.255.2".parse().unwrap(),
                vni: 100,
                interface: "fab0".into(),
                port: 4789,
            },
            present: tunnels.iter().map(|t| t.interface.clone()).collect(),
            installed: BTreeMap::new(),
            tunnels,
            local_networks: vec![LocalNetwork {
                prefix: "172.30.1.0/24".parse().unwrap(),
                next_hop: NextHop::Vtep {
                    vtep: "10.9.255.1".parse().unwrap(),
                    router_mac: [2, 0xaa, 0, 0, 0, 1],
                },
            }],
            remote_networks: vec![],
        }
    }

    /// The kernel as the steps see it.
    fn simulate(seen: &mut Observed, step: &Step) {
        match step {
            Step::DeleteVxlan => {
                seen.vxlan = None;
                seen.macvlans.clear();
                seen.neighbours.clear();
                seen.fdb.clear();
                seen.routes
                    .retain(|_, a| !matches!(a, RouteAction::Vteps(_)));
            }
            Step::CreateVxlan(spec) => {
                seen.vxlan = Some(SeenVxlan {
                    spec: Some(spec.clone()),
                    up: true,
                })
            }
            Step::SetUp { device } => {
                if device == VXLAN_DEVICE {
                    if let Some(v) = &mut seen.vxlan {
                        v.up = true;
                    }
                } else if let Some(m) = seen.macvlans.get_mut(device) {
                    m.up = true;
                }
            }
            Step::CreateMacvlan { name, mac } => {
                seen.macvlans.insert(
                    name.clone(),
                    SeenMacvlan {
                        mac: *mac,
                        shaped: true,
                        up: true,
                    },
                );
            }
            Step::SetMac { name, mac } => {
                if let Some(m) = seen.macvlans.get_mut(name) {
                    m.mac = *mac;
                }
            }
            Step::SetSysctl { path, value } => {
                seen.sysctls.insert(path.clone(), Some(value.clone()));
            }
            Step::SetNeighbour { address, mac } => {
                seen.neighbours.insert(*address, (*mac, true));
            }
            Step::AddFdb { mac, vtep } => {
                seen.fdb.entry(*mac).or_default().insert(IpAddr::V4(*vtep));
            }
            Step::SetRoute { key, action } => {
                seen.routes.insert(*key, action.clone());
            }
            Step::AddRule(r) => {
                seen.rules.insert(r.clone());
            }
            Step::DeleteRule(r) => {
                seen.rules.remove(r);
            }
            Step::DeleteRoute { key } => {
                seen.routes.remove(key);
            }
            Step::DeleteFdb { mac, dst } => {
                if let Some(d) = seen.fdb.get_mut(mac) {
                    d.remove(dst);
                    if d.is_empty() {
                        seen.fdb.remove(mac);
                    }
                }
            }
            Step::DeleteNeighbour { address } => {
                seen.neighbours.remove(address);
            }
            Step::DeleteMacvlan { name } => {
                seen.macvlans.remove(name);
            }
        }
    }

    #[test]
    fn from_nothing_everything_is_created_then_a_second_pass_is_empty() {
        let (want, _) = plan(&inputs(vec![
            tunnel(1, "par1", Health::Established),
            tunnel(2, "par1", Health::Established),
        ]));
        let mut seen = Observed::default();
        let todo = steps(&want, &seen);
        assert!(matches!(todo[0], Step::CreateVxlan(_)));
        for s in &todo {
            simulate(&mut seen, s);
        }
        assert_eq!(seen, as_applied(&want));
        assert!(steps(&want, &seen).is_empty());
    }

    #[test]
    fn a_restart_that_finds_everything_in_place_changes_nothing() {
        let (want, _) = plan(&inputs(vec![tunnel(1, "par1", Health::Established)]));
        assert_eq!(steps(&want, &as_applied(&want)), vec![]);
    }

    #[test]
    fn local_repair_replaces_one_route_per_family_and_deletes_nothing() {
        let healthy = plan(&inputs(vec![
            tunnel(1, "par1", Health::Established),
            tunnel(2, "par1", Health::Established),
        ]))
        .0;
        let repaired = plan(&inputs(vec![
            tunnel(1, "par1", Health::Down),
            tunnel(2, "par1", Health::Established),
        ]))
        .0;
        let todo = steps(&repaired, &as_applied(&healthy));
        assert_eq!(todo.len(), 2, "{todo:?}");
        for s in &todo {
            assert!(
                matches!(s, Step::SetRoute { key, action: RouteAction::Dev(d) }
                    if key.table == TUNNEL_TABLE_BASE + 1 && d == "sdwan2"),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_tunnel_no_longer_present_loses_its_macvlan_rules_and_table() {
        let two = plan(&inputs(vec![
            tunnel(1, "par1", Health::Established),
            tunnel(2, "par1", Health::Established),
        ]))
        .0;
        let one = plan(&inputs(vec![tunnel(1, "par1", Health::Established)])).0;
        let todo = steps(&one, &as_applied(&two));
        assert!(todo.contains(&Step::DeleteMacvlan {
            name: "gwm2".into()
        }));
        assert_eq!(
            todo.iter()
                .filter(
                    |s| matches!(s, Step::DeleteRule(r) if r.iif == "gwm2" || r.iif == "sdwan2")
                )
                .count(),
            8
        );
        assert!(
            todo.iter().any(
                |s| matches!(s, Step::DeleteRoute { key } if key.table == TUNNEL_TABLE_BASE + 2)
            )
        );
        // Deletions only, and after nothing else.
        assert!(todo.iter().all(|s| matches!(
            s,
            Step::DeleteMacvlan { .. } | Step::DeleteRule(_) | Step::DeleteRoute { .. }
        )));
    }

    #[test]
    fn a_moved_fdb_entry_gets_its_new_destination_before_the_old_one_goes() {
        let (want, _) = plan(&inputs(vec![]));
        let mut seen = as_applied(&want);
        let mac = [2, 0xaa, 0, 0, 0, 1];
        seen.fdb
            .insert(mac, ["10.9.255.77".parse::<IpAddr>().unwrap()].into());
        let todo = steps(&want, &seen);
        assert_eq!(
            todo,
            vec![
                Step::AddFdb {
                    mac,
                    vtep: "10.9.255.1".parse().unwrap()
                },
                Step::DeleteFdb {
                    mac,
                    dst: "10.9.255.77".parse().unwrap()
                }
            ]
        );
    }

    #[test]
    fn a_vxlan_device_of_another_vni_is_recreated_with_everything_on_it() {
        let (want, _) = plan(&inputs(vec![tunnel(1, "par1", Health::Established)]));
        let mut seen = as_applied(&want);
        if let Some(v) = &mut seen.vxlan {
            v.spec.as_mut().unwrap().vni = 200;
        }
        let todo = steps(&want, &seen);
        assert_eq!(todo[0], Step::DeleteVxlan);
        assert!(todo.contains(&Step::CreateMacvlan {
            name: "gwm1".into(),
            mac: [0x02, 0x5d, 0, 0, 0, 1]
        }));
        assert!(todo.iter().any(
            |s| matches!(s, Step::SetRoute { key, .. } if key.table == EGRESS_TABLE && key.metric == FORWARD_METRIC)
        ));
        for s in &todo {
            simulate(&mut seen, s);
        }
        assert_eq!(seen, as_applied(&want));
    }

    #[test]
    fn kernel_resolved_neighbours_are_left_alone() {
        let (want, _) = plan(&inputs(vec![]));
        let mut seen = as_applied(&want);
        seen.neighbours
            .insert("10.9.255.50".parse().unwrap(), ([2, 0, 0, 0, 0, 9], false));
        assert!(steps(&want, &seen).is_empty());
    }

    fn arb_inputs() -> impl Strategy<Value = Inputs> {
        let health = prop_oneof![
            Just(Health::Established),
            Just(Health::Degraded),
            Just(Health::Down),
            Just(Health::Unknown)
        ];
        let tunnels = proptest::collection::vec(
            (
                0u64..40,
                prop_oneof![Just("par1"), Just("fra1")],
                health,
                0u64..50,
                any::<bool>(),
            ),
            0..12,
        );
        let networks = proptest::collection::vec((0u8..6, 1u8..4, any::<bool>()), 0..8);
        (tunnels, networks).prop_map(|(ts, ns)| {
            let mut i = inputs(vec![]);
            i.local_networks.clear();
            for (idx, dc, h, lat, present) in ts {
                let mut t = tunnel(idx, dc, h);
                t.latency_ns = lat;
                if present {
                    i.present.insert(t.interface.clone());
                }
                i.tunnels.push(t);
            }
            for (net, vtep, v6) in ns {
                let prefix = if v6 {
                    format!("fd30:{net}::/64")
                } else {
                    format!("172.30.{net}.0/24")
                };
                i.local_networks.push(LocalNetwork {
                    prefix: prefix.parse().unwrap(),
                    next_hop: NextHop::Vtep {
                        vtep: Ipv4Addr::new(10, 9, 255, vtep),
                        router_mac: [2, 0xaa, 0, 0, 0, vtep],
                    },
                });
                i.remote_networks.push(RemoteNetwork {
                    prefix: format!("172.31.{net}.0/24").parse().unwrap(),
                    datacenter: "par1".into(),
                });
            }
            i
        })
    }

    proptest! {
        #[test]
        fn reconciling_a_plan_against_its_own_result_is_empty(i in arb_inputs()) {
            let (want, _) = plan(&i);
            prop_assert_eq!(steps(&want, &as_applied(&want)), vec![]);
        }

        /// From the result of any other plan (a restart after a change, tunnels gone, a
        /// repair), the steps reach exactly the new plan, and a second pass finds nothing.
        #[test]
        fn steps_from_any_earlier_state_reach_the_plan(before in arb_inputs(), after in arb_inputs()) {
            let (old, _) = plan(&before);
            let (want, _) = plan(&after);
            let mut seen = as_applied(&old);
            for s in steps(&want, &seen) {
                simulate(&mut seen, &s);
            }
            // Sysctls of devices that are gone are not read back.
            seen.sysctls.retain(|p, _| want.sysctls.contains_key(p));
            prop_assert_eq!(&seen, &as_applied(&want));
            prop_assert_eq!(steps(&want, &seen), vec![]);
        }
    }
}
