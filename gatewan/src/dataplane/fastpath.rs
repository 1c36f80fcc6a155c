//! The fast path's maps, pure (ADR 0067): what the two tc programs of `bpf/fastpath.c`
//! must hold so that they send a packet exactly where the kernel path (the planned
//! macvlans, rules, tables, neighbours and FDB) would, and leave to the kernel path every
//! packet they cannot decide the same way. Computed from the data plane's [`Desired`], the
//! source filter's [`Allowed`] and what the adapter observes (interface indexes, MTUs, the
//! host's local prefixes), then diffed against the maps' contents ([`diff`]).
//!
//! The underlay next hop is not a map: the program asks the kernel's FIB
//! (`bpf_fib_lookup`), so a leaf's changed MAC or a lost neighbour is never served stale.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::filter::Allowed;
use super::plan::{
    Desired, EGRESS_TABLE, FORWARD_METRIC, Inputs, Mac, RouteAction, RouteKey, VXLAN_DEVICE,
    macvlan_name, tunnel_table,
};

/// An interface as the adapter found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub mtu: u32,
    pub mac: Option<Mac>,
}

/// What the plan needs from the host beyond the data plane's own plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub interfaces: BTreeMap<String, Interface>,
    /// The prefixes of the host's local table: packets to them are the gatewan's own.
    pub local: BTreeSet<IpNet>,
}

/// The programs' settings (`fp_config`). `vxlan_index` 0 turns both programs into
/// pass-through (no VXLAN device yet), `fabric_index` 0 the tunnels' one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub vni: u32,
    pub port: u16,
    pub vxlan_index: u32,
    pub vxlan_mtu: u32,
    pub vxlan_mac: Mac,
    /// The VXLAN device's local address, the outer source.
    pub vtep: Ipv4Addr,
    /// The VXLAN device's underlay interface: the output interface of its route lookups.
    pub fabric_index: u32,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            vni: 0,
            port: 0,
            vxlan_index: 0,
            vxlan_mtu: 0,
            vxlan_mac: [0; 6],
            vtep: Ipv4Addr::UNSPECIFIED,
            fabric_index: 0,
        }
    }
}

/// Where the fabric's frames to a Router's MAC go: the tunnel its table sends to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TunnelTarget {
    pub index: u32,
    pub mtu: u32,
}

/// A prefix of this datacenter in the egress table: one VTEP and its Router's MAC, or
/// left to the kernel (ECMP over several VTEPs, a static gateway, unreachable). A prefix
/// left to the kernel still needs its entry, or a shorter prefix would match in its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Egress {
    Vtep { vtep: Ipv4Addr, router_mac: Mac },
    Kernel,
}

/// Everything the maps hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maps {
    pub config: Config,
    /// Our VTEP addresses: VXLAN to anything else is not ours to decapsulate.
    pub vteps: BTreeSet<Ipv4Net>,
    /// Router's MAC → the tunnel that carries it.
    pub tunnels: BTreeMap<Mac, TunnelTarget>,
    /// (tunnel interface index, source prefix): what that tunnel may bring in.
    pub sources: BTreeSet<(u32, IpNet)>,
    pub egress: BTreeMap<IpNet, Egress>,
    pub local: BTreeSet<IpNet>,
}

/// Where the programs are attached: the fabric interface and each tunnel, by index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attachments {
    pub fabric: Option<u32>,
    pub tunnels: BTreeMap<String, u32>,
}

/// The maps for `desired` (planned from `inputs`, whose `present` the adapter filled).
pub fn plan(
    desired: &Desired,
    inputs: &Inputs,
    allowed: &Allowed,
    tunnel_vteps: Option<Ipv4Net>,
    observed: &Observed,
) -> Maps {
    let iface = |name: &str| observed.interfaces.get(name);
    let vxlan = iface(VXLAN_DEVICE);
    let config = Config {
        vni: desired.vxlan.vni,
        port: desired.vxlan.port,
        vxlan_index: vxlan.map_or(0, |v| v.index),
        vxlan_mtu: vxlan.map_or(0, |v| v.mtu),
        vxlan_mac: vxlan.and_then(|v| v.mac).unwrap_or_default(),
        vtep: desired.vxlan.local,
        fabric_index: iface(&desired.vxlan.underlay).map_or(0, |i| i.index),
    };
    let mut vteps: BTreeSet<Ipv4Net> = tunnel_vteps.into_iter().collect();
    vteps.insert(Ipv4Net::from(desired.vxlan.local));

    let mut tunnels = BTreeMap::new();
    for t in &inputs.tunnels {
        let mv = macvlan_name(t.index);
        // Only where the kernel path would take the frame: our macvlan with this MAC is
        // there, and the tunnel's table forwards (both families route alike).
        if desired.macvlans.get(&mv) != Some(&t.router_mac) || iface(&mv).is_none() {
            continue;
        }
        let Some(table) = tunnel_table(t.index) else {
            continue;
        };
        let key = |prefix| RouteKey {
            table,
            prefix,
            metric: FORWARD_METRIC,
        };
        let v4 = desired.routes.get(&key(IpNet::V4(Ipv4Net::default())));
        let v6 = desired.routes.get(&key(IpNet::V6(Ipv6Net::default())));
        if let (Some(RouteAction::Dev(dev)), true) = (v4, v4 == v6)
            && let Some(i) = iface(dev)
        {
            tunnels.insert(
                t.router_mac,
                TunnelTarget {
                    index: i.index,
                    mtu: i.mtu,
                },
            );
        }
    }

    let sources = allowed
        .iter()
        .filter_map(|(name, set)| Some((iface(name)?.index, set)))
        .flat_map(|(index, set)| set.iter().map(move |p| (index, p.trunc())))
        .collect();

    let egress = desired
        .routes
        .iter()
        .filter(|(k, _)| k.table == EGRESS_TABLE && k.metric == FORWARD_METRIC)
        .map(|(k, a)| (k.prefix, egress_of(a, desired)))
        .chain(
            // The unreachable defaults: no route is the kernel's to answer.
            [IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())]
                .map(|p| (p, Egress::Kernel)),
        )
        .fold(BTreeMap::new(), |mut m, (p, e)| {
            m.entry(p).or_insert(e);
            m
        });

    Maps {
        config,
        vteps,
        tunnels,
        sources,
        egress,
        local: observed.local.iter().map(IpNet::trunc).collect(),
    }
}

/// One VTEP whose Router's MAC the neighbour table holds and whose FDB entry sends that
/// MAC back to it: exactly what the VXLAN device would do. Anything else is the kernel's.
fn egress_of(a: &RouteAction, desired: &Desired) -> Egress {
    let RouteAction::Vteps(vteps) = a else {
        return Egress::Kernel;
    };
    let (Some(&vtep), 1) = (vteps.first(), vteps.len()) else {
        return Egress::Kernel;
    };
    match desired.neighbours.get(&IpAddr::V4(vtep)) {
        Some(mac) if desired.fdb.get(mac) == Some(&vtep) => Egress::Vtep {
            vtep,
            router_mac: *mac,
        },
        _ => Egress::Kernel,
    }
}

/// Where the programs go: the fabric interface and every tunnel the host has.
pub fn attachments(desired: &Desired, inputs: &Inputs, observed: &Observed) -> Attachments {
    Attachments {
        fabric: observed
            .interfaces
            .get(&desired.vxlan.underlay)
            .map(|i| i.index),
        tunnels: inputs
            .tunnels
            .iter()
            .filter_map(|t| {
                Some((
                    t.interface.clone(),
                    observed.interfaces.get(&t.interface)?.index,
                ))
            })
            .collect(),
    }
}

/// A change to one map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapStep {
    Config(Config),
    PutVtep(Ipv4Net),
    DeleteVtep(Ipv4Net),
    PutTunnel(Mac, TunnelTarget),
    DeleteTunnel(Mac),
    PutSource(u32, IpNet),
    DeleteSource(u32, IpNet),
    PutEgress(IpNet, Egress),
    DeleteEgress(IpNet),
    PutLocal(IpNet),
    DeleteLocal(IpNet),
}

fn set_diff<T: Ord + Clone>(
    want: &BTreeSet<T>,
    have: &BTreeSet<T>,
    put: impl Fn(T) -> MapStep,
    delete: impl Fn(T) -> MapStep,
    puts: &mut Vec<MapStep>,
    deletes: &mut Vec<MapStep>,
) {
    puts.extend(want.difference(have).cloned().map(put));
    deletes.extend(have.difference(want).cloned().map(delete));
}

fn map_diff<K: Ord + Clone, V: PartialEq + Clone>(
    want: &BTreeMap<K, V>,
    have: &BTreeMap<K, V>,
    put: impl Fn(K, V) -> MapStep,
    delete: impl Fn(K) -> MapStep,
    puts: &mut Vec<MapStep>,
    deletes: &mut Vec<MapStep>,
) {
    for (k, v) in want {
        if have.get(k) != Some(v) {
            puts.push(put(k.clone(), v.clone()));
        }
    }
    deletes.extend(
        have.keys()
            .filter(|k| !want.contains_key(k))
            .cloned()
            .map(delete),
    );
}

/// The steps that turn `have` into `want`. Local prefixes go in first and out last, so a
/// packet to the gatewan itself is never forwarded during a change; then every put before
/// any delete, so a prefix that moves to a shorter one is never unmatched in between.
pub fn diff(want: &Maps, have: &Maps) -> Vec<MapStep> {
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    let mut local_deletes = Vec::new();
    set_diff(
        &want.local,
        &have.local,
        MapStep::PutLocal,
        MapStep::DeleteLocal,
        &mut puts,
        &mut local_deletes,
    );
    if want.config != have.config {
        puts.push(MapStep::Config(want.config));
    }
    set_diff(
        &want.vteps,
        &have.vteps,
        MapStep::PutVtep,
        MapStep::DeleteVtep,
        &mut puts,
        &mut deletes,
    );
    map_diff(
        &want.tunnels,
        &have.tunnels,
        MapStep::PutTunnel,
        MapStep::DeleteTunnel,
        &mut puts,
        &mut deletes,
    );
    set_diff(
        &want.sources,
        &have.sources,
        |(i, p)| MapStep::PutSource(i, p),
        |(i, p)| MapStep::DeleteSource(i, p),
        &mut puts,
        &mut deletes,
    );
    map_diff(
        &want.egress,
        &have.egress,
        MapStep::PutEgress,
        MapStep::DeleteEgress,
        &mut puts,
        &mut deletes,
    );
    puts.extend(deletes);
    puts.extend(local_deletes);
    puts
}

/// Applies `steps` to `maps`, as the adapter applies them to the kernel's: the tests'
/// model of the maps.
#[cfg(test)]
pub fn apply(maps: &mut Maps, steps: &[MapStep]) {
    for s in steps {
        match s {
            MapStep::Config(c) => maps.config = *c,
            MapStep::PutVtep(n) => {
                maps.vteps.insert(*n);
            }
            MapStep::DeleteVtep(n) => {
                maps.vteps.remove(n);
            }
            MapStep::PutTunnel(m, t) => {
                maps.tunnels.insert(*m, *t);
            }
            MapStep::DeleteTunnel(m) => {
                maps.tunnels.remove(m);
            }
            MapStep::PutSource(i, p) => {
                maps.sources.insert((*i, *p));
            }
            MapStep::DeleteSource(i, p) => {
                maps.sources.remove(&(*i, *p));
            }
            MapStep::PutEgress(p, e) => {
                maps.egress.insert(*p, *e);
            }
            MapStep::DeleteEgress(p) => {
                maps.egress.remove(p);
            }
            MapStep::PutLocal(p) => {
                maps.local.insert(*p);
            }
            MapStep::DeleteLocal(p) => {
                maps.local.remove(p);
            }
        }
    }
}

/// What the programs would do with a tenant packet, decided from `maps` as the C code
/// decides (the model the property test holds against the planned kernel path).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Into the tunnel with this interface index.
    Tunnel(u32),
    /// Encapsulated to this VTEP with this Router's MAC.
    Fabric {
        vtep: Ipv4Addr,
        router_mac: Mac,
    },
    Kernel,
}

#[cfg(test)]
fn longest<'a, V>(m: impl Iterator<Item = (&'a IpNet, V)>, dst: IpAddr) -> Option<V> {
    m.filter(|(p, _)| p.contains(&dst))
        .max_by_key(|(p, _)| p.prefix_len())
        .map(|(_, v)| v)
}

#[cfg(test)]
impl Maps {
    fn is_local(&self, dst: IpAddr) -> bool {
        self.local.iter().any(|p| p.contains(&dst))
    }

    /// A frame from the fabric to `router_mac` with inner destination `dst` (forwardable,
    /// within the MTU).
    pub fn from_fabric(&self, router_mac: Mac, dst: IpAddr) -> Verdict {
        match self.tunnels.get(&router_mac) {
            Some(t) if self.config.vxlan_index != 0 && !self.is_local(dst) => {
                Verdict::Tunnel(t.index)
            }
            _ => Verdict::Kernel,
        }
    }

    /// A packet from the tunnel with index `tunnel` (forwardable, within the MTU).
    pub fn from_tunnel(&self, tunnel: u32, src: IpAddr, dst: IpAddr) -> Verdict {
        let allowed = self
            .sources
            .iter()
            .any(|(i, p)| *i == tunnel && p.contains(&src));
        let off = self.config.vxlan_index == 0 || self.config.fabric_index == 0;
        if off || !allowed || self.is_local(dst) {
            return Verdict::Kernel;
        }
        match longest(self.egress.iter(), dst) {
            Some(Egress::Vtep { vtep, router_mac }) => Verdict::Fabric {
                vtep: *vtep,
                router_mac: *router_mac,
            },
            _ => Verdict::Kernel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::filter;
    use crate::dataplane::plan::tests::tunnel;
    use crate::dataplane::plan::{self, Health, LocalNetwork, NextHop, RemoteNetwork, TunnelInput};
    use proptest::prelude::*;

    /// The MAC plan's test tunnel `n` gets; other numbers for the fabric's Router's MACs.
    fn mac(n: u8) -> Mac {
        [0x02, 0x5d, 0, 0, 0, n]
    }

    /// Plan's test inputs with our own tunnels and local networks, remote networks of
    /// par1 in both families, and every link of the plan present.
    fn inputs(tunnels: Vec<TunnelInput>, local: Vec<LocalNetwork>) -> Inputs {
        let mut i = plan::tests::inputs(tunnels);
        i.local_networks = local;
        i.remote_networks.push(RemoteNetwork {
            prefix: "2001:db8:a2::/48".parse().unwrap(),
            datacenter: "par1".into(),
        });
        let macvlans: Vec<String> = i.tunnels.iter().map(|t| macvlan_name(t.index)).collect();
        i.present.extend(macvlans);
        i.present
            .extend([VXLAN_DEVICE.to_string(), i.fabric.interface.clone()]);
        i
    }

    /// Every present link gets an index from its position, MTU 1420 for tunnels.
    fn observed(inputs: &Inputs) -> Observed {
        Observed {
            interfaces: inputs
                .present
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let mtu = if n.starts_with("sdwan") { 1420 } else { 1500 };
                    (
                        n.clone(),
                        Interface {
                            index: i as u32 + 10,
                            mtu,
                            mac: Some(mac(200)),
                        },
                    )
                })
                .collect(),
            local: ["10.0.0.1/32", "100.64.0.100/32", "fd00::1/128"]
                .iter()
                .map(|p| p.parse().unwrap())
                .collect(),
        }
    }

    fn vtep_net(prefix: &str, vtep: &str, m: u8) -> LocalNetwork {
        LocalNetwork {
            prefix: prefix.parse().unwrap(),
            next_hop: NextHop::Vtep {
                vtep: vtep.parse().unwrap(),
                router_mac: mac(m),
            },
        }
    }

    fn planned(i: &Inputs) -> (Desired, Maps) {
        let (desired, _) = plan::plan(i);
        let o = observed(i);
        let maps = plan(&desired, i, &filter::allowed(i), None, &o);
        (desired, maps)
    }

    #[test]
    fn a_down_tunnels_mac_goes_to_the_sibling_its_table_repairs_to() {
        let i = inputs(
            vec![
                tunnel(1, "par1", Health::Down, 10),
                tunnel(2, "par1", Health::Established, 20),
            ],
            vec![],
        );
        let (_, maps) = planned(&i);
        let o = observed(&i);
        let sdwan2 = o.interfaces["sdwan2"].index;
        assert_eq!(maps.tunnels[&mac(1)].index, sdwan2);
        assert_eq!(maps.tunnels[&mac(2)].index, sdwan2);
        assert_eq!(maps.tunnels[&mac(1)].mtu, 1420);
    }

    #[test]
    fn a_tunnel_without_its_macvlan_or_interface_has_no_entry() {
        let mut i = inputs(vec![tunnel(1, "par1", Health::Established, 10)], vec![]);
        i.present.remove(&macvlan_name(1));
        assert!(planned(&i).1.tunnels.is_empty());
        let mut i = inputs(vec![tunnel(1, "par1", Health::Established, 10)], vec![]);
        i.present.remove("sdwan1");
        assert!(planned(&i).1.tunnels.is_empty());
    }

    #[test]
    fn ecmp_and_static_prefixes_are_the_kernels_but_keep_their_entry() {
        let i = inputs(
            vec![tunnel(1, "par1", Health::Established, 10)],
            vec![
                vtep_net("172.16.1.0/24", "10.0.1.1", 50),
                vtep_net("172.16.1.128/25", "10.0.1.1", 50),
                vtep_net("172.16.1.128/25", "10.0.1.2", 51),
                LocalNetwork {
                    prefix: "172.16.9.0/24".parse().unwrap(),
                    next_hop: NextHop::Gateway("10.0.9.1".parse().unwrap()),
                },
            ],
        );
        let (_, maps) = planned(&i);
        let fast = Egress::Vtep {
            vtep: "10.0.1.1".parse().unwrap(),
            router_mac: mac(50),
        };
        assert_eq!(maps.egress[&"172.16.1.0/24".parse().unwrap()], fast);
        assert_eq!(
            maps.egress[&"172.16.1.128/25".parse().unwrap()],
            Egress::Kernel
        );
        assert_eq!(
            maps.egress[&"172.16.9.0/24".parse().unwrap()],
            Egress::Kernel
        );
        let t = observed(&i).interfaces["sdwan1"].index;
        let src: IpAddr = "172.31.2.5".parse().unwrap();
        assert_eq!(
            maps.from_tunnel(t, src, "172.16.1.200".parse().unwrap()),
            Verdict::Kernel
        );
        assert_eq!(
            maps.from_tunnel(t, src, "172.16.1.20".parse().unwrap()),
            Verdict::Fabric {
                vtep: "10.0.1.1".parse().unwrap(),
                router_mac: mac(50)
            }
        );
    }

    #[test]
    fn a_source_outside_the_tunnels_datacenter_and_a_local_destination_are_the_kernels() {
        let i = inputs(
            vec![tunnel(1, "par1", Health::Established, 10)],
            vec![vtep_net("0.0.0.0/0", "10.0.1.1", 50)],
        );
        let (_, maps) = planned(&i);
        let t = observed(&i).interfaces["sdwan1"].index;
        let dst: IpAddr = "172.16.1.20".parse().unwrap();
        assert_eq!(
            maps.from_tunnel(t, "192.0.2.1".parse().unwrap(), dst),
            Verdict::Kernel
        );
        assert_eq!(
            maps.from_tunnel(
                t,
                "172.31.2.1".parse().unwrap(),
                "10.0.0.1".parse().unwrap()
            ),
            Verdict::Kernel
        );
        assert_eq!(
            maps.from_fabric(mac(1), "100.64.0.100".parse().unwrap()),
            Verdict::Kernel
        );
        assert_eq!(
            maps.from_fabric(mac(1), "172.16.2.1".parse().unwrap()),
            Verdict::Tunnel(t)
        );
    }

    #[test]
    fn without_the_vxlan_device_everything_is_the_kernels() {
        let i = inputs(vec![tunnel(1, "par1", Health::Established, 10)], vec![]);
        let (desired, _) = plan::plan(&i);
        let mut o = observed(&i);
        o.interfaces.remove(VXLAN_DEVICE);
        let maps = plan(&desired, &i, &filter::allowed(&i), None, &o);
        assert_eq!(
            maps.from_fabric(mac(1), "172.16.2.1".parse().unwrap()),
            Verdict::Kernel
        );
    }

    #[test]
    fn the_diff_applied_gives_the_wanted_maps_and_nothing_when_equal() {
        let a = planned(&inputs(
            vec![
                tunnel(1, "par1", Health::Established, 10),
                tunnel(2, "par1", Health::Established, 20),
            ],
            vec![vtep_net("172.16.1.0/24", "10.0.1.1", 50)],
        ))
        .1;
        let b = planned(&inputs(
            vec![tunnel(2, "par1", Health::Down, 20)],
            vec![vtep_net("172.16.1.0/25", "10.0.1.2", 51)],
        ))
        .1;
        let mut have = a.clone();
        apply(&mut have, &diff(&b, &a));
        assert_eq!(have, b);
        assert!(diff(&b, &have).is_empty());
    }

    #[test]
    fn local_prefixes_go_in_first_and_out_last() {
        let mut want = Maps::default();
        want.local.insert("10.9.9.9/32".parse().unwrap());
        want.tunnels.insert(
            mac(1),
            TunnelTarget {
                index: 3,
                mtu: 1420,
            },
        );
        let steps = diff(&want, &Maps::default());
        assert!(matches!(steps[0], MapStep::PutLocal(_)), "{steps:?}");
        let mut have = want.clone();
        have.local.clear();
        have.local.insert("10.8.8.8/32".parse().unwrap());
        want.tunnels.clear();
        let steps = diff(&want, &have);
        assert!(
            matches!(steps.last(), Some(MapStep::DeleteLocal(_))),
            "{steps:?}"
        );
    }

    fn arb_tunnels() -> impl Strategy<Value = Vec<TunnelInput>> {
        prop::collection::vec((1u64..6, 0usize..2, 0usize..3, 1u64..50), 1..6).prop_map(|v| {
            let mut seen = BTreeSet::new();
            v.into_iter()
                .filter(|(i, ..)| seen.insert(*i))
                .map(|(i, dc, h, l)| {
                    let health = [Health::Established, Health::Degraded, Health::Down][h];
                    tunnel(i, ["par1", "ams1"][dc], health, l)
                })
                .collect()
        })
    }

    fn arb_locals() -> impl Strategy<Value = Vec<LocalNetwork>> {
        prop::collection::vec((0u8..4, 24u8..=26, 1u8..4, 0u8..2), 0..8).prop_map(|v| {
            v.into_iter()
                .map(|(net, len, vtep, gw)| {
                    let prefix = format!("172.16.{net}.0/{len}");
                    if gw == 1 && vtep == 3 {
                        LocalNetwork {
                            prefix: prefix.parse().unwrap(),
                            next_hop: NextHop::Gateway("10.0.9.1".parse().unwrap()),
                        }
                    } else {
                        vtep_net(&prefix, &format!("10.0.1.{vtep}"), 50 + vtep)
                    }
                })
                .collect()
        })
    }

    /// Where the planned kernel path sends a packet: rules, tables, neighbours, FDB.
    fn kernel_from_fabric(d: &Desired, i: &Inputs, o: &Observed, m: Mac, dst: IpAddr) -> Verdict {
        if o.local.iter().any(|p| p.contains(&dst)) {
            return Verdict::Kernel;
        }
        let Some(t) = i.tunnels.iter().find(|t| t.router_mac == m) else {
            return Verdict::Kernel;
        };
        let table = tunnel_table(t.index).unwrap();
        let key = RouteKey {
            table,
            prefix: if dst.is_ipv4() {
                IpNet::V4(Ipv4Net::default())
            } else {
                IpNet::V6(Ipv6Net::default())
            },
            metric: FORWARD_METRIC,
        };
        match d.routes.get(&key) {
            Some(RouteAction::Dev(dev)) => Verdict::Tunnel(o.interfaces[dev].index),
            _ => Verdict::Kernel,
        }
    }

    fn kernel_from_tunnel(d: &Desired, o: &Observed, dst: IpAddr) -> Verdict {
        if o.local.iter().any(|p| p.contains(&dst)) {
            return Verdict::Kernel;
        }
        let route = d
            .routes
            .iter()
            .filter(|(k, _)| {
                k.table == EGRESS_TABLE && k.metric == FORWARD_METRIC && k.prefix.contains(&dst)
            })
            .max_by_key(|(k, _)| k.prefix.prefix_len());
        match route.map(|(_, a)| a) {
            Some(RouteAction::Vteps(v)) if v.len() == 1 => {
                let vtep = *v.first().unwrap();
                let mac = d.neighbours[&IpAddr::V4(vtep)];
                Verdict::Fabric {
                    vtep: d.fdb[&mac],
                    router_mac: mac,
                }
            }
            _ => Verdict::Kernel,
        }
    }

    proptest! {
        /// A packet the maps send somewhere goes where the planned rules and routes send
        /// it; the maps leave to the kernel only what the kernel path must decide itself.
        #[test]
        fn the_maps_send_a_packet_where_the_kernel_path_would(
            tunnels in arb_tunnels(),
            locals in arb_locals(),
            host in 0u8..255,
            net in 0u8..5,
        ) {
            let i = inputs(tunnels, locals);
            let (d, maps) = planned(&i);
            let o = observed(&i);
            let dst: IpAddr = format!("172.16.{net}.{host}").parse().unwrap();
            for t in &i.tunnels {
                let fast = maps.from_fabric(t.router_mac, dst);
                if fast != Verdict::Kernel {
                    prop_assert_eq!(fast, kernel_from_fabric(&d, &i, &o, t.router_mac, dst));
                } else {
                    // Left to the kernel only when no tunnel's table forwards it.
                    prop_assert_eq!(kernel_from_fabric(&d, &i, &o, t.router_mac, dst), Verdict::Kernel);
                }
                let src: IpAddr = if t.target_datacenter == "par1" {
                    "172.31.2.9".parse().unwrap()
                } else {
                    "192.0.2.9".parse().unwrap()
                };
                let index = o.interfaces[&t.interface].index;
                let fast = maps.from_tunnel(index, src, dst);
                let kernel = kernel_from_tunnel(&d, &o, dst);
                if t.target_datacenter == "par1" {
                    prop_assert_eq!(fast, kernel);
                } else {
                    // A source outside the tunnel's datacenter: nftables decides.
                    prop_assert_eq!(fast, Verdict::Kernel);
                }
            }
        }
    }
}
