//! The foca glue. SWIM itself (probes, suspicion timers, membership gossip) runs in foca;
//! this file owns what foca needs from the core and what it asks of it: the codec that
//! refuses identities no member would announce, the broadcast handler that merges
//! gossiped records into the shared store, the runtime that collects foca's sends,
//! timers and notifications during one call, and `flush_swim`, which turns them into
//! sealed datagrams, scheduled timers and member-state bookkeeping. Gossip is resized to
//! the membership here too (`resize_transmissions`).

use std::net::SocketAddr;
use std::num::NonZeroU8;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{BroadcastHandler, Foca, Invalidates, Notification, PostcardCodec, Timer};
use rand::RngExt as _;
use rand::rngs::StdRng;
use tracing::debug;

use super::{CoreTimer, DropReason, MemberState, MeshCore, Shared, TAG_SWIM, lock};
use crate::identity::{MAX_MESH_ADDRESSES, MemberId, NodeId};
use crate::store::{RecordKey, decode_record};

/// Members that sync with a joiner, mesh-wide (see `flush_swim`).
const HELLO_FANOUT: usize = 3;
/// Bounds the `heard` map (one entry per member).
const MAX_HEARD: usize = 8192;

#[derive(Debug)]
pub(super) struct RecordGossip(Arc<Mutex<Shared>>);

#[derive(Debug, Clone)]
pub(super) struct BroadcastKey {
    key: RecordKey,
    rank: (u64, u64),
}

impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.key == other.key && self.rank >= other.rank
    }
}

impl BroadcastHandler<MemberId> for RecordGossip {
    type Key = BroadcastKey;
    type Error = std::convert::Infallible;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&MemberId>,
    ) -> Result<Option<BroadcastKey>, Self::Error> {
        let mut shared = lock(&self.0);
        if sender.is_none() {
            // Our own publication, already merged by `publish`.
            return Ok(decode_record(data).ok().map(|r| BroadcastKey {
                rank: (r.version, r.fingerprint),
                key: r.key,
            }));
        }
        Ok(shared
            .merge_remote(data)
            .map(|(key, rank)| BroadcastKey { key, rank }))
    }
}

/// Postcard codec that refuses identities no member would announce, and notes the
/// incarnation foca puts in our outgoing headers (foca keeps its own private).
pub(super) struct IdentityCodec {
    own_incarnation: Arc<AtomicU32>,
    /// The sender of the last SWIM message decoded (see `MeshCore::heard`).
    last_src: Arc<Mutex<Option<NodeId>>>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum CodecError {
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
    #[error("identity with no address or more than {MAX_MESH_ADDRESSES}")]
    BadIdentity,
}

impl foca::Codec<MemberId> for IdentityCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &foca::Header<MemberId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), CodecError> {
        self.own_incarnation
            .store(u32::from(header.src_incarnation), Ordering::Relaxed);
        Ok(PostcardCodec.encode_header(header, buf)?)
    }

    fn decode_header(
        &mut self,
        buf: impl bytes::Buf,
    ) -> Result<foca::Header<MemberId>, CodecError> {
        let h: foca::Header<MemberId> = PostcardCodec.decode_header(buf)?;
        if h.src.is_sane() && h.dst.is_sane() {
            *lock(&self.last_src) = Some(h.src.node);
            Ok(h)
        } else {
            Err(CodecError::BadIdentity)
        }
    }

    fn encode_member(
        &mut self,
        member: &foca::Member<MemberId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), CodecError> {
        Ok(PostcardCodec.encode_member(member, buf)?)
    }

    fn decode_member(
        &mut self,
        buf: impl bytes::Buf,
    ) -> Result<foca::Member<MemberId>, CodecError> {
        let m: foca::Member<MemberId> = PostcardCodec.decode_member(buf)?;
        if m.id().is_sane() {
            Ok(m)
        } else {
            Err(CodecError::BadIdentity)
        }
    }
}

/// Collects what foca asks for during one call.
#[derive(Default)]
pub(super) struct SwimRuntime {
    sends: Vec<(MemberId, Vec<u8>)>,
    timers: Vec<(Duration, Timer<MemberId>)>,
    notifications: Vec<foca::OwnedNotification<MemberId>>,
}

impl foca::Runtime<MemberId> for SwimRuntime {
    fn notify(&mut self, n: Notification<'_, MemberId>) {
        self.notifications.push(n.to_owned());
    }
    fn send_to(&mut self, to: MemberId, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }
    fn submit_after(&mut self, event: Timer<MemberId>, after: Duration) {
        self.timers.push((after, event));
    }
}

pub(super) type Swim = Foca<MemberId, IdentityCodec, StdRng, RecordGossip>;

/// foca with our codec and broadcast handler; `own_incarnation` and `last_src` are shared
/// with the core, which reads what the codec notes in them.
pub(super) fn new_swim(
    local: MemberId,
    config: foca::Config,
    rng: StdRng,
    own_incarnation: Arc<AtomicU32>,
    last_src: Arc<Mutex<Option<NodeId>>>,
    shared: Arc<Mutex<Shared>>,
) -> Swim {
    Foca::with_custom_broadcast(
        local,
        config,
        rng,
        IdentityCodec {
            own_incarnation,
            last_src,
        },
        RecordGossip(shared),
    )
}

impl MeshCore {
    /// Runs one call into foca with the runtime that collects what it asks for; the
    /// caller then hands that to `flush_swim`.
    pub(super) fn with_swim(
        &mut self,
        f: impl FnOnce(&mut Swim, &mut SwimRuntime) -> Result<(), foca::Error>,
    ) -> Result<(), foca::Error> {
        let mut rt = std::mem::take(&mut self.rt);
        let res = f(&mut self.swim, &mut rt);
        self.rt = rt;
        res
    }

    /// Leaves the mesh gracefully (others mark us down at once instead of suspecting).
    pub fn leave(&mut self, now_ms: u64) {
        if let Err(e) = self.with_swim(|swim, rt| swim.leave_cluster(rt)) {
            debug!(error = %e, "leave");
        }
        self.flush_swim(now_ms);
    }

    /// A SWIM message, authenticated and fresh.
    pub(super) fn handle_swim(&mut self, from: SocketAddr, body: &[u8], now_ms: u64) {
        let res = self.with_swim(|swim, rt| swim.handle_data(body, rt));
        // Authenticated, fresh and accepted by SWIM: this member reaches us.
        if let (Ok(()), Some(src)) = (&res, lock(&self.last_src).take())
            && (self.heard.len() < MAX_HEARD || self.heard.contains_key(&src))
        {
            self.heard.insert(src, now_ms);
        }
        if let Err(e) = res {
            debug!(error = %e, %from, "SWIM message refused");
            self.drop_datagram(DropReason::Invalid, from, now_ms);
        }
        self.flush_swim(now_ms);
    }

    pub(super) fn handle_swim_timer(&mut self, timer: Timer<MemberId>, now_ms: u64) {
        if let Timer::ChangeSuspectToDown {
            ref member_id,
            incarnation,
            ..
        } = timer
            && !self.still_suspect(member_id, incarnation)
        {
            // Refuted (or already down): nothing for foca to do. foca 2.0 would still
            // send the member a TurnUndead, and a live member told so rejoins under a
            // new generation: a false down in all but name, after every refuted
            // suspicion whose TurnUndead arrives.
            return;
        }
        if let Err(e) = self.with_swim(|swim, rt| swim.handle_timer(timer, rt)) {
            debug!(error = %e, "SWIM timer");
        }
        self.flush_swim(now_ms);
    }

    /// Turns what foca asked for into outputs and member-state bookkeeping.
    pub(super) fn flush_swim(&mut self, now_ms: u64) {
        let mut rt = std::mem::take(&mut self.rt);
        for (to, data) in rt.sends.drain(..) {
            self.send_sealed(&to.addrs, TAG_SWIM, &data, now_ms);
        }
        let mut suspected = Vec::new();
        for (after, t) in rt.timers.drain(..) {
            if self.settings.passive && matches!(t, Timer::ProbeRandomMember(_)) {
                continue;
            }
            if let Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                ..
            } = &t
            {
                suspected.push((
                    member_id.clone(),
                    *incarnation,
                    now_ms + after.as_millis() as u64,
                ));
            }
            self.schedule(after, CoreTimer::Swim(t));
        }
        let mut joined = Vec::new();
        for n in rt.notifications.drain(..) {
            match n {
                foca::OwnedNotification::MemberUp(m) => {
                    debug!(member = ?m, "member up");
                    joined.push(m);
                }
                foca::OwnedNotification::MemberDown(m) => debug!(member = ?m, "member down"),
                foca::OwnedNotification::Rename(a, b) => {
                    debug!(from = ?a, to = ?b, "member renamed")
                }
                other => debug!(notification = ?other, "mesh"),
            }
        }
        self.rt = rt;
        self.refresh_members(now_ms);
        for (id, incarnation, until_ms) in suspected {
            self.suspect(id, incarnation, until_ms, now_ms);
        }
        // Push-pull with members that (re)appear, so a joiner gets the whole state at once;
        // but about HELLO_FANOUT of them mesh-wide per join. Every member learns of a
        // joiner, and all of them syncing with it cost ~4 MB per join at 200 members; a
        // joiner that learns the whole membership at once would do the same the other way.
        let known = self.members.len().max(1);
        if joined.len() * 2 >= known {
            // We are the one catching up: a few of them.
            for _ in 0..HELLO_FANOUT.min(joined.len()) {
                let m = joined.swap_remove(self.rng.random_range(0..joined.len()));
                self.send_hello(&m.addrs, now_ms);
            }
        } else {
            let p = (HELLO_FANOUT as f64 / known as f64).min(1.0);
            for m in joined {
                if self.rng.random_bool(p) {
                    self.send_hello(&m.addrs, now_ms);
                }
            }
        }
    }

    pub(super) fn resize_transmissions(&mut self) {
        let alive = self
            .members
            .values()
            .filter(|m| m.state != MemberState::Down)
            .count();
        let wanted = self.settings.max_transmissions(alive + 1);
        if wanted == self.max_transmissions {
            return;
        }
        if let Ok(mut c) = self.settings.foca_config() {
            c.max_transmissions = NonZeroU8::new(wanted).unwrap_or(NonZeroU8::MIN);
            if self.swim.set_config(c).is_ok() {
                debug!(
                    max_transmissions = wanted,
                    members = alive + 1,
                    "gossip resized"
                );
                self.max_transmissions = wanted;
            }
        }
    }
}
