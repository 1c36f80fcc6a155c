//! The fast path's host side (ADR 0067), over aya: loads the two tc programs of
//! `bpf/fastpath.c` (embedded at build time), attaches them to the fabric interface and to
//! every tunnel, reads the maps back into a [`Maps`] and applies [`MapStep`]s. Decides
//! nothing; [`fastpath`](super::fastpath) does.
//!
//! The programs live as long as this process holds them. On a kernel with tcx (6.6 and
//! later) they are bpf links, detached when the process ends however it ends, and the
//! kernel path, always whole, carries everything from that instant: a killed gatewan
//! leaves no stale fast path behind, and a restarted one loads fresh programs and maps. On
//! older kernels they are cls_bpf filters, which outlive the process: a start first removes
//! any filter of ours it finds.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::tc::{self, SchedClassifier, SchedClassifierLinkId, TcAttachType};
use aya::{Ebpf, Pod};
use ipnet::{IpNet, Ipv4Net};

use super::fastpath::{Config, Egress, MapStep, Maps, TunnelTarget};
use super::plan::Mac;

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fastpath.o"));

pub const FABRIC_PROGRAM: &str = "fabric_in";
pub const TUNNEL_PROGRAM: &str = "tunnel_in";

// The layouts of bpf/fastpath.c; change both.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawConfig {
    vni: u32,
    port: u32,
    vxlan_ifindex: u32,
    vxlan_mtu: u32,
    vxlan_mac: [u8; 6],
    pad: u16,
    vtep: [u8; 4],
    fabric_ifindex: u32,
}
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
struct MacKey {
    mac: [u8; 6],
    pad: u16,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawTunnel {
    ifindex: u32,
    mtu: u32,
}
/// The data of a `net_key` after its prefix length.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NetData {
    scope: u32,
    family: u32,
    addr: [u8; 16],
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawRoute {
    router_mac: [u8; 6],
    fast: u8,
    pad: u8,
    vtep: [u8; 4],
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct MacStats {
    packets: u64,
    bytes: u64,
}

// SAFETY: plain C structs of integers and byte arrays, every bit pattern valid, no
// implicit padding (each is laid out to its alignment, as the C side is).
unsafe impl Pod for RawConfig {}
unsafe impl Pod for MacKey {}
unsafe impl Pod for RawTunnel {}
unsafe impl Pod for NetData {}
unsafe impl Pod for RawRoute {}
unsafe impl Pod for MacStats {}

/// The programs' counters, by index in `fp_counters` (the C enum).
pub const COUNTER_NAMES: [&str; 12] = [
    "to_tunnel_packets",
    "to_tunnel_bytes",
    "to_fabric_packets",
    "to_fabric_bytes",
    "not_forwardable",
    "too_big",
    "local",
    "unknown_mac",
    "source",
    "no_fast_route",
    "underlay",
    "error",
];

/// What `/metrics` shows of the fast path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Summed over CPUs, by [`COUNTER_NAMES`].
    pub totals: [u64; 12],
    /// Router's MAC → packets the fast path took into a tunnel.
    pub by_mac: BTreeMap<Mac, u64>,
}

/// Removes a filter of ours that an earlier run left on `interface` (kernels without tcx
/// only; see the module doc), so a fast path turned off leaves nothing stale behind.
pub fn remove_leftover(program: &str, interface: &str) {
    let _ = tc::qdisc_detach_program(interface, TcAttachType::Ingress, program);
}

fn err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("fast path: {what}: {e}"))
}

fn family(p: &IpNet) -> u32 {
    if p.addr().is_ipv4() { 2 } else { 10 }
}

fn addr16(a: IpAddr) -> [u8; 16] {
    let mut out = [0; 16];
    match a {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

fn net_key(scope: u32, p: &IpNet) -> Key<NetData> {
    Key::new(
        64 + u32::from(p.prefix_len()),
        NetData {
            scope,
            family: family(p),
            addr: addr16(p.addr()),
        },
    )
}

fn net_of(k: &Key<NetData>) -> Option<(u32, IpNet)> {
    let d = k.data();
    let len = u8::try_from(k.prefix_len().checked_sub(64)?).ok()?;
    let addr = match d.family {
        2 => IpAddr::V4(Ipv4Addr::new(d.addr[0], d.addr[1], d.addr[2], d.addr[3])),
        10 => IpAddr::V6(d.addr.into()),
        _ => return None,
    };
    Some((d.scope, IpNet::new(addr, len).ok()?))
}

fn mac_key(mac: &Mac) -> MacKey {
    MacKey { mac: *mac, pad: 0 }
}

/// The loaded programs and their maps.
pub struct FastPath {
    ebpf: Ebpf,
    /// The kernel attaches with tcx (bpf links that die with the process); without it,
    /// cls_bpf filters that an earlier run may have left.
    tcx: bool,
    /// Interface name → its index when attached, the program and the link.
    attached: BTreeMap<String, (u32, &'static str, SchedClassifierLinkId)>,
}

impl FastPath {
    /// Loads both programs into the kernel (not yet attached).
    pub fn load() -> io::Result<FastPath> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| err("cannot load the programs", e))?;
        for name in [FABRIC_PROGRAM, TUNNEL_PROGRAM] {
            Self::program(&mut ebpf, name)?
                .load()
                .map_err(|e| err(&format!("the kernel refused {name}"), e))?;
        }
        let tcx = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        Ok(FastPath {
            ebpf,
            tcx,
            attached: BTreeMap::new(),
        })
    }

    fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> io::Result<&'a mut SchedClassifier> {
        ebpf.program_mut(name)
            .ok_or_else(|| err(name, "not in the object"))?
            .try_into()
            .map_err(|e| err(name, e))
    }

    /// Attaches `program` to `interface` (index `index`) unless it is already there;
    /// an interface recreated under the same name gets a new attachment.
    pub fn attach(&mut self, program: &'static str, interface: &str, index: u32) -> io::Result<()> {
        if let Some((i, p, _)) = self.attached.get(interface) {
            if *i == index && *p == program {
                return Ok(());
            }
            self.detach(interface);
        }
        if !self.tcx {
            // A filter left by an earlier run (see the module doc).
            remove_leftover(program, interface);
            match tc::qdisc_add_clsact(interface) {
                Ok(()) => {}
                Err(e) if e.to_string().contains("exists") => {}
                Err(e) => return Err(err(&format!("clsact on {interface}"), e)),
            }
        }
        let link = Self::program(&mut self.ebpf, program)?
            .attach(interface, TcAttachType::Ingress)
            .map_err(|e| err(&format!("cannot attach {program} to {interface}"), e))?;
        self.attached
            .insert(interface.to_string(), (index, program, link));
        Ok(())
    }

    /// Detaches whatever is attached to `interface` (gone with its device already, often).
    pub fn detach(&mut self, interface: &str) {
        let Some((_, program, link)) = self.attached.remove(interface) else {
            return;
        };
        if let Ok(p) = Self::program(&mut self.ebpf, program) {
            let _ = p.detach(link);
        }
    }

    /// Interfaces with a program attached, and their index then.
    pub fn attached(&self) -> BTreeMap<String, u32> {
        self.attached
            .iter()
            .map(|(n, (i, ..))| (n.clone(), *i))
            .collect()
    }

    /// The map `name` as the typed map `T` (its key and value types checked by aya).
    fn map<'a, T>(&'a mut self, name: &str) -> io::Result<T>
    where
        T: TryFrom<&'a mut aya::maps::Map>,
        T::Error: std::fmt::Display,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| err(name, "no such map"))?;
        T::try_from(map).map_err(|e| err(name, e))
    }

    /// The maps' contents.
    pub fn read(&mut self) -> io::Result<Maps> {
        let mut maps = Maps::default();
        {
            let a: Array<&mut MapData, RawConfig> = self.map("fp_config")?;
            let c = a.get(&0, 0).map_err(|e| err("fp_config", e))?;
            maps.config = Config {
                vni: c.vni,
                port: u16::try_from(c.port).unwrap_or(0),
                vxlan_index: c.vxlan_ifindex,
                vxlan_mtu: c.vxlan_mtu,
                vxlan_mac: c.vxlan_mac,
                vtep: c.vtep.into(),
                fabric_index: c.fabric_ifindex,
            };
        }
        {
            let t: LpmTrie<&mut MapData, [u8; 4], u8> = self.map("fp_vteps")?;
            for kv in t.iter() {
                let (k, _) = kv.map_err(|e| err("fp_vteps", e))?;
                let len = u8::try_from(k.prefix_len()).unwrap_or(u8::MAX);
                if let Ok(n) = Ipv4Net::new(k.data().into(), len) {
                    maps.vteps.insert(n);
                }
            }
        }
        {
            let h: HashMap<&mut MapData, MacKey, RawTunnel> = self.map("fp_tunnels")?;
            for kv in h.iter() {
                let (k, v) = kv.map_err(|e| err("fp_tunnels", e))?;
                maps.tunnels.insert(
                    k.mac,
                    TunnelTarget {
                        index: v.ifindex,
                        mtu: v.mtu,
                    },
                );
            }
        }
        {
            let t: LpmTrie<&mut MapData, NetData, u8> = self.map("fp_sources")?;
            for kv in t.iter() {
                let (k, _) = kv.map_err(|e| err("fp_sources", e))?;
                if let Some(s) = net_of(&k) {
                    maps.sources.insert(s);
                }
            }
        }
        {
            let t: LpmTrie<&mut MapData, NetData, RawRoute> = self.map("fp_egress")?;
            for kv in t.iter() {
                let (k, v) = kv.map_err(|e| err("fp_egress", e))?;
                if let Some((_, p)) = net_of(&k) {
                    let e = if v.fast == 1 {
                        Egress::Vtep {
                            vtep: v.vtep.into(),
                            router_mac: v.router_mac,
                        }
                    } else {
                        Egress::Kernel
                    };
                    maps.egress.insert(p, e);
                }
            }
        }
        {
            let t: LpmTrie<&mut MapData, NetData, u8> = self.map("fp_local")?;
            for kv in t.iter() {
                let (k, _) = kv.map_err(|e| err("fp_local", e))?;
                if let Some((_, p)) = net_of(&k) {
                    maps.local.insert(p);
                }
            }
        }
        Ok(maps)
    }

    /// Applies one step.
    pub fn apply(&mut self, step: &MapStep) -> io::Result<()> {
        match step {
            MapStep::Config(c) => {
                let mut a: Array<&mut MapData, RawConfig> = self.map("fp_config")?;
                let raw = RawConfig {
                    vni: c.vni,
                    port: u32::from(c.port),
                    vxlan_ifindex: c.vxlan_index,
                    vxlan_mtu: c.vxlan_mtu,
                    vxlan_mac: c.vxlan_mac,
                    pad: 0,
                    vtep: c.vtep.octets(),
                    fabric_ifindex: c.fabric_index,
                };
                a.set(0, raw, 0).map_err(|e| err("fp_config", e))
            }
            MapStep::PutVtep(n) | MapStep::DeleteVtep(n) => {
                let mut t: LpmTrie<&mut MapData, [u8; 4], u8> = self.map("fp_vteps")?;
                let k = Key::new(u32::from(n.prefix_len()), n.network().octets());
                match step {
                    MapStep::PutVtep(_) => t.insert(&k, 1, 0),
                    _ => t.remove(&k),
                }
                .map_err(|e| err("fp_vteps", e))
            }
            MapStep::PutTunnel(mac, target) => {
                let mut h: HashMap<&mut MapData, MacKey, RawTunnel> = self.map("fp_tunnels")?;
                let v = RawTunnel {
                    ifindex: target.index,
                    mtu: target.mtu,
                };
                h.insert(mac_key(mac), v, 0)
                    .map_err(|e| err("fp_tunnels", e))
            }
            MapStep::DeleteTunnel(mac) => {
                let mut h: HashMap<&mut MapData, MacKey, RawTunnel> = self.map("fp_tunnels")?;
                h.remove(&mac_key(mac)).map_err(|e| err("fp_tunnels", e))
            }
            MapStep::PutSource(i, p) | MapStep::DeleteSource(i, p) => {
                let mut t: LpmTrie<&mut MapData, NetData, u8> = self.map("fp_sources")?;
                let k = net_key(*i, p);
                match step {
                    MapStep::PutSource(..) => t.insert(&k, 1, 0),
                    _ => t.remove(&k),
                }
                .map_err(|e| err("fp_sources", e))
            }
            MapStep::PutEgress(p, e) => {
                let mut t: LpmTrie<&mut MapData, NetData, RawRoute> = self.map("fp_egress")?;
                let v = match e {
                    Egress::Vtep { vtep, router_mac } => RawRoute {
                        router_mac: *router_mac,
                        fast: 1,
                        pad: 0,
                        vtep: vtep.octets(),
                    },
                    Egress::Kernel => RawRoute::default(),
                };
                t.insert(&net_key(0, p), v, 0)
                    .map_err(|e| err("fp_egress", e))
            }
            MapStep::DeleteEgress(p) => {
                let mut t: LpmTrie<&mut MapData, NetData, RawRoute> = self.map("fp_egress")?;
                t.remove(&net_key(0, p)).map_err(|e| err("fp_egress", e))
            }
            MapStep::PutLocal(p) | MapStep::DeleteLocal(p) => {
                let mut t: LpmTrie<&mut MapData, NetData, u8> = self.map("fp_local")?;
                let k = net_key(0, p);
                match step {
                    MapStep::PutLocal(_) => t.insert(&k, 1, 0),
                    _ => t.remove(&k),
                }
                .map_err(|e| err("fp_local", e))
            }
        }
    }

    /// The programs' counters, summed over CPUs.
    pub fn counters(&mut self) -> io::Result<Counters> {
        let mut out = Counters::default();
        {
            let a: PerCpuArray<&mut MapData, u64> = self.map("fp_counters")?;
            for (i, total) in (0u32..).zip(out.totals.iter_mut()) {
                let v = a.get(&i, 0).map_err(|e| err("fp_counters", e))?;
                *total = v.iter().fold(0u64, |s, x| s.wrapping_add(*x));
            }
        }
        let h: PerCpuHashMap<&mut MapData, MacKey, MacStats> = self.map("fp_mac_stats")?;
        for kv in h.iter() {
            let (k, v) = kv.map_err(|e| err("fp_mac_stats", e))?;
            let n = v.iter().fold(0u64, |s, x| s.wrapping_add(x.packets));
            out.by_mac.insert(k.mac, n);
        }
        Ok(out)
    }
}
