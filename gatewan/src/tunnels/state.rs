//! The tunnel manager's state and every decision it takes, with no I/O and no clock of
//! its own: the manager task (`manager.rs`) passes in what it observed and the time, and
//! carries out what comes back (reconcile steps, probe targets, records to gossip, the
//! table the API shows).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use gatewan_mesh::driver::MeshView;
use gatewan_mesh::{MemberState, NodeId};
use gatewan_proto::v1::{self, record::Body};

use super::plan::{GatewanView, PlannedTunnel};
use super::reconcile::{SeenTunnel, Step, WantedTunnel, steps};
use super::system::LinkInfo;
use super::vtep;
use crate::probe::engine::{ProbeCounters, ProbeReport, ProbeTarget};
use crate::probe::stats::TunnelState;

/// What the state needs to know of the local gatewan.
pub struct Local {
    pub datacenter: String,
    /// Capacity per local transit name, bit/s.
    pub capacities: HashMap<String, u64>,
}

/// What to gossip after a measurement: records to withdraw (peers we have no tunnel to
/// any more) and records to publish (those that changed).
#[derive(Debug, Default, PartialEq)]
pub struct Gossip {
    pub withdraw: Vec<NodeId>,
    pub publish: Vec<Body>,
}

/// A new assignment of the tunnels' own VTEPs, to be saved.
#[derive(Debug, PartialEq)]
pub struct VtepChange {
    pub assignment: vtep::Assignment,
    /// The pool has fewer addresses than there are tunnels.
    pub too_few: bool,
}

pub struct ManagerState {
    local: Local,
    started: Instant,
    /// The planner's input at the last reconcile.
    planned_from: Vec<GatewanView>,
    /// Reconcile at the next chance (the input changed, steps were applied, a key rotated).
    dirty: bool,
    last_sync: Option<Instant>,
    /// Interfaces no longer wanted, since when (unix ms).
    stale_since: HashMap<String, u64>,
    /// Interfaces whose peer had a fresh session at the last observation.
    live_sessions: HashSet<String>,
    /// Planned tunnels by id.
    rows: BTreeMap<String, Row>,
    /// Planner problems already logged.
    reported_problems: HashSet<String>,
    /// What we last gossiped per peer.
    published: HashMap<NodeId, Vec<v1::TunnelMetric>>,
    vteps: vtep::Assignment,
}

impl ManagerState {
    /// Monotonic milliseconds since the manager started, for the pure parts that take
    /// time as a number (the grace period of stale tunnels).
    pub fn mono_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }

    pub fn new(local: Local, started: Instant, vteps: vtep::Assignment) -> ManagerState {
        ManagerState {
            local,
            started,
            planned_from: Vec::new(),
            dirty: true,
            last_sync: None,
            stale_since: HashMap::new(),
            live_sessions: HashSet::new(),
            rows: BTreeMap::new(),
            reported_problems: HashSet::new(),
            published: HashMap::new(),
            vteps,
        }
    }

    /// Something outside the planner's input changed (our WireGuard key): reconcile.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The gatewans to plan from now: ourselves and every gatewan of `view` that is not
    /// gone (see [`gatewans`]).
    pub fn planner_input(
        &self,
        view: &MeshView,
        local: &GatewanView,
        reports: &BTreeMap<String, ProbeReport>,
    ) -> Vec<GatewanView> {
        gatewans(view, local, &answering_peers(&self.rows, reports))
    }

    /// Whether to reconcile now: the planner's input changed, something asked for it, or
    /// `resync` passed since the last one. Most mesh changes are tunnel metrics, gossiped
    /// every probe interval by every gatewan: they do not change the input and do not
    /// reconcile (a reconcile reads every tunnel interface back from the kernel).
    pub fn wants_reconcile(
        &mut self,
        input: Vec<GatewanView>,
        now: Instant,
        resync: Duration,
    ) -> bool {
        if input != self.planned_from {
            self.planned_from = input;
            self.dirty = true;
        }
        let due = self
            .last_sync
            .is_none_or(|at| now.saturating_duration_since(at) >= resync);
        if !(self.dirty || due) {
            return false;
        }
        self.dirty = false;
        self.last_sync = Some(now);
        true
    }

    pub fn planned_from(&self) -> &[GatewanView] {
        &self.planned_from
    }

    /// The planner's problems not logged yet (each is logged once).
    pub fn new_problems(&mut self, problems: impl IntoIterator<Item = String>) -> Vec<String> {
        problems
            .into_iter()
            .filter(|p| self.reported_problems.insert(p.clone()))
            .collect()
    }

    /// The steps from what the host has to what is wanted, and the interfaces that just
    /// became unwanted (removed once `grace` has passed). With steps to apply, the next
    /// chance reconciles again: wireguard-go may take a moment to come up. `now_ms` is
    /// monotonic ([`ManagerState::mono_ms`]).
    pub fn steps(
        &mut self,
        wanted: &[WantedTunnel],
        seen: &[SeenTunnel],
        now_ms: u64,
        grace: Duration,
    ) -> (Vec<Step>, Vec<String>) {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.live_sessions = seen
            .iter()
            .filter(|s| s.live_session)
            .map(|s| s.interface.clone())
            .collect();
        let (todo, newly_stale) = steps(wanted, seen, &self.stale_since, now_ms, grace_ms);
        for name in &newly_stale {
            self.stale_since.insert(name.clone(), now_ms);
        }
        let wanted_names: HashSet<&str> = wanted.iter().map(|w| w.interface.as_str()).collect();
        self.stale_since.retain(|n, _| {
            !wanted_names.contains(n.as_str()) && seen.iter().any(|s| &s.interface == n)
        });
        if !todo.is_empty() {
            self.dirty = true;
        }
        (todo, newly_stale)
    }

    /// The tunnels' own VTEPs from `pool` for the planned tunnels; `Some` when the
    /// assignment changed (the caller saves it). Just after a start the plan comes from a
    /// mesh still filling up: a tunnel not planned yet keeps its address for `grace` (the
    /// kernel and the fabric still use it), or a restart would move every next hop.
    pub fn assign_vteps(
        &mut self,
        planned: &[PlannedTunnel],
        pool: ipnet::Ipv4Net,
        now: Instant,
        grace: Duration,
    ) -> Option<VtepChange> {
        let mut ids: Vec<&str> = planned.iter().map(|t| t.id.as_str()).collect();
        if now.saturating_duration_since(self.started) < grace {
            ids.extend(self.vteps.by_tunnel.keys().map(String::as_str));
        }
        ids.sort_unstable();
        ids.dedup();
        let next = vtep::assign(&self.vteps, &ids, pool);
        if next == self.vteps {
            return None;
        }
        let too_few = next.by_tunnel.len() < ids.len();
        self.vteps = next.clone();
        Some(VtepChange {
            assignment: next,
            too_few,
        })
    }

    /// Keeps a row per planned tunnel (a new one starts at `now`).
    pub fn set_planned(&mut self, planned: Vec<PlannedTunnel>, now: SystemTime) {
        let keep: HashSet<&str> = planned.iter().map(|t| t.id.as_str()).collect();
        self.rows.retain(|id, _| keep.contains(id.as_str()));
        for t in planned {
            self.rows
                .entry(t.id.clone())
                .and_modify(|r| r.tunnel = t.clone())
                .or_insert_with(|| Row {
                    probe_at_once: self.live_sessions.contains(&t.interface),
                    tunnel: t,
                    started_at: now,
                    rx_bps: 0,
                    tx_bps: 0,
                    counters: None,
                });
        }
    }

    /// What the probe engine measures: every planned tunnel.
    pub fn probe_targets(&self) -> Vec<ProbeTarget> {
        self.rows
            .values()
            .map(|r| ProbeTarget {
                tunnel_id: r.tunnel.id.clone(),
                tunnel_index: r.tunnel.index,
                interface: r.tunnel.interface.clone(),
                local: SocketAddr::new(r.tunnel.local.address_v4.into(), r.tunnel.echo_port),
                peer: SocketAddr::new(r.tunnel.peer.address_v4.into(), r.tunnel.echo_port),
                // Any rule both ends agree on without talking; a tunnel found with a
                // live session (a restart) has no handshake to cross, and waiting would
                // leave one end blind to a failure for RESPONDER_WAIT.
                initiator: r.tunnel.local.node < r.tunnel.peer.node || r.probe_at_once,
            })
            .collect()
    }

    /// Usage from the interfaces' byte counters read at `now`: bit/s since the last read.
    pub fn count_usage(&mut self, links: &[LinkInfo], now: Instant) {
        let by_name: HashMap<&str, &LinkInfo> =
            links.iter().map(|l| (l.name.as_str(), l)).collect();
        for r in self.rows.values_mut() {
            if let Some(l) = by_name.get(r.tunnel.interface.as_str()) {
                if let Some((rx, tx, at)) = r.counters {
                    let secs = now.saturating_duration_since(at).as_secs_f64().max(1e-3);
                    r.rx_bps = (l.rx_bytes.saturating_sub(rx) as f64 * 8.0 / secs) as u64;
                    r.tx_bps = (l.tx_bytes.saturating_sub(tx) as f64 * 8.0 / secs) as u64;
                }
                r.counters = Some((l.rx_bytes, l.tx_bytes, now));
            }
        }
    }

    /// The table the API shows, one row per planned tunnel.
    pub fn table(
        &self,
        reports: &BTreeMap<String, ProbeReport>,
        view: &MeshView,
    ) -> Vec<v1::TunnelInfo> {
        self.rows
            .values()
            .map(|r| {
                let vtep = self.vteps.by_tunnel.get(&r.tunnel.id).copied();
                info_row(r, reports.get(&r.tunnel.id), &self.local, view, vtep)
            })
            .collect()
    }

    /// What to gossip of `table` (from [`ManagerState::table`]) at `now`: one record per
    /// peer gatewan, only when it changed. A restarted gatewan has measured nothing yet:
    /// every tunnel would read Down and bgpctl would withdraw routes that carry traffic
    /// through tunnels which never stopped (the kernel kept them). What this gatewan
    /// published before the restart stays in the mesh until the probes have spoken, or
    /// `window` has passed.
    pub fn gossip(&mut self, table: &[v1::TunnelInfo], now: Instant, window: Duration) -> Gossip {
        let mut by_peer: BTreeMap<NodeId, Vec<v1::TunnelInfo>> = BTreeMap::new();
        for (r, info) in self.rows.values().zip(table) {
            by_peer
                .entry(r.tunnel.peer.node)
                .or_default()
                .push(info.clone());
        }
        let mut out = Gossip::default();
        let mut gone: Vec<NodeId> = self
            .published
            .keys()
            .filter(|p| !by_peer.contains_key(p))
            .copied()
            .collect();
        gone.sort_unstable();
        for peer in gone {
            self.published.remove(&peer);
            out.withdraw.push(peer);
        }
        let starting = now.saturating_duration_since(self.started) < window;
        for (peer, infos) in by_peer {
            if !self.published.contains_key(&peer)
                && starting
                && infos.iter().any(|i| i.measurements == 0)
            {
                continue;
            }
            let body = metrics_record(peer, &infos);
            let Body::TunnelMetrics(m) = &body else {
                continue;
            };
            if self.published.get(&peer) != Some(&m.tunnels) {
                self.published.insert(peer, m.tunnels.clone());
                out.publish.push(body);
            }
        }
        out
    }
}

/// The gatewans the planner considers: ourselves and every gatewan of the mesh that has
/// announced a slot and a WireGuard key, unless it is gone. Gone means two signals agree
/// (ADR 0003): the mesh holds it Down *and* none of our tunnels to it answers its probes.
/// A member merely suspect, or declared down while a tunnel still answers (its gossip
/// lost, its path fine), keeps every tunnel.
pub(super) fn gatewans(
    view: &MeshView,
    local: &GatewanView,
    answering: &HashSet<NodeId>,
) -> Vec<GatewanView> {
    let mut out = vec![local.clone()];
    let mut seen = HashSet::new();
    // A restarted member is listed twice (its previous life Down): one view per node.
    for m in view
        .members
        .iter()
        .filter(|m| !m.local && (m.state != MemberState::Down || answering.contains(&m.id.node)))
    {
        if !seen.insert(m.id.node) {
            continue;
        }
        if let Some(g) = view
            .store
            .gatewan(m.id.node)
            .filter(|g| g.wireguard_key.is_some())
            .as_ref()
            .and_then(GatewanView::from_gatewan)
        {
            out.push(g);
        }
    }
    out
}

/// Peers to which at least one of our tunnels answers its probes (not Down).
fn answering_peers(
    rows: &BTreeMap<String, Row>,
    reports: &BTreeMap<String, ProbeReport>,
) -> HashSet<NodeId> {
    rows.iter()
        .filter(|(id, _)| {
            reports
                .get(*id)
                .is_some_and(|r| r.state != TunnelState::Down)
        })
        .map(|(_, r)| r.tunnel.peer.node)
        .collect()
}

struct Row {
    tunnel: PlannedTunnel,
    /// Its interface had a live session when the row was made: both ends probe at once
    /// (fixed for the row's life, as a changed probe target starts a fresh window).
    probe_at_once: bool,
    started_at: SystemTime,
    rx_bps: u64,
    tx_bps: u64,
    counters: Option<(u64, u64, std::time::Instant)>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The route distinguisher of a tunnel (type 0): an administrator field derived from the
/// tunnel id and the tunnel index as assigned number, unique because the index is.
pub fn route_distinguisher(t: &PlannedTunnel) -> String {
    let (admin, assigned) = super::plan::route_distinguisher(&t.id, t.rd_index);
    format!("{admin}:{assigned}")
}

fn capacity(t: &PlannedTunnel, capacities: &HashMap<String, u64>, view: &MeshView) -> u64 {
    let local = capacities.get(&t.local.transit).copied().unwrap_or(0);
    let peer = view
        .store
        .node(t.peer.node)
        .and_then(|n| n.transits.iter().find(|x| x.name == t.peer.transit))
        .map_or(local, |x| x.capacity_bps);
    local.min(peer)
}

fn info_row(
    row: &Row,
    report: Option<&ProbeReport>,
    local: &Local,
    view: &MeshView,
    vtep: Option<std::net::Ipv4Addr>,
) -> v1::TunnelInfo {
    let t = &row.tunnel;
    let end = |e: &super::plan::TunnelEnd| v1::TunnelEndInfo {
        name: e.name.clone(),
        transit: e.transit.clone(),
        public_endpoint: e.endpoint.to_string(),
        local_address_v4: e.address_v4.to_string(),
        local_address_v6: e.address_v6.to_string(),
        public_key: hex(&e.public_key),
        echo_port: u32::from(t.echo_port),
    };
    let peer_dc = &t.peer.datacenter;
    let mut networks: Vec<String> = view
        .store
        .networks()
        .filter(|(origin, _)| {
            view.store
                .node(*origin)
                .is_some_and(|n| &n.datacenter == peer_dc)
        })
        .map(|(_, n)| n.prefix.clone())
        .collect();
    networks.sort();
    networks.dedup();
    let m = report.map(|r| r.measurements).unwrap_or_default();
    v1::TunnelInfo {
        id: t.id.clone(),
        networks,
        datacenter: local.datacenter.clone(),
        target_datacenter: peer_dc.clone(),
        capacity_bps: capacity(t, &local.capacities, view),
        rx_bps: row.rx_bps,
        tx_bps: row.tx_bps,
        rx_bytes: row.counters.map_or(0, |c| c.0),
        tx_bytes: row.counters.map_or(0, |c| c.1),
        // Set by the API, which keeps the disabled tunnels (`drain`).
        disabled: false,
        probe_source_addr: t.local.address_v4.to_string(),
        probe_target_endpoint: SocketAddr::new(t.peer.address_v4.into(), t.echo_port).to_string(),
        measurements: m.measured,
        loss: m.loss,
        latency_ns: m.latency.as_nanos() as u64,
        jitter_ns: m.jitter.as_nanos() as u64,
        reorder: m.reorder,
        peer: t.peer.name.clone(),
        state: report
            .map_or(TunnelState::Down, |r| r.state)
            .as_str()
            .to_string(),
        interface: t.interface.clone(),
        router_mac: mac_string(&t.mac),
        rd: route_distinguisher(t),
        started_at_unix_ms: row
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        local_info: Some(end(&t.local)),
        peer_info: Some(end(&t.peer)),
        index: t.index,
        vtep: vtep.map(|v| v.to_string()).unwrap_or_default(),
        probe_counters: report.map(|r| probe_counters(&r.counters)),
    }
}

fn probe_counters(c: &ProbeCounters) -> v1::ProbeCounters {
    v1::ProbeCounters {
        sent: c.sent,
        unsent: c.unsent,
        replies: c.replies,
        requests_answered: c.requests_answered,
        malformed: c.malformed,
        foreign: c.foreign,
        unknown_seq: c.unknown_seq,
        duplicate: c.duplicate,
        late: c.late,
        stale: c.stale,
    }
}

/// The compact metrics record of our tunnels to one peer.
fn metrics_record(peer: NodeId, rows: &[v1::TunnelInfo]) -> Body {
    Body::TunnelMetrics(v1::TunnelMetrics {
        peer: Bytes::copy_from_slice(&peer.0),
        tunnels: rows
            .iter()
            .take(16)
            .map(|r| v1::TunnelMetric {
                id: Bytes::copy_from_slice(
                    uuid::Uuid::parse_str(&r.id)
                        .map(|u| *u.as_bytes())
                        .unwrap_or_default()
                        .as_slice(),
                ),
                state: match r.state.as_str() {
                    "Established" => v1::TunnelState::Established,
                    "Degraded" => v1::TunnelState::Degraded,
                    _ => v1::TunnelState::Down,
                } as i32,
                // Rounded so an idle tunnel's record does not change every interval.
                loss_ppm: ((r.loss * 1000.0).round() * 1000.0) as u32,
                latency_us: (r.latency_ns / 100_000 * 100) as u32,
                jitter_us: (r.jitter_ns / 100_000 * 100) as u32,
                reorder_ppm: ((r.reorder * 1000.0).round() * 1000.0) as u32,
                rx_bps: r.rx_bps / 100_000 * 100_000,
                tx_bps: r.tx_bps / 100_000 * 100_000,
                capacity_bps: r.capacity_bps,
                vtep: r.vtep.clone(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::stats::Measurements;
    use crate::tunnels::plan::{PlanSettings, TransitView, plan};

    fn gatewan(i: u8, dc: &str) -> GatewanView {
        GatewanView {
            id: NodeId([i; 16]),
            name: format!("gatewan{i:02}-{dc}"),
            datacenter: dc.into(),
            slot: u32::from(i),
            slot_claimed_ms: 0,
            slot_pinned: false,
            transits: vec![TransitView {
                name: "lumen".into(),
                addresses: vec![format!("198.51.100.{i}").parse().unwrap()],
                position: 0,
            }],
            public_key: vec![i; 32],
        }
    }

    /// The tunnels of gatewan 1 (sg1) to gatewans 2 and 3 (par1).
    fn planned() -> Vec<PlannedTunnel> {
        let all = [gatewan(1, "sg1"), gatewan(2, "par1"), gatewan(3, "par1")];
        let (tunnels, problems) = plan(&all[0], &all, &PlanSettings::default());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(tunnels.len(), 2);
        tunnels
    }

    fn state(started: Instant) -> ManagerState {
        let local = Local {
            datacenter: "sg1".into(),
            capacities: HashMap::from([("lumen".to_string(), 1_000_000_000)]),
        };
        ManagerState::new(local, started, vtep::Assignment::default())
    }

    fn measured(n: u32) -> ProbeReport {
        ProbeReport {
            state: if n > 0 {
                TunnelState::Established
            } else {
                TunnelState::Down
            },
            measurements: Measurements {
                measured: n,
                loss: 0.0,
                latency: Duration::from_millis(12),
                jitter: Duration::ZERO,
                reorder: 0.0,
            },
            counters: Default::default(),
            source: "10.0.0.1:1".parse().unwrap(),
            target: "10.0.0.2:1".parse().unwrap(),
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    fn reports(tunnels: &[PlannedTunnel], n: u32) -> BTreeMap<String, ProbeReport> {
        tunnels
            .iter()
            .map(|t| (t.id.clone(), measured(n)))
            .collect()
    }

    fn seen(name: &str) -> SeenTunnel {
        SeenTunnel {
            interface: name.into(),
            listen_port: None,
            fwmark: None,
            our_key: true,
            peers: Vec::new(),
            peer_allowed_ips: Default::default(),
            addresses: Default::default(),
            up: true,
            spread: true,
            live_session: false,
        }
    }

    #[test]
    fn the_first_chance_reconciles_then_only_a_changed_input_or_the_resync_period_does() {
        let t0 = Instant::now();
        let resync = Duration::from_secs(30);
        let mut s = state(t0);
        let input = vec![gatewan(1, "sg1"), gatewan(2, "par1")];
        assert!(s.wants_reconcile(input.clone(), t0, resync));
        assert!(!s.wants_reconcile(input.clone(), t0 + Duration::from_secs(1), resync));
        let mut more = input.clone();
        more.push(gatewan(3, "par1"));
        assert!(s.wants_reconcile(more.clone(), t0 + Duration::from_secs(2), resync));
        assert_eq!(s.planned_from(), more.as_slice());
        assert!(!s.wants_reconcile(more.clone(), t0 + Duration::from_secs(31), resync));
        assert!(s.wants_reconcile(more.clone(), t0 + Duration::from_secs(32), resync));
        s.mark_dirty();
        assert!(s.wants_reconcile(more, t0 + Duration::from_secs(33), resync));
    }

    #[test]
    fn a_planner_problem_is_logged_once() {
        let mut s = state(Instant::now());
        let first = s.new_problems(["slot 3 twice".to_string(), "no key".to_string()]);
        assert_eq!(first, ["slot 3 twice", "no key"]);
        let again = s.new_problems(["no key".to_string(), "new".to_string()]);
        assert_eq!(again, ["new"]);
    }

    #[test]
    fn an_unwanted_interface_waits_the_grace_period_then_is_deleted_and_forgotten() {
        let t = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut s = state(t);
        assert!(s.wants_reconcile(Vec::new(), t, hour));
        let grace = Duration::from_secs(10);
        let old = [seen("sdwan99")];
        let (todo, stale) = s.steps(&[], &old, 1_000, grace);
        assert_eq!(stale, ["sdwan99"]);
        assert!(todo.is_empty(), "{todo:?}");
        let (todo, stale) = s.steps(&[], &old, 5_000, grace);
        assert!(stale.is_empty() && todo.is_empty(), "{todo:?}");
        assert!(!s.wants_reconcile(Vec::new(), t, hour));
        let (todo, _) = s.steps(&[], &old, 11_001, grace);
        assert_eq!(
            todo,
            [Step::Delete {
                interface: "sdwan99".into()
            }]
        );
        // Applied steps ask for another look soon (wireguard-go may still be starting).
        assert!(s.wants_reconcile(Vec::new(), t, hour));
        // Once the interface is gone it is forgotten: back later, it waits again.
        let _ = s.steps(&[], &[], 12_000, grace);
        let (todo, stale) = s.steps(&[], &old, 13_000, grace);
        assert_eq!(stale, ["sdwan99"]);
        assert!(todo.is_empty(), "{todo:?}");
    }

    #[test]
    fn usage_is_the_byte_counter_delta_over_the_time_between_reads() {
        let t0 = Instant::now();
        let mut s = state(t0);
        let tunnels = planned();
        s.set_planned(tunnels.clone(), SystemTime::UNIX_EPOCH);
        let link = |rx: u64, tx: u64| LinkInfo {
            name: tunnels[0].interface.clone(),
            index: 7,
            up: true,
            rx_bytes: rx,
            tx_bytes: tx,
        };
        s.count_usage(&[link(1_000, 5_000)], t0);
        s.count_usage(&[link(126_000, 5_000)], t0 + Duration::from_secs(1));
        let view = MeshView::default();
        let table = s.table(&BTreeMap::new(), &view);
        let row = table
            .iter()
            .find(|r| r.interface == tunnels[0].interface)
            .unwrap();
        assert_eq!((row.rx_bps, row.tx_bps), (1_000_000, 0));
        // A counter that went back (interface recreated) reads 0, not a huge rate.
        s.count_usage(&[link(10, 10)], t0 + Duration::from_secs(2));
        let table = s.table(&BTreeMap::new(), &view);
        let row = table
            .iter()
            .find(|r| r.interface == tunnels[0].interface)
            .unwrap();
        assert_eq!((row.rx_bps, row.tx_bps), (0, 0));
    }

    #[test]
    fn every_planned_tunnel_is_probed_and_one_end_initiates() {
        let mut s = state(Instant::now());
        let tunnels = planned();
        s.set_planned(tunnels.clone(), SystemTime::UNIX_EPOCH);
        let targets = s.probe_targets();
        assert_eq!(targets.len(), 2);
        // Gatewan 1 has the lower node id of both pairs.
        assert!(targets.iter().all(|t| t.initiator));
        s.set_planned(tunnels[..1].to_vec(), SystemTime::UNIX_EPOCH);
        assert_eq!(s.probe_targets().len(), 1);
    }

    /// Gatewan 2 has the higher node id: the responder, which waits for the initiator's
    /// probes on a new tunnel, unless the tunnel was found with a live session.
    #[test]
    fn the_responder_end_probes_at_once_a_tunnel_found_with_a_live_session() {
        let all = [gatewan(1, "sg1"), gatewan(2, "par1"), gatewan(3, "par1")];
        let (tunnels, _) = plan(&all[1], &all, &PlanSettings::default());
        assert_eq!(tunnels.len(), 1, "to gatewan 1");
        let name = tunnels[0].interface.clone();
        let grace = Duration::from_secs(60);

        let mut fresh = state(Instant::now());
        fresh.steps(&[], &[seen(&name)], 0, grace);
        fresh.set_planned(tunnels.clone(), SystemTime::UNIX_EPOCH);
        assert!(
            !fresh.probe_targets()[0].initiator,
            "a new tunnel: it waits"
        );

        let mut restarted = state(Instant::now());
        let live = SeenTunnel {
            live_session: true,
            ..seen(&name)
        };
        restarted.steps(&[], &[live], 0, grace);
        restarted.set_planned(tunnels.clone(), SystemTime::UNIX_EPOCH);
        assert!(
            restarted.probe_targets()[0].initiator,
            "no handshake to cross"
        );
        // Kept for the row's life: a changed target would start a fresh window.
        restarted.steps(&[], &[seen(&name)], 1_000, grace);
        restarted.set_planned(tunnels, SystemTime::UNIX_EPOCH);
        assert!(restarted.probe_targets()[0].initiator);
    }

    #[test]
    fn a_restarted_gatewan_gossips_no_unmeasured_tunnel_within_the_probe_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        let mut s = state(t0);
        let tunnels = planned();
        s.set_planned(tunnels.clone(), SystemTime::UNIX_EPOCH);
        let view = MeshView::default();
        let unmeasured = s.table(&reports(&tunnels, 0), &view);
        assert_eq!(
            s.gossip(&unmeasured, t0 + Duration::from_secs(1), window),
            Gossip::default()
        );
        let measured = s.table(&reports(&tunnels, 5), &view);
        let g = s.gossip(&measured, t0 + Duration::from_secs(2), window);
        assert_eq!(g.publish.len(), 2, "one record per peer");
        // Unchanged metrics are not gossiped again.
        assert!(
            s.gossip(&measured, t0 + Duration::from_secs(3), window)
                .publish
                .is_empty()
        );
        // After the window even an unmeasured tunnel is told (as Down).
        let mut s = state(t0);
        s.set_planned(tunnels, SystemTime::UNIX_EPOCH);
        assert_eq!(s.gossip(&unmeasured, t0 + window, window).publish.len(), 2);
    }

    #[test]
    fn a_peer_with_no_tunnel_left_has_its_record_withdrawn_once() {
        let t0 = Instant::now();
        let mut s = state(t0);
        let tunnels = planned();
        s.set_planned(tunnels.clone(), SystemTime::UNIX_EPOCH);
        let view = MeshView::default();
        let table = s.table(&reports(&tunnels, 5), &view);
        assert_eq!(s.gossip(&table, t0, Duration::ZERO).publish.len(), 2);
        s.set_planned(tunnels[..1].to_vec(), SystemTime::UNIX_EPOCH);
        let table = s.table(&reports(&tunnels, 5), &view);
        let g = s.gossip(&table, t0, Duration::ZERO);
        assert_eq!(g.withdraw, [tunnels[1].peer.node]);
        assert!(g.publish.is_empty());
        assert!(s.gossip(&table, t0, Duration::ZERO).withdraw.is_empty());
    }

    #[test]
    fn a_tunnel_not_planned_yet_keeps_its_vtep_during_the_grace_period_after_start() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        let pool: ipnet::Ipv4Net = "10.1.254.0/29".parse().unwrap();
        let tunnels = planned();
        let mut before = state(t0);
        let first = before.assign_vteps(&tunnels, pool, t0, grace).unwrap();
        assert!(!first.too_few);
        // Restarted, with only one tunnel planned so far: both keep their address.
        let mut s = ManagerState::new(
            Local {
                datacenter: "sg1".into(),
                capacities: HashMap::new(),
            },
            t0,
            first.assignment.clone(),
        );
        assert_eq!(
            s.assign_vteps(&tunnels[..1], pool, t0 + Duration::from_secs(5), grace),
            None
        );
        // After the grace period the unplanned tunnel's address is released.
        let later = s
            .assign_vteps(&tunnels[..1], pool, t0 + grace, grace)
            .unwrap();
        assert_eq!(later.assignment.by_tunnel.len(), 1);
        assert_eq!(
            later.assignment.by_tunnel.get(&tunnels[0].id),
            first.assignment.by_tunnel.get(&tunnels[0].id)
        );
    }
}
