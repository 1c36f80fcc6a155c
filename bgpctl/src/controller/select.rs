//! Selection, pure: from ranked candidates, the tunnels that meet a remote datacenter's
//! need (required capacity, min_tunnels) within max_tunnels, spread so that one transit
//! or one gatewan failing never takes all chosen tunnels when an alternative exists.
//!
//! Capacity is counted per transit interface, not per tunnel: with pairing `all`, every
//! local transit interface carries one tunnel per remote gatewan and remote transit, so
//! summing tunnel capacities would count each interface many times. The capacity of a set
//! is the maximum flow through it (see [`max_flow`]); a candidate that would not raise it
//! is not picked for capacity.
//!
//! Picks follow the rank while more than one tunnel is still needed for capacity. Then
//! diversity: a failure domain is a local gatewan, a peer gatewan, or a transit name at
//! either end (a provider outage takes every tunnel that uses it at either end). While all
//! chosen tunnels share a domain that some healthy candidate avoids, the pick that could
//! complete the need (and the last slot below max_tunnels) goes to the candidate avoiding
//! the most such shared domains (then the one adding capacity, then the best ranked).
//! This holds even when capacity and min_tunnels are met by one tunnel: then a second,
//! diverse tunnel is chosen; only max_tunnels stops it (`max_tunnels: 1` runs a single
//! tunnel).
//!
//! A prune pass makes the set *minimal*: the greedy picks above can leave a tunnel that
//! later picks made redundant (a first pick on lumen→cogent, then lumen→lumen and
//! cogent→cogent for diversity: the first no longer carries anything the need asks for).
//! It runs at the end, and whenever max_tunnels is reached, so that a slot a redundant
//! pick held goes to the next pick.
//!
//! Let `S` be the set, `target = min(required capacity, capacity(S))` and `shared(S)` the
//! failure domains that every tunnel of `S` uses while some healthy candidate avoids them.
//! `S` is **minimal** when no tunnel `t` of `S` can be removed keeping all of
//! - `capacity(S − t) ≥ target` (the need, or what the set gives when it cannot be met),
//! - `|S − t| ≥ min_tunnels`,
//! - `shared(S − t) = shared(S)` (no diversity the candidates allow is lost).
//!
//! The pass tries the tunnels lowest-ranked first and removes each that can go. One pass is
//! enough: removing tunnels only lowers capacity and count and only adds shared domains,
//! so a tunnel that could not go from a set cannot go from any subset of it. The order is
//! the selection's (the rank, recovering tunnels last), ties by tunnel id, so every bgpctl
//! prunes the same way.
//!
//! Sets are compared by [`Quality`]: less shortfall, then fewer missing for min_tunnels,
//! then fewer shared failure domains, then fewer tunnels; equal in all that, by the scores
//! of the tunnels in which they differ (see [`beats`]).

use super::rank::Ranking;
use super::snapshot::TunnelId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Need {
    pub required_bps: u64,
    pub min: usize,
    pub max: usize,
}

/// Why a candidate entered a selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Given as a seed: it was chosen before.
    Kept,
    Capacity,
    MinTunnels,
    Diversity,
}

/// Why a selection stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Capacity and min_tunnels are met, and diversity as far as the candidates allow.
    Met,
    /// max_tunnels reached with something still unmet.
    MaxTunnels,
    /// Capacity or min_tunnels unmet, and no candidate left that helps.
    Exhausted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selection {
    pub picks: Vec<(u32, Why)>,
    pub stop: Stop,
}

impl Selection {
    pub(crate) fn why(&self, c: u32) -> Option<Why> {
        self.picks.iter().find(|p| p.0 == c).map(|p| p.1)
    }

    pub(crate) fn ids(&self, r: &Ranking) -> Vec<TunnelId> {
        let mut ids: Vec<TunnelId> = self
            .picks
            .iter()
            .map(|p| r.cands[p.0 as usize].id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// The capacity of a set of tunnels: the maximum flow from the local transit interfaces
/// (each bounded by its headroom) through the tunnels (each bounded by its capacity) to
/// the remote transit interfaces (each bounded by its capacity). It depends on the set
/// only, never on the order of the scores, so re-ranking alone never looks like a loss
/// of capacity.
#[derive(Debug, Clone)]
pub(crate) struct Flow {
    pub total: u64,
    /// Local interfaces with headroom left for one more tunnel (reachable from the source
    /// in the residual network), and remote interfaces that could still take traffic
    /// (reaching the sink).
    local: Vec<(u32, bool)>,
    remote: Vec<(u32, bool)>,
}

impl Flow {
    /// Whether adding candidate `c` to the set raises the capacity: it does exactly when
    /// the residual network has a path source → its local interface → its remote
    /// interface → sink.
    pub(crate) fn grows_with(&self, r: &Ranking, c: u32) -> bool {
        let cand = &r.cands[c as usize];
        let local_ok = match self.local.iter().find(|l| l.0 == cand.local_iface) {
            Some(l) => l.1,
            None => cand.local_budget > 0,
        };
        let remote_ok = match self.remote.iter().find(|x| x.0 == cand.remote_iface) {
            Some(x) => x.1,
            None => cand.remote_budget > 0,
        };
        cand.capacity > 0 && local_ok && remote_ok
    }
}

/// Edmonds–Karp on the small network of a set (a handful of tunnels).
pub(crate) fn max_flow(r: &Ranking, set: &[u32]) -> Flow {
    const SOURCE: usize = 0;
    const SINK: usize = 1;
    let mut local: Vec<u32> = Vec::new();
    let mut remote: Vec<u32> = Vec::new();
    // (from, to, residual capacity); edge i and i ^ 1 are each other's reverse.
    let mut edges: Vec<(usize, usize, u64)> = Vec::new();
    let add = |edges: &mut Vec<(usize, usize, u64)>, a: usize, b: usize, cap: u64| {
        edges.push((a, b, cap));
        edges.push((b, a, 0));
    };
    for &c in set {
        let cand = &r.cands[c as usize];
        if !local.contains(&cand.local_iface) {
            local.push(cand.local_iface);
        }
        if !remote.contains(&cand.remote_iface) {
            remote.push(cand.remote_iface);
        }
    }
    let local_node = |i: u32| 2 + local.iter().position(|&l| l == i).expect("collected");
    let remote_node =
        |i: u32| 2 + local.len() + remote.iter().position(|&x| x == i).expect("collected");
    for &l in &local {
        let budget = set
            .iter()
            .map(|&c| &r.cands[c as usize])
            .find(|c| c.local_iface == l)
            .map_or(0, |c| c.local_budget);
        add(&mut edges, SOURCE, local_node(l), budget);
    }
    for &c in set {
        let cand = &r.cands[c as usize];
        add(
            &mut edges,
            local_node(cand.local_iface),
            remote_node(cand.remote_iface),
            cand.capacity,
        );
    }
    for &x in &remote {
        let budget = set
            .iter()
            .map(|&c| &r.cands[c as usize])
            .find(|c| c.remote_iface == x)
            .map_or(0, |c| c.remote_budget);
        add(&mut edges, remote_node(x), SINK, budget);
    }
    let nodes = 2 + local.len() + remote.len();
    let mut total = 0u64;
    let mut via = vec![usize::MAX; nodes];
    let mut queue = std::collections::VecDeque::new();
    loop {
        via.fill(usize::MAX);
        via[SOURCE] = edges.len();
        queue.clear();
        queue.push_back(SOURCE);
        while let Some(u) = queue.pop_front() {
            for (i, e) in edges.iter().enumerate() {
                if e.0 == u && e.2 > 0 && via[e.1] == usize::MAX {
                    via[e.1] = i;
                    queue.push_back(e.1);
                }
            }
        }
        if via[SINK] == usize::MAX {
            break;
        }
        let mut bottleneck = u64::MAX;
        let mut v = SINK;
        while v != SOURCE {
            let e = edges[via[v]];
            bottleneck = bottleneck.min(e.2);
            v = e.0;
        }
        let mut v = SINK;
        while v != SOURCE {
            let i = via[v];
            edges[i].2 -= bottleneck;
            edges[i ^ 1].2 = edges[i ^ 1].2.saturating_add(bottleneck);
            v = edges[i].0;
        }
        total = total.saturating_add(bottleneck);
    }
    // `via` now marks what the source reaches; walk backwards for what reaches the sink.
    let mut to_sink = vec![false; nodes];
    to_sink[SINK] = true;
    queue.clear();
    queue.push_back(SINK);
    while let Some(v) = queue.pop_front() {
        for e in &edges {
            if e.1 == v && e.2 > 0 && !to_sink[e.0] {
                to_sink[e.0] = true;
                queue.push_back(e.0);
            }
        }
    }
    Flow {
        total,
        local: local
            .iter()
            .map(|&l| (l, via[local_node(l)] != usize::MAX))
            .collect(),
        remote: remote
            .iter()
            .map(|&x| (x, to_sink[remote_node(x)]))
            .collect(),
    }
}

/// A failure domain all chosen tunnels share while a healthy candidate avoids it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shared {
    Gatewan(u32),
    Peer(u32),
    Transit(u32),
}

fn shared_domains(r: &Ranking, set: &[u32], healthy: &[u32]) -> Vec<Shared> {
    let mut out = Vec::new();
    let Some(&first) = set.first() else {
        return out;
    };
    let c = |i: u32| &r.cands[i as usize];
    let f = c(first);
    if set.iter().all(|&s| c(s).gatewan == f.gatewan)
        && healthy.iter().any(|&h| c(h).gatewan != f.gatewan)
    {
        out.push(Shared::Gatewan(f.gatewan));
    }
    if set.iter().all(|&s| c(s).peer == f.peer) && healthy.iter().any(|&h| c(h).peer != f.peer) {
        out.push(Shared::Peer(f.peer));
    }
    let mut transits = vec![f.local_transit];
    if f.peer_transit != f.local_transit {
        transits.push(f.peer_transit);
    }
    for t in transits {
        if set.iter().all(|&s| c(s).uses_transit(t))
            && healthy.iter().any(|&h| !c(h).uses_transit(t))
        {
            out.push(Shared::Transit(t));
        }
    }
    out
}

fn avoided(r: &Ranking, c: u32, shared: &[Shared]) -> usize {
    let cand = &r.cands[c as usize];
    shared
        .iter()
        .filter(|d| match **d {
            Shared::Gatewan(g) => cand.gatewan != g,
            Shared::Peer(p) => cand.peer != p,
            Shared::Transit(t) => !cand.uses_transit(t),
        })
        .count()
}

/// Whether the seeds of a selection may be pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seeds {
    /// Tunnels chosen before stay: dropping one that became redundant is a change, which
    /// waits for hold-down.
    Keep,
    /// Redundant seeds go too: the chosen set made minimal.
    Prune,
}

/// Selects from `order` (healthy candidates, most preferred first), starting from `seed`
/// (candidates chosen before, kept while healthy and within max_tunnels). The result is
/// minimal (but for kept seeds): pruned at the end, and whenever max_tunnels is reached,
/// so that a slot a redundant pick held goes to the next pick. Pruning in between would
/// change no stopping condition (a prune keeps capacity up to the need, the shared
/// domains and min_tunnels as they are) and costs max flows.
///
/// It ends: each pick strictly raises (capacity up to the need, − shared domains, tunnels
/// up to min_tunnels) in that order, which a prune leaves as it is, and that triple takes
/// finitely many values.
pub(crate) fn select(
    r: &Ranking,
    order: &[u32],
    seed: &[u32],
    need: &Need,
    seeds: Seeds,
) -> Selection {
    let rank = |c: u32| r.rank[c as usize];
    let mut set: Vec<u32> = seed
        .iter()
        .copied()
        .filter(|&c| rank(c) != u32::MAX)
        .collect();
    set.sort_unstable_by_key(|&c| rank(c));
    set.dedup();
    set.truncate(need.max);
    let mut picks: Vec<(u32, Why)> = set.iter().map(|&c| (c, Why::Kept)).collect();
    let mut in_set = vec![false; r.cands.len()];
    for &c in &set {
        in_set[c as usize] = true;
    }
    let mut pos = vec![u32::MAX; r.cands.len()];
    for (i, &c) in order.iter().enumerate() {
        pos[c as usize] = i as u32;
    }
    // The argument above bounds the loop; this only keeps a mistake from hanging bgpctl.
    let mut steps = 4 * r.cands.len() + 16;
    // Prunes the set; whether that removed anything.
    let prune_now = |set: &mut Vec<u32>, picks: &mut Vec<(u32, Why)>, in_set: &mut [bool]| {
        let kept = prune(r, order, &pos, set, picks, need, seeds);
        if kept.len() == set.len() {
            return false;
        }
        for &c in set.iter() {
            in_set[c as usize] = kept.contains(&c);
        }
        picks.retain(|p| kept.contains(&p.0));
        *set = kept;
        true
    };
    let stop = loop {
        steps = steps.saturating_sub(1);
        let flow = max_flow(r, &set);
        let capacity_short = flow.total < need.required_bps;
        let min_short = set.len() < need.min;
        let shared = shared_domains(r, &set, order);
        if !capacity_short && !min_short && shared.is_empty() {
            break Stop::Met;
        }
        if set.len() >= need.max {
            if steps > 0 && prune_now(&mut set, &mut picks, &mut in_set) {
                continue;
            }
            break Stop::MaxTunnels;
        }
        if steps == 0 {
            break Stop::Exhausted;
        }
        let adds = |c: u32| flow.grows_with(r, c);
        let first_adding = || {
            order
                .iter()
                .copied()
                .find(|&c| !in_set[c as usize] && adds(c))
        };
        let mut pick = None;
        // While more than one tunnel is still needed for capacity, picks follow the rank:
        // they may well spread the set on their own. Diversity takes the pick that could
        // complete the need, and the last slot below max_tunnels.
        if capacity_short && let Some(c) = first_adding() {
            let last_slot = set.len() + 1 >= need.max;
            let completes = || {
                let mut with = set.clone();
                with.push(c);
                max_flow(r, &with).total >= need.required_bps
            };
            if shared.is_empty() || (!last_slot && !completes()) {
                pick = Some((c, Why::Capacity));
            }
        }
        if pick.is_none() && !shared.is_empty() {
            // (domains avoided, adds capacity, candidate); earlier in `order` wins ties.
            let mut best: Option<(usize, bool, u32)> = None;
            for &c in order {
                if in_set[c as usize] {
                    continue;
                }
                let n = avoided(r, c, &shared);
                if n == 0 {
                    continue;
                }
                best = match best {
                    Some((bn, _, _)) if n < bn => best,
                    Some((bn, true, _)) if n == bn => best,
                    Some((bn, false, _)) if n == bn => {
                        if adds(c) {
                            Some((n, true, c))
                        } else {
                            best
                        }
                    }
                    _ => Some((n, adds(c), c)),
                };
            }
            pick = best.map(|b| (b.2, Why::Diversity));
        }
        if pick.is_none() && capacity_short {
            pick = first_adding().map(|c| (c, Why::Capacity));
        }
        if pick.is_none() && min_short {
            let free = order.iter().copied().filter(|&c| !in_set[c as usize]);
            pick = free
                .clone()
                .find(|&c| adds(c))
                .or_else(|| free.clone().next())
                .map(|c| (c, Why::MinTunnels));
        }
        let Some((c, why)) = pick else {
            break if capacity_short || min_short {
                Stop::Exhausted
            } else {
                Stop::Met
            };
        };
        in_set[c as usize] = true;
        let at = set.partition_point(|&s| rank(s) < rank(c));
        set.insert(at, c);
        picks.push((c, why));
    };
    if stop != Stop::MaxTunnels {
        // Nothing added to a subset adds capacity the whole did not: the stop still holds.
        prune_now(&mut set, &mut picks, &mut in_set);
    }
    Selection { picks, stop }
}

/// `set` without its redundant tunnels (see the module doc), tried lowest-ranked in
/// `order` first (`pos`: position in `order`); with [`Seeds::Keep`], never a seed. Never
/// empties the set.
fn prune(
    r: &Ranking,
    order: &[u32],
    pos: &[u32],
    set: &[u32],
    picks: &[(u32, Why)],
    need: &Need,
    seeds: Seeds,
) -> Vec<u32> {
    let mut set = set.to_vec();
    if set.len() <= need.min.max(1) {
        return set;
    }
    let target = need.required_bps.min(max_flow(r, &set).total);
    let shared = shared_domains(r, &set, order).len();
    let mut tries: Vec<u32> = picks
        .iter()
        .filter(|p| !(seeds == Seeds::Keep && p.1 == Why::Kept))
        .map(|p| p.0)
        .collect();
    // Lowest-ranked first; the candidate index breaks ties the same way everywhere.
    tries.sort_unstable_by_key(|&c| std::cmp::Reverse((pos[c as usize], c)));
    for c in tries {
        let without: Vec<u32> = set.iter().copied().filter(|&s| s != c).collect();
        // Removing only ever adds shared domains: an equal count is the same domains. The
        // max flow, the dearest test, comes last.
        let redundant = !without.is_empty()
            && without.len() >= need.min
            && shared_domains(r, &without, order).len() == shared
            && max_flow(r, &without).total >= target;
        if redundant {
            set = without;
        }
    }
    set
}

/// What a set gives for the need, compared field by field: the smaller the better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Quality {
    pub shortfall_bps: u64,
    /// Tunnels missing for min_tunnels.
    pub min_short: usize,
    /// Failure domains every tunnel of the set uses while a healthy candidate avoids them.
    pub shared: usize,
    pub tunnels: usize,
}

pub(crate) fn quality(r: &Ranking, set: &[u32], healthy: &[u32], need: &Need) -> Quality {
    Quality {
        shortfall_bps: need.required_bps.saturating_sub(max_flow(r, set).total),
        min_short: need.min.saturating_sub(set.len()),
        shared: shared_domains(r, set, healthy).len(),
        tunnels: set.len(),
    }
}

/// Whether set `a` is strictly better than set `b` by the margin: a better [`Quality`];
/// or the same quality, and the tunnels only `a` has score less in sum than the tunnels
/// only `b` has, a tunnel of `chosen` counting `(1 − margin) ×` its score. Against the
/// chosen set, a set of as many tunnels must therefore beat what it replaces by the
/// margin, while a set that meets the need with fewer tunnels is better whatever the
/// scores.
pub(crate) fn beats(
    r: &Ranking,
    a: &[u32],
    b: &[u32],
    chosen: &[u32],
    margin: f64,
    healthy: &[u32],
    need: &Need,
) -> bool {
    match quality(r, a, healthy, need).cmp(&quality(r, b, healthy, need)) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => {
            let only = |x: &[u32], y: &[u32]| {
                let mut v: Vec<u32> = x.iter().copied().filter(|c| !y.contains(c)).collect();
                // Summed in a fixed order: the same bits on every bgpctl.
                v.sort_unstable();
                let mut sum = 0.0;
                for c in v {
                    let score = r.cands[c as usize].score;
                    sum += if chosen.contains(&c) {
                        score * (1.0 - margin)
                    } else {
                        score
                    };
                }
                sum
            };
            only(a, b) < only(b, a)
        }
    }
}

/// Why each tunnel of `set` is in it, walking the set in the given order: for capacity
/// when it raises the capacity of the tunnels before it while those fall short, else for
/// min_tunnels while those are fewer, else for diversity (in a minimal set, removing it
/// would leave a failure domain shared).
pub(crate) fn roles(r: &Ranking, set: &[u32], need: &Need) -> Vec<(u32, Why)> {
    let mut out = Vec::with_capacity(set.len());
    let mut before: Vec<u32> = Vec::with_capacity(set.len());
    let mut flow = 0;
    for &c in set {
        before.push(c);
        let with = max_flow(r, &before).total;
        let why = if flow < need.required_bps && with > flow {
            Why::Capacity
        } else if before.len() <= need.min {
            Why::MinTunnels
        } else {
            Why::Diversity
        };
        flow = with;
        out.push((c, why));
    }
    out
}
