//! The tunnel manager: the one owner of this gatewan's tunnels. On every mesh change (and
//! periodically) it plans, observes the host and applies the difference; every probe
//! interval it gathers probe reports and interface counters, gossips the metrics and
//! publishes the table the API shows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gatewan_proto::v1::{self, record::Body};
use tokio::sync::watch;
use tracing::{info, warn};

/// Interfaces configured at once; each mostly waits (process start, netlink).
const APPLY_CONCURRENCY: usize = 64;

/// Applies a step, retrying briefly while the kernel says the device is busy: a
/// wireguard-go interface answers EBUSY to address changes for a moment after it starts
/// (seen with 16 interfaces coming up at once).
async fn apply_step(system: &System, step: &Step) -> std::io::Result<()> {
    let mut wait = Duration::from_millis(20);
    for _ in 0..6 {
        match system.apply(step).await {
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
    system.apply(step).await
}
use futures_util::StreamExt as _;

use super::plan::{GatewanView, PlanSettings, PlannedTunnel, plan};
use super::reconcile::{Step, WantedTunnel, steps};
use super::system::{System, WireguardMode};
use crate::probe::engine::{self, ProbeHandle, ProbeReport, ProbeSettings, ProbeTarget};
use crate::probe::stats::TunnelState;
use gatewan_mesh::driver::{MeshHandle, MeshView};
use gatewan_mesh::{MemberState, NodeId};

pub struct ManagerConfig {
    pub local: GatewanView,
    /// Capacity per local transit name, bit/s.
    pub capacities: HashMap<String, u64>,
    pub private_key: [u8; 32],
    pub plan: PlanSettings,
    pub wireguard: WireguardMode,
    pub grace: Duration,
    pub probe: ProbeSettings,
    /// How often the host is re-checked even when the mesh is quiet.
    pub resync: Duration,
    /// Source routing per local transit name (transits with a gateway).
    pub routing: HashMap<String, crate::transit::TransitRouting>,
    /// `fabric.tunnel_vteps` and the file in state_dir that keeps the assignment.
    pub tunnel_vteps: Option<(ipnet::Ipv4Net, std::path::PathBuf)>,
}

/// What the API shows.
pub type TunnelTable = Arc<Vec<v1::TunnelInfo>>;

/// Talks to the tunnel manager task.
#[derive(Clone)]
pub struct TunnelsHandle {
    pub table: watch::Receiver<TunnelTable>,
    rotate: tokio::sync::mpsc::Sender<([u8; 32], tokio::sync::oneshot::Sender<()>)>,
}

impl TunnelsHandle {
    /// Switches every tunnel to `private_key` and announces its public key in our
    /// NodeRecord. Returns once the manager has taken the key (tunnels follow at once).
    pub async fn rotate_key(&self, private_key: [u8; 32]) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.rotate
            .send((private_key, tx))
            .await
            .map_err(|_| "the tunnel manager has stopped".to_string())?;
        rx.await
            .map_err(|_| "the tunnel manager has stopped".to_string())
    }
}

pub fn spawn(cfg: ManagerConfig, mesh: MeshHandle) -> std::io::Result<TunnelsHandle> {
    let system = System::new(cfg.wireguard, cfg.private_key, &cfg.plan.interface_prefix)?;
    info!(backend = ?system.backend(), "tunnels: WireGuard backend");
    let probes = engine::spawn(cfg.probe.clone());
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    let (rotate_tx, rotate_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(run(cfg, mesh, system, probes, tx, rotate_rx));
    Ok(TunnelsHandle {
        table: rx,
        rotate: rotate_tx,
    })
}

/// Our NodeRecord as the mesh holds it, with `public_key` in place of the old one.
async fn announce_public_key(mesh: &MeshHandle, local: NodeId, public_key: &[u8]) {
    let Some(mut record) = mesh.view().store.node(local).cloned() else {
        warn!("our NodeRecord is not in the mesh store; the new key is announced at restart");
        return;
    };
    record.wireguard_public_key = Bytes::copy_from_slice(public_key);
    if let Err(e) = mesh.publish(Body::Node(record)).await {
        warn!(error = %e, "cannot announce the new WireGuard public key");
    }
}

fn unix_ms() -> u64 {
    gatewan_mesh::driver::unix_ms()
}

/// The gatewans the planner considers: ourselves and every gatewan of the mesh that has
/// announced a slot and a WireGuard key, unless it is gone. Gone means two signals agree
/// (ADR 0003): the mesh holds it Down *and* none of our tunnels to it answers its probes.
/// A member merely suspect, or declared down while a tunnel still answers (its gossip
/// lost, its path fine), keeps every tunnel.
fn gatewans(view: &MeshView, local: &GatewanView, answering: &HashSet<NodeId>) -> Vec<GatewanView> {
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

fn capacity(t: &PlannedTunnel, cfg: &ManagerConfig, view: &MeshView) -> u64 {
    let local = cfg.capacities.get(&t.local.transit).copied().unwrap_or(0);
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
    cfg: &ManagerConfig,
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
        datacenter: cfg.local.datacenter.clone(),
        target_datacenter: peer_dc.clone(),
        capacity_bps: capacity(t, cfg, view),
        rx_bps: row.rx_bps,
        tx_bps: row.tx_bps,
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

async fn run(
    mut cfg: ManagerConfig,
    mesh: MeshHandle,
    mut system: System,
    probes: ProbeHandle,
    table_tx: watch::Sender<TunnelTable>,
    mut rotate_rx: tokio::sync::mpsc::Receiver<([u8; 32], tokio::sync::oneshot::Sender<()>)>,
) {
    let mut mesh_rx = mesh.subscribe();
    let mut tick = tokio::time::interval(cfg.probe.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sync = std::time::Instant::now() - cfg.resync;
    let mut dirty = true;
    let mut planned_from: Vec<GatewanView> = Vec::new();
    let mut stale_since: HashMap<String, u64> = HashMap::new();
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut reported_problems: HashSet<String> = HashSet::new();
    let mut published: HashMap<NodeId, Vec<v1::TunnelMetric>> = HashMap::new();
    let started = std::time::Instant::now();
    let mut vteps = cfg
        .tunnel_vteps
        .as_ref()
        .map(|(_, path)| super::vtep::load(path))
        .unwrap_or_default();
    let reports = probes.reports();
    let mut reports_rx = probes.reports();
    loop {
        // Mesh changes reconcile at once (new peers get tunnels without waiting a tick);
        // usage, metrics and the table follow the probe interval.
        let measure = tokio::select! {
            r = mesh_rx.changed() => {
                if r.is_err() { return; }
                // Let a burst of gossip settle into one reconcile.
                tokio::time::sleep(Duration::from_millis(50)).await;
                mesh_rx.borrow_and_update();
                false
            }
            _ = tick.tick() => true,
            Some((key, done)) = rotate_rx.recv() => {
                // Our side first: the peers' handshakes with the new key are then answered
                // as soon as they have it, one gossip round later.
                system.set_private_key(key);
                let public = wireguard_control::Key(key).get_public().0.to_vec();
                cfg.local.public_key = public.clone();
                announce_public_key(&mesh, cfg.local.id, &public).await;
                info!("WireGuard key rotated");
                let _ = done.send(());
                dirty = true;
                false
            }
            // Fresh probe reports: show them at once, so the API lags the probes by nothing.
            r = reports_rx.changed() => {
                if r.is_err() { return; }
                true
            }
        };
        let view = mesh.view();
        // Most mesh changes are tunnel metrics, gossiped every probe interval by every
        // gatewan: only a change of the planner's input means a reconcile (it reads every
        // tunnel interface back from the kernel).
        let answering = answering_peers(&rows, &reports.borrow());
        let input = gatewans(&view, &cfg.local, &answering);
        if input != planned_from {
            planned_from = input;
            dirty = true;
        }
        if dirty || last_sync.elapsed() >= cfg.resync {
            dirty = false;
            last_sync = std::time::Instant::now();
            let (planned, problems) = plan(&cfg.local, &planned_from, &cfg.plan);
            for p in problems {
                if reported_problems.insert(p.to_string()) {
                    warn!(problem = %p, "tunnel not planned");
                }
            }
            for r in cfg.routing.values() {
                if let Err(e) = crate::transit::ensure(system.handle(), r).await {
                    warn!(error = %e, interface = %r.interface, "cannot set up transit source routing; retried");
                }
            }
            let wanted: Vec<WantedTunnel> = planned
                .iter()
                .filter_map(|t| {
                    WantedTunnel::from_plan(t, cfg.routing.get(&t.local.transit).map(|r| r.mark))
                })
                .collect();
            let reconcile_started = std::time::Instant::now();
            match system.observe().await {
                Ok(seen) => {
                    let observed = reconcile_started.elapsed();
                    let (todo, newly_stale) = steps(
                        &wanted,
                        &seen,
                        &stale_since,
                        unix_ms(),
                        cfg.grace.as_millis() as u64,
                    );
                    for name in newly_stale {
                        info!(interface = %name, grace = ?cfg.grace, "tunnel no longer wanted; removed after the grace period");
                        stale_since.insert(name, unix_ms());
                    }
                    let wanted_names: HashSet<&str> =
                        wanted.iter().map(|w| w.interface.as_str()).collect();
                    stale_since.retain(|n, _| {
                        !wanted_names.contains(n.as_str()) && seen.iter().any(|s| &s.interface == n)
                    });
                    // One interface's steps in order, interfaces side by side: bringing up a
                    // wireguard-go interface waits on a process start (and wireguard-control
                    // sleeps 100 ms for its socket), so 100 tunnels one after the other took
                    // 14 s.
                    let mut by_interface: BTreeMap<&str, Vec<&Step>> = BTreeMap::new();
                    for step in &todo {
                        by_interface.entry(step.interface()).or_default().push(step);
                    }
                    futures_util::stream::iter(by_interface.into_values())
                        .for_each_concurrent(APPLY_CONCURRENCY, |steps| {
                            let system = &system;
                            async move {
                                for step in steps {
                                    if let Err(e) = apply_step(system, step).await {
                                        warn!(error = %e, ?step, "tunnel step failed; retried at the next reconcile");
                                        break;
                                    }
                                    match step {
                                        Step::Configure(w) => {
                                            info!(interface = %w.interface, endpoint = %w.endpoint, "tunnel configured")
                                        }
                                        Step::Delete { interface } => {
                                            info!(%interface, "stale tunnel removed")
                                        }
                                        _ => {}
                                    }
                                }
                            }
                        })
                        .await;
                    if !todo.is_empty() {
                        info!(
                            interfaces = seen.len(),
                            steps = todo.len(),
                            observed = ?observed,
                            took = ?reconcile_started.elapsed(),
                            "tunnels reconciled"
                        );
                        // Check again soon: wireguard-go may take a moment to come up.
                        dirty = true;
                    }
                }
                Err(e) => warn!(error = %e, "cannot observe tunnel interfaces"),
            }
            if let Some((pool, path)) = &cfg.tunnel_vteps {
                let mut ids: Vec<&str> = planned.iter().map(|t| t.id.as_str()).collect();
                // Just after a start the plan comes from a mesh still filling up: a tunnel
                // not planned yet keeps its address for the grace period (the kernel and
                // the fabric still use it), or a restart would move every next hop.
                if started.elapsed() < cfg.grace {
                    ids.extend(vteps.by_tunnel.keys().map(String::as_str));
                }
                ids.sort_unstable();
                ids.dedup();
                let next = super::vtep::assign(&vteps, &ids, *pool);
                if next != vteps {
                    if next.by_tunnel.len() < ids.len() {
                        warn!(%pool, tunnels = ids.len(), "fabric.tunnel_vteps has too few addresses: some tunnels use the gatewan's VTEP");
                    }
                    if let Err(e) = super::vtep::save(path, &next) {
                        warn!(error = %e, path = %path.display(), "cannot save the tunnels' VTEP addresses");
                    }
                    vteps = next;
                }
            }
            let now = SystemTime::now();
            let keep: HashSet<&str> = planned.iter().map(|t| t.id.as_str()).collect();
            rows.retain(|id, _| keep.contains(id.as_str()));
            for t in planned {
                rows.entry(t.id.clone())
                    .and_modify(|r| r.tunnel = t.clone())
                    .or_insert(Row {
                        tunnel: t,
                        started_at: now,
                        rx_bps: 0,
                        tx_bps: 0,
                        counters: None,
                    });
            }
            probes.set_targets(
                rows.values()
                    .map(|r| ProbeTarget {
                        tunnel_id: r.tunnel.id.clone(),
                        tunnel_index: r.tunnel.index,
                        interface: r.tunnel.interface.clone(),
                        local: SocketAddr::new(
                            r.tunnel.local.address_v4.into(),
                            r.tunnel.echo_port,
                        ),
                        peer: SocketAddr::new(r.tunnel.peer.address_v4.into(), r.tunnel.echo_port),
                        // Any rule both ends agree on without talking.
                        initiator: r.tunnel.local.node < r.tunnel.peer.node,
                    })
                    .collect(),
            );
        }
        if !measure {
            continue;
        }
        // Usage from the interfaces' byte counters.
        if let Ok(links) = system.link_stats().await {
            let by_name: HashMap<&str, &super::system::LinkInfo> =
                links.iter().map(|l| (l.name.as_str(), l)).collect();
            let now = std::time::Instant::now();
            for r in rows.values_mut() {
                if let Some(l) = by_name.get(r.tunnel.interface.as_str()) {
                    if let Some((rx, tx, at)) = r.counters {
                        let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                        r.rx_bps = (l.rx_bytes.saturating_sub(rx) as f64 * 8.0 / secs) as u64;
                        r.tx_bps = (l.tx_bytes.saturating_sub(tx) as f64 * 8.0 / secs) as u64;
                    }
                    r.counters = Some((l.rx_bytes, l.tx_bytes, now));
                }
            }
        }
        let reports_now = reports.borrow().clone();
        let table: Vec<v1::TunnelInfo> = rows
            .values()
            .map(|r| {
                let vtep = vteps.by_tunnel.get(&r.tunnel.id).copied();
                info_row(r, reports_now.get(&r.tunnel.id), &cfg, &view, vtep)
            })
            .collect();
        // Gossip: one record per peer gatewan, only when it changed.
        let mut by_peer: BTreeMap<NodeId, Vec<v1::TunnelInfo>> = BTreeMap::new();
        for (r, info) in rows.values().zip(&table) {
            by_peer
                .entry(r.tunnel.peer.node)
                .or_default()
                .push(info.clone());
        }
        let gone: Vec<NodeId> = published
            .keys()
            .filter(|p| !by_peer.contains_key(p))
            .copied()
            .collect();
        for peer in gone {
            published.remove(&peer);
            if let Err(e) = mesh
                .withdraw(v1::RecordKind::TunnelMetrics, peer.to_string())
                .await
            {
                warn!(error = %e, "cannot withdraw tunnel metrics");
            }
        }
        for (peer, infos) in by_peer {
            // A restarted gatewan has measured nothing yet: every tunnel would read Down
            // and bgpctl would withdraw routes that carry traffic through tunnels which
            // never stopped (the kernel kept them). What this gatewan published before
            // the restart stays in the mesh until the probes have spoken, or a window.
            if !published.contains_key(&peer)
                && started.elapsed() < cfg.probe.window
                && infos.iter().any(|i| i.measurements == 0)
            {
                continue;
            }
            let body = metrics_record(peer, &infos);
            let Body::TunnelMetrics(m) = &body else {
                continue;
            };
            if published.get(&peer) != Some(&m.tunnels) {
                published.insert(peer, m.tunnels.clone());
                if let Err(e) = mesh.publish(body).await {
                    warn!(error = %e, "cannot publish tunnel metrics");
                }
            }
        }
        table_tx.send_replace(Arc::new(table));
    }
}
