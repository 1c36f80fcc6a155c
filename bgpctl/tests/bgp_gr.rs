//! Graceful restart (RFC 4724) with gobgpd.
//!
//! Restarting speaker: the speaker runs as a child process that is killed with SIGKILL;
//! gobgpd keeps its routes stale, the restarted speaker (R bit, F bit) re-advertises and
//! sends End-of-RIB: unchanged routes are never withdrawn at gobgpd, changed ones are
//! updated, and the ones no longer advertised are removed.
//!
//! Receiving speaker: when gobgpd dies, its routes stay in the speaker's Adj-RIB-In marked
//! stale, are flushed when its restart time runs out, and after a restart what gobgpd no
//! longer advertises is flushed at its End-of-RIB.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bgpctl::bgp::{GracefulRestart, PeerSettings, SpeakerSettings};
use common::*;

const T: Duration = Duration::from_secs(30);
const CHILD_ENV: &str = "GATEWAN_BGP_CHILD_ROUTES";

/// Not a test of its own: the entry point of the speaker child process (see
/// `spawn_child`). Ignored so that it never counts as a passing test; the parent runs it
/// with `--ignored`, and without the environment variable it fails.
#[test]
#[ignore = "entry point of the child speaker process, run by spawn_child"]
fn child_process_entry() {
    let spec = std::env::var(CHILD_ENV).unwrap_or_else(|_| {
        panic!("{CHILD_ENV} unset: this is the child speaker's entry point, not a test")
    });
    let routes = parse_route_spec(&spec);
    let mut peer = PeerSettings::new(B4.parse().unwrap(), 65001);
    peer.hold_time = Duration::from_secs(9);
    let settings = SpeakerSettings {
        graceful_restart: Some(GracefulRestart {
            restart_time: Duration::from_secs(60),
        }),
        ..speaker_settings(peer)
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let h = bgpctl::bgp::spawn(settings).expect("spawn");
        h.set_advertised(routes);
        // Runs until the parent kills the process.
        std::future::pending::<()>().await;
    });
}

fn spawn_child(pair: &Pair, routes: &[bgpctl::bgp::Type5Route], name: &str) -> Child {
    let log = std::fs::File::create(pair.dir.join(format!("{name}.log"))).expect("log");
    pair.a
        .cmd(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_process_entry",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, route_spec(routes))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn child speaker")
}

fn gr_toml(neighbor: &str, peer_as: u32, restart_time: u32, passive: bool) -> String {
    format!(
        r#"[global.config]
  as = 65001
  router-id = "10.0.0.2"

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{neighbor}"
    peer-as = {peer_as}
  [neighbors.transport.config]
    passive-mode = {passive}
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
    keepalive-interval = 3
  [neighbors.graceful-restart.config]
    enabled = true
    restart-time = {restart_time}
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "l2vpn-evpn"
    [neighbors.afi-safis.mp-graceful-restart.config]
      enabled = true
"#
    )
}

/// (prefix → (VNI, stale)) of gobgpd's global EVPN table.
fn table(g: &Gobgpd) -> BTreeMap<String, (u64, bool)> {
    g.global_rib()
        .into_iter()
        .map(|r| (r.prefix, (r.label, r.stale)))
        .collect()
}

#[test]
fn restarting_speaker_keeps_routes_at_gobgpd() {
    const TEST: &str = "restarting_speaker_keeps_routes_at_gobgpd";
    if !ready(TEST, &["gobgpd", "gobgp"]) {
        return;
    }
    let pair = Pair::new("gr-restart");
    let g = Arc::new(Gobgpd::start(
        &pair.b,
        &pair.dir,
        "gobgpd",
        &gr_toml(A4, 65000, 60, true),
    ));
    let r1 = route("65000:1", "10.1.0.0/16", 10100, A4, 1);
    let r2 = route("65000:1", "10.2.0.0/16", 10100, A4, 1);
    let r3 = route("65000:1", "10.3.0.0/16", 10100, A4, 1);
    let mut child = spawn_child(&pair, &[r1.clone(), r2.clone(), r3.clone()], "child1");

    let want1: BTreeMap<String, (u64, bool)> = [
        ("10.1.0.0/16".to_string(), (10100, false)),
        ("10.2.0.0/16".to_string(), (10100, false)),
        ("10.3.0.0/16".to_string(), (10100, false)),
    ]
    .into();
    let ok = wait_until(T, || table(&g) == want1);
    assert!(ok, "initial table {:?}", table(&g));

    // From here on 10.1 and 10.2 must never disappear from gobgpd's table.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let g = g.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut polls = 0u32;
            let mut missing = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = table(&g);
                for p in ["10.1.0.0/16", "10.2.0.0/16"] {
                    if !t.contains_key(p) {
                        missing.push(format!("{p} missing at poll {polls}"));
                    }
                }
                polls += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (polls, missing)
        })
    };

    let _ = child.kill();
    let _ = child.wait();
    let ok = wait_until(T, || {
        g.neighbor_state(A4) != "established" && table(&g).values().all(|(_, stale)| *stale)
    });
    assert!(ok, "routes not stale after the kill: {:?}", table(&g));
    assert_eq!(table(&g).len(), 3);

    // Restart: 10.1 unchanged, 10.2 with another VNI, 10.3 gone, 10.4 new.
    let mut r2b = r2.clone();
    r2b.label_vni = 10200;
    let r4 = route("65000:1", "10.4.0.0/16", 10100, A4, 1);
    let mut child = spawn_child(&pair, &[r1.clone(), r2b.clone(), r4.clone()], "child2");
    let want2: BTreeMap<String, (u64, bool)> = [
        ("10.1.0.0/16".to_string(), (10100, false)),
        ("10.2.0.0/16".to_string(), (10200, false)),
        ("10.4.0.0/16".to_string(), (10100, false)),
    ]
    .into();
    let ok = wait_until(T, || table(&g) == want2);
    assert!(ok, "table after restart {:?}", table(&g));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (polls, missing) = watcher.join().expect("watcher");
    assert!(polls > 10, "watcher polled {polls} times");
    assert!(missing.is_empty(), "{missing:?}");
    // The restarted speaker's capability as gobgpd decoded it (protobuf, base64):
    // flags 0x0c (R bit, N bit), restart time 60, (AFI 25, SAFI 70, flags 0x80 = F bit).
    let n = g.json(&["neighbor", A4]);
    let caps = n["state"]["remote_cap"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let gr = caps
        .iter()
        .find(|c| {
            c["type_url"]
                .as_str()
                .is_some_and(|t| t.ends_with("GracefulRestartCapability"))
        })
        .expect("graceful restart capability");
    assert_eq!(gr["value"], "CAwQPBoJCgQIGRBGEIAB", "{gr}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn receiving_speaker_keeps_gobgpd_routes_stale() {
    const TEST: &str = "receiving_speaker_keeps_gobgpd_routes_stale";
    if !ready(TEST, &["gobgpd", "gobgp"]) {
        return;
    }
    let pair = Pair::new("gr-receive");
    let toml = gr_toml(A4, 65000, 5, true);
    let mut g = Gobgpd::start(&pair.b, &pair.dir, "gobgpd", &toml);
    let mut peer = PeerSettings::new(B4.parse().unwrap(), 65001);
    peer.hold_time = Duration::from_secs(9);
    let speaker = Speaker::start(
        &pair.a,
        SpeakerSettings {
            graceful_restart: Some(GracefulRestart {
                restart_time: Duration::from_secs(60),
            }),
            ..speaker_settings(peer)
        },
    );
    let add = |g: &Gobgpd, prefix: &str| {
        let args = format!(
            "global rib -a evpn add prefix {prefix} esi 0 etag 0 rd 65001:1 rt 65000:100 gw 0.0.0.0 label 10100 encap vxlan router-mac 02:00:00:00:09:01 nexthop 192.0.2.9"
        );
        g.cli_ok(&args.split_whitespace().collect::<Vec<_>>());
    };
    add(&g, "10.8.0.0/16");
    add(&g, "10.9.0.0/16");
    speaker.wait_established(B4, T);
    let rx = |s: &Speaker| -> Vec<(String, bool)> {
        s.received()
            .iter()
            .map(|r| (r.route.prefix.to_string(), r.stale))
            .collect()
    };
    let fresh = vec![
        ("10.8.0.0/16".to_string(), false),
        ("10.9.0.0/16".to_string(), false),
    ];
    assert!(
        wait_until(T, || rx(&speaker) == fresh),
        "{:?}",
        rx(&speaker)
    );

    // gobgpd dies: routes stay, stale, for its restart time (5 s), then go.
    g.kill();
    let stale = vec![
        ("10.8.0.0/16".to_string(), true),
        ("10.9.0.0/16".to_string(), true),
    ];
    assert!(
        wait_until(Duration::from_secs(4), || rx(&speaker) == stale),
        "{:?}",
        rx(&speaker)
    );
    assert_eq!(speaker.status(B4).prefixes_stale, 2);
    assert!(
        wait_until(Duration::from_secs(10), || rx(&speaker).is_empty()),
        "stale routes not flushed after the restart time: {:?}",
        rx(&speaker)
    );

    // Back, session up, routes learned again; then a restart within the restart time
    // after which gobgpd advertises only one of them: End-of-RIB flushes the other.
    let g2 = Gobgpd::start(&pair.b, &pair.dir, "gobgpd2", &toml);
    add(&g2, "10.8.0.0/16");
    add(&g2, "10.9.0.0/16");
    speaker.wait_established(B4, T);
    assert!(
        wait_until(T, || rx(&speaker) == fresh),
        "{:?}",
        rx(&speaker)
    );
    drop(g2);
    assert!(
        wait_until(Duration::from_secs(4), || rx(&speaker) == stale),
        "{:?}",
        rx(&speaker)
    );
    let g3 = Gobgpd::start(&pair.b, &pair.dir, "gobgpd3", &toml);
    add(&g3, "10.9.0.0/16");
    assert!(
        wait_until(T, || rx(&speaker)
            == vec![("10.9.0.0/16".to_string(), false)]),
        "{:?}",
        rx(&speaker)
    );
    speaker.wait_established(B4, T);
}
