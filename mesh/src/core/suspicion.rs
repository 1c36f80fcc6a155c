//! Suspicion notices (Lifeguard's buddy system) and their relays. When one of our probes
//! fails, foca suspects the member; we tell the suspect directly, and ask up to two live
//! members of its datacenter to pass the notice on (the suspect may be unreachable from
//! here), and up to two of our own datacenter, which pass it on to the suspect's in turn
//! (we may reach no member of it: ADR 0056); again every half probe timeout until it
//! refutes or the suspicion runs out. A suspect told so refutes at once and answers with
//! its new incarnation, which relays bring back. Also the guard that keeps foca from
//! acting on a suspicion already refuted.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gatewan_proto::v1::{self, mesh_control::Kind};
use rand::RngExt as _;
use tracing::debug;

use super::{
    CoreTimer, DropReason, MemberState, MeshCore, TAG_CONTROL, identity_to_proto, lock, member_at,
};
use crate::identity::{MemberId, NodeId};

/// Members of a suspect's datacenter asked to pass a suspicion notice on.
const SUSPICION_RELAYS: usize = 2;
/// A member of the suspect's datacenter heard from within this is preferred as a relay:
/// a few probe rounds, as reachability may have just changed (a transit gone).
const RELAY_HEARD_MS: u64 = 5_000;
/// How long a relay waits for the suspect's refutation to bring back.
const RELAY_FOR_MS: u64 = 3_000;
/// Bounds the relays pending at once.
const MAX_RELAYS: usize = 1024;

/// A member our own probe failed, which foca will declare down at `until_ms` unless it
/// refutes (raises its incarnation) first.
#[derive(Debug, Clone)]
pub(super) struct Suspicion {
    id: MemberId,
    incarnation: u16,
    until_ms: u64,
}

impl MeshCore {
    /// foca scheduled `id`'s move from suspect to down at `until_ms`: we suspect it, and
    /// tell it so at once unless we already do.
    pub(super) fn suspect(&mut self, id: MemberId, incarnation: u16, until_ms: u64, now_ms: u64) {
        let node = id.node;
        let s = Suspicion {
            id,
            incarnation,
            until_ms,
        };
        let first = self.suspicions.insert(node, s).is_none();
        if first {
            self.counters.suspicions_raised += 1;
            self.notify_suspect(node, now_ms);
        }
    }

    /// Whether `id` is still suspect at `incarnation`, as foca's suspicion timer requires.
    pub(super) fn still_suspect(&self, id: &MemberId, incarnation: u16) -> bool {
        self.members.get(&id.node).is_some_and(|m| {
            m.state == MemberState::Suspect && m.id == *id && m.incarnation == incarnation
        })
    }

    /// Lifeguard's buddy system: a member whose probe failed tells the suspect directly,
    /// again every half probe timeout until it refutes or the suspicion runs out. SWIM
    /// alone leaves the suspect to hear of it by gossip, and its refutation to come back
    /// the same way: about two gossip spreads, each seconds long in a large mesh with
    /// loss, which is why the suspicion timeout had to be long. The refutation comes back
    /// in one round trip instead, so a live member is not declared down even with a short
    /// suspicion timeout, and a dead one is declared down sooner.
    pub(super) fn notify_suspect(&mut self, node: NodeId, now_ms: u64) {
        let Some(s) = self.suspicions.get(&node) else {
            return;
        };
        if !self.still_suspect(&s.id, s.incarnation) || now_ms >= s.until_ms {
            self.suspicions.remove(&node);
            return;
        }
        let notice = v1::SuspicionNotice {
            identity: Some(identity_to_proto(&s.id)),
            incarnation: u32::from(s.incarnation),
        };
        let addrs = s.id.addrs.clone();
        let relays = self.suspicion_relays(&node, true, now_ms);
        self.send_control(&addrs, Kind::Suspected(notice.clone()));
        // The suspect may not be reachable from here (a bgpctl on its fabric): members of
        // its datacenter pass the notice on and bring the refutation back.
        for relay in relays {
            self.send_control(&relay, Kind::RelaySuspicion(notice.clone()));
        }
        self.schedule(
            (self.settings.probe_timeout / 2).max(Duration::from_millis(50)),
            CoreTimer::SuspicionNotice(node),
        );
    }

    /// Whom to ask to pass a notice about `node` on. Up to two live members of its
    /// datacenter (as their NodeRecords say), those we heard from in the last
    /// [`RELAY_HEARD_MS`] first: one we do not hear from is likely out of our reach too.
    /// With `onward`, and from outside that datacenter, also up to two active members of
    /// our own datacenter we heard from lately: the fabric reaches them whatever our WAN
    /// does, and they pass the notice on to the suspect's datacenter in turn
    /// (`on_relay_suspicion`). That second hop is what a gatewan cut off from the WAN
    /// needs: it reaches no other datacenter, its indirect probes of that datacenter's
    /// members all fail, and without the second hop they were declared down and rejoined
    /// every 10 to 20 s. It is asked every time rather than when no member of the
    /// suspect's datacenter was heard from lately, as a transit that just failed leaves
    /// them heard from for a while: a few datagrams per suspicion.
    fn suspicion_relays(
        &mut self,
        node: &NodeId,
        onward: bool,
        now_ms: u64,
    ) -> Vec<Vec<SocketAddr>> {
        let local = self.local().node;
        let recently = now_ms.saturating_sub(RELAY_HEARD_MS);
        let (mut theirs, mut ours) = {
            let shared = lock(&self.shared);
            let datacenter = |n: &NodeId| shared.store.node(*n).map(|r| r.datacenter.clone());
            let Some(dc) = datacenter(node) else {
                return Vec::new();
            };
            let own_dc = datacenter(&local);
            let (mut theirs, mut ours) = (Vec::new(), Vec::new());
            for m in self.members.values() {
                if m.state != MemberState::Alive || m.id.node == *node || m.id.node == local {
                    continue;
                }
                let Some(r) = shared.store.node(m.id.node) else {
                    continue;
                };
                if r.datacenter == dc {
                    let heard = self.heard.get(&m.id.node).is_some_and(|&t| t >= recently);
                    theirs.push((heard, m.id.addrs.clone()));
                } else if onward
                    && Some(&r.datacenter) == own_dc.as_ref()
                    && self.heard_lately(&m.id.node, now_ms)
                    // A passive member (it said so in its hellos) reaches our
                    // datacenter only.
                    && !self.dependents.contains_key(&m.id.node)
                {
                    ours.push(m.id.addrs.clone());
                }
            }
            (theirs, ours)
        };
        if theirs.iter().any(|(heard, _)| *heard) {
            theirs.retain(|(heard, _)| *heard);
        }
        let mut relays: Vec<_> = theirs.into_iter().map(|(_, a)| a).collect();
        relays.sort();
        self.keep_at_most(&mut relays, SUSPICION_RELAYS);
        ours.sort();
        self.keep_at_most(&mut ours, SUSPICION_RELAYS);
        relays.append(&mut ours);
        relays
    }

    fn keep_at_most<T>(&mut self, v: &mut Vec<T>, n: usize) {
        while v.len() > n {
            v.swap_remove(self.rng.random_range(0..v.len()));
        }
    }

    /// A member tells us it suspects us: we refute (foca raises our incarnation and
    /// gossips it) and answer with our entry at once.
    pub(super) fn on_suspected(
        &mut self,
        from: SocketAddr,
        notice: &v1::SuspicionNotice,
        now_ms: u64,
    ) {
        let Some((id, incarnation)) = member_at(&notice.identity, notice.incarnation) else {
            return self.drop_datagram(DropReason::Invalid, from, now_ms);
        };
        if id != *self.local() {
            // About an earlier life of ours (foca has the sender's view of it
            // settled by the newer identity) or about someone else: not ours to act on.
            return;
        }
        if u32::from(incarnation) > self.own_incarnation.load(Ordering::Relaxed) {
            // No member can suspect an incarnation of ours we never announced: forged.
            // foca would take it, raise our incarnation past it and, at the end of its
            // 16 bits, rejoin under a new generation.
            return self.drop_datagram(DropReason::Invalid, from, now_ms);
        }
        // foca refutes a suspicion of its own identity by raising its incarnation
        // and gossiping; the suspecting member gets the new incarnation at once.
        let me = foca::Member::new(id, incarnation, foca::State::Suspect);
        let before = self.own_incarnation.load(Ordering::Relaxed);
        if let Err(e) = self.with_swim(|swim, rt| swim.apply_many(std::iter::once(me), true, rt)) {
            debug!(error = %e, "refutation");
        }
        if !self.settings.passive && self.own_incarnation.load(Ordering::Relaxed) != before {
            // Once per suspicion, not per notice: notices are resent and relayed. Not
            // for a passive member: it probes no one, and the members of other
            // datacenters, which it does not reach, suspect it by design (ADR 0021).
            self.local_health.suspected();
        }
        self.flush_swim(now_ms);
        let entry = v1::MemberEntry {
            identity: Some(identity_to_proto(self.local())),
            incarnation: self.own_incarnation.load(Ordering::Relaxed),
            suspect: false,
        };
        self.counters.suspicions_of_us_refuted += 1;
        self.send_control(&[from], Kind::Refutation(entry));
    }

    /// A member asks us to pass a notice on to a member of our datacenter, and to bring
    /// its refutation back.
    pub(super) fn on_relay_suspicion(
        &mut self,
        from: SocketAddr,
        notice: v1::SuspicionNotice,
        now_ms: u64,
    ) {
        let Some((id, _)) = member_at(&notice.identity, notice.incarnation) else {
            return self.drop_datagram(DropReason::Invalid, from, now_ms);
        };
        let known = self
            .members
            .get(&id.node)
            .is_some_and(|m| m.id == id && m.state != MemberState::Down);
        if !known || id.node == self.local().node {
            return;
        }
        self.relayed.retain(|_, v| {
            v.retain(|&(_, until)| until > now_ms);
            !v.is_empty()
        });
        if self.relayed.len() >= MAX_RELAYS && !self.relayed.contains_key(&id.node) {
            return;
        }
        let askers = self.relayed.entry(id.node).or_default();
        askers.retain(|&(a, _)| a != from);
        askers.push((from, now_ms + RELAY_FOR_MS));
        askers.truncate(16);
        let addrs = id.addrs.clone();
        self.send_control(&addrs, Kind::Suspected(notice.clone()));
        // Asked from outside the suspect's datacenter, as the second hop of a member that
        // reaches none of it: pass the notice on there too. A relay inside it only tells
        // the suspect, so a notice makes at most two hops.
        let local = self.local().node;
        let outside = {
            let shared = lock(&self.shared);
            let dc = |n: &NodeId| shared.store.node(*n).map(|r| r.datacenter.clone());
            dc(&id.node).is_some_and(|theirs| dc(&local).is_none_or(|ours| ours != theirs))
        };
        if outside {
            for relay in self.suspicion_relays(&id.node, false, now_ms) {
                self.send_control(&relay, Kind::RelaySuspicion(notice.clone()));
            }
        }
    }

    /// A suspect's refutation, to us or through us (a relay).
    /// `raw`: the suspect's signed message, passed on verbatim to those we relayed for.
    pub(super) fn on_refutation(
        &mut self,
        from: SocketAddr,
        e: v1::MemberEntry,
        raw: &[u8],
        now_ms: u64,
    ) {
        let Some((id, incarnation)) = member_at(&e.identity, e.incarnation) else {
            return self.drop_datagram(DropReason::Invalid, from, now_ms);
        };
        if id.node == self.local().node || e.suspect {
            return self.drop_datagram(DropReason::Invalid, from, now_ms);
        }
        // Broadcast: it replaces the suspicion in our gossip queue, so what we
        // spread from now on is the refutation, not the suspicion; usually the
        // refutation arrives before the next gossip round and the suspicion has
        // barely left.
        let refutes = |s: &Suspicion| s.id == id && incarnation > s.incarnation;
        if self.suspicions.get(&id.node).is_some_and(refutes) {
            self.suspicions.remove(&id.node);
            self.counters.refutations_received += 1;
        }
        if let Some(askers) = self.relayed.remove(&id.node) {
            for (asker, until) in askers {
                if until > now_ms {
                    self.send_sealed(&[asker], TAG_CONTROL, raw);
                }
            }
        }
        let alive = foca::Member::new(id, incarnation, foca::State::Alive);
        let refuted = std::iter::once(alive);
        if let Err(e) = self.with_swim(|swim, rt| swim.apply_many(refuted, true, rt)) {
            debug!(error = %e, "refutation refused");
        }
        self.flush_swim(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::at;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use gatewan_proto::v1::{self, mesh_control::Kind};

    use super::super::testkit::{
        Drained, EPOCH_MS, Forger, Net, Packet, addr, core, keyring, member, member_key, node,
        node_record,
    };
    use super::super::{
        DropReason, MemberState, MeshCore, MeshSettings, TAG_SWIM, identity_to_proto,
    };

    fn notice(i: usize, incarnation: u32) -> v1::SuspicionNotice {
        v1::SuspicionNotice {
            identity: Some(identity_to_proto(&member(i))),
            incarnation,
        }
    }

    fn state_at(net: &Net, observer: usize, subject: usize) -> Option<MemberState> {
        net.cores[observer]
            .members()
            .into_iter()
            .find(|m| m.id.node == member(subject).node)
            .map(|m| m.state)
    }

    /// Member `i` in `datacenters[i]`, joined, each holding the others' NodeRecords.
    fn mesh_in(datacenters: &[&str]) -> Net {
        let n = datacenters.len();
        let mut cores: Vec<MeshCore> = (0..n)
            .map(|i| {
                let seeds = if i == 0 { vec![] } else { vec![addr(0)] };
                core(i, keyring(1), MeshSettings::default(), seeds)
            })
            .collect();
        for (i, c) in cores.iter_mut().enumerate() {
            c.publish(node_record(i, datacenters[i]), at(EPOCH_MS))
                .expect("valid record");
        }
        let mut net = Net::with_cores(cores);
        net.run_for(Duration::from_secs(5));
        assert!((1..n).all(|j| net.holds_node_record(0, j)));
        net
    }

    #[test]
    fn the_relays_are_two_live_members_of_the_suspects_datacenter_other_than_it() {
        let mut net = mesh_in(&["a", "b", "b", "b", "c"]);
        let now_ms = net.now().mono_ms;
        let mut picked = std::collections::BTreeSet::new();
        for _ in 0..30 {
            let relays = net.cores[0].suspicion_relays(&member(1).node, true, now_ms);
            assert_eq!(relays.len(), 2, "{relays:?}");
            for r in relays {
                assert!(r == [addr(2)] || r == [addr(3)], "{r:?}");
                picked.insert(r);
            }
        }
        assert_eq!(picked.len(), 2);
        // Member 4 alone in its datacenter: no one to relay through.
        assert!(
            net.cores[0]
                .suspicion_relays(&member(4).node, true, now_ms)
                .is_empty()
        );
        assert!(
            net.cores[0]
                .suspicion_relays(&member(7).node, true, now_ms)
                .is_empty(),
            "unknown"
        );
    }

    /// Member 0 (datacenter a) cannot reach member 1 (datacenter b, with 2 and 3); for a
    /// while nothing member 1 says over SWIM arrives anywhere, so member 0's probe fails.
    #[test]
    fn a_suspect_is_told_and_its_datacenter_relays_bring_its_refutation_back() {
        let mut net = mesh_in(&["a", "b", "b", "b"]);

        net.cut(0, 1, true);
        let silent = Rc::new(Cell::new(true));
        let s = silent.clone();
        net.lose = Some(Box::new(move |p: &Packet| {
            s.get() && p.from == 1 && p.tag == Some(TAG_SWIM)
        }));
        let since = net.log.len();
        for _ in 0..150 {
            if net.cores[0].counters().suspicions_raised > 0 {
                break;
            }
            net.run_for(Duration::from_millis(100));
        }
        assert_eq!(net.cores[0].counters().suspicions_raised, 1);
        silent.set(false);
        net.run_for(Duration::from_secs(5));

        let from_0 = |kind: fn(&Kind) -> bool| -> Vec<std::net::SocketAddr> {
            let mut to: Vec<_> = net
                .sent_since(since, |p| {
                    p.from == 0 && p.control.as_ref().is_some_and(kind)
                })
                .iter()
                .map(|p| p.to)
                .collect();
            to.sort();
            to.dedup();
            to
        };
        assert_eq!(from_0(|k| matches!(k, Kind::Suspected(_))), [addr(1)]);
        assert_eq!(
            from_0(|k| matches!(k, Kind::RelaySuspicion(_))),
            [addr(2), addr(3)],
            "the suspect's datacenter, not the suspect"
        );
        let passed_on = net.sent_since(since, |p| {
            (p.from == 2 || p.from == 3)
                && p.to == addr(1)
                && matches!(p.control, Some(Kind::Suspected(_)))
        });
        assert!(!passed_on.is_empty(), "a relay passed the notice on");
        let brought_back = net.sent_since(since, |p| {
            (p.from == 2 || p.from == 3)
                && p.to == addr(0)
                && matches!(p.control, Some(Kind::Refutation(_)))
        });
        assert!(
            !brought_back.is_empty(),
            "a relay brought the refutation back"
        );
        assert!(net.cores[0].counters().refutations_received >= 1);
        assert!(net.cores[0].suspicions.is_empty());
        // foca's suspicion timer fired meanwhile and did nothing: member 1 is alive at
        // member 0 under its first generation (no TurnUndead made it rejoin).
        assert_eq!(state_at(&net, 0, 1), Some(MemberState::Alive));
        assert_eq!(net.cores[1].local().generation, 1);
    }

    /// Member 0 (datacenter a, with member 1) reaches no member of datacenter b (2 and 3),
    /// and member 1 does not reach member 2: every probe of 2 by 0 fails, directly and
    /// indirectly, and neither 3 nor 1 alone can pass a notice on to 2. Member 1 passes
    /// it on to 3, which tells 2; the refutation comes back the same way.
    #[test]
    fn a_notice_goes_through_our_datacenter_when_the_suspects_is_out_of_reach() {
        let mut net = mesh_in(&["a", "a", "b", "b"]);
        let now_ms = net.now().mono_ms;
        let relays = net.cores[0].suspicion_relays(&member(2).node, true, now_ms);
        assert_eq!(relays, [vec![addr(3)], vec![addr(1)]], "theirs, then ours");
        assert_eq!(
            net.cores[0].suspicion_relays(&member(2).node, false, now_ms),
            [vec![addr(3)]],
            "a relay does not ask its own datacenter"
        );

        let since = net.log.len();
        net.cut(0, 2, true);
        net.cut(0, 3, true);
        net.cut(1, 2, true);
        net.run_for(Duration::from_secs(30));

        assert!(net.cores[0].counters().suspicions_raised > 0, "0 suspects");
        assert!(
            !net.sent_since(since, |p| p.from == 1
                && p.to == addr(3)
                && matches!(p.control, Some(Kind::RelaySuspicion(_))))
                .is_empty(),
            "member 1 passed the notice on to the suspect's datacenter"
        );
        assert!(net.cores[0].counters().refutations_received > 0);
        assert_eq!(state_at(&net, 0, 2), Some(MemberState::Alive));
        assert_eq!(net.cores[2].local().generation, 1, "never declared down");
    }

    #[test]
    fn a_notice_about_us_is_refuted_at_once_with_a_higher_incarnation() {
        // foca refutes by gossiping its new incarnation, so the member knows another.
        let mut net = Net::joined(2, MeshSettings::default());
        let mut forger = Forger::new(keyring(1));
        let asker = addr(4);
        let mut send = |net: &mut Net, n: v1::SuspicionNotice| {
            let now = net.unix_ms();
            let c = &mut net.cores[0];
            c.handle_datagram(asker, &forger.control(Kind::Suspected(n), now), at(now));
            Drained::of(c).controls(&keyring(1))
        };
        let before = net.cores[0].own_incarnation.load(Ordering::Relaxed);

        let sent = send(&mut net, notice(0, before));
        let refutations: Vec<_> = sent
            .iter()
            .filter_map(|(to, k)| match k {
                Kind::Refutation(e) if *to == asker => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(refutations.len(), 1);
        assert_eq!(refutations[0].incarnation, before + 1);
        assert!(!refutations[0].suspect);
        assert_eq!(net.cores[0].counters().suspicions_of_us_refuted, 1);

        assert!(
            send(&mut net, notice(1, 0)).is_empty(),
            "about someone else"
        );
        assert!(
            send(&mut net, notice(0, 70_000)).is_empty(),
            "beyond 16 bits"
        );
        assert_eq!(net.cores[0].counters().dropped(DropReason::Invalid), 1);
        assert_eq!(net.cores[0].counters().suspicions_of_us_refuted, 1);
    }

    #[test]
    fn a_relay_passes_a_notice_on_only_about_a_member_it_holds_alive() {
        let mut net = Net::joined(2, MeshSettings::default());
        let mut forger = Forger::new(keyring(1));
        let asker = addr(9);
        let since = net.log.len();
        for subject in [5, 1] {
            let now = net.unix_ms();
            let relay = forger.control(Kind::RelaySuspicion(notice(subject, 0)), now);
            net.cores[0].handle_datagram(asker, &relay, at(now));
            net.collect(0);
            net.deliver_all();
        }
        let passed: Vec<_> = net
            .sent_since(since, |p| {
                p.from == 0 && matches!(p.control, Some(Kind::Suspected(_)))
            })
            .iter()
            .map(|p| p.to)
            .collect();
        assert_eq!(passed, [addr(1)], "nothing about a member it does not know");
        let back = net.sent_since(since, |p| {
            p.from == 0 && p.to == asker && matches!(p.control, Some(Kind::Refutation(_)))
        });
        assert_eq!(
            back.len(),
            1,
            "the suspect's refutation goes back to the asker"
        );
    }

    #[test]
    fn a_refutation_that_is_not_one_is_dropped_and_counted() {
        let mut c = core(0, keyring(1), MeshSettings::default(), Vec::new());
        let entry = |i: usize, suspect: bool| v1::MemberEntry {
            identity: Some(identity_to_proto(&member(i))),
            incarnation: 1,
            suspect,
        };
        // Signed by the member each speaks for (ours by our own key): only what they
        // say is wrong.
        for (i, suspect) in [(0, false), (3, true)] {
            let mut forger = Forger::new(keyring(1)).signing_as(node(i), member_key(i));
            c.handle_datagram(
                addr(3),
                &forger.control(Kind::Refutation(entry(i, suspect)), EPOCH_MS),
                at(EPOCH_MS),
            );
        }
        assert_eq!(
            c.counters().dropped(DropReason::Invalid),
            2,
            "of us; a suspicion"
        );
        assert_eq!(c.alive_members(), 0);
    }
}
