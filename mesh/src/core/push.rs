//! Records pushed straight across the passive hops (ADR 0050).
//!
//! A passive member (ADR 0021: a bgpctl on its fabric) reaches only its datacenter's
//! gatewans. Gossip sends each update a few times to random members, and most of those
//! sends are wasted on a passive hop: the passive member's own gossip goes mostly to
//! members it cannot reach, and its gatewans' gossip to it competes with every other
//! member of the mesh. A record then crossed such a hop only when anti-entropy came
//! round: a prefix withdrawn in one datacenter stayed at the other's fabric up to 20 s.
//!
//! So both passive hops are pushed, in `Records` messages as a sync sends them:
//! - a passive member pushes each record it publishes to the members it heard from
//!   lately (its gatewans, which gossip their members' own records on);
//! - a passive member says so in its hellos (sent to every member it hears from, each
//!   round); the receiver keeps it as a *dependent* while those hellos keep coming, and
//!   pushes it every record that is news to the receiver.
//!
//! Gossip and anti-entropy go on as before: a push lost costs what it cost before.

use std::net::SocketAddr;

use gatewan_proto::v1::{self, mesh_control::Kind};
use tracing::debug;

use super::{MeshCore, lock};
use crate::identity::NodeId;

/// Dependents one member keeps: a datacenter has a few passive members, so this only
/// bounds what hellos from a misbehaving member could make us push to.
pub(super) const MAX_DEPENDENTS: usize = 64;

impl MeshCore {
    /// The passive members we push to, in node order.
    #[cfg(any(test, feature = "sim"))]
    pub fn dependents(&self) -> Vec<NodeId> {
        let mut d: Vec<NodeId> = self.dependents.keys().copied().collect();
        d.sort_unstable();
        d
    }

    /// A hello from a passive member at `from`: pushes go to it from now on.
    pub(super) fn on_passive_hello(&mut self, from: SocketAddr, now_ms: u64) {
        let Some(node) = self.member_at(from) else {
            return;
        };
        if !self.dependents.contains_key(&node) {
            self.expire_dependents(now_ms);
            if self.dependents.len() >= MAX_DEPENDENTS {
                debug!(%node, "passive member not kept as a dependent: too many already");
                return;
            }
            debug!(%node, "passive member: records new to us are pushed to it");
        }
        self.dependents.insert(node, now_ms);
    }

    /// Forgets dependents that stopped saying hello (three rounds missed). Not those held
    /// down: members that cannot reach a passive member suspect it all the time (ADR
    /// 0021), and a push to a member really gone costs a datagram.
    fn expire_dependents(&mut self, now_ms: u64) {
        let ttl = 3 * u64::try_from(self.settings.sync_interval.as_millis()).unwrap_or(u64::MAX);
        self.dependents
            .retain(|_, &mut t| now_ms.saturating_sub(t) <= ttl);
    }

    /// Pushes the records that became ours or news to us since the last call: a passive
    /// member its own to the members it heard from lately, any other member all of them
    /// to its dependents (a dependent's own records excepted).
    pub(super) fn push_fresh(&mut self, now_ms: u64) {
        let fresh = std::mem::take(&mut lock(&self.shared).fresh);
        if fresh.is_empty() {
            return;
        }
        let local = self.local().node;
        // In node order: the simulator replays a run only if sends come in one order.
        let mut targets: Vec<(NodeId, Vec<SocketAddr>)> = if self.settings.passive {
            self.members
                .values()
                .filter(|m| self.heard_lately(&m.id.node, now_ms))
                .map(|m| (m.id.node, m.id.addrs.clone()))
                .collect()
        } else {
            if self.dependents.is_empty() {
                return;
            }
            self.expire_dependents(now_ms);
            self.dependents
                .keys()
                .filter_map(|n| self.members.get(n))
                .map(|m| (m.id.node, m.id.addrs.clone()))
                .collect()
        };
        targets.sort_unstable_by_key(|(n, _)| *n);
        targets.truncate(MAX_DEPENDENTS);
        let budget = self.settings.control_budget();
        for (node, addrs) in targets {
            let wanted = fresh.iter().filter(|(origin, _)| {
                if self.settings.passive {
                    *origin == local
                } else {
                    *origin != node
                }
            });
            for records in crate::sync::batches(wanted.map(|(_, b)| b), budget) {
                self.counters.records_pushed += records.len() as u64;
                self.send_control(&addrs, Kind::Records(v1::SyncRecords { records }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gatewan_proto::v1::mesh_control::Kind;

    use super::super::testkit::{Net, Packet, addr, at, core, keyring, node, node_record};
    use super::super::{CoreTimer, MeshSettings, TAG_SWIM};
    use crate::store::decode_record;

    const MARK: &str = "pushed-not-gossiped";

    /// Members 0 and 1 (gatewans) and 2, passive, seeded with both; joined. No periodic
    /// anti-entropy: the one round a test needs is fired by hand.
    fn mesh() -> Net {
        let settings = MeshSettings {
            sync_interval: Duration::from_secs(3600),
            ..MeshSettings::default()
        };
        let passive = MeshSettings {
            passive: true,
            ..settings.clone()
        };
        let cores = vec![
            core(0, keyring(1), settings.clone(), Vec::new()),
            core(1, keyring(1), settings, vec![addr(0)]),
            core(2, keyring(1), passive, vec![addr(0), addr(1)]),
        ];
        let mut net = Net::with_cores(cores);
        net.run_for(Duration::from_secs(5));
        for i in 0..3 {
            assert_eq!(net.cores[i].alive_members(), 2, "member {i} has not joined");
        }
        net
    }

    /// Gossip never carries a record named `MARK`: what arrives came by push.
    fn gossip_loses_the_mark(net: &mut Net) {
        net.lose = Some(Box::new(|p: &Packet| {
            p.tag == Some(TAG_SWIM) && p.payload.windows(MARK.len()).any(|w| w == MARK.as_bytes())
        }));
    }

    /// Origins of the records in `Records` messages sent by `from` to `to` since `since`.
    fn pushed(net: &Net, since: usize, from: usize, to: usize) -> Vec<crate::identity::NodeId> {
        net.sent_since(since, |p| p.from == from && p.to == addr(to))
            .into_iter()
            .filter_map(|p| match &p.control {
                Some(Kind::Records(r)) => Some(r.records.clone()),
                _ => None,
            })
            .flatten()
            .filter_map(|b| decode_record(&b).ok().map(|r| r.key.origin))
            .collect()
    }

    #[test]
    fn a_passive_member_asks_each_member_it_reaches_for_pushes_and_only_it_is_kept() {
        let mut net = mesh();
        net.fire(2, CoreTimer::AntiEntropy);
        assert_eq!(net.cores[0].dependents(), vec![node(2)]);
        assert_eq!(net.cores[1].dependents(), vec![node(2)]);
        net.fire(0, CoreTimer::AntiEntropy);
        net.fire(1, CoreTimer::AntiEntropy);
        assert_eq!(
            net.cores[0].dependents(),
            vec![node(2)],
            "an active member's hello asks for nothing"
        );
        assert!(net.cores[2].dependents().is_empty());
    }

    #[test]
    fn a_record_new_to_a_member_is_pushed_to_its_dependents_but_not_their_own_back() {
        let mut net = mesh();
        net.fire(2, CoreTimer::AntiEntropy);
        gossip_loses_the_mark(&mut net);
        let since = net.log.len();
        let now = net.now();
        net.cores[1]
            .publish(node_record(1, MARK), now)
            .expect("valid");
        net.collect(1);
        net.deliver_all();
        assert!(
            net.holds_node_record(2, 1),
            "the passive member got it by push, with no timer run"
        );
        assert!(pushed(&net, since, 1, 2).contains(&node(1)));

        let since = net.log.len();
        let now = net.now();
        net.cores[2]
            .publish(node_record(2, "dc2"), now)
            .expect("valid");
        net.collect(2);
        net.run_for(Duration::from_secs(2));
        assert!(net.holds_node_record(0, 2));
        for g in [0, 1] {
            assert!(
                !pushed(&net, since, g, 2).contains(&node(2)),
                "member {g} pushed the passive member its own record"
            );
        }
    }

    #[test]
    fn a_passive_member_pushes_what_it_publishes_and_nothing_else() {
        let mut net = mesh();
        gossip_loses_the_mark(&mut net);
        let since = net.log.len();
        let now = net.unix_ms();
        net.cores[2]
            .publish(node_record(2, MARK), at(now))
            .expect("valid");
        net.collect(2);
        net.deliver_all();
        for g in [0, 1] {
            assert!(
                net.holds_node_record(g, 2),
                "member {g} got it by push, with no timer run"
            );
        }
        let since_others = net.log.len();
        let now = net.now();
        net.cores[0]
            .publish(node_record(0, "dc0"), now)
            .expect("valid");
        net.collect(0);
        net.run_for(Duration::from_secs(2));
        assert!(net.holds_node_record(2, 0));
        assert!(pushed(&net, since, 2, 0).iter().all(|&o| o == node(2)));
        assert!(
            pushed(&net, since_others, 2, 1).is_empty(),
            "a passive member pushes no one else's records"
        );
    }
}
