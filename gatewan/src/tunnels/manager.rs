//! The tunnel manager: the one owner of this gatewan's tunnels. On every mesh change (and
//! periodically) it plans, observes the host and applies the difference; every probe
//! interval it gathers probe reports and interface counters, gossips the metrics and
//! publishes the table the API shows. What it decides is in `state` (pure); this task
//! only waits, reads and applies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use gatewan_proto::v1;
use tokio::sync::watch;
use tracing::{debug, info, warn};

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

use super::numbering::{self, Numbering};
use super::plan::slots::{Claimer, SlotClaim, SlotTrouble, mesh_claims};
use super::plan::{GatewanView, PlanSettings, plan};
use super::reconcile::{Step, WantedTunnel};
use super::state::{Local, ManagerState};
use super::system::{LinkInfo, System, WireguardMode};
use crate::probe::engine::{self, ProbeHandle, ProbeSettings};
use gatewan_mesh::driver::MeshHandle;

pub struct ManagerConfig {
    /// Ourselves; its slot and claim are the manager's to set (from `pinned_slot`, what
    /// `numbering` kept, or a claim through the mesh).
    pub local: GatewanView,
    /// `tunnels.slot` when pinned, else None: the slot is claimed through the mesh.
    pub pinned_slot: Option<u32>,
    /// What state_dir keeps of the numbering, and where (`numbering.rs`).
    pub numbering: (Numbering, std::path::PathBuf),
    /// Capacity per local transit name, bit/s.
    pub capacities: HashMap<String, u64>,
    pub private_key: [u8; 32],
    pub plan: PlanSettings,
    pub wireguard: WireguardMode,
    pub grace: Duration,
    /// `tunnels.spread_receive`: whether tunnel interfaces get our RPS mask (ADR 0063).
    pub spread_receive: bool,
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

/// One transit's interface counters at the last usage reading, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitUsage {
    pub transit: String,
    pub interface: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub capacity_bps: u64,
}

/// Our tunnel slot as metrics and logs show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotStatus {
    pub claim: Option<SlotClaim>,
    pub renumberings: u64,
    /// What keeps us from a slot with tunnels (a pinned conflict, no free slot).
    pub trouble: Option<SlotTrouble>,
}

/// Talks to the tunnel manager task.
#[derive(Clone)]
pub struct TunnelsHandle {
    pub table: watch::Receiver<TunnelTable>,
    pub slot: watch::Receiver<SlotStatus>,
    /// Every routed transit's interface counters, read with the tunnels' (each interval).
    pub transits: watch::Receiver<Arc<Vec<TransitUsage>>>,
    rotate: tokio::sync::mpsc::Sender<([u8; 32], tokio::sync::oneshot::Sender<()>)>,
    thresholds: watch::Sender<crate::probe::stats::Thresholds>,
}

impl TunnelsHandle {
    /// Where new tunnel state thresholds go (a configuration reload): every tunnel takes
    /// them at its next evaluation (`probe::engine::set_if_changed` skips an unchanged one).
    pub fn thresholds_sender(&self) -> watch::Sender<crate::probe::stats::Thresholds> {
        self.thresholds.clone()
    }

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
    let mut system = System::new(cfg.wireguard, cfg.private_key, &cfg.plan.interface_prefix)?;
    if !cfg.spread_receive {
        system.leave_receive_cpus();
    }
    info!(backend = ?system.backend(), "tunnels: WireGuard backend");
    let probes = engine::spawn(cfg.probe.clone());
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    let (slot_tx, slot_rx) = watch::channel(SlotStatus::default());
    let (transits_tx, transits_rx) = watch::channel(Arc::new(Vec::new()));
    let (rotate_tx, rotate_rx) = tokio::sync::mpsc::channel(1);
    let thresholds = probes.thresholds();
    let outputs = Outputs {
        table: tx,
        slot: slot_tx,
        transits: transits_tx,
    };
    tokio::spawn(run(cfg, mesh, system, probes, outputs, rotate_rx));
    Ok(TunnelsHandle {
        table: rx,
        slot: slot_rx,
        transits: transits_rx,
        rotate: rotate_tx,
        thresholds,
    })
}

/// What the manager's loop publishes for the API and `/metrics`.
struct Outputs {
    table: watch::Sender<TunnelTable>,
    slot: watch::Sender<SlotStatus>,
    transits: watch::Sender<Arc<Vec<TransitUsage>>>,
}

/// The routed transits' interface counters, by transit name.
fn transit_usage(cfg: &ManagerConfig, links: &[LinkInfo]) -> Vec<TransitUsage> {
    let mut out: Vec<TransitUsage> = cfg
        .routing
        .iter()
        .filter_map(|(name, r)| {
            let l = links.iter().find(|l| l.name == r.interface)?;
            Some(TransitUsage {
                transit: name.clone(),
                interface: r.interface.clone(),
                rx_bytes: l.rx_bytes,
                tx_bytes: l.tx_bytes,
                capacity_bps: cfg.capacities.get(name).copied().unwrap_or(0),
            })
        })
        .collect();
    out.sort_by(|a, b| a.transit.cmp(&b.transit));
    out
}

/// Unix ms, to stamp a slot claim (ADR 0042: compared between gatewans, so wall time).
fn unix_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// Steps the slot claimer on the mesh's view; a new claim is kept in state_dir, then
/// announced (in that order: a crash between the two re-announces the kept claim at
/// start), and becomes our slot. Returns whether our slot changed.
async fn claim_slot(
    cfg: &mut ManagerConfig,
    claimer: &mut Claimer,
    mesh: &MeshHandle,
    view: &gatewan_mesh::driver::MeshView,
    mono_ms: u64,
    slot_tx: &watch::Sender<SlotStatus>,
) -> bool {
    let (others, seen) = mesh_claims(cfg.local.id, &view.members, &view.store);
    let before = claimer.claim();
    let new = claimer.step(&others, seen, cfg.plan.max_slots(), mono_ms, unix_ms());
    let status = SlotStatus {
        claim: claimer.claim(),
        renumberings: claimer.renumberings(),
        trouble: claimer.trouble().cloned(),
    };
    slot_tx.send_if_modified(|s| {
        if *s == status {
            return false;
        }
        if s.trouble != status.trouble
            && let Some(t) = &status.trouble
        {
            warn!(trouble = %t, "tunnel slot");
        }
        *s = status;
        true
    });
    let Some(claim) = new else {
        return false;
    };
    match before {
        Some(old) => {
            warn!(
                old = old.slot,
                new = claim.slot,
                "tunnel slot held by a gatewan whose claim came first: renumbered, our tunnels follow"
            )
        }
        None => info!(slot = claim.slot, "tunnel slot claimed"),
    }
    cfg.numbering.0.claim = Some(claim);
    if let Err(e) = numbering::save(&cfg.numbering.1, &cfg.numbering.0) {
        warn!(error = %e, path = %cfg.numbering.1.display(), "cannot keep the tunnel slot in state_dir; a restart claims one again");
    }
    cfg.local.slot = claim.slot;
    cfg.local.slot_claimed_ms = claim.claimed_ms;
    cfg.local.slot_pinned = claim.pinned;
    crate::announce::announce(mesh, cfg.local.id, "tunnel slot", |r| {
        r.tunnel_slot = Some(claim.slot);
        r.tunnel_slot_claimed_ms = claim.claimed_ms;
        r.tunnel_slot_pinned = claim.pinned;
    })
    .await;
    true
}

async fn run(
    mut cfg: ManagerConfig,
    mesh: MeshHandle,
    mut system: System,
    probes: ProbeHandle,
    out: Outputs,
    mut rotate_rx: tokio::sync::mpsc::Receiver<([u8; 32], tokio::sync::oneshot::Sender<()>)>,
) {
    let mut mesh_rx = mesh.subscribe();
    let mut tick = tokio::time::interval(cfg.probe.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let vteps = cfg
        .tunnel_vteps
        .as_ref()
        .map(|(_, path)| super::vtep::load(path))
        .unwrap_or_default();
    let local = Local {
        datacenter: cfg.local.datacenter.clone(),
        capacities: cfg.capacities.clone(),
    };
    let mut state = ManagerState::new(local, Instant::now(), vteps);
    // A pinned slot is kept as a claim too: the pin removed later, the gatewan keeps its
    // slot (and tunnels) instead of claiming anew.
    if let Some(slot) = cfg.pinned_slot
        && cfg.numbering.0.claim.map(|c| c.slot) != Some(slot)
    {
        cfg.numbering.0.claim = Some(SlotClaim {
            slot,
            claimed_ms: unix_ms(),
            pinned: false,
        });
        if let Err(e) = numbering::save(&cfg.numbering.1, &cfg.numbering.0) {
            warn!(error = %e, path = %cfg.numbering.1.display(), "cannot keep the pinned tunnel slot in state_dir");
        }
    }
    let mut claimer = Claimer::new(
        cfg.local.id,
        &cfg.local.name,
        cfg.pinned_slot,
        cfg.numbering.0.claim,
        0,
    );
    if let Some(c) = claimer.claim() {
        cfg.local.slot = c.slot;
        cfg.local.slot_claimed_ms = c.claimed_ms;
        cfg.local.slot_pinned = c.pinned;
    }
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
                crate::announce::announce(&mesh, cfg.local.id, "WireGuard public key", |r| {
                    r.wireguard_public_key = Bytes::copy_from_slice(&public);
                })
                .await;
                info!("WireGuard key rotated");
                let _ = done.send(());
                state.mark_dirty();
                false
            }
            // Fresh probe reports: show them at once, so the API lags the probes by nothing.
            r = reports_rx.changed() => {
                if r.is_err() { return; }
                true
            }
        };
        let view = mesh.view();
        if claim_slot(
            &mut cfg,
            &mut claimer,
            &mesh,
            &view,
            state.mono_ms(Instant::now()),
            &out.slot,
        )
        .await
        {
            state.mark_dirty();
        }
        if claimer.claim().is_none() {
            // No slot yet: no tunnel can be numbered. The claimer is asked again at the
            // next mesh change or tick.
            continue;
        }
        let input = state.planner_input(&view, &cfg.local, &reports.borrow());
        if state.wants_reconcile(input, Instant::now(), cfg.resync) {
            reconcile(&cfg, &system, &probes, &mut state).await;
        }
        if !measure {
            continue;
        }
        if let Ok(links) = system.link_stats().await {
            state.count_usage(&links, Instant::now());
            out.transits
                .send_replace(Arc::new(transit_usage(&cfg, &links)));
        }
        let reports_now = reports.borrow().clone();
        let table = state.table(&reports_now, &view);
        let gossip = state.gossip(&table, Instant::now(), cfg.probe.window);
        for peer in gossip.withdraw {
            if let Err(e) = mesh
                .withdraw(v1::RecordKind::TunnelMetrics, peer.to_string())
                .await
            {
                warn!(error = %e, "cannot withdraw tunnel metrics");
            }
        }
        for body in gossip.publish {
            if let Err(e) = mesh.publish(body).await {
                warn!(error = %e, "cannot publish tunnel metrics");
            }
        }
        out.table.send_replace(Arc::new(table));
    }
}

/// Plans, brings the host to the plan, assigns the tunnels' VTEPs and hands the probe
/// engine its targets.
async fn reconcile(
    cfg: &ManagerConfig,
    system: &System,
    probes: &ProbeHandle,
    state: &mut ManagerState,
) {
    let (planned, problems) = plan(&cfg.local, state.planned_from(), &cfg.plan);
    for p in state.new_problems(problems.iter().map(ToString::to_string)) {
        warn!(problem = %p, "tunnel not planned");
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
    let reconcile_started = Instant::now();
    match system.observe().await {
        Ok(seen) => {
            let observed = reconcile_started.elapsed();
            // The grace period runs on the monotonic clock: a step of the wall clock must
            // neither delete every stale tunnel at once nor keep them for ever.
            let now_ms = state.mono_ms(Instant::now());
            let (todo, newly_stale) = state.steps(&wanted, &seen, now_ms, cfg.grace);
            for name in newly_stale {
                info!(interface = %name, grace = ?cfg.grace, "tunnel no longer wanted; removed after the grace period");
            }
            apply_steps(system, &todo).await;
            if !todo.is_empty() {
                info!(
                    interfaces = seen.len(),
                    steps = todo.len(),
                    observed = ?observed,
                    took = ?reconcile_started.elapsed(),
                    "tunnels reconciled"
                );
            }
        }
        Err(e) => warn!(error = %e, "cannot observe tunnel interfaces"),
    }
    if let Some((pool, path)) = &cfg.tunnel_vteps
        && let Some(change) = state.assign_vteps(&planned, *pool, Instant::now(), cfg.grace)
    {
        if change.too_few {
            warn!(%pool, tunnels = planned.len(), "fabric.tunnel_vteps has too few addresses: some tunnels use the gatewan's VTEP");
        }
        if let Err(e) = super::vtep::save(path, &change.assignment) {
            warn!(error = %e, path = %path.display(), "cannot save the tunnels' VTEP addresses");
        }
    }
    state.set_planned(planned, SystemTime::now());
    probes.set_targets(state.probe_targets());
}

/// One interface's steps in order, interfaces side by side: bringing up a wireguard-go
/// interface waits on a process start (and wireguard-control sleeps 100 ms for its
/// socket), so 100 tunnels one after the other took 14 s.
async fn apply_steps(system: &System, todo: &[Step]) {
    let mut by_interface: BTreeMap<&str, Vec<&Step>> = BTreeMap::new();
    for step in todo {
        by_interface.entry(step.interface()).or_default().push(step);
    }
    futures_util::stream::iter(by_interface.into_values())
        .for_each_concurrent(APPLY_CONCURRENCY, |steps| async move {
            for step in steps {
                if let Err(e) = apply_step(system, step).await {
                    warn!(error = %e, ?step, "tunnel step failed; retried at the next reconcile");
                    break;
                }
                match step {
                    Step::Configure(w) => {
                        info!(interface = %w.interface, endpoint = %w.endpoint, "tunnel configured")
                    }
                    Step::Delete { interface } => info!(%interface, "stale tunnel removed"),
                    Step::SetAllowedIps { interface, .. } => {
                        info!(%interface, "tunnel peer's allowed IPs set to every unicast address (ADR 0062)")
                    }
                    Step::SpreadReceive { interface } => {
                        debug!(%interface, "tunnel receive spread over the CPUs (RPS)")
                    }
                    _ => {}
                }
            }
        })
        .await;
}
