//! Lifeguard's local health ("awareness" in memberlist): how much our own view of the mesh
//! is to be doubted. A member whose probes keep failing, or that others keep suspecting,
//! is more likely the one in trouble (cut off from a transit, starved of CPU) than the
//! members it probes. It then probes more slowly and waits longer for acks, instead of
//! raising a suspicion about every member it cannot reach, each of which the suspect
//! must refute and the mesh must gossip.
//!
//! foca has no local health of its own; it hands its probe timers to our core, which
//! stretches them by [`LocalHealth::scale`]. Without Lifeguard's nacks (foca has none),
//! every failed probe counts against us, as memberlist does when no nack is expected.

use std::time::Duration;

/// Lifeguard's and memberlist's bound: probing slows down to at most nine times its
/// interval.
pub(super) const MAX_LOCAL_HEALTH: u8 = 8;

/// The score, 0 (healthy) to [`MAX_LOCAL_HEALTH`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct LocalHealth(u8);

impl LocalHealth {
    /// One of our probe cycles ended: in a suspicion (`failed`) or with an ack.
    pub(super) fn probe_ended(&mut self, failed: bool) {
        self.0 = if failed {
            (self.0 + 1).min(MAX_LOCAL_HEALTH)
        } else {
            self.0.saturating_sub(1)
        };
    }

    /// A suspicion of us made us raise our incarnation.
    pub(super) fn suspected(&mut self) {
        self.0 = (self.0 + 1).min(MAX_LOCAL_HEALTH);
    }

    /// A probe interval or timeout stretched by the score: `d` × (score + 1).
    pub(super) fn scale(self, d: Duration) -> Duration {
        d * (u32::from(self.0) + 1)
    }

    pub(super) fn score(self) -> u8 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_probes_stretch_probing_up_to_nine_times_and_acks_bring_it_back() {
        let mut h = LocalHealth::default();
        let second = Duration::from_secs(1);
        assert_eq!(h.scale(second), second);
        for _ in 0..20 {
            h.probe_ended(true);
        }
        assert_eq!(h.score(), MAX_LOCAL_HEALTH);
        assert_eq!(h.scale(second), 9 * second);
        h.probe_ended(false);
        assert_eq!(h.scale(second), 8 * second);
        for _ in 0..20 {
            h.probe_ended(false);
        }
        assert_eq!(h, LocalHealth::default());
    }

    #[test]
    fn being_suspected_counts_against_us_as_a_failed_probe_does() {
        let mut h = LocalHealth::default();
        h.suspected();
        h.suspected();
        assert_eq!(h.score(), 2);
        for _ in 0..20 {
            h.suspected();
        }
        assert_eq!(h.score(), MAX_LOCAL_HEALTH);
    }
}
