//! What signing costs per record (ADR 0032): sign on publish, verify on receipt.
//!
//! Measured on the 2-core development machine shared with other builds (bench profile,
//! ed25519-dalek 2 with `fast`), a 445-byte signed NodeRecord with 3 transits: sign
//! 26.7 µs, verify 67.7 µs (strict verification, both ends under load), decode alone
//! 2.2 µs. Run with `cargo bench -p gatewan-mesh --bench signing`.

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use gatewan_mesh::MemberKey;
use gatewan_mesh::store::{decode_record, sign_record, verify_record};
use gatewan_proto::v1::{self, record::Body};

fn node_record() -> v1::Record {
    v1::Record {
        origin: Bytes::copy_from_slice(&[7; 16]),
        version: 1_750_000_000_000_000,
        body: Some(Body::Node(v1::NodeRecord {
            id: Bytes::copy_from_slice(&[7; 16]),
            name: "gw-par1-a".into(),
            datacenter: "par1".into(),
            role: v1::Role::Gatewan as i32,
            api_address: "10.1.255.11:7947".into(),
            transits: (0..3)
                .map(|i| v1::Transit {
                    name: format!("transit{i}"),
                    addresses: vec![format!("198.51.100.{i}"), format!("2001:db8::{i}")],
                    capacity_bps: 10_000_000_000,
                    interface: format!("eth{i}"),
                    cost: 10,
                    position: None,
                    drained: false,
                })
                .collect(),
            wireguard_public_key: Bytes::copy_from_slice(&[9; 32]),
            vtep: "10.1.0.11".into(),
            mesh_addresses: (0..3).map(|i| format!("198.51.100.{i}:7946")).collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let key = MemberKey::from_seed([1; 32]);
    let record = node_record();
    let signed = sign_record(&record, &key).expect("valid record");
    eprintln!("signed NodeRecord: {} bytes", signed.bytes.len());
    c.bench_function("sign_record (NodeRecord, 3 transits)", |b| {
        b.iter(|| sign_record(std::hint::black_box(&record), &key))
    });
    c.bench_function("verify_record (NodeRecord, 3 transits)", |b| {
        b.iter(|| verify_record(std::hint::black_box(&signed.bytes)))
    });
    c.bench_function("decode_record, no signature check (baseline)", |b| {
        b.iter(|| decode_record(std::hint::black_box(&signed.bytes)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
