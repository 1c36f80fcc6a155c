//! Who may say what (ADR 0032, 0033): the control messages in which a member asserts an
//! identity (join, refutation, keyring request and reply) carry its node id and are
//! signed; a receiver checks the signature, the signer against the key pinned for that
//! node id, and that the identity asserted is the signer's. Records are checked as they
//! are merged (`Shared::merge_remote`), revocations there too (`accept_revocation`: an
//! admin's only). foca's own SWIM packets are signed too: their header names the sender,
//! checked against its pinned key (`MeshCore::handle_swim`); what they say of other
//! members stays the sender's word, and a revoked member's are refused.

use gatewan_proto::v1::mesh_control::Kind;

use super::{MeshCore, lock};
use crate::identity::NodeId;
use crate::signing::{self, DOMAIN_CONTROL, PublicKey};

impl MeshCore {
    /// For a control message in which the sender asserts an identity: the signature
    /// verifies, by the key pinned for `sender`, and the identity asserted is the
    /// sender's. Any other control message passes as it is. Drops are counted.
    /// `None`: dropped; `Some(signer)`: the signer, when the message is signed.
    pub(super) fn control_is_authentic(
        &mut self,
        kind: &Kind,
        sender: &[u8],
        body: &[u8],
    ) -> Option<Option<PublicKey>> {
        let Some(asserted) = asserted_identity(kind) else {
            return Some(None);
        };
        let mut shared = lock(&self.shared);
        let signer = match signing::verify(DOMAIN_CONTROL, body) {
            Ok((_, signer)) => signer,
            Err(e) => {
                shared.bad_signature(&e, control_name(kind));
                return None;
            }
        };
        let Some(sender) = NodeId::from_slice(sender) else {
            shared.bad_signature(&"no 16-byte sender id", control_name(kind));
            return None;
        };
        if !shared.check_pin(sender, signer, control_name(kind)) {
            return None;
        }
        if shared.revoked.contains_key(&sender) {
            shared.count(super::DropReason::Revoked);
            return None;
        }
        // Signed by the sender, but speaking for someone else: a keyring holder with
        // a key of its own cannot pass for another member this way either.
        if asserted.is_some_and(|id| id != sender.0.as_slice()) {
            shared.forged(sender, signer, control_name(kind));
            return None;
        }
        Some(Some(signer))
    }

    /// Whether the member whose key is `signer` may ask a mesh-wide change of us: any
    /// member while `admins` is empty, else only those whose key fingerprint it lists.
    pub(super) fn is_admin(&self, signer: Option<PublicKey>) -> bool {
        self.settings.admins.is_empty()
            || signer.is_some_and(|k| self.settings.admins.contains(&k.fingerprint()))
    }
}

/// For the control messages that must be signed (ADR 0032): `Some`, with the node id the
/// message asserts as its sender's (`None` inside: the signer itself, a keyring request).
/// `None` for the rest.
pub(super) fn asserted_identity(kind: &Kind) -> Option<Option<&[u8]>> {
    match kind {
        Kind::JoinRequest(i) | Kind::JoinReply(i) => Some(Some(&i.id)),
        Kind::Refutation(e) => Some(Some(e.identity.as_ref().map_or(&[][..], |i| &i.id))),
        Kind::KeyringReply(r) => Some(Some(&r.member)),
        Kind::KeyringRequest(_) => Some(None),
        Kind::Hello(_)
        | Kind::Digest(_)
        | Kind::Records(_)
        | Kind::Members(_)
        | Kind::Suspected(_)
        | Kind::RelaySuspicion(_) => None,
    }
}

fn control_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::JoinRequest(_) => "join_request",
        Kind::JoinReply(_) => "join_reply",
        Kind::Refutation(_) => "refutation",
        Kind::KeyringRequest(_) => "keyring_request",
        Kind::KeyringReply(_) => "keyring_reply",
        Kind::Hello(_) => "hello",
        Kind::Digest(_) => "digest",
        Kind::Records(_) => "records",
        Kind::Members(_) => "members",
        Kind::Suspected(_) => "suspected",
        Kind::RelaySuspicion(_) => "relay_suspicion",
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::at;
    use std::time::Duration;

    use bytes::Bytes;
    use gatewan_proto::v1::{self, mesh_control::Kind, record::Body};

    use super::super::testkit::{
        Drained, EPOCH_MS, Forger, Net, addr, core, keyring, member, member_key, node, node_record,
    };
    use super::super::{DropReason, MeshCore, MeshSettings, identity_to_proto};
    use crate::pins::KeyPins;
    use crate::signing::MemberKey;
    use crate::store::{encode_record, sign_record};

    /// A keyring holder's own key: it can seal datagrams, not sign as anyone else.
    fn forger_key() -> MemberKey {
        MemberKey::from_seed([0x55; 32])
    }

    fn record(origin: usize, version: u64, body: Body) -> v1::Record {
        v1::Record {
            origin: Bytes::copy_from_slice(&node(origin).0),
            version,
            body: Some(body),
            ..Default::default()
        }
    }

    fn network(prefix: &str) -> Body {
        Body::Network(v1::Network {
            prefix: prefix.into(),
            vni: 66,
            ..Default::default()
        })
    }

    /// Pushes records to core `i` as anti-entropy would, from member 2's address.
    fn push(net: &mut Net, i: usize, records: Vec<Bytes>) {
        let now = net.unix_ms();
        let mut sealer = Forger::new(keyring(1));
        let datagram = sealer.control(Kind::Records(v1::SyncRecords { records }), now);
        net.cores[i].handle_datagram(addr(2), &datagram, at(now));
        net.collect(i);
    }

    fn datacenter_of(net: &Net, i: usize, origin: usize) -> Option<String> {
        net.cores[i].with_store(|s| s.node(node(origin)).map(|n| n.datacenter.clone()))
    }

    #[test]
    fn records_forged_for_another_member_are_dropped_and_counted_and_change_nothing() {
        let mut net = Net::joined(3, MeshSettings::default());
        let now = net.unix_ms();
        net.cores[1]
            .publish(node_record(1, "dc-a"), at(now))
            .unwrap();
        net.run_for(Duration::from_secs(2));
        assert_eq!(datacenter_of(&net, 0, 1).as_deref(), Some("dc-a"));
        let hash = net.cores[0].with_store(|s| s.state_hash());

        let forged = [
            record(1, u64::MAX - 1, node_record(1, "dc-evil")),
            record(1, u64::MAX - 1, network("10.66.0.0/16")),
        ]
        .map(|r| sign_record(&r, &forger_key()).unwrap().bytes);
        push(&mut net, 0, forged.to_vec());

        assert_eq!(net.cores[0].counters().dropped(DropReason::Forged), 2);
        assert_eq!(datacenter_of(&net, 0, 1).as_deref(), Some("dc-a"));
        assert_eq!(net.cores[0].with_store(|s| s.state_hash()), hash);
        net.run_for(Duration::from_secs(2));
        assert_eq!(datacenter_of(&net, 2, 1).as_deref(), Some("dc-a"));
        assert_eq!(net.cores[2].with_store(|s| s.networks().count()), 0);
    }

    #[test]
    fn unsigned_and_tampered_records_are_dropped_as_bad_signatures() {
        let mut net = Net::joined(2, MeshSettings::default());
        // A version of now (wall ms × 1000): not refused as from the future.
        const VERSION: u64 = super::super::testkit::EPOCH_MS * 1000;
        let unsigned = encode_record(&record(1, VERSION, network("10.1.0.0/16")))
            .unwrap()
            .bytes;
        let signed = sign_record(&record(1, VERSION, network("10.1.0.0/16")), &member_key(1))
            .unwrap()
            .bytes;
        let mut tampered = signed.to_vec();
        // The VNI, inside the signed prefix: the record still decodes.
        let at = tampered.len() - crate::signing::TRAILER_BYTES - 1;
        tampered[at] ^= 1;
        push(&mut net, 0, vec![unsigned, Bytes::from(tampered)]);
        assert_eq!(net.cores[0].counters().dropped(DropReason::BadSignature), 2);
        assert_eq!(net.cores[0].with_store(|s| s.networks().count()), 0);
        // The member's own signature passes.
        push(&mut net, 0, vec![signed]);
        assert_eq!(net.cores[0].with_store(|s| s.networks().count()), 1);
    }

    #[test]
    fn a_record_forged_with_our_own_origin_does_not_raise_our_versions() {
        let mut net = Net::joined(2, MeshSettings::default());
        let forged = sign_record(
            &record(0, u64::MAX - 1, network("10.0.0.0/8")),
            &forger_key(),
        )
        .unwrap()
        .bytes;
        push(&mut net, 0, vec![forged]);
        assert_eq!(net.cores[0].counters().dropped(DropReason::Forged), 1);
        let now = net.unix_ms();
        let v = net.cores[0]
            .publish(node_record(0, "dc-a"), at(now))
            .unwrap();
        assert!(v < u64::MAX / 2, "version {v} was pushed up by a forgery");
    }

    #[test]
    fn a_join_request_unsigned_or_for_another_identity_is_dropped() {
        let mut c = core(0, keyring(1), MeshSettings::default(), Vec::new());
        let now = EPOCH_MS;
        let join = |i: usize| Kind::JoinRequest(identity_to_proto(&member(i)));
        let unsigned = Forger::new(keyring(1)).control(join(5), now);
        c.handle_datagram(addr(5), &unsigned, at(now));
        assert_eq!(c.counters().dropped(DropReason::BadSignature), 1);
        // Signed by member 6, claiming to be member 5.
        let mut six = Forger::new(keyring(1)).signing_as(node(6), member_key(6));
        c.handle_datagram(addr(5), &six.control(join(5), now), at(now));
        assert_eq!(c.counters().dropped(DropReason::Forged), 1);
        // Signed as member 5, by another key than the one pinned for 5.
        let mut first = Forger::new(keyring(1)).signing_as(node(5), member_key(5));
        c.handle_datagram(addr(5), &first.control(join(5), now), at(now));
        let mut other = Forger::new(keyring(1)).signing_as(node(5), forger_key());
        c.handle_datagram(addr(5), &other.control(join(5), now + 1), at(now + 1));
        assert_eq!(c.counters().dropped(DropReason::Forged), 2);
        let replies = Drained::of(&mut c)
            .controls(&keyring(1))
            .into_iter()
            .filter(|(_, k)| matches!(k, Kind::JoinReply(_)))
            .count();
        assert_eq!(replies, 1, "only member 5's own request is answered");
    }

    #[test]
    fn a_swim_packet_signed_by_another_key_than_its_senders_is_dropped_as_forged() {
        use foca::Codec as _;
        let mut net = Net::joined(2, MeshSettings::default());
        let ping = {
            let header = foca::Header {
                src: member(1),
                src_incarnation: 0,
                dst: member(0),
                message: foca::Message::Ping(42),
            };
            let mut body = Vec::new();
            foca::PostcardCodec
                .encode_header(&header, &mut body)
                .unwrap();
            body
        };
        let mut forger = Forger::new(keyring(1));
        let mut send = |net: &mut Net, key: &MemberKey| {
            let mut payload = vec![super::super::TAG_SWIM];
            payload.extend(key.sign(crate::signing::DOMAIN_SWIM, &ping));
            let now = net.unix_ms();
            let datagram = forger.sealed(&payload, now);
            net.cores[0].handle_datagram(addr(1), &datagram, at(now));
            Drained::of(&mut net.cores[0]).sends.len()
        };
        // A keyring holder passing for member 1: no ack, counted.
        assert_eq!(send(&mut net, &forger_key()), 0);
        assert_eq!(net.cores[0].counters().dropped(DropReason::Forged), 1);
        // Member 1's own key: acked.
        assert!(send(&mut net, &member_key(1)) > 0);
        assert_eq!(net.cores[0].counters().dropped(DropReason::Forged), 1);
    }

    #[test]
    fn a_keyring_request_from_a_key_other_than_the_pinned_one_is_dropped() {
        let mut net = Net::joined(2, MeshSettings::default());
        let request = v1::KeyringRequest {
            query: 1,
            op: Some(v1::keyring_request::Op::Remove("x".into())),
        };
        let now = net.unix_ms();
        let mut forger = Forger::new(keyring(1)).signing_as(node(1), forger_key());
        let datagram = forger.control(Kind::KeyringRequest(request), now);
        net.cores[0].handle_datagram(addr(1), &datagram, at(now));
        assert_eq!(net.cores[0].counters().dropped(DropReason::Forged), 1);
        assert!(
            !net.cores[0]
                .drain_outputs()
                .any(|o| matches!(o, super::super::Output::KeyringRequested { .. }))
        );
    }

    #[test]
    fn with_admins_only_an_admins_keyring_request_is_applied_the_rest_refused_in_the_reply() {
        let settings = MeshSettings {
            admins: vec![member_key(0).public().fingerprint()],
            ..MeshSettings::default()
        };
        let mut c = core(1, keyring(1), settings, Vec::new());
        let request = |query| {
            Kind::KeyringRequest(v1::KeyringRequest {
                query,
                op: Some(v1::keyring_request::Op::Remove("x".into())),
            })
        };
        let mut admin = Forger::new(keyring(1)).signing_as(node(0), member_key(0));
        c.handle_datagram(addr(0), &admin.control(request(1), EPOCH_MS), at(EPOCH_MS));
        let d = Drained::of(&mut c);
        assert_eq!(
            d.keyring_requests.len(),
            1,
            "the admin's change goes to the driver"
        );

        let mut other = Forger::new(keyring(1)).signing_as(node(2), member_key(2));
        c.handle_datagram(addr(2), &other.control(request(2), EPOCH_MS), at(EPOCH_MS));
        let d = Drained::of(&mut c);
        assert!(d.keyring_requests.is_empty(), "not applied");
        let errors: Vec<String> = d
            .controls(&keyring(1))
            .into_iter()
            .filter_map(|(to, k)| match k {
                Kind::KeyringReply(r) if to == addr(2) && r.query == 2 => Some(r.error),
                _ => None,
            })
            .collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("not in mesh.admins")
                && errors[0].contains(&member_key(2).public().fingerprint()),
            "{}",
            errors[0]
        );
    }

    fn with_admin_0() -> MeshSettings {
        MeshSettings {
            admins: vec![member_key(0).public().fingerprint()],
            ..MeshSettings::default()
        }
    }

    fn holds_any_record_of(net: &Net, i: usize, origin: usize) -> bool {
        net.cores[i].with_store(|s| s.iter().any(|r| r.key.origin == node(origin)))
    }

    #[test]
    fn an_admins_revocation_removes_the_members_records_everywhere_and_refuses_it_after() {
        let mut net = Net::joined(3, with_admin_0());
        let now = net.unix_ms();
        net.cores[2]
            .publish(node_record(2, "dc-b"), at(now))
            .unwrap();
        net.run_for(Duration::from_secs(2));
        assert!(holds_any_record_of(&net, 1, 2));

        let now = net.unix_ms();
        assert!(
            net.cores[1]
                .revoke(node(2), at(now))
                .unwrap_err()
                .contains("mesh.admins")
        );
        assert!(net.cores[0].revoke(node(0), at(now)).is_err(), "not itself");
        net.cores[0].revoke(node(2), at(now)).unwrap();
        net.collect(0);
        net.run_for(Duration::from_secs(3));
        for i in 0..2 {
            assert!(
                !holds_any_record_of(&net, i, 2),
                "member {i} still holds them"
            );
            let m = net.cores[i].members();
            assert!(m.iter().any(|m| m.id.node == node(2) && m.revoked));
        }
        // What it says from now on is refused.
        let now = net.unix_ms();
        net.cores[2]
            .publish(node_record(2, "dc-c"), at(now))
            .unwrap();
        net.run_for(Duration::from_secs(3));
        assert!(!holds_any_record_of(&net, 1, 2));
        assert!(net.cores[1].counters().dropped(DropReason::Revoked) > 0);
        let saved = net.cores[1].take_changed_revocations().expect("to save");
        assert_eq!(saved.len(), 1);
    }

    #[test]
    fn a_revocation_by_a_member_not_in_admins_is_dropped_and_changes_nothing() {
        let mut net = Net::joined(3, with_admin_0());
        let now = net.unix_ms();
        net.cores[2]
            .publish(node_record(2, "dc-b"), at(now))
            .unwrap();
        net.run_for(Duration::from_secs(2));
        let revocation = |by: usize| {
            let r = record(
                by,
                u64::MAX / 2,
                Body::Revocation(v1::Revocation {
                    node: Bytes::copy_from_slice(&node(2).0),
                }),
            );
            sign_record(&r, &member_key(by)).unwrap().bytes
        };
        push(&mut net, 1, vec![revocation(1)]);
        assert_eq!(net.cores[1].counters().dropped(DropReason::NotAdmin), 1);
        assert!(holds_any_record_of(&net, 1, 2));
        // The admin's own, pushed by anyone, is taken.
        push(&mut net, 1, vec![revocation(0)]);
        assert!(!holds_any_record_of(&net, 1, 2));
    }

    #[test]
    fn saved_revocations_are_checked_again_and_hold_after_a_restart() {
        let mut net = Net::joined(3, with_admin_0());
        let now = net.unix_ms();
        net.cores[0].revoke(node(2), at(now)).unwrap();
        net.collect(0);
        net.run_for(Duration::from_secs(2));
        let saved = net.cores[1].take_changed_revocations().unwrap();

        let restarted = |settings: MeshSettings| {
            let mut pins = KeyPins::default();
            pins.check(node(0), member_key(0).public());
            MeshCore::new(
                member(1),
                member_key(1),
                pins,
                keyring(1),
                settings,
                Vec::new(),
                [1; 32],
            )
            .unwrap()
        };
        let mut c = restarted(with_admin_0());
        assert!(c.restore_revocations(&saved).is_empty());
        assert!(
            c.members().iter().all(|m| !m.revoked),
            "member 2 not yet seen"
        );
        let r = sign_record(&record(2, 1, network("10.2.0.0/16")), &member_key(2))
            .unwrap()
            .bytes;
        let mut sealer = Forger::new(keyring(1));
        let datagram = sealer.control(Kind::Records(v1::SyncRecords { records: vec![r] }), now);
        c.handle_datagram(addr(2), &datagram, at(now));
        assert_eq!(c.counters().dropped(DropReason::Revoked), 1);
        assert_eq!(c.with_store(|s| s.networks().count()), 0);
        assert_eq!(c.with_store(|s| s.revocations().count()), 1, "gossiped on");
        // With mesh.admins emptied, the saved revocation no longer holds.
        let mut c = restarted(MeshSettings::default());
        assert_eq!(c.restore_revocations(&saved).len(), 1);
    }

    #[test]
    fn keys_are_pinned_on_first_sight_and_handed_over_once_for_saving() {
        let mut net = Net::joined(2, MeshSettings::default());
        let pins = net.cores[0].take_changed_pins().expect("pins changed");
        assert_eq!(pins.get(&node(0)), Some(&member_key(0).public()));
        assert_eq!(pins.get(&node(1)), Some(&member_key(1).public()));
        assert!(net.cores[0].take_changed_pins().is_none());
        let members = net.cores[0].members();
        assert!(
            members
                .iter()
                .all(|m| m.key == Some(member_key(m.id.node.0[0] as usize - 1).public()))
        );
    }

    #[test]
    fn restored_pins_hold_across_a_restart_and_must_agree_with_our_own_key() {
        let mut pins = KeyPins::default();
        pins.check(node(1), forger_key().public());
        let mut c = MeshCore::new(
            member(0),
            member_key(0),
            pins.clone(),
            keyring(1),
            MeshSettings::default(),
            Vec::new(),
            [0; 32],
        )
        .unwrap();
        // Member 1's real key now looks like a forgery: the pin from before holds.
        let mut one = Forger::new(keyring(1)).signing_as(node(1), member_key(1));
        let join = Kind::JoinRequest(identity_to_proto(&member(1)));
        c.handle_datagram(addr(1), &one.control(join, EPOCH_MS), at(EPOCH_MS));
        assert_eq!(c.counters().dropped(DropReason::Forged), 1);

        pins.check(node(0), forger_key().public());
        let err = MeshCore::new(
            member(0),
            member_key(0),
            pins,
            keyring(1),
            MeshSettings::default(),
            Vec::new(),
            [0; 32],
        )
        .err()
        .expect("refused");
        assert!(err.contains("pinned_keys"), "{err}");
    }
}
