//! The mesh core, sans I/O: datagrams and timers in, datagrams and timers out.
//!
//! It admits datagrams (rate limit, AEAD, replay filter), feeds SWIM messages to foca and
//! mesh control messages (seed join, anti-entropy, suspicion notices, keyring changes) to
//! the state store and foca, and seals what goes out. The tokio driver (`driver.rs`) and
//! the benchmark's simulated network both drive it through the same four calls:
//! `handle_datagram`, `handle_timer`, `publish`, `drain_outputs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use foca::{BroadcastHandler, Foca, Invalidates, Notification, PostcardCodec, Timer};
use gatewan_proto::v1::{self, MeshControl, MeshIdentity, mesh_control::Kind, record::Body};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use tracing::{debug, warn};

use super::guard::{Freshness, RateLimiter, ReplayFilter};
use super::identity::{MAX_MESH_ADDRESSES, MemberId, NodeId};
use super::seal::{Keyring, KeyringOp, MeshKey, OpenError, SEAL_OVERHEAD};
use super::store::{
    MergeOutcome, RecordError, RecordKey, StateStore, decode_record, encode_record,
};
use super::sync;

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

/// Members that sync with a joiner, mesh-wide (see `flush_swim`).
const HELLO_FANOUT: usize = 3;
/// Bounds what one member-list datagram can make us apply.
const MAX_MEMBERS_PER_SLICE: usize = 64;

/// An address heard from within this is taken as reachable for anti-entropy.
const HEARD_FOR_MS: u64 = 30_000;
/// Bounds the `heard` map (one entry per member).
const MAX_HEARD: usize = 8192;

/// Why a datagram was dropped; each reason has a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    RateLimited,
    Malformed,
    Unauthenticated,
    Duplicate,
    Replay,
    Invalid,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::RateLimited,
        DropReason::Malformed,
        DropReason::Unauthenticated,
        DropReason::Duplicate,
        DropReason::Replay,
        DropReason::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::RateLimited => "rate_limited",
            DropReason::Malformed => "malformed",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Duplicate => "duplicate",
            DropReason::Replay => "replay",
            DropReason::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub dropped: [u64; 6],
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

/// When a joiner syncs again after its first push-pull.
const JOIN_RESYNC: Duration = Duration::from_secs(2);

/// A cluster-wide keyring change we asked for.
#[derive(Debug)]
struct KeyringQuery {
    request: v1::KeyringRequest,
    /// Asked member → its answer (None: none yet).
    answers: HashMap<NodeId, Option<String>>,
    addrs: HashMap<NodeId, Vec<SocketAddr>>,
    until_ms: u64,
}

/// Members of a suspect's datacenter asked to pass a suspicion notice on.
const SUSPICION_RELAYS: usize = 2;
/// How long a relay waits for the suspect's refutation to bring back.
const RELAY_FOR_MS: u64 = 3_000;
/// Bounds the relays pending at once.
const MAX_RELAYS: usize = 1024;

/// How long a keyring query waits for answers (it asks again every `KEYRING_RETRY`).
pub const KEYRING_QUERY_TIMEOUT: Duration = Duration::from_secs(3);
const KEYRING_RETRY: Duration = Duration::from_millis(500);
/// Answers kept to give again when a request is repeated (its answer was lost).
const KEYRING_ANSWERS_KEPT: usize = 64;

/// The result of a keyring query: who was asked, and who did not apply the change (with
/// why, or "no answer").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyringOutcome {
    pub asked: Vec<NodeId>,
    pub failures: Vec<(NodeId, String)>,
}

/// A member our own probe failed, which foca will declare down at `until_ms` unless it
/// refutes (raises its incarnation) first.
#[derive(Debug, Clone)]
struct Suspicion {
    id: MemberId,
    incarnation: u16,
    until_ms: u64,
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
}

/// foca owns its broadcast handler and exposes no accessor, so the store it merges into
/// is shared with the core through this lock; both run on the core's thread, so it is
/// never contended.
#[derive(Debug)]
struct Shared {
    store: StateStore,
    local: NodeId,
    records_invalid: u64,
    /// Highest version of one of our own records seen from others (a previous life of
    /// this node): our next versions must exceed it.
    own_seen: u64,
    records_changed: bool,
}

impl Shared {
    /// Merges a record from the network; returns whether it is news.
    fn merge_remote(&mut self, bytes: &[u8]) -> Option<(RecordKey, (u64, u64))> {
        let rec = match decode_record(bytes) {
            Ok(r) => r,
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

#[derive(Debug)]
struct RecordGossip(Arc<Mutex<Shared>>);

#[derive(Debug, Clone)]
struct BroadcastKey {
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // What these locks guard is changed in one step (a merge is one insert, the last
    // sender one assignment), so a lock poisoned by a panic is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Postcard codec that refuses identities no member would announce, and notes the
/// incarnation foca puts in our outgoing headers (foca keeps its own private).
struct IdentityCodec {
    own_incarnation: Arc<AtomicU32>,
    /// The sender of the last SWIM message decoded (see `MeshCore::heard`).
    last_src: Arc<Mutex<Option<NodeId>>>,
}

#[derive(Debug, thiserror::Error)]
enum CodecError {
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
struct SwimRuntime {
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

type Swim = Foca<MemberId, IdentityCodec, StdRng, RecordGossip>;

pub struct MeshCore {
    swim: Swim,
    shared: Arc<Mutex<Shared>>,
    own_incarnation: Arc<AtomicU32>,
    keyring: Keyring,
    settings: MeshSettings,
    seeds: Vec<SocketAddr>,
    rate: RateLimiter,
    replay: ReplayFilter,
    rng: StdRng,
    counters: Counters,
    last_drop_log_ms: [Option<u64>; 6],
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
    suspicions: HashMap<NodeId, Suspicion>,
    keyring_queries: HashMap<u64, KeyringQuery>,
    /// Suspects we passed a notice on to: who asked, until when, for their refutation.
    relayed: HashMap<NodeId, Vec<(SocketAddr, u64)>>,
    /// Our answers to recent keyring requests, oldest first.
    keyring_answers: std::collections::VecDeque<(u64, String)>,
    out: Vec<Output>,
    rt: SwimRuntime,
}

impl MeshCore {
    /// `rng_seed` must come from the OS in production: nonces are drawn from it.
    pub fn new(
        local: MemberId,
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
        let mut rng = StdRng::from_seed(rng_seed);
        let swim_rng = StdRng::from_seed(rng.random());
        let shared = Arc::new(Mutex::new(Shared {
            store: StateStore::default(),
            local: local.node,
            records_invalid: 0,
            own_seen: 0,
            records_changed: false,
        }));
        let own_incarnation = Arc::new(AtomicU32::new(0));
        let last_src = Arc::new(Mutex::new(None));
        let swim = Foca::with_custom_broadcast(
            local,
            config,
            swim_rng,
            IdentityCodec {
                own_incarnation: own_incarnation.clone(),
                last_src: last_src.clone(),
            },
            RecordGossip(shared.clone()),
        );
        Ok(MeshCore {
            swim,
            shared,
            own_incarnation,
            keyring,
            rate: RateLimiter::new(settings.rate_per_source, settings.rate_burst, 4096),
            replay: ReplayFilter::new(settings.replay_window.as_millis() as u64, 1 << 18),
            settings,
            seeds,
            rng,
            counters: Counters::default(),
            last_drop_log_ms: [None; 6],
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
            rt: SwimRuntime::default(),
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
        c.records_invalid = lock(&self.shared).records_invalid;
        c
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
        });
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
        let rec = encode_record(&v1::Record {
            origin: Bytes::copy_from_slice(&self.local().node.0),
            version,
            body: Some(body),
        })?;
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

    /// Leaves the mesh gracefully (others mark us down at once instead of suspecting).
    pub fn leave(&mut self, now_ms: u64) {
        let mut rt = std::mem::take(&mut self.rt);
        if let Err(e) = self.swim.leave_cluster(&mut rt) {
            debug!(error = %e, "leave");
        }
        self.rt = rt;
        self.flush_swim(now_ms);
    }

    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now_ms: u64) {
        self.counters.datagrams_in += 1;
        self.counters.bytes_in += data.len() as u64;
        if data.len() > self.settings.max_datagram {
            return self.drop_datagram(DropReason::Malformed, from, now_ms);
        }
        if !self.rate.admit(from.ip(), now_ms) {
            return self.drop_datagram(DropReason::RateLimited, from, now_ms);
        }
        let opened = match self.keyring.open(data) {
            Ok(o) => o,
            Err(OpenError::Malformed) => {
                return self.drop_datagram(DropReason::Malformed, from, now_ms);
            }
            Err(OpenError::Unauthenticated) => {
                return self.drop_datagram(DropReason::Unauthenticated, from, now_ms);
            }
        };
        match self
            .replay
            .check(opened.nonce_id, opened.timestamp_ms, now_ms)
        {
            Freshness::Fresh => {}
            // Expected whenever a peer has several addresses: not worth a log line.
            Freshness::Duplicate => {
                self.counters.dropped[DropReason::Duplicate as usize] += 1;
                return;
            }
            Freshness::Replay => return self.drop_datagram(DropReason::Replay, from, now_ms),
        }
        let Some((&tag, body)) = opened.payload.split_first() else {
            return self.drop_datagram(DropReason::Invalid, from, now_ms);
        };

        match tag {
            TAG_SWIM => {
                let mut rt = std::mem::take(&mut self.rt);
                let res = self.swim.handle_data(body, &mut rt);
                self.rt = rt;
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
            TAG_CONTROL => match MeshControl::decode(body) {
                Ok(MeshControl { kind: Some(kind) }) => self.handle_control(from, kind, now_ms),
                _ => self.drop_datagram(DropReason::Invalid, from, now_ms),
            },
            _ => self.drop_datagram(DropReason::Invalid, from, now_ms),
        }
        self.republish_if_overtaken(now_ms);
    }

    pub fn handle_timer(&mut self, timer: CoreTimer, now_ms: u64) {
        match timer {
            CoreTimer::Swim(Timer::ChangeSuspectToDown {
                ref member_id,
                incarnation,
                ..
            }) if !self.still_suspect(member_id, incarnation) => {
                // Refuted (or already down): nothing for foca to do. foca 2.0 would still
                // send the member a TurnUndead, and a live member told so rejoins under a
                // new generation: a false down in all but name, after every refuted
                // suspicion whose TurnUndead arrives.
            }
            CoreTimer::Swim(t) => {
                let mut rt = std::mem::take(&mut self.rt);
                if let Err(e) = self.swim.handle_timer(t, &mut rt) {
                    debug!(error = %e, "SWIM timer");
                }
                self.rt = rt;
                self.flush_swim(now_ms);
            }
            CoreTimer::JoinSync => self.sync_with_a_member(now_ms),
            CoreTimer::AntiEntropy => {
                self.sync_with_a_member(now_ms);
                // Jitter keeps members from syncing in lockstep.
                let base = self.settings.sync_interval.as_millis() as u64;
                let jitter = self.rng.random_range(0..=base / 5);
                self.schedule(
                    Duration::from_millis(base - base / 10 + jitter),
                    CoreTimer::AntiEntropy,
                );
            }
            CoreTimer::SeedRetry => {
                if self.swim.num_members() == 0 && !self.seeds.is_empty() {
                    let me = identity_to_proto(self.local());
                    let seeds = self.seeds.clone();
                    self.send_control(&seeds, Kind::JoinRequest(me), now_ms);
                }
                self.schedule(self.settings.seed_retry, CoreTimer::SeedRetry);
            }
            CoreTimer::SuspicionNotice(node) => self.notify_suspect(node, now_ms),
            CoreTimer::KeyringQuery(query) => self.ask_keyring(query, now_ms),
        }
    }

    /// Push-pull with a member we have heard from lately when there is one: in a mesh where
    /// some members cannot reach each other (a bgpctl on a fabric reaches its own
    /// datacenter's gatewans only), a random pick wastes most rounds on members that never
    /// answer.
    fn sync_with_a_member(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(HEARD_FOR_MS);
        self.heard.retain(|_, &mut t| t >= horizon);
        let all: Vec<MemberId> = self.swim.iter_members().map(|m| m.id().clone()).collect();
        let reachable: Vec<MemberId> = all
            .iter()
            .filter(|m| self.heard.contains_key(&m.node))
            .cloned()
            .collect();
        let peers = if reachable.is_empty() { all } else { reachable };
        if !peers.is_empty() {
            let peer = peers[self.rng.random_range(0..peers.len())].clone();
            self.send_hello(&peer.addrs, now_ms);
        }
    }

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

    /// Up to two live members of `node`'s datacenter (as their NodeRecords say), not us.
    fn datacenter_relays(&mut self, node: &NodeId) -> Vec<Vec<SocketAddr>> {
        let local = self.local().node;
        let mut relays: Vec<Vec<SocketAddr>> = {
            let shared = lock(&self.shared);
            let Some(dc) = shared.store.node(*node).map(|n| n.datacenter.clone()) else {
                return Vec::new();
            };
            self.members
                .values()
                .filter(|m| {
                    m.state == MemberState::Alive && m.id.node != *node && m.id.node != local
                })
                .filter(|m| {
                    shared
                        .store
                        .node(m.id.node)
                        .is_some_and(|n| n.datacenter == dc)
                })
                .map(|m| m.id.addrs.clone())
                .collect()
        };
        relays.sort();
        while relays.len() > SUSPICION_RELAYS {
            relays.swap_remove(self.rng.random_range(0..relays.len()));
        }
        relays
    }

    fn ask_keyring(&mut self, query: u64, now_ms: u64) {
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

    /// Whether `id` is still suspect at `incarnation`, as foca's suspicion timer requires.
    fn still_suspect(&self, id: &MemberId, incarnation: u16) -> bool {
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
    fn notify_suspect(&mut self, node: NodeId, now_ms: u64) {
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
        let relays = self.datacenter_relays(&node);
        self.send_control(&addrs, Kind::Suspected(notice.clone()), now_ms);
        // The suspect may not be reachable from here (a bgpctl on its fabric): members of
        // its datacenter pass the notice on and bring the refutation back.
        for relay in relays {
            self.send_control(&relay, Kind::RelaySuspicion(notice.clone()), now_ms);
        }
        self.schedule(
            (self.settings.probe_timeout / 2).max(Duration::from_millis(50)),
            CoreTimer::SuspicionNotice(node),
        );
    }

    fn handle_control(&mut self, from: SocketAddr, kind: Kind, now_ms: u64) {
        match kind {
            Kind::JoinRequest(ident) => {
                let Some(joiner) = identity_from_proto(&ident) else {
                    return self.drop_datagram(DropReason::Invalid, from, now_ms);
                };
                if joiner.node == self.local().node {
                    return; // our own address is among the seeds
                }
                let me = identity_to_proto(self.local());
                self.send_control(&[from], Kind::JoinReply(me), now_ms);
            }
            Kind::JoinReply(ident) => {
                let Some(seed) = identity_from_proto(&ident) else {
                    return self.drop_datagram(DropReason::Invalid, from, now_ms);
                };
                if seed.node == self.local().node {
                    return;
                }
                let seed_addrs = seed.addrs.clone();
                let mut rt = std::mem::take(&mut self.rt);
                if let Err(e) = self.swim.announce(seed, &mut rt) {
                    debug!(error = %e, "announce");
                }
                self.rt = rt;
                self.flush_swim(now_ms);
                // Push-pull with the seed whatever members we happen to sync with on
                // joining: it holds the mesh's state, and it gets ours (records published
                // before we had anyone to gossip them to) at once. And once more a little
                // later: a lost datagram of this first exchange would otherwise leave us
                // without some records until the next anti-entropy round.
                self.send_hello(&seed_addrs, now_ms);
                self.schedule(JOIN_RESYNC, CoreTimer::JoinSync);
            }
            Kind::Hello(h) => {
                if !h.members_hash.is_empty()
                    && h.members_hash.as_ref() != self.members_hash().as_slice()
                {
                    self.send_members(from, true, now_ms);
                }
                let same = self.with_store(|s| sync::same_state(s, &h));
                debug!(%from, same, "sync: hello");
                if !same {
                    let budget = self.settings.control_budget();
                    let slices = self.with_store(|s| sync::digest(s, true, budget));
                    for d in slices {
                        self.send_control(&[from], Kind::Digest(d), now_ms);
                    }
                }
            }
            Kind::Digest(d) => {
                let budget = self.settings.control_budget();
                let batches = {
                    let shared = lock(&self.shared);
                    sync::newer_than_digest(&shared.store, &d)
                        .map(|newer| sync::batches(newer, budget))
                };
                let Some(batches) = batches else {
                    return self.drop_datagram(DropReason::Invalid, from, now_ms);
                };
                debug!(
                    %from,
                    entries = d.entries.len(),
                    batches = batches.len(),
                    reply_wanted = d.reply_wanted,
                    "sync: digest"
                );
                for records in batches {
                    self.send_control(&[from], Kind::Records(v1::SyncRecords { records }), now_ms);
                }
                if d.reply_wanted {
                    let slices = self.with_store(|s| sync::digest(s, false, budget));
                    for d in slices {
                        self.send_control(&[from], Kind::Digest(d), now_ms);
                    }
                }
            }
            Kind::Members(m) => {
                let local = self.local().node;
                let mut updates = Vec::new();
                for e in m.members.iter().take(MAX_MEMBERS_PER_SLICE) {
                    let Some((id, incarnation)) = member_at(&e.identity, e.incarnation) else {
                        return self.drop_datagram(DropReason::Invalid, from, now_ms);
                    };
                    // What others think of us is foca's to refute, through SWIM.
                    if id.node != local {
                        let state = if e.suspect {
                            foca::State::Suspect
                        } else {
                            foca::State::Alive
                        };
                        updates.push(foca::Member::new(id, incarnation, state));
                    }
                }
                let mut rt = std::mem::take(&mut self.rt);
                // Not broadcast: the sender's view is what the mesh already knows.
                if let Err(e) = self.swim.apply_many(updates.into_iter(), false, &mut rt) {
                    debug!(error = %e, "member list refused");
                }
                self.rt = rt;
                self.flush_swim(now_ms);
                if m.reply_wanted {
                    self.send_members(from, false, now_ms);
                }
            }
            Kind::Suspected(notice) => {
                let Some((id, incarnation)) = member_at(&notice.identity, notice.incarnation)
                else {
                    return self.drop_datagram(DropReason::Invalid, from, now_ms);
                };
                if id != *self.local() {
                    // About an earlier life of ours (foca has the sender's view of it
                    // settled by the newer identity) or about someone else: not ours to act on.
                    return;
                }
                // foca refutes a suspicion of its own identity by raising its incarnation
                // and gossiping; the suspecting member gets the new incarnation at once.
                let me = foca::Member::new(id, incarnation, foca::State::Suspect);
                let mut rt = std::mem::take(&mut self.rt);
                if let Err(e) = self.swim.apply_many(std::iter::once(me), true, &mut rt) {
                    debug!(error = %e, "refutation");
                }
                self.rt = rt;
                self.flush_swim(now_ms);
                let entry = v1::MemberEntry {
                    identity: Some(identity_to_proto(self.local())),
                    incarnation: self.own_incarnation.load(Ordering::Relaxed),
                    suspect: false,
                };
                self.counters.suspicions_of_us_refuted += 1;
                self.send_control(&[from], Kind::Refutation(entry), now_ms);
            }
            Kind::RelaySuspicion(notice) => {
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
                self.send_control(&addrs, Kind::Suspected(notice), now_ms);
            }
            Kind::Refutation(e) => {
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
                            self.send_control(&[asker], Kind::Refutation(e.clone()), now_ms);
                        }
                    }
                }
                let alive = foca::Member::new(id, incarnation, foca::State::Alive);
                let mut rt = std::mem::take(&mut self.rt);
                if let Err(e) = self.swim.apply_many(std::iter::once(alive), true, &mut rt) {
                    debug!(error = %e, "refutation refused");
                }
                self.rt = rt;
                self.flush_swim(now_ms);
            }
            Kind::KeyringRequest(r) => {
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
            Kind::KeyringReply(r) => {
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
            Kind::Records(r) => {
                let sender = self
                    .members
                    .values()
                    .find(|m| m.id.addrs.contains(&from))
                    .map(|m| m.id.node);
                let mut first_hand = Vec::new();
                debug!(%from, records = r.records.len(), "sync: records");
                {
                    let mut shared = lock(&self.shared);
                    for bytes in r.records.iter().take(256) {
                        // Not re-gossiped in general: broadcasts already spread what is new,
                        // and anti-entropy repairs each member that missed them.
                        if let Some((key, _)) = shared.merge_remote(bytes)
                            && Some(key.origin) == sender
                        {
                            first_hand.push(bytes.clone());
                        }
                    }
                }
                // But a member's own records, pushed by itself, are news we gossip on: a
                // member that reaches few others (a bgpctl on its fabric) loses most of its
                // own gossip, so its records would otherwise wait for anti-entropy rounds.
                for bytes in first_hand {
                    if let Err(e) = self.swim.add_broadcast(&bytes) {
                        debug!(error = %e, "record too large to gossip");
                    }
                }
            }
        }
    }

    fn send_hello(&mut self, addrs: &[SocketAddr], now_ms: u64) {
        let members = self.members_hash();
        let h = self.with_store(|s| sync::hello(s, members));
        self.send_control(addrs, Kind::Hello(h), now_ms);
    }

    fn members_hash(&self) -> [u8; 16] {
        sync::members_hash(
            self.members
                .values()
                .filter(|m| m.state != MemberState::Down)
                .map(|m| &m.id)
                .chain(std::iter::once(self.local())),
        )
    }

    fn send_members(&mut self, to: SocketAddr, reply_wanted: bool, now_ms: u64) {
        let mut entries: Vec<v1::MemberEntry> = self
            .members
            .values()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| v1::MemberEntry {
                identity: Some(identity_to_proto(&m.id)),
                incarnation: u32::from(m.incarnation),
                suspect: m.state == MemberState::Suspect,
            })
            .collect();
        entries.push(v1::MemberEntry {
            identity: Some(identity_to_proto(self.local())),
            incarnation: self.own_incarnation.load(Ordering::Relaxed),
            suspect: false,
        });
        // `members` is a HashMap: a fixed order keeps runs reproducible (the simulator).
        entries.sort_by(|a, b| {
            let key = |e: &v1::MemberEntry| e.identity.as_ref().map(|i| i.id.clone());
            key(a).cmp(&key(b))
        });
        let budget = self.settings.control_budget();
        for slice in sync::member_slices(entries, reply_wanted, budget) {
            self.send_control(&[to], Kind::Members(slice), now_ms);
        }
    }

    fn send_control(&mut self, addrs: &[SocketAddr], kind: Kind, now_ms: u64) {
        let body = MeshControl { kind: Some(kind) }.encode_to_vec();
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

    /// Turns what foca asked for into outputs and member-state bookkeeping.
    fn flush_swim(&mut self, now_ms: u64) {
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
                suspected.push(Suspicion {
                    id: member_id.clone(),
                    incarnation: *incarnation,
                    until_ms: now_ms + after.as_millis() as u64,
                });
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
        for s in suspected {
            let node = s.id.node;
            let first = self.suspicions.insert(node, s).is_none();
            if first {
                self.counters.suspicions_raised += 1;
                self.notify_suspect(node, now_ms);
            }
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

    fn refresh_members(&mut self, now_ms: u64) {
        let local = self.local().node;
        let mut seen = 0;
        // foca keeps our previous lives (same node id, older generation) as down members
        // when it hears of them after a restart; they are not members to show or sync.
        for m in self
            .swim
            .iter_membership_state()
            .filter(|m| m.id().node != local)
        {
            seen += 1;
            let state = match m.state() {
                foca::State::Alive => MemberState::Alive,
                foca::State::Suspect => MemberState::Suspect,
                foca::State::Down => MemberState::Down,
            };
            let id = m.id();
            match self.members.get_mut(&id.node) {
                Some(e) if e.state == state && e.id == *id && e.incarnation == m.incarnation() => {}
                Some(e) => {
                    if e.state != state || e.id.generation != id.generation {
                        e.last_change_ms = now_ms;
                    }
                    e.state = state;
                    e.id = id.clone();
                    e.incarnation = m.incarnation();
                    self.members_changed = true;
                }
                None => {
                    self.members.insert(
                        id.node,
                        MemberInfo {
                            id: id.clone(),
                            state,
                            incarnation: m.incarnation(),
                            last_change_ms: now_ms,
                            local: false,
                        },
                    );
                    self.members_changed = true;
                }
            }
        }
        if seen != self.members.len() {
            let live: std::collections::HashSet<NodeId> = self
                .swim
                .iter_membership_state()
                .map(|m| m.id().node)
                .filter(|n| *n != local)
                .collect();
            self.members.retain(|k, _| live.contains(k));
            self.members_changed = true;
        }
        self.resize_transmissions();
    }

    fn resize_transmissions(&mut self) {
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
