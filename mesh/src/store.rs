//! The mesh state store: every record of every member, merged so that the newest version
//! wins. The merge is a pure function of (store, record): commutative, idempotent and
//! associative, so members converge whatever order gossip delivers records in.
//!
//! Two bounds keep one member from filling everyone's memory and gossip (route hygiene,
//! ADR 0034): each origin holds at most `max_records_per_origin` records (new keys beyond
//! it are refused and counted; updates of held records still merge), and the records of
//! an origin gone for long are collected ([`StateStore::collect_origin`]) and not taken
//! back from anti-entropy until the origin is alive again or sends newer versions.
//!
//! Records are kept as the bytes their origin signed, so fields this version does not
//! know travel on; a record of a kind it does not know is kept under the key it writes
//! out (`Record.kind`, `Record.name`), within the same bounds, and passed on unread
//! (rolling upgrades, ADR 0046).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use gatewan_proto::v1::{self, RecordKind, record::Body};
use prost::Message as _;

use super::identity::NodeId;
use super::signing::{self, DOMAIN_RECORD, MemberKey, PublicKey, TrailerError};

/// Largest encoded record accepted: a record travels inside one gossip datagram.
pub const MAX_RECORD_BYTES: usize = 1024;
const MAX_NAME_LEN: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    pub origin: NodeId,
    pub kind: i32,
    pub name: String,
}

impl RecordKey {
    pub fn to_proto(&self) -> v1::RecordKey {
        v1::RecordKey {
            origin: Bytes::copy_from_slice(&self.origin.0),
            kind: self.kind,
            name: self.name.clone(),
        }
    }

    pub fn from_proto(k: &v1::RecordKey) -> Option<Self> {
        if k.name.len() > MAX_NAME_LEN {
            return None;
        }
        Some(RecordKey {
            origin: NodeId::from_slice(&k.origin)?,
            kind: k.kind,
            name: k.name.clone(),
        })
    }
}

/// A validated record with its original bytes (forwarded verbatim).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRecord {
    pub key: RecordKey,
    pub version: u64,
    pub fingerprint: u64,
    pub bytes: Bytes,
    pub record: v1::Record,
}

impl StoredRecord {
    /// Total order used by the merge: higher version wins, the fingerprint breaks ties so
    /// two members holding different bytes under one version still agree.
    fn rank(&self) -> (u64, u64) {
        (self.version, self.fingerprint)
    }

    pub fn is_tombstone(&self) -> bool {
        matches!(self.record.body, Some(Body::Tombstone(_)))
    }

    /// A record of a kind this version does not know (from a member of a later version,
    /// ADR 0046): kept under the key it writes out and passed on verbatim, never read.
    pub fn is_of_unknown_kind(&self) -> bool {
        self.record.body.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record larger than {MAX_RECORD_BYTES} bytes")]
    TooLarge,
    #[error("record does not decode: {0}")]
    Decode(String),
    #[error("record origin is not a 16-byte node id")]
    BadOrigin,
    #[error("no record version left above the highest one seen for this origin")]
    VersionsExhausted,
    #[error("record has no body")]
    NoBody,
    #[error("record key written out (kind, name) invalid, or not the key of its body")]
    BadKey,
    #[error("node record id differs from its origin")]
    NodeIdMismatch,
    #[error("network prefix {0:?} is not a canonical IP prefix")]
    BadPrefix(String),
    #[error("tombstone kind or name invalid")]
    BadTombstone,
    #[error("tunnel metrics: bad peer id, tunnel id or more than 16 tunnels")]
    BadTunnelMetrics,
    #[error("choice: bad datacenter name or tunnel id")]
    BadChoice,
    #[error("the origin already holds {0} records, its cap (mesh.max_records_per_origin)")]
    OverCap(usize),
    #[error("revocation: not a 16-byte node id, or of its own origin")]
    BadRevocation,
    #[error("record signature: {0}")]
    Signature(#[from] TrailerError),
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let h = blake3::hash(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_be_bytes(b)
}

/// Checks the origin's signature trailer (ADR 0032), then decodes and validates the
/// record: what every record from the network goes through. Returns the signer's key,
/// for the caller to check against the origin's pin.
pub fn verify_record(bytes: &[u8]) -> Result<(StoredRecord, PublicKey), RecordError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge);
    }
    let (_, signer) = signing::verify(DOMAIN_RECORD, bytes)?;
    Ok((decode_record(bytes)?, signer))
}

/// Signs and validates a record built locally: it is encoded without its signature, and
/// the trailer appended.
pub fn sign_record(record: &v1::Record, key: &MemberKey) -> Result<StoredRecord, RecordError> {
    let mut unsigned = record.clone();
    unsigned.signature = Bytes::new();
    sign_encoded(&unsigned.encode_to_vec(), key)
}

/// Signs and validates a record encoded without its signature: what [`sign_record`]
/// does after encoding. Tests and the simulator use it to publish records as a member of
/// a later version encodes them (fields and kinds this version does not know).
pub fn sign_encoded(unsigned: &[u8], key: &MemberKey) -> Result<StoredRecord, RecordError> {
    decode_record(&key.sign(DOMAIN_RECORD, unsigned))
}

/// Whether `kind` is one of this version's record kinds (`RecordKind`, unspecified
/// included).
fn is_known_kind(kind: i32) -> bool {
    RecordKind::try_from(kind).is_ok()
}

/// Decodes and validates a record's structure. It does not check the signature:
/// network input goes through [`verify_record`].
pub fn decode_record(bytes: &[u8]) -> Result<StoredRecord, RecordError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge);
    }
    let record = v1::Record::decode(bytes).map_err(|e| RecordError::Decode(e.to_string()))?;
    let origin = NodeId::from_slice(&record.origin).ok_or(RecordError::BadOrigin)?;
    let Some(body) = record.body.as_ref() else {
        // No body this version knows: a kind of a later version if the record writes out
        // a key of a kind unknown here (ADR 0046), kept under it; else nothing to keep.
        if record.kind <= 0 || is_known_kind(record.kind) {
            return Err(RecordError::NoBody);
        }
        if record.name.len() > MAX_NAME_LEN {
            return Err(RecordError::BadKey);
        }
        return Ok(StoredRecord {
            key: RecordKey {
                origin,
                kind: record.kind,
                name: record.name.clone(),
            },
            version: record.version,
            fingerprint: fingerprint(bytes),
            bytes: Bytes::copy_from_slice(bytes),
            record,
        });
    };
    let (kind, name) = match body {
        Body::Node(n) => {
            if n.id.as_ref() != origin.0 {
                return Err(RecordError::NodeIdMismatch);
            }
            (RecordKind::Node as i32, String::new())
        }
        Body::Network(n) => {
            let canonical = n
                .prefix
                .parse::<ipnet::IpNet>()
                .ok()
                .filter(|p| p.trunc().to_string() == n.prefix);
            if canonical.is_none() {
                return Err(RecordError::BadPrefix(n.prefix.clone()));
            }
            (RecordKind::Network as i32, n.prefix.clone())
        }
        Body::TunnelMetrics(m) => {
            let peer = NodeId::from_slice(&m.peer).ok_or(RecordError::BadTunnelMetrics)?;
            if m.tunnels.len() > 16 || m.tunnels.iter().any(|t| t.id.len() != 16) {
                return Err(RecordError::BadTunnelMetrics);
            }
            (RecordKind::TunnelMetrics as i32, peer.to_string())
        }
        Body::Choice(c) => {
            let bad = c.datacenter.len() > MAX_NAME_LEN
                || c.remote.is_empty()
                || c.remote.len() > MAX_NAME_LEN
                || c.tunnels.iter().any(|t| t.len() != 16);
            if bad {
                return Err(RecordError::BadChoice);
            }
            (RecordKind::Choice as i32, c.remote.clone())
        }
        Body::Revocation(r) => {
            let node = NodeId::from_slice(&r.node).ok_or(RecordError::BadRevocation)?;
            if node == origin {
                return Err(RecordError::BadRevocation);
            }
            (RecordKind::Revocation as i32, node.to_string())
        }
        Body::Tombstone(t) => {
            // A revocation is for good: it has no tombstone. A kind unknown here may be
            // withdrawn by the later version that has it (ADR 0046).
            let valid = t.kind > 0 && t.kind != RecordKind::Revocation as i32;
            if !valid || t.name.len() > MAX_NAME_LEN {
                return Err(RecordError::BadTombstone);
            }
            (t.kind, t.name.clone())
        }
    };
    // A key written out must be the body's: members that know the kind key the record
    // by its body, members that do not by what is written out, and both must agree.
    let written = (record.kind, record.name.as_str());
    if written != (0, "") && written != (kind, name.as_str()) {
        return Err(RecordError::BadKey);
    }
    Ok(StoredRecord {
        key: RecordKey { origin, kind, name },
        version: record.version,
        fingerprint: fingerprint(bytes),
        bytes: Bytes::copy_from_slice(bytes),
        record,
    })
}

/// Encodes a record built locally, validating it as a receiver would, unsigned: for
/// stores built without a mesh (tests, benchmarks); what is published is signed
/// ([`sign_record`]).
pub fn encode_record(record: &v1::Record) -> Result<StoredRecord, RecordError> {
    decode_record(&record.encode_to_vec())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeOutcome {
    /// New information: stored, and worth passing on.
    Applied,
    /// Same record already held.
    Duplicate,
    /// Older than what is held.
    Stale,
    /// A new key of an origin that already holds its cap of records: refused, counted.
    OverCap,
    /// A record of an origin collected as departed, no newer than what was collected:
    /// refused, counted.
    Departed,
}

/// Records refused by the store's bounds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreCounters {
    /// New keys of an origin at its cap.
    pub records_over_cap: u64,
    /// Records of a departed origin from before it was collected.
    pub records_departed: u64,
    /// Records removed because their origin was gone for `departed_record_ttl`.
    pub records_collected: u64,
}

#[derive(Debug, Default, Clone)]
pub struct StateStore {
    records: BTreeMap<RecordKey, StoredRecord>,
    /// Order-independent hash of the whole store (sum of per-record hashes), kept up to
    /// date on every change so anti-entropy compares stores in O(1).
    hash: u128,
    /// Records held per origin (tombstones included: they take room too).
    per_origin: HashMap<NodeId, usize>,
    /// At most this many records per origin; None: no cap.
    cap: Option<usize>,
    /// Origins collected as departed, with the highest version they held then.
    departed: HashMap<NodeId, u64>,
    /// Origins whose refusal was logged (once per origin).
    logged: HashSet<NodeId>,
    counters: StoreCounters,
}

fn entry_hash(r: &StoredRecord) -> u128 {
    let mut h = blake3::Hasher::new();
    h.update(&r.key.origin.0);
    h.update(&r.key.kind.to_be_bytes());
    h.update(r.key.name.as_bytes());
    h.update(&r.version.to_be_bytes());
    h.update(&r.fingerprint.to_be_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h.finalize().as_bytes()[..16]);
    u128::from_be_bytes(b)
}

impl StateStore {
    /// A store that holds at most `cap` records per origin.
    pub fn with_cap(cap: usize) -> StateStore {
        StateStore {
            cap: Some(cap),
            ..StateStore::default()
        }
    }

    pub fn merge(&mut self, incoming: StoredRecord) -> MergeOutcome {
        let origin = incoming.key.origin;
        if let Some(&collected_at) = self.departed.get(&origin) {
            if incoming.version <= collected_at {
                self.counters.records_departed = self.counters.records_departed.saturating_add(1);
                return MergeOutcome::Departed;
            }
            // Newer than anything it held when collected: the origin is back.
            self.departed.remove(&origin);
        }
        match self.records.get(&incoming.key) {
            Some(held) if held.rank() == incoming.rank() => MergeOutcome::Duplicate,
            Some(held) if held.rank() > incoming.rank() => MergeOutcome::Stale,
            Some(old) => {
                self.hash = self.hash.wrapping_sub(entry_hash(old));
                self.hash = self.hash.wrapping_add(entry_hash(&incoming));
                self.records.insert(incoming.key.clone(), incoming);
                MergeOutcome::Applied
            }
            None => {
                let held = self.per_origin.get(&origin).copied().unwrap_or(0);
                if let Some(cap) = self.cap.filter(|&c| held >= c) {
                    self.counters.records_over_cap =
                        self.counters.records_over_cap.saturating_add(1);
                    if self.logged.insert(origin) {
                        tracing::warn!(
                            %origin,
                            cap,
                            "member holds mesh.max_records_per_origin records: its new records are refused (counted in records_over_cap; logged once per member)"
                        );
                    }
                    return MergeOutcome::OverCap;
                }
                *self.per_origin.entry(origin).or_default() += 1;
                self.hash = self.hash.wrapping_add(entry_hash(&incoming));
                self.records.insert(incoming.key.clone(), incoming);
                MergeOutcome::Applied
            }
        }
    }

    /// Removes every record of `origin` (gone for `departed_record_ttl`) and refuses its
    /// records up to the highest version it held until it is seen alive again
    /// ([`StateStore::readmit`]) or sends a newer one. Returns how many were removed.
    pub fn collect_origin(&mut self, origin: NodeId) -> usize {
        let (n, max_version) = self.remove_origin_records(origin);
        let max_version = max_version.max(self.departed.get(&origin).copied().unwrap_or(0));
        self.departed.insert(origin, max_version);
        self.counters.records_collected = self.counters.records_collected.saturating_add(n as u64);
        n
    }

    /// Removes every record of `origin` (a revoked member); returns how many.
    pub fn remove_origin(&mut self, origin: NodeId) -> usize {
        self.remove_origin_records(origin).0
    }

    /// Removes every record of `origin`: how many, and the highest version among them.
    fn remove_origin_records(&mut self, origin: NodeId) -> (usize, u64) {
        let keys: Vec<RecordKey> = self
            .records
            .keys()
            .filter(|k| k.origin == origin)
            .cloned()
            .collect();
        let mut max_version = 0;
        for k in &keys {
            if let Some(r) = self.records.remove(k) {
                self.hash = self.hash.wrapping_sub(entry_hash(&r));
                max_version = max_version.max(r.version);
            }
        }
        self.per_origin.remove(&origin);
        self.logged.remove(&origin);
        (keys.len(), max_version)
    }

    /// The origin is alive again: its records are accepted again, whatever their version.
    pub fn readmit(&mut self, origin: NodeId) {
        self.departed.remove(&origin);
    }

    /// Whether the origin's records are refused (collected as departed).
    pub fn is_departed(&self, origin: NodeId) -> bool {
        self.departed.contains_key(&origin)
    }

    /// Every origin holding records.
    pub fn origins(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.per_origin.keys().copied()
    }

    /// Records held for `origin`.
    pub fn records_of(&self, origin: NodeId) -> usize {
        self.per_origin.get(&origin).copied().unwrap_or(0)
    }

    pub fn counters(&self) -> StoreCounters {
        self.counters
    }

    /// Node ids revoked by some record held (not checked against admins: the caller
    /// merged only revocations it accepted).
    pub fn revocations(&self) -> impl Iterator<Item = &StoredRecord> {
        self.records
            .values()
            .filter(|r| matches!(r.record.body, Some(Body::Revocation(_))))
    }

    pub fn get(&self, key: &RecordKey) -> Option<&StoredRecord> {
        self.records.get(key)
    }

    /// Version and fingerprint held for a key, as a digest names them.
    pub fn rank_of(&self, key: &RecordKey) -> Option<(u64, u64)> {
        self.records.get(key).map(StoredRecord::rank)
    }

    pub fn iter(&self) -> impl Iterator<Item = &StoredRecord> {
        self.records.values()
    }

    /// Records with keys in `[from, to)`; an absent bound is open.
    pub fn range(
        &self,
        from: Option<&RecordKey>,
        to: Option<&RecordKey>,
    ) -> std::collections::btree_map::Range<'_, RecordKey, StoredRecord> {
        use std::ops::Bound::*;
        let lo = from.map_or(Unbounded, Included);
        let hi = to.map_or(Unbounded, Excluded);
        self.records.range::<RecordKey, _>((lo, hi))
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn state_hash(&self) -> u128 {
        self.hash
    }

    /// Highest version held for any record of `origin`.
    pub fn max_version_of(&self, origin: NodeId) -> u64 {
        self.records
            .values()
            .filter(|r| r.key.origin == origin)
            .map(|r| r.version)
            .max()
            .unwrap_or(0)
    }

    /// The NodeRecord of a member, if it has one that is not deleted.
    pub fn node(&self, origin: NodeId) -> Option<&v1::NodeRecord> {
        let key = RecordKey {
            origin,
            kind: RecordKind::Node as i32,
            name: String::new(),
        };
        match self.records.get(&key)?.record.body.as_ref()? {
            Body::Node(n) => Some(n),
            _ => None,
        }
    }

    /// Every live (not deleted) network with the member that announces it.
    pub fn networks(&self) -> impl Iterator<Item = (NodeId, &v1::Network)> {
        self.records
            .values()
            .filter_map(|r| match r.record.body.as_ref()? {
                Body::Network(n) => Some((r.key.origin, n)),
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn network(origin: u8, prefix: &str, version: u64, vni: u32) -> StoredRecord {
        encode_record(&v1::Record {
            origin: Bytes::copy_from_slice(&[origin; 16]),
            version,
            body: Some(Body::Network(v1::Network {
                prefix: prefix.into(),
                vni,
                ..Default::default()
            })),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn newest_wins() {
        let mut s = StateStore::default();
        assert_eq!(
            s.merge(network(1, "10.0.0.0/8", 5, 1)),
            MergeOutcome::Applied
        );
        assert_eq!(
            s.merge(network(1, "10.0.0.0/8", 5, 1)),
            MergeOutcome::Duplicate
        );
        assert_eq!(s.merge(network(1, "10.0.0.0/8", 4, 2)), MergeOutcome::Stale);
        assert_eq!(
            s.merge(network(1, "10.0.0.0/8", 6, 3)),
            MergeOutcome::Applied
        );
        assert_eq!(s.networks().next().unwrap().1.vni, 3);
    }

    #[test]
    fn validation() {
        let bad_prefix = v1::Record {
            origin: Bytes::copy_from_slice(&[1; 16]),
            version: 1,
            body: Some(Body::Network(v1::Network {
                prefix: "10.0.0.1/8".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(matches!(
            encode_record(&bad_prefix),
            Err(RecordError::BadPrefix(_))
        ));
        let mismatch = v1::Record {
            origin: Bytes::copy_from_slice(&[1; 16]),
            version: 1,
            body: Some(Body::Node(v1::NodeRecord {
                id: Bytes::copy_from_slice(&[2; 16]),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(encode_record(&mismatch), Err(RecordError::NodeIdMismatch));
        let revoke_self = v1::Record {
            origin: Bytes::copy_from_slice(&[1; 16]),
            version: 1,
            body: Some(Body::Revocation(v1::Revocation {
                node: Bytes::copy_from_slice(&[1; 16]),
            })),
            ..Default::default()
        };
        assert_eq!(encode_record(&revoke_self), Err(RecordError::BadRevocation));
        let unrevoke = v1::Record {
            origin: Bytes::copy_from_slice(&[1; 16]),
            version: 2,
            body: Some(Body::Tombstone(v1::Tombstone {
                kind: RecordKind::Revocation as i32,
                name: NodeId([2; 16]).to_string(),
            })),
            ..Default::default()
        };
        assert_eq!(encode_record(&unrevoke), Err(RecordError::BadTombstone));
        assert!(decode_record(&[0xff; 10]).is_err());
        assert_eq!(decode_record(&[0; 2000]), Err(RecordError::TooLarge));
    }

    /// A record of kind 42, which this version does not know, as a later version
    /// encodes it: its key written out, its body in `Record.body` oneof field 16.
    fn later_kind(origin: u8, name: &str, version: u64) -> Vec<u8> {
        let mut bytes = v1::Record {
            origin: Bytes::copy_from_slice(&[origin; 16]),
            version,
            kind: 42,
            name: name.into(),
            ..Default::default()
        }
        .encode_to_vec();
        // Field 16, length-delimited ((16 << 3) | 2 as a varint), 2 bytes.
        bytes.extend_from_slice(&[0x82, 0x01, 2, 0x08, 0x07]);
        bytes
    }

    #[test]
    fn a_record_of_a_kind_this_version_does_not_know_is_kept_under_the_key_it_writes_out() {
        let bytes = later_kind(1, "x", 5);
        let r = decode_record(&bytes).expect("kept");
        assert!(r.is_of_unknown_kind() && !r.is_tombstone());
        assert_eq!((r.key.kind, r.key.name.as_str()), (42, "x"));
        assert_eq!(r.bytes.as_ref(), bytes.as_slice(), "kept as it came");

        let mut s = StateStore::with_cap(2);
        assert_eq!(s.merge(r), MergeOutcome::Applied);
        assert_eq!(
            s.merge(decode_record(&later_kind(1, "x", 4)).unwrap()),
            MergeOutcome::Stale
        );
        assert_eq!(
            s.merge(decode_record(&later_kind(1, "x", 6)).unwrap()),
            MergeOutcome::Applied
        );
        assert_eq!((s.len(), s.networks().count()), (1, 0), "read by nothing");
        // Within the origin's cap, as any record.
        s.merge(network(1, "10.0.0.0/8", 1, 1));
        assert_eq!(
            s.merge(decode_record(&later_kind(1, "y", 1)).unwrap()),
            MergeOutcome::OverCap
        );
        // The later version withdraws it: a tombstone of a kind unknown here.
        let withdrawn = encode_record(&v1::Record {
            origin: Bytes::copy_from_slice(&[1; 16]),
            version: 7,
            body: Some(Body::Tombstone(v1::Tombstone {
                kind: 42,
                name: "x".into(),
            })),
            ..Default::default()
        })
        .expect("a tombstone of a later kind");
        assert_eq!(s.merge(withdrawn), MergeOutcome::Applied);
        let key = RecordKey {
            origin: NodeId([1; 16]),
            kind: 42,
            name: "x".into(),
        };
        assert!(s.get(&key).is_some_and(StoredRecord::is_tombstone));
    }

    #[test]
    fn a_key_written_out_must_be_of_an_unknown_kind_or_the_bodys_own() {
        let base = |kind: i32, name: &str, body: Option<Body>| v1::Record {
            origin: Bytes::copy_from_slice(&[1; 16]),
            version: 1,
            kind,
            name: name.into(),
            body,
            ..Default::default()
        };
        let net = |prefix: &str| {
            Some(Body::Network(v1::Network {
                prefix: prefix.into(),
                ..Default::default()
            }))
        };
        let node = Some(Body::Node(v1::NodeRecord {
            id: Bytes::copy_from_slice(&[1; 16]),
            ..Default::default()
        }));
        let network = RecordKind::Network as i32;
        // No body, and no kind of a later version: nothing to keep.
        for kind in [0, -3, network, RecordKind::Node as i32] {
            assert_eq!(
                encode_record(&base(kind, "x", None)),
                Err(RecordError::NoBody),
                "{kind}"
            );
        }
        assert_eq!(
            encode_record(&base(42, &"n".repeat(65), None)),
            Err(RecordError::BadKey)
        );
        // A body known here: the key written out, if any, is the body's.
        for (kind, name) in [(network, "10.1.0.0/16"), (0, "10.0.0.0/8"), (42, "")] {
            assert_eq!(
                encode_record(&base(kind, name, net("10.0.0.0/8"))),
                Err(RecordError::BadKey),
                "{kind} {name}"
            );
        }
        let agreed = encode_record(&base(network, "10.0.0.0/8", net("10.0.0.0/8"))).unwrap();
        assert_eq!(agreed.key.name, "10.0.0.0/8");
        let agreed = encode_record(&base(RecordKind::Node as i32, "", node)).unwrap();
        assert_eq!(agreed.key.kind, RecordKind::Node as i32);
        // Tombstones: of kind 0 or of a revocation, still refused.
        for kind in [0, RecordKind::Revocation as i32] {
            let t = Some(Body::Tombstone(v1::Tombstone {
                kind,
                name: "x".into(),
            }));
            assert_eq!(
                encode_record(&base(0, "", t)),
                Err(RecordError::BadTombstone)
            );
        }
    }

    fn arb_record() -> impl Strategy<Value = StoredRecord> {
        (0u8..3, 0usize..3, 0u64..4, 0u32..3).prop_map(|(origin, p, version, vni)| {
            let prefix = ["10.0.0.0/8", "fd00::/8", "192.0.2.0/24"][p];
            network(origin, prefix, version, vni)
        })
    }

    fn merged(records: &[StoredRecord]) -> StateStore {
        let mut s = StateStore::default();
        for r in records {
            s.merge(r.clone());
        }
        s
    }

    fn snapshot(s: &StateStore) -> Vec<(RecordKey, u64, u64)> {
        s.iter()
            .map(|r| (r.key.clone(), r.version, r.fingerprint))
            .collect()
    }

    #[test]
    fn an_origin_at_its_cap_gets_no_new_keys_but_its_records_still_update() {
        let mut s = StateStore::with_cap(2);
        assert_eq!(
            s.merge(network(1, "10.1.0.0/16", 1, 1)),
            MergeOutcome::Applied
        );
        assert_eq!(
            s.merge(network(1, "10.2.0.0/16", 1, 1)),
            MergeOutcome::Applied
        );
        assert_eq!(
            s.merge(network(1, "10.3.0.0/16", 1, 1)),
            MergeOutcome::OverCap
        );
        assert_eq!(
            s.merge(network(1, "10.4.0.0/16", 1, 1)),
            MergeOutcome::OverCap
        );
        assert_eq!(s.counters().records_over_cap, 2);
        // Updates (a tombstone too) of held keys merge.
        assert_eq!(
            s.merge(network(1, "10.1.0.0/16", 2, 7)),
            MergeOutcome::Applied
        );
        assert_eq!(s.len(), 2);
        // Another origin has its own room.
        assert_eq!(
            s.merge(network(2, "10.3.0.0/16", 1, 1)),
            MergeOutcome::Applied
        );
        assert_eq!(s.records_of(NodeId([1; 16])), 2);
        // The hash is that of a store built from the accepted records alone.
        let mut same = StateStore::default();
        for r in s.iter() {
            same.merge(r.clone());
        }
        assert_eq!(s.state_hash(), same.state_hash());
    }

    #[test]
    fn a_collected_origin_is_refused_until_readmitted_or_newer() {
        let mut s = StateStore::default();
        s.merge(network(1, "10.1.0.0/16", 5, 1));
        s.merge(network(1, "10.2.0.0/16", 6, 1));
        s.merge(network(2, "10.3.0.0/16", 1, 1));
        let before_other = s.state_hash();
        assert_eq!(s.collect_origin(NodeId([1; 16])), 2);
        assert_eq!(s.len(), 1);
        assert_eq!(s.counters().records_collected, 2);
        let mut only_other = StateStore::default();
        only_other.merge(network(2, "10.3.0.0/16", 1, 1));
        assert_eq!(s.state_hash(), only_other.state_hash());
        assert_ne!(s.state_hash(), before_other);
        // Anti-entropy brings the old records back: refused.
        assert_eq!(
            s.merge(network(1, "10.1.0.0/16", 5, 1)),
            MergeOutcome::Departed
        );
        assert_eq!(
            s.merge(network(1, "10.2.0.0/16", 6, 1)),
            MergeOutcome::Departed
        );
        assert_eq!(s.counters().records_departed, 2);
        // A newer version: the origin is back.
        assert_eq!(
            s.merge(network(1, "10.9.0.0/16", 7, 1)),
            MergeOutcome::Applied
        );
        assert!(!s.is_departed(NodeId([1; 16])));
        // Collected again, then seen alive: old versions are taken again.
        s.collect_origin(NodeId([1; 16]));
        assert!(s.is_departed(NodeId([1; 16])));
        s.readmit(NodeId([1; 16]));
        assert_eq!(
            s.merge(network(1, "10.1.0.0/16", 5, 1)),
            MergeOutcome::Applied
        );
    }

    proptest! {
        #[test]
        fn merge_is_order_independent(mut records in proptest::collection::vec(arb_record(), 0..24), seed: u64) {
            let a = merged(&records);
            // Any permutation gives the same store and the same hash.
            let mut rng = seed;
            for i in (1..records.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                records.swap(i, (rng >> 33) as usize % (i + 1));
            }
            let b = merged(&records);
            prop_assert_eq!(snapshot(&a), snapshot(&b));
            prop_assert_eq!(a.state_hash(), b.state_hash());
        }

        #[test]
        fn merge_is_idempotent(records in proptest::collection::vec(arb_record(), 0..24)) {
            let mut s = merged(&records);
            let before = (snapshot(&s), s.state_hash());
            for r in &records {
                prop_assert_ne!(s.merge(r.clone()), MergeOutcome::Applied);
            }
            prop_assert_eq!(before, (snapshot(&s), s.state_hash()));
        }

        #[test]
        fn merging_stores_commutes(x in proptest::collection::vec(arb_record(), 0..16), y in proptest::collection::vec(arb_record(), 0..16)) {
            let xy: Vec<_> = x.iter().chain(y.iter()).cloned().collect();
            let yx: Vec<_> = y.iter().chain(x.iter()).cloned().collect();
            prop_assert_eq!(snapshot(&merged(&xy)), snapshot(&merged(&yx)));
        }

        #[test]
        fn newest_version_always_held(records in proptest::collection::vec(arb_record(), 1..24)) {
            let s = merged(&records);
            for r in &records {
                let held = s.get(&r.key).unwrap();
                prop_assert!(held.version >= r.version);
            }
        }

        #[test]
        fn hostile_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = decode_record(&data);
        }
    }
}
