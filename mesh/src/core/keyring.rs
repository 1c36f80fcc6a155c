//! Keyring changes asked of the whole mesh (`serf keys`). The member whose API applied a
//! change asks every member alive or suspect to apply it too, again every
//! `KEYRING_RETRY` until each answers, for at most `KEYRING_QUERY_TIMEOUT`; the outcome
//! (who was asked, who failed and why) comes out as `Output::KeyringQueryDone`. A member
//! asked hands the change to its driver (`Output::KeyringRequested`), which applies it
//! and answers through `answer_keyring`; a repeated request (our answer was lost) gets
//! the same answer again, without applying the change twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gatewan_proto::v1::{self, mesh_control::Kind};
use rand::RngExt as _;
use tracing::warn;

use super::{
    CoreTimer, DropReason, KEYRING_QUERY_TIMEOUT, KeyringOutcome, MemberInfo, MemberState,
    MeshCore, Now, Output,
};
use crate::identity::NodeId;
use crate::seal::{KeyringOp, MeshKey};
use crate::signing::PublicKey;

const KEYRING_RETRY: Duration = Duration::from_millis(500);
/// Answers kept to give again when a request is repeated (its answer was lost).
const KEYRING_ANSWERS_KEPT: usize = 64;

/// A cluster-wide keyring change we asked for.
#[derive(Debug)]
pub(super) struct KeyringQuery {
    request: v1::KeyringRequest,
    /// Asked member → its answer (None: none yet).
    answers: HashMap<NodeId, Option<String>>,
    addrs: HashMap<NodeId, Vec<SocketAddr>>,
    until_ms: u64,
}

impl MeshCore {
    /// Asks every member alive or suspect to apply a keyring change we applied already
    /// (`serf keys`): asked again every 500 ms until it answers, for at most
    /// `KEYRING_QUERY_TIMEOUT`. The answer comes as `Output::KeyringQueryDone`.
    pub fn start_keyring_query(&mut self, op: &KeyringOp, now: Now) -> u64 {
        let now_ms = self.clocks(now);
        let query = self.rng.random::<u64>();
        let op = match op.by_fingerprint() {
            KeyringOp::Install(k) => {
                v1::keyring_request::Op::Install(Bytes::copy_from_slice(k.as_bytes()))
            }
            KeyringOp::Use(fp) => v1::keyring_request::Op::Use(fp),
            KeyringOp::Remove(fp) => v1::keyring_request::Op::Remove(fp),
        };
        let asked: Vec<&MemberInfo> = self
            .members
            .values()
            .filter(|m| m.state != MemberState::Down)
            .collect();
        let q = KeyringQuery {
            request: v1::KeyringRequest {
                query,
                op: Some(op),
            },
            answers: asked.iter().map(|m| (m.id.node, None)).collect(),
            addrs: asked
                .iter()
                .map(|m| (m.id.node, m.id.addrs.clone()))
                .collect(),
            until_ms: now_ms + KEYRING_QUERY_TIMEOUT.as_millis() as u64,
        };
        self.keyring_queries.insert(query, q);
        self.ask_keyring(query, now_ms);
        query
    }

    pub(super) fn ask_keyring(&mut self, query: u64, now_ms: u64) {
        let Some(q) = self.keyring_queries.get(&query) else {
            return;
        };
        let waiting: Vec<Vec<SocketAddr>> = q
            .answers
            .iter()
            .filter(|(_, a)| a.is_none())
            .filter_map(|(n, _)| q.addrs.get(n).cloned())
            .collect();
        if waiting.is_empty() || now_ms >= q.until_ms {
            return self.finish_keyring_query(query);
        }
        let request = q.request.clone();
        for addrs in waiting {
            self.send_control(&addrs, Kind::KeyringRequest(request.clone()));
        }
        self.schedule(KEYRING_RETRY, CoreTimer::KeyringQuery(query));
    }

    fn finish_keyring_query(&mut self, query: u64) {
        let Some(q) = self.keyring_queries.remove(&query) else {
            return;
        };
        let mut outcome = KeyringOutcome::default();
        for (node, answer) in q.answers {
            outcome.asked.push(node);
            match answer {
                Some(e) if e.is_empty() => {}
                Some(e) => outcome.failures.push((node, e)),
                None => outcome.failures.push((
                    node,
                    format!(
                        "no answer within {} s (down, unreachable, or without the primary key)",
                        KEYRING_QUERY_TIMEOUT.as_secs()
                    ),
                )),
            }
        }
        outcome.asked.sort();
        outcome.failures.sort();
        self.out.push(Output::KeyringQueryDone { query, outcome });
    }

    /// Our answer to a keyring request (`Output::KeyringRequested`): empty error when applied.
    pub fn answer_keyring(&mut self, to: SocketAddr, query: u64, error: String, now: Now) {
        self.clocks(now);
        if self.keyring_answers.len() >= KEYRING_ANSWERS_KEPT {
            self.keyring_answers.pop_front();
        }
        self.keyring_answers.push_back((query, error.clone()));
        self.send_keyring_reply(to, query, error);
    }

    fn send_keyring_reply(&mut self, to: SocketAddr, query: u64, error: String) {
        let reply = v1::KeyringReply {
            query,
            member: Bytes::copy_from_slice(&self.local().node.0),
            error,
        };
        self.send_control(&[to], Kind::KeyringReply(reply));
    }

    /// Another member asks us to change our keyring: for the driver to apply.
    pub(super) fn on_keyring_request(
        &mut self,
        from: SocketAddr,
        r: v1::KeyringRequest,
        signer: Option<PublicKey>,
        now_ms: u64,
    ) {
        if !self.is_admin(signer) {
            let key = signer.map(|k| k.fingerprint()).unwrap_or_default();
            warn!(%from, key, "keyring change refused: the asking member is not in mesh.admins");
            let error = format!(
                "refused: the asking member's key {key} is not in mesh.admins of this member"
            );
            return self.send_keyring_reply(from, r.query, error);
        }
        if let Some((_, error)) = self.keyring_answers.iter().find(|(q, _)| *q == r.query) {
            // Our answer was lost: the same answer, the change is not applied twice.
            let error = error.clone();
            return self.send_keyring_reply(from, r.query, error);
        }
        let op = match r.op {
            Some(v1::keyring_request::Op::Install(k)) => match MeshKey::from_bytes(&k) {
                Some(k) => KeyringOp::Install(k),
                None => return self.drop_datagram(DropReason::Invalid, from, now_ms),
            },
            Some(v1::keyring_request::Op::Use(fp)) => KeyringOp::Use(fp),
            Some(v1::keyring_request::Op::Remove(fp)) => KeyringOp::Remove(fp),
            None => return self.drop_datagram(DropReason::Invalid, from, now_ms),
        };
        self.out.push(Output::KeyringRequested {
            from,
            query: r.query,
            op,
        });
    }

    /// An answer to a query of ours; the query finishes when every member asked answered.
    pub(super) fn on_keyring_reply(&mut self, from: SocketAddr, r: v1::KeyringReply, now_ms: u64) {
        let Some(node) = NodeId::from_slice(&r.member) else {
            return self.drop_datagram(DropReason::Invalid, from, now_ms);
        };
        let Some(q) = self.keyring_queries.get_mut(&r.query) else {
            return; // finished, or not ours
        };
        if let Some(slot) = q.answers.get_mut(&node) {
            *slot = Some(r.error);
        }
        if q.answers.values().all(Option::is_some) {
            self.finish_keyring_query(r.query);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::at;
    use std::time::Duration;

    use gatewan_proto::v1::{self, mesh_control::Kind};

    use super::super::testkit::{
        Drained, EPOCH_MS, Forger, Net, addr, core, key, keyring, member_key, node,
    };
    use super::super::{DropReason, MeshSettings};
    use super::*;

    fn fingerprints(net: &Net, i: usize) -> Vec<String> {
        net.cores[i]
            .keyring()
            .keys()
            .map(MeshKey::fingerprint)
            .collect()
    }

    fn start(net: &mut Net, i: usize, op: &KeyringOp) -> u64 {
        let now = net.unix_ms();
        op.apply(net.cores[i].keyring_mut()).expect("applies here");
        let q = net.cores[i].start_keyring_query(op, at(now));
        net.collect(i);
        net.deliver_all();
        q
    }

    #[test]
    fn a_keyring_change_reaches_every_member_and_the_query_finishes_with_their_answers() {
        let mut net = Net::joined(3, MeshSettings::default());
        start(&mut net, 0, &KeyringOp::Install(key(9)));
        // Answered without any time passing: the query does not wait for its timeout.
        assert_eq!(net.keyring_done.len(), 1);
        let (by, outcome) = &net.keyring_done[0];
        assert_eq!(*by, 0);
        let mut asked = vec![node(1), node(2)];
        asked.sort();
        assert_eq!(outcome.asked, asked);
        assert!(outcome.failures.is_empty(), "{outcome:?}");
        for i in 0..3 {
            assert_eq!(
                fingerprints(&net, i),
                [key(1).fingerprint(), key(9).fingerprint()],
                "member {i}"
            );
        }

        // Changing the primary key everywhere cuts no one off.
        start(&mut net, 1, &KeyringOp::Use(key(9).fingerprint()));
        assert!(net.keyring_done[1].1.failures.is_empty());
        net.run_for(Duration::from_secs(5));
        assert!((0..3).all(|i| net.cores[i].alive_members() == 2));
        assert!((0..3).all(|i| fingerprints(&net, i)[0] == key(9).fingerprint()));
    }

    #[test]
    fn a_member_that_never_answers_is_reported_when_the_query_times_out() {
        let mut net = Net::joined(3, MeshSettings::default());
        net.cut(0, 2, true);
        let since = net.log.len();
        start(&mut net, 0, &KeyringOp::Install(key(9)));
        net.run_for(Duration::from_millis(2_900));
        assert!(net.keyring_done.is_empty(), "still waiting for member 2");
        let asked_2 = net.sent_since(since, |p| {
            p.from == 0 && p.to == addr(2) && matches!(p.control, Some(Kind::KeyringRequest(_)))
        });
        assert_eq!(asked_2.len(), 6, "asked again every 500 ms");
        let asked_1 = net.sent_since(since, |p| {
            p.from == 0 && p.to == addr(1) && matches!(p.control, Some(Kind::KeyringRequest(_)))
        });
        assert_eq!(asked_1.len(), 1, "member 1 answered the first time");

        net.run_for(Duration::from_millis(200));
        assert_eq!(net.keyring_done.len(), 1);
        let outcome = &net.keyring_done[0].1;
        assert_eq!(outcome.asked.len(), 2);
        assert_eq!(outcome.failures.len(), 1);
        assert_eq!(outcome.failures[0].0, node(2));
        assert!(outcome.failures[0].1.starts_with("no answer within 3 s"));
    }

    #[test]
    fn a_repeated_request_gets_the_same_answer_without_the_change_applied_twice() {
        let mut c = core(1, keyring(1), MeshSettings::default(), Vec::new());
        let mut forger = Forger::new(keyring(1)).signing_as(node(0), member_key(0));
        let request = v1::KeyringRequest {
            query: 7,
            op: Some(v1::keyring_request::Op::Install(Bytes::copy_from_slice(
                key(9).as_bytes(),
            ))),
        };
        let asker = addr(0);
        let replies = |d: &Drained| -> Vec<String> {
            d.controls(&keyring(1))
                .into_iter()
                .filter_map(|(to, k)| match k {
                    Kind::KeyringReply(r) if to == asker && r.query == 7 => Some(r.error),
                    _ => None,
                })
                .collect()
        };

        let datagram = forger.control(Kind::KeyringRequest(request.clone()), EPOCH_MS);
        c.handle_datagram(asker, &datagram, at(EPOCH_MS));
        let d = Drained::of(&mut c);
        assert_eq!(d.keyring_requests.len(), 1, "handed to the driver");
        assert!(d.sends.is_empty(), "which answers");
        c.answer_keyring(asker, 7, "disk full".into(), at(EPOCH_MS));
        assert_eq!(replies(&Drained::of(&mut c)), ["disk full"]);

        let again = forger.control(Kind::KeyringRequest(request), EPOCH_MS + 500);
        c.handle_datagram(asker, &again, at(EPOCH_MS + 500));
        let d = Drained::of(&mut c);
        assert!(d.keyring_requests.is_empty(), "not applied twice");
        assert_eq!(replies(&d), ["disk full"]);
    }

    #[test]
    fn a_request_without_a_valid_change_is_dropped_and_counted() {
        let mut c = core(1, keyring(1), MeshSettings::default(), Vec::new());
        let mut forger = Forger::new(keyring(1)).signing_as(node(0), member_key(0));
        let short_key = v1::keyring_request::Op::Install(Bytes::from_static(&[1, 2, 3]));
        for (query, op) in [(1, Some(short_key)), (2, None)] {
            let r = v1::KeyringRequest { query, op };
            c.handle_datagram(
                addr(0),
                &forger.control(Kind::KeyringRequest(r), EPOCH_MS),
                at(EPOCH_MS),
            );
        }
        assert_eq!(c.counters().dropped(DropReason::Invalid), 2);
        let d = Drained::of(&mut c);
        assert!(d.keyring_requests.is_empty() && d.sends.is_empty());
    }

    #[test]
    fn answers_to_other_queries_or_from_members_not_asked_finish_nothing() {
        let mut net = Net::joined(3, MeshSettings::default());
        net.cut(0, 2, true);
        let q = start(&mut net, 0, &KeyringOp::Install(key(9)));
        for (query, member) in [(q.wrapping_add(1), 2), (q, 7)] {
            let reply = v1::KeyringReply {
                query,
                member: Bytes::copy_from_slice(&node(member).0),
                error: String::new(),
            };
            let now = net.unix_ms();
            let mut forger = Forger::new(keyring(1)).signing_as(node(member), member_key(member));
            let datagram = forger.control(Kind::KeyringReply(reply), now);
            net.cores[0].handle_datagram(addr(2), &datagram, at(now));
            net.collect(0);
        }
        let bad = v1::KeyringReply {
            query: q,
            member: Bytes::from_static(&[1]),
            error: String::new(),
        };
        let now = net.unix_ms();
        // Member 2 answering for a member id that is not its own.
        let mut forger = Forger::new(keyring(1)).signing_as(node(2), member_key(2));
        net.cores[0].handle_datagram(
            addr(2),
            &forger.control(Kind::KeyringReply(bad), now),
            at(now),
        );
        assert_eq!(net.cores[0].counters().dropped(DropReason::Forged), 1);
        assert!(net.keyring_done.is_empty(), "still waiting for member 2");
    }
}
