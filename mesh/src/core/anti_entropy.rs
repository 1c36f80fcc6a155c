//! Push-pull anti-entropy of the state store; the exchange itself is pure, in `sync.rs`.
//! Every sync interval (with jitter), and soon after joining, a member sends one other a
//! hello (whole-store hash and members hash); when the stores differ, both send digests
//! and then the records the other side lacks. It repairs whatever the broadcasts missed
//! and hands a joiner the whole state. Rounds go to members we heard from lately (`heard`,
//! kept by the SWIM glue) when there are some.

use std::net::SocketAddr;
use std::time::Duration;

use gatewan_proto::v1::{self, mesh_control::Kind};
use rand::RngExt as _;
use tracing::debug;

use super::{CoreTimer, DropReason, MeshCore, lock};
use crate::identity::MemberId;
use crate::sync;

/// An address heard from within this is taken as reachable for anti-entropy.
const HEARD_FOR_MS: u64 = 30_000;

impl MeshCore {
    /// The periodic round: a push-pull, and the next round scheduled.
    pub(super) fn anti_entropy_round(&mut self, now_ms: u64) {
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
        let peers = if reachable.is_empty() { all } else { reachable };
        if !peers.is_empty() {
            let peer = peers[self.rng.random_range(0..peers.len())].clone();
            self.send_hello(&peer.addrs, now_ms);
        }
    }

    /// Opens a push-pull: our store's summary and our members hash.
    pub(super) fn send_hello(&mut self, addrs: &[SocketAddr], now_ms: u64) {
        let members = self.members_hash();
        let h = self.with_store(|s| sync::hello(s, members));
        self.send_control(addrs, Kind::Hello(h), now_ms);
    }

    /// A hello: member lists if we disagree on who is in the mesh, then our digest if
    /// our stores differ.
    pub(super) fn on_hello(&mut self, from: SocketAddr, h: &v1::SyncHello, now_ms: u64) {
        self.compare_members(from, &h.members_hash, now_ms);
        let same = self.with_store(|s| sync::same_state(s, h));
        debug!(%from, same, "sync: hello");
        if !same {
            let budget = self.settings.control_budget();
            let slices = self.with_store(|s| sync::digest(s, true, budget));
            for d in slices {
                self.send_control(&[from], Kind::Digest(d), now_ms);
            }
        }
    }

    /// A digest: the records we hold newer than it says, and ours if a reply is wanted.
    pub(super) fn on_digest(&mut self, from: SocketAddr, d: &v1::SyncDigest, now_ms: u64) {
        let budget = self.settings.control_budget();
        let batches = {
            let shared = lock(&self.shared);
            sync::newer_than_digest(&shared.store, d).map(|newer| sync::batches(newer, budget))
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
            self.send_control(&[from], Kind::Records(v1::SyncRecords { records }), now_ms);
        }
        if d.reply_wanted {
            let slices = self.with_store(|s| sync::digest(s, false, budget));
            for d in slices {
                self.send_control(&[from], Kind::Digest(d), now_ms);
            }
        }
    }

    /// Records pushed to us: merged (each validated on its own).
    pub(super) fn on_records(&mut self, from: SocketAddr, r: &v1::SyncRecords) {
        let sender = self
            .members
            .values()
            .find(|m| m.id.addrs.contains(&from))
            .map(|m| m.id.node);
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
