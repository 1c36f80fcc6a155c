//! Helpers for the protocol tests: cores with seeded RNGs on a network the test drives
//! itself, in virtual time. As in foca's own tests, every datagram a core sends is held
//! by the test until it is delivered, so a test can lose, cut or inspect any of them; a
//! test can also hand a core forged control messages sealed with the mesh key.
//!
//! The network is instant (a datagram arrives at the time it is sent) and timers fire in
//! the order they are due, ties in the order they were scheduled: a run is the same on
//! every machine.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gatewan_proto::v1::{self, MeshControl, mesh_control::Kind, record::Body};
use prost::Message as _;

use super::{CoreTimer, KeyringOutcome, MeshCore, MeshSettings, Now, Output, TAG_CONTROL};
use crate::identity::{MemberId, NodeId};
use crate::pins::KeyPins;
use crate::seal::{Keyring, KeyringOp, MeshKey};
use crate::signing::{DOMAIN_CONTROL, MemberKey};

/// Virtual time zero, as Unix milliseconds: sealed datagrams carry plausible stamps.
pub(crate) const EPOCH_MS: u64 = 1_750_000_000_000;

/// The clocks at virtual wall-clock time `unix_ms`: the monotonic clock counts from
/// virtual time zero, the wall clock from `EPOCH_MS`.
pub(crate) fn at(unix_ms: u64) -> Now {
    Now {
        mono_ms: unix_ms.saturating_sub(EPOCH_MS),
        unix_ms,
    }
}

/// Member `i`'s only address: 10.0.0.(i+1):7946.
pub(crate) fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 7946)
}

pub(crate) fn key(b: u8) -> MeshKey {
    MeshKey::from_bytes(&[b; 32]).expect("32 bytes")
}

pub(crate) fn keyring(b: u8) -> Keyring {
    Keyring::new(key(b))
}

pub(crate) fn node(i: usize) -> NodeId {
    NodeId([i as u8 + 1; 16])
}

pub(crate) fn member(i: usize) -> MemberId {
    MemberId {
        node: node(i),
        generation: 1,
        addrs: vec![addr(i)],
    }
}

/// Member `i`'s signing key.
pub(crate) fn member_key(i: usize) -> MemberKey {
    MemberKey::from_seed([0x80 | i as u8; 32])
}

/// Member `i` of a mesh sealed with `keyring`, its RNG seeded with `i`; not started.
pub(crate) fn core(
    i: usize,
    keyring: Keyring,
    settings: MeshSettings,
    seeds: Vec<SocketAddr>,
) -> MeshCore {
    core_seeded(i, keyring, settings, seeds, [i as u8; 32])
}

/// As [`core`], its RNG seeded from `rng` (tests that try many runs).
pub(crate) fn core_with_rng(
    i: usize,
    keyring: Keyring,
    settings: MeshSettings,
    seeds: Vec<SocketAddr>,
    rng: u64,
) -> MeshCore {
    let mut seed = [i as u8; 32];
    seed[..8].copy_from_slice(&rng.to_be_bytes());
    core_seeded(i, keyring, settings, seeds, seed)
}

fn core_seeded(
    i: usize,
    keyring: Keyring,
    settings: MeshSettings,
    seeds: Vec<SocketAddr>,
    seed: [u8; 32],
) -> MeshCore {
    MeshCore::new(
        member(i),
        member_key(i),
        KeyPins::default(),
        keyring,
        settings,
        seeds,
        seed,
    )
    .expect("valid settings")
}

/// A NodeRecord placing member `i` in `datacenter`.
pub(crate) fn node_record(i: usize, datacenter: &str) -> Body {
    Body::Node(v1::NodeRecord {
        id: Bytes::copy_from_slice(&node(i).0),
        name: format!("m{i}"),
        datacenter: datacenter.into(),
        version: "test".into(),
        mesh_addresses: vec![addr(i).to_string()],
        ..Default::default()
    })
}

/// The control message inside a datagram, if `keyring` opens it and it is one.
pub(crate) fn control_in(keyring: &Keyring, datagram: &[u8]) -> Option<Kind> {
    let opened = keyring.open(datagram).ok()?;
    let (&tag, body) = opened.payload.split_first()?;
    if tag != TAG_CONTROL {
        return None;
    }
    MeshControl::decode(body).ok()?.kind
}

/// Seals control messages as a member of the mesh would, each with a fresh nonce; with
/// a signer, signs them as that member would (`signing_as`).
pub(crate) struct Forger {
    keyring: Keyring,
    nonces: u64,
    signer: Option<(NodeId, MemberKey)>,
}

impl Forger {
    pub(crate) fn new(keyring: Keyring) -> Self {
        Forger {
            keyring,
            nonces: 0,
            signer: None,
        }
    }

    /// Signs every control message as `node` with `key`.
    pub(crate) fn signing_as(mut self, node: NodeId, key: MemberKey) -> Self {
        self.signer = Some((node, key));
        self
    }

    pub(crate) fn control(&mut self, kind: Kind, now_ms: u64) -> Vec<u8> {
        let mut payload = vec![TAG_CONTROL];
        match &self.signer {
            None => payload.extend(
                MeshControl {
                    kind: Some(kind),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            Some((node, key)) => {
                let unsigned = MeshControl {
                    kind: Some(kind),
                    sender: Bytes::copy_from_slice(&node.0),
                    signature: Bytes::new(),
                };
                payload.extend(key.sign(DOMAIN_CONTROL, &unsigned.encode_to_vec()));
            }
        }
        self.sealed(&payload, now_ms)
    }

    pub(crate) fn sealed(&mut self, payload: &[u8], stamp_ms: u64) -> Vec<u8> {
        // Unique across forgers too: a test may use several, and the replay filter would
        // take a second forger's first datagram for the first one's.
        static FORGED: AtomicU64 = AtomicU64::new(0);
        self.nonces += 1;
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&self.nonces.to_be_bytes());
        nonce[8..16].copy_from_slice(&FORGED.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        self.keyring.seal(payload, stamp_ms, nonce)
    }
}

/// What one core's drained outputs hold, sorted by kind.
#[derive(Default)]
pub(crate) struct Drained {
    pub sends: Vec<(SocketAddr, Bytes)>,
    pub timers: Vec<(Duration, CoreTimer)>,
    pub keyring_requests: Vec<(SocketAddr, u64, KeyringOp)>,
    pub keyring_done: Vec<(u64, KeyringOutcome)>,
    pub generations: Vec<u32>,
}

impl Drained {
    pub(crate) fn of(core: &mut MeshCore) -> Drained {
        let mut d = Drained::default();
        for o in core.drain_outputs() {
            match o {
                Output::Send { to, datagram } => d.sends.push((to, datagram)),
                Output::Schedule { after, timer } => d.timers.push((after, timer)),
                Output::KeyringRequested { from, query, op } => {
                    d.keyring_requests.push((from, query, op))
                }
                Output::KeyringQueryDone { query, outcome } => {
                    d.keyring_done.push((query, outcome))
                }
                Output::GenerationRaised { generation } => d.generations.push(generation),
            }
        }
        d
    }

    /// The control messages sent, opened with `keyring`, with where they went.
    pub(crate) fn controls(&self, keyring: &Keyring) -> Vec<(SocketAddr, Kind)> {
        self.sends
            .iter()
            .filter_map(|(to, d)| Some((*to, control_in(keyring, d)?)))
            .collect()
    }
}

/// A datagram one core sent, as the network saw it.
#[derive(Clone)]
pub(crate) struct Packet {
    pub from: usize,
    pub to: SocketAddr,
    /// The member at `to`, if any.
    pub dst: Option<usize>,
    /// First byte of the opened payload, if the receiver's keyring opens it.
    pub tag: Option<u8>,
    /// The opened payload (empty if it does not open).
    pub payload: Vec<u8>,
    pub control: Option<Kind>,
    pub datagram: Bytes,
    pub lost: bool,
}

/// Decides whether the network loses a packet (`true`: lost).
pub(crate) type LossRule = Box<dyn FnMut(&Packet) -> bool>;

/// Cores `0..n` on an instant network in virtual time.
pub(crate) struct Net {
    pub cores: Vec<MeshCore>,
    /// Virtual milliseconds since the start.
    pub now_ms: u64,
    in_flight: VecDeque<Packet>,
    /// (due, order, core, timer)
    timers: Vec<(u64, u64, usize, CoreTimer)>,
    order: u64,
    /// Every packet sent, delivered or lost, in order.
    pub log: Vec<Packet>,
    /// Every timer scheduled: (when, core, timer).
    pub scheduled: Vec<(u64, usize, CoreTimer)>,
    /// Keyring queries finished: (core, outcome), in order.
    pub keyring_done: Vec<(usize, KeyringOutcome)>,
    /// Generations raised at runtime: (core, generation), in order.
    pub generations: Vec<(usize, u32)>,
    /// Pairs of members that cannot reach each other (both ways).
    cut: HashSet<(usize, usize)>,
    /// Extra loss, decided per packet.
    pub lose: Option<LossRule>,
    /// How far every member's wall clock has been stepped (NTP), in milliseconds.
    pub wall_step_ms: i64,
    /// Datagrams arrive from their sender's address as an IPv4-mapped IPv6 address, as
    /// a dual-stack socket reports them.
    pub mapped_sources: bool,
}

impl Net {
    /// `n` members sealed with key 1, each seeded with member 0; started, nothing
    /// delivered yet.
    pub(crate) fn new(n: usize, settings: MeshSettings) -> Net {
        let cores = (0..n)
            .map(|i| {
                let seeds = if i == 0 { Vec::new() } else { vec![addr(0)] };
                core(i, keyring(1), settings.clone(), seeds)
            })
            .collect();
        Net::with_cores(cores)
    }

    /// Starts the given cores (member `i` must be at `addr(i)`).
    pub(crate) fn with_cores(cores: Vec<MeshCore>) -> Net {
        let mut net = Net {
            cores,
            now_ms: 0,
            in_flight: VecDeque::new(),
            timers: Vec::new(),
            order: 0,
            log: Vec::new(),
            scheduled: Vec::new(),
            keyring_done: Vec::new(),
            generations: Vec::new(),
            cut: HashSet::new(),
            lose: None,
            wall_step_ms: 0,
            mapped_sources: false,
        };
        for i in 0..net.cores.len() {
            let now = net.now();
            net.cores[i].start(now);
            net.collect(i);
        }
        net
    }

    /// `n` members that have joined and agree on who is in the mesh.
    pub(crate) fn joined(n: usize, settings: MeshSettings) -> Net {
        let mut net = Net::new(n, settings);
        net.run_for(Duration::from_secs(5));
        for i in 0..n {
            assert_eq!(
                net.cores[i].alive_members(),
                n - 1,
                "member {i} has not joined"
            );
        }
        net
    }

    pub(crate) fn unix_ms(&self) -> u64 {
        EPOCH_MS + self.now_ms
    }

    /// The clocks the cores are given now: virtual time, and the wall clock (see [`at`])
    /// moved by `wall_step_ms`.
    pub(crate) fn now(&self) -> Now {
        Now {
            mono_ms: self.now_ms,
            unix_ms: self.unix_ms().saturating_add_signed(self.wall_step_ms),
        }
    }

    pub(crate) fn cut(&mut self, a: usize, b: usize, on: bool) {
        let pair = (a.min(b), a.max(b));
        if on {
            self.cut.insert(pair);
        } else {
            self.cut.remove(&pair);
        }
    }

    /// Routes what core `i` produced. A keyring change asked of it is applied as the
    /// driver would, and answered.
    pub(crate) fn collect(&mut self, i: usize) {
        loop {
            let outputs: Vec<Output> = self.cores[i].drain_outputs().collect();
            if outputs.is_empty() {
                return;
            }
            for o in outputs {
                match o {
                    Output::Send { to, datagram } => {
                        let dst = (0..self.cores.len()).find(|&j| addr(j) == to);
                        // Opened as the receiver would, or as the sender can when no
                        // member is there.
                        let ring = self.cores[dst.unwrap_or(i)].keyring();
                        let payload = ring.open(&datagram).map(|o| o.payload).unwrap_or_default();
                        let tag = payload.first().copied();
                        let control = control_in(ring, &datagram);
                        self.in_flight.push_back(Packet {
                            from: i,
                            to,
                            dst,
                            tag,
                            payload,
                            control,
                            datagram,
                            lost: false,
                        });
                    }
                    Output::Schedule { after, timer } => {
                        let due = self.now_ms + after.as_millis() as u64;
                        self.order += 1;
                        self.scheduled.push((due, i, timer.clone()));
                        self.timers.push((due, self.order, i, timer));
                    }
                    Output::KeyringRequested { from, query, op } => {
                        let now = self.now();
                        let core = &mut self.cores[i];
                        let error = op
                            .apply_as_asked(core.keyring_mut())
                            .err()
                            .map(|e| e.to_string())
                            .unwrap_or_default();
                        core.answer_keyring(from, query, error, now);
                    }
                    Output::KeyringQueryDone { outcome, .. } => {
                        self.keyring_done.push((i, outcome))
                    }
                    Output::GenerationRaised { generation } => {
                        self.generations.push((i, generation))
                    }
                }
            }
        }
    }

    /// Delivers every datagram in flight, and what they cause, until the network is quiet.
    pub(crate) fn deliver_all(&mut self) {
        let mut budget = 1_000_000;
        while let Some(mut p) = self.in_flight.pop_front() {
            budget -= 1;
            assert!(budget > 0, "the mesh never goes quiet");
            let cut = p
                .dst
                .is_some_and(|d| self.cut.contains(&(p.from.min(d), p.from.max(d))));
            p.lost = p.dst.is_none() || cut || self.lose.as_mut().is_some_and(|l| l(&p));
            self.log.push(p.clone());
            if p.lost {
                continue;
            }
            let Some(d) = p.dst else { continue };
            let now = self.now();
            let from = match addr(p.from) {
                SocketAddr::V4(a) if self.mapped_sources => {
                    SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
                }
                a => a,
            };
            self.cores[d].handle_datagram(from, &p.datagram, now);
            self.collect(d);
        }
    }

    /// Fires core `i`'s timer now, as if it were due, and delivers what follows.
    pub(crate) fn fire(&mut self, i: usize, timer: CoreTimer) {
        let now = self.now();
        self.cores[i].handle_timer(timer, now);
        self.collect(i);
        self.deliver_all();
    }

    /// Runs every timer due within the next `d`, delivering datagrams as they are sent.
    pub(crate) fn run_for(&mut self, d: Duration) {
        let until = self.now_ms + d.as_millis() as u64;
        self.deliver_all();
        loop {
            let next = self
                .timers
                .iter()
                .enumerate()
                .filter(|(_, t)| t.0 <= until)
                .min_by_key(|(_, t)| (t.0, t.1))
                .map(|(k, _)| k);
            let Some(k) = next else { break };
            let (due, _, i, timer) = self.timers.swap_remove(k);
            self.now_ms = due;
            self.fire(i, timer);
        }
        self.now_ms = until;
    }

    /// The packets sent since log index `since` that match.
    pub(crate) fn sent_since(&self, since: usize, f: impl Fn(&Packet) -> bool) -> Vec<&Packet> {
        self.log[since..].iter().filter(|p| f(p)).collect()
    }

    /// Whether core `i` holds member `origin`'s NodeRecord.
    pub(crate) fn holds_node_record(&self, i: usize, origin: usize) -> bool {
        self.cores[i].with_store(|s| s.node(node(origin)).is_some())
    }
}
