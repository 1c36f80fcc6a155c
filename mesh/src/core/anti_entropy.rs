//! Push-pull anti-entropy of the state store; the exchange itself is pure, in `sync.rs`.
//! Every sync interval (with jitter), and soon after joining, a member sends one other a
//! hello (whole-store hash and members hash); when the stores differ, both send digests
//! and then the records the other side lacks. It repairs whatever the broadcasts missed
//! and hands a joiner the whole state. Rounds go to members we heard from lately (`heard`,
//! kept by the SWIM glue) when there are some; a passive member's round goes to each of
//! them, its hellos asking for pushes (`push`, ADR 0050).

use std::net::SocketAddr;
use std::time::Duration;

use gatewan_proto::v1::{self, mesh_control::Kind};
use rand::RngExt as _;
use tracing::debug;

use super::{CoreTimer, DropReason, HEARD_FOR_MS, MAX_PASSIVE_HELLOS, MeshCore, lock};
use crate::identity::MemberId;
use crate::sync;

impl MeshCore {
    /// The periodic round: a push-pull, and the next round scheduled.
    pub(super) fn anti_entropy_round(&mut self, now_ms: u64) {
        self.collect_departed(now_ms);
        self.sync_with_a_member(now_ms);
        // Jitter keeps members from syncing in lockstep.
        let base = self.settings.sync_interval.as_millis() as u64;
        let jitter = self.rng.random_range(0..=base / 5);
        self.schedule(
            Duration::from_millis(base - base / 10 + jitter),
            CoreTimer::AntiEntropy,
        );
    }

    /// Push-pull with a member we have heard from lately when there is one: in a mesh where
    /// some members cannot reach each other (a bgpctl on a fabric reaches its own
    /// datacenter's gatewans only), a random pick wastes most rounds on members that never
    /// answer.
    pub(super) fn sync_with_a_member(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(HEARD_FOR_MS);
        self.heard.retain(|_, &mut t| t >= horizon);
        let all: Vec<MemberId> = self.swim.iter_members().map(|m| m.id().clone()).collect();
        let reachable: Vec<MemberId> = all
            .iter()
            .filter(|m| self.heard.contains_key(&m.node))
            .cloned()
            .collect();
        // A passive member says hello to each member it reaches, every round: each of
        // them then pushes it what is new (ADR 0050).
        if self.settings.passive && !reachable.is_empty() {
            for m in reachable.iter().take(MAX_PASSIVE_HELLOS) {
                self.send_hello(&m.addrs);
            }
            return;
        }
        let peers = if reachable.is_empty() { all } else { reachable };
        if !peers.is_empty() {
            let peer = peers[self.rng.random_range(0..peers.len())].clone();
            self.send_hello(&peer.addrs);
        }
    }

    /// Opens a push-pull: our store's summary and our members hash.
    pub(super) fn send_hello(&mut self, addrs: &[SocketAddr]) {
        let members = self.members_hash();
        let mut h = self.with_store(|s| sync::hello(s, members));
        h.passive = self.settings.passive;
        self.send_control(addrs, Kind::Hello(h));
    }

    /// A hello: member lists if we disagree on who is in the mesh, then our digest if
    /// our stores differ.
    pub(super) fn on_hello(&mut self, from: SocketAddr, h: &v1::SyncHello, now_ms: u64) {
        if h.passive {
            self.on_passive_hello(from, now_ms);
        }
        self.compare_members(from, &h.members_hash);
        let same = self.with_store(|s| sync::same_state(s, h));
        debug!(%from, same, "sync: hello");
        if !same {
            let budget = self.settings.control_budget();
            let slices = self.with_store(|s| sync::digest(s, true, budget));
            for d in slices {
                self.send_control(&[from], Kind::Digest(d));
            }
        }
    }

    /// A digest: the records we hold newer than it says, and ours if a reply is wanted.
    pub(super) fn on_digest(&mut self, from: SocketAddr, d: &v1::SyncDigest, now_ms: u64) {
        let budget = self.settings.control_budget();
        let batches = {
            let shared = lock(&self.shared);
            sync::newer_than_digest(&shared.store, d)
                .map(|newer| sync::batches(newer.into_iter().map(|r| &r.bytes), budget))
        };
        let Some(batches) = batches else {
            return self.drop_datagram(DropReason::Invalid, from, now_ms);
        };
        debug!(
            %from,
            entries = d.entries.len(),
            batches = batches.len(),
            reply_wanted = d.reply_wanted,
            "sync: digest"
        );
        for records in batches {
            self.send_control(&[from], Kind::Records(v1::SyncRecords { records }));
        }
        if d.reply_wanted {
            let slices = self.with_store(|s| sync::digest(s, false, budget));
            for d in slices {
                self.send_control(&[from], Kind::Digest(d));
            }
        }
    }

    /// Records pushed to us: merged (each validated on its own).
    pub(super) fn on_records(&mut self, from: SocketAddr, r: &v1::SyncRecords) {
        let sender = self.member_at(from);
        let mut first_hand = Vec::new();
        debug!(%from, records = r.records.len(), "sync: records");
        {
            let mut shared = lock(&self.shared);
            for bytes in r.records.iter().take(256) {
                // Not re-gossiped in general: broadcasts already spread what is new,
                // and anti-entropy repairs each member that missed them.
                if let Some((key, _)) = shared.merge_remote(bytes)
                    && Some(key.origin) == sender
                {
                    first_hand.push(bytes.clone());
                }
            }
        }
        // But a member's own records, pushed by itself, are news we gossip on: a
        // member that reaches few others (a bgpctl on its fabric) loses most of its
        // own gossip, so its records would otherwise wait for anti-entropy rounds.
        for bytes in first_hand {
            if let Err(e) = self.swim.add_broadcast(&bytes) {
                debug!(error = %e, "record too large to gossip");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::at;
    use std::time::Duration;

    use gatewan_proto::v1::{self, mesh_control::Kind};

    use super::super::testkit::{
        Drained, EPOCH_MS, Forger, Net, Packet, addr, core, core_with_rng, keyring, member,
        node_record,
    };
    use super::super::{CoreTimer, DropReason, MemberState, MeshCore, MeshSettings, TAG_SWIM};
    use crate::sync;

    fn hellos(d: &Drained) -> Vec<std::net::SocketAddr> {
        d.controls(&keyring(1))
            .into_iter()
            .filter(|(_, k)| matches!(k, Kind::Hello(_)))
            .map(|(to, _)| to)
            .collect()
    }

    #[test]
    fn anti_entropy_repairs_a_record_that_gossip_missed() {
        // No periodic round in this test: the one that repairs is fired by hand.
        let settings = MeshSettings {
            sync_interval: Duration::from_secs(3600),
            ..MeshSettings::default()
        };
        let mut net = Net::joined(2, settings);
        const MARK: &[u8] = b"only-by-anti-entropy";
        net.lose = Some(Box::new(|p: &Packet| {
            p.tag == Some(TAG_SWIM) && p.payload.windows(MARK.len()).any(|w| w == MARK)
        }));
        let since = net.log.len();
        let now = net.unix_ms();
        let body = node_record(1, std::str::from_utf8(MARK).unwrap());
        net.cores[1].publish(body, at(now)).expect("valid record");
        net.run_for(Duration::from_secs(5));
        let lost = net.sent_since(since, |p| p.lost).len();
        assert!(lost >= 4, "the record rode on SWIM {lost} times, all lost");
        assert!(!net.holds_node_record(0, 1), "gossip missed it");

        net.fire(0, CoreTimer::AntiEntropy);
        assert!(net.holds_node_record(0, 1), "one push-pull repairs it");
    }

    #[test]
    fn a_round_says_hello_to_one_member_and_rearms_with_jitter() {
        let mut net = Net::joined(3, MeshSettings::default());
        let mut afters = Vec::new();
        for _ in 0..20 {
            let now = net.unix_ms();
            net.cores[0].handle_timer(CoreTimer::AntiEntropy, at(now));
            let d = Drained::of(&mut net.cores[0]);
            let to = hellos(&d);
            assert_eq!(to.len(), 1);
            assert!(to[0] == addr(1) || to[0] == addr(2));
            let rearmed: Vec<Duration> = d
                .timers
                .iter()
                .filter(|(_, t)| matches!(t, CoreTimer::AntiEntropy))
                .map(|(after, _)| *after)
                .collect();
            assert_eq!(rearmed.len(), 1);
            assert!(
                (Duration::from_secs(9)..=Duration::from_secs(11)).contains(&rearmed[0]),
                "{rearmed:?}"
            );
            afters.push(rearmed[0]);
        }
        afters.sort();
        afters.dedup();
        assert!(afters.len() > 5, "jittered: {afters:?}");
    }

    #[test]
    fn rounds_go_to_members_heard_from_lately() {
        let mut net = Net::joined(3, MeshSettings::default());
        // Member 0 no longer hears member 2, which stays alive through member 1.
        net.cut(0, 2, true);
        net.run_for(Duration::from_secs(40));
        let about_2 = net.cores[0]
            .members()
            .into_iter()
            .find(|m| m.id.node == member(2).node)
            .map(|m| m.state);
        assert!(
            matches!(about_2, Some(MemberState::Alive | MemberState::Suspect)),
            "{about_2:?}"
        );
        for _ in 0..20 {
            let now = net.unix_ms();
            net.cores[0].handle_timer(CoreTimer::AntiEntropy, at(now));
            assert_eq!(hellos(&Drained::of(&mut net.cores[0])), [addr(1)]);
        }
    }

    /// The lab's shape (two-dc): gatewans 0, 1 (sg1) and 2, 3 (par1) reach each other and
    /// are seeded with 0 and 2; bgpctl 4 (sg1) reaches only 0 and 1, bgpctl 5 (par1) only
    /// 2 and 3; bgpctls are passive and sync every 2 s. Every member has published its
    /// node record before it starts, as the daemons do.
    fn two_fabrics(rng: u64) -> Net {
        let bgpctl = MeshSettings {
            sync_interval: Duration::from_secs(2),
            passive: true,
            ..MeshSettings::default()
        };
        let cores = (0..6)
            .map(|i| {
                let (settings, seeds) = match i {
                    0..4 => (MeshSettings::default(), vec![addr(0), addr(2)]),
                    4 => (bgpctl.clone(), vec![addr(0), addr(1)]),
                    _ => (bgpctl.clone(), vec![addr(2), addr(3)]),
                };
                let mut c = core_with_rng(i, keyring(1), settings, seeds, rng);
                c.publish(node_record(i, "dc"), at(EPOCH_MS))
                    .expect("valid record");
                c
            })
            .collect();
        let mut net = Net::with_cores(cores);
        for (a, b) in [(4, 2), (4, 3), (4, 5), (5, 0), (5, 1)] {
            net.cut(a, b, true);
        }
        net
    }

    /// Until bgpctls 4 and 5 hold each other's node record (a bgpctl exports a network
    /// only with its origin's node record), in 500 ms steps, up to 60 s.
    fn until_bgpctls_know_each_other(net: &mut Net) -> Option<u64> {
        for step in 1..=120 {
            net.run_for(Duration::from_millis(500));
            if net.holds_node_record(4, 5) && net.holds_node_record(5, 4) {
                return Some(step * 500);
            }
        }
        None
    }

    #[test]
    fn a_bgpctl_node_record_crosses_to_the_other_fabric_within_seconds_of_its_join() {
        // A gatewan's dual-stack socket reports a bgpctl's IPv4 address as IPv4-mapped
        // IPv6: the bgpctl's own records, which it pushes when it joins, must still be
        // recognised as first hand and gossiped on. Anti-entropy alone (gatewans' rounds
        // are 10 s) took 8 to over 60 s in the lab.
        for mapped in [false, true] {
            for seed in 0..10u64 {
                let mut net = two_fabrics(seed);
                net.mapped_sources = mapped;
                let took = until_bgpctls_know_each_other(&mut net);
                assert!(
                    took.is_some_and(|ms| ms <= 3_000),
                    "seed {seed}, mapped sources {mapped}: after {took:?} ms"
                );
            }
        }
    }

    fn alone_with_a_record() -> MeshCore {
        let mut c = core(0, keyring(1), MeshSettings::default(), Vec::new());
        c.publish(node_record(0, "dc"), at(EPOCH_MS))
            .expect("valid record");
        c.start(at(EPOCH_MS));
        c.drain_outputs().for_each(drop);
        c
    }

    #[test]
    fn a_hello_gets_a_digest_only_when_the_states_differ() {
        let mut c = alone_with_a_record();
        let mut forger = Forger::new(keyring(1));
        let same = c.with_store(|s| sync::hello(s, [0; 16]));
        let empty = sync::hello(&crate::store::StateStore::default(), [0; 16]);
        let mut digests_after = |c: &mut MeshCore, h: v1::SyncHello| -> Vec<v1::SyncDigest> {
            let mut h = h;
            h.members_hash = Default::default();
            c.handle_datagram(
                addr(3),
                &forger.control(Kind::Hello(h), EPOCH_MS),
                at(EPOCH_MS),
            );
            Drained::of(c)
                .controls(&keyring(1))
                .into_iter()
                .filter_map(|(to, k)| match k {
                    Kind::Digest(d) if to == addr(3) => Some(d),
                    _ => None,
                })
                .collect()
        };
        assert!(digests_after(&mut c, same).is_empty());
        let d = digests_after(&mut c, empty);
        assert_eq!(d.len(), 1);
        assert!(d[0].reply_wanted && d[0].entries.len() == 1);
    }

    #[test]
    fn a_digest_gets_the_records_it_lacks_and_an_invalid_one_is_dropped_and_counted() {
        let mut c = alone_with_a_record();
        let mut forger = Forger::new(keyring(1));
        let empty = v1::SyncDigest {
            reply_wanted: true,
            ..Default::default()
        };
        c.handle_datagram(
            addr(3),
            &forger.control(Kind::Digest(empty), EPOCH_MS),
            at(EPOCH_MS),
        );
        let sent = Drained::of(&mut c).controls(&keyring(1));
        let records: usize = sent
            .iter()
            .map(|(_, k)| match k {
                Kind::Records(r) => r.records.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(records, 1);
        assert!(
            sent.iter()
                .any(|(_, k)| matches!(k, Kind::Digest(d) if !d.reply_wanted))
        );

        let bad = v1::SyncDigest {
            entries: vec![v1::DigestEntry {
                key: Some(v1::RecordKey {
                    origin: vec![1, 2, 3].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        c.handle_datagram(
            addr(3),
            &forger.control(Kind::Digest(bad), EPOCH_MS),
            at(EPOCH_MS),
        );
        assert_eq!(c.counters().dropped(DropReason::Invalid), 1);
        assert!(Drained::of(&mut c).sends.is_empty());
    }
}
