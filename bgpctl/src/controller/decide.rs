//! The controller proper: the only stateful part. It owns, per remote datacenter, the
//! previous choice, the hold-down timers and a cache, plus the history of changes, and
//! wraps the pure ranking and selection. Time is passed in, never read.
//!
//! Anti-flap rule, per remote datacenter:
//! - A chosen tunnel that leaves the healthy set is dropped at once, and tunnels are added
//!   at once (in rank order) when the remaining ones no longer meet capacity, min_tunnels
//!   or diversity.
//! - Otherwise the chosen set changes only for a *better set*: the chosen set without its
//!   redundant tunnels (it is then not minimal, see `select`), or the set a controller
//!   without history would choose (selected from scratch), when it is strictly better by
//!   the margin (`select::beats`: better capacity, min_tunnels or diversity, fewer
//!   tunnels, or else a score sum lower by the margin than what it replaces). The
//!   hold-down measures how long *a* better set has existed: it starts at the first
//!   evaluation that finds one and restarts only at an evaluation that finds none, so
//!   jitter swapping between equally good better sets does not restart it. After
//!   hold_down, the best set of that moment applies. Changes other than failures are
//!   therefore at least hold_down apart.
//! - A tunnel healthy again after being unhealthy is "recovering" for hold_down: it is
//!   only chosen if the settled tunnels cannot meet the need, so a tunnel whose metrics
//!   oscillate around max_loss or max_latency does not flap in and out.
//! - When no tunnel to the datacenter is healthy, the chosen ones (those still known) stay
//!   chosen for hold_when_none_healthy, then go: with nothing to move to, withdrawing
//!   only helps a fabric that has another path, and it turns a moment the probes cannot
//!   see through (a gatewan restarting, the kernel still forwarding) into an outage.
//!
//! Incremental work: a datacenter is recomputed only when its inputs (its tunnels, the
//! gatewans, the headroom of the local interfaces it uses) changed, a hold-down timer
//! runs, or its last step changed the choice; otherwise its previous output is reused.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use gatewan_kit::units::Rate;
use gatewan_proto::v1::{ChosenTunnel, DatacenterDecision, Decision};

use super::explain::{
    Candidate, CandidateMetrics, Change, ChangeReason, Explanation, PendingChange,
    RemoteExplanation, Verdict,
};
use super::policy::Policy;
use super::rank::{Ranking, Scales, rank_remote};
use super::select::{Need, Seeds, Selection, Stop, Why, beats, max_flow, roles, select};
use super::snapshot::{Snapshot, TunnelId, state_name};

/// Changes kept in the history.
pub const HISTORY_LEN: usize = 100;

/// The decision without any history: what a controller decides on its first run.
pub fn decide_once(snapshot: &Snapshot, policy: &Policy) -> (Decision, Explanation) {
    Controller::new(policy.clone()).decide(snapshot, 0)
}

pub struct Controller {
    policy: Policy,
    scales: Scales,
    remotes: BTreeMap<Arc<str>, RemoteState>,
    history: VecDeque<Change>,
    /// Changes since start by reason (a change with two reasons counts for both), in the
    /// order of `ChangeReason::ALL`: the history above is bounded, these are not.
    changes: [u64; ChangeReason::ALL.len()],
    headroom: Vec<u64>,
}

#[derive(Default)]
struct RemoteState {
    /// The current choice, in rank order.
    chosen: Vec<TunnelId>,
    decided: bool,
    /// Since when a better set than the chosen one has existed, at every evaluation.
    pending_since: Option<u64>,
    unhealthy: BTreeSet<TunnelId>,
    /// Recovering tunnels: healthy again since.
    healthy_since: BTreeMap<TunnelId, u64>,
    /// Since when no tunnel to the datacenter has been healthy.
    none_healthy_since: Option<u64>,
    /// The last step changed nothing and runs no timer: same inputs, same output.
    settled: bool,
    cache: Option<Cached>,
}

struct Cached {
    key: u64,
    ranking: Ranking,
    decision: DatacenterDecision,
    explanation: Arc<RemoteExplanation>,
}

struct Step {
    decision: DatacenterDecision,
    explanation: RemoteExplanation,
    change: Option<Change>,
}

/// How an operator knows a tunnel, as `routingctl tunnels` names it on its gatewan:
/// `gatewan01-sg1/sdwan12 to gatewan01-par1 via lumen→cogent`.
fn label(s: &Snapshot, tunnel: u32) -> String {
    let e = &s.tunnels[tunnel as usize];
    format!(
        "{}/{} to {} via {}→{}",
        s.gatewans[e.gatewan as usize].name,
        e.interface,
        s.gatewans[e.peer as usize].name,
        s.transits[e.local_transit as usize],
        s.transits[e.peer_transit as usize]
    )
}

fn ms_text(d_ms: u64) -> String {
    if d_ms.is_multiple_of(1000) {
        format!("{}s", d_ms / 1000)
    } else {
        format!("{d_ms}ms")
    }
}

impl Controller {
    pub fn new(policy: Policy) -> Self {
        Controller {
            scales: Scales::new(&policy),
            policy,
            remotes: BTreeMap::new(),
            history: VecDeque::with_capacity(HISTORY_LEN),
            changes: [0; ChangeReason::ALL.len()],
            headroom: Vec::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Takes a new policy (config reload); choices and timers are kept.
    pub fn set_policy(&mut self, policy: Policy) {
        self.scales = Scales::new(&policy);
        self.policy = policy;
        self.clear_cache();
    }

    /// Takes `previous` as the current choice, e.g. after a restart, or the choice of the
    /// other bgpctl of the datacenter it follows: the hold-down then protects it as if
    /// this controller had just made it (a better set must exist for a whole hold-down
    /// from now on before it changes on its own).
    pub fn adopt(&mut self, previous: &Decision) {
        for r in &previous.remotes {
            let st = self
                .remotes
                .entry(Arc::from(r.datacenter.as_str()))
                .or_default();
            st.chosen = r
                .tunnels
                .iter()
                .filter_map(|t| TunnelId::from_slice(&t.id))
                .collect();
            st.decided = true;
            st.pending_since = None;
            st.settled = false;
            st.cache = None;
        }
    }

    /// Forgets cached per-datacenter results; the next decision recomputes everything.
    pub fn clear_cache(&mut self) {
        for st in self.remotes.values_mut() {
            st.cache = None;
            st.settled = false;
        }
    }

    /// The last changes, oldest first.
    pub fn history(&self) -> impl ExactSizeIterator<Item = &Change> {
        self.history.iter()
    }

    /// Changes of the chosen tunnels since start, by reason.
    pub fn changes_by_reason(&self) -> impl Iterator<Item = (ChangeReason, u64)> + '_ {
        ChangeReason::ALL.into_iter().zip(self.changes)
    }

    fn record(history: &mut VecDeque<Change>, changes: &mut [u64], change: Change) {
        for r in &change.reasons {
            if let Some(n) = ChangeReason::ALL
                .iter()
                .position(|x| x == r)
                .and_then(|i| changes.get_mut(i))
            {
                *n = n.saturating_add(1);
            }
        }
        if history.len() == HISTORY_LEN {
            history.pop_front();
        }
        history.push_back(change);
    }

    /// Decides for every remote datacenter of the snapshot at `now_ms` (any monotonic
    /// clock in milliseconds).
    pub fn decide(&mut self, snapshot: &Snapshot, now_ms: u64) -> (Decision, Explanation) {
        let mut decision = Decision {
            datacenter: snapshot.local_datacenter().to_string(),
            remotes: Vec::with_capacity(snapshot.remotes.len()),
        };
        let mut explanation = Explanation {
            datacenter: snapshot.local_datacenter().to_string(),
            at_ms: now_ms,
            remotes: Vec::with_capacity(snapshot.remotes.len()),
            ignored: snapshot.ignored().to_vec(),
        };
        let mut headroom = std::mem::take(&mut self.headroom);
        for (ri, remote) in snapshot.remotes.iter().enumerate() {
            snapshot.local_headroom(ri, &mut headroom);
            let mut h = DefaultHasher::new();
            (snapshot.global_fingerprint, remote.fingerprint).hash(&mut h);
            for &(li, _, _) in &remote.usage {
                headroom[li as usize].hash(&mut h);
            }
            let key = h.finish();
            let st = self.remotes.entry(remote.name.clone()).or_default();
            let same_inputs = st.cache.as_ref().is_some_and(|c| c.key == key);
            if !(same_inputs && st.settled) {
                let ranking = match st.cache.take() {
                    Some(c) if c.key == key => c.ranking,
                    _ => rank_remote(snapshot, ri, &self.policy, &self.scales, &headroom),
                };
                let step = st.step(snapshot, ri, &ranking, &self.policy, &self.scales, now_ms);
                if let Some(change) = step.change {
                    Self::record(&mut self.history, &mut self.changes, change);
                }
                st.cache = Some(Cached {
                    key,
                    ranking,
                    decision: step.decision,
                    explanation: Arc::new(step.explanation),
                });
            }
            let c = st.cache.as_ref().expect("set above");
            decision.remotes.push(c.decision.clone());
            explanation.remotes.push(c.explanation.clone());
        }
        self.headroom = headroom;
        let Controller {
            remotes,
            history,
            changes,
            ..
        } = self;
        remotes.retain(|name, st| {
            let present = snapshot
                .remotes
                .binary_search_by(|r| r.name.cmp(name))
                .is_ok();
            if !present && !st.chosen.is_empty() {
                Self::record(
                    history,
                    changes,
                    Change {
                        at_ms: now_ms,
                        datacenter: name.to_string(),
                        added: Vec::new(),
                        removed: st.chosen.clone(),
                        cause: "the datacenter left the mesh: none of its gatewans is known".into(),
                        reasons: vec![ChangeReason::DatacenterLeft],
                    },
                );
            }
            present
        });
        (decision, explanation)
    }
}

impl RemoteState {
    fn timed(&self) -> bool {
        self.pending_since.is_some()
            || !self.healthy_since.is_empty()
            || (self.none_healthy_since.is_some() && !self.chosen.is_empty())
    }

    fn step(
        &mut self,
        s: &Snapshot,
        ri: usize,
        r: &Ranking,
        p: &Policy,
        sc: &Scales,
        now: u64,
    ) -> Step {
        let hold = u64::try_from(p.hold_down.as_millis()).unwrap_or(u64::MAX);
        let name = &s.remotes[ri].name;

        for c in &r.cands {
            if !c.healthy() {
                self.unhealthy.insert(c.id);
                self.healthy_since.remove(&c.id);
            } else if self.unhealthy.remove(&c.id) && hold > 0 {
                self.healthy_since.insert(c.id, now);
            }
        }
        self.unhealthy.retain(|id| r.position(*id).is_some());
        self.healthy_since
            .retain(|id, since| now.saturating_sub(*since) < hold && r.position(*id).is_some());
        let recovering = |c: u32| self.healthy_since.contains_key(&r.cands[c as usize].id);

        let mut kept = Vec::new();
        let mut lost = Vec::new();
        for &id in &self.chosen {
            match r.position(id) {
                Some(c) if r.cands[c as usize].healthy() => kept.push(c),
                Some(c) => lost.push((id, r.cands[c as usize].rejected)),
                None => lost.push((id, None)),
            }
        }
        let settled_first: Vec<u32> = r
            .order
            .iter()
            .copied()
            .filter(|&c| !recovering(c))
            .chain(r.order.iter().copied().filter(|&c| recovering(c)))
            .collect();
        let need = Need {
            required_bps: p.required_bps(name),
            min: p.min_tunnels as usize,
            max: p.max_tunnels as usize,
        };
        // What the chosen tunnels become at once: the healthy ones kept, completed when they
        // no longer meet the need.
        let immediate = select(r, &settled_first, &kept, &need, Seeds::Keep);
        let current: Vec<u32> = immediate.picks.iter().map(|p| p.0).collect();
        // The better set, if any: the current one made minimal (without its redundant
        // tunnels, completed where that frees a slot below max_tunnels), or the choice from
        // scratch when that beats it by the margin.
        // With nothing kept, `immediate` is already both (the first decision, and every
        // datacenter of a restarted controller): skip the work.
        let (trimmed, fresh) = if kept.is_empty() {
            (immediate.clone(), immediate.clone())
        } else {
            (
                select(r, &settled_first, &current, &need, Seeds::Prune),
                select(r, &settled_first, &[], &need, Seeds::Prune),
            )
        };
        let set_of = |sel: &Selection| sel.picks.iter().map(|p| p.0).collect::<Vec<u32>>();
        let best: &Selection = if fresh.ids(r) != trimmed.ids(r)
            && beats(
                r,
                &set_of(&fresh),
                &set_of(&trimmed),
                &current,
                p.margin,
                &settled_first,
                &need,
            ) {
            &fresh
        } else {
            &trimmed
        };
        let better_exists = best.ids(r) != immediate.ids(r);

        // The hold-down measures how long *a* better set has existed, not one set: jitter
        // that swaps between equally good better sets must not restart it. When it has
        // held for hold_down, the best set of that moment applies.
        let mut applied = false;
        let mut pending = None;
        let chosen_sel: &Selection = if !better_exists {
            self.pending_since = None;
            &immediate
        } else {
            let since = *self.pending_since.get_or_insert(now);
            if now.saturating_sub(since) >= hold {
                self.pending_since = None;
                applied = true;
                best
            } else {
                pending = Some(since);
                &immediate
            }
        };

        let mut set: Vec<u32> = chosen_sel.picks.iter().map(|p| p.0).collect();
        // Nothing healthy: the chosen tunnels still known stay for hold_when_none_healthy.
        let none_hold = u64::try_from(p.hold_when_none_healthy.as_millis()).unwrap_or(u64::MAX);
        let mut held_until = None;
        let mut hold_expired = false;
        if r.order.is_empty() {
            let since = *self.none_healthy_since.get_or_insert(now);
            let known: Vec<u32> = self
                .chosen
                .iter()
                .filter_map(|id| r.position(*id))
                .collect();
            if !known.is_empty() {
                if now.saturating_sub(since) < none_hold {
                    held_until = Some(since.saturating_add(none_hold));
                    set = known;
                } else {
                    hold_expired = true;
                }
            }
        } else {
            self.none_healthy_since = None;
        }
        set.sort_unstable_by_key(|&c| (r.rank[c as usize], c));
        let chosen_bps = max_flow(r, &set).total;
        let roles = roles(r, &set, &need);
        let shortfall_bps = need.required_bps.saturating_sub(chosen_bps);

        let applies_at = |since: u64| since.saturating_add(hold);
        let verdict = |c: u32| -> (Verdict, Option<String>) {
            let cand = &r.cands[c as usize];
            if let Some(v) = cand.rejected {
                let held = held_until.filter(|_| set.contains(&c)).map(|until| {
                    format!(
                        "still advertised: no tunnel to {name} is healthy; withdrawn at {until} ms unless one is"
                    )
                });
                return (v, held);
            }
            let why_to_verdict = |w| match w {
                Why::Capacity => Verdict::ChosenForCapacity,
                Why::MinTunnels => Verdict::ChosenForMinTunnels,
                Why::Diversity => Verdict::ChosenForDiversity,
                Why::Kept => Verdict::KeptByHoldDown,
            };
            if set.contains(&c) {
                if let Some(since) = pending
                    && best.why(c).is_none()
                {
                    return (
                        Verdict::KeptByHoldDown,
                        Some(format!(
                            "a better set without it holds since {since} ms; it applies at {} ms",
                            applies_at(since)
                        )),
                    );
                }
                let why = roles.iter().find(|x| x.0 == c).map_or(Why::Kept, |x| x.1);
                return (why_to_verdict(why), None);
            }
            if let Some(since) = pending
                && best.why(c).is_some()
            {
                return (
                    Verdict::WaitingForHoldDown,
                    Some(format!(
                        "in the better set since {since} ms; chosen at {} ms if it holds",
                        applies_at(since)
                    )),
                );
            }
            if let Some(&since) = self.healthy_since.get(&cand.id) {
                return (
                    Verdict::Recovering,
                    Some(format!(
                        "healthy again since {since} ms; eligible at {} ms",
                        applies_at(since)
                    )),
                );
            }
            let v = match chosen_sel.stop {
                Stop::Met => Verdict::NotNeeded,
                Stop::MaxTunnels => Verdict::MaxTunnelsReached,
                Stop::Exhausted => Verdict::NoCapacityLeft,
            };
            (v, None)
        };

        let mut candidates = Vec::with_capacity(r.cands.len());
        let rejected = (0..r.cands.len() as u32).filter(|&c| !r.cands[c as usize].healthy());
        for c in r.order.iter().copied().chain(rejected) {
            let cand = &r.cands[c as usize];
            let e = &s.tunnels[cand.tunnel as usize];
            let m = &e.t.measurements;
            let (v, note) = verdict(c);
            let held = held_until.is_some() && set.contains(&c);
            candidates.push(Candidate {
                tunnel: cand.id,
                interface: e.interface.clone(),
                gatewan: s.gatewans[e.gatewan as usize].name.clone(),
                peer: s.gatewans[e.peer as usize].name.clone(),
                local_transit: s.transits[e.local_transit as usize].clone(),
                peer_transit: s.transits[e.peer_transit as usize].clone(),
                metrics: CandidateMetrics {
                    state: state_name(m.state),
                    loss_ppm: m.loss_ppm,
                    latency_us: m.latency_us,
                    jitter_us: m.jitter_us,
                    reorder_ppm: m.reorder_ppm,
                    rx_bps: m.rx_bps,
                    tx_bps: m.tx_bps,
                    capacity_bps: m.capacity_bps,
                },
                available_bps: cand.available,
                terms: cand.score_terms(sc),
                score: cand.score,
                rank: (r.rank[c as usize] != u32::MAX).then(|| r.rank[c as usize] + 1),
                chosen: v.is_chosen() || held,
                verdict: v,
                note,
            });
        }

        let tunnels: Vec<ChosenTunnel> = set
            .iter()
            .map(|&c| {
                let cand = &r.cands[c as usize];
                let e = &s.tunnels[cand.tunnel as usize];
                let g = &s.gatewans[e.gatewan as usize].g;
                ChosenTunnel {
                    id: e.t.id.0.to_vec().into(),
                    gatewan: g.id.0.to_vec().into(),
                    peer: e.t.peer.0.to_vec().into(),
                    local_transit: e.t.local_transit.clone(),
                    peer_transit: e.t.peer_transit.clone(),
                    // Its own VTEP when its gatewan gives one (and it is an address).
                    vtep: if e.t.vtep.parse::<std::net::IpAddr>().is_ok() {
                        e.t.vtep.clone()
                    } else {
                        g.vtep.clone()
                    },
                    router_mac: e.t.router_mac.to_vec().into(),
                    rd_index: e.t.rd_index,
                    // What the tunnel could carry alone: tunnels sharing an interface then
                    // split it in proportion. 0 means "no link-bandwidth community", so a
                    // chosen tunnel with no headroom left still gets a token weight.
                    weight_bps: if p.link_bandwidth {
                        cand.available.max(1)
                    } else {
                        0
                    },
                }
            })
            .collect();

        let pending_change = pending.map(|since| {
            let now_ids: BTreeSet<TunnelId> = set.iter().map(|&c| r.cands[c as usize].id).collect();
            let best_ids: BTreeSet<TunnelId> = best.ids(r).into_iter().collect();
            PendingChange {
                since_ms: since,
                applies_at_ms: applies_at(since),
                add: best_ids.difference(&now_ids).copied().collect(),
                remove: now_ids.difference(&best_ids).copied().collect(),
            }
        });

        let required = Rate(need.required_bps);
        let mut summary = if let Some(until) = held_until {
            format!(
                "no healthy tunnel: the chosen tunnel(s) stay advertised until {until} ms (hold_when_none_healthy {})",
                ms_text(none_hold)
            )
        } else if r.order.is_empty() {
            format!(
                "no healthy tunnel: routes withdrawn, {} short",
                Rate(shortfall_bps)
            )
        } else if shortfall_bps > 0 {
            let limit = match chosen_sel.stop {
                Stop::MaxTunnels => format!("max_tunnels ({}) reached", need.max),
                _ => "every healthy tunnel that adds capacity is chosen".to_string(),
            };
            format!(
                "{} tunnel(s) give {} of {required} required: {} short; {limit}",
                set.len(),
                Rate(chosen_bps),
                Rate(shortfall_bps)
            )
        } else {
            format!(
                "{} tunnel(s) give {} for {required} required",
                set.len(),
                Rate(chosen_bps)
            )
        };
        let named = |ids: &mut dyn Iterator<Item = TunnelId>| {
            ids.filter_map(|id| r.position(id))
                .map(|c| label(s, r.cands[c as usize].tunnel))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !set.is_empty() {
            summary.push_str(": ");
            summary.push_str(&named(&mut set.iter().map(|&c| r.cands[c as usize].id)));
        }
        if let Some(pc) = &pending_change {
            summary.push_str(&format!(
                "; a better set holds since {} ms and applies at {} ms",
                pc.since_ms, pc.applies_at_ms
            ));
            if !pc.add.is_empty() {
                summary.push_str(&format!(", adding {}", named(&mut pc.add.iter().copied())));
            }
            if !pc.remove.is_empty() {
                summary.push_str(&format!(
                    ", removing {}",
                    named(&mut pc.remove.iter().copied())
                ));
            }
        }

        let new_ids: Vec<TunnelId> = set.iter().map(|&c| r.cands[c as usize].id).collect();
        let old: BTreeSet<TunnelId> = self.chosen.iter().copied().collect();
        let new: BTreeSet<TunnelId> = new_ids.iter().copied().collect();
        let change = (old != new).then(|| {
            let added: Vec<TunnelId> = new_ids.iter().copied().filter(|id| !old.contains(id)).collect();
            let removed: Vec<TunnelId> = self
                .chosen
                .iter()
                .copied()
                .filter(|id| !new.contains(id))
                .collect();
            let mut causes = Vec::new();
            let mut reasons = BTreeSet::new();
            if !self.decided {
                causes.push("first decision".to_string());
                reasons.insert(ChangeReason::First);
            }
            for (id, why) in &lost {
                let id = r
                    .position(*id)
                    .map_or_else(|| id.to_string(), |c| label(s, r.cands[c as usize].tunnel));
                reasons.insert(match why {
                    Some(Verdict::Drained) => ChangeReason::Drained,
                    Some(Verdict::Disabled) => ChangeReason::Disabled,
                    _ => ChangeReason::Unhealthy,
                });
                causes.push(format!(
                    "{id} left the healthy set ({})",
                    why.map_or("no longer reported", Verdict::describe)
                ));
            }
            if hold_expired {
                reasons.insert(ChangeReason::NoneHealthy);
                causes.push(format!(
                    "no tunnel was healthy for hold_when_none_healthy ({})",
                    ms_text(none_hold)
                ));
            }
            if applied {
                reasons.insert(ChangeReason::BetterSet);
                causes.push(format!(
                    "a better set (better by the margin of {} %, or fewer tunnels meeting the need) existed for hold_down ({}): the best set of this moment applies",
                    (p.margin * 1000.0).round() / 10.0,
                    ms_text(hold)
                ));
            } else {
                for &(c, why) in &immediate.picks {
                    let cand = &r.cands[c as usize];
                    if added.contains(&cand.id) && self.decided {
                        let reason = match why {
                            Why::Capacity => "capacity short",
                            Why::MinTunnels => "min_tunnels short",
                            Why::Diversity => "diversity",
                            Why::Kept => continue,
                        };
                        reasons.insert(ChangeReason::Short);
                        causes.push(format!("{} added: {reason}", label(s, cand.tunnel)));
                    }
                }
                let dropped = removed.iter().filter(|id| !lost.iter().any(|l| l.0 == **id)).count();
                if dropped > 0 {
                    reasons.insert(ChangeReason::AboveMaxTunnels);
                    causes.push(format!("{dropped} dropped: above max_tunnels"));
                }
            }
            Change {
                at_ms: now,
                datacenter: name.to_string(),
                added,
                removed,
                cause: causes.join("; "),
                reasons: reasons.into_iter().collect(),
            }
        });
        self.chosen = new_ids;
        self.decided = true;
        self.settled = change.is_none() && !self.timed();

        Step {
            decision: DatacenterDecision {
                datacenter: name.to_string(),
                tunnels,
                required_bps: need.required_bps,
                chosen_bps,
                shortfall_bps,
            },
            explanation: RemoteExplanation {
                datacenter: name.clone(),
                required_bps: need.required_bps,
                chosen_bps,
                shortfall_bps,
                summary,
                pending: pending_change,
                candidates,
            },
            change,
        }
    }
}
