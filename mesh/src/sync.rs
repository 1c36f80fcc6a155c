//! Push-pull anti-entropy, pure: whole-store hashes first (one small datagram when stores
//! agree), then sorted digests in slices that fit a datagram, then the records one side
//! has newer. Repairs whatever the broadcasts missed and hands a joiner the full state.
//! Membership travels the same way: a hash of the members each side holds in the hello,
//! the member lists when they differ.

use gatewan_proto::v1::{DigestEntry, MemberEntry, SyncDigest, SyncHello, SyncMembers};
use prost::Message as _;

use super::identity::MemberId;
use super::store::{RecordKey, StateStore, StoredRecord};

pub fn hello(store: &StateStore, members_hash: [u8; 16]) -> SyncHello {
    SyncHello {
        state_hash: store.state_hash().to_be_bytes().to_vec().into(),
        record_count: u32::try_from(store.len()).unwrap_or(u32::MAX),
        members_hash: members_hash.to_vec().into(),
        // Set by the core from its settings (a passive member asks for pushes).
        passive: false,
    }
}

/// Of the identities held alive or suspect, ourselves included: equal on two members that
/// agree on who is in the mesh, whatever order they learned it in. Incarnations and
/// suspicion are left out, they differ for a moment on every probe round.
pub fn members_hash<'a>(ids: impl Iterator<Item = &'a MemberId>) -> [u8; 16] {
    let mut ids: Vec<(&[u8; 16], u32)> = ids.map(|m| (&m.node.0, m.generation)).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut h = blake3::Hasher::new();
    for (node, generation) in ids {
        h.update(node);
        h.update(&generation.to_be_bytes());
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// The member list in slices of at most `max_bytes` encoded bytes; only the first carries
/// `reply_wanted`.
pub fn member_slices(
    entries: Vec<MemberEntry>,
    reply_wanted: bool,
    max_bytes: usize,
) -> Vec<SyncMembers> {
    let mut slices: Vec<SyncMembers> = Vec::new();
    let mut current: Vec<MemberEntry> = Vec::new();
    let mut size = 0usize;
    for e in entries {
        let len = e.encoded_len() + 4;
        if !current.is_empty() && size + len > max_bytes {
            slices.push(SyncMembers {
                reply_wanted: reply_wanted && slices.is_empty(),
                members: std::mem::take(&mut current),
            });
            size = 0;
        }
        size += len;
        current.push(e);
    }
    if !current.is_empty() {
        slices.push(SyncMembers {
            reply_wanted: reply_wanted && slices.is_empty(),
            members: current,
        });
    }
    slices
}

pub fn same_state(store: &StateStore, hello: &SyncHello) -> bool {
    hello.state_hash.as_ref() == store.state_hash().to_be_bytes()
}

/// The store's digest as slices of at most `max_bytes` encoded bytes each. Only the first
/// slice carries `reply_wanted`, so one exchange triggers one digest in return.
pub fn digest(store: &StateStore, reply_wanted: bool, max_bytes: usize) -> Vec<SyncDigest> {
    // Bounds, the flag and each entry with its field tag and length (4 bytes cover
    // both): the whole slice fits, or the receiver drops it as oversized and the records
    // of its range are never repaired.
    let bound = |k: &RecordKey| k.to_proto().encoded_len() + 4;
    let mut slices = Vec::new();
    let mut current: Vec<DigestEntry> = Vec::new();
    let mut size = 2usize;
    let mut from: Option<RecordKey> = None;
    let mut records = store.iter().peekable();
    while let Some(r) = records.next() {
        let e = DigestEntry {
            key: Some(r.key.to_proto()),
            version: r.version,
            fingerprint: r.fingerprint,
        };
        let len = e.encoded_len() + 4;
        // With this entry, room is left for the next key as the slice's end (`to`), so
        // a slice closed before any entry fits with that entry's key as its end.
        let next_end = records.peek().map_or(0, |n| bound(&n.key));
        if !current.is_empty() && size + len + next_end > max_bytes {
            slices.push(SyncDigest {
                reply_wanted: reply_wanted && slices.is_empty(),
                from: from.as_ref().map(RecordKey::to_proto),
                to: Some(r.key.to_proto()),
                entries: std::mem::take(&mut current),
            });
            size = 2 + bound(&r.key);
            from = Some(r.key.clone());
        }
        size += len;
        current.push(e);
    }
    slices.push(SyncDigest {
        reply_wanted: reply_wanted && slices.is_empty(),
        from: from.as_ref().map(RecordKey::to_proto),
        to: None,
        entries: current,
    });
    slices
}

/// The records we hold in the slice's key range that the digest's sender lacks or holds
/// an older version of. `None` if the digest is malformed.
pub fn newer_than_digest<'a>(
    store: &'a StateStore,
    d: &SyncDigest,
) -> Option<Vec<&'a StoredRecord>> {
    let from = match &d.from {
        Some(k) => Some(RecordKey::from_proto(k)?),
        None => None,
    };
    let to = match &d.to {
        Some(k) => Some(RecordKey::from_proto(k)?),
        None => None,
    };
    let mut theirs = std::collections::HashMap::with_capacity(d.entries.len());
    for e in &d.entries {
        let k = RecordKey::from_proto(e.key.as_ref()?)?;
        theirs.insert(k, (e.version, e.fingerprint));
    }
    Some(
        store
            .range(from.as_ref(), to.as_ref())
            .map(|(_, r)| r)
            .filter(|r| {
                theirs
                    .get(&r.key)
                    .is_none_or(|&rank| (r.version, r.fingerprint) > rank)
            })
            .collect(),
    )
}

/// Packs encoded records into batches of at most `max_bytes`.
pub fn batches<'a>(
    records: impl IntoIterator<Item = &'a bytes::Bytes>,
    max_bytes: usize,
) -> Vec<Vec<bytes::Bytes>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for r in records {
        let len = r.len() + 4;
        if !current.is_empty() && size + len > max_bytes {
            out.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(r.clone());
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::encode_record;
    use gatewan_proto::v1::{self, record::Body};

    fn net(origin: u8, i: u32, version: u64) -> StoredRecord {
        encode_record(&v1::Record {
            origin: vec![origin; 16].into(),
            version,
            body: Some(Body::Network(v1::Network {
                prefix: format!("10.{}.{}.0/24", i / 256, i % 256),
                vni: 1,
                ..Default::default()
            })),
            ..Default::default()
        })
        .unwrap()
    }

    /// Runs the exchange both ways until quiet and returns the two stores.
    fn exchange(mut a: StateStore, mut b: StateStore, max: usize) -> (StateStore, StateStore) {
        push(&a, &mut b, max);
        push(&b, &mut a, max);
        (a, b)
    }

    /// `y` sends its digest, `x` pushes what `y` lacks.
    fn push(x: &StateStore, y: &mut StateStore, max: usize) {
        for d in digest(y, false, max) {
            let newer: Vec<_> = newer_than_digest(x, &d)
                .unwrap()
                .into_iter()
                .cloned()
                .collect();
            for r in newer {
                y.merge(r);
            }
        }
    }

    /// A slice carries its bounds (`from`, `to`: keys of up to a prefix's length) beside
    /// its entries; all of it must fit the datagram, or the receiver drops the slice and
    /// anti-entropy never repairs the records in its range (a zero_touch run waited over
    /// 30 s for one record).
    #[test]
    fn every_digest_slice_fits_its_budget_bounds_included() {
        let mut store = StateStore::default();
        for origin in 1..=4 {
            for i in 0..200 {
                store.merge(net(origin, i, 2));
            }
        }
        for max in [300, 1000, 1327] {
            let slices = digest(&store, true, max);
            assert!(slices.len() > 2, "middle slices have both bounds");
            for d in &slices {
                assert!(
                    d.encoded_len() <= max,
                    "a slice of {} bytes for a budget of {max}",
                    d.encoded_len()
                );
            }
            let entries: usize = slices.iter().map(|d| d.entries.len()).sum();
            assert_eq!(entries, store.len());
        }
    }

    #[test]
    fn stores_converge_through_sliced_digests() {
        let mut a = StateStore::default();
        let mut b = StateStore::default();
        for i in 0..300 {
            a.merge(net(1, i, 2));
            if i % 3 == 0 {
                b.merge(net(1, i, 3)); // b newer on a third
            }
            if i % 5 == 0 {
                b.merge(net(2, i, 1)); // b alone on some
            }
        }
        assert!(
            digest(&a, true, 1000).len() > 5,
            "digest must be sliced to test ranges"
        );
        assert!(!same_state(&b, &hello(&a, [0; 16])));
        let (a, b) = exchange(a, b, 1000);
        assert_eq!(a.state_hash(), b.state_hash());
        assert_eq!(a.len(), 300 + 60);
        assert!(same_state(&b, &hello(&a, [0; 16])));
    }

    #[test]
    fn only_first_slice_wants_reply() {
        let mut a = StateStore::default();
        for i in 0..200 {
            a.merge(net(1, i, 1));
        }
        let d = digest(&a, true, 800);
        assert!(d[0].reply_wanted && d[1..].iter().all(|s| !s.reply_wanted));
        assert!(d.iter().all(|s| s.encoded_len() <= 1000));
    }

    #[test]
    fn empty_store_digest_is_one_open_slice() {
        let d = digest(&StateStore::default(), true, 1000);
        assert_eq!(d.len(), 1);
        assert!(d[0].from.is_none() && d[0].to.is_none());
    }

    fn member(n: u8, generation: u32) -> MemberId {
        MemberId {
            node: crate::identity::NodeId([n; 16]),
            generation,
            addrs: vec![format!("192.0.2.{n}:7946").parse().unwrap()],
        }
    }

    #[test]
    fn members_hash_is_the_set_of_identities() {
        let ids: Vec<MemberId> = (1..=50).map(|n| member(n, 1)).collect();
        let forward = members_hash(ids.iter());
        let backward = members_hash(ids.iter().rev().chain(ids.iter().take(3)));
        assert_eq!(forward, backward, "order and repeats do not matter");
        assert_ne!(forward, members_hash(ids.iter().skip(1)), "a member less");
        let mut restarted = ids.clone();
        restarted[7].generation = 2;
        assert_ne!(forward, members_hash(restarted.iter()), "a new generation");
    }

    #[test]
    fn member_lists_fit_datagrams_and_only_the_first_wants_a_reply() {
        let entries: Vec<MemberEntry> = (1..=200)
            .map(|n| MemberEntry {
                identity: Some(crate::core::identity_to_proto(&member(n, 1))),
                incarnation: 3,
                suspect: n % 7 == 0,
            })
            .collect();
        let slices = member_slices(entries.clone(), true, 1000);
        assert!(slices.len() > 5);
        assert!(slices.iter().all(|s| s.encoded_len() <= 1000 + 16));
        assert!(slices[0].reply_wanted && slices[1..].iter().all(|s| !s.reply_wanted));
        let back: Vec<MemberEntry> = slices.into_iter().flat_map(|s| s.members).collect();
        assert_eq!(back, entries);
        assert!(member_slices(Vec::new(), true, 1000).is_empty());
    }
}
