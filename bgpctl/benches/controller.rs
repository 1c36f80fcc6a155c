//! The controller at the scale of the issue: 50 datacenters × 4 gatewans × 3 transits,
//! pairing `all`. From one datacenter that is 4 local gatewans × 196 remote gatewans × 9
//! transit pairs = 7,056 candidate tunnels toward 49 remote datacenters.
//!
//! Targets: full decision ≤ 5 ms; incremental update after one metric change ≤ 0.5 ms.
//! Run: `cargo bench -p bgpctl --bench controller`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bgpctl::controller::{Controller, Measurements, Policy, RequiredCapacity, Snapshot, TunnelId};
use criterion::{BatchSize, Criterion};
use gatewan_mesh::NodeId;
use gatewan_mesh::store::{StateStore, encode_record};
use gatewan_proto::v1::{self, TunnelState, record::Body};
use gatewan_tunnel_plan::{GatewanView, PlanSettings, TransitView, plan};

const DATACENTERS: u32 = 50;
const GATEWANS: u32 = 4;
const TRANSITS: [&str; 3] = ["lumen", "cogent", "telia"];
const G: u64 = 1_000_000_000;

fn id_of(slot: u32) -> NodeId {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&slot.to_be_bytes());
    b[15] = 0x5d;
    NodeId(b)
}

fn dc_of(slot: u32) -> String {
    format!("dc{:02}", slot / GATEWANS)
}

fn address(slot: u32, t: usize) -> String {
    format!("2001:db8:{slot:x}:{t}::1")
}

/// A deterministic spread of values, so every run measures the same mesh.
fn mix(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

fn metric(id: &[u8; 16], i: u64) -> v1::TunnelMetric {
    let h = mix(u64::from_be_bytes(id[..8].try_into().expect("8 bytes")) ^ i);
    let busy = (h >> 4).is_multiple_of(50);
    let state = match h % 40 {
        0 => TunnelState::Down,
        1 => TunnelState::Degraded,
        _ => TunnelState::Established,
    };
    v1::TunnelMetric {
        id: id.to_vec().into(),
        state: state as i32,
        loss_ppm: (h >> 8) as u32 % 5_000,
        latency_us: 5_000 + (h >> 16) as u32 % 250_000 / 100 * 100,
        jitter_us: (h >> 32) as u32 % 5_000 / 100 * 100,
        reorder_ppm: 0,
        // Traffic flows only where bgpctl steers it: about one tunnel in fifty.
        rx_bps: if busy {
            (h >> 40) % 1_000 * 1_000_000
        } else {
            0
        },
        tx_bps: if busy {
            (h >> 44) % 1_000 * 1_000_000
        } else {
            0
        },
        capacity_bps: 10 * G,
        vtep: String::new(),
    }
}

/// The mesh state store as a bgpctl of dc00 holds it.
fn store() -> StateStore {
    let mut store = StateStore::default();
    let slots = DATACENTERS * GATEWANS;
    let mut views = Vec::new();
    for slot in 0..slots {
        let id = id_of(slot);
        let record = v1::Record {
            origin: id.0.to_vec().into(),
            version: 1,
            body: Some(Body::Node(v1::NodeRecord {
                id: id.0.to_vec().into(),
                name: format!("gatewan{:02}-{}", slot % GATEWANS + 1, dc_of(slot)),
                datacenter: dc_of(slot),
                role: v1::Role::Gatewan as i32,
                transits: TRANSITS
                    .iter()
                    .enumerate()
                    .map(|(i, t)| v1::Transit {
                        name: t.to_string(),
                        addresses: vec![address(slot, i)],
                        capacity_bps: 10 * G,
                        interface: format!("eth{i}"),
                        cost: i as u32,
                        position: Some(i as u32),
                        drained: false,
                    })
                    .collect(),
                wireguard_public_key: vec![1u8; 32].into(),
                vtep: format!("10.{}.0.{}", slot / GATEWANS, slot % GATEWANS + 1),
                tunnel_slot: Some(slot),
                ..Default::default()
            })),
            ..Default::default()
        };
        store.merge(encode_record(&record).expect("valid node record"));
        views.push(GatewanView {
            id,
            name: String::new(),
            datacenter: dc_of(slot),
            slot,
            slot_claimed_ms: 0,
            slot_pinned: false,
            transits: TRANSITS
                .iter()
                .enumerate()
                .map(|(i, t)| TransitView {
                    name: t.to_string(),
                    addresses: vec![address(slot, i).parse().expect("address")],
                    position: i as u32,
                })
                .collect(),
            public_key: Vec::new(),
        });
    }
    // Each local gatewan gossips one TunnelMetrics record per peer, as the gatewans do.
    for local in views.iter().filter(|v| v.datacenter == "dc00") {
        let (planned, problems) = plan(local, &views, &PlanSettings::default());
        assert!(problems.is_empty(), "{problems:?}");
        let mut by_peer: std::collections::BTreeMap<NodeId, Vec<v1::TunnelMetric>> =
            Default::default();
        for t in &planned {
            let id = TunnelId::parse(&t.id).expect("uuid");
            by_peer
                .entry(t.peer.node)
                .or_default()
                .push(metric(&id.0, 0));
        }
        for (peer, tunnels) in by_peer {
            let record = v1::Record {
                origin: local.id.0.to_vec().into(),
                version: 2,
                body: Some(Body::TunnelMetrics(v1::TunnelMetrics {
                    peer: peer.0.to_vec().into(),
                    tunnels,
                })),
                ..Default::default()
            };
            store.merge(encode_record(&record).expect("valid metrics record"));
        }
    }
    store
}

fn policy() -> Policy {
    Policy {
        required_capacity: RequiredCapacity {
            default_bps: 25 * G,
            ..RequiredCapacity::default()
        },
        link_bandwidth: true,
        ..Policy::default()
    }
}

/// Two latencies within the margin of each other: the choice stays, only the one
/// datacenter is recomputed.
fn nudge(s: &mut Snapshot, id: TunnelId, i: u64) {
    let mut m: Measurements = s.tunnel(id).expect("tunnel").measurements;
    m.latency_us = if i.is_multiple_of(2) { 40_000 } else { 40_100 };
    s.set_measurements(id, m);
}

/// A usage change of one tunnel that stays within 1 % of its interface.
fn nudge_usage(s: &mut Snapshot, id: TunnelId, i: u64) {
    let mut m: Measurements = s.tunnel(id).expect("tunnel").measurements;
    m.rx_bps = if i.is_multiple_of(2) {
        10_000_000
    } else {
        10_100_000
    };
    s.set_measurements(id, m);
}

fn setup() -> (Snapshot, TunnelId) {
    let store = store();
    let snapshot = Snapshot::from_store("dc00", &store, |_| true);
    assert_eq!(snapshot.tunnels().count(), 4 * 196 * 9);
    assert!(snapshot.ignored().is_empty());
    let target = snapshot
        .tunnels()
        .find(|t| t.measurements.state == TunnelState::Established)
        .expect("an established tunnel")
        .id;
    (snapshot, target)
}

fn benches(c: &mut Criterion) {
    let store = store();
    let (snapshot, target) = setup();
    let p = policy();

    c.bench_function("controller/snapshot_from_store (7,056 tunnels)", |b| {
        b.iter(|| Snapshot::from_store("dc00", black_box(&store), |_| true))
    });
    c.bench_function("controller/full_decision (49 datacenters)", |b| {
        b.iter_batched(
            || Controller::new(p.clone()),
            // The controller is returned so that dropping it is not measured.
            |mut ctl| {
                let out = ctl.decide(black_box(&snapshot), 0);
                (ctl, out)
            },
            BatchSize::SmallInput,
        )
    });
    let mut s = snapshot.clone();
    let mut ctl = Controller::new(p.clone());
    ctl.decide(&s, 0);
    let mut i = 0u64;
    c.bench_function("controller/incremental_latency_change", |b| {
        b.iter(|| {
            i += 1;
            nudge(&mut s, target, i);
            ctl.decide(black_box(&s), i * 1000)
        })
    });
    c.bench_function("controller/incremental_usage_change", |b| {
        b.iter(|| {
            i += 1;
            nudge_usage(&mut s, target, i);
            ctl.decide(black_box(&s), i * 1000)
        })
    });
}

/// Median of `n` timed runs.
fn median(n: usize, mut f: impl FnMut() -> Duration) -> Duration {
    let mut v: Vec<Duration> = (0..n).map(|_| f()).collect();
    v.sort();
    v[n / 2]
}

fn summary() {
    let (snapshot, target) = setup();
    let p = policy();
    let full = median(51, || {
        let mut ctl = Controller::new(p.clone());
        let t = Instant::now();
        black_box(ctl.decide(&snapshot, 0));
        t.elapsed()
    });
    let mut s = snapshot.clone();
    let mut ctl = Controller::new(p.clone());
    let (d, _) = ctl.decide(&s, 0);
    let chosen: usize = d.remotes.iter().map(|r| r.tunnels.len()).sum();
    let short = d.remotes.iter().filter(|r| r.shortfall_bps > 0).count();
    let mut i = 0;
    let incremental = median(501, || {
        i += 1;
        let t = Instant::now();
        nudge(&mut s, target, i);
        black_box(ctl.decide(&s, i * 1000));
        t.elapsed()
    });
    let usage = median(501, || {
        i += 1;
        let t = Instant::now();
        nudge_usage(&mut s, target, i);
        black_box(ctl.decide(&s, i * 1000));
        t.elapsed()
    });
    let mark = |d: Duration, target: Duration| if d <= target { "ok" } else { "MISSED" };
    println!();
    println!(
        "controller, {} candidate tunnels, 49 remote datacenters, {chosen} chosen, {short} short of capacity:",
        snapshot.tunnels().count()
    );
    println!(
        "  full decision:                    {:>9.3} ms  (target ≤ 5 ms: {})",
        full.as_secs_f64() * 1e3,
        mark(full, Duration::from_millis(5))
    );
    println!(
        "  incremental, one latency change:  {:>9.3} ms  (target ≤ 0.5 ms: {})",
        incremental.as_secs_f64() * 1e3,
        mark(incremental, Duration::from_micros(500))
    );
    println!(
        "  incremental, one usage change:    {:>9.3} ms  (target ≤ 0.5 ms: {})",
        usage.as_secs_f64() * 1e3,
        mark(usage, Duration::from_micros(500))
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    summary();
}
