//! Fuzz bench of issue 15: mutated datagrams that pass authentication, fed to a mesh core.
//!
//! Three cores run a small mesh in virtual time (joins, NodeRecords, anti-entropy, probes)
//! and every datagram they exchange is opened and kept: SWIM messages, control messages,
//! records. Then each of `MESH_FUZZ_N` (1,000,000 by default) datagrams is one of those
//! payloads mutated (bit flips, byte overwrites, truncation, insertion, duplication of a
//! slice, splices of two payloads, boundary numbers written into varints), sealed with the
//! mesh keyring as a key holder would, and handed to the third core.
//!
//! It asserts that nothing panics, and that a datagram the core drops (`invalid`,
//! `malformed`, or a signature check: `bad_signature`, `forged`, `revoked`; SWIM packets
//! are signed too, ADR 0041) changes neither the state store (its hash) nor the membership
//! (every member's identity, state and incarnation). Datagrams the core accepts may change state: they are counted. It prints
//! the figures and datagrams per second (wall-clock time of this machine).
//!
//! Run: `cargo bench -p gatewan-mesh --bench mesh_fuzz` (`MESH_FUZZ_N=20000` for a smoke
//! test).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatewan_mesh::core::{Now, Output, TAG_CONTROL, TAG_SWIM};
use gatewan_mesh::signing::{DOMAIN_SWIM, TRAILER_BYTES};
use gatewan_mesh::{
    DropReason, Keyring, MemberId, MemberKey, MeshCore, MeshKey, MeshSettings, NodeId,
};
use gatewan_proto::v1::{self, record::Body};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};

const EPOCH_MS: u64 = 1_750_000_000_000;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 7946)
}

fn member_key(i: usize) -> MemberKey {
    MemberKey::from_seed([i as u8 + 1; 32])
}

fn clocks(mono_ms: u64) -> Now {
    Now {
        mono_ms,
        unix_ms: EPOCH_MS + mono_ms,
    }
}

/// Three cores on an instant network; every opened payload they sent is kept.
struct Mesh {
    cores: Vec<MeshCore>,
    keyring: Keyring,
    now_ms: u64,
    in_flight: VecDeque<(usize, SocketAddr, Bytes)>,
    timers: Vec<(u64, usize, gatewan_mesh::core::CoreTimer)>,
    corpus: Vec<Vec<u8>>,
}

impl Mesh {
    fn new(n: usize) -> Mesh {
        let keyring = Keyring::new(MeshKey::from_bytes(&[7; 32]).expect("32 bytes"));
        let cores = (0..n)
            .map(|i| {
                let id = MemberId {
                    node: NodeId([i as u8 + 1; 16]),
                    generation: 1,
                    addrs: vec![addr(i)],
                };
                let seeds = if i == 0 { vec![] } else { vec![addr(0)] };
                let mut c = MeshCore::new(
                    id,
                    // Fixed per member, so runs are reproducible; records are signed, so
                    // mutated records also meet the signature check.
                    member_key(i),
                    gatewan_mesh::KeyPins::default(),
                    keyring.clone(),
                    MeshSettings::default(),
                    seeds,
                    [i as u8; 32],
                )
                .expect("valid settings");
                c.publish(
                    Body::Node(v1::NodeRecord {
                        id: Bytes::copy_from_slice(&[i as u8 + 1; 16]),
                        name: format!("m{i}"),
                        datacenter: format!("dc{}", i % 2),
                        version: "fuzz".into(),
                        mesh_addresses: vec![addr(i).to_string()],
                        ..Default::default()
                    }),
                    clocks(0),
                )
                .expect("valid record");
                c
            })
            .collect();
        let mut mesh = Mesh {
            cores,
            keyring,
            now_ms: 0,
            in_flight: VecDeque::new(),
            timers: Vec::new(),
            corpus: Vec::new(),
        };
        for i in 0..n {
            mesh.cores[i].start(clocks(0));
            mesh.collect(i);
        }
        mesh
    }

    fn collect(&mut self, i: usize) {
        let outputs: Vec<Output> = self.cores[i].drain_outputs().collect();
        for o in outputs {
            match o {
                Output::Send { to, datagram } => {
                    if let Ok(opened) = self.keyring.open(&datagram) {
                        self.corpus.push(opened.payload);
                    }
                    if let Some(dst) = (0..self.cores.len()).find(|&j| addr(j) == to) {
                        self.in_flight.push_back((dst, addr(i), datagram));
                    }
                }
                Output::Schedule { after, timer } => {
                    self.timers
                        .push((self.now_ms + after.as_millis() as u64, i, timer));
                }
                _ => {}
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.now_ms + d.as_millis() as u64;
        loop {
            while let Some((dst, from, datagram)) = self.in_flight.pop_front() {
                self.cores[dst].handle_datagram(from, &datagram, clocks(self.now_ms));
                self.collect(dst);
            }
            let Some(k) = (0..self.timers.len()).min_by_key(|&k| self.timers[k].0) else {
                break;
            };
            if self.timers[k].0 > until {
                break;
            }
            let (due, i, timer) = self.timers.swap_remove(k);
            self.now_ms = self.now_ms.max(due);
            self.cores[i].handle_timer(timer, clocks(self.now_ms));
            self.collect(i);
        }
        self.now_ms = until;
    }
}

/// What must not change when a datagram is refused.
fn state_of(core: &MeshCore) -> (u128, Vec<(MemberId, gatewan_mesh::MemberState, u16)>) {
    let hash = core.with_store(|s| s.state_hash());
    let members = core
        .members()
        .into_iter()
        .map(|m| (m.id, m.state, m.incarnation))
        .collect();
    (hash, members)
}

/// Writes a protobuf varint of `v` at `at` (overwriting what is there), as a mutation
/// that lands boundary numbers in fields.
fn put_varint(buf: &mut Vec<u8>, at: usize, mut v: u64) {
    let mut bytes = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            bytes.push(b);
            break;
        }
        bytes.push(b | 0x80);
    }
    let end = (at + bytes.len()).min(buf.len());
    buf.splice(at..end, bytes);
}

/// Mutates a corpus payload into `out`. A SWIM packet is mutated without its signature
/// and signed again by `insiders[..]` (ADR 0041): a member of the mesh can sign any
/// garbage with its own key, so the parsers behind the signature check meet it too.
/// Signed by the key of another member than its header names, it is a forgery.
fn mutate(rng: &mut StdRng, corpus: &[Vec<u8>], insiders: &[MemberKey], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&corpus[rng.random_range(0..corpus.len())]);
    let resign = out.first() == Some(&TAG_SWIM) && out.len() > 1 + TRAILER_BYTES;
    if resign {
        out.truncate(out.len() - TRAILER_BYTES);
    }
    for _ in 0..rng.random_range(1..=4) {
        if out.len() < 2 {
            out.push(rng.random());
            continue;
        }
        // Never the tag byte alone: keep mutating the message behind it too.
        let at = rng.random_range(1..out.len());
        match rng.random_range(0..8u8) {
            0 => out[at] ^= 1 << rng.random_range(0..8),
            1 => out[at] = rng.random(),
            2 => out.truncate(at),
            3 => {
                let n = rng.random_range(1..16);
                let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                out.splice(at..at, junk);
            }
            4 => {
                let end = rng.random_range(at..=out.len());
                let slice = out[at..end].to_vec();
                out.splice(at..at, slice);
            }
            5 => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                if other.len() > 1 {
                    let from = rng.random_range(1..other.len());
                    out.truncate(at);
                    out.extend_from_slice(&other[from..]);
                }
            }
            6 => {
                let v = [
                    0,
                    1,
                    u64::from(u16::MAX),
                    u64::from(u16::MAX) + 1,
                    u64::from(u32::MAX),
                    u64::MAX,
                    u64::MAX - 1,
                    (EPOCH_MS + 10 * 3_600_000) * 1000,
                ][rng.random_range(0..8)];
                put_varint(out, at, v);
            }
            _ => out[0] = [TAG_SWIM, TAG_CONTROL, rng.random()][rng.random_range(0..3)],
        }
    }
    if resign && out.first() == Some(&TAG_SWIM) {
        let key = &insiders[rng.random_range(0..insiders.len())];
        let signed = key.sign(DOMAIN_SWIM, &out[1..]);
        out.truncate(1);
        out.extend(signed);
    }
}

/// Drop reasons a datagram can meet here: the parsers', the signature checks of ADR
/// 0032 and 0041 (of a whole SWIM packet or control message, or of one record), and a
/// tag or control message of a kind this version does not know (ADR 0046).
const REFUSALS: [DropReason; 6] = [
    DropReason::Invalid,
    DropReason::Malformed,
    DropReason::BadSignature,
    DropReason::Forged,
    DropReason::Revoked,
    DropReason::UnknownKind,
];

fn main() {
    let n: u64 = std::env::var("MESH_FUZZ_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut mesh = Mesh::new(3);
    mesh.run_for(Duration::from_secs(30));
    for i in 0..3 {
        assert_eq!(mesh.cores[i].alive_members(), 2, "member {i} joined");
    }
    let corpus = std::mem::take(&mut mesh.corpus);
    let swim = corpus
        .iter()
        .filter(|p| p.first() == Some(&TAG_SWIM))
        .count();
    println!(
        "corpus: {} payloads ({swim} SWIM, {} control) from 30 s of a 3-member mesh",
        corpus.len(),
        corpus.len() - swim
    );

    let keyring = mesh.keyring.clone();
    let insiders: Vec<MemberKey> = (0..2).map(member_key).collect();
    let mut target = mesh.cores.pop().expect("three cores");
    let mut rng = StdRng::seed_from_u64(15);
    let from = addr(1);
    let mut buf = Vec::with_capacity(1500);
    let (mut refused, mut accepted, mut too_large) = (0u64, 0u64, 0u64);
    let mut by_reason = [0u64; REFUSALS.len()];
    let mut swim_refused = 0u64;
    let started = Instant::now();
    // A wall clock that moves a millisecond per datagram, so the replay window and the
    // rate limit see a plausible flow; the rate limiter is per source, so sources rotate.
    for k in 0..n {
        mutate(&mut rng, &corpus, &insiders, &mut buf);
        let now = clocks(mesh.now_ms + k / 8);
        let nonce: [u8; 24] = rng.random();
        let datagram = keyring.seal(&buf, now.unix_ms, nonce);
        let src = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + (k % 4000) as u32)),
            from.port(),
        );
        let before_state = state_of(&target);
        let before = target.counters();
        target.handle_datagram(src, &datagram, now);
        let _ = target.drain_outputs().count();
        let after = target.counters();
        let dropped = |r: DropReason| after.dropped(r) - before.dropped(r);
        if dropped(DropReason::Malformed) > 0 {
            too_large += 1;
        }
        for (i, &r) in REFUSALS.iter().enumerate() {
            if dropped(r) > 0 {
                by_reason[i] += 1;
            }
        }
        // Refused before anything in it is applied: by a parser, or a SWIM packet whose
        // own signature fails. A signature drop may also be of one record carried by a
        // packet that is otherwise applied: counted by reason, not compared.
        let swim_unsigned = buf.first() == Some(&TAG_SWIM)
            && gatewan_mesh::signing::verify(DOMAIN_SWIM, &buf[1..]).is_err();
        // An unknown kind is a whole datagram here: a record of an unknown kind (kept,
        // also counted so) would need its origin's signature, which mutation breaks.
        let refused_whole = dropped(DropReason::Invalid)
            + dropped(DropReason::Malformed)
            + dropped(DropReason::UnknownKind)
            > 0
            || swim_unsigned;
        if swim_unsigned {
            swim_refused += 1;
        }
        if refused_whole {
            refused += 1;
            assert_eq!(
                state_of(&target),
                before_state,
                "datagram {k} was refused but changed the state: {buf:?}"
            );
        } else {
            accepted += 1;
        }
        assert_eq!(
            dropped(DropReason::RateLimited) + dropped(DropReason::Replay),
            0,
            "the bench must feed the parser, not the gate"
        );
    }
    let took = started.elapsed();
    let c = target.counters();
    println!("datagrams: {n} mutated and sealed with the mesh key, fed in {took:.2?}");
    println!(
        "  {:.0} datagrams/s (state compared before and after each)",
        n as f64 / took.as_secs_f64()
    );
    println!(
        "  refused whole: {refused} (of which {too_large} over max_datagram, {swim_refused} SWIM packets failing their signature), state unchanged for each"
    );
    let reasons: Vec<String> = REFUSALS
        .iter()
        .zip(by_reason)
        .map(|(r, n)| format!("{} {n}", r.as_str()))
        .collect();
    println!(
        "  datagrams with a drop, by reason (whole or one record inside): {}",
        reasons.join(", ")
    );
    println!("  accepted (parsed, possibly applied): {accepted}");
    println!(
        "  records refused: {} invalid, {} ahead of the clock",
        c.records_invalid, c.records_from_future
    );
    println!(
        "  members held at the end: {} (of which alive {})",
        target.members().len() - 1,
        target.alive_members()
    );
}
