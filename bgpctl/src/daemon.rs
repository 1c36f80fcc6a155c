//! The bgpctl daemon: joins the mesh with role `bgpctl`, runs the controller on every mesh
//! change, advertises its decision as type-5 routes, and publishes the fabric's routes as
//! the datacenter's networks. This task owns the controller; the API reads what it
//! publishes, and its choice toward each remote datacenter (`Choice` records) in the mesh.
//! Before its first decision it adopts the choice of the other bgpctl of the datacenter,
//! from the mesh, else as the fabric holds it (ADR 0027, ADR 0006).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gatewan_mesh::driver::{MeshHandle, MeshView, unix_ms};
use gatewan_mesh::{MemberState, NodeId};
use gatewan_proto::v1::{self, record::Body};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::bgp::{self, ReceivedRoutes, SpeakerHandle, Type5Route};
use crate::config::BgpctlSettings;
use crate::controller::{Change, ChangeReason, Controller, Explanation, Policy, Snapshot};
use crate::export::{self, ExportSettings};

/// What the API shows of the controller.
#[derive(Debug, Default)]
pub struct ControllerView {
    pub explanation: Option<Explanation>,
    /// The decision the explanation explains (what `routingctl trace` follows).
    pub decision: Option<v1::Decision>,
    pub history: Vec<Change>,
    /// Changes of the chosen tunnels since start, by reason.
    pub changes: Vec<(ChangeReason, u64)>,
    /// The clocks when the explanation was made: the controller's times are monotonic.
    pub clock: Clock,
}

/// A monotonic and a wall-clock reading taken together, to date monotonic times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    pub mono_ms: u64,
    pub unix_ms: u64,
}

impl Clock {
    /// The Unix time of monotonic time `mono_ms`, as the wall clock read with this one
    /// says (a later step of the wall clock does not move it).
    pub fn unix_of(&self, mono_ms: u64) -> u64 {
        if mono_ms >= self.mono_ms {
            self.unix_ms.saturating_add(mono_ms - self.mono_ms)
        } else {
            self.unix_ms.saturating_sub(self.mono_ms - mono_ms)
        }
    }
}

/// How long a starting bgpctl lets the mesh fill in before it advertises anything: an
/// early, partial Adj-RIB-Out followed by End-of-RIB would make a gracefully restarting
/// peer withdraw the routes the partial view lacks.
const MESH_SETTLE: Duration = Duration::from_secs(3);

/// How long, after MESH_SETTLE, a starting bgpctl waits for the fabric's whole table
/// (End-of-RIB from every peer) before its first decision, so that it can adopt the other
/// bgpctl's choice. Bounded because a peer may never send End-of-RIB (no graceful restart
/// negotiated) or be down; the speaker holds back our own table meanwhile.
const FABRIC_SETTLE: Duration = Duration::from_secs(4);

/// How long after its start a bgpctl waits for End-of-RIB from every fabric peer before
/// it withdraws the networks of its previous life the fabric has not announced again
/// (a peer may never send End-of-RIB: no graceful restart, or down). Long enough for a
/// session to come up after a connect retry, so that a slow fabric does not make the
/// datacenter's networks flap in the whole mesh.
const STALE_NETWORKS_GRACE: Duration = Duration::from_secs(60);

pub struct Running {
    pub speaker: Arc<SpeakerHandle>,
    pub controller: watch::Receiver<Arc<ControllerView>>,
    pub counters: Arc<DaemonCounters>,
    /// A new policy (SIGHUP): the decision loop takes it at once, keeping its choices and
    /// timers (`Controller::set_policy`).
    pub policy: watch::Sender<Policy>,
}

/// What the decision loop counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct DaemonCounters {
    /// Publishes the mesh refused (the member's cap, `mesh.max_records_per_origin`, for
    /// networks of a leaked table) or could not; at most one per pass over the records.
    pub publish_refused: AtomicU64,
    /// Networks learned from the fabric and not in the mesh (after the last pass).
    pub networks_unpublished: AtomicU64,
    /// Own networks of a previous life withdrawn because the fabric no longer has them.
    pub stale_networks_withdrawn: AtomicU64,
}

/// Publishes into the mesh, counting refusals and logging the first of each streak.
struct Publisher {
    counters: Arc<DaemonCounters>,
    /// A refusal was logged and no publish has succeeded since.
    logged: bool,
}

impl Publisher {
    fn refused(&mut self, kind: v1::RecordKind, name: &str, e: &gatewan_mesh::driver::MeshError) {
        let n = self
            .counters
            .publish_refused
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if !self.logged {
            self.logged = true;
            warn!(error = %e, ?kind, %name, refused = n, "cannot publish into the mesh (further refusals are counted in bgpctl_mesh_publish_refused, not logged, until a publish succeeds)");
        }
    }
}

/// Starts the speaker (once the mesh has settled) and the decision loop.
pub async fn start(config: &BgpctlSettings, mesh: MeshHandle) -> anyhow::Result<Running> {
    // The first decision must see the whole mesh: wait for the push-pull of the join.
    let started = std::time::Instant::now();
    let mut rx = mesh.subscribe();
    while started.elapsed() < MESH_SETTLE {
        let _ = tokio::time::timeout(MESH_SETTLE - started.elapsed(), rx.changed()).await;
    }
    let speaker = Arc::new(bgp::spawn(config.speaker.clone())?);
    info!(asn = config.speaker.asn, router_id = %config.speaker.router_id, peers = config.speaker.peers.len(), "BGP speaker started");
    let (tx, controller) = watch::channel(Arc::new(ControllerView::default()));
    let counters = Arc::new(DaemonCounters::default());
    let publisher = Publisher {
        counters: counters.clone(),
        logged: false,
    };
    let (policy, policy_rx) = watch::channel(config.policy.clone());
    tokio::spawn(decide_loop(
        config.clone(),
        mesh,
        speaker.clone(),
        tx,
        publisher,
        policy_rx,
    ));
    Ok(Running {
        speaker,
        controller,
        counters,
        policy,
    })
}

async fn decide_loop(
    config: BgpctlSettings,
    mesh: MeshHandle,
    speaker: Arc<SpeakerHandle>,
    view_tx: watch::Sender<Arc<ControllerView>>,
    mut publisher: Publisher,
    mut policy_rx: watch::Receiver<Policy>,
) {
    let export = ExportSettings {
        vni: config.vni,
        route_targets: config.export_route_targets.clone(),
        link_bandwidth: config.link_bandwidth,
    };
    let mut controller = Controller::new(config.policy.clone());
    let origin = std::time::Instant::now();
    adopt_choice(&config.datacenter, &mesh, &speaker, &mut controller).await;
    let mut choices: BTreeMap<String, v1::Choice> = BTreeMap::new();
    let mut last: Option<v1::Decision> = None;
    let mut own_changes: BTreeMap<String, OwnChange> = BTreeMap::new();
    let mut mesh_rx = mesh.subscribe();
    let mut received_rx = speaker.subscribe_received();
    // The hold-down timers run on the clock even when the mesh is quiet.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published: BTreeMap<String, v1::Network> = BTreeMap::new();
    let mut advertised: Option<Vec<Type5Route>> = None;
    let started = tokio::time::Instant::now();
    let peers: BTreeSet<IpAddr> = speaker.peer_settings().iter().map(|p| p.address).collect();
    loop {
        {
            let view = mesh.view();
            if !view.previous_life.is_empty() {
                let received = received_rx.borrow().clone();
                let complete = peers.is_subset(&received.end_of_rib)
                    || started.elapsed() >= STALE_NETWORKS_GRACE;
                let vteps = export::gatewan_vteps(&view.store);
                let learned = export::learned_networks(&received, &vteps);
                let stale = export::stale_networks(&view.previous_life, &learned, complete);
                withdraw_stale(&mesh, &stale, &publisher.counters).await;
            }
        }
        tokio::select! {
            r = policy_rx.changed() => {
                if r.is_err() { return; }
                let policy = policy_rx.borrow_and_update().clone();
                controller.set_policy(policy);
                info!("controller policy reloaded: deciding again");
            }
            r = mesh_rx.changed() => {
                if r.is_err() { return; }
                // Let a burst of gossip settle into one decision.
                tokio::time::sleep(Duration::from_millis(20)).await;
                mesh_rx.borrow_and_update();
            }
            r = received_rx.changed() => {
                if r.is_err() { return; }
                let received = received_rx.borrow_and_update().clone();
                let vteps = export::gatewan_vteps(&mesh.view().store);
                sync_networks(
                    &mesh,
                    &export::learned_networks(&received, &vteps),
                    &mut published,
                    &mut publisher,
                )
                .await;
                continue;
            }
            _ = tick.tick() => {}
        }
        let view = mesh.view();
        let snapshot = snapshot_of(&config.datacenter, &view);
        // Hold-downs run on the monotonic clock; the wall clock at this moment only turns
        // the decision's times into dates for the API (`ControllerView::clock`).
        let clock = Clock {
            mono_ms: u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX),
            unix_ms: unix_ms(),
        };
        let leads = leader_choices(&config.datacenter, &view);
        let lead = leader_choice(
            &config.datacenter,
            &leads,
            &snapshot,
            last.as_ref(),
            &own_changes,
            clock.mono_ms,
        );
        if let Some(lead) = &lead {
            controller.adopt(lead);
        }
        let (decision, explanation) = controller.decide(&snapshot, clock.mono_ms);
        note_own_changes(
            &mut own_changes,
            last.as_ref(),
            &decision,
            lead.as_ref(),
            &leads,
            clock.mono_ms,
        );
        let routes = export::routes(
            &decision,
            &export::networks_by_datacenter(&view.store, |id| is_alive(&view, id)),
            &export,
        );
        if advertised.as_ref() != Some(&routes) {
            info!(
                routes = routes.len(),
                "advertising a new set of type-5 routes"
            );
            speaker.set_advertised(routes.clone());
            advertised = Some(routes);
        }
        publish_choices(
            &config.datacenter,
            &mesh,
            &decision,
            &mut choices,
            &mut publisher,
        )
        .await;
        view_tx.send_replace(Arc::new(ControllerView {
            decision: Some(decision.clone()),
            explanation: Some(explanation),
            history: controller.history().cloned().collect(),
            changes: controller.changes_by_reason().collect(),
            clock,
        }));
        last = Some(decision);
    }
}

/// A member of the mesh not declared down (ourselves included).
fn is_alive(view: &MeshView, id: NodeId) -> bool {
    view.members
        .iter()
        .any(|m| m.id.node == id && m.state != MemberState::Down)
}

fn snapshot_of(datacenter: &str, view: &MeshView) -> Snapshot {
    Snapshot::from_store(datacenter, &view.store, |id| is_alive(view, id))
}

/// Before the first decision: takes the choice of the other bgpctl of the datacenter, so
/// that both advertise the same tunnels instead of this one picking its own for a
/// hold-down. First from the mesh (its `Choice` records), which holds it whatever the
/// fabric does: a route reflector reflects one path per route, and while this bgpctl's
/// own routes are kept stale through its restart they may be that path, so the other's
/// never reach it. Else from the routes the fabric holds. A lone bgpctl finds nothing.
/// The wait for the fabric's End-of-RIB happens either way: it holds back the initial
/// table of a graceful restart.
async fn adopt_choice(
    datacenter: &str,
    mesh: &MeshHandle,
    speaker: &SpeakerHandle,
    controller: &mut Controller,
) {
    let peers: BTreeSet<IpAddr> = speaker.peer_settings().iter().map(|p| p.address).collect();
    let (received, waiting) = fabric_table(speaker, &peers).await;
    if !waiting.is_empty() {
        info!(
            peers = ?waiting,
            "fabric peers without End-of-RIB after {FABRIC_SETTLE:?}: deciding with the routes received so far"
        );
    }
    let view = mesh.view();
    let (held, from) = match mesh_choice(datacenter, &view) {
        Some(d) => (d, "the other bgpctl of the datacenter (mesh)"),
        None => (
            export::fabric_decision(&received, &snapshot_of(datacenter, &view)),
            "the fabric",
        ),
    };
    if held.remotes.is_empty() {
        return;
    }
    let tunnels: usize = held.remotes.iter().map(|r| r.tunnels.len()).sum();
    let toward: Vec<String> = held
        .remotes
        .iter()
        .map(|r| format!("{} ({})", r.datacenter, r.tunnels.len()))
        .collect();
    info!(
        tunnels,
        datacenters = held.remotes.len(),
        "adopting the choice of {from}: {tunnels} tunnels toward {}",
        toward.join(", ")
    );
    controller.adopt(&held);
}

/// The newest choice, per remote datacenter, of the live bgpctls of `datacenter` other
/// than us, as a decision to adopt; None when there is none.
fn mesh_choice(datacenter: &str, view: &MeshView) -> Option<v1::Decision> {
    let alive = |id: NodeId| {
        view.members
            .iter()
            .any(|m| m.id.node == id && !m.local && m.state == MemberState::Alive)
    };
    let mut newest: BTreeMap<&str, (u64, &v1::Choice)> = BTreeMap::new();
    for r in view.store.iter() {
        let Some(Body::Choice(c)) = &r.record.body else {
            continue;
        };
        if c.datacenter != datacenter || !alive(r.key.origin) {
            continue;
        }
        let slot = newest.entry(c.remote.as_str()).or_insert((r.version, c));
        if r.version > slot.0 {
            *slot = (r.version, c);
        }
    }
    if newest.is_empty() {
        return None;
    }
    Some(v1::Decision {
        datacenter: datacenter.to_string(),
        remotes: newest
            .into_iter()
            .map(|(_, (_, c))| remote_decision(c))
            .collect(),
    })
}

/// Two bgpctls decide alike from the same snapshot only with the same history: started
/// together, each picks its own first set, and two sets equally good stay apart, since
/// neither is better by the margin. So a bgpctl follows the live bgpctl of its datacenter
/// with the lowest node id: toward each remote datacenter where that one's choice differs
/// from ours and all its tunnels are Established here, we take it (a decision of our own
/// follows at once whenever one of them is not, as on a failure). No election: the rule
/// is the same everywhere and needs no message but the choices already in the mesh.
///
/// The leader's choices toward each remote datacenter, with their record versions; none
/// when we are the leader.
fn leader_choices(datacenter: &str, view: &MeshView) -> Vec<(u64, v1::Choice)> {
    let Some(me) = view.members.iter().find(|m| m.local).map(|m| m.id.node) else {
        return Vec::new();
    };
    let leader = view
        .members
        .iter()
        .filter(|m| !m.local && m.state == MemberState::Alive && m.id.node < me)
        .map(|m| m.id.node)
        .filter(|id| {
            view.store
                .node(*id)
                .is_some_and(|n| n.role == v1::Role::Bgpctl as i32 && n.datacenter == datacenter)
        })
        .min();
    let Some(leader) = leader else {
        return Vec::new();
    };
    view.store
        .iter()
        .filter(|r| r.key.origin == leader)
        .filter_map(|r| match &r.record.body {
            Some(Body::Choice(c)) if c.datacenter == datacenter => Some((r.version, c.clone())),
            _ => None,
        })
        .collect()
}

/// How long a choice we just made on our own stands against a choice the leader made
/// before it. Both bgpctls see the same metrics and their hold-downs run out within a
/// second or so of each other: the one that decides first must not take the other's
/// older choice back, and then the new one again, 20 ms apart (seen in two-dc: three
/// route changes in 40 ms, and a packet lost). Longer than the gap between the two
/// decisions plus the mesh's delay; a real divergence is followed after it.
const FOLLOW_GRACE_MS: u64 = 3_000;

/// Our last change of choice toward a remote datacenter that was our own (not the
/// leader's taken), and the version of the leader's choice toward it at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OwnChange {
    at_ms: u64,
    leader_version: Option<u64>,
}

/// Of the leader's choices (`leads`), those to take now, as a decision to adopt: where
/// ours differs and all its tunnels are Established here, unless we changed on our own
/// under [`FOLLOW_GRACE_MS`] ago and the leader has not chosen since.
fn leader_choice(
    datacenter: &str,
    leads: &[(u64, v1::Choice)],
    snapshot: &Snapshot,
    ours: Option<&v1::Decision>,
    own_changes: &BTreeMap<String, OwnChange>,
    now_ms: u64,
) -> Option<v1::Decision> {
    let held = |remote: &str| -> Vec<bytes::Bytes> {
        ours.and_then(|d| d.remotes.iter().find(|r| r.datacenter == remote))
            .map(tunnel_ids)
            .unwrap_or_default()
    };
    let established = |id: &bytes::Bytes| {
        crate::controller::TunnelId::from_slice(id)
            .and_then(|t| snapshot.tunnel(t))
            .is_some_and(|t| t.measurements.state == v1::TunnelState::Established)
    };
    let remotes: Vec<v1::DatacenterDecision> = leads
        .iter()
        .filter(|(version, c)| {
            !c.tunnels.is_empty()
                && c.tunnels.iter().all(established)
                && held(&c.remote) != c.tunnels
                && follows(own_changes.get(&c.remote), *version, now_ms)
        })
        .map(|(_, c)| remote_decision(c))
        .collect();
    (!remotes.is_empty()).then(|| v1::Decision {
        datacenter: datacenter.to_string(),
        remotes,
    })
}

/// Whether the leader's choice at `version` may replace ours, given our last own change.
fn follows(own: Option<&OwnChange>, version: u64, now_ms: u64) -> bool {
    own.is_none_or(|c| {
        c.leader_version != Some(version) || now_ms.saturating_sub(c.at_ms) >= FOLLOW_GRACE_MS
    })
}

/// Records, per remote datacenter, a change of `decision` from `last` that was not the
/// leader's choice taken (`adopted`).
fn note_own_changes(
    own_changes: &mut BTreeMap<String, OwnChange>,
    last: Option<&v1::Decision>,
    decision: &v1::Decision,
    adopted: Option<&v1::Decision>,
    leads: &[(u64, v1::Choice)],
    now_ms: u64,
) {
    let Some(last) = last else {
        return;
    };
    for r in &decision.remotes {
        let before = last.remotes.iter().find(|x| x.datacenter == r.datacenter);
        let taken = adopted.is_some_and(|a| a.remotes.iter().any(|x| x.datacenter == r.datacenter));
        if before.map(tunnel_ids) != Some(tunnel_ids(r)) && !taken {
            let leader_version = leads
                .iter()
                .find(|(_, c)| c.remote == r.datacenter)
                .map(|(v, _)| *v);
            own_changes.insert(
                r.datacenter.clone(),
                OwnChange {
                    at_ms: now_ms,
                    leader_version,
                },
            );
        }
    }
}

/// The ids of a choice's tunnels, sorted: how choices are compared (a `Choice` record
/// holds them sorted).
fn tunnel_ids(r: &v1::DatacenterDecision) -> Vec<bytes::Bytes> {
    let mut ids: Vec<_> = r.tunnels.iter().map(|t| t.id.clone()).collect();
    ids.sort();
    ids
}

/// Another bgpctl's choice toward one remote datacenter, as a decision to adopt (only the
/// tunnel ids matter to `Controller::adopt`).
fn remote_decision(c: &v1::Choice) -> v1::DatacenterDecision {
    v1::DatacenterDecision {
        datacenter: c.remote.clone(),
        tunnels: c
            .tunnels
            .iter()
            .map(|id| v1::ChosenTunnel {
                id: id.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Publishes our choice toward each remote datacenter in the mesh when it changed, and
/// withdraws those toward datacenters no longer in the decision.
async fn publish_choices(
    datacenter: &str,
    mesh: &MeshHandle,
    decision: &v1::Decision,
    published: &mut BTreeMap<String, v1::Choice>,
    publisher: &mut Publisher,
) {
    let now: BTreeMap<String, v1::Choice> = decision
        .remotes
        .iter()
        .map(|r| {
            let mut tunnels: Vec<bytes::Bytes> = r.tunnels.iter().map(|t| t.id.clone()).collect();
            tunnels.sort();
            let choice = v1::Choice {
                datacenter: datacenter.to_string(),
                remote: r.datacenter.clone(),
                tunnels,
            };
            (r.datacenter.clone(), choice)
        })
        .collect();
    sync_records(
        mesh,
        v1::RecordKind::Choice,
        &now,
        published,
        publisher,
        |c| Body::Choice(c.clone()),
    )
    .await;
}

/// Publishes the records of `desired` that differ from what `published` holds, and
/// withdraws those of names no longer desired: what bgpctl keeps in the mesh.
async fn sync_records<V: Clone + PartialEq>(
    mesh: &MeshHandle,
    kind: v1::RecordKind,
    desired: &BTreeMap<String, V>,
    published: &mut BTreeMap<String, V>,
    publisher: &mut Publisher,
    body: impl Fn(&V) -> Body,
) {
    for (name, v) in desired {
        if published.get(name) == Some(v) {
            continue;
        }
        match mesh.publish(body(v)).await {
            Ok(_) => {
                info!(?kind, %name, "published");
                published.insert(name.clone(), v.clone());
                publisher.logged = false;
            }
            Err(e) => {
                // The rest would be refused alike (a cap does not free up within a pass):
                // they wait for the next pass instead of costing a refusal each.
                publisher.refused(kind, name, &e);
                break;
            }
        }
    }
    let gone: Vec<String> = published
        .keys()
        .filter(|n| !desired.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        match mesh.withdraw(kind, name.clone()).await {
            Ok(_) => {
                info!(?kind, %name, "withdrawn");
                published.remove(&name);
            }
            Err(e) => warn!(error = %e, ?kind, %name, "cannot withdraw"),
        }
    }
}

/// The routes received from the fabric once every peer in `peers` has sent End-of-RIB,
/// or at FABRIC_SETTLE with the peers still missing.
async fn fabric_table(
    speaker: &SpeakerHandle,
    peers: &BTreeSet<IpAddr>,
) -> (Arc<ReceivedRoutes>, Vec<IpAddr>) {
    let deadline = tokio::time::Instant::now() + FABRIC_SETTLE;
    let mut rx = speaker.subscribe_received();
    loop {
        let received = rx.borrow_and_update().clone();
        let waiting: Vec<IpAddr> = peers.difference(&received.end_of_rib).copied().collect();
        // Deadline, or the speaker is gone: decide with what there is.
        let done = waiting.is_empty()
            || !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            );
        if done {
            return (received, waiting);
        }
    }
}

/// Withdraws our networks of a previous life that the fabric no longer announces.
async fn withdraw_stale(mesh: &MeshHandle, stale: &[String], counters: &DaemonCounters) {
    for name in stale {
        match mesh.withdraw(v1::RecordKind::Network, name.clone()).await {
            Ok(_) => {
                counters
                    .stale_networks_withdrawn
                    .fetch_add(1, Ordering::Relaxed);
                info!(network = %name, "withdrawn: published before this bgpctl restarted, no longer announced by the fabric");
            }
            Err(e) => {
                warn!(error = %e, network = %name, "cannot withdraw a network of a previous life")
            }
        }
    }
}

/// Publishes the networks learned from the fabric, withdraws those that went away.
async fn sync_networks(
    mesh: &MeshHandle,
    learned: &BTreeMap<String, v1::Network>,
    published: &mut BTreeMap<String, v1::Network>,
    publisher: &mut Publisher,
) {
    sync_records(
        mesh,
        v1::RecordKind::Network,
        learned,
        published,
        publisher,
        |n| Body::Network(n.clone()),
    )
    .await;
    let unpublished = learned
        .iter()
        .filter(|(name, n)| published.get(*name) != Some(*n))
        .count();
    publisher
        .counters
        .networks_unpublished
        .store(unpublished as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod clock_tests {
    use super::Clock;

    #[test]
    fn monotonic_times_are_dated_by_the_wall_clock_read_with_them() {
        let clock = Clock {
            mono_ms: 50_000,
            unix_ms: 1_750_000_000_000,
        };
        assert_eq!(clock.unix_of(50_000), 1_750_000_000_000);
        assert_eq!(
            clock.unix_of(20_000),
            1_749_999_970_000,
            "a change in the past"
        );
        assert_eq!(
            clock.unix_of(80_000),
            1_750_000_030_000,
            "a hold-down that ends later"
        );
        let at_boot = Clock {
            mono_ms: 50_000,
            unix_ms: 10_000,
        };
        assert_eq!(at_boot.unix_of(0), 0, "saturates instead of wrapping");
    }
}

#[cfg(test)]
mod follow_tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use gatewan_proto::v1;

    use super::{FOLLOW_GRACE_MS, OwnChange, follows, note_own_changes};

    fn decision(tunnels: &[u8]) -> v1::Decision {
        v1::Decision {
            datacenter: "par1".into(),
            remotes: vec![v1::DatacenterDecision {
                datacenter: "sg1".into(),
                tunnels: tunnels
                    .iter()
                    .map(|&t| v1::ChosenTunnel {
                        id: Bytes::from(vec![t; 16]),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
        }
    }

    fn lead(version: u64) -> Vec<(u64, v1::Choice)> {
        vec![(
            version,
            v1::Choice {
                datacenter: "par1".into(),
                remote: "sg1".into(),
                ..Default::default()
            },
        )]
    }

    #[test]
    fn a_choice_of_our_own_stands_against_the_leaders_older_one_for_the_grace_only() {
        let own = OwnChange {
            at_ms: 10_000,
            leader_version: Some(5),
        };
        assert!(
            !follows(Some(&own), 5, 10_020),
            "the leader's choice of before"
        );
        assert!(follows(Some(&own), 6, 10_020), "the leader chose since");
        assert!(
            follows(Some(&own), 5, 10_000 + FOLLOW_GRACE_MS),
            "a real divergence is followed after the grace"
        );
        assert!(follows(None, 5, 10_020), "no change of our own");
    }

    #[test]
    fn only_changes_of_our_own_are_noted_with_the_leaders_version_of_then() {
        let mut own = BTreeMap::new();
        note_own_changes(&mut own, None, &decision(&[1]), None, &lead(5), 100);
        assert!(own.is_empty(), "the first decision is no change");
        note_own_changes(
            &mut own,
            Some(&decision(&[1])),
            &decision(&[1]),
            None,
            &lead(5),
            200,
        );
        assert!(own.is_empty(), "unchanged");
        let taken = decision(&[2]);
        note_own_changes(
            &mut own,
            Some(&decision(&[1])),
            &taken,
            Some(&taken),
            &lead(5),
            300,
        );
        assert!(own.is_empty(), "the leader's choice taken");
        note_own_changes(&mut own, Some(&taken), &decision(&[3]), None, &lead(6), 400);
        assert_eq!(
            own.get("sg1"),
            Some(&OwnChange {
                at_ms: 400,
                leader_version: Some(6)
            })
        );
    }
}
