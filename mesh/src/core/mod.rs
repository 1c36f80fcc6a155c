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
//! - `suspicion`: suspicion notices, their relays and refutations;
//! - `keyring`: cluster-wide keyring changes;
//! - `trust`: signed control messages and the checks of signers against key pins (the
//!   record checks are `Shared::merge_remote`'s, as the broadcast handler merges too).
//!
//! The protocol files use this file's items and call each other's methods on `MeshCore`,
//! but never import from each other.

mod admission;
mod anti_entropy;
mod keyring;
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
    MergeOutcome, RecordError, RecordKey, StateStore, StoredRecord, decode_record, sign_record,
    verify_record,
};

/// First byte inside a sealed datagram.
const TAG_SWIM: u8 = 1;
const TAG_CONTROL: u8 = 2;

/// Tunables of the mesh. Defaults target a WAN between datacenters: a dead member is
/// declared down by everyone within about 3.5 s at 200 members (see the mesh_cluster
/// benchmark for figures).
#[derive(Debug, Clone)]
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
        }
    }
}

impl MeshSettings {
    /// How many times each update is sent with `members` in the mesh (counting us).
    pub fn max_transmissions(&self, members: usize) -> u8 {
        let n = (f64::from(self.retransmit_mult) * ((members + 1) as f64).log10()).ceil();
        n.clamp(4.0, 255.0) as u8
    }

    fn foca_config(&self) -> Result<foca::Config, String> {
        let positive = |d: Duration, what: &str| {
            if d.is_zero() {
                Err(format!("{what} must be greater than zero"))
            } else {
                Ok(d)
            }
        };
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
        c.max_packet_size = NonZeroUsize::new(self.max_datagram.saturating_sub(SEAL_OVERHEAD + 1))
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

/// Why a datagram was dropped; each reason has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    RateLimited,
    Malformed,
    Unauthenticated,
    Duplicate,
    Replay,
    Invalid,
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
}

/// Number of drop reasons.
const DROP_REASONS: usize = 10;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::RateLimited,
        DropReason::Malformed,
        DropReason::Unauthenticated,
        DropReason::Duplicate,
        DropReason::Replay,
        DropReason::Invalid,
        DropReason::BadSignature,
        DropReason::Forged,
        DropReason::Revoked,
        DropReason::NotAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RateLimited => "rate_limited",
            DropReason::Malformed => "malformed",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Duplicate => "duplicate",
            DropReason::Replay => "replay",
            DropReason::Invalid => "invalid",
            DropReason::BadSignature => "bad_signature",
            DropReason::Forged => "forged",
            DropReason::Revoked => "revoked",
            DropReason::NotAdmin => "not_admin",
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
    /// Gossiped records that failed validation (the rest of their datagram was used).
    pub records_invalid: u64,
    /// Members our own probes failed and that we told so (see `notify_suspect`).
    pub suspicions_raised: u64,
    /// Suspicions of ourselves refuted in answer to a notice.
    pub suspicions_of_us_refuted: u64,
    /// Suspicions we raised that the suspect refuted directly.
    pub refutations_received: u64,
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
    /// The time of the call being handled: the broadcast handler has no clock.
    now_ms: u64,
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
    records_changed: bool,
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
        let now = self.now_ms;
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
        let now = self.now_ms;
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
        if rec.key.origin == self.local {
            // Only we write our records; a newer one is from our previous life.
            if self.store.rank_of(&rec.key).is_none_or(|held| rank > held) {
                self.own_seen = self.own_seen.max(rec.version);
            }
            return None;
        }
        let key = rec.key.clone();
        (self.store.merge(rec) == MergeOutcome::Applied).then(|| {
            self.records_changed = true;
            (key, rank)
        })
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
    own_incarnation: Arc<AtomicU32>,
    keyring: Keyring,
    settings: MeshSettings,
    seeds: Vec<SocketAddr>,
    rate: RateLimiter,
    replay: ReplayFilter,
    rng: StdRng,
    counters: Counters,
    last_drop_log_ms: [Option<u64>; DROP_REASONS],
    last_version: u64,
    members: HashMap<NodeId, MemberInfo>,
    members_changed: bool,
    /// When a SWIM message last came from each member, whatever its source address
    /// (a member on several networks may answer from an address it does not announce).
    heard: HashMap<NodeId, u64>,
    last_src: Arc<Mutex<Option<NodeId>>>,
    /// foca's max_transmissions now, resized with the membership.
    max_transmissions: u8,
    /// Members we suspect and keep telling so (see `notify_suspect`).
    suspicions: HashMap<NodeId, suspicion::Suspicion>,
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
            store: StateStore::default(),
            local: local.node,
            records_invalid: 0,
            pins,
            pins_changed: own_pin == PinCheck::Pinned,
            dropped: [0; DROP_REASONS],
            forged_logged: HashMap::new(),
            bad_signature_logged: None,
            now_ms: 0,
            own_seen: 0,
            records_changed: false,
            admins: settings.admins.clone(),
            revoked: BTreeMap::new(),
            revocations_changed: false,
            swim_refused_revoked: false,
        }));
        let own_incarnation = Arc::new(AtomicU32::new(0));
        let last_src = Arc::new(Mutex::new(None));
        let swim = swim::new_swim(
            local,
            config,
            swim_rng,
            own_incarnation.clone(),
            last_src.clone(),
            shared.clone(),
        );
        Ok(MeshCore {
            swim,
            signer,
            shared,
            own_incarnation,
            keyring,
            rate: RateLimiter::new(settings.rate_per_source, settings.rate_burst, 4096),
            replay: ReplayFilter::new(settings.replay_window.as_millis() as u64, 1 << 18),
            settings,
            seeds,
            rng,
            counters: Counters::default(),
            last_drop_log_ms: [None; DROP_REASONS],
            last_version: 0,
            members: HashMap::new(),
            members_changed: false,
            heard: HashMap::new(),
            last_src,
            max_transmissions: 0,
            suspicions: HashMap::new(),
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

    pub fn local(&self) -> &MemberId {
        self.swim.identity()
    }

    /// Starts the periodic work and contacts the seeds.
    pub fn start(&mut self, now_ms: u64) {
        self.schedule(self.settings.sync_interval, CoreTimer::AntiEntropy);
        self.handle_timer(CoreTimer::SeedRetry, now_ms);
    }

    pub fn drain_outputs(&mut self) -> std::vec::Drain<'_, Output> {
        self.out.drain(..)
    }

    pub fn counters(&self) -> Counters {
        let mut c = self.counters;
        let shared = lock(&self.shared);
        c.records_invalid = shared.records_invalid;
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
    pub fn revoke(&mut self, node: NodeId, now_ms: u64) -> Result<u64, String> {
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
        let version = self.publish(body, now_ms).map_err(|e| e.to_string())?;
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
    pub fn publish(&mut self, body: Body, now_ms: u64) -> Result<u64, RecordError> {
        let version = self.next_version(now_ms);
        let rec = sign_record(
            &v1::Record {
                origin: Bytes::copy_from_slice(&self.local().node.0),
                version,
                body: Some(body),
                ..Default::default()
            },
            &self.signer,
        )?;
        let bytes = rec.bytes.clone();
        {
            let mut shared = lock(&self.shared);
            shared.store.merge(rec);
            shared.records_changed = true;
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
        now_ms: u64,
    ) -> Result<u64, RecordError> {
        self.publish(
            Body::Tombstone(v1::Tombstone {
                kind: kind as i32,
                name: name.to_string(),
            }),
            now_ms,
        )
    }

    fn next_version(&mut self, now_ms: u64) -> u64 {
        let own_seen = lock(&self.shared).own_seen;
        // Microseconds of wall clock: a restarted node outranks its previous life without
        // persisting a counter, as long as its clock does not step back.
        let v = (now_ms.saturating_mul(1000))
            .max(self.last_version + 1)
            .max(own_seen + 1);
        self.last_version = v;
        v
    }

    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now_ms: u64) {
        lock(&self.shared).now_ms = now_ms;
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
                _ => self.drop_datagram(DropReason::Invalid, from, now_ms),
            },
            _ => self.drop_datagram(DropReason::Invalid, from, now_ms),
        }
        self.republish_if_overtaken(now_ms);
    }

    pub fn handle_timer(&mut self, timer: CoreTimer, now_ms: u64) {
        lock(&self.shared).now_ms = now_ms;
        match timer {
            CoreTimer::Swim(t) => self.handle_swim_timer(t, now_ms),
            CoreTimer::JoinSync => self.sync_with_a_member(now_ms),
            CoreTimer::AntiEntropy => self.anti_entropy_round(now_ms),
            CoreTimer::SeedRetry => self.retry_seeds(now_ms),
            CoreTimer::SuspicionNotice(node) => self.notify_suspect(node, now_ms),
            CoreTimer::KeyringQuery(query) => self.ask_keyring(query, now_ms),
        }
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

    fn send_control(&mut self, addrs: &[SocketAddr], kind: Kind, now_ms: u64) {
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
        self.send_sealed(addrs, TAG_CONTROL, &body, now_ms);
    }

    fn send_sealed(&mut self, addrs: &[SocketAddr], tag: u8, body: &[u8], now_ms: u64) {
        let mut payload = Vec::with_capacity(1 + body.len());
        payload.push(tag);
        payload.extend_from_slice(body);
        let nonce: [u8; 24] = self.rng.random();
        // Sealed once: copies that reach the member over several transits share a nonce,
        // and its replay filter keeps the first.
        let datagram = Bytes::from(self.keyring.seal(&payload, now_ms, nonce));
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

    fn republish_if_overtaken(&mut self, now_ms: u64) {
        let own_seen = lock(&self.shared).own_seen;
        if own_seen < self.last_version || own_seen == 0 {
            return;
        }
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
            let _ = self.publish(body, now_ms);
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
