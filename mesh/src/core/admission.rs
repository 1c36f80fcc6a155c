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
use tracing::debug;

use super::{
    CoreTimer, DropReason, MemberInfo, MemberState, MeshCore, identity_from_proto,
    identity_to_proto, member_at,
};
use crate::guard::Freshness;
use crate::identity::NodeId;
use crate::seal::{OpenError, Opened};
use crate::sync;

/// Bounds what one member-list datagram can make us apply.
const MAX_MEMBERS_PER_SLICE: usize = 64;

/// When a joiner syncs again after its first push-pull.
const JOIN_RESYNC: Duration = Duration::from_secs(2);

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
            .check(opened.nonce_id, opened.timestamp_ms, now_ms)
        {
            Freshness::Fresh => Some(opened),
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

    /// Asks the seeds for their identity until foca knows some member.
    pub(super) fn retry_seeds(&mut self, now_ms: u64) {
        if self.swim.num_members() == 0 && !self.seeds.is_empty() {
            let me = identity_to_proto(self.local());
            let seeds = self.seeds.clone();
            self.send_control(&seeds, Kind::JoinRequest(me), now_ms);
        }
        self.schedule(self.settings.seed_retry, CoreTimer::SeedRetry);
    }

    pub(super) fn on_join_request(&mut self, from: SocketAddr, ident: &MeshIdentity, now_ms: u64) {
        let Some(joiner) = identity_from_proto(ident) else {
            return self.drop_datagram(DropReason::Invalid, from, now_ms);
        };
        if joiner.node == self.local().node {
            return; // our own address is among the seeds
        }
        let me = identity_to_proto(self.local());
        self.send_control(&[from], Kind::JoinReply(me), now_ms);
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
        self.send_hello(&seed_addrs, now_ms);
        self.schedule(JOIN_RESYNC, CoreTimer::JoinSync);
    }

    /// The membership half of a hello: our member list when the sender holds other
    /// members than we do (an empty hash is a sender that does not say).
    pub(super) fn compare_members(&mut self, from: SocketAddr, hash: &[u8], now_ms: u64) {
        if !hash.is_empty() && hash != self.members_hash().as_slice() {
            self.send_members(from, true, now_ms);
        }
    }

    pub(super) fn on_members(&mut self, from: SocketAddr, m: &v1::SyncMembers, now_ms: u64) {
        let local = self.local().node;
        let mut updates = Vec::new();
        for e in m.members.iter().take(MAX_MEMBERS_PER_SLICE) {
            let Some((id, incarnation)) = member_at(&e.identity, e.incarnation) else {
                return self.drop_datagram(DropReason::Invalid, from, now_ms);
            };
            // What others think of us is foca's to refute, through SWIM.
            if id.node != local {
                let state = if e.suspect {
                    foca::State::Suspect
                } else {
                    foca::State::Alive
                };
                updates.push(foca::Member::new(id, incarnation, state));
            }
        }
        // Not broadcast: the sender's view is what the mesh already knows.
        if let Err(e) = self.with_swim(|swim, rt| swim.apply_many(updates.into_iter(), false, rt)) {
            debug!(error = %e, "member list refused");
        }
        self.flush_swim(now_ms);
        if m.reply_wanted {
            self.send_members(from, false, now_ms);
        }
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

    fn send_members(&mut self, to: SocketAddr, reply_wanted: bool, now_ms: u64) {
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
            self.send_control(&[to], Kind::Members(slice), now_ms);
        }
    }

    pub(super) fn refresh_members(&mut self, now_ms: u64) {
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
                        e.last_change_ms = now_ms;
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
                            last_change_ms: now_ms,
                            local: false,
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
