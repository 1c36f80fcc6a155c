//! Why each tunnel was or was not chosen: the serialisable explanation the API and
//! `routingctl explain` render, and the history of changes.

use std::sync::Arc;

use serde::Serialize;

use gatewan_proto::v1;

use super::snapshot::{IgnoredTunnel, TunnelId};

/// The outcome for one candidate tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    // Chosen.
    ChosenForCapacity,
    ChosenForMinTunnels,
    ChosenForDiversity,
    KeptByHoldDown,
    // Healthy, not chosen.
    NotNeeded,
    NoCapacityLeft,
    MaxTunnelsReached,
    WaitingForHoldDown,
    Recovering,
    // Not healthy: not a candidate.
    GatewanDown,
    PeerDown,
    NoVtep,
    NotEstablished,
    LossAboveMax,
    LatencyAboveMax,
    /// Healthy, but one of its transits is drained, and another tunnel toward the
    /// datacenter is healthy.
    Drained,
    /// Healthy, but disabled by an operator at either end, and another tunnel toward the
    /// datacenter is healthy.
    Disabled,
}

impl Verdict {
    /// Every verdict, for tests and documentation.
    pub const ALL: [Verdict; 17] = [
        Verdict::ChosenForCapacity,
        Verdict::ChosenForMinTunnels,
        Verdict::ChosenForDiversity,
        Verdict::KeptByHoldDown,
        Verdict::NotNeeded,
        Verdict::NoCapacityLeft,
        Verdict::MaxTunnelsReached,
        Verdict::WaitingForHoldDown,
        Verdict::Recovering,
        Verdict::GatewanDown,
        Verdict::PeerDown,
        Verdict::NoVtep,
        Verdict::NotEstablished,
        Verdict::LossAboveMax,
        Verdict::LatencyAboveMax,
        Verdict::Drained,
        Verdict::Disabled,
    ];

    /// The verdict's name as the API and `routingctl explain` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::ChosenForCapacity => "chosen_for_capacity",
            Verdict::ChosenForMinTunnels => "chosen_for_min_tunnels",
            Verdict::ChosenForDiversity => "chosen_for_diversity",
            Verdict::KeptByHoldDown => "kept_by_hold_down",
            Verdict::NotNeeded => "not_needed",
            Verdict::NoCapacityLeft => "no_capacity_left",
            Verdict::MaxTunnelsReached => "max_tunnels_reached",
            Verdict::WaitingForHoldDown => "waiting_for_hold_down",
            Verdict::Recovering => "recovering",
            Verdict::GatewanDown => "gatewan_down",
            Verdict::PeerDown => "peer_down",
            Verdict::NoVtep => "no_vtep",
            Verdict::NotEstablished => "not_established",
            Verdict::LossAboveMax => "loss_above_max",
            Verdict::LatencyAboveMax => "latency_above_max",
            Verdict::Drained => "drained",
            Verdict::Disabled => "disabled",
        }
    }

    pub fn is_chosen(self) -> bool {
        matches!(
            self,
            Verdict::ChosenForCapacity
                | Verdict::ChosenForMinTunnels
                | Verdict::ChosenForDiversity
                | Verdict::KeptByHoldDown
        )
    }

    /// Healthy: established, within max_loss and max_latency, both gatewans alive.
    pub fn is_healthy(self) -> bool {
        !matches!(
            self,
            Verdict::GatewanDown
                | Verdict::PeerDown
                | Verdict::NoVtep
                | Verdict::NotEstablished
                | Verdict::LossAboveMax
                | Verdict::LatencyAboveMax
                | Verdict::Drained
                | Verdict::Disabled
        )
    }

    /// One line for an operator.
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::ChosenForCapacity => "chosen: needed for the required capacity",
            Verdict::ChosenForMinTunnels => "chosen: needed for min_tunnels",
            Verdict::ChosenForDiversity => {
                "chosen: so that one transit or gatewan failing does not take all chosen tunnels"
            }
            Verdict::KeptByHoldDown => {
                "chosen: kept by hold-down; a better set has not yet held for hold_down"
            }
            Verdict::NotNeeded => "not chosen: capacity, min_tunnels and diversity are met",
            Verdict::NoCapacityLeft => {
                "not chosen: adds no capacity, its transit interfaces are full with the chosen tunnels"
            }
            Verdict::MaxTunnelsReached => "not chosen: max_tunnels reached",
            Verdict::WaitingForHoldDown => {
                "not chosen yet: beats a chosen tunnel by the margin, replaces it after hold_down"
            }
            Verdict::Recovering => {
                "not chosen: healthy again only recently, eligible after hold_down unless needed"
            }
            Verdict::GatewanDown => "rejected: its gatewan is down",
            Verdict::PeerDown => "rejected: the peer gatewan is down",
            Verdict::NoVtep => "rejected: its gatewan announces no VTEP",
            Verdict::NotEstablished => "rejected: not established",
            Verdict::LossAboveMax => "rejected: loss above max_loss",
            Verdict::LatencyAboveMax => "rejected: latency above max_latency",
            Verdict::Drained => {
                "rejected: one of its transits is drained for maintenance (routingctl transits undrain)"
            }
            Verdict::Disabled => {
                "rejected: disabled by an operator at either end (routingctl tunnels enable)"
            }
        }
    }
}

/// One score term: the measured value normalised to 0 (best) ..= 1 (worst), and its share
/// of the score (normalised value × weight ÷ sum of weights).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Term {
    pub value: f64,
    pub weighted: f64,
}

/// The terms of a score; their `weighted` parts add up to the score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScoreTerms {
    /// latency ÷ max_latency
    pub latency: Term,
    /// jitter ÷ max_latency
    pub jitter: Term,
    /// loss ÷ max_loss
    pub loss: Term,
    /// 1 − available ÷ tunnel capacity
    pub usage: Term,
    /// (local + peer transit cost) ÷ (2 × highest transit cost in the mesh)
    pub cost: Term,
}

/// The measurements of a candidate, as its gatewan gossiped them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CandidateMetrics {
    pub state: &'static str,
    pub loss_ppm: u32,
    pub latency_us: u32,
    pub jitter_us: u32,
    pub reorder_ppm: u32,
    pub rx_bps: u64,
    pub tx_bps: u64,
    pub capacity_bps: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub tunnel: TunnelId,
    /// Its interface on the local gatewan, as `routingctl tunnels` names it.
    pub interface: Arc<str>,
    /// The local gatewan that owns the tunnel.
    pub gatewan: Arc<str>,
    pub peer: Arc<str>,
    pub local_transit: Arc<str>,
    pub peer_transit: Arc<str>,
    pub metrics: CandidateMetrics,
    /// What the tunnel could carry alone: its capacity, bounded by the headroom of its
    /// local transit interface (capacity − usage by tunnels to other datacenters) and the
    /// capacity of the peer's transit. Its link-bandwidth weight when chosen.
    pub available_bps: u64,
    pub terms: ScoreTerms,
    /// 0 is a perfect tunnel; lower is better.
    pub score: f64,
    /// Position among the healthy candidates, 1 = best; none when not healthy.
    pub rank: Option<u32>,
    pub chosen: bool,
    pub verdict: Verdict,
    /// Times behind a hold-down verdict.
    pub note: Option<String>,
}

/// A change to the chosen set that waits for hold-down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingChange {
    pub since_ms: u64,
    pub applies_at_ms: u64,
    pub add: Vec<TunnelId>,
    pub remove: Vec<TunnelId>,
}

/// Why the tunnels toward one remote datacenter are what they are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RemoteExplanation {
    pub datacenter: Arc<str>,
    pub required_bps: u64,
    pub chosen_bps: u64,
    pub shortfall_bps: u64,
    pub summary: String,
    pub pending: Option<PendingChange>,
    /// Healthy candidates in rank order, then the others by tunnel id.
    pub candidates: Vec<Candidate>,
}

/// The explanation of one decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The local datacenter.
    pub datacenter: String,
    pub at_ms: u64,
    /// Sorted by datacenter name.
    pub remotes: Vec<Arc<RemoteExplanation>>,
    /// Reported tunnels that are not candidates.
    pub ignored: Vec<IgnoredTunnel>,
}

impl Explanation {
    pub fn remote(&self, datacenter: &str) -> Option<&RemoteExplanation> {
        self.remotes
            .iter()
            .find(|r| &*r.datacenter == datacenter)
            .map(|r| &**r)
    }
}

/// One change of the tunnels chosen toward a remote datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub at_ms: u64,
    pub datacenter: String,
    pub added: Vec<TunnelId>,
    pub removed: Vec<TunnelId>,
    pub cause: String,
    /// The kinds of cause in `cause`, each once, for counting (`cause` says the details).
    pub reasons: Vec<ChangeReason>,
}

/// Why the chosen tunnels changed, in a few kinds an alert or a graph can count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeReason {
    /// The datacenter's first decision.
    First,
    /// A chosen tunnel left the healthy set (down, degraded, too slow, gone).
    Unhealthy,
    /// A chosen tunnel's transit was drained.
    Drained,
    /// A chosen tunnel was disabled.
    Disabled,
    /// No tunnel was healthy for `hold_when_none_healthy`.
    NoneHealthy,
    /// A better set existed for `hold_down`.
    BetterSet,
    /// A tunnel was added because capacity, `min_tunnels` or diversity was short.
    Short,
    /// Tunnels dropped above `max_tunnels`.
    AboveMaxTunnels,
    /// None of the datacenter's gatewans is known any more.
    DatacenterLeft,
}

impl ChangeReason {
    pub const ALL: [ChangeReason; 9] = [
        ChangeReason::First,
        ChangeReason::Unhealthy,
        ChangeReason::Drained,
        ChangeReason::Disabled,
        ChangeReason::NoneHealthy,
        ChangeReason::BetterSet,
        ChangeReason::Short,
        ChangeReason::AboveMaxTunnels,
        ChangeReason::DatacenterLeft,
    ];

    /// The label value of `bgpctl_controller_decision_changes_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeReason::First => "first",
            ChangeReason::Unhealthy => "unhealthy",
            ChangeReason::Drained => "drained",
            ChangeReason::Disabled => "disabled",
            ChangeReason::NoneHealthy => "none_healthy",
            ChangeReason::BetterSet => "better_set",
            ChangeReason::Short => "short",
            ChangeReason::AboveMaxTunnels => "above_max_tunnels",
            ChangeReason::DatacenterLeft => "datacenter_left",
        }
    }
}

/// The explanation as the API carries it (`routingctl explain` renders these fields).
impl Explanation {
    pub fn to_proto(&self) -> v1::Explanation {
        v1::Explanation {
            datacenter: self.datacenter.clone(),
            at_ms: self.at_ms,
            remotes: self.remotes.iter().map(|r| r.to_proto()).collect(),
            ignored: self
                .ignored
                .iter()
                .map(|i| v1::IgnoredTunnel {
                    tunnel: i.tunnel.to_string(),
                    gatewan: i.gatewan.clone(),
                    reason: i.reason.to_string(),
                })
                .collect(),
        }
    }
}

impl RemoteExplanation {
    fn to_proto(&self) -> v1::RemoteExplanation {
        let ids = |v: &[TunnelId]| v.iter().map(ToString::to_string).collect();
        v1::RemoteExplanation {
            datacenter: self.datacenter.to_string(),
            required_bps: self.required_bps,
            chosen_bps: self.chosen_bps,
            shortfall_bps: self.shortfall_bps,
            summary: self.summary.clone(),
            pending: self.pending.as_ref().map(|p| v1::PendingChange {
                since_ms: p.since_ms,
                applies_at_ms: p.applies_at_ms,
                add: ids(&p.add),
                remove: ids(&p.remove),
            }),
            candidates: self.candidates.iter().map(Candidate::to_proto).collect(),
        }
    }
}

impl Candidate {
    fn to_proto(&self) -> v1::Candidate {
        let term = |t: Term| v1::ScoreTerm {
            value: t.value,
            weighted: t.weighted,
        };
        let m = &self.metrics;
        v1::Candidate {
            tunnel: self.tunnel.to_string(),
            interface: self.interface.to_string(),
            gatewan: self.gatewan.to_string(),
            peer: self.peer.to_string(),
            local_transit: self.local_transit.to_string(),
            peer_transit: self.peer_transit.to_string(),
            metrics: Some(v1::CandidateMetrics {
                state: m.state.to_string(),
                loss_ppm: m.loss_ppm,
                latency_us: m.latency_us,
                jitter_us: m.jitter_us,
                reorder_ppm: m.reorder_ppm,
                rx_bps: m.rx_bps,
                tx_bps: m.tx_bps,
                capacity_bps: m.capacity_bps,
            }),
            available_bps: self.available_bps,
            terms: Some(v1::ScoreTerms {
                latency: Some(term(self.terms.latency)),
                jitter: Some(term(self.terms.jitter)),
                loss: Some(term(self.terms.loss)),
                usage: Some(term(self.terms.usage)),
                cost: Some(term(self.terms.cost)),
            }),
            score: self.score,
            rank: self.rank,
            chosen: self.chosen,
            verdict: self.verdict.as_str().to_string(),
            note: self.note.clone(),
        }
    }
}

impl Change {
    pub fn to_proto(&self) -> v1::DecisionChange {
        v1::DecisionChange {
            at_ms: self.at_ms,
            datacenter: self.datacenter.clone(),
            added: self.added.iter().map(ToString::to_string).collect(),
            removed: self.removed.iter().map(ToString::to_string).collect(),
            cause: self.cause.clone(),
            reasons: self
                .reasons
                .iter()
                .map(|r| r.as_str().to_string())
                .collect(),
        }
    }
}
