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

use super::{
    CoreTimer, DropReason, KEYRING_QUERY_TIMEOUT, KeyringOutcome, MemberInfo, MemberState,
    MeshCore, Output,
};
use crate::identity::NodeId;
use crate::seal::{KeyringOp, MeshKey};

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
    pub fn start_keyring_query(&mut self, op: &KeyringOp, now_ms: u64) -> u64 {
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
            self.send_control(&addrs, Kind::KeyringRequest(request.clone()), now_ms);
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
    pub fn answer_keyring(&mut self, to: SocketAddr, query: u64, error: String, now_ms: u64) {
        if self.keyring_answers.len() >= KEYRING_ANSWERS_KEPT {
            self.keyring_answers.pop_front();
        }
        self.keyring_answers.push_back((query, error.clone()));
        self.send_keyring_reply(to, query, error, now_ms);
    }

    fn send_keyring_reply(&mut self, to: SocketAddr, query: u64, error: String, now_ms: u64) {
        let reply = v1::KeyringReply {
            query,
            member: Bytes::copy_from_slice(&self.local().node.0),
            error,
        };
        self.send_control(&[to], Kind::KeyringReply(reply), now_ms);
    }

    /// Another member asks us to change our keyring: for the driver to apply.
    pub(super) fn on_keyring_request(
        &mut self,
        from: SocketAddr,
        r: v1::KeyringRequest,
        now_ms: u64,
    ) {
        if let Some((_, error)) = self.keyring_answers.iter().find(|(q, _)| *q == r.query) {
            // Our answer was lost: the same answer, the change is not applied twice.
            let error = error.clone();
            return self.send_keyring_reply(from, r.query, error, now_ms);
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
