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

/// Networks of `origin` as a mesh member holds them, sorted.
fn networks_of(view: &gatewan_mesh::driver::MeshView, origin: gatewan_mesh::NodeId) -> Vec<String> {
    let mut v: Vec<String> = view
        .store
        .networks()
        .filter(|(o, _)| *o == origin)
        .map(|(_, n)| n.prefix.clone())
        .collect();
    v.sort();
    v
}

fn gobgpd_gr_toml() -> String {
    format!(
        r#"[global.config]
  as = 65000
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
  [neighbors.graceful-restart.config]
    enabled = true
    restart-time = 120
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "l2vpn-evpn"
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
"#
    )
}

fn gobgp_route(g: &Gobgpd, op: &str, prefix: &str) {
    let mut args = vec![
        "global", "rib", "-a", "evpn", op, "prefix", prefix, "esi", "0", "etag", "0", "rd",
        "65000:9",
    ];
    if op == "add" {
        args.extend([
            "rt",
            "65000:100",
            "gw",
            "0.0.0.0",
            "label",
            "10100",
            "encap",
            "vxlan",
            "router-mac",
            "02:00:00:00:00:09",
            "nexthop",
            "192.0.2.9",
        ]);
    }
    g.cli_ok(&args);
}

/// The bgpctl daemon (the real binary) in a namespace, its output in a log file.
struct Daemon {
    child: std::process::Child,
}

impl Daemon {
    fn start(ns: &Netns, config: &std::path::Path, log: &std::path::Path) -> Daemon {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log");
        let child = ns
            .cmd(env!("CARGO_BIN_EXE_bgpctl"))
            .arg("-c")
            .arg(config)
            .env(
                "RUST_LOG",
                "bgpctl=debug,gatewan_mesh=info,gatewan_kit=info",
            )
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn bgpctl");
        Daemon { child }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[test]
fn networks_the_fabric_withdrew_while_bgpctl_was_down_leave_the_mesh_after_its_restart() {
    const TEST: &str =
        "networks_the_fabric_withdrew_while_bgpctl_was_down_leave_the_mesh_after_its_restart";
    if !ready(TEST, &["gobgpd", "gobgp"]) {
        return;
    }
    let pair = Pair::new("hygiene-restart");
    let g = Gobgpd::start(&pair.b, &pair.dir, "gobgpd", &gobgpd_gr_toml());
    gobgp_route(&g, "add", "10.1.0.0/16");
    gobgp_route(&g, "add", "10.2.0.0/16");

    // Another member of the mesh, in-process, next to bgpctl: what the mesh holds.
    let keyring = pair.dir.join("keyring");
    gatewan_tests::write_keyring(&keyring, &[&gatewan_mesh::MeshKey::generate().to_base64()]);
    let observer_addr: std::net::SocketAddr = format!("{A4}:7947").parse().unwrap();
    let bgpctl_addr: std::net::SocketAddr = format!("{A4}:7946").parse().unwrap();
    let settings = gatewan_kit::config::MeshMemberSettings {
        bind: observer_addr,
        advertise: vec![observer_addr],
        seeds: vec![bgpctl_addr],
        keyring_file: keyring.clone(),
        settings: gatewan_mesh::MeshSettings::default(),
    };
    let state = pair.dir.join("observer.state");
    let path = format!("/run/netns/{}", pair.a.name);
    let (rt, observer) = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let member = rt
            .block_on(gatewan_kit::daemon::join_mesh(&state, &settings, &[]))
            .expect("join the mesh");
        (rt, member)
    })
    .join()
    .expect("observer thread");

    let config = pair.dir.join("bgpctl.yaml");
    std::fs::write(
        &config,
        format!(
            "name: bgpctl-dc1\ndatacenter: dc1\nstate_dir: {state}\nmesh:\n  bind: \"{bgpctl_addr}\"\n  seeds: [\"{observer_addr}\"]\n  keyring: {keyring}\nbgp:\n  asn: 65000\n  router_id: {A4}\n  peers:\n    - address: {B4}\n      asn: 65000\n      hold_time: 9s\n  graceful_restart:\n    restart_time: 120s\nevpn:\n  vni: 10100\n  route_targets:\n    export: [\"65000:100\"]\napi:\n  socket: {socket}\nmetrics:\n  listen: \"{A4}:9100\"\n",
            state = pair.dir.join("bgpctl.state").display(),
            keyring = keyring.display(),
            socket = pair.dir.join("bgpctl.sock").display(),
        ),
    )
    .expect("config");
    let log = pair.dir.join("bgpctl.log");
    let mut daemon = Daemon::start(&pair.a, &config, &log);
    let log_tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(30).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    };

    // The bgpctl's node id, once its NodeRecord reaches the observer.
    let mut origin = None;
    let ok = wait_until(T, || {
        let view = observer.mesh.view();
        origin = view.store.iter().find_map(|r| match &r.record.body {
            Some(gatewan_proto::v1::record::Body::Node(n)) if n.name == "bgpctl-dc1" => {
                Some(r.key.origin)
            }
            _ => None,
        });
        origin.is_some_and(|o| networks_of(&view, o) == ["10.1.0.0/16", "10.2.0.0/16"])
    });
    assert!(
        ok,
        "the fabric's networks never reached the mesh:\n{}",
        log_tail()
    );
    let origin = origin.expect("bgpctl's node id");

    // bgpctl dies; meanwhile the fabric withdraws 10.2.0.0/16.
    daemon.kill9();
    gobgp_route(&g, "del", "10.2.0.0/16");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        networks_of(&observer.mesh.view(), origin),
        ["10.1.0.0/16", "10.2.0.0/16"],
        "nobody withdraws it while bgpctl is down"
    );

    let mut daemon = Daemon::start(&pair.a, &config, &log);
    let ok = wait_until(Duration::from_secs(90), || {
        networks_of(&observer.mesh.view(), origin) == ["10.1.0.0/16"]
    });
    assert!(
        ok,
        "the mesh still holds {:?}:\n{}",
        networks_of(&observer.mesh.view(), origin),
        log_tail()
    );
    // The withdrawal and the BGP counters reach /metrics.
    let addr: std::net::SocketAddr = format!("{A4}:9100").parse().unwrap();
    let mut body = String::new();
    let ok = wait_until(T, || {
        body = pair
            .a
            .run(move || gatewan_tests::http_get(addr, "/metrics"))
            .unwrap_or_default();
        body.lines()
            .any(|l| l == "bgpctl_stale_networks_withdrawn_total 1")
    });
    assert!(ok, "/metrics:\n{body}");
    assert!(
        body.lines().any(|l| l
            == format!(
                "bgpctl_bgp_input_dropped_total{{peer=\"{B4}\",reason=\"routes_filtered\"}} 0"
            )),
        "/metrics:\n{body}"
    );

    // SIGHUP (ADR 0045): a changed controller section is applied; a changed peer list is
    // refused whole and named; an invalid file is refused; the daemon runs on throughout.
    let original = std::fs::read_to_string(&config).expect("config");
    let reloads = |result: &str| format!("bgpctl_config_reloads_total{{result=\"{result}\"}} 1");
    let mut hangup_then_see = |text: String, line: String| {
        std::fs::write(&config, text).expect("config");
        let pid = daemon.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .expect("kill")
                .success()
        );
        let mut body = String::new();
        let ok = wait_until(T, || {
            body = pair
                .a
                .run(move || gatewan_tests::http_get(addr, "/metrics"))
                .unwrap_or_default();
            body.lines().any(|l| l == line)
        });
        assert!(ok, "no {line:?} in /metrics:\n{body}\n{}", log_tail());
        assert!(
            daemon.child.try_wait().expect("wait").is_none(),
            "bgpctl died on SIGHUP"
        );
        body
    };
    let body = hangup_then_see(
        format!("{original}controller:\n  required_capacity:\n    default: 3Gbps\n"),
        reloads("applied"),
    );
    assert!(
        body.lines().any(|l| l == "bgpctl_config_reload_pending 0"),
        "{body}"
    );
    let body = hangup_then_see(
        format!("{original}controller:\n  required_capacity:\n    default: 3Gbps\n").replace(
            "      hold_time: 9s\n",
            "      hold_time: 9s\n    - address: 192.0.2.99\n      asn: 65000\n",
        ),
        reloads("needs_restart"),
    );
    assert!(
        body.lines().any(|l| l == "bgpctl_config_reload_pending 1"),
        "{body}"
    );
    hangup_then_see("bgp: [".into(), reloads("invalid"));
    // The import policy at run time: a prefix list that refuses /16s drops 10.1.0.0/16 …
    let received = |n: u32| format!("bgpctl_bgp_prefixes_received{{peer=\"{B4}\"}} {n}");
    let narrow = original.replace(
        "  vni: 10100\n",
        "  vni: 10100\n  import_prefixes:\n    - prefix: 10.0.0.0/8\n      le: 15\n",
    );
    let body = hangup_then_see(narrow, received(0));
    assert!(
        body.lines()
            .any(|l| l == "bgpctl_config_reloads_total{result=\"applied\"} 2"),
        "{body}"
    );
    // … and the file as it was brings it back: gobgpd sends it again on ROUTE-REFRESH,
    // over the same session.
    let body = hangup_then_see(original.clone(), received(1));
    assert!(
        body.lines()
            .any(|l| l == format!("bgpctl_bgp_established_transitions_total{{peer=\"{B4}\"}} 1")),
        "the session was not reset: {body}"
    );
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(log.contains("controller policy reloaded"), "{}", log_tail());
    assert!(
        log.lines()
            .any(|l| l.contains("configuration reload refused")
                && l.contains("bgp.peers")
                && !l.contains("controller")),
        "the refusal names the field that needs a restart, and only it:\n{}",
        log_tail()
    );
    assert!(
        pair.a
            .run(move || gatewan_tests::http_get(addr, "/metrics"))
            .unwrap_or_default()
            .lines()
            .any(|l| l == format!("bgpctl_bgp_peer_established{{peer=\"{B4}\"}} 1")),
        "the session stayed up through the reloads"
    );
    daemon.kill9();
    rt.block_on(observer.mesh.leave());
}

/// gobgpd as the fabric's route reflector: it learns a default route and 20,000 leaked
/// prefixes from a source in its fabric (a speaker at 10.0.0.3, AS 65009, standing in for
/// a misconfigured leaf) and announces them to the speaker under test, which keeps only
/// the allowed prefix.
#[test]
fn a_gobgpd_fabric_announcing_a_default_route_and_20000_prefixes_gets_neither_in() {
    const TEST: &str =
        "a_gobgpd_fabric_announcing_a_default_route_and_20000_prefixes_gets_neither_in";
    if !ready(TEST, &["gobgpd", "gobgp"]) {
        return;
    }
    const LEAF: &str = "10.0.0.3";
    let pair = Pair::new("hygiene-gobgpd-leak");
    pair.b
        .exec_ok(&["ip", "addr", "add", &format!("{LEAF}/24"), "dev", "eth0"]);
    let neighbor = |addr: &str, asn: u32| {
        format!(
            r#"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{addr}"
    peer-as = {asn}
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
    };
    let toml = format!(
        "[global.config]\n  as = 65001\n  router-id = \"{B4}\"\n{}{}",
        neighbor(A4, 65000),
        neighbor(LEAF, 65009)
    );
    let g = Gobgpd::start(&pair.b, &pair.dir, "gobgpd", &toml);

    let mut routes = leak(20_000);
    routes.push(route("65001:1", "10.1.0.0/16", 10100, B4, 1));
    let mut up = PeerSettings::new(B4.parse().unwrap(), 65001);
    up.local_address = Some(LEAF.parse().unwrap());
    let leaf = Speaker::start(
        &pair.b,
        SpeakerSettings {
            asn: 65009,
            router_id: LEAF.parse().unwrap(),
            listen: None,
            peers: vec![up],
            graceful_restart: None,
            import_route_targets: vec![],
            import_prefixes: Default::default(),
        },
    );
    leaf.handle().set_advertised(routes);
    leaf.wait_established(B4, T);

    let mut peer = PeerSettings::new(B4.parse().unwrap(), 65001);
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
    let ok = wait_until(Duration::from_secs(120), || {
        speaker.status(B4).input.routes_filtered >= 20_001
    });
    assert!(
        ok,
        "{:?}\ngobgpd holds {} routes",
        speaker.status(B4),
        g.global_rib().len()
    );
    let got: Vec<String> = speaker
        .received()
        .iter()
        .map(|r| r.route.prefix.to_string())
        .collect();
    assert_eq!(got, ["10.1.0.0/16"]);
    assert_eq!(speaker.status(B4).input.routes_filtered, 20_001);
}
