//! The controller's input, pure data: the gatewans of the mesh and the measurements of the
//! local gatewans' tunnels, indexed by remote datacenter so that one datacenter's decision
//! can be recomputed alone.
//!
//! A snapshot is normalised when built (gatewans and tunnels sorted by id, duplicates
//! dropped by a total order), so the same content in any order gives the same snapshot and
//! therefore the same decision on every bgpctl.
//!
//! Usage of a local transit interface is the sum of the rx (and of the tx) of the tunnels
//! of that gatewan on that transit, as the gatewan gossips them; its usage is the larger of
//! the two sums. Traffic that does not go through a tunnel is not seen.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::Range;
use std::sync::Arc;

use gatewan_mesh::NodeId;
use gatewan_mesh::store::StateStore;
use gatewan_proto::v1::{self, TunnelState, record::Body};
use gatewan_tunnel_plan::{GatewanView, Pairing, PlanSettings, plan};
use serde::{Serialize, Serializer};

/// The 16-byte id of a tunnel (a UUID), the same at both ends.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TunnelId(pub [u8; 16]);

impl TunnelId {
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(b).ok().map(TunnelId)
    }

    /// Parses the UUID text form the planner and `routingctl tunnels` use.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut digits = b
            .iter()
            .enumerate()
            .filter(|(i, _)| !matches!(i, 8 | 13 | 18 | 23));
        if [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return None;
        }
        let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        for byte in &mut out {
            let hi = nibble(*digits.next()?.1)?;
            let lo = nibble(*digits.next()?.1)?;
            *byte = (hi << 4) | lo;
        }
        Some(TunnelId(out))
    }
}

impl fmt::Display for TunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TunnelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for TunnelId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One IP transit of a gatewan, from its NodeRecord.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Transit {
    pub name: String,
    pub capacity_bps: u64,
    pub cost: u32,
    /// Drained for maintenance: its tunnels are a last resort.
    pub drained: bool,
}

/// A gatewan of any datacenter, from its NodeRecord and the mesh's liveness.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gatewan {
    pub id: NodeId,
    pub name: String,
    pub datacenter: String,
    /// VXLAN tunnel endpoint: the next hop of the type-5 routes over its tunnels.
    pub vtep: String,
    pub transits: Vec<Transit>,
    /// Alive in the mesh (not declared down).
    pub alive: bool,
}

/// What the owning gatewan measured of a tunnel (a `TunnelMetric` without its id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Measurements {
    pub state: TunnelState,
    pub loss_ppm: u32,
    /// Mean round-trip time.
    pub latency_us: u32,
    /// Mean |ΔRTT|.
    pub jitter_us: u32,
    pub reorder_ppm: u32,
    pub rx_bps: u64,
    pub tx_bps: u64,
    /// The smaller of the two ends' transit capacities.
    pub capacity_bps: u64,
}

impl Default for Measurements {
    fn default() -> Self {
        Measurements {
            state: TunnelState::Unspecified,
            loss_ppm: 0,
            latency_us: 0,
            jitter_us: 0,
            reorder_ppm: 0,
            rx_bps: 0,
            tx_bps: 0,
            capacity_bps: 0,
        }
    }
}

impl Measurements {
    pub fn from_proto(m: &v1::TunnelMetric) -> Self {
        Measurements {
            state: TunnelState::try_from(m.state).unwrap_or(TunnelState::Unspecified),
            loss_ppm: m.loss_ppm,
            latency_us: m.latency_us,
            jitter_us: m.jitter_us,
            reorder_ppm: m.reorder_ppm,
            rx_bps: m.rx_bps,
            tx_bps: m.tx_bps,
            capacity_bps: m.capacity_bps,
        }
    }

    /// The larger direction: what limits the headroom of a full-duplex link.
    pub fn usage_bps(&self) -> u64 {
        self.rx_bps.max(self.tx_bps)
    }
}

/// The state as `routingctl tunnels` names it.
pub fn state_name(s: TunnelState) -> &'static str {
    match s {
        TunnelState::Established => "Established",
        TunnelState::Degraded => "Degraded",
        TunnelState::Down => "Down",
        TunnelState::Unspecified => "Unknown",
    }
}

/// A tunnel of a local gatewan to a gatewan of another datacenter, with its measurements
/// and the two numbers its type-5 routes carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tunnel {
    pub id: TunnelId,
    /// The local gatewan that owns the tunnel.
    pub gatewan: NodeId,
    pub peer: NodeId,
    pub local_transit: String,
    pub peer_transit: String,
    /// Its interface on the local gatewan (e.g. `sdwan12`), as `routingctl tunnels` names
    /// it: what an operator knows a tunnel by.
    pub interface: String,
    /// Tunnel MAC: the Router's MAC of its type-5 routes.
    pub router_mac: [u8; 6],
    /// Assigned number of the tunnel's route distinguisher.
    pub rd_index: u32,
    /// The tunnel's own VTEP (`fabric.tunnel_vteps` of its gatewan), as its gatewan
    /// reports it; empty when its routes use the gatewan's VTEP.
    pub vtep: String,
    pub measurements: Measurements,
    /// Disabled by an operator at either end (`routingctl tunnels disable`): a last
    /// resort, as a drained transit's tunnels.
    pub disabled: bool,
}

/// A reported tunnel the controller cannot use as a candidate, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IgnoredTunnel {
    pub tunnel: TunnelId,
    /// Name (or id, when unknown) of the gatewan that reported it.
    pub gatewan: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
pub(crate) struct GatewanEntry {
    pub g: Gatewan,
    pub name: Arc<str>,
}

/// A transit interface of a local gatewan: what a remote datacenter's tunnels share with
/// the tunnels to every other datacenter.
#[derive(Debug, Clone)]
pub(crate) struct LocalIface {
    /// None when the gatewan does not announce the transit (its tunnels are then bounded
    /// by their own capacity only).
    pub capacity_bps: Option<u64>,
    pub cost: u32,
    // Sums in u128: rates come from the network and must not overflow.
    pub total_rx: u128,
    pub total_tx: u128,
}

#[derive(Debug, Clone)]
pub(crate) struct Remote {
    pub name: Arc<str>,
    pub tunnels: Range<usize>,
    /// Hash of everything about this datacenter's tunnels: the controller recomputes the
    /// datacenter only when it (or what it shares with others) changes.
    pub fingerprint: u64,
    /// Per local interface (sorted by interface): this datacenter's own rx and tx on it.
    pub usage: Vec<(u32, u128, u128)>,
}

#[derive(Debug, Clone)]
pub(crate) struct TunnelEntry {
    pub t: Tunnel,
    pub remote: u32,
    pub gatewan: u32,
    pub peer: u32,
    pub local_transit: u32,
    pub peer_transit: u32,
    pub local_iface: u32,
    pub remote_iface: u32,
    /// `t.interface`, shared by every explanation that names the tunnel.
    pub interface: Arc<str>,
}

/// The controller's input. Build it with [`Snapshot::from_store`] in the daemon or
/// [`Snapshot::new`] from plain values.
#[derive(Debug, Clone)]
pub struct Snapshot {
    local_datacenter: String,
    pub(crate) gatewans: Vec<GatewanEntry>,
    pub(crate) transits: Vec<Arc<str>>,
    pub(crate) local_ifaces: Vec<LocalIface>,
    /// Capacity of each remote transit interface (peer, transit); None when unknown.
    pub(crate) remote_ifaces: Vec<Option<u64>>,
    pub(crate) remotes: Vec<Remote>,
    pub(crate) tunnels: Vec<TunnelEntry>,
    by_id: HashMap<TunnelId, usize>,
    ignored: Vec<IgnoredTunnel>,
    /// Highest transit cost of any gatewan: the scale of the cost term.
    pub(crate) max_cost: u32,
    /// Hash of the local datacenter and every gatewan: a change there recomputes all.
    pub(crate) global_fingerprint: u64,
}

fn hash_of<T: Hash>(t: &T) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// Planner settings that accept every slot any gatewan configuration can produce: tunnel
/// ids, MACs and RD indexes depend on the slots, the transits' names and positions only,
/// never on pools, ports or pairing, so the widest pools and port range give the same
/// values as the gatewans' own settings without refusing a slot their pools allow.
fn widest_plan_settings() -> PlanSettings {
    PlanSettings {
        pairing: Pairing::All,
        pool_v4: "0.0.0.0/0".parse().expect("valid"),
        pool_v6: "::/0".parse().expect("valid"),
        ports: (0, u16::MAX),
        ..PlanSettings::default()
    }
}

/// The interface prefix a gatewan announces, when it is one the gatewan could have been
/// configured with (the record comes from the network); else the default.
fn interface_prefix(announced: &str) -> Option<String> {
    let valid = (1..=7).contains(&announced.len())
        && announced
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    valid.then(|| announced.to_string())
}

impl Snapshot {
    /// Builds a snapshot from plain values, in any order. Tunnels that are not between a
    /// local gatewan and a known gatewan of another datacenter are listed in
    /// [`Snapshot::ignored`].
    pub fn new(
        local_datacenter: impl Into<String>,
        gatewans: Vec<Gatewan>,
        tunnels: Vec<Tunnel>,
    ) -> Snapshot {
        Self::build(local_datacenter.into(), gatewans, tunnels, Vec::new())
    }

    /// Reads the mesh state store: every gatewan's NodeRecord, and the TunnelMetrics the
    /// local gatewans gossip. Each reported tunnel is matched, by id, to the tunnel the
    /// planner derives for that gatewan, which gives its Router's MAC and RD index.
    pub fn from_store(
        local_datacenter: &str,
        store: &StateStore,
        alive: impl Fn(NodeId) -> bool,
    ) -> Snapshot {
        let mut gatewans = Vec::new();
        let mut views = Vec::new();
        let mut prefixes: HashMap<NodeId, String> = HashMap::new();
        let mut disabled: HashMap<NodeId, Vec<String>> = HashMap::new();
        for g in store.gatewans() {
            if !g.disabled_tunnels.is_empty() {
                disabled.insert(g.id, g.disabled_tunnels.clone());
            }
            gatewans.push(Gatewan {
                id: g.id,
                name: g.name.clone(),
                datacenter: g.datacenter.clone(),
                vtep: g.vtep.clone(),
                transits: g
                    .transits
                    .iter()
                    .map(|t| Transit {
                        name: t.name.clone(),
                        capacity_bps: t.capacity_bps,
                        cost: t.cost,
                        drained: t.drained,
                    })
                    .collect(),
                alive: alive(g.id),
            });
            views.extend(GatewanView::from_gatewan(&g));
            if let Some(p) = interface_prefix(&g.tunnel_interface_prefix) {
                prefixes.insert(g.id, p);
            }
        }
        // Per local gatewan: tunnel id → (peer, local transit, peer transit, MAC, RD index,
        // interface).
        type Planned = (NodeId, String, String, [u8; 6], u32, String);
        let mut planned: BTreeMap<NodeId, HashMap<TunnelId, Planned>> = BTreeMap::new();
        for v in views.iter().filter(|v| v.datacenter == local_datacenter) {
            let mut settings = widest_plan_settings();
            if let Some(p) = prefixes.get(&v.id) {
                settings.interface_prefix = p.clone();
            }
            let (tunnels, _problems) = plan(v, &views, &settings);
            let map = tunnels
                .into_iter()
                .filter_map(|t| {
                    let id = TunnelId::parse(&t.id)?;
                    Some((
                        id,
                        (
                            t.peer.node,
                            t.local.transit,
                            t.peer.transit,
                            t.mac,
                            t.rd_index,
                            t.interface,
                        ),
                    ))
                })
                .collect();
            planned.insert(v.id, map);
        }
        let name_of = |id: NodeId| {
            gatewans
                .iter()
                .find(|g| g.id == id)
                .map_or_else(|| id.to_string(), |g| g.name.clone())
        };
        let mut tunnels = Vec::new();
        let mut ignored = Vec::new();
        for r in store.iter() {
            let Some(Body::TunnelMetrics(m)) = &r.record.body else {
                continue;
            };
            let origin = r.key.origin;
            let is_local = gatewans
                .iter()
                .any(|g| g.id == origin && g.datacenter == local_datacenter);
            if !is_local {
                continue;
            }
            let Some(peer) = NodeId::from_slice(&m.peer) else {
                continue;
            };
            let plan_of_origin = planned.get(&origin);
            for tm in &m.tunnels {
                let Some(id) = TunnelId::from_slice(&tm.id) else {
                    continue;
                };
                match plan_of_origin.and_then(|p| p.get(&id)) {
                    Some((planned_peer, lt, pt, mac, rd, interface)) if *planned_peer == peer => {
                        tunnels.push(Tunnel {
                            id,
                            gatewan: origin,
                            peer,
                            local_transit: lt.clone(),
                            peer_transit: pt.clone(),
                            interface: interface.clone(),
                            router_mac: *mac,
                            rd_index: *rd,
                            vtep: tm.vtep.clone(),
                            measurements: Measurements::from_proto(tm),
                            disabled: [origin, peer].iter().any(|g| {
                                disabled.get(g).is_some_and(|ids| {
                                    let id = id.to_string();
                                    ids.contains(&id)
                                })
                            }),
                        });
                    }
                    _ => ignored.push(IgnoredTunnel {
                        tunnel: id,
                        gatewan: name_of(origin),
                        reason: "not a tunnel the planner derives for this gatewan and peer \
                                 (stale metrics, or a NodeRecord without tunnel slot)",
                    }),
                }
            }
        }
        Self::build(local_datacenter.to_string(), gatewans, tunnels, ignored)
    }

    fn build(
        local_datacenter: String,
        mut gatewans: Vec<Gatewan>,
        mut tunnels: Vec<Tunnel>,
        mut ignored: Vec<IgnoredTunnel>,
    ) -> Snapshot {
        // Full sort before dedup: which duplicate survives must not depend on input order.
        gatewans.sort();
        gatewans.dedup_by_key(|g| g.id);
        tunnels.sort();
        tunnels.dedup_by_key(|t| t.id);

        let mut names: Vec<&str> = gatewans
            .iter()
            .flat_map(|g| g.transits.iter().map(|t| t.name.as_str()))
            .chain(
                tunnels
                    .iter()
                    .flat_map(|t| [t.local_transit.as_str(), t.peer_transit.as_str()]),
            )
            .collect();
        names.sort_unstable();
        names.dedup();
        let transits: Vec<Arc<str>> = names.iter().map(|&n| Arc::from(n)).collect();
        let transit_idx = |n: &str| transits.binary_search_by(|t| (**t).cmp(n)).ok();

        let mut remote_names: Vec<&str> = gatewans
            .iter()
            .filter(|g| g.datacenter != local_datacenter)
            .map(|g| g.datacenter.as_str())
            .collect();
        remote_names.sort_unstable();
        remote_names.dedup();
        let remote_names: Vec<Arc<str>> = remote_names.iter().map(|&n| Arc::from(n)).collect();

        let gw_idx = |id: NodeId| gatewans.binary_search_by_key(&id, |g| g.id).ok();

        // Local interfaces: every announced transit of every local gatewan, then any a
        // tunnel names that its gatewan does not announce.
        let mut local_iface_idx: BTreeMap<(u32, u32), u32> = BTreeMap::new();
        let mut local_ifaces = Vec::new();
        for (gi, g) in gatewans.iter().enumerate() {
            if g.datacenter != local_datacenter {
                continue;
            }
            for t in &g.transits {
                let ti = transit_idx(&t.name).expect("interned") as u32;
                local_iface_idx.entry((gi as u32, ti)).or_insert_with(|| {
                    local_ifaces.push(LocalIface {
                        capacity_bps: Some(t.capacity_bps),
                        cost: t.cost,
                        total_rx: 0,
                        total_tx: 0,
                    });
                    (local_ifaces.len() - 1) as u32
                });
            }
        }
        let mut remote_iface_idx: BTreeMap<(u32, u32), u32> = BTreeMap::new();
        let mut remote_ifaces = Vec::new();

        let mut entries = Vec::with_capacity(tunnels.len());
        for t in tunnels {
            let reporter = |reason| IgnoredTunnel {
                tunnel: t.id,
                gatewan: gw_idx(t.gatewan)
                    .map_or_else(|| t.gatewan.to_string(), |i| gatewans[i].name.clone()),
                reason,
            };
            let Some(gi) = gw_idx(t.gatewan) else {
                ignored.push(reporter("reported by an unknown gatewan"));
                continue;
            };
            if gatewans[gi].datacenter != local_datacenter {
                ignored.push(reporter("its gatewan is not in the local datacenter"));
                continue;
            }
            let Some(pi) = gw_idx(t.peer) else {
                ignored.push(reporter("its peer gatewan is unknown"));
                continue;
            };
            let peer = &gatewans[pi];
            let Ok(ri) = remote_names.binary_search_by(|n| (**n).cmp(peer.datacenter.as_str()))
            else {
                ignored.push(reporter("its peer gatewan is in the local datacenter"));
                continue;
            };
            let lt = transit_idx(&t.local_transit).expect("interned") as u32;
            let pt = transit_idx(&t.peer_transit).expect("interned") as u32;
            let li = *local_iface_idx.entry((gi as u32, lt)).or_insert_with(|| {
                local_ifaces.push(LocalIface {
                    capacity_bps: None,
                    cost: 0,
                    total_rx: 0,
                    total_tx: 0,
                });
                (local_ifaces.len() - 1) as u32
            });
            let rfi = *remote_iface_idx.entry((pi as u32, pt)).or_insert_with(|| {
                let cap = peer
                    .transits
                    .iter()
                    .find(|x| x.name == t.peer_transit)
                    .map(|x| x.capacity_bps);
                remote_ifaces.push(cap);
                (remote_ifaces.len() - 1) as u32
            });
            entries.push(TunnelEntry {
                interface: Arc::from(t.interface.as_str()),
                remote: ri as u32,
                gatewan: gi as u32,
                peer: pi as u32,
                local_transit: lt,
                peer_transit: pt,
                local_iface: li,
                remote_iface: rfi,
                t,
            });
        }
        entries.sort_by_key(|e| (e.remote, e.t.id));

        let mut remotes = Vec::with_capacity(remote_names.len());
        let mut start = 0;
        for (ri, name) in remote_names.into_iter().enumerate() {
            let end = start
                + entries[start..]
                    .iter()
                    .take_while(|e| e.remote as usize == ri)
                    .count();
            remotes.push(Remote {
                name,
                tunnels: start..end,
                fingerprint: 0,
                usage: Vec::new(),
            });
            start = end;
        }
        let by_id = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.t.id, i))
            .collect();
        let max_cost = gatewans
            .iter()
            .flat_map(|g| g.transits.iter().map(|t| t.cost))
            .max()
            .unwrap_or(0);
        let global_fingerprint = hash_of(&(&local_datacenter, &gatewans));
        ignored.sort_by(|a, b| (a.tunnel, &a.gatewan).cmp(&(b.tunnel, &b.gatewan)));
        ignored.dedup();

        let mut s = Snapshot {
            local_datacenter,
            gatewans: gatewans
                .into_iter()
                .map(|g| GatewanEntry {
                    name: Arc::from(g.name.as_str()),
                    g,
                })
                .collect(),
            transits,
            local_ifaces,
            remote_ifaces,
            remotes,
            tunnels: entries,
            by_id,
            ignored,
            max_cost,
            global_fingerprint,
        };
        for ri in 0..s.remotes.len() {
            s.refresh_remote(ri);
        }
        for r in &s.remotes {
            for &(li, rx, tx) in &r.usage {
                let l = &mut s.local_ifaces[li as usize];
                l.total_rx += rx;
                l.total_tx += tx;
            }
        }
        s
    }

    /// Recomputes a remote datacenter's own usage per local interface and fingerprint.
    fn refresh_remote(&mut self, ri: usize) {
        let range = self.remotes[ri].tunnels.clone();
        let mut usage: Vec<(u32, u128, u128)> = Vec::new();
        let mut h = DefaultHasher::new();
        for e in &self.tunnels[range] {
            e.t.hash(&mut h);
            (e.gatewan, e.peer, e.local_iface, e.remote_iface).hash(&mut h);
            match usage.binary_search_by_key(&e.local_iface, |u| u.0) {
                Ok(i) => {
                    usage[i].1 += u128::from(e.t.measurements.rx_bps);
                    usage[i].2 += u128::from(e.t.measurements.tx_bps);
                }
                Err(i) => usage.insert(
                    i,
                    (
                        e.local_iface,
                        u128::from(e.t.measurements.rx_bps),
                        u128::from(e.t.measurements.tx_bps),
                    ),
                ),
            }
        }
        let r = &mut self.remotes[ri];
        r.fingerprint = h.finish();
        r.usage = usage;
    }

    /// Replaces the measurements of one tunnel (a new TunnelMetric from the mesh) without
    /// rebuilding the snapshot. Returns false when the tunnel is not a candidate.
    pub fn set_measurements(&mut self, tunnel: TunnelId, m: Measurements) -> bool {
        let Some(&i) = self.by_id.get(&tunnel) else {
            return false;
        };
        let e = &mut self.tunnels[i];
        let old = e.t.measurements;
        if old == m {
            return true;
        }
        e.t.measurements = m;
        let (ri, li) = (e.remote as usize, e.local_iface as usize);
        let l = &mut self.local_ifaces[li];
        l.total_rx = l.total_rx - u128::from(old.rx_bps) + u128::from(m.rx_bps);
        l.total_tx = l.total_tx - u128::from(old.tx_bps) + u128::from(m.tx_bps);
        self.refresh_remote(ri);
        true
    }

    /// Takes a TunnelMetrics record of a local gatewan (`origin`) as it arrives from the
    /// mesh, without rebuilding the snapshot. Returns false, changing nothing, when the
    /// record does not list exactly the candidate tunnels of that gatewan toward that peer
    /// (a tunnel appeared or went away): then rebuild with [`Snapshot::from_store`].
    pub fn apply_metrics(&mut self, origin: NodeId, record: &v1::TunnelMetrics) -> bool {
        let Some(peer) = NodeId::from_slice(&record.peer) else {
            return false;
        };
        let known = self
            .tunnels
            .iter()
            .filter(|e| e.t.gatewan == origin && e.t.peer == peer)
            .count();
        let mut updates = Vec::with_capacity(record.tunnels.len());
        for tm in &record.tunnels {
            let Some(id) = TunnelId::from_slice(&tm.id) else {
                return false;
            };
            match self.by_id.get(&id) {
                Some(&i)
                    if self.tunnels[i].t.gatewan == origin && self.tunnels[i].t.peer == peer =>
                {
                    updates.push((id, Measurements::from_proto(tm)));
                }
                _ => return false,
            }
        }
        updates.sort_by_key(|u| u.0);
        updates.dedup_by_key(|u| u.0);
        if updates.len() != known {
            return false;
        }
        for (id, m) in updates {
            self.set_measurements(id, m);
        }
        true
    }

    /// Headroom of every local transit interface for the tunnels to one remote datacenter:
    /// capacity minus the usage of the tunnels to *other* datacenters. The datacenter's own
    /// traffic is left out because it is the traffic being placed: counting it would make
    /// every chosen tunnel look worse than every idle one, and the choice would oscillate.
    /// The usage is rounded up to 1 % of the capacity, so traffic moving between other
    /// datacenters neither recomputes nor re-ranks this one until it moves by that much.
    pub(crate) fn local_headroom(&self, ri: usize, out: &mut Vec<u64>) {
        out.clear();
        let own = &self.remotes[ri].usage;
        let mut k = 0;
        for (li, l) in self.local_ifaces.iter().enumerate() {
            let (mut rx, mut tx) = (l.total_rx, l.total_tx);
            if k < own.len() && own[k].0 as usize == li {
                rx -= own[k].1;
                tx -= own[k].2;
                k += 1;
            }
            out.push(match l.capacity_bps {
                None => u64::MAX,
                Some(cap) => {
                    let step = u128::from((cap / 100).max(1));
                    let used = (rx.max(tx).div_ceil(step) * step).min(u128::from(cap));
                    cap - used as u64
                }
            });
        }
    }

    pub fn local_datacenter(&self) -> &str {
        &self.local_datacenter
    }

    /// The other datacenters, sorted by name.
    pub fn remote_datacenters(&self) -> impl Iterator<Item = &str> {
        self.remotes.iter().map(|r| &*r.name)
    }

    /// Every gatewan, sorted by id.
    pub fn gatewans(&self) -> impl Iterator<Item = &Gatewan> {
        self.gatewans.iter().map(|g| &g.g)
    }

    /// The candidate tunnels, grouped by remote datacenter and sorted by id.
    pub fn tunnels(&self) -> impl Iterator<Item = &Tunnel> {
        self.tunnels.iter().map(|e| &e.t)
    }

    pub fn tunnel(&self, id: TunnelId) -> Option<&Tunnel> {
        self.by_id.get(&id).map(|&i| &self.tunnels[i].t)
    }

    /// The remote datacenter a candidate tunnel leads to.
    pub fn datacenter_of(&self, id: TunnelId) -> Option<&str> {
        self.by_id
            .get(&id)
            .map(|&i| &*self.remotes[self.tunnels[i].remote as usize].name)
    }

    /// Reported tunnels that are not candidates, and why.
    pub fn ignored(&self) -> &[IgnoredTunnel] {
        &self.ignored
    }
}
