//! The data plane manager: the one owner of the data plane's host state. It reconciles at
//! once when its inputs change (a tunnel's state, so local repair follows the probes with
//! no delay; the networks in the mesh) and every `resync` anyway, which repairs anything
//! changed by hand.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::bpf::{self, FastPath};
use super::fastpath;
use super::filter;
use super::plan::{
    self, FabricSettings, Inputs, LocalNetwork, Problem, RemoteNetwork, TunnelInput, VXLAN_DEVICE,
};
use super::reconcile::{self, Step};
use super::system::{self, Snapshot, System};
use crate::tunnels::manager::TunnelTable;
use gatewan_mesh::driver::{MeshHandle, MeshView};

pub struct DataplaneConfig {
    pub fabric: FabricSettings,
    pub datacenter: String,
    /// `networks[]` of the config.
    pub static_networks: Vec<LocalNetwork>,
    pub resync: Duration,
    /// `fabric.tunnel_vteps`: made local (any address of it), so VXLAN sent to a tunnel's
    /// own VTEP is received (ADR 0007).
    pub tunnel_vteps: Option<ipnet::Ipv4Net>,
    /// `fabric.fast_path`.
    pub fast_path: bool,
}

/// What `/metrics` shows.
#[derive(Debug, Clone, Default)]
pub struct DataplaneStats {
    pub reconciles: u64,
    pub steps: u64,
    pub errors: u64,
    pub last_reconcile: Duration,
    /// Tunnel interface → packets the fabric sent to its Router's MAC (the macvlan's rx).
    pub ingress_packets: BTreeMap<String, u64>,
    /// Packets sent to the fabric (the VXLAN device's tx).
    pub egress_packets: u64,
    /// Tunnel interface → packets it brought in from outside its datacenter's networks,
    /// dropped by the source filter.
    pub spoofed_packets: BTreeMap<String, u64>,
    /// The fast path's counters; None while it is off (`fabric.fast_path: false`, or the
    /// kernel refused it).
    pub fast_path: Option<bpf::Counters>,
    /// Fast-path map changes that failed (retried at the next reconcile).
    pub fast_path_errors: u64,
}

#[derive(Clone)]
pub struct DataplaneHandle {
    pub stats: watch::Receiver<Arc<DataplaneStats>>,
}

/// One reconcile's outcome.
#[derive(Debug)]
pub struct Report {
    pub steps: Vec<Step>,
    pub errors: Vec<(Step, std::io::Error)>,
    pub problems: Vec<Problem>,
    pub took: Duration,
    /// The host as read before applying.
    pub snapshot: Snapshot,
    /// What was planned, and from which inputs (with `present` and `installed` as read).
    pub desired: plan::Desired,
    pub inputs: Inputs,
}

/// After a start, removals wait this long: the mesh (networks, peers and so the tunnel
/// table) is still filling up, and what is not known yet must not be taken for stale.
pub const STARTUP_HOLD: Duration = Duration::from_secs(30);

fn is_removal(s: &Step) -> bool {
    matches!(
        s,
        Step::DeleteRule(_)
            | Step::DeleteRoute { .. }
            | Step::DeleteFdb { .. }
            | Step::DeleteNeighbour { .. }
            | Step::DeleteMacvlan { .. }
    )
}

/// Observes the host, plans with the links found there, applies the difference. `inputs`
/// without `present`, which is filled from the host. Without `removals`, only additions
/// and in-place changes are made (see [`STARTUP_HOLD`]).
pub async fn reconcile_once(system: &System, inputs: &Inputs) -> std::io::Result<Report> {
    reconcile_with(system, inputs, true).await
}

pub async fn reconcile_with(
    system: &System,
    inputs: &Inputs,
    removals: bool,
) -> std::io::Result<Report> {
    let started = Instant::now();
    let Pending {
        snapshot,
        steps,
        problems,
        desired,
        inputs,
    } = pending(system, inputs, removals).await?;
    let mut errors = Vec::new();
    for step in &steps {
        if let Err(e) = system.apply(step, &snapshot).await {
            errors.push((step.clone(), e));
        }
    }
    Ok(Report {
        steps,
        errors,
        problems,
        took: started.elapsed(),
        snapshot,
        desired,
        inputs,
    })
}

/// What a reconcile is about to apply, in order, and what it saw.
pub struct Pending {
    /// The host as read, which [`System::apply`] resolves names against.
    pub snapshot: Snapshot,
    pub steps: Vec<Step>,
    pub problems: Vec<Problem>,
    pub desired: plan::Desired,
    pub inputs: Inputs,
}

/// The first half of a reconcile: observes the host, plans with the links found there and
/// diffs (reverse-path filtering is relaxed on the way, see [`plan::rp_filter_writes`]).
/// Without `removals`, removal steps are left out (see [`STARTUP_HOLD`]).
pub async fn pending(system: &System, inputs: &Inputs, removals: bool) -> std::io::Result<Pending> {
    let snapshot = system.snapshot().await?;
    let mut inputs = inputs.clone();
    inputs.present = snapshot.present();
    inputs.installed = snapshot.installed();
    let (want, problems) = plan::plan(&inputs);
    let ours: BTreeSet<String> = want
        .macvlans
        .keys()
        .cloned()
        .chain(inputs.tunnels.iter().map(|t| t.interface.clone()))
        .chain([VXLAN_DEVICE.to_string()])
        .collect();
    match System::relax_rp_filter(&ours) {
        Ok(w) if !w.is_empty() => {
            info!(writes = ?w, "reverse-path filtering relaxed for the data plane (other devices keep their effective value)")
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot adjust rp_filter"),
    }
    let sysctls = want
        .sysctls
        .keys()
        .map(|p| (p.clone(), system::read_sysctl(p)))
        .collect();
    let mut steps = reconcile::steps(&want, &snapshot.observed(sysctls));
    if !removals {
        steps.retain(|s| !is_removal(s));
    }
    Ok(Pending {
        snapshot,
        steps,
        problems,
        desired: want,
        inputs,
    })
}

/// What the source filter has applied, and the counts of tables it replaced (an applied
/// table starts its counters from zero).
#[derive(Default)]
struct FilterState {
    script: Option<String>,
    carried: BTreeMap<String, u64>,
    last_error: Option<String>,
    last_read: Option<Instant>,
}

const FILTER_READ_EVERY: Duration = Duration::from_secs(5);

/// Which script, if any, replaces our nftables table now. `table_matches`: a table of ours
/// is there with a counter for every tunnel of `full`. Settled, the full filter replaces
/// anything else. During the startup hold the networks of the other datacenters are still
/// arriving and a filter made of half of them would drop live traffic, so the table of the
/// previous run stays; but with no such table (the first start, a reboot, a new tunnel)
/// the hold's table goes in at once: tenant traffic flows from the first reconcile, and a
/// TCP connection opened without the MSS clamp keeps its segment size for its lifetime.
fn filter_to_apply<'a>(
    settled: bool,
    table_matches: bool,
    applied: Option<&str>,
    full: &'a str,
    hold: &'a str,
) -> Option<&'a str> {
    if settled {
        (!table_matches || applied != Some(full)).then_some(full)
    } else {
        (!table_matches).then_some(hold)
    }
}

/// Applies the source filter (see [`filter_to_apply`]) and reads its counters.
async fn source_filter(
    inputs: &Inputs,
    settled: bool,
    state: &mut FilterState,
    stats: &mut DataplaneStats,
) {
    let allowed = filter::allowed(inputs);
    let full = filter::script(&allowed, true);
    let hold = filter::script(&allowed, false);
    let wanted = if settled { &full } else { &hold };
    // Reading the counters spawns `nft`: every few seconds is enough for /metrics and to
    // notice a table deleted by hand, and keeps a busy gatewan's reconciles cheap.
    if state.script.as_deref() == Some(wanted.as_str())
        && state
            .last_read
            .is_some_and(|t| t.elapsed() < FILTER_READ_EVERY)
    {
        return;
    }
    state.last_read = Some(Instant::now());
    let counters = System::filter_counters()
        .await
        .ok()
        .and_then(|j| filter::parse_counters(&j, &allowed));
    let apply = filter_to_apply(
        settled,
        counters.is_some(),
        state.script.as_deref(),
        &full,
        &hold,
    );
    if let Some(script) = apply {
        for (i, n) in counters.iter().flatten() {
            *state.carried.entry(i.clone()).or_default() += n;
        }
        match System::apply_filter(script).await {
            Ok(()) => {
                if settled {
                    if state.script.as_deref() != Some(full.as_str()) {
                        info!(
                            tunnels = allowed.len(),
                            "source filter applied (nftables table inet gatewan)"
                        );
                    }
                } else {
                    info!(
                        tunnels = allowed.len(),
                        "MSS clamp applied; the source filter follows when the startup hold ends"
                    );
                }
                state.script = Some(script.to_string());
                state.last_error = None;
            }
            Err(e) => {
                let m = e.to_string();
                if state.last_error.as_ref() != Some(&m) {
                    warn!(error = %m, "cannot apply the source filter; retried at the next reconcile");
                    state.last_error = Some(m);
                }
                state.script = None;
            }
        }
    }
    let now = if apply.is_some() {
        BTreeMap::new()
    } else {
        counters.unwrap_or_default()
    };
    stats.spoofed_packets = allowed
        .keys()
        .map(|i| {
            let n = now.get(i).copied().unwrap_or(0) + state.carried.get(i).copied().unwrap_or(0);
            (i.clone(), n)
        })
        .collect();
}

/// The fast path (ADR 0067) and what it last complained of, logged once.
struct FastPathState {
    loaded: Option<FastPath>,
    last_error: Option<String>,
    /// Interfaces (and their index) cleared of an earlier run's filters while the fast
    /// path is off.
    cleared: BTreeSet<(String, u32)>,
}

impl FastPathState {
    fn start(enabled: bool) -> FastPathState {
        let loaded = if enabled {
            match FastPath::load() {
                Ok(f) => {
                    info!(
                        "fast path loaded (ADR 0067): tenant packets skip the kernel's VXLAN, rules and nftables where they can"
                    );
                    Some(f)
                }
                Err(e) => {
                    warn!(error = %e, "fast path unavailable; every tenant packet takes the kernel path");
                    None
                }
            }
        } else {
            info!(
                "fast path off (fabric.fast_path: false): every tenant packet takes the kernel path"
            );
            None
        };
        FastPathState {
            loaded,
            last_error: None,
            cleared: BTreeSet::new(),
        }
    }

    /// Brings the maps and the attachments to what this pass planned, and reads the
    /// counters. Returns the failed changes.
    fn sync(
        &mut self,
        report: &Report,
        tunnel_vteps: Option<ipnet::Ipv4Net>,
        stats: &mut DataplaneStats,
    ) -> u64 {
        let failures = match self.loaded.as_mut() {
            Some(fp) => {
                let mut failures = sync_fast_path(fp, report, tunnel_vteps);
                match fp.counters() {
                    Ok(c) => stats.fast_path = Some(c),
                    Err(e) => failures.push(e.to_string()),
                }
                failures
            }
            None => {
                for (name, program, index) in
                    wanted_attachments(report, &observed(&report.snapshot))
                {
                    if self.cleared.insert((name.clone(), index)) {
                        bpf::remove_leftover(program, &name);
                    }
                }
                Vec::new()
            }
        };
        match failures.first() {
            Some(first) if self.last_error.as_ref() != Some(first) => {
                warn!(error = %first, failed = failures.len(), "fast path changes failed; retried at the next reconcile");
                self.last_error = Some(first.clone());
            }
            Some(_) => {}
            None => {
                if self.last_error.take().is_some() {
                    info!("fast path changes applied again");
                }
            }
        }
        failures.len() as u64
    }
}

/// What the fast path's plan needs from the host, as this pass read it.
fn observed(snapshot: &Snapshot) -> fastpath::Observed {
    fastpath::Observed {
        interfaces: snapshot
            .links
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    fastpath::Interface {
                        index: l.index,
                        mtu: l.mtu,
                        mac: l.mac,
                    },
                )
            })
            .collect(),
        local: snapshot.local.clone(),
    }
}

/// (interface, program, index) for every attachment the reconcile of `report` calls for.
fn wanted_attachments(
    report: &Report,
    observed: &fastpath::Observed,
) -> Vec<(String, &'static str, u32)> {
    let at = fastpath::attachments(&report.desired, &report.inputs, observed);
    at.fabric
        .map(|i| {
            (
                report.desired.vxlan.underlay.clone(),
                bpf::FABRIC_PROGRAM,
                i,
            )
        })
        .into_iter()
        .chain(
            at.tunnels
                .iter()
                .map(|(n, i)| (n.clone(), bpf::TUNNEL_PROGRAM, *i)),
        )
        .collect()
}

/// Brings the fast path's maps and attachments to what the reconcile of `report`
/// planned (the maps first, so a new attachment starts with them filled). Must run in the
/// data plane's network namespace. Returns what failed.
pub fn sync_fast_path(
    fp: &mut FastPath,
    report: &Report,
    tunnel_vteps: Option<ipnet::Ipv4Net>,
) -> Vec<String> {
    let (desired, inputs) = (&report.desired, &report.inputs);
    let observed = observed(&report.snapshot);
    let mut failures = Vec::new();
    let want = fastpath::plan(
        desired,
        inputs,
        &filter::allowed(inputs),
        tunnel_vteps,
        &observed,
    );
    match fp.read() {
        Ok(have) => {
            for step in fastpath::diff(&want, &have) {
                if let Err(e) = fp.apply(&step) {
                    failures.push(format!("{step:?}: {e}"));
                }
            }
        }
        Err(e) => failures.push(e.to_string()),
    }
    let wanted = wanted_attachments(report, &observed);
    for name in fp.attached().keys() {
        if !wanted.iter().any(|(n, ..)| n == name) {
            fp.detach(name);
        }
    }
    for (name, program, index) in &wanted {
        if let Err(e) = fp.attach(program, name, *index) {
            failures.push(e.to_string());
        }
    }
    failures
}

/// The networks of our datacenter and of the others, from the mesh.
fn mesh_networks(
    view: &MeshView,
    datacenter: &str,
    vni: u32,
) -> (Vec<LocalNetwork>, Vec<RemoteNetwork>, Vec<Problem>) {
    let records: Vec<(&str, &gatewan_proto::v1::Network)> = view
        .store
        .networks()
        .filter_map(|(origin, n)| Some((view.store.node(origin)?.datacenter.as_str(), n)))
        .collect();
    plan::networks_from_mesh(records, datacenter, vni)
}

pub fn spawn(
    cfg: DataplaneConfig,
    mesh: MeshHandle,
    tunnels: watch::Receiver<TunnelTable>,
) -> std::io::Result<DataplaneHandle> {
    let system = System::new()?;
    let (tx, rx) = watch::channel(Arc::new(DataplaneStats::default()));
    tokio::spawn(run(cfg, mesh, tunnels, system, tx));
    Ok(DataplaneHandle { stats: rx })
}

async fn run(
    cfg: DataplaneConfig,
    mesh: MeshHandle,
    mut tunnels_rx: watch::Receiver<TunnelTable>,
    system: System,
    stats_tx: watch::Sender<Arc<DataplaneStats>>,
) {
    let mut mesh_rx = mesh.subscribe();
    let mut tick = tokio::time::interval(cfg.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats = DataplaneStats::default();
    let mut inputs = Inputs {
        fabric: cfg.fabric.clone(),
        tunnels: Vec::new(),
        local_networks: Vec::new(),
        remote_networks: Vec::new(),
        present: BTreeSet::new(),
        installed: BTreeMap::new(),
    };
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut filter = FilterState::default();
    let mut fast = FastPathState::start(cfg.fast_path);
    let started = Instant::now();
    // Nothing is done before the tunnel manager's first table: an empty table would make
    // every tunnel's ingress look stale.
    let mut have_table = false;
    loop {
        let mut view_problems = Vec::new();
        let changed = tokio::select! {
            r = mesh_rx.changed() => {
                if r.is_err() { return; }
                let view = mesh_rx.borrow_and_update().clone();
                let (mut local, remote, problems) =
                    mesh_networks(&view, &cfg.datacenter, cfg.fabric.vni);
                view_problems = problems;
                local.extend(cfg.static_networks.iter().cloned());
                let changed = local != inputs.local_networks || remote != inputs.remote_networks;
                inputs.local_networks = local;
                inputs.remote_networks = remote;
                changed
            }
            r = tunnels_rx.changed() => {
                if r.is_err() { return; }
                let rows: Vec<TunnelInput> = tunnels_rx
                    .borrow_and_update()
                    .iter()
                    .filter_map(TunnelInput::from_info)
                    .collect();
                // Latency moves every probe interval and may change a repair's choice,
                // so every change of a row is a reconcile (a cheap one when nothing moves).
                let changed = rows != inputs.tunnels || !have_table;
                inputs.tunnels = rows;
                have_table = true;
                changed
            }
            _ = tick.tick() => true,
        };
        if !have_table || (!changed && view_problems.is_empty()) {
            continue;
        }
        if !changed {
            // Problems are logged when the networks they concern change.
            for p in view_problems {
                if reported.insert(p.to_string()) {
                    warn!(problem = %p, "network not used by the data plane");
                }
            }
            continue;
        }
        for p in &view_problems {
            if reported.insert(p.to_string()) {
                warn!(problem = %p, "network not used by the data plane");
            }
        }
        if let Some(pool) = cfg.tunnel_vteps
            && let Err(e) = system.ensure_local_pool(pool).await
        {
            warn!(error = %e, %pool, "cannot make fabric.tunnel_vteps local; retried");
        }
        let settled = started.elapsed() >= STARTUP_HOLD;
        source_filter(&inputs, settled, &mut filter, &mut stats).await;
        match reconcile_with(&system, &inputs, settled).await {
            Ok(report) => {
                stats.reconciles += 1;
                stats.steps += report.steps.len() as u64;
                stats.errors += report.errors.len() as u64;
                stats.last_reconcile = report.took;
                for p in &report.problems {
                    if reported.insert(p.to_string()) {
                        warn!(problem = %p, "data plane");
                    }
                }
                for (step, e) in report.errors.iter().take(5) {
                    warn!(error = %e, ?step, "data plane step failed; retried at the next reconcile");
                }
                if !report.steps.is_empty() {
                    info!(
                        steps = report.steps.len(),
                        errors = report.errors.len(),
                        took = ?report.took,
                        "data plane reconciled"
                    );
                    for s in &report.steps {
                        debug!(step = ?s, "data plane step");
                    }
                }
                // During the startup hold the plan may lack networks the kernel path
                // still routes (removals wait), and a shorter prefix in the maps would
                // catch what a longer one, not yet known, routes elsewhere: the fast path
                // starts when the hold ends, and the kernel path carries all until then.
                // bpf(2) and netlink calls, some waiting for the kernel (attaching one
                // program is about 13 ms here): off the runtime's other tasks.
                if settled {
                    stats.fast_path_errors += tokio::task::block_in_place(|| {
                        fast.sync(&report, cfg.tunnel_vteps, &mut stats)
                    });
                }
                // What the fast path carried never reached the macvlans or the VXLAN
                // device: both paths' counts together.
                let links = &report.snapshot.links;
                let fp = stats.fast_path.as_ref();
                stats.ingress_packets = inputs
                    .tunnels
                    .iter()
                    .filter_map(|t| {
                        let l = links.get(&plan::macvlan_name(t.index))?;
                        let fast = fp.and_then(|c| c.by_mac.get(&t.router_mac)).copied();
                        Some((
                            t.interface.clone(),
                            l.rx_packets.wrapping_add(fast.unwrap_or(0)),
                        ))
                    })
                    .collect();
                stats.egress_packets = links
                    .get(VXLAN_DEVICE)
                    .map_or(0, |l| l.tx_packets)
                    .wrapping_add(fp.map_or(0, |c| c.totals[2]));
                stats_tx.send_replace(Arc::new(stats.clone()));
            }
            Err(e) => {
                stats.errors += 1;
                warn!(error = %e, "cannot read the data plane's host state");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::filter_to_apply;

    const FULL: &str = "full";
    const HOLD: &str = "hold";

    #[test]
    fn a_first_start_clamps_at_once_and_checks_sources_when_the_hold_ends() {
        // No table of ours: the hold's table goes in at the first reconcile.
        assert_eq!(filter_to_apply(false, false, None, FULL, HOLD), Some(HOLD));
        // It stays for the rest of the hold.
        assert_eq!(filter_to_apply(false, true, Some(HOLD), FULL, HOLD), None);
        // Then the full filter replaces it, once.
        assert_eq!(
            filter_to_apply(true, true, Some(HOLD), FULL, HOLD),
            Some(FULL)
        );
        assert_eq!(filter_to_apply(true, true, Some(FULL), FULL, HOLD), None);
    }

    #[test]
    fn a_restart_keeps_the_previous_runs_filter_through_the_hold() {
        assert_eq!(filter_to_apply(false, true, None, FULL, HOLD), None);
        assert_eq!(filter_to_apply(true, true, None, FULL, HOLD), Some(FULL));
    }

    #[test]
    fn a_table_deleted_by_hand_or_missing_a_new_tunnel_is_replaced() {
        assert_eq!(
            filter_to_apply(true, false, Some(FULL), FULL, HOLD),
            Some(FULL)
        );
        assert_eq!(
            filter_to_apply(false, false, Some(HOLD), FULL, HOLD),
            Some(HOLD)
        );
    }
}
