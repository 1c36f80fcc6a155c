//! The controller, pure: (mesh snapshot, policy) → decision, with explanations.
//!
//! For each remote datacenter it filters the local gatewans' tunnels for health, scores
//! them (latency, jitter, loss, usage of the local transit interface, transit cost), and
//! picks tunnels in rank order until the required capacity is met, honouring
//! min_tunnels/max_tunnels and spreading them over gatewans and transits; the chosen set
//! is *minimal*: no tunnel in it could go without breaking capacity, min_tunnels or
//! diversity (defined in `select`). The decision feeds bgpctl's type-5 export; the
//! explanation says, per candidate, every score term and why it was or was not chosen.
//!
//! - `policy`: the `controller` section of bgpctl.yaml, defaults and checks.
//! - `snapshot`: the input, built from the mesh state store or from plain values.
//! - `rank`: health filter and score, per remote datacenter.
//! - `select`: capacity per transit interface, min/max tunnels, diversity, minimality, and
//!   the comparison of two sets.
//! - `decide`: the stateful [`Controller`] (anti-flap, history, incremental updates).
//! - `explain`: the serialisable explanation and history types.
//!
//! Same snapshot (in any order) and same controller state ⇒ same decision on every
//! bgpctl: inputs are sorted when the snapshot is built, ties are broken by tunnel id, and
//! scores are summed in a fixed order.

mod decide;
mod explain;
mod policy;
mod rank;
mod select;
mod snapshot;

#[cfg(test)]
mod tests;

pub use decide::{Controller, HISTORY_LEN, decide_once};
pub use explain::{
    Candidate, CandidateMetrics, Change, ChangeReason, Explanation, PendingChange,
    RemoteExplanation, ScoreTerms, Term, Verdict,
};
pub use policy::{Policy, PolicyError, RequiredCapacity, Weights};
pub use snapshot::{
    Gatewan, IgnoredTunnel, Measurements, Snapshot, Transit, Tunnel, TunnelId, state_name,
};
