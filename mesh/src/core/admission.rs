//! Who and what gets in. Every datagram passes the gate here (size, per-source rate,
//! keyring, replay filter) before any protocol sees it, and what fails is dropped and
//! counted. A new member joins through its seeds (join request and reply, then SWIM's
//! announce and a push-pull with the seed); members whose hellos show they disagree on
//! who is in the mesh exchange member lists. `refresh_members` mirrors foca's membership
//! into the `members` view every other part reads.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gatewan_proto::v1::{self, MeshIdentity, mesh_control::Kind};
use tracing::{debug, warn};

use super::{
    CoreTimer, DropReason, MemberInfo, MemberState, MeshCore, identity_from_proto,
    identity_to_proto, member_at,
};
use crate::guard::Freshness;
use crate::identity::{MemberId, NodeId};
use crate::seal::{OpenError, Opened};
use crate::sync;

/// Bounds what one member-list datagram can make us apply.
const MAX_MEMBERS_PER_SLICE: usize = 64;

/// Members of one list we contact at most (each costs a datagram: the list must not
/// amplify); the rest are contacted when a later list names them again.
const MAX_ANNOUNCES_PER_LIST: usize = 8;
/// A listed identity is contacted once in this long (a real member answers the first
/// time, or joins by itself; a forged one must not cost a datagram every list).
const ANNOUNCE_AGAIN_AFTER_MS: u64 = 60_000;
/// Bounds the identities remembered as contacted.
const MAX_ANNOUNCED: usize = 1024;

/// Bounds the senders whose clock skew we remember having logged.
const MAX_SKEW_LOGGED: usize = 1024;

/// When a joiner syncs again after its first push-pull.
const JOIN_RESYNC: Duration = Duration::from_secs(2);
/// Seed rounds at `seed_retry` after start (a minute at the default 2 s): members that
/// start together find each other fast, whatever order they come up in.
pub(super) const SEED_FAST_ROUNDS: u32 = 30;
/// Then seeds not in the mesh are asked this often: a split heals within it.
pub(super) const SEED_SLOW_RETRY: Duration = Duration::from_secs(30);

impl MeshCore {
    /// Counts a datagram and opens it if it passes the gate; drops (and counts) it if not.
    pub(super) fn admit(&mut self, from: SocketAddr, data: &[u8], now_ms: u64) -> Option<Opened> {
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += data.len() as u64;
        if data.len() > self.settings.max_datagram {
            self.drop_datagram(DropReason::Malformed, from, now_ms);
            return None;
        }
        if !self.rate.admit(from.ip(), now_ms) {
            self.drop_datagram(DropReason::RateLimited, from, now_ms);
            return None;
        }
        let opened = match self.keyring.open(data) {
            Ok(o) => o,
            Err(OpenError::Malformed) => {
                self.drop_datagram(DropReason::Malformed, from, now_ms);
                return None;
            }
            Err(OpenError::Unauthenticated) => {
                self.drop_datagram(DropReason::Unauthenticated, from, now_ms);
                return None;
            }
        };
        match self
            .replay
            .check(opened.nonce_id, opened.timestamp_ms, self.wall_ms, now_ms)
        {
            Freshness::Fresh => Some(opened),
            Freshness::Skewed { skew_ms } => {
                self.clock_skew(from, skew_ms, now_ms);
                None
            }
            // Expected whenever a peer has several addresses: not worth a log line.
            Freshness::Duplicate => {
                self.counters.dropped[DropReason::Duplicate as usize] += 1;
                None
            }
            Freshness::Replay => {
                self.drop_datagram(DropReason::Replay, from, now_ms);
                None
            }
        }
    }

    /// A datagram stamped outside the replay window: counted, and logged once a minute
    /// per sender address, with the skew, because a member whose clock is off is cut off
    /// from the mesh while all else about it looks right.
    fn clock_skew(&mut self, from: SocketAddr, skew_ms: i64, now_ms: u64) {
        self.counters.dropped[DropReason::ClockSkew as usize] += 1;
        if skew_ms.unsigned_abs() > self.counters.max_clock_skew_ms.unsigned_abs() {
            self.counters.max_clock_skew_ms = skew_ms;
        }
        let due = self
            .skew_logged
            .get(&from.ip())
            .is_none_or(|&t| now_ms.saturating_sub(t) >= 60_000);
        if !due {
            return;
        }
        if self.skew_logged.len() >= MAX_SKEW_LOGGED {
            self.skew_logged
                .retain(|_, t| now_ms.saturating_sub(*t) < 60_000);
        }
        if self.skew_logged.len() < MAX_SKEW_LOGGED {
            self.skew_logged.insert(from.ip(), now_ms);
            warn!(
                peer = %from,
                skew_ms,
                window_ms = self.settings.replay_window.as_millis() as u64,
                "dropped an authenticated mesh datagram: the sender's clock and ours differ \
                 by more than the replay window (check NTP on both; counted as \
                 clock_skew, logged once a minute per peer)"
            );
        }
    }

    /// Asks every seed that is not a live member for its identity: not only until we know
    /// some member. Members that start together can otherwise split for good: a gatewan
    /// whose seeds are not up yet is joined by its fabric's bgpctls, and the group, which
    /// then has members, never asks the seeds again. Every `seed_retry` while we know no
    /// one and for the first [`SEED_FAST_ROUNDS`] rounds, then every [`SEED_SLOW_RETRY`]
    /// (a seed gone for good costs one small datagram per round; one that answers and is
    /// already known, one push-pull).
    pub(super) fn retry_seeds(&mut self) {
        let missing = self.seeds_not_in_mesh();
        if !missing.is_empty() {
            let me = identity_to_proto(self.local());
            self.send_control(&missing, Kind::JoinRequest(me));
        }
        self.seed_rounds = self.seed_rounds.saturating_add(1);
        let fast = self.swim.num_members() == 0 || self.seed_rounds < SEED_FAST_ROUNDS;
        let next = if fast {
            self.settings.seed_retry
        } else {
            self.settings.seed_retry.max(SEED_SLOW_RETRY)
        };
        self.schedule(next, CoreTimer::SeedRetry);
    }

    /// Seeds that are neither our own address nor an address of a member not down.
    pub(super) fn seeds_not_in_mesh(&self) -> Vec<SocketAddr> {
        let known = |a: &SocketAddr| {
            self.local().addrs.contains(a)
                || self
                    .members
                    .values()
                    .any(|m| m.state != MemberState::Down && m.id.addrs.contains(a))
        };
        self.seeds.iter().filter(|a| !known(a)).copied().collect()
    }

    pub(super) fn on_join_request(&mut self, from: SocketAddr, ident: &MeshIdentity, now_ms: u64) {
        let Some(joiner) = identity_from_proto(ident) else {
            return self.drop_datagram(DropReason::Invalid, from, now_ms);
        };
        if joiner.node == self.local().node {
            return; // our own address is among the seeds
        }
        let me = identity_to_proto(self.local());
        self.send_control(&[from], Kind::JoinReply(me));
        // A joiner we do not know may bring members of its own (two halves of a mesh that
        // started apart): announcing ourselves to it gets us its members in foca's feed,
        // those it reaches and we cannot (bgpctls on its fabric) included, which contacting
        // listed members one by one never would. Only to the address it asked from, when
        // it announces that address: a request cannot aim our datagrams at a third party.
        let known = self
            .members
            .get(&joiner.node)
            .is_some_and(|m| m.id == joiner);
        if !known && joiner.addrs.contains(&from) {
            if let Err(e) = self.with_swim(|swim, rt| swim.announce(joiner, rt)) {
                debug!(error = %e, "announce to a joiner");
            }
            self.flush_swim(now_ms);
        }
    }

    pub(super) fn on_join_reply(&mut self, from: SocketAddr, ident: &MeshIdentity, now_ms: u64) {
        let Some(seed) = identity_from_proto(ident) else {
            return self.drop_datagram(DropReason::Invalid, from, now_ms);
        };
        if seed.node == self.local().node {
            return;
        }
        let seed_addrs = seed.addrs.clone();
        if let Err(e) = self.with_swim(|swim, rt| swim.announce(seed, rt)) {
            debug!(error = %e, "announce");
        }
        self.flush_swim(now_ms);
        // Push-pull with the seed whatever members we happen to sync with on
        // joining: it holds the mesh's state, and it gets ours (records published
        // before we had anyone to gossip them to) at once. And once more a little
        // later: a lost datagram of this first exchange would otherwise leave us
        // without some records until the next anti-entropy round.
        self.send_hello(&seed_addrs);
        self.schedule(JOIN_RESYNC, CoreTimer::JoinSync);
    }

    /// The membership half of a hello: our member list when the sender holds other
    /// members than we do (an empty hash is a sender that does not say).
    pub(super) fn compare_members(&mut self, from: SocketAddr, hash: &[u8]) {
        if !hash.is_empty() && hash != self.members_hash().as_slice() {
            self.send_members(from, true);
        }
    }

    /// A member list: the members it names that we do not hold, under that identity, are
    /// contacted (a SWIM announce), never taken on the list's word. The list is sealed
    /// with the mesh key, but one key holder must not be able to make us hold members at
    /// addresses where no one answers (each would be probed, suspected and declared down,
    /// gossip mesh-wide), nor rename a live member to such an address. A member that is
    /// there answers the announce and joins through SWIM, as it would on its own. What
    /// the list says of members we hold (incarnation, suspicion) SWIM already carries.
    pub(super) fn on_members(&mut self, from: SocketAddr, m: &v1::SyncMembers, now_ms: u64) {
        let local = self.local().node;
        let mut unknown = Vec::new();
        let mut vouched = Vec::new();
        for e in m.members.iter().take(MAX_MEMBERS_PER_SLICE) {
            let Some((id, incarnation)) = member_at(&e.identity, e.incarnation) else {
                return self.drop_datagram(DropReason::Invalid, from, now_ms);
            };
            // What others think of us is foca's to refute, through SWIM.
            if id.node == local || self.members.get(&id.node).is_some_and(|h| h.id == id) {
                continue;
            }
            if self.signed_node_record_names(&id) {
                let state = if e.suspect {
                    foca::State::Suspect
                } else {
                    foca::State::Alive
                };
                vouched.push(foca::Member::new(id, incarnation, state));
            } else {
                unknown.push(id);
            }
        }
        // A listed member whose own signed node record we hold (checked against its
        // pinned key when it was merged) is applied as listed: it exists, and SWIM's
        // probes, indirect ones included, decide whether it is alive. Contacting it would
        // not do: a member behind its fabric (a bgpctl) answers only its own datacenter's
        // gatewans, and without this, members that learn of it late (two halves of a mesh
        // that started apart) would never count it alive. Not gossiped on from here.
        if !vouched.is_empty()
            && let Err(e) =
                self.with_swim(|swim, rt| swim.apply_many(vouched.into_iter(), false, rt))
        {
            debug!(error = %e, "apply listed members");
        }
        self.announced
            .retain(|_, at| now_ms.saturating_sub(*at) < ANNOUNCE_AGAIN_AFTER_MS);
        let mut announced = 0;
        for id in unknown {
            if announced >= MAX_ANNOUNCES_PER_LIST
                || self.announced.len() >= MAX_ANNOUNCED
                || self.announced.contains_key(&id)
            {
                continue;
            }
            announced += 1;
            self.announced.insert(id.clone(), now_ms);
            if let Err(e) = self.with_swim(|swim, rt| swim.announce(id, rt)) {
                debug!(error = %e, "announce to a listed member");
            }
        }
        self.flush_swim(now_ms);
        if m.reply_wanted {
            self.send_members(from, false);
        }
    }

    /// Whether the store holds `id`'s node record (signed by its pinned key) announcing
    /// every address of `id`.
    fn signed_node_record_names(&self, id: &MemberId) -> bool {
        self.with_store(|s| {
            s.node(id.node).is_some_and(|n| {
                let announced: Vec<SocketAddr> = n
                    .mesh_addresses
                    .iter()
                    .filter_map(|a| a.parse::<SocketAddr>().ok())
                    .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
                    .collect();
                id.addrs.iter().all(|a| announced.contains(a))
            })
        })
    }

    pub(super) fn members_hash(&self) -> [u8; 16] {
        sync::members_hash(
            self.members
                .values()
                .filter(|m| m.state != MemberState::Down)
                .map(|m| &m.id)
                .chain(std::iter::once(self.local())),
        )
    }

    fn send_members(&mut self, to: SocketAddr, reply_wanted: bool) {
        let mut entries: Vec<v1::MemberEntry> = self
            .members
            .values()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| v1::MemberEntry {
                identity: Some(identity_to_proto(&m.id)),
                incarnation: u32::from(m.incarnation),
                suspect: m.state == MemberState::Suspect,
            })
            .collect();
        entries.push(v1::MemberEntry {
            identity: Some(identity_to_proto(self.local())),
            incarnation: self.own_incarnation.load(Ordering::Relaxed),
            suspect: false,
        });
        // `members` is a HashMap: a fixed order keeps runs reproducible (the simulator).
        entries.sort_by(|a, b| {
            let key = |e: &v1::MemberEntry| e.identity.as_ref().map(|i| i.id.clone());
            key(a).cmp(&key(b))
        });
        let budget = self.settings.control_budget();
        for slice in sync::member_slices(entries, reply_wanted, budget) {
            self.send_control(&[to], Kind::Members(slice));
        }
    }

    pub(super) fn refresh_members(&mut self) {
        let local = self.local().node;
        let mut seen = 0;
        // foca keeps our previous lives (same node id, older generation) as down members
        // when it hears of them after a restart; they are not members to show or sync.
        for m in self
            .swim
            .iter_membership_state()
            .filter(|m| m.id().node != local)
        {
            seen += 1;
            let state = match m.state() {
                foca::State::Alive => MemberState::Alive,
                foca::State::Suspect => MemberState::Suspect,
                foca::State::Down => MemberState::Down,
            };
            let id = m.id();
            match self.members.get_mut(&id.node) {
                Some(e) if e.state == state && e.id == *id && e.incarnation == m.incarnation() => {}
                Some(e) => {
                    if e.state != state || e.id.generation != id.generation {
                        e.last_change_ms = self.wall_ms;
                    }
                    e.state = state;
                    e.id = id.clone();
                    e.incarnation = m.incarnation();
                    self.members_changed = true;
                }
                None => {
                    self.members.insert(
                        id.node,
                        MemberInfo {
                            id: id.clone(),
                            state,
                            incarnation: m.incarnation(),
                            last_change_ms: self.wall_ms,
                            local: false,
                            key: None,
                            revoked: false,
                        },
                    );
                    self.members_changed = true;
                }
            }
        }
        if seen != self.members.len() {
            let live: std::collections::HashSet<NodeId> = self
                .swim
                .iter_membership_state()
                .map(|m| m.id().node)
                .filter(|n| *n != local)
                .collect();
            self.members.retain(|k, _| live.contains(k));
            self.members_changed = true;
        }
        self.resize_transmissions();
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::at;
    use std::time::Duration;

    use gatewan_proto::v1::{self, mesh_control::Kind};

    use super::super::testkit::{
        Drained, EPOCH_MS, Forger, Net, addr, control_in, core, keyring, member, member_key, node,
        node_record,
    };
    use super::super::{DropReason, MemberState, MeshCore, MeshSettings, identity_to_proto};
    use crate::identity::MemberId;

    fn entry(i: usize, incarnation: u32) -> v1::MemberEntry {
        v1::MemberEntry {
            identity: Some(identity_to_proto(&member(i))),
            incarnation,
            suspect: false,
        }
    }

    /// Gatewan 1 comes up before its seed 0 and is joined by bgpctl 2 (which reaches only
    /// it), so it has a member: it must still ask its seed, or the two halves never meet.
    fn split_at_start(n_fast_rounds_down: u32) -> Net {
        let cores = (0..3)
            .map(|i| {
                let seeds = match i {
                    0 => Vec::new(),
                    1 => vec![addr(0)],
                    _ => vec![addr(1)],
                };
                core(i, keyring(1), MeshSettings::default(), seeds)
            })
            .collect();
        let mut net = Net::with_cores(cores);
        net.cut(0, 2, true);
        net.cut(0, 1, true);
        net.run_for(Duration::from_secs(2 * u64::from(n_fast_rounds_down) + 1));
        assert_eq!(net.cores[1].alive_members(), 1, "gatewan 1 has its bgpctl");
        assert_eq!(net.cores[0].alive_members(), 0, "the seed is on its own");
        net.cut(0, 1, false);
        net
    }

    fn assert_one_mesh(net: &Net) {
        for (i, c) in net.cores.iter().enumerate() {
            assert_eq!(c.alive_members(), 2, "member {i} sees the whole mesh");
        }
    }

    #[test]
    fn a_member_that_has_members_keeps_asking_its_seed_and_the_split_heals() {
        let mut net = split_at_start(3);
        net.run_for(Duration::from_secs(10));
        assert_one_mesh(&net);
    }

    #[test]
    fn after_the_first_minute_a_seed_not_in_the_mesh_is_asked_every_30_s() {
        let mut net = split_at_start(super::SEED_FAST_ROUNDS + 2);
        net.run_for(Duration::from_secs(5));
        assert_eq!(net.cores[0].alive_members(), 0, "not asked within 5 s");
        net.run_for(Duration::from_secs(35));
        assert_one_mesh(&net);
    }

    #[test]
    fn seeds_in_the_mesh_and_our_own_address_are_not_asked() {
        let mut net = Net::joined(3, MeshSettings::default());
        net.cores[1].seeds = vec![addr(0), addr(1), addr(7)];
        assert_eq!(net.cores[1].seeds_not_in_mesh(), vec![addr(7)]);
    }

    fn alone(i: usize) -> MeshCore {
        let mut c = core(i, keyring(1), MeshSettings::default(), Vec::new());
        c.start(at(EPOCH_MS));
        c.drain_outputs().for_each(drop);
        c
    }

    #[test]
    fn a_member_sealed_with_an_unknown_key_is_not_admitted_and_the_drop_is_counted() {
        let settings = MeshSettings::default();
        let cores = vec![
            core(0, keyring(1), settings.clone(), Vec::new()),
            core(1, keyring(2), settings.clone(), vec![addr(0)]),
            core(2, keyring(1), settings, vec![addr(0)]),
        ];
        let mut net = Net::with_cores(cores);
        net.run_for(Duration::from_secs(5));

        let stranger = member(1).node;
        assert!(net.cores[0].members().iter().all(|m| m.id.node != stranger));
        assert_eq!(
            net.cores[1].alive_members(),
            0,
            "the stranger joined no one"
        );
        let c = net.cores[0].counters();
        // One join request every seed retry (2 s), at 0, 2 and 4 s.
        assert_eq!(c.dropped(DropReason::Unauthenticated), 3);
        // The member with the mesh key, seeded the same way, is in.
        assert_eq!(net.cores[0].alive_members(), 1);
        assert_eq!(net.cores[2].alive_members(), 1);
    }

    #[test]
    fn a_joiner_learns_every_member_and_the_seeds_records_through_one_seed() {
        let mut cores: Vec<MeshCore> = (0..4)
            .map(|i| {
                let seeds = if i == 0 { vec![] } else { vec![addr(0)] };
                core(i, keyring(1), MeshSettings::default(), seeds)
            })
            .collect();
        for (i, c) in cores.iter_mut().enumerate() {
            c.publish(super::super::testkit::node_record(i, "dc"), at(EPOCH_MS))
                .expect("valid record");
        }
        let mut net = Net::with_cores(cores);
        net.run_for(Duration::from_secs(3));
        for i in 0..4 {
            assert_eq!(net.cores[i].alive_members(), 3, "member {i}");
            for j in (0..4).filter(|&j| j != i) {
                assert!(net.holds_node_record(i, j), "member {i} lacks {j}'s record");
            }
        }
    }

    #[test]
    fn seeds_are_asked_again_until_one_answers_and_then_no_more() {
        let mut net = Net::new(2, MeshSettings::default());
        net.cut(0, 1, true);
        net.run_for(Duration::from_secs(7));
        let join_requests = |net: &Net, since: usize| {
            net.sent_since(since, |p| {
                p.from == 1 && p.to == addr(0) && matches!(p.control, Some(Kind::JoinRequest(_)))
            })
            .len()
        };
        // At 0, 2, 4 and 6 s; each retry re-arms the timer.
        assert_eq!(join_requests(&net, 0), 4);
        assert_eq!(net.cores[1].alive_members(), 0);

        net.cut(0, 1, false);
        net.run_for(Duration::from_secs(2));
        assert_eq!(
            net.cores[1].alive_members(),
            1,
            "joined once the seed answers"
        );
        let since = net.log.len();
        net.run_for(Duration::from_secs(10));
        assert_eq!(
            join_requests(&net, since),
            0,
            "a member with members asks no seed"
        );
        let retries = net
            .scheduled
            .iter()
            .filter(|(_, i, t)| *i == 1 && matches!(t, super::super::CoreTimer::SeedRetry))
            .count();
        assert!(retries >= 10, "the seed retry keeps re-arming: {retries}");
    }

    #[test]
    fn datagrams_too_large_garbled_replayed_or_repeated_are_dropped_and_counted() {
        let mut c = alone(0);
        let mut forger = Forger::new(keyring(1));
        let now = EPOCH_MS + 60_000;
        let from = addr(5);

        c.handle_datagram(from, &vec![0u8; 1401], at(now));
        assert_eq!(c.counters().dropped(DropReason::Malformed), 1, "too large");
        c.handle_datagram(from, &[1, 2, 3], at(now));
        assert_eq!(c.counters().dropped(DropReason::Malformed), 2, "too short");

        let stale = forger.sealed(&[2], now - 31_000);
        c.handle_datagram(from, &stale, at(now));
        assert_eq!(
            c.counters().dropped(DropReason::ClockSkew),
            1,
            "stamped too long ago"
        );

        let mut joiner = Forger::new(keyring(1)).signing_as(node(5), member_key(5));
        let hello = joiner.control(Kind::JoinRequest(identity_to_proto(&member(5))), now);
        c.handle_datagram(from, &hello, at(now));
        c.handle_datagram(from, &hello, at(now + 10));
        assert_eq!(c.counters().dropped(DropReason::Duplicate), 1);
        let replies = Drained::of(&mut c).controls(&keyring(1));
        assert_eq!(replies.len(), 1, "answered once");
        assert!(matches!(replies[0], (to, Kind::JoinReply(_)) if to == from));

        let unknown_tag = forger.sealed(&[9, 1, 2], now);
        c.handle_datagram(from, &unknown_tag, at(now));
        let empty = forger.sealed(&[], now);
        c.handle_datagram(from, &empty, at(now));
        assert_eq!(
            c.counters().dropped(DropReason::UnknownKind),
            1,
            "a later kind"
        );
        assert_eq!(c.counters().dropped(DropReason::Invalid), 1, "nothing");
        assert_eq!(c.counters().datagrams_in, 7);
    }

    #[test]
    fn a_member_list_makes_us_contact_the_members_it_names_and_answers_when_asked() {
        let mut c = alone(0);
        let mut forger = Forger::new(keyring(1));
        let list = v1::SyncMembers {
            reply_wanted: true,
            members: vec![entry(3, 2), entry(4, 0)],
        };
        c.handle_datagram(
            addr(3),
            &forger.control(Kind::Members(list), EPOCH_MS),
            at(EPOCH_MS),
        );

        assert_eq!(c.alive_members(), 0, "not taken on the list's word");
        let drained = Drained::of(&mut c);
        let mut swim_to: Vec<_> = drained
            .sends
            .iter()
            .filter(|(_, d)| control_in(&keyring(1), d).is_none())
            .map(|(to, _)| *to)
            .collect();
        swim_to.sort();
        assert_eq!(swim_to, [addr(3), addr(4)], "an announce to each");
        let answers = drained.controls(&keyring(1));
        let back: Vec<_> = answers
            .iter()
            .filter_map(|(to, k)| match k {
                Kind::Members(m) if *to == addr(3) => Some(m),
                _ => None,
            })
            .collect();
        assert_eq!(back.len(), 1, "{} answers", answers.len());
        assert!(!back[0].reply_wanted, "an answer asks for none");
        assert_eq!(back[0].members.len(), 1, "itself only");
    }

    #[test]
    fn a_listed_member_whose_signed_node_record_we_hold_is_applied_though_it_never_answers_us() {
        // Member 3 is a bgpctl behind another datacenter's fabric: it reaches its own
        // gatewans, not us. Its node record, signed with its own key, reached us by gossip.
        let mut c = alone(0);
        let mut forger = Forger::new(keyring(1));
        let signed = |i: usize, key: usize| {
            crate::store::sign_record(
                &v1::Record {
                    origin: bytes::Bytes::copy_from_slice(&node(i).0),
                    version: 1,
                    body: Some(node_record(i, "dc-b")),
                    ..Default::default()
                },
                &member_key(key),
            )
            .expect("valid")
            .bytes
        };
        let records = v1::SyncRecords {
            records: vec![signed(3, 3)],
        };
        c.handle_datagram(
            addr(1),
            &forger.control(Kind::Records(records), EPOCH_MS),
            at(EPOCH_MS),
        );
        assert!(c.with_store(|s| s.node(node(3)).is_some()));
        let list = v1::SyncMembers {
            reply_wanted: false,
            members: vec![entry(3, 2), entry(4, 0)],
        };
        c.handle_datagram(
            addr(1),
            &forger.control(Kind::Members(list), EPOCH_MS + 1),
            at(EPOCH_MS + 1),
        );
        let listed: Vec<_> = c
            .members()
            .into_iter()
            .filter(|m| !m.local)
            .map(|m| (m.id.node, m.state))
            .collect();
        assert_eq!(
            listed,
            [(node(3), MemberState::Alive)],
            "member 3 applied; member 4, with no signed record here, only contacted"
        );
        let announced: Vec<_> = Drained::of(&mut c)
            .sends
            .iter()
            .filter(|(_, d)| control_in(&keyring(1), d).is_none())
            .map(|(to, _)| *to)
            .collect();
        assert!(announced.contains(&addr(4)), "{announced:?}");
    }

    #[test]
    fn a_member_list_that_renames_a_live_member_or_repeats_itself_changes_nothing() {
        let mut net = Net::joined(2, MeshSettings::default());
        let mut forger = Forger::new(keyring(1));
        let mut moved = member(1);
        moved.generation += 1;
        moved.addrs = vec![addr(200)];
        let forged = |i: usize| v1::MemberEntry {
            identity: Some(identity_to_proto(&MemberId {
                node: node(i),
                generation: 1,
                addrs: vec![addr(100 + i)],
            })),
            incarnation: 0,
            suspect: true,
        };
        let mut members: Vec<_> = (10..30).map(forged).collect();
        members.push(v1::MemberEntry {
            identity: Some(identity_to_proto(&moved)),
            incarnation: 0,
            suspect: false,
        });
        members.rotate_right(1);
        let list = v1::SyncMembers {
            reply_wanted: false,
            members,
        };
        let mut contacted = Vec::new();
        for _ in 0..5 {
            let now = net.unix_ms();
            let datagram = forger.control(Kind::Members(list.clone()), now);
            let from = net.log.len();
            net.cores[0].handle_datagram(addr(9), &datagram, at(now));
            net.collect(0);
            net.deliver_all();
            let to: Vec<_> = net.sent_since(from, |p| p.from == 0 && p.to != addr(1));
            contacted.push(to.len());
        }
        assert_eq!(net.cores[0].counters().dropped(DropReason::Malformed), 0);
        assert_eq!(contacted, [8, 8, 5, 0, 0], "at most 8 a list, each once");
        net.run_for(Duration::from_secs(20));
        let held = net.cores[0].members();
        assert_eq!(held.len(), 2, "no forged member held");
        let one = held
            .iter()
            .find(|m| m.id.node == node(1))
            .expect("member 1");
        assert_eq!((one.id.clone(), one.state), (member(1), MemberState::Alive));
        assert_eq!(net.cores[0].counters().suspicions_raised, 0);
    }

    #[test]
    fn a_member_list_naming_an_impossible_member_is_dropped_whole_and_counted() {
        let mut c = alone(0);
        let mut forger = Forger::new(keyring(1));
        // An incarnation beyond foca's 16 bits, after a valid entry.
        let list = v1::SyncMembers {
            reply_wanted: true,
            members: vec![entry(3, 0), entry(4, 70_000)],
        };
        c.handle_datagram(
            addr(3),
            &forger.control(Kind::Members(list), EPOCH_MS),
            at(EPOCH_MS),
        );
        assert_eq!(c.counters().dropped(DropReason::Invalid), 1);
        assert_eq!(c.alive_members(), 0, "nothing of it applied");
        assert!(Drained::of(&mut c).sends.is_empty(), "and nothing answered");
    }

    #[test]
    fn a_hello_with_another_members_hash_gets_our_member_list() {
        let mut c = alone(0);
        let mut forger = Forger::new(keyring(1));
        let hello = |hash: Vec<u8>| {
            let mut h = c.with_store(|s| crate::sync::hello(s, [0; 16]));
            h.members_hash = hash.into();
            h
        };
        let ours = c.members_hash().to_vec();
        let (same, other, silent) = (hello(ours), hello(vec![7; 16]), hello(Vec::new()));
        let mut lists_after = |c: &mut MeshCore, h: v1::SyncHello| {
            c.handle_datagram(
                addr(3),
                &forger.control(Kind::Hello(h), EPOCH_MS),
                at(EPOCH_MS),
            );
            Drained::of(c)
                .controls(&keyring(1))
                .iter()
                .filter(|(_, k)| matches!(k, Kind::Members(m) if m.reply_wanted))
                .count()
        };
        assert_eq!(lists_after(&mut c, same), 0);
        assert_eq!(lists_after(&mut c, other), 1);
        assert_eq!(lists_after(&mut c, silent), 0, "an empty hash says nothing");
    }
}
