//! The speaker against gobgpd 3.x in network namespaces: sessions (eBGP with TCP-MD5 over
//! IPv4, iBGP over IPv6 with the speaker passive), the exact type-5 routes gobgpd receives,
//! minimal UPDATEs when the advertised set changes, and routes gobgpd originates going
//! through the import route-target filter.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use bgpctl::bgp::{PeerSettings, PeerState, SpeakerSettings, Type5Route};
use common::*;

const T: Duration = Duration::from_secs(30);

fn gobgpd_toml(asn: u32, neighbor: &str, peer_as: u32, extra: &str) -> String {
    format!(
        r#"[global.config]
  as = {asn}
  router-id = "10.0.0.2"

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{neighbor}"
    peer-as = {peer_as}
{extra}
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "l2vpn-evpn"
"#
    )
}

fn wait_adj_in(g: &Gobgpd, neighbor: &str, want: &[GobgpRoute]) {
    let mut last = Vec::new();
    let ok = wait_until(T, || {
        last = g.adj_in(neighbor);
        last == want
    });
    assert!(
        ok,
        "gobgp adj-in of {neighbor}:\n got {last:#?}\nwant {want:#?}"
    );
}

#[test]
fn ebgp_md5_ipv4_exact_routes_and_minimal_updates() {
    const TEST: &str = "ebgp_md5_ipv4_exact_routes_and_minimal_updates";
    if !ready(TEST, &["gobgpd", "gobgp"]) {
        return;
    }
    let pair = Pair::new("ebgp-md5");
    let extra = r#"    auth-password = "s3cret-md5"
  [neighbors.transport.config]
    passive-mode = true"#;
    let g = Gobgpd::start(
        &pair.b,
        &pair.dir,
        "gobgpd",
        &gobgpd_toml(65001, A4, 65000, extra),
    );
    let mut peer = PeerSettings::new(B4.parse().unwrap(), 65001);
    peer.password = Some("s3cret-md5".into());
    peer.hold_time = Duration::from_secs(9);
    let speaker = Speaker::start(&pair.a, speaker_settings(peer));

    let r1 = route("65000:1", "10.1.0.0/16", 10100, A4, 1);
    let r2 = route("65000:1", "2001:db8:1::/48", 10100, A4, 1);
    let mut r3 = route("65000:2", "10.2.0.0/24", 10200, A6, 2);
    r3.route_targets.push("65000:200".parse().unwrap());
    r3.link_bandwidth = Some(1_000_000_000);
    speaker
        .handle()
        .set_advertised(vec![r1.clone(), r2.clone(), r3.clone()]);

    speaker.wait_established(B4, T);
    let st = speaker.status(B4);
    assert_eq!(st.hold_time, Some(Duration::from_secs(9)));
    assert_eq!(st.peer_router_id, Some("10.0.0.2".parse().unwrap()));
    let exp = |v: &[&Type5Route]| sorted(v.iter().map(|r| expected(r, false, 65000)).collect());
    wait_adj_in(&g, A4, &exp(&[&r1, &r2, &r3]));
    assert_eq!(g.neighbor_state(A4), "established");
    // r1 and r2 share their attributes: one UPDATE; r3 another; then End-of-RIB.
    let initial = g.updates_received(A4);
    assert_eq!(initial, 3, "initial UPDATEs");
    assert_eq!(speaker.status(B4).prefixes_sent, 3);

    // Withdraw r2, change r1's VNI, add r4 (same attributes as r1), keep r3.
    let mut r1b = r1.clone();
    r1b.label_vni = 10300;
    let r4 = route("65000:1", "10.4.0.0/16", 10100, A4, 1);
    speaker
        .handle()
        .set_advertised(vec![r1b.clone(), r3.clone(), r4.clone()]);
    wait_adj_in(&g, A4, &exp(&[&r1b, &r3, &r4]));
    // Exactly one withdrawal UPDATE (r2) and one UPDATE announcing r1' and r4.
    let ok = wait_until(Duration::from_secs(3), || {
        g.updates_received(A4) == initial + 2
    });
    assert!(
        ok,
        "UPDATEs after the change: {}",
        g.updates_received(A4) - initial
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(g.updates_received(A4), initial + 2);
    assert_eq!(speaker.status(B4).prefixes_sent, 3);

    // The same set again sends nothing.
    speaker
        .handle()
        .set_advertised(vec![r4.clone(), r3.clone(), r1b.clone()]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(g.updates_received(A4), initial + 2);

    speaker.shutdown();
    let ok = wait_until(Duration::from_secs(5), || {
        g.neighbor_state(A4) != "established"
    });
    assert!(ok, "gobgpd still established after shutdown");
    // Administrative shutdown: gobgpd logs the Cease 6/2 it received.
    let ok = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&g.log)
            .unwrap_or_default()
            .contains("code 6(cease) subcode 2(administrative shutdown)")
    });
    assert!(ok, "no Cease seen by gobgpd: {}", g.log_tail());
}

#[test]
fn md5_mismatch_keeps_the_session_down() {
    const TEST: &str = "md5_mismatch_keeps_the_session_down";
    if !ready(TEST, &["gobgpd", "gobgp"]) {
        return;
    }
    let pair = Pair::new("md5-bad");
    let extra = r#"    auth-password = "right"
  [neighbors.transport.config]
    passive-mode = true"#;
    let g = Gobgpd::start(
        &pair.b,
        &pair.dir,
        "gobgpd",
        &gobgpd_toml(65001, A4, 65000, extra),
    );
    let mut peer = PeerSettings::new(B4.parse().unwrap(), 65001);
    peer.password = Some("wrong".into());
    let speaker = Speaker::start(&pair.a, speaker_settings(peer));
    // The SYNs carry the wrong signature: the kernel of gobgpd's side drops them, the
    // connection attempt times out (10 s) and is retried.
    let ok = wait_until(Duration::from_secs(15), || {
        speaker
            .status(B4)
            .last_error
            .is_some_and(|e| e.starts_with("connect"))
    });
    assert!(ok, "{:?}", speaker.status(B4));
    assert_ne!(speaker.state(B4), PeerState::Established);
    assert_ne!(g.neighbor_state(A4), "established");
}

#[test]
fn ibgp_ipv6_passive_and_import_filter() {
    const TEST: &str = "ibgp_ipv6_passive_and_import_filter";
    if !ready(TEST, &["gobgpd", "gobgp"]) {
        return;
    }
    let pair = Pair::new("ibgp-v6");
    let g = Gobgpd::start(
        &pair.b,
        &pair.dir,
        "gobgpd",
        &gobgpd_toml(65000, A6, 65000, ""),
    );
    let mut peer = PeerSettings::new(B6.parse().unwrap(), 65000);
    peer.passive = true;
    peer.hold_time = Duration::from_secs(9);
    let speaker = Speaker::start(
        &pair.a,
        SpeakerSettings {
            listen: Some("[::]:179".parse().unwrap()),
            import_route_targets: vec!["65000:100".parse().unwrap()],
            import_prefixes: Default::default(),
            ..speaker_settings(peer)
        },
    );
    let r1 = route("65000:1", "10.1.0.0/16", 10100, A4, 1);
    let r2 = route("65000:1", "2001:db8:1::/48", 10100, A6, 1);
    speaker
        .handle()
        .set_advertised(vec![r1.clone(), r2.clone()]);
    speaker.wait_established(B6, T);
    wait_adj_in(
        &g,
        A6,
        &sorted(vec![expected(&r1, true, 65000), expected(&r2, true, 65000)]),
    );

    // Routes gobgpd originates; only those with route target 65000:100 are imported.
    let add = |args: &str| {
        let mut a = vec!["global", "rib", "-a", "evpn", "add"];
        a.extend(args.split_whitespace());
        g.cli_ok(&a);
    };
    add(
        "prefix 10.9.0.0/16 esi 0 etag 0 rd 65009:1 rt 65000:100 gw 0.0.0.0 label 10900 encap vxlan router-mac 02:00:00:00:09:01 nexthop 192.0.2.9",
    );
    add(
        "prefix 2001:db8:9::/48 esi 0 etag 0 rd 65009:1 rt 65000:100 65000:300 gw :: label 10901 encap vxlan router-mac 02:00:00:00:09:02 nexthop 192.0.2.9",
    );
    add(
        "prefix 10.99.0.0/16 esi 0 etag 0 rd 65009:1 rt 65000:999 gw 0.0.0.0 label 10999 encap vxlan router-mac 02:00:00:00:09:03 nexthop 192.0.2.9",
    );
    let want = vec![
        Type5Route {
            rd: "65009:1".parse().unwrap(),
            prefix: "10.9.0.0/16".parse().unwrap(),
            label_vni: 10900,
            next_hop: "192.0.2.9".parse().unwrap(),
            router_mac: [2, 0, 0, 0, 9, 1],
            route_targets: vec!["65000:100".parse().unwrap()],
            link_bandwidth: None,
        },
        Type5Route {
            rd: "65009:1".parse().unwrap(),
            prefix: "2001:db8:9::/48".parse().unwrap(),
            label_vni: 10901,
            next_hop: "192.0.2.9".parse().unwrap(),
            router_mac: [2, 0, 0, 0, 9, 2],
            route_targets: vec!["65000:100".parse().unwrap(), "65000:300".parse().unwrap()],
            link_bandwidth: None,
        },
    ];
    let peer_ip: IpAddr = B6.parse().unwrap();
    let mut got = Vec::new();
    let ok = wait_until(T, || {
        let rx = speaker.received();
        got = rx.routes.clone();
        let mut routes: Vec<Type5Route> = rx.iter().map(|r| r.route.clone()).collect();
        for r in &mut routes {
            r.route_targets.sort();
        }
        routes == want
    });
    assert!(ok, "received {got:#?}");
    assert!(
        got.iter()
            .all(|r| r.peer == peer_ip && !r.stale && r.ethernet_tag == 0)
    );
    let st = speaker.status(B6);
    assert_eq!(st.prefixes_received, 2);
    assert_eq!(st.input.routes_filtered, 1);

    // A withdrawal at gobgpd removes the route.
    g.cli_ok(&[
        "global",
        "rib",
        "-a",
        "evpn",
        "del",
        "prefix",
        "10.9.0.0/16",
        "esi",
        "0",
        "etag",
        "0",
        "rd",
        "65009:1",
    ]);
    let ok = wait_until(T, || {
        speaker
            .received()
            .iter()
            .map(|r| r.route.prefix.to_string())
            .collect::<Vec<_>>()
            == vec!["2001:db8:9::/48".to_string()]
    });
    assert!(ok, "withdrawal not applied: {:#?}", speaker.received());
    assert_eq!(speaker.status(B6).prefixes_received, 1);
}
