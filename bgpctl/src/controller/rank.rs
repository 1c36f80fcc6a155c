//! Ranking, pure: the candidate tunnels toward one remote datacenter, filtered for health
//! and scored. Depends only on the snapshot, the policy and the headroom of the local
//! transit interfaces, so each datacenter is ranked alone.
//!
//! Score = Σ weightᵢ × termᵢ ÷ Σ weights, every term normalised on an absolute scale to
//! 0 (best) ..= 1 (worst): absolute scales keep a tunnel's score independent of the other
//! candidates, so one tunnel's change never re-scores the rest.

use gatewan_proto::v1::TunnelState;

use super::explain::{ScoreTerms, Term, Verdict};
use super::policy::Policy;
use super::snapshot::{Snapshot, TunnelId};

/// The policy, prepared for scoring.
#[derive(Debug, Clone)]
pub(crate) struct Scales {
    weights: [f64; 5],
    max_latency_us: f64,
    max_loss: f64,
}

impl Scales {
    pub(crate) fn new(p: &Policy) -> Self {
        Scales {
            weights: p.weights.normalised(),
            max_latency_us: (p.max_latency.as_secs_f64() * 1e6).max(1.0),
            max_loss: p.max_loss,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Cand {
    /// Index of the tunnel in the snapshot.
    pub tunnel: u32,
    pub id: TunnelId,
    /// None when healthy, else why not.
    pub rejected: Option<Verdict>,
    /// Normalised terms: latency, jitter, loss, usage, cost.
    pub terms: [f64; 5],
    pub score: f64,
    pub capacity: u64,
    pub available: u64,
    pub local_iface: u32,
    pub local_budget: u64,
    pub remote_iface: u32,
    pub remote_budget: u64,
    /// Failure domains: local gatewan, peer gatewan, local transit, peer transit.
    pub gatewan: u32,
    pub peer: u32,
    pub local_transit: u32,
    pub peer_transit: u32,
}

impl Cand {
    pub(crate) fn healthy(&self) -> bool {
        self.rejected.is_none()
    }

    pub(crate) fn uses_transit(&self, t: u32) -> bool {
        self.local_transit == t || self.peer_transit == t
    }

    pub(crate) fn score_terms(&self, s: &Scales) -> ScoreTerms {
        let t = |i: usize| Term {
            value: self.terms[i],
            weighted: self.terms[i] * s.weights[i],
        };
        ScoreTerms {
            latency: t(0),
            jitter: t(1),
            loss: t(2),
            usage: t(3),
            cost: t(4),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Ranking {
    /// Every tunnel toward the datacenter, by tunnel id.
    pub cands: Vec<Cand>,
    /// The healthy ones, best first: score, then tunnel id (a stable tie-break the same
    /// on every bgpctl).
    pub order: Vec<u32>,
    /// Per candidate, its position in `order`; `u32::MAX` when not healthy.
    pub rank: Vec<u32>,
}

impl Ranking {
    pub(crate) fn position(&self, id: TunnelId) -> Option<u32> {
        self.cands
            .binary_search_by_key(&id, |c| c.id)
            .ok()
            .map(|i| i as u32)
    }
}

/// Ranks the tunnels toward remote datacenter `ri`; `headroom` is per local interface
/// (see `Snapshot::local_headroom`).
pub(crate) fn rank_remote(
    s: &Snapshot,
    ri: usize,
    p: &Policy,
    sc: &Scales,
    headroom: &[u64],
) -> Ranking {
    let range = s.remotes[ri].tunnels.clone();
    let mut cands = Vec::with_capacity(range.len());
    let max_cost = f64::from(s.max_cost);
    // Transit `t` of gatewan `g` is drained (by its name: indexes are the snapshot's).
    let drained = |g: &super::snapshot::Gatewan, t: u32| {
        g.transits
            .iter()
            .any(|x| x.drained && *x.name == *s.transits[t as usize])
    };
    for (i, e) in s.tunnels[range.clone()].iter().enumerate() {
        let m = &e.t.measurements;
        let g = &s.gatewans[e.gatewan as usize].g;
        let peer = &s.gatewans[e.peer as usize].g;
        let loss = f64::from(m.loss_ppm) / 1e6;
        let latency = u128::from(m.latency_us);
        let rejected = if !g.alive {
            Some(Verdict::GatewanDown)
        } else if g.vtep.is_empty() {
            Some(Verdict::NoVtep)
        } else if !peer.alive {
            Some(Verdict::PeerDown)
        } else if m.state != TunnelState::Established {
            Some(Verdict::NotEstablished)
        } else if loss > p.max_loss {
            Some(Verdict::LossAboveMax)
        } else if latency > p.max_latency.as_micros() {
            Some(Verdict::LatencyAboveMax)
        } else if drained(g, e.local_transit) || drained(peer, e.peer_transit) {
            Some(Verdict::Drained)
        } else if e.t.disabled {
            Some(Verdict::Disabled)
        } else {
            None
        };
        let local_budget = headroom[e.local_iface as usize];
        let remote_budget = s.remote_ifaces[e.remote_iface as usize].unwrap_or(u64::MAX);
        let capacity = m.capacity_bps;
        let available = capacity.min(local_budget).min(remote_budget);
        let local_cost = s.local_ifaces[e.local_iface as usize].cost;
        let peer_cost = peer
            .transits
            .iter()
            .find(|t| *t.name == *s.transits[e.peer_transit as usize])
            .map_or(0, |t| t.cost);
        let terms = [
            (f64::from(m.latency_us) / sc.max_latency_us).min(1.0),
            (f64::from(m.jitter_us) / sc.max_latency_us).min(1.0),
            if sc.max_loss > 0.0 {
                (loss / sc.max_loss).min(1.0)
            } else if loss > 0.0 {
                1.0
            } else {
                0.0
            },
            if capacity == 0 {
                1.0
            } else {
                1.0 - available as f64 / capacity as f64
            },
            if max_cost > 0.0 {
                (f64::from(local_cost) + f64::from(peer_cost)) / (2.0 * max_cost)
            } else {
                0.0
            },
        ];
        // Summed in a fixed order: the same bits on every bgpctl.
        let mut score = 0.0;
        for (t, w) in terms.iter().zip(sc.weights) {
            score += t * w;
        }
        cands.push(Cand {
            tunnel: (range.start + i) as u32,
            id: e.t.id,
            rejected,
            terms,
            score,
            capacity,
            available,
            local_iface: e.local_iface,
            local_budget,
            remote_iface: e.remote_iface,
            remote_budget,
            gatewan: e.gatewan,
            peer: e.peer,
            local_transit: e.local_transit,
            peer_transit: e.peer_transit,
        });
    }
    // A drain (or a disable) moves traffic off tunnels; it must not cut a datacenter off.
    // With no other healthy tunnel toward it, those are candidates as before.
    if cands.iter().all(|c| c.rejected.is_some()) {
        for c in &mut cands {
            if matches!(c.rejected, Some(Verdict::Drained | Verdict::Disabled)) {
                c.rejected = None;
            }
        }
    }
    let mut order: Vec<u32> = (0..cands.len() as u32)
        .filter(|&c| cands[c as usize].healthy())
        .collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&cands[a as usize], &cands[b as usize]);
        a.score.total_cmp(&b.score).then(a.id.cmp(&b.id))
    });
    let mut rank = vec![u32::MAX; cands.len()];
    for (pos, &c) in order.iter().enumerate() {
        rank[c as usize] = pos as u32;
    }
    Ranking { cands, order, rank }
}
