//! What members keep of each other, bounded (ADR 0034, ADR 0035): the records of a member
//! that has been down, gone or unknown for `departed_record_ttl` are collected from the
//! store, which then refuses them from anti-entropy until the member is alive again (or
//! sends newer versions). The per-member cap is the store's (`StateStore::with_cap`).

use std::collections::HashSet;

use super::{MemberState, MeshCore, lock};
use crate::identity::NodeId;

impl MeshCore {
    /// Collects the records of members gone for `departed_record_ttl`; readmits those
    /// alive again. Runs with each anti-entropy round (its cost is one pass over the
    /// members and the origins in the store).
    /// `now_ms`: the monotonic clock.
    pub(super) fn collect_departed(&mut self, now_ms: u64) {
        let ttl_ms =
            u64::try_from(self.settings.departed_record_ttl.as_millis()).unwrap_or(u64::MAX);
        let local = self.local().node;
        let alive: HashSet<NodeId> = self
            .members
            .values()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| m.id.node)
            .collect();
        let mut shared = lock(&self.shared);
        for &node in &alive {
            self.gone_since.remove(&node);
            if shared.store.is_departed(node) {
                shared.store.readmit(node);
            }
        }
        let gone: Vec<NodeId> = shared
            .store
            .origins()
            .filter(|o| *o != local && !alive.contains(o))
            .collect();
        for origin in gone {
            // Gone since this round first saw it gone (at most one round after SWIM declared
            // it down), on the monotonic clock: a member's `last_change_ms` is a wall-clock
            // date for display, and a clock step must not collect or keep records.
            let since = *self.gone_since.entry(origin).or_insert(now_ms);
            if now_ms.saturating_sub(since) >= ttl_ms {
                let n = shared.store.collect_origin(origin);
                shared.records_changed = true;
                self.gone_since.remove(&origin);
                tracing::info!(
                    %origin,
                    records = n,
                    "member gone for mesh.departed_record_ttl: its records are collected"
                );
            }
        }
        // Origins that no longer hold records need no clock.
        self.gone_since
            .retain(|o, _| shared.store.records_of(*o) > 0);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gatewan_proto::v1::{self, record::Body};

    use super::super::testkit::{Net, node, node_record};
    use super::super::{CoreTimer, MeshSettings, Now};
    use crate::store::RecordError;

    fn network(prefix: &str) -> Body {
        Body::Network(v1::Network {
            prefix: prefix.into(),
            vni: 1,
            ..Default::default()
        })
    }

    fn networks_of(net: &Net, i: usize, origin: usize) -> usize {
        net.cores[i].with_store(|s| s.networks().filter(|(o, _)| *o == node(origin)).count())
    }

    #[test]
    fn publishing_beyond_the_cap_is_an_error_and_others_refuse_new_keys_beyond_it() {
        let settings = MeshSettings {
            max_records_per_origin: 3,
            ..MeshSettings::default()
        };
        let mut net = Net::joined(2, settings);
        let now = net.now();
        // The NodeRecord is not published in these tests: three networks fit.
        for p in ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"] {
            net.cores[1]
                .publish(network(p), now)
                .expect("under the cap");
        }
        assert_eq!(
            net.cores[1].publish(network("10.4.0.0/16"), now),
            Err(RecordError::OverCap(3))
        );
        // Updating a held record still works.
        net.cores[1]
            .publish(
                network("10.1.0.0/16"),
                Now {
                    unix_ms: now.unix_ms + 1,
                    ..now
                },
            )
            .expect("an update");
        net.run_for(Duration::from_secs(15));
        assert_eq!(networks_of(&net, 0, 1), 3);
        assert_eq!(net.cores[0].counters().store.records_over_cap, 0);
    }

    #[test]
    fn records_of_a_member_gone_for_the_ttl_are_collected_and_not_taken_back() {
        // Member 0 collects after 60 s; member 1 keeps records for a day and offers them
        // back to member 0 through anti-entropy.
        let short = MeshSettings {
            departed_record_ttl: Duration::from_secs(60),
            ..MeshSettings::default()
        };
        let long = MeshSettings::default();
        let cores = (0..3)
            .map(|i| {
                let s = if i == 0 { short.clone() } else { long.clone() };
                let seeds = if i == 0 {
                    Vec::new()
                } else {
                    vec![super::super::testkit::addr(0)]
                };
                super::super::testkit::core(i, super::super::testkit::keyring(1), s, seeds)
            })
            .collect();
        let mut net = Net::with_cores(cores);
        net.run_for(Duration::from_secs(5));
        let now = net.now();
        net.cores[2]
            .publish(node_record(2, "par1"), now)
            .expect("valid");
        net.cores[2]
            .publish(network("10.2.0.0/16"), now)
            .expect("valid");
        net.run_for(Duration::from_secs(15));
        assert!(net.holds_node_record(0, 2) && net.holds_node_record(1, 2));
        assert_eq!(networks_of(&net, 0, 2), 1);

        // Member 2 vanishes.
        net.cut(2, 0, true);
        net.cut(2, 1, true);
        net.run_for(Duration::from_secs(30));
        assert!(net.holds_node_record(0, 2), "down, but not for the TTL yet");
        net.run_for(Duration::from_secs(60));
        assert!(!net.holds_node_record(0, 2), "collected after the TTL");
        assert_eq!(networks_of(&net, 0, 2), 0);
        assert!(net.cores[0].counters().store.records_collected >= 2);
        assert!(net.holds_node_record(1, 2), "member 1's TTL is a day");

        // Anti-entropy with member 1 offers them again: refused.
        for _ in 0..3 {
            net.fire(0, CoreTimer::AntiEntropy);
            net.fire(1, CoreTimer::AntiEntropy);
        }
        net.run_for(Duration::from_secs(30));
        assert!(!net.holds_node_record(0, 2));
        assert!(net.cores[0].counters().store.records_departed > 0);
    }
}

#[cfg(test)]
mod previous_life {
    use std::time::Duration;

    use gatewan_proto::v1::{self, record::Body};

    use super::super::testkit::{Net, addr, keyring, member, member_key};
    use super::super::{MeshCore, MeshSettings, Now};

    fn network(prefix: &str) -> Body {
        Body::Network(v1::Network {
            prefix: prefix.into(),
            vni: 1,
            ..Default::default()
        })
    }

    #[test]
    fn a_restarted_member_learns_which_of_its_old_records_the_others_still_hold() {
        let mut net = Net::joined(2, MeshSettings::default());
        let now = net.now();
        for p in ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"] {
            net.cores[1].publish(network(p), now).expect("valid");
        }
        net.cores[1]
            .withdraw(
                v1::RecordKind::Network,
                "10.3.0.0/16",
                Now {
                    unix_ms: now.unix_ms + 1,
                    ..now
                },
            )
            .expect("valid");
        net.run_for(Duration::from_secs(15));
        assert!(net.cores[1].previous_life().is_empty(), "one life so far");

        // Member 1 restarts (same node id, next generation), with nothing of its own.
        let mut id = member(1);
        id.generation = 2;
        net.cores[1] = MeshCore::new(
            id,
            member_key(1),
            crate::KeyPins::default(),
            keyring(1),
            MeshSettings::default(),
            vec![addr(0)],
            [9; 32],
        )
        .expect("valid settings");
        let now = net.now();
        net.cores[1].start(now);
        net.collect(1);
        net.run_for(Duration::from_secs(15));
        let names = |c: &MeshCore| -> Vec<String> {
            c.previous_life().into_iter().map(|k| k.name).collect()
        };
        // The withdrawn one is not to withdraw again.
        assert_eq!(names(&net.cores[1]), ["10.1.0.0/16", "10.2.0.0/16"]);
        // Published again in this life: no longer from the previous one.
        let now = net.now();
        net.cores[1]
            .publish(network("10.1.0.0/16"), now)
            .expect("valid");
        assert_eq!(names(&net.cores[1]), ["10.2.0.0/16"]);
        net.cores[1]
            .withdraw(
                v1::RecordKind::Network,
                "10.2.0.0/16",
                Now {
                    unix_ms: now.unix_ms + 1,
                    ..now
                },
            )
            .expect("valid");
        assert!(names(&net.cores[1]).is_empty());
        net.run_for(Duration::from_secs(15));
        let held: Vec<String> = net.cores[0].with_store(|s| {
            s.networks()
                .filter(|(o, _)| *o == member(1).node)
                .map(|(_, n)| n.prefix.clone())
                .collect()
        });
        assert_eq!(held, ["10.1.0.0/16"], "the others drop the withdrawn one");
    }
}
