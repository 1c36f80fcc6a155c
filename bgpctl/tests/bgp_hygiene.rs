//! Route hygiene against real sessions in network namespaces: a fabric that announces a
//! default route and a leaked table gets neither past the import policy, and a peer
//! beyond its `max_prefixes` is held to it (stop-learning) or torn down with Cease /
//! Maximum Number of Prefixes Reached (gobgpd as the peer).

mod common;

use std::time::Duration;

use bgpctl::bgp::{
    ImportPrefixes, MaxPrefixAction, MaxPrefixes, PeerSettings, PeerState, PrefixRule,
    SpeakerSettings, Type5Route,
};
use common::*;

const T: Duration = Duration::from_secs(60);

/// Resident memory of this process (both speakers of the test), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The stand-in fabric in namespace `b`: a second speaker, passive toward A4, that
/// announces `routes` (as a leaf or route reflector would).
fn fabric(pair: &Pair, routes: Vec<Type5Route>) -> Speaker {
    let mut peer = PeerSettings::new(A4.parse().unwrap(), 65000);
    peer.passive = true;
    let f = Speaker::start(
        &pair.b,
        SpeakerSettings {
            asn: 65000,
            router_id: B4.parse().unwrap(),
            listen: Some("0.0.0.0:179".parse().unwrap()),
            peers: vec![peer],
            graceful_restart: None,
            import_route_targets: vec![],
            import_prefixes: Default::default(),
        },
    );
    f.handle().set_advertised(routes);
    f
}

/// 0.0.0.0/0 and `n` host routes in 172.16.0.0/12, outside any sane allow-list.
fn leak(n: u32) -> Vec<Type5Route> {
    let mut v = vec![route("65001:1", "0.0.0.0/0", 10100, B4, 1)];
    v.extend((0..n).map(|i| {
        let p = format!("172.16.{}.{}/32", i / 256, i % 256);
        route("65001:1", &p, 10100, B4, 1)
    }));
    v
}

#[test]
fn a_default_route_and_a_leaked_table_stay_out() {
    const TEST: &str = "a_default_route_and_a_leaked_table_stay_out";
    if !ready(TEST, &[]) {
        return;
    }
    let pair = Pair::new("hygiene-leak");
    let mut routes = leak(20_000);
    routes.push(route("65001:1", "10.1.0.0/16", 10100, B4, 1));
    let fabric = fabric(&pair, routes);
    let before = rss_kib();
    let mut peer = PeerSettings::new(B4.parse().unwrap(), 65000);
    peer.hold_time = Duration::from_secs(9);
    let speaker = Speaker::start(
        &pair.a,
        SpeakerSettings {
            import_prefixes: ImportPrefixes {
                allow: vec![PrefixRule {
                    prefix: "10.0.0.0/8".parse().unwrap(),
                    ge: 16,
                    le: 24,
                }],
                ..Default::default()
            },
            ..speaker_settings(peer)
        },
    );
    speaker.handle().set_advertised(vec![]);
    speaker.wait_established(B4, T);
    let ok = wait_until(T, || speaker.status(B4).input.routes_filtered >= 20_001);
    assert!(ok, "{:?}", speaker.status(B4));
    let ok = wait_until(T, || {
        speaker.received().end_of_rib.contains(&B4.parse().unwrap())
    });
    assert!(ok, "no End-of-RIB: {:?}", speaker.status(B4));
    let after = rss_kib();
    let got: Vec<String> = speaker
        .received()
        .iter()
        .map(|r| r.route.prefix.to_string())
        .collect();
    assert_eq!(got, ["10.1.0.0/16"], "only the allowed prefix is learned");
    let st = speaker.status(B4);
    assert_eq!(st.input.routes_filtered, 20_001);
    assert_eq!(st.prefixes_received, 1);
    eprintln!(
        "RSS of the test process (fabric stand-in included): {before} KiB before, {after} KiB after 20,001 refused routes"
    );
    drop(fabric);
}

#[test]
fn stop_learning_holds_a_leaking_peer_to_its_limit() {
    const TEST: &str = "stop_learning_holds_a_leaking_peer_to_its_limit";
    if !ready(TEST, &[]) {
        return;
    }
    let pair = Pair::new("hygiene-stop");
    // Without an allow-list /32s pass (only the default route does not): the limit holds.
    let _fabric = fabric(&pair, leak(5_000));
    let mut peer = PeerSettings::new(B4.parse().unwrap(), 65000);
    peer.max_prefixes = Some(MaxPrefixes {
        limit: 1_000,
        action: MaxPrefixAction::StopLearning,
        warning_threshold_percent: 75,
    });
    let speaker = Speaker::start(&pair.a, speaker_settings(peer));
    speaker.handle().set_advertised(vec![]);
    speaker.wait_established(B4, T);
    let ok = wait_until(T, || {
        speaker.received().end_of_rib.contains(&B4.parse().unwrap())
    });
    assert!(ok, "no End-of-RIB: {:?}", speaker.status(B4));
    let st = speaker.status(B4);
    assert_eq!(speaker.received().len(), 1_000);
    assert_eq!(st.prefixes_received, 1_000);
    assert_eq!(st.input.routes_over_limit, 4_000);
    assert_eq!(st.input.routes_filtered, 1, "the default route");
    assert_eq!(
        st.state,
        PeerState::Established,
        "stop-learning keeps the session"
    );
}

fn gobgpd_toml() -> String {
    format!(
        r#"[global.config]
  as = 65001
  router-id = "{B4}"

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{A4}"
    peer-as = 65000
  [neighbors.transport.config]
    passive-mode = true
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

#[test]
fn teardown_closes_the_session_with_cease_max_prefixes_and_holds_it_idle() {
    const TEST: &str = "teardown_closes_the_session_with_cease_max_prefixes_and_holds_it_idle";
    if !ready(TEST, &["gobgpd", "gobgp"]) {
        return;
    }
    let pair = Pair::new("hygiene-teardown");
    let g = Gobgpd::start(&pair.b, &pair.dir, "gobgpd", &gobgpd_toml());
    for i in 1..=3 {
        g.cli_ok(&[
            "global",
            "rib",
            "-a",
            "evpn",
            "add",
            "prefix",
            &format!("10.{i}.0.0/16"),
            "esi",
            "0",
            "etag",
            "0",
            "rd",
            "65001:1",
            "rt",
            "65001:100",
            "gw",
            "0.0.0.0",
            "label",
            "10100",
            "encap",
            "vxlan",
            "router-mac",
            "02:00:00:00:00:01",
            "nexthop",
            B4,
        ]);
    }
    let mut peer = PeerSettings::new(B4.parse().unwrap(), 65001);
    peer.hold_time = Duration::from_secs(9);
    peer.max_prefixes = Some(MaxPrefixes {
        limit: 3,
        action: MaxPrefixAction::Teardown {
            restart_after: Some(Duration::from_secs(8)),
        },
        warning_threshold_percent: 75,
    });
    let speaker = Speaker::start(&pair.a, speaker_settings(peer));
    speaker.handle().set_advertised(vec![]);
    speaker.wait_established(B4, T);
    let ok = wait_until(T, || speaker.received().len() == 3);
    assert!(ok, "three routes, at the limit: {:?}", speaker.status(B4));

    // A fourth: beyond the limit.
    g.cli_ok(&[
        "global",
        "rib",
        "-a",
        "evpn",
        "add",
        "prefix",
        "10.4.0.0/16",
        "esi",
        "0",
        "etag",
        "0",
        "rd",
        "65001:1",
        "rt",
        "65001:100",
        "gw",
        "0.0.0.0",
        "label",
        "10100",
        "encap",
        "vxlan",
        "router-mac",
        "02:00:00:00:00:01",
        "nexthop",
        B4,
    ]);
    let ok = wait_until(T, || speaker.status(B4).max_prefix_teardowns == 1);
    assert!(ok, "{:?}", speaker.status(B4));
    let st = speaker.status(B4);
    let last = st.last_error.clone().unwrap_or_default();
    assert!(last.contains("sent NOTIFICATION 6/1"), "{last}");
    // Its routes are dropped, and the session stays down while held.
    let ok = wait_until(T, || speaker.received().is_empty());
    assert!(ok, "routes kept: {:#?}", speaker.received());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(speaker.state(B4), PeerState::Idle);
    assert_ne!(g.neighbor_state(A4), "established");
    // After restart_after it connects again, and is torn down again.
    let ok = wait_until(T, || speaker.status(B4).max_prefix_teardowns == 2);
    assert!(ok, "{:?}", speaker.status(B4));
}
