//! Property test of the UPDATE receive path (framing, decoding, RFC 7606 handling): random
//! and mutated messages never panic, and whatever is accepted is self-consistent.

use bgpctl::bgp::codec::{ExportContext, announce_updates, end_of_rib, withdraw_updates};
use bgpctl::bgp::inbound::{ReceiveContext, process_update_message};
use bgpctl::bgp::{RouteTarget, Type5Route};
use proptest::prelude::*;

static CORPUS: std::sync::LazyLock<Vec<Vec<u8>>> = std::sync::LazyLock::new(corpus);

fn corpus() -> Vec<Vec<u8>> {
    let mut routes = Vec::new();
    for i in 0..30u32 {
        routes.push(Type5Route {
            rd: format!("65001:{}", i % 3).parse().unwrap(),
            prefix: if i % 4 == 0 {
                format!("2001:db8:{i:x}::/48").parse().unwrap()
            } else {
                format!("10.{i}.0.0/16").parse().unwrap()
            },
            label_vni: 10_000 + i,
            next_hop: if i % 5 == 0 {
                "2001:db8::1".parse().unwrap()
            } else {
                "192.0.2.1".parse().unwrap()
            },
            router_mac: [2, 0, 0, 0, 0, (i % 2) as u8],
            route_targets: vec![RouteTarget::As2 {
                asn: 65000,
                value: 100 + i % 2,
            }],
            link_bandwidth: (i % 3 == 0).then_some(1_000_000_000),
        });
    }
    let refs: Vec<&Type5Route> = routes.iter().collect();
    let mut out = Vec::new();
    for ibgp in [false, true] {
        let ctx = ExportContext {
            local_asn: 65001,
            ibgp,
            four_octet_as: true,
        };
        out.extend(announce_updates(&refs, &ctx).iter().map(|b| b.to_vec()));
    }
    out.extend(withdraw_updates(&refs).iter().map(|b| b.to_vec()));
    out.push(end_of_rib().to_vec());
    out
}

fn ctx(ibgp: bool, four: bool) -> ReceiveContext {
    ReceiveContext {
        local_asn: if ibgp { 65001 } else { 65000 },
        peer_asn: 65001,
        ibgp,
        four_octet_as: four,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn mutated_updates_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        fix_length in any::<bool>(),
        ibgp in any::<bool>(),
        four in any::<bool>(),
    ) {
        let mut m = pick.get(&CORPUS).clone();
        for (at, b) in edits {
            let i = 19 + at.index(m.len() - 19);
            m[i] = b;
        }
        let len = 19 + cut.index(m.len() - 18);
        m.truncate(len);
        if fix_length {
            let l = m.len() as u16;
            m[16..18].copy_from_slice(&l.to_be_bytes());
        }
        if let Ok(out) = process_update_message(&m, 4096, &ctx(ibgp, four)) {
            // Treat-as-withdraw never announces.
            prop_assert!(!out.treat_as_withdraw || out.announced.is_empty());
            for a in &out.announced {
                prop_assert_eq!(a.route.prefix, a.route.prefix.trunc());
            }
        }
    }

    #[test]
    fn random_bodies_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..600),
        ibgp in any::<bool>(),
    ) {
        let mut m = vec![0xff; 16];
        m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        m.push(2);
        m.extend_from_slice(&body);
        let _ = process_update_message(&m, 65535, &ctx(ibgp, true));
    }
}
