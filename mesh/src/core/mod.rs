//! The mesh core, sans I/O: datagrams and timers in, datagrams and timers out.
//!
//! It admits datagrams (rate limit, AEAD, replay filter), feeds SWIM messages to foca and
//! mesh control messages (seed join, anti-entropy, suspicion notices, keyring changes) to
//! the state store and foca, and seals what goes out. The tokio driver (`driver.rs`) and
//! the benchmark's simulated network both drive it through the same four calls:
//! `handle_datagram`, `handle_timer`, `publish`, `drain_outputs`.
//!
//! This file holds [`MeshCore`]'s state, its public types, the records it publishes, and
//! the dispatch of datagrams, control messages and timers. Each protocol is an `impl
//! MeshCore` block of its own, with its private types:
//!
//! - `admission`: the datagram gate, joining through seeds, member lists;
//! - `swim`: the foca glue (codec, runtime, broadcasts, SWIM timers);
//! - `anti_entropy`: push-pull sync of the state store;
//! - `push`: records pushed straight across the hops to and from passive members;
//! - `suspicion`: suspicion notices, their relays and refutations;
//! - `keyring`: cluster-wide keyring changes;
//! - `hygiene`: collecting the records of departed members.
//! - `trust`: signed control messages and the checks of signers against key pins (the
//!   record checks are `Shared::merge_remote`'s, as the broadcast handler merges too).
//!
//! The protocol files use this file's items and call each other's methods on `MeshCore`,
//! but never import from each other.

mod admission;
mod anti_entropy;
mod health;
mod hygiene;
mod keyring;
mod push;
mod suspicion;
mod swim;
#[cfg(test)]
mod testkit;
mod trust;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use foca::Timer;
use gatewan_proto::v1::{self, MeshControl, MeshIdentity, mesh_control::Kind, record::Body};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use tracing::{debug, error, info, warn};

use super::guard::{RateLimiter, ReplayFilter};
use super::identity::{MAX_MESH_ADDRESSES, MemberId, NodeId};
use super::pins::{KeyPins, PinCheck};
use super::seal::{Keyring, KeyringOp, SEAL_OVERHEAD};
use super::signing::{DOMAIN_CONTROL, MemberKey, PublicKey};
use super::store::{
    MergeOutcome, RecordError, RecordKey, StateStore, StoreCounters, StoredRecord, decode_record,
    sign_encoded, verify_record,
};

/// First byte inside a sealed datagram: a SWIM message (foca's) follows.
pub const TAG_SWIM: u8 = 1;
/// First byte inside a sealed datagram: a `MeshControl` message follows.
pub const TAG_CONTROL: u8 = 2;

/// The fewest times an update is sent, whatever the mesh's size. In a small mesh the
/// members that pass updates on are few (two datacenters: four gatewans, their bgpctls
/// being passive), and the 6 sends of `retransmit_mult` at 8 members missed both gatewans
/// of the other datacenter once in 150 updates, which then waited for anti-entropy (up
/// to 20 s in the simulator). 10 missed none in 1,200 (ADR 0050); from 46 members on,
/// `retransmit_mult` asks for more anyway.
pub const MIN_TRANSMISSIONS: u8 = 10;

/// A member heard from within this is taken as reachable: anti-entropy syncs with it, and
/// a passive member pushes to it (ADR 0050).
const HEARD_FOR_MS: u64 = 30_000;
/// A passive member says hello to at most this many members per round (ADR 0050).
const MAX_PASSIVE_HELLOS: usize = 8;
/// Records kept for the next push (`push`). The core pushes after every datagram, timer
/// and publication, and one datagram brings at most a few hundred records, so this is
/// never reached; a record left out would still arrive by gossip or anti-entropy.
const MAX_FRESH: usize = 4096;

/// Tunables of the mesh. Defaults target a WAN between datacenters: a dead member is
/// declared down by everyone within about 3.5 s at 200 members (see the mesh_cluster
/// benchmark for figures).
#[derive(Debug, Clone, PartialEq)]
pub struct MeshSettings {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub suspicion_timeout: Duration,
    pub gossip_interval: Duration,
    pub gossip_fanout: usize,
    pub indirect_probes: usize,
    /// Each update is sent `retransmit_mult × log10(members + 1)` times (memberlist's
    /// RetransmitMult), resized as the mesh grows.
    pub retransmit_mult: u32,
    pub sync_interval: Duration,
    pub seed_retry: Duration,
    pub replay_window: Duration,
    pub rate_per_source: u32,
    pub rate_burst: u32,
    /// Largest sealed datagram; 1400 stays under every transit's MTU.
    pub max_datagram: usize,
    /// Key fingerprints (`PublicKey::fingerprint`) of the members that may ask mesh-wide
    /// keyring changes of this one (`mesh.admins`); empty: any member may.
    pub admins: Vec<String>,
    /// A passive member probes no one, so it never suspects nor declares anyone down;
    /// the others still probe it. For members that reach only part of the mesh (a bgpctl
    /// on its fabric reaches its own datacenter's gatewans): probing the rest, they would
    /// suspect them all and declare them down.
    pub passive: bool,
    /// Records one member may hold in everyone's store (ADR 0034).
    pub max_records_per_origin: usize,
    /// Records of a member down, left or unknown for this long are collected.
    pub departed_record_ttl: Duration,
}

impl Default for MeshSettings {
    fn default() -> Self {
        MeshSettings {
            // Detection time is: the wait until some member probes the dead one (about
            // one probe interval on average, longer in the tail), the failed probe round,
            // the suspicion timeout, and the spread of the verdict. Measured in the
            // simulator (benches/mesh_cluster.rs) at 200 members: 3.4 s median, 13 of 15
            // samples under 4.1 s, the worst 7.3 s (nobody happened to probe the dead
            // member for four and a half intervals), no false down with 10 % loss or with
            // RTTs up to 310 ms.
            //
            // The suspicion timeout can be this short because a suspect is told directly
            // and refutes straight back (`notify_suspect`, Lifeguard's buddy system); by
            // gossip alone a refutation takes two spreads, and 3 s were needed. Five
            // indirect probes (memberlist: 3) make a suspicion of a live member under
            // 10 % loss eight times rarer: each suspicion and its refutation cost about
            // 200 KB of gossip mesh-wide at 200 members.
            //
            // A probe round holds the direct ping (probe_timeout, above any sane RTT) and
            // the indirect ones: 400 + 2 × 300 ms at intercontinental RTTs. At 800 ms it
            // did not, and the simulator saw 6 suspicions/s at 50 members with RTTs
            // ~300 ms and 10 % loss, and false downs.
            probe_interval: Duration::from_millis(1000),
            probe_timeout: Duration::from_millis(400),
            suspicion_timeout: Duration::from_millis(1000),
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            indirect_probes: 5,
            // An update reaches about 1 − e^(−transmissions) of the members, so the
            // expected number of members it misses is N·e^(−transmissions). foca's LAN
            // default (4, as memberlist's) gives 9 at 200 members: in the simulator with
            // 10 % loss a Down verdict or a refutation sometimes never reached a few
            // members, who then held a live member down (5 false downs in 300 s). 6 gives
            // 13 at 200 and none.
            retransmit_mult: 6,
            sync_interval: Duration::from_secs(10),
            seed_retry: Duration::from_secs(2),
            replay_window: Duration::from_secs(30),
            rate_per_source: 1000,
            rate_burst: 2000,
            max_datagram: 1400,
            admins: Vec::new(),
            passive: false,
            // A bgpctl publishes one record per prefix of its fabric, a gatewan one per
            // peer gatewan (tunnel metrics) and per remote datacenter: 4096 is room for a
            // large datacenter's aggregated prefixes, and caps a leaked full table (900k
            // prefixes) at ~4 MB per member and store instead of ~1 GB.
            max_records_per_origin: 4096,
            // Longer than any maintenance: a member back within it finds its records
            // where it left them.
            departed_record_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl MeshSettings {
    /// How many times each update is sent with `members` in the mesh (counting us), at
    /// least [`MIN_TRANSMISSIONS`].
    pub fn max_transmissions(&self, members: usize) -> u8 {
        let n = (f64::from(self.retransmit_mult) * ((members + 1) as f64).log10()).ceil();
        n.clamp(f64::from(MIN_TRANSMISSIONS), 255.0) as u8
    }

    fn foca_config(&self) -> Result<foca::Config, String> {
        let positive = |d: Duration, what: &str| {
            if d.is_zero() {
                Err(format!("{what} must be greater than zero"))
            } else {
                Ok(d)
            }
        };
        if self.max_records_per_origin == 0 {
            return Err("max_records_per_origin must be at least 1".into());
        }
        if self.probe_timeout >= self.probe_interval {
            return Err("probe_timeout must be shorter than probe_interval".into());
        }
        let mut c = foca::Config::new_lan(NonZeroU32::new(64).expect("64 > 0"));
        c.probe_period = positive(self.probe_interval, "probe_interval")?;
        c.probe_rtt = positive(self.probe_timeout, "probe_timeout")?;
        c.suspect_to_down_after = positive(self.suspicion_timeout, "suspicion_timeout")?;
        c.num_indirect_probes =
            NonZeroUsize::new(self.indirect_probes).ok_or("indirect_probes must be at least 1")?;
        if self.retransmit_mult == 0 {
            return Err("retransmit_mult must be at least 1".into());
        }
        c.max_transmissions = NonZeroU8::new(self.max_transmissions(1)).unwrap_or(NonZeroU8::MIN);
        // Each SWIM packet is signed (ADR 0041): its trailer shares the datagram.
        c.max_packet_size = NonZeroUsize::new(
            self.max_datagram
                .saturating_sub(SEAL_OVERHEAD + 1 + crate::signing::TRAILER_BYTES),
        )
        .filter(|n| n.get() >= 512)
        .ok_or("max_datagram must leave at least 512 bytes for SWIM")?;
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: positive(self.gossip_interval, "gossip_interval")?,
            num_members: NonZeroUsize::new(self.gossip_fanout)
                .ok_or("gossip_fanout must be at least 1")?,
        });
        Ok(c)
    }

    /// Room for a control message body inside one sealed datagram.
    fn control_budget(&self) -> usize {
        self.max_datagram
            .saturating_sub(SEAL_OVERHEAD + 1 + 48)
            .max(256)
    }
}

/// The two clocks, read by the adapter at each call (the core has no clock of its own).
/// `mono_ms` runs every timer, hold-down, rate limit and expiry: it never steps. `unix_ms`
/// only stamps sealed datagrams (and checks the stamps of others'), makes record
/// versions, and dates changes for display. Inside the core, a `now_ms` is `mono_ms`;
/// the wall clock of the call being handled is in `MeshCore::wall_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds of a monotonic clock, from any origin.
    pub mono_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// Why a datagram was dropped; each reason has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    RateLimited,
    Malformed,
    Unauthenticated,
    Duplicate,
    Replay,
    Invalid,
    /// Authenticated, but stamped further from our wall clock than the replay window:
    /// the sender's clock (or ours) is wrong. Counted apart from replays, and logged
    /// per sender, because it cuts a member off while everything else looks fine.
    ClockSkew,
    /// A record or control message without a valid signature trailer (ADR 0032); counted
    /// per record: the rest of its datagram is used.
    BadSignature,
    /// Validly signed, but by another key than the one pinned for the node it speaks for
    /// (ADR 0033), or asserting another identity than its signer's: a forgery by a
    /// keyring holder. Counted per record or message.
    Forged,
    /// From a member revoked by an admin (ADR 0033): its records, control messages and
    /// SWIM messages.
    Revoked,
    /// A revocation signed by a member whose key is not in our `mesh.admins`.
    NotAdmin,
    /// Of a kind this version does not know, from a member of a later version (ADR
    /// 0046): a datagram tag or a control message, dropped; or a record, which is kept
    /// and passed on verbatim but not used (counted once per record version).
    UnknownKind,
}

/// Number of drop reasons.
const DROP_REASONS: usize = 12;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::RateLimited,
        DropReason::Malformed,
        DropReason::Unauthenticated,
        DropReason::Duplicate,
        DropReason::Replay,
        DropReason::Invalid,
        DropReason::ClockSkew,
        DropReason::BadSignature,
        DropReason::Forged,
        DropReason::Revoked,
        DropReason::NotAdmin,
        DropReason::UnknownKind,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RateLimited => "rate_limited",
            DropReason::Malformed => "malformed",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Duplicate => "duplicate",
            DropReason::Replay => "replay",
            DropReason::Invalid => "invalid",
            DropReason::ClockSkew => "clock_skew",
            DropReason::BadSignature => "bad_signature",
            DropReason::Forged => "forged",
            DropReason::Revoked => "revoked",
            DropReason::NotAdmin => "not_admin",
            DropReason::UnknownKind => "unknown_kind",
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub dropped: [u64; DROP_REASONS],
    /// The largest clock skew seen in a datagram dropped for it (ClockSkew), in
    /// milliseconds, positive when the sender's clock is ahead.
    pub max_clock_skew_ms: i64,
    /// Gossiped records that failed validation (the rest of their datagram was used).
    pub records_invalid: u64,
    /// Members our own probes failed and that we told so (see `notify_suspect`).
    pub suspicions_raised: u64,
    /// Suspicions of ourselves refuted in answer to a notice.
    pub suspicions_of_us_refuted: u64,
    /// Suspicions we raised that the suspect refuted directly.
    pub refutations_received: u64,
    /// Records refused by the store: new keys of a member at its cap, records of a
    /// departed member; and records collected (see `StoreCounters`).
    pub store: StoreCounters,
    /// Gossiped records refused because their version is further ahead of our clock
    /// than [`MAX_VERSION_SKEW_MS`] (a broken clock, or a forged version).
    pub records_from_future: u64,
    /// Times we rejoined under a new generation (our incarnation was exhausted).
    pub rejoins: u64,
    /// Records pushed to passive members, or by one to its gatewans (ADR 0050).
    pub records_pushed: u64,
    /// Lifeguard's local health now, 0 (healthy) to 8: our probes run that many times
    /// slower plus one (ADR 0061). A gauge, not a counter.
    pub local_health: u64,
}

impl Counters {
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.dropped[r as usize]
    }
}

#[derive(Debug, Clone)]
pub enum CoreTimer {
    Swim(Timer<MemberId>),
    AntiEntropy,
    SeedRetry,
    /// Tell a member we suspect so again, if it has not refuted yet.
    SuspicionNotice(NodeId),
    /// Ask the members that have not answered a keyring query again, or give up on them.
    KeyringQuery(u64),
    /// One more push-pull soon after joining, in case datagrams of the first were lost.
    JoinSync,
}

/// How far ahead of our wall clock a record version may be, in milliseconds. Versions
/// are wall-clock microseconds (plus a counter), so a version further ahead than this
/// comes from a clock that is badly wrong or is forged; accepting it would push every
/// later version of that key (and of ours, for our own origin) up to it. Two hours keep
/// a member whose clock was stepped by an hour in the mesh.
pub const MAX_VERSION_SKEW_MS: u64 = 2 * 3600 * 1000;

/// How long a keyring query waits for answers (it asks again every `KEYRING_RETRY`).
pub const KEYRING_QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The result of a keyring query: who was asked, and who did not apply the change (with
/// why, or "no answer").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyringOutcome {
    pub asked: Vec<NodeId>,
    pub failures: Vec<(NodeId, String)>,
}

#[derive(Debug, Clone)]
pub enum Output {
    Send {
        to: SocketAddr,
        datagram: Bytes,
    },
    Schedule {
        after: Duration,
        timer: CoreTimer,
    },
    /// Another member asks us to change our keyring: the driver applies it (and saves the
    /// keyring file) and gives the result to `answer_keyring`.
    KeyringRequested {
        from: SocketAddr,
        query: u64,
        op: KeyringOp,
    },
    /// A query of ours (`start_keyring_query`) is complete or timed out.
    KeyringQueryDone {
        query: u64,
        outcome: KeyringOutcome,
    },
    /// We rejoined under a new generation (SWIM's answer to an exhausted incarnation).
    /// It comes before the datagrams that announce it: the driver stores the generation
    /// (and fsyncs it) first, so a restart never reuses it.
    GenerationRaised {
        generation: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub id: MemberId,
    pub state: MemberState,
    pub incarnation: u16,
    pub last_change_ms: u64,
    pub local: bool,
    /// The member's signing key as pinned here; None until we saw it sign.
    pub key: Option<PublicKey>,
    /// Revoked by an admin (ADR 0033): everything it sends is refused.
    pub revoked: bool,
}

/// foca owns its broadcast handler and exposes no accessor, so the store it merges into
/// is shared with the core through this lock; both run on the core's thread, so it is
/// never contended.
#[derive(Debug)]
struct Shared {
    store: StateStore,
    local: NodeId,
    records_invalid: u64,
    /// Signer keys of members (ADR 0033), ours included.
    pins: KeyPins,
    pins_changed: bool,
    /// Drops by records and control messages, by reason, added to the core's counters.
    dropped: [u64; DROP_REASONS],
    /// When a forgery for each node id was last logged (at most once a minute each).
    forged_logged: HashMap<NodeId, u64>,
    /// When bad signatures were last logged (at most once a minute).
    bad_signature_logged: Option<u64>,
    /// `MeshSettings::admins`: who may revoke.
    admins: Vec<String>,
    /// Revoked members, each with the signed record that revoked it (kept, and saved by
    /// the driver, even when its origin's records go).
    revoked: BTreeMap<NodeId, Bytes>,
    revocations_changed: bool,
    /// The SWIM codec refused a revoked member's message (counted there, not as invalid).
    swim_refused_revoked: bool,
    /// Highest version of one of our own records seen from others (a previous life of
    /// this node): our next versions must exceed it.
    own_seen: u64,
    /// Our own records as others hold them from a previous life of this node, newest
    /// version of each key and whether it is a tombstone: what a restarted member may
    /// have to withdraw (see [`MeshCore::previous_life`]).
    previous_life: HashMap<RecordKey, (u64, bool)>,
    records_changed: bool,
    /// Records that became ours or news to us since the last push (`push`), by origin.
    fresh: Vec<(NodeId, Bytes)>,
    /// Our clocks as of the datagram being handled: the wall clock bounds record
    /// versions, the monotonic one spaces log lines.
    wall_ms: u64,
    mono_ms: u64,
    records_from_future: u64,
    last_future_log_ms: Option<u64>,
    /// When a record of an unknown kind was last logged (at most once a minute).
    unknown_kind_logged: Option<u64>,
}

/// How often a forgery for one node id, or a bad signature, is logged.
const TRUST_LOG_EVERY_MS: u64 = 60_000;
/// Bounds the map of when forgeries were logged.
const MAX_FORGED_LOGGED: usize = 4096;

impl Shared {
    /// Checks that `signer` may speak for `node`: the key pinned for it, or any key on
    /// first sight (then pinned). A forgery is counted and logged once a minute per node.
    fn check_pin(&mut self, node: NodeId, signer: PublicKey, what: &str) -> bool {
        match self.pins.check(node, signer) {
            PinCheck::Matches => true,
            PinCheck::Pinned => {
                self.pins_changed = true;
                info!(%node, key = %signer.fingerprint(), "pinned a member's signing key on first sight");
                true
            }
            PinCheck::Full => {
                self.records_invalid += 1;
                debug!(%node, "key pins full: refused a new node id");
                false
            }
            PinCheck::Mismatch => {
                self.forged(node, signer, what);
                false
            }
        }
    }

    /// Counts a forgery for `node` and logs it, at most once a minute per node.
    fn forged(&mut self, node: NodeId, signer: PublicKey, what: &str) {
        let i = DropReason::Forged as usize;
        self.dropped[i] = self.dropped[i].saturating_add(1);
        let now = self.mono_ms;
        let due = self
            .forged_logged
            .get(&node)
            .is_none_or(|&t| now.saturating_sub(t) >= TRUST_LOG_EVERY_MS);
        if due {
            if self.forged_logged.len() >= MAX_FORGED_LOGGED {
                self.forged_logged.clear();
            }
            self.forged_logged.insert(node, now);
            warn!(
                %node,
                what,
                signer = %signer.fingerprint(),
                pinned = %self.pins.get(&node).map(PublicKey::fingerprint).unwrap_or_default(),
                total = self.dropped[i],
                "dropped a forgery: signed by another key than the node's (counted; logged at most once a minute per node)"
            );
        }
    }

    fn bad_signature(&mut self, error: &dyn std::fmt::Display, what: &str) {
        let i = DropReason::BadSignature as usize;
        self.dropped[i] = self.dropped[i].saturating_add(1);
        let now = self.mono_ms;
        if self
            .bad_signature_logged
            .is_none_or(|t| now.saturating_sub(t) >= TRUST_LOG_EVERY_MS)
        {
            self.bad_signature_logged = Some(now);
            warn!(%error, what, total = self.dropped[i], "dropped an unsigned or badly signed mesh message (counted; logged at most once a minute)");
        }
    }

    fn count(&mut self, reason: DropReason) {
        let i = reason as usize;
        self.dropped[i] = self.dropped[i].saturating_add(1);
    }

    /// A revocation validly signed by `signer`: accepted (and applied) if `signer` is an
    /// admin's key, else dropped. Returns whether it was accepted.
    fn accept_revocation(&mut self, rec: &StoredRecord, signer: PublicKey) -> bool {
        let Some(Body::Revocation(r)) = &rec.record.body else {
            return true;
        };
        let Some(node) = NodeId::from_slice(&r.node) else {
            return false;
        };
        if !self.admins.contains(&signer.fingerprint()) {
            self.count(DropReason::NotAdmin);
            warn!(
                %node,
                by = %rec.key.origin,
                key = %signer.fingerprint(),
                "dropped a revocation by a member whose key is not in mesh.admins"
            );
            return false;
        }
        if self.revoked.contains_key(&node) {
            return true;
        }
        if node == self.local {
            error!(by = %rec.key.origin, "this member was revoked by an admin: every member now refuses it");
        } else {
            let removed = self.store.remove_origin(node);
            warn!(%node, by = %rec.key.origin, removed, "member revoked: its records are removed and its messages refused");
        }
        self.revoked.insert(node, rec.bytes.clone());
        self.revocations_changed = true;
        self.records_changed = true;
        true
    }

    /// Merges a record from the network; returns whether it is news.
    fn merge_remote(&mut self, bytes: &[u8]) -> Option<(RecordKey, (u64, u64))> {
        // What we hold already, or something older, changes nothing whoever signed it:
        // not worth a signature check (gossip brings each record several times).
        if let Ok(r) = decode_record(bytes)
            && self
                .store
                .rank_of(&r.key)
                .is_some_and(|held| held >= (r.version, r.fingerprint))
        {
            return None;
        }
        let rec = match verify_record(bytes) {
            Ok((r, signer)) => {
                if !self.check_pin(r.key.origin, signer, "record") {
                    return None;
                }
                if self.revoked.contains_key(&r.key.origin) {
                    self.count(DropReason::Revoked);
                    return None;
                }
                if !self.accept_revocation(&r, signer) {
                    return None;
                }
                r
            }
            Err(RecordError::Signature(e)) => {
                self.bad_signature(&e, "record");
                return None;
            }
            Err(e) => {
                self.records_invalid += 1;
                debug!(error = %e, "invalid gossiped record");
                return None;
            }
        };
        let rank = (rec.version, rec.fingerprint);
        let newest = self
            .wall_ms
            .saturating_add(MAX_VERSION_SKEW_MS)
            .saturating_mul(1000);
        if rec.version > newest {
            self.records_from_future += 1;
            let due = self
                .last_future_log_ms
                .is_none_or(|t| self.mono_ms.saturating_sub(t) >= 60_000);
            if due {
                self.last_future_log_ms = Some(self.mono_ms);
                warn!(
                    origin = %rec.key.origin,
                    version = rec.version,
                    ahead_ms = (rec.version / 1000).saturating_sub(self.wall_ms),
                    total = self.records_from_future,
                    "refused a gossiped record whose version is ahead of our clock by more \
                     than the allowed skew (counted; logged at most once a minute)"
                );
            }
            return None;
        }
        if rec.key.origin == self.local {
            // Only we write our records; a newer one is from our previous life.
            if self.store.rank_of(&rec.key).is_none_or(|held| rank > held) {
                self.own_seen = self.own_seen.max(rec.version);
                let seen = (rec.version, rec.is_tombstone());
                let slot = self.previous_life.entry(rec.key).or_insert(seen);
                if seen.0 > slot.0 {
                    *slot = seen;
                }
                self.records_changed = true;
            }
            return None;
        }
        let key = rec.key.clone();
        let unknown_kind = rec.is_of_unknown_kind();
        let bytes = rec.bytes.clone();
        let applied = self.store.merge(rec) == MergeOutcome::Applied;
        if applied && unknown_kind {
            self.unknown_kind(&key);
        }
        if applied && self.fresh.len() < MAX_FRESH {
            self.fresh.push((key.origin, bytes));
        }
        applied.then(|| {
            self.records_changed = true;
            (key, rank)
        })
    }

    /// A record of a kind this version does not know was stored (ADR 0046): kept and
    /// passed on for the members that know it, used by none of ours. Counted, and
    /// logged at most once a minute.
    fn unknown_kind(&mut self, key: &RecordKey) {
        self.count(DropReason::UnknownKind);
        let now = self.mono_ms;
        if self
            .unknown_kind_logged
            .is_none_or(|t| now.saturating_sub(t) >= TRUST_LOG_EVERY_MS)
        {
            self.unknown_kind_logged = Some(now);
            info!(
                origin = %key.origin,
                kind = key.kind,
                total = self.dropped[DropReason::UnknownKind as usize],
                "keeping and passing on a record of a kind this version does not know, \
                 from a member of a later version (counted as unknown_kind; logged at most \
                 once a minute)"
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // What these locks guard is changed in one step (a merge is one insert, the last
    // sender one assignment), so a lock poisoned by a panic is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct MeshCore {
    swim: swim::Swim,
    /// Signs what we publish and the control messages that assert our identity.
    signer: MemberKey,
    shared: Arc<Mutex<Shared>>,
    own_generation: Arc<AtomicU32>,
    own_incarnation: Arc<AtomicU32>,
    keyring: Keyring,
    settings: MeshSettings,
    seeds: Vec<SocketAddr>,
    /// Seed rounds so far (see `retry_seeds`).
    seed_rounds: u32,
    rate: RateLimiter,
    replay: ReplayFilter,
    rng: StdRng,
    counters: Counters,
    last_drop_log_ms: [Option<u64>; DROP_REASONS],
    /// When we last logged a clock skew per sender address (monotonic).
    skew_logged: HashMap<std::net::IpAddr, u64>,
    /// The wall clock of the call being handled (see [`Now`]).
    wall_ms: u64,
    last_version: u64,
    /// The `own_seen` we last republished our records above (see
    /// `republish_if_overtaken`): each overtaking version is answered once.
    republished_for: u64,
    members: HashMap<NodeId, MemberInfo>,
    members_changed: bool,
    /// Identities named by member lists that we contacted, and when (see `on_members`).
    announced: HashMap<MemberId, u64>,
    /// When a SWIM message last came from each member, whatever its source address
    /// (a member on several networks may answer from an address it does not announce).
    heard: HashMap<NodeId, u64>,
    /// Passive members that asked for pushes, and when they last did (see `push`).
    dependents: HashMap<NodeId, u64>,
    last_src: Arc<Mutex<Option<NodeId>>>,
    /// foca's max_transmissions now, resized with the membership.
    max_transmissions: u8,
    /// Origins in the store that are not alive, since when (see `hygiene`).
    gone_since: HashMap<NodeId, u64>,
    /// Members we suspect and keep telling so (see `notify_suspect`).
    suspicions: HashMap<NodeId, suspicion::Suspicion>,
    /// Lifeguard's local health: stretches our probe timers (see `health`).
    local_health: health::LocalHealth,
    keyring_queries: HashMap<u64, keyring::KeyringQuery>,
    /// Suspects we passed a notice on to: who asked, until when, for their refutation.
    relayed: HashMap<NodeId, Vec<(SocketAddr, u64)>>,
    /// Our answers to recent keyring requests, oldest first.
    keyring_answers: std::collections::VecDeque<(u64, String)>,
    out: Vec<Output>,
    rt: swim::SwimRuntime,
}

impl MeshCore {
    /// `rng_seed` must come from the OS in production: nonces are drawn from it.
    /// `signer` is the member's key for life; `pins` the keys pinned before a restart
    /// (ours is pinned here, and must not be pinned to another key already).
    pub fn new(
        local: MemberId,
        signer: MemberKey,
        mut pins: KeyPins,
        keyring: Keyring,
        settings: MeshSettings,
        seeds: Vec<SocketAddr>,
        rng_seed: [u8; 32],
    ) -> Result<Self, String> {
        if !local.is_sane() {
            return Err(format!(
                "a member announces 1 to {MAX_MESH_ADDRESSES} mesh addresses"
            ));
        }
        let config = settings.foca_config()?;
        let own_pin = pins.check(local.node, signer.public());
        if own_pin == PinCheck::Mismatch {
            return Err(format!(
                "pinned_keys pins this node ({}) to key {}, but its signing_key is {}: \
                 the state directory's files do not belong together",
                local.node,
                pins.get(&local.node)
                    .map(PublicKey::fingerprint)
                    .unwrap_or_default(),
                signer.public().fingerprint()
            ));
        }
        let mut rng = StdRng::from_seed(rng_seed);
        let swim_rng = StdRng::from_seed(rng.random());
        let shared = Arc::new(Mutex::new(Shared {
            store: StateStore::with_cap(settings.max_records_per_origin),
            local: local.node,
            records_invalid: 0,
            pins,
            pins_changed: own_pin == PinCheck::Pinned,
            dropped: [0; DROP_REASONS],
            forged_logged: HashMap::new(),
            bad_signature_logged: None,
            own_seen: 0,
            previous_life: HashMap::new(),
            records_changed: false,
            fresh: Vec::new(),
            wall_ms: 0,
            mono_ms: 0,
            records_from_future: 0,
            last_future_log_ms: None,
            unknown_kind_logged: None,
            admins: settings.admins.clone(),
            revoked: BTreeMap::new(),
            revocations_changed: false,
            swim_refused_revoked: false,
        }));
        let own_incarnation = Arc::new(AtomicU32::new(0));
        let own_generation = Arc::new(AtomicU32::new(local.generation));
        let last_src = Arc::new(Mutex::new(None));
        let swim = swim::new_swim(
            local,
            config,
            swim_rng,
            own_generation.clone(),
            own_incarnation.clone(),
            last_src.clone(),
            shared.clone(),
        );
        Ok(MeshCore {
            swim,
            signer,
            shared,
            own_generation,
            own_incarnation,
            keyring,
            rate: RateLimiter::new(settings.rate_per_source, settings.rate_burst, 4096),
            replay: ReplayFilter::new(settings.replay_window.as_millis() as u64, 1 << 18),
            settings,
            seeds,
            seed_rounds: 0,
            rng,
            counters: Counters::default(),
            last_drop_log_ms: [None; DROP_REASONS],
            skew_logged: HashMap::new(),
            wall_ms: 0,
            last_version: 0,
            republished_for: 0,
            members: HashMap::new(),
            members_changed: false,
            announced: HashMap::new(),
            heard: HashMap::new(),
            dependents: HashMap::new(),
            last_src,
            max_transmissions: 0,
            gone_since: HashMap::new(),
            suspicions: HashMap::new(),
            local_health: health::LocalHealth::default(),
            keyring_queries: HashMap::new(),
            relayed: HashMap::new(),
            keyring_answers: std::collections::VecDeque::new(),
            out: Vec::new(),
            rt: swim::SwimRuntime::default(),
        })
    }

    /// Validates settings as `new` would, for `--check`.
    pub fn check_settings(settings: &MeshSettings) -> Result<(), String> {
        settings.foca_config().map(|_| ())
    }

    /// The member that announces `from` among its addresses.
    fn member_at(&self, from: SocketAddr) -> Option<NodeId> {
        self.members
            .values()
            .find(|m| m.id.addrs.contains(&from))
            .map(|m| m.id.node)
    }

    /// Whether a SWIM message came from `node` within [`HEARD_FOR_MS`].
    fn heard_lately(&self, node: &NodeId, now_ms: u64) -> bool {
        self.heard
            .get(node)
            .is_some_and(|&t| t >= now_ms.saturating_sub(HEARD_FOR_MS))
    }

    pub fn local(&self) -> &MemberId {
        self.swim.identity()
    }

    /// Starts the periodic work and contacts the seeds.
    pub fn start(&mut self, now: Now) {
        self.schedule(self.settings.sync_interval, CoreTimer::AntiEntropy);
        self.handle_timer(CoreTimer::SeedRetry, now);
    }

    /// Takes the clocks of a call: the monotonic one is returned as the call's `now_ms`.
    fn clocks(&mut self, now: Now) -> u64 {
        self.wall_ms = now.unix_ms;
        let mut shared = lock(&self.shared);
        shared.wall_ms = now.unix_ms;
        shared.mono_ms = now.mono_ms;
        now.mono_ms
    }

    pub fn drain_outputs(&mut self) -> std::vec::Drain<'_, Output> {
        self.out.drain(..)
    }

    pub fn counters(&self) -> Counters {
        let mut c = self.counters;
        c.local_health = u64::from(self.local_health.score());
        let shared = lock(&self.shared);
        c.records_invalid = shared.records_invalid;
        c.store = shared.store.counters();
        c.records_from_future = shared.records_from_future;
        for (total, more) in c.dropped.iter_mut().zip(shared.dropped) {
            *total = total.saturating_add(more);
        }
        c
    }

    /// Our signing key's public half.
    pub fn public_key(&self) -> PublicKey {
        self.signer.public()
    }

    /// Revokes a member for good (ADR 0033): publishes a Revocation signed by us. Only
    /// an admin may (our key's fingerprint in `mesh.admins`), and not itself.
    pub fn revoke(&mut self, node: NodeId, now: Now) -> Result<u64, String> {
        let own = self.signer.public().fingerprint();
        if !self.settings.admins.contains(&own) {
            return Err(format!(
                "this member's key {own} is not in its mesh.admins: only an admin may revoke"
            ));
        }
        if node == self.local().node {
            return Err("a member cannot revoke itself".into());
        }
        let body = Body::Revocation(v1::Revocation {
            node: Bytes::copy_from_slice(&node.0),
        });
        let version = self.publish(body, now).map_err(|e| e.to_string())?;
        let mut shared = lock(&self.shared);
        let key = RecordKey {
            origin: self.swim.identity().node,
            kind: v1::RecordKind::Revocation as i32,
            name: node.to_string(),
        };
        if let Some(rec) = shared.store.get(&key).cloned() {
            shared.accept_revocation(&rec, self.signer.public());
        }
        Ok(version)
    }

    /// Revocations saved before a restart (`take_changed_revocations`), checked again
    /// (signature, pin, admin) and applied; ours go back into the store to be gossiped.
    /// Returns why any was refused.
    pub fn restore_revocations(&mut self, saved: &[Bytes]) -> Vec<String> {
        let mut refused = Vec::new();
        let mut shared = lock(&self.shared);
        for bytes in saved {
            let (rec, signer) = match verify_record(bytes) {
                Ok(v) => v,
                Err(e) => {
                    refused.push(e.to_string());
                    continue;
                }
            };
            if !matches!(rec.record.body, Some(Body::Revocation(_)))
                || !shared.check_pin(rec.key.origin, signer, "saved revocation")
                || !shared.accept_revocation(&rec, signer)
            {
                refused.push(format!("revocation by {} refused", rec.key.origin));
                continue;
            }
            if rec.key.origin == shared.local {
                self.last_version = self.last_version.max(rec.version);
            }
            shared.store.merge(rec);
        }
        shared.revocations_changed = false;
        refused
    }

    /// The signed revocations held, when they changed since the last call: for the
    /// driver to save.
    pub fn take_changed_revocations(&mut self) -> Option<Vec<Bytes>> {
        let mut shared = lock(&self.shared);
        std::mem::take(&mut shared.revocations_changed)
            .then(|| shared.revoked.values().cloned().collect())
    }

    /// The pins, when they changed since the last call: for the driver to save.
    pub fn take_changed_pins(&mut self) -> Option<KeyPins> {
        let mut shared = lock(&self.shared);
        std::mem::take(&mut shared.pins_changed).then(|| shared.pins.clone())
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn keyring_mut(&mut self) -> &mut Keyring {
        &mut self.keyring
    }

    pub fn with_store<R>(&self, f: impl FnOnce(&StateStore) -> R) -> R {
        f(&lock(&self.shared).store)
    }

    /// Keys of our own live records that others hold from a previous life of this node
    /// (same node id, before a restart) and that this life has neither published nor
    /// withdrawn since: a restarted member withdraws those it no longer has (a bgpctl,
    /// networks its fabric withdrew while it was down).
    pub fn previous_life(&self) -> Vec<RecordKey> {
        let shared = lock(&self.shared);
        let mut keys: Vec<RecordKey> = shared
            .previous_life
            .iter()
            .filter(|(k, (version, tombstone))| {
                !tombstone && shared.store.get(k).is_none_or(|r| r.version < *version)
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Whether members or records changed since the last call.
    pub fn take_changes(&mut self) -> (bool, bool) {
        let records = std::mem::take(&mut lock(&self.shared).records_changed);
        (std::mem::take(&mut self.members_changed), records)
    }

    /// Every member foca knows, and ourselves.
    pub fn members(&self) -> Vec<MemberInfo> {
        let mut v: Vec<MemberInfo> = self.members.values().cloned().collect();
        v.push(MemberInfo {
            id: self.local().clone(),
            state: MemberState::Alive,
            incarnation: self.own_incarnation.load(Ordering::Relaxed) as u16,
            last_change_ms: 0,
            local: true,
            key: None,
            revoked: false,
        });
        {
            let shared = lock(&self.shared);
            for m in &mut v {
                m.key = shared.pins.get(&m.id.node).copied();
                m.revoked = shared.revoked.contains_key(&m.id.node);
            }
        }
        v.sort_by_key(|m| m.id.node);
        v
    }

    pub fn alive_members(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.state != MemberState::Down)
            .count()
    }

    /// Publishes (or replaces) one of our own records.
    pub fn publish(&mut self, body: Body, now: Now) -> Result<u64, RecordError> {
        let now_ms = self.clocks(now);
        let version = self.publish_at(body);
        self.push_fresh(now_ms);
        version
    }

    /// `publish` within a call whose clocks are taken.
    fn publish_at(&mut self, body: Body) -> Result<u64, RecordError> {
        let origin = Bytes::copy_from_slice(&self.local().node.0);
        self.publish_encoded_at(|version| {
            v1::Record {
                origin,
                version,
                body: Some(body),
                ..Default::default()
            }
            .encode_to_vec()
        })
    }

    /// Publishes a record as a member of a later version would encode it: `encode` gets
    /// the version and returns the record of our origin encoded without its signature,
    /// with fields or a kind this version does not know (ADR 0046). For tests and the
    /// simulator, whose members are all of this version.
    #[cfg(any(test, feature = "sim"))]
    pub fn publish_encoded(
        &mut self,
        encode: impl FnOnce(u64) -> Vec<u8>,
        now: Now,
    ) -> Result<u64, RecordError> {
        let now_ms = self.clocks(now);
        let version = self.publish_encoded_at(encode);
        self.push_fresh(now_ms);
        version
    }

    fn publish_encoded_at(
        &mut self,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64, RecordError> {
        let version = self.next_version(self.wall_ms)?;
        let rec = sign_encoded(&encode(version), &self.signer)?;
        if rec.key.origin != self.local().node || rec.version != version {
            return Err(RecordError::BadOrigin);
        }
        let bytes = rec.bytes.clone();
        {
            let mut shared = lock(&self.shared);
            if shared.store.merge(rec) == MergeOutcome::OverCap {
                return Err(RecordError::OverCap(self.settings.max_records_per_origin));
            }
            shared.records_changed = true;
            if shared.fresh.len() < MAX_FRESH {
                let local = shared.local;
                shared.fresh.push((local, bytes.clone()));
            }
        }
        if let Err(e) = self.swim.add_broadcast(&bytes) {
            warn!(error = %e, "record too large to gossip; anti-entropy will carry it");
        }
        Ok(version)
    }

    /// Deletes one of our records everywhere (a tombstone with a newer version).
    pub fn withdraw(
        &mut self,
        kind: v1::RecordKind,
        name: &str,
        now: Now,
    ) -> Result<u64, RecordError> {
        self.publish(
            Body::Tombstone(v1::Tombstone {
                kind: kind as i32,
                name: name.to_string(),
            }),
            now,
        )
    }

    /// `unix_ms`: the wall clock (versions are wall-clock microseconds).
    fn next_version(&mut self, unix_ms: u64) -> Result<u64, RecordError> {
        let own_seen = lock(&self.shared).own_seen;
        // Microseconds of wall clock: a restarted node outranks its previous life without
        // persisting a counter, as long as its clock does not step back. `own_seen` is
        // bounded by our clock plus MAX_VERSION_SKEW_MS (`merge_remote`), so the counter
        // cannot be pushed near the end of the range from the network; if it ever is,
        // publishing fails instead of wrapping to versions everyone holds as stale.
        let floor = self
            .last_version
            .max(own_seen)
            .checked_add(1)
            .ok_or(RecordError::VersionsExhausted)?;
        let v = unix_ms.saturating_mul(1000).max(floor);
        self.last_version = v;
        Ok(v)
    }

    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Now) {
        // A dual-stack socket reports an IPv4 sender as IPv4-mapped IPv6; members announce
        // IPv4 addresses. Compared as announced, a sender is recognised (its own records
        // gossiped on, its rate limit and logs under one address).
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let now_ms = self.clocks(now);
        let Some(opened) = self.admit(from, data, now_ms) else {
            return;
        };
        let Some((&tag, body)) = opened.payload.split_first() else {
            return self.drop_datagram(DropReason::Invalid, from, now_ms);
        };
        match tag {
            TAG_SWIM => self.handle_swim(from, body, now_ms),
            TAG_CONTROL => match MeshControl::decode(body) {
                Ok(MeshControl {
                    kind: Some(kind),
                    sender,
                    ..
                }) => {
                    if let Some(signer) = self.control_is_authentic(&kind, &sender, body) {
                        self.handle_control(from, kind, body, signer, now_ms);
                    }
                }
                // It decodes, but as none of our kinds: a kind of a later version, whose
                // field prost skips (ADR 0046).
                Ok(MeshControl { kind: None, .. }) => {
                    self.drop_datagram(DropReason::UnknownKind, from, now_ms)
                }
                Err(_) => self.drop_datagram(DropReason::Invalid, from, now_ms),
            },
            // A datagram of a later version's kind (ADR 0046).
            _ => self.drop_datagram(DropReason::UnknownKind, from, now_ms),
        }
        self.republish_if_overtaken();
        self.push_fresh(now_ms);
    }

    pub fn handle_timer(&mut self, timer: CoreTimer, now: Now) {
        let now_ms = self.clocks(now);
        match timer {
            CoreTimer::Swim(t) => self.handle_swim_timer(t, now_ms),
            CoreTimer::JoinSync => self.sync_with_a_member(now_ms),
            CoreTimer::AntiEntropy => self.anti_entropy_round(now_ms),
            CoreTimer::SeedRetry => self.retry_seeds(),
            CoreTimer::SuspicionNotice(node) => self.notify_suspect(node, now_ms),
            CoreTimer::KeyringQuery(query) => self.ask_keyring(query, now_ms),
        }
        self.push_fresh(now_ms);
    }

    /// An authenticated, fresh control message, to the protocol it belongs to. `raw`: its
    /// encoded bytes, which a relayed refutation forwards verbatim (its signature is the
    /// suspect's).
    /// `signer`: the sender's key, for the messages that are signed.
    fn handle_control(
        &mut self,
        from: SocketAddr,
        kind: Kind,
        raw: &[u8],
        signer: Option<PublicKey>,
        now_ms: u64,
    ) {
        match kind {
            Kind::JoinRequest(ident) => self.on_join_request(from, &ident, now_ms),
            Kind::JoinReply(ident) => self.on_join_reply(from, &ident, now_ms),
            Kind::Members(m) => self.on_members(from, &m, now_ms),
            Kind::Hello(h) => self.on_hello(from, &h, now_ms),
            Kind::Digest(d) => self.on_digest(from, &d, now_ms),
            Kind::Records(r) => self.on_records(from, &r),
            Kind::Suspected(notice) => self.on_suspected(from, &notice, now_ms),
            Kind::RelaySuspicion(notice) => self.on_relay_suspicion(from, notice, now_ms),
            Kind::Refutation(entry) => self.on_refutation(from, entry, raw, now_ms),
            Kind::KeyringRequest(r) => self.on_keyring_request(from, r, signer, now_ms),
            Kind::KeyringReply(r) => self.on_keyring_reply(from, r, now_ms),
        }
    }

    fn send_control(&mut self, addrs: &[SocketAddr], kind: Kind) {
        let body = if trust::asserted_identity(&kind).is_some() {
            let unsigned = MeshControl {
                kind: Some(kind),
                sender: Bytes::copy_from_slice(&self.local().node.0),
                signature: Bytes::new(),
            };
            self.signer.sign(DOMAIN_CONTROL, &unsigned.encode_to_vec())
        } else {
            MeshControl {
                kind: Some(kind),
                ..Default::default()
            }
            .encode_to_vec()
        };
        self.send_sealed(addrs, TAG_CONTROL, &body);
    }

    fn send_sealed(&mut self, addrs: &[SocketAddr], tag: u8, body: &[u8]) {
        let mut payload = Vec::with_capacity(1 + body.len());
        payload.push(tag);
        payload.extend_from_slice(body);
        let nonce: [u8; 24] = self.rng.random();
        // Sealed once: copies that reach the member over several transits share a nonce,
        // and its replay filter keeps the first.
        let datagram = Bytes::from(self.keyring.seal(&payload, self.wall_ms, nonce));
        for &to in addrs.iter().take(MAX_MESH_ADDRESSES) {
            self.counters.datagrams_out += 1;
            self.counters.bytes_out += datagram.len() as u64;
            self.out.push(Output::Send {
                to,
                datagram: datagram.clone(),
            });
        }
    }

    fn schedule(&mut self, after: Duration, timer: CoreTimer) {
        self.out.push(Output::Schedule { after, timer });
    }

    fn republish_if_overtaken(&mut self) {
        let own_seen = lock(&self.shared).own_seen;
        // Once per overtaking version: publishing moves `last_version` above it, and if
        // it cannot (versions exhausted) we must not retry on every datagram.
        if own_seen < self.last_version || own_seen <= self.republished_for {
            return;
        }
        self.republished_for = own_seen;
        let own: Vec<Body> = self.with_store(|s| {
            s.iter()
                .filter(|r| r.key.origin == self.local().node)
                .filter_map(|r| r.record.body.clone())
                .collect()
        });
        debug!(
            records = own.len(),
            "a previous life of this node had newer records: republishing"
        );
        for body in own {
            let _ = self.publish_at(body);
        }
    }

    fn drop_datagram(&mut self, reason: DropReason, from: SocketAddr, now_ms: u64) {
        let i = reason as usize;
        self.counters.dropped[i] += 1;
        let due = self.last_drop_log_ms[i].is_none_or(|t| now_ms.saturating_sub(t) >= 60_000);
        if due {
            self.last_drop_log_ms[i] = Some(now_ms);
            warn!(
                reason = reason.as_str(),
                %from,
                total = self.counters.dropped[i],
                "dropped mesh datagram (counted; logged at most once a minute per reason)"
            );
        }
    }
}

pub fn identity_to_proto(id: &MemberId) -> MeshIdentity {
    MeshIdentity {
        id: Bytes::copy_from_slice(&id.node.0),
        generation: id.generation,
        addresses: id.addrs.iter().map(ToString::to_string).collect(),
    }
}

/// A member and an incarnation as control messages carry them; None when either is not
/// one foca could hold (no or too many addresses, incarnation beyond 16 bits).
fn member_at(identity: &Option<MeshIdentity>, incarnation: u32) -> Option<(MemberId, u16)> {
    let id = identity.as_ref().and_then(identity_from_proto)?;
    Some((id, u16::try_from(incarnation).ok()?))
}

pub fn identity_from_proto(p: &MeshIdentity) -> Option<MemberId> {
    if p.addresses.is_empty() || p.addresses.len() > MAX_MESH_ADDRESSES {
        return None;
    }
    let addrs = p
        .addresses
        .iter()
        .map(|a| a.parse().ok())
        .collect::<Option<Vec<SocketAddr>>>()?;
    Some(MemberId {
        node: NodeId::from_slice(&p.id)?,
        generation: p.generation,
        addrs,
    })
}

#[cfg(test)]
mod tests {
    use super::testkit::at;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use bytes::Bytes;
    use gatewan_proto::v1::{self, mesh_control::Kind};

    use super::testkit::{
        Drained, EPOCH_MS, Forger, Net, addr, core, keyring, member, member_key, node, node_record,
    };
    use super::{
        DropReason, MAX_VERSION_SKEW_MS, MemberState, MeshCore, MeshSettings, identity_to_proto,
        lock,
    };
    use crate::store::{RecordError, RecordKey};

    const HOUR_MS: u64 = 3_600_000;

    /// Member `origin`'s NodeRecord at `version`, as a push of anti-entropy carries it.
    /// Signed by the origin's own key: what is refused here is the version alone.
    fn pushed(forger: &mut Forger, origin: usize, version: u64, now_ms: u64) -> Vec<u8> {
        let record = v1::Record {
            origin: Bytes::copy_from_slice(&node(origin).0),
            version,
            body: Some(node_record(origin, "dc")),
            ..Default::default()
        };
        let signed = crate::store::sign_record(&record, &member_key(origin)).expect("valid");
        let records = vec![signed.bytes];
        forger.control(Kind::Records(v1::SyncRecords { records }), now_ms)
    }

    fn held_version(c: &MeshCore, origin: usize) -> Option<u64> {
        let key = RecordKey {
            origin: node(origin),
            kind: v1::RecordKind::Node as i32,
            name: String::new(),
        };
        c.with_store(|s| s.get(&key).map(|r| r.version))
    }

    #[test]
    fn a_record_version_further_ahead_of_our_clock_than_the_skew_is_refused_and_counted() {
        let mut c = core(0, keyring(1), MeshSettings::default(), Vec::new());
        c.start(at(EPOCH_MS));
        let mut forger = Forger::new(keyring(1));
        let now = EPOCH_MS;
        let ahead = |ms: u64| (now + ms) * 1000;
        for (origin, version) in [
            (0, u64::MAX),
            (1, u64::MAX),
            (2, ahead(MAX_VERSION_SKEW_MS + 1)),
            (3, ahead(HOUR_MS)),
        ] {
            c.handle_datagram(
                addr(origin),
                &pushed(&mut forger, origin, version, now),
                at(now),
            );
        }
        assert_eq!(c.counters().records_from_future, 3);
        assert_eq!(held_version(&c, 1), None);
        assert_eq!(held_version(&c, 2), None);
        assert_eq!(
            held_version(&c, 3),
            Some(ahead(HOUR_MS)),
            "an hour ahead is fine"
        );
        assert_eq!(
            lock(&c.shared).own_seen,
            0,
            "our own at u64::MAX never counted"
        );
        let v = c.publish(node_record(0, "dc"), at(now)).expect("published");
        assert_eq!(v, now * 1000);
    }

    #[test]
    fn our_records_overtaken_by_a_previous_life_are_republished_once() {
        let mut c = core(0, keyring(1), MeshSettings::default(), Vec::new());
        c.start(at(EPOCH_MS));
        let now = EPOCH_MS;
        let first = c.publish(node_record(0, "dc"), at(now)).expect("published");
        let mut forger = Forger::new(keyring(1));
        let previous_life = first + 5_000_000;
        for _ in 0..50 {
            c.handle_datagram(
                addr(5),
                &pushed(&mut forger, 0, previous_life, now),
                at(now),
            );
        }
        assert_eq!(held_version(&c, 0), Some(previous_life + 1));
        assert_eq!(
            c.last_version,
            previous_life + 1,
            "republished once, not 50 times"
        );
    }

    #[test]
    fn versions_at_the_end_of_the_range_refuse_publishing_and_never_storm() {
        let mut c = core(0, keyring(1), MeshSettings::default(), Vec::new());
        c.start(at(EPOCH_MS));
        let now = EPOCH_MS;
        c.publish(node_record(0, "dc"), at(now)).expect("published");
        Drained::of(&mut c);
        // Only reachable with a clock at the end of time; checked all the same.
        lock(&c.shared).own_seen = u64::MAX;
        assert!(matches!(
            c.publish(node_record(0, "dc"), at(now)),
            Err(RecordError::VersionsExhausted)
        ));
        let mut forger = Forger::new(keyring(1));
        for i in 0..100 {
            let hello = forger.control(Kind::Members(v1::SyncMembers::default()), now + i);
            c.handle_datagram(addr(5), &hello, at(now + i));
        }
        assert!(Drained::of(&mut c).sends.is_empty(), "nothing republished");
    }

    #[test]
    fn a_suspicion_notice_at_an_incarnation_we_never_had_is_dropped_without_a_rejoin() {
        let mut net = Net::joined(3, MeshSettings::default());
        let mut forger = Forger::new(keyring(1));
        let before: Vec<_> = (0..3).map(|i| net.cores[i].members()).collect();
        for incarnation in [u32::from(u16::MAX), u32::from(u16::MAX) - 1, 1000] {
            let notice = v1::SuspicionNotice {
                identity: Some(identity_to_proto(&member(0))),
                incarnation,
            };
            let now = net.unix_ms();
            net.cores[0].handle_datagram(
                addr(2),
                &forger.control(Kind::Suspected(notice), now),
                at(now),
            );
            net.collect(0);
        }
        net.run_for(Duration::from_secs(10));
        let c = &net.cores[0];
        assert_eq!(c.counters().dropped(DropReason::Invalid), 3);
        assert_eq!(c.own_incarnation.load(Ordering::Relaxed), 0);
        assert_eq!((c.local().generation, c.counters().rejoins), (1, 0));
        assert!(net.generations.is_empty());
        for (i, then) in before.iter().enumerate() {
            let now: Vec<_> = net.cores[i]
                .members()
                .iter()
                .map(|m| (m.id.clone(), m.state, m.incarnation))
                .collect();
            let then: Vec<_> = then
                .iter()
                .map(|m| (m.id.clone(), m.state, m.incarnation))
                .collect();
            assert_eq!(now, then, "member {i}'s view");
            assert!(now.iter().all(|m| m.1 == MemberState::Alive));
        }
    }

    /// Every core's members as it sees them: (id, state, incarnation).
    fn membership(net: &Net) -> Vec<Vec<(crate::identity::MemberId, MemberState, u16)>> {
        net.cores
            .iter()
            .map(|c| {
                c.members()
                    .into_iter()
                    .map(|m| (m.id, m.state, m.incarnation))
                    .collect()
            })
            .collect()
    }

    /// A member of a later version sends what this one does not know (ADR 0046): a
    /// control message of a new kind (signed, as one asserting its sender would be) and a
    /// datagram of a new tag. Both are dropped and counted as `unknown_kind`, nothing is
    /// answered, and membership and gossip between the two go on.
    #[test]
    fn messages_of_a_kind_this_version_does_not_know_are_dropped_counted_and_change_nothing() {
        use prost::Message as _;

        let mut net = Net::joined(3, MeshSettings::default());
        let before = membership(&net);
        let mut later = v1::MeshControl {
            sender: Bytes::copy_from_slice(&node(1).0),
            ..Default::default()
        }
        .encode_to_vec();
        // MeshControl.kind's next field, 12, length-delimited ((12 << 3) | 2 = 0x62).
        later.extend_from_slice(&[0x62, 2, 0x08, 0x01]);
        let mut control = vec![super::TAG_CONTROL];
        control.extend(member_key(1).sign(crate::signing::DOMAIN_CONTROL, &later));
        let mut sealer = Forger::new(keyring(1));
        let now = net.unix_ms();
        for payload in [control, vec![3, 0x08, 0x01]] {
            let datagram = sealer.sealed(&payload, now);
            net.cores[0].handle_datagram(addr(1), &datagram, at(now));
        }
        assert!(Drained::of(&mut net.cores[0]).sends.is_empty(), "no answer");
        let c = net.cores[0].counters();
        assert_eq!(c.dropped(DropReason::UnknownKind), 2);
        let others: u64 = DropReason::ALL
            .iter()
            .filter(|r| **r != DropReason::UnknownKind)
            .map(|r| c.dropped(*r))
            .sum();
        assert_eq!(others, 0, "{c:?}");

        net.run_for(Duration::from_secs(20));
        assert_eq!(membership(&net), before, "membership as it was");
        for c in &net.cores {
            assert_eq!(c.counters().suspicions_raised, 0);
        }
        // Records still flow between the two.
        let now = net.now();
        let v = net.cores[1]
            .publish(node_record(1, "dc-later"), now)
            .expect("published");
        net.run_for(Duration::from_secs(2));
        assert_eq!(held_version(&net.cores[0], 1), Some(v));
    }

    #[test]
    fn a_datagram_stamped_beyond_the_replay_window_is_counted_as_clock_skew() {
        let mut c = core(0, keyring(1), MeshSettings::default(), Vec::new());
        c.start(at(EPOCH_MS));
        let mut forger = Forger::new(keyring(1));
        let hello =
            |f: &mut Forger, stamp| f.control(Kind::Members(v1::SyncMembers::default()), stamp);
        let ahead = hello(&mut forger, EPOCH_MS + 40_000);
        c.handle_datagram(addr(3), &ahead, at(EPOCH_MS));
        let behind = hello(&mut forger, EPOCH_MS - 95_000);
        c.handle_datagram(addr(4), &behind, at(EPOCH_MS + 1));
        let fine = hello(&mut forger, EPOCH_MS + 29_000);
        c.handle_datagram(addr(3), &fine, at(EPOCH_MS + 2));
        let counters = c.counters();
        assert_eq!(counters.dropped(DropReason::ClockSkew), 2);
        assert_eq!(counters.dropped(DropReason::Replay), 0);
        assert_eq!(counters.max_clock_skew_ms, -95_001, "the largest, signed");
        // One log line per peer a minute: both peers are remembered as logged.
        assert_eq!(c.skew_logged.len(), 2);
    }

    #[test]
    fn a_wall_clock_step_of_every_member_changes_no_member_and_drops_nothing() {
        let mut net = Net::joined(4, MeshSettings::default());
        for (i, c) in net.cores.iter_mut().enumerate() {
            c.publish(node_record(i, "dc"), at(EPOCH_MS + 5_000))
                .expect("published");
        }
        net.run_for(Duration::from_secs(5));
        let before = membership(&net);
        let timers_before = net.scheduled.len();
        for step in [HOUR_MS as i64, -(HOUR_MS as i64)] {
            net.wall_step_ms = step;
            net.run_for(Duration::from_secs(30));
            assert_eq!(membership(&net), before, "after a step to {step} ms");
        }
        for c in &net.cores {
            let counters = c.counters();
            let dropped: u64 = DropReason::ALL
                .iter()
                .filter(|r| **r != DropReason::Duplicate)
                .map(|r| counters.dropped(*r))
                .sum();
            assert_eq!(dropped, 0, "{counters:?}");
            assert_eq!(counters.suspicions_raised, 0);
        }
        // Probes, gossip and anti-entropy went on at their pace: about one probe a second
        // per member, not a burst nor a stop.
        let probes = net.scheduled[timers_before..]
            .iter()
            .filter(|(_, _, t)| {
                matches!(t, super::CoreTimer::Swim(foca::Timer::ProbeRandomMember(_)))
            })
            .count();
        assert!(
            (4 * 55..=4 * 65).contains(&probes),
            "{probes} probe rounds in 60 s"
        );
        // A record published after the step back still replaces the one before it.
        let now = net.now();
        let v = net.cores[0]
            .publish(node_record(0, "dc2"), now)
            .expect("published");
        net.run_for(Duration::from_secs(5));
        for i in 1..4 {
            assert_eq!(held_version(&net.cores[i], 0), Some(v), "at member {i}");
        }
    }
}
