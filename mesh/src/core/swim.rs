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
use tracing::{debug, warn};

use super::{
    CoreTimer, DropReason, MAX_PASSIVE_HELLOS, MemberState, MeshCore, Now, Output, Shared,
    TAG_SWIM, lock,
};
use crate::identity::{MAX_MESH_ADDRESSES, MemberId, NodeId};
use crate::signing::{self, DOMAIN_SWIM};
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
    own_node: NodeId,
    /// Our generation now (raised when we rejoin), shared with the core.
    own_generation: Arc<AtomicU32>,
    own_incarnation: Arc<AtomicU32>,
    /// The sender of the last SWIM message decoded (see `MeshCore::heard`).
    last_src: Arc<Mutex<Option<NodeId>>>,
    /// For the revoked members, whose messages are refused.
    shared: Arc<Mutex<Shared>>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum CodecError {
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
    #[error("identity with no address or more than {MAX_MESH_ADDRESSES}")]
    BadIdentity,
    #[error("an update about us at an incarnation we never had")]
    FutureIncarnation,
    #[error("from a revoked member")]
    Revoked,
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
        {
            let mut shared = lock(&self.shared);
            if shared.revoked.contains_key(&h.src.node) {
                shared.count(DropReason::Revoked);
                shared.swim_refused_revoked = true;
                return Err(CodecError::Revoked);
            }
        }
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
        if !m.id().is_sane() {
            return Err(CodecError::BadIdentity);
        }
        // Nobody can have heard of an incarnation of ours above the one we announce: an
        // update about us beyond it is forged, and believing it would make foca raise our
        // incarnation to its end (16 bits) and rejoin under a new generation.
        let id = m.id();
        if id.node == self.own_node
            && id.generation == self.own_generation.load(Ordering::Relaxed)
            && u32::from(m.incarnation()) > self.own_incarnation.load(Ordering::Relaxed)
        {
            return Err(CodecError::FutureIncarnation);
        }
        Ok(m)
    }
}

/// The node id a SWIM packet's header names as its sender, when the packet reads to its
/// end as foca 2.0 reads it: header, member updates (a big-endian count, then each member;
/// none in a Broadcast message), then broadcast items each behind a big-endian length.
/// Identities are checked by foca's own decoding (`IdentityCodec`); this only makes sure
/// nothing is left that foca would refuse after applying the rest.
fn well_formed_sender(mut data: &[u8]) -> Option<NodeId> {
    use bytes::Buf as _;
    use foca::Codec as _;
    let header: foca::Header<MemberId> = PostcardCodec.decode_header(&mut data).ok()?;
    let remaining = data.remaining();
    if remaining == 1 || (header.message == foca::Message::Announce && remaining > 0) {
        return None;
    }
    if remaining >= 2 && header.message != foca::Message::Broadcast {
        let updates = data.get_u16();
        for _ in 0..updates {
            let member: Result<foca::Member<MemberId>, _> = PostcardCodec.decode_member(&mut data);
            member.ok()?;
        }
    }
    if !data.is_empty() && data.len() < 3 {
        return None;
    }
    while data.remaining() > 2 {
        let len = usize::from(data.get_u16());
        if len == 0 || data.len() < len {
            return None;
        }
        data.advance(len);
    }
    (!data.has_remaining()).then_some(header.src.node)
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

/// foca with our codec and broadcast handler; `own_generation`, `own_incarnation` and
/// `last_src` are shared
/// with the core, which reads what the codec notes in them.
pub(super) fn new_swim(
    local: MemberId,
    config: foca::Config,
    rng: StdRng,
    own_generation: Arc<AtomicU32>,
    own_incarnation: Arc<AtomicU32>,
    last_src: Arc<Mutex<Option<NodeId>>>,
    shared: Arc<Mutex<Shared>>,
) -> Swim {
    let own_node = local.node;
    Foca::with_custom_broadcast(
        local,
        config,
        rng,
        IdentityCodec {
            own_node,
            own_generation,
            own_incarnation,
            last_src,
            shared: shared.clone(),
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
    pub fn leave(&mut self, now: Now) {
        let now_ms = self.clocks(now);
        if let Err(e) = self.with_swim(|swim, rt| swim.leave_cluster(rt)) {
            debug!(error = %e, "leave");
        }
        self.flush_swim(now_ms);
    }

    /// A SWIM message, authenticated and fresh.
    pub(super) fn handle_swim(&mut self, from: SocketAddr, signed: &[u8], now_ms: u64) {
        // A SWIM packet's header asserts who sends it: it is signed by that member's key
        // (ADR 0032), checked against the key pinned for it, as the control messages that
        // assert an identity are. What it says of other members stays the sender's word.
        let body = match signing::verify(DOMAIN_SWIM, signed) {
            Ok((body, signer)) => {
                let Some(src) = well_formed_sender(body) else {
                    // foca applies a packet's header and member updates before it reads
                    // the broadcasts behind them: a packet malformed there would be half
                    // applied and still refused. Refused whole instead, before foca sees it.
                    return self.drop_datagram(DropReason::Invalid, from, now_ms);
                };
                if !lock(&self.shared).check_pin(src, signer, "swim") {
                    return;
                }
                body
            }
            Err(e) => {
                lock(&self.shared).bad_signature(&e, "swim");
                return;
            }
        };
        let res = self.with_swim(|swim, rt| swim.handle_data(body, rt));
        // Authenticated, fresh and accepted by SWIM: this member reaches us.
        if let (Ok(()), Some(src)) = (&res, lock(&self.last_src).take())
            && (self.heard.len() < MAX_HEARD || self.heard.contains_key(&src))
        {
            self.heard.insert(src, now_ms);
        }
        let revoked = std::mem::take(&mut lock(&self.shared).swim_refused_revoked);
        if let Err(e) = res
            && !revoked
        {
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
        let probing = matches!(timer, Timer::ProbeRandomMember(_));
        if let Err(e) = self.with_swim(|swim, rt| swim.handle_timer(timer, rt)) {
            debug!(error = %e, "SWIM timer");
        }
        if probing {
            // foca ends the last probe cycle here: a failed one becomes a suspicion
            // (a suspicion timer), before the next probe's timers are stretched below.
            let failed = self
                .rt
                .timers
                .iter()
                .any(|(_, t)| matches!(t, Timer::ChangeSuspectToDown { .. }));
            self.local_health.probe_ended(failed);
        }
        self.flush_swim(now_ms);
    }

    /// Turns what foca asked for into outputs and member-state bookkeeping.
    pub(super) fn flush_swim(&mut self, now_ms: u64) {
        let mut rt = std::mem::take(&mut self.rt);
        // A rejoin is announced by the sends below: the new generation goes out first so
        // the driver stores it before any of them leaves.
        for n in &rt.notifications {
            if let foca::OwnedNotification::Rejoin(id) = n {
                // foca renews our identity when members declared us down (we learn of
                // it by gossip) or when our incarnation ran out: both read the same.
                warn!(
                    generation = id.generation,
                    "rejoining the mesh under a new generation: members declared us down, \
                     or our incarnation ran out"
                );
                self.counters.rejoins += 1;
                self.own_generation.store(id.generation, Ordering::Relaxed);
                self.out.push(Output::GenerationRaised {
                    generation: id.generation,
                });
            }
        }
        for (to, data) in rt.sends.drain(..) {
            let signed = self.signer.sign(DOMAIN_SWIM, &data);
            self.send_sealed(&to.addrs, TAG_SWIM, &signed);
        }
        let mut suspected = Vec::new();
        for (after, t) in rt.timers.drain(..) {
            if self.settings.passive && matches!(t, Timer::ProbeRandomMember(_)) {
                continue;
            }
            // Both of a probe cycle's timers, with the same factor: foca requires the
            // indirect probe to come before the next probe.
            let after = match t {
                Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } => {
                    self.local_health.scale(after)
                }
                _ => after,
            };
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
        self.refresh_members();
        for (id, incarnation, until_ms) in suspected {
            self.suspect(id, incarnation, until_ms, now_ms);
        }
        // Push-pull with members that (re)appear, so a joiner gets the whole state at once;
        // but about HELLO_FANOUT of them mesh-wide per join. Every member learns of a
        // joiner, and all of them syncing with it cost ~4 MB per join at 200 members; a
        // joiner that learns the whole membership at once would do the same the other way.
        // A passive member asks each member it reaches that (re)joins for pushes at once
        // (a gatewan restarted has forgotten it), not a round later (ADR 0050).
        if self.settings.passive {
            let reached: Vec<MemberId> = joined
                .iter()
                .filter(|m| self.heard_lately(&m.node, now_ms))
                .take(MAX_PASSIVE_HELLOS)
                .cloned()
                .collect();
            for m in reached {
                self.send_hello(&m.addrs);
            }
        }
        let known = self.members.len().max(1);
        if joined.len() * 2 >= known {
            // We are the one catching up: a few of them.
            for _ in 0..HELLO_FANOUT.min(joined.len()) {
                let m = joined.swap_remove(self.rng.random_range(0..joined.len()));
                self.send_hello(&m.addrs);
            }
        } else {
            let p = (HELLO_FANOUT as f64 / known as f64).min(1.0);
            for m in joined {
                if self.rng.random_bool(p) {
                    self.send_hello(&m.addrs);
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

#[cfg(test)]
mod tests {
    use super::super::testkit::at;
    use std::time::Duration;

    use foca::Codec as _;

    use super::super::testkit::{
        Drained, EPOCH_MS, Forger, Net, addr, core, keyring, member, member_key,
    };
    use super::super::{
        CoreTimer, DropReason, MIN_TRANSMISSIONS, MemberState, MeshSettings, Output, TAG_SWIM,
    };
    use super::*;

    fn probes_scheduled(net: &Net, i: usize) -> usize {
        net.scheduled
            .iter()
            .filter(|(_, c, t)| {
                *c == i && matches!(t, CoreTimer::Swim(Timer::ProbeRandomMember(_)))
            })
            .count()
    }

    #[test]
    fn an_active_member_probes_every_interval_and_a_passive_one_never() {
        let settings = MeshSettings::default();
        let passive = MeshSettings {
            passive: true,
            ..settings.clone()
        };
        let cores = vec![
            core(0, keyring(1), settings, Vec::new()),
            core(1, keyring(1), passive, vec![addr(0)]),
        ];
        let mut net = Net::with_cores(cores);
        net.run_for(Duration::from_secs(2));
        let before = probes_scheduled(&net, 0);
        net.run_for(Duration::from_secs(10));
        // Each probe round re-arms the next one, a probe interval (1 s) later.
        assert_eq!(probes_scheduled(&net, 0) - before, 10);
        assert_eq!(
            probes_scheduled(&net, 1),
            0,
            "a passive member probes no one"
        );
        let swim_from = |i: usize| {
            net.log
                .iter()
                .filter(|p| p.from == i && p.tag == Some(TAG_SWIM))
                .count()
        };
        assert!(
            swim_from(0) >= 10 && swim_from(1) >= 10,
            "probed and answered"
        );
        assert_eq!(net.cores[0].members()[0].state, MemberState::Alive);
        assert_eq!(net.cores[1].alive_members(), 1);
    }

    #[test]
    fn updates_are_sent_ten_times_in_a_small_mesh_and_more_as_it_grows() {
        let settings = MeshSettings::default();
        let mut alone = core(0, keyring(1), settings.clone(), Vec::new());
        alone.start(at(EPOCH_MS));
        alone.leave(at(EPOCH_MS));
        assert_eq!(alone.max_transmissions, MIN_TRANSMISSIONS);

        let net = Net::joined(6, settings.clone());
        for c in &net.cores {
            assert_eq!(c.max_transmissions, MIN_TRANSMISSIONS);
        }
        // memberlist's RetransmitMult × log10(members + 1) above the floor.
        assert_eq!(settings.max_transmissions(46), 11);
        assert_eq!(settings.max_transmissions(200), 14);
    }

    #[test]
    fn a_member_that_leaves_is_down_at_the_others_at_once() {
        let mut net = Net::joined(3, MeshSettings::default());
        let now = net.unix_ms();
        net.cores[2].leave(at(now));
        net.collect(2);
        net.deliver_all();
        for i in [0, 1] {
            let m = net.cores[i].members();
            let left = m.iter().find(|m| m.id.node == member(2).node);
            assert_eq!(
                left.map(|m| m.state),
                Some(MemberState::Down),
                "at member {i}"
            );
            assert_eq!(
                net.cores[i].counters().suspicions_raised,
                0,
                "without suspicion"
            );
        }
    }

    #[test]
    fn swim_messages_mark_their_sender_heard_and_refused_ones_are_counted() {
        let mut net = Net::joined(2, MeshSettings::default());
        let heard_at = net.cores[0].heard.get(&member(1).node).copied();
        assert!(
            heard_at.is_some_and(|t| t >= 4_000),
            "heard on the monotonic clock, 4 s or more into the run: {heard_at:?}"
        );

        let mut forger = Forger::new(keyring(1));
        let now = net.unix_ms();
        let unsigned = forger.sealed(&[TAG_SWIM, 0xff, 0xff, 0xff], now);
        net.cores[0].handle_datagram(addr(7), &unsigned, at(now));
        assert_eq!(net.cores[0].counters().dropped(DropReason::BadSignature), 1);
        let mut garbage = vec![TAG_SWIM];
        garbage.extend(member_key(7).sign(DOMAIN_SWIM, &[0xff, 0xff, 0xff]));
        let garbage = forger.sealed(&garbage, now);
        net.cores[0].handle_datagram(addr(7), &garbage, at(now));
        assert_eq!(net.cores[0].counters().dropped(DropReason::Invalid), 1);
        assert!(Drained::of(&mut net.cores[0]).sends.is_empty());
        assert_eq!(net.cores[0].heard.len(), 1);
    }

    #[test]
    fn the_codec_refuses_identities_no_member_would_announce() {
        let mut codec = IdentityCodec {
            own_node: member(0).node,
            own_generation: Arc::new(AtomicU32::new(1)),
            own_incarnation: Arc::new(AtomicU32::new(0)),
            last_src: Arc::new(Mutex::new(None)),
            shared: core(0, keyring(1), MeshSettings::default(), Vec::new())
                .shared
                .clone(),
        };
        let header = |src: MemberId| foca::Header {
            src,
            src_incarnation: 3,
            dst: member(0),
            message: foca::Message::Ping(1),
        };
        let mut sane = Vec::new();
        codec.encode_header(&header(member(1)), &mut sane).unwrap();
        assert_eq!(codec.own_incarnation.load(Ordering::Relaxed), 3);
        assert!(codec.decode_header(&sane[..]).is_ok());
        assert_eq!(*lock(&codec.last_src), Some(member(1).node));

        for addrs in [Vec::new(), vec![addr(1); MAX_MESH_ADDRESSES + 1]] {
            let bad = MemberId { addrs, ..member(2) };
            let mut buf = Vec::new();
            PostcardCodec.encode_header(&header(bad), &mut buf).unwrap();
            assert!(matches!(
                codec.decode_header(&buf[..]),
                Err(CodecError::BadIdentity)
            ));
        }
    }

    #[test]
    fn the_codec_refuses_an_update_about_us_at_an_incarnation_we_never_had() {
        let mut codec = IdentityCodec {
            own_node: member(0).node,
            own_generation: Arc::new(AtomicU32::new(1)),
            own_incarnation: Arc::new(AtomicU32::new(4)),
            last_src: Arc::new(Mutex::new(None)),
            shared: core(0, keyring(1), MeshSettings::default(), Vec::new())
                .shared
                .clone(),
        };
        let encoded = |id: MemberId, incarnation: u16| {
            let mut buf = Vec::new();
            let m = foca::Member::new(id, incarnation, foca::State::Suspect);
            PostcardCodec.encode_member(&m, &mut buf).unwrap();
            buf
        };
        let forged = encoded(member(0), u16::MAX);
        assert!(matches!(
            codec.decode_member(&forged[..]),
            Err(CodecError::FutureIncarnation)
        ));
        assert!(codec.decode_member(&encoded(member(0), 4)[..]).is_ok());
        // Another member, or an earlier life of ours, may be at any incarnation.
        assert!(
            codec
                .decode_member(&encoded(member(1), u16::MAX)[..])
                .is_ok()
        );
        let earlier = MemberId {
            generation: 0,
            ..member(0)
        };
        assert!(codec.decode_member(&earlier_bytes(&earlier)[..]).is_ok());

        fn earlier_bytes(id: &MemberId) -> Vec<u8> {
            let mut buf = Vec::new();
            let m = foca::Member::new(id.clone(), u16::MAX, foca::State::Suspect);
            PostcardCodec.encode_member(&m, &mut buf).unwrap();
            buf
        }
    }

    #[test]
    fn an_exhausted_incarnation_rejoins_under_a_generation_stored_before_it_is_announced() {
        let mut net = Net::joined(3, MeshSettings::default());
        // As if we had refuted 65535 suspicions: foca cannot refute this one.
        let me = foca::Member::new(member(0), u16::MAX, foca::State::Suspect);
        let now = net.unix_ms();
        let c = &mut net.cores[0];
        c.with_swim(|swim, rt| swim.apply_many(std::iter::once(me), false, rt))
            .expect("applied");
        c.flush_swim(now);
        let outputs: Vec<Output> = c.drain_outputs().collect();
        let raised = outputs
            .iter()
            .position(|o| matches!(o, Output::GenerationRaised { generation: 2 }));
        let first_send = outputs
            .iter()
            .position(|o| matches!(o, Output::Send { .. }));
        assert!(
            raised.is_some() && first_send.is_some() && raised < first_send,
            "the new generation comes before what announces it: {raised:?} {first_send:?}"
        );
        assert_eq!(c.local().generation, 2);
        assert_eq!(c.counters().rejoins, 1);
        for o in outputs {
            if let Output::Send { to, datagram } = o {
                let dst = (0..3).find(|&j| addr(j) == to);
                if let Some(j) = dst {
                    let now = net.unix_ms();
                    net.cores[j].handle_datagram(addr(0), &datagram, at(now));
                    net.collect(j);
                }
            }
        }
        net.run_for(Duration::from_secs(10));
        for i in [1, 2] {
            let held = net.cores[i].members();
            let m0 = held.iter().find(|m| m.id.node == member(0).node);
            assert_eq!(
                m0.map(|m| (m.id.generation, m.state)),
                Some((2, MemberState::Alive)),
                "at member {i}"
            );
        }
    }

    #[test]
    fn a_swim_packet_malformed_behind_its_updates_is_refused_whole_not_half_applied() {
        let mut net = Net::joined(3, MeshSettings::default());
        let packets: Vec<Vec<u8>> = net
            .log
            .iter()
            .filter(|p| p.tag == Some(TAG_SWIM))
            .map(|p| p.payload[1..p.payload.len() - signing::TRAILER_BYTES].to_vec())
            .collect();
        assert!(
            packets.iter().all(|p| well_formed_sender(p).is_some()),
            "foca's own packets"
        );
        // A packet from member 1, with one more update (a stranger), and a broadcast
        // item cut short behind it.
        let stranger = MemberId {
            node: crate::identity::NodeId([0x77; 16]),
            generation: 1,
            addrs: vec![addr(9)],
        };
        let header = foca::Header {
            src: member(1),
            src_incarnation: 0,
            dst: member(0),
            message: foca::Message::Ping(99),
        };
        let mut body = Vec::new();
        PostcardCodec.encode_header(&header, &mut body).unwrap();
        body.extend_from_slice(&1u16.to_be_bytes());
        PostcardCodec
            .encode_member(&foca::Member::alive(stranger.clone()), &mut body)
            .unwrap();
        assert!(
            well_formed_sender(&body).is_some(),
            "as such, a valid packet"
        );
        body.extend_from_slice(&[0, 40, 1, 2, 3]);
        assert!(well_formed_sender(&body).is_none());

        let mut forger = Forger::new(keyring(1));
        let mut payload = vec![TAG_SWIM];
        payload.extend(member_key(1).sign(DOMAIN_SWIM, &body));
        let now = net.unix_ms();
        let datagram = forger.sealed(&payload, now);
        net.cores[0].handle_datagram(addr(1), &datagram, at(now));
        assert_eq!(net.cores[0].counters().dropped(DropReason::Invalid), 1);
        assert!(
            net.cores[0]
                .members()
                .iter()
                .all(|m| m.id.node != stranger.node),
            "nothing of it applied"
        );
    }
}
