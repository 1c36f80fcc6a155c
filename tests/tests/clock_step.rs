//! Wall-clock steps (issue 15): the wall clock of a running gatewan pair and a bgpctl is
//! stepped by +1 h, then to −1 h, and no tunnel, member or route changes. Timers run on
//! the monotonic clock (ADR 0037); the wall clock only stamps datagrams and versions.
//!
//! Time namespaces do not move CLOCK_REALTIME, so the daemons run under libfaketime
//! (`LD_PRELOAD`, `FAKETIME_TIMESTAMP_FILE` re-read on every call, monotonic clock left
//! alone). All daemons are stepped together, as an NTP step on hosts that agree: a single
//! member stepped alone is cut off by the seal's replay window, which the probe at the
//! start shows (and which is how it checks that libfaketime moves the daemon's clock).
//!
//! Topology as in `tunnels.rs`: two datacenters, one gatewan each with two transits
//! through an "internet" namespace, wireguard-go; bgpctl runs next to sg1's gatewan and
//! advertises par1's network over the chosen tunnels.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use gatewan_tests::*;

/// libfaketime's thread-safe build (the daemons are multi-threaded).
fn libfaketime() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    dirs.filter_map(Result::ok)
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")])
        .find(|p| p.exists())
}

fn faketime_env(lib: &Path, file: &Path) -> Vec<(String, String)> {
    [
        ("LD_PRELOAD", lib.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE", file.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".into()),
        ("DONT_FAKE_MONOTONIC", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Sets the offset libfaketime applies (re-read on every clock call): "+0", "+3600"...
fn set_offset(file: &Path, offset: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{offset}\n")).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn bgpctl_config(dir: &Path, keyring: &Path) -> PathBuf {
    let cfg = dir.join("bgpctl-sg1.yaml");
    std::fs::write(
        &cfg,
        format!(
            "name: bgpctl-sg1\ndatacenter: sg1\nstate_dir: {state}\nmesh:\n  bind: \"198.51.100.2:7947\"\n  seeds: [\"198.51.100.2:7946\"]\n  keyring: {kr}\nbgp:\n  asn: 65001\n  router_id: 10.1.255.21\n  listen: \"127.0.0.1:1790\"\n  peers:\n    - address: 127.0.0.9\n      asn: 65001\nevpn:\n  vni: 10100\n  route_targets:\n    import: [\"65001:100\"]\n    export: [\"65001:100\"]\ncontroller:\n  required_capacity:\n    default: 100Mbps\n  min_tunnels: 1\n  hold_down: 10s\napi:\n  socket: {sock}\nmetrics:\n  listen: \"127.0.0.1:9101\"\n",
            state = dir.join("bgpctl-sg1.state").display(),
            kr = keyring.display(),
            sock = dir.join("bgpctl-sg1.sock").display(),
        ),
    )
    .unwrap();
    cfg
}

/// What must not change: each tunnel (id, interface, its ifindex, state).
fn tunnels_of(h: &Host) -> Vec<String> {
    let index: std::collections::HashMap<String, String> =
        h.tunnel_ifindexes().into_iter().collect();
    let mut v: Vec<String> = h
        .tunnels()
        .iter()
        .map(|t| {
            let ifname = t["interface"].as_str().unwrap_or_default().to_string();
            format!(
                "{} {} ifindex={} {}",
                t["id"],
                ifname,
                index.get(&ifname).cloned().unwrap_or_default(),
                t["state"]
            )
        })
        .collect();
    v.sort();
    v
}

/// Each member as `socket`'s daemon sees it: name, state, generation.
fn members_of(socket: &Path) -> Vec<String> {
    let out = routingctl(socket, &["-o", "json", "members"]);
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut m: Vec<String> = v
        .iter()
        .map(|m| format!("{} {} gen={}", m["name"], m["state"], m["generation"]))
        .collect();
    m.sort();
    m
}

/// The type-5 routes bgpctl advertises, and how many decision changes it made.
fn routes_of(socket: &Path) -> (Vec<String>, usize) {
    let out = routingctl(socket, &["-o", "json", "routes", "--advertised"]);
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut r: Vec<String> = v
        .iter()
        .map(|r| format!("{} {} {}", r["rd"], r["prefix"], r["next_hop"]))
        .collect();
    r.sort();
    let out = routingctl(socket, &["-o", "json", "explain"]);
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let changes = e["history"].as_array().map_or(0, Vec::len);
    (r, changes)
}

fn metric(h: &Host, port: u16, name: &str) -> Option<f64> {
    let out = h
        .cmd("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The log without its colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Bgpctl(Child);

impl Drop for Bgpctl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn stepping_the_wall_clock_an_hour_either_way_changes_no_tunnel_member_or_route() {
    let name = "clock_step";
    if !require_root(name)
        || !require_program(name, "wireguard-go")
        || !require_program(name, "iptables")
        || !require_program(name, "curl")
        || !require_program(name, "faketime")
    {
        return;
    }
    let Some(lib) = libfaketime() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name}: libfaketimeMT.so.1 not found (package faketime)"
        );
        eprintln!("{name}: skipped, libfaketimeMT.so.1 not found (package faketime)");
        return;
    };
    let (_internet, mut a, mut b) = pair_world();
    // Each also has a fabric side (fab0) for its data plane.
    for (h, fabric) in [(&a, "10.1.255"), (&b, "10.2.255")] {
        h.sh(&format!(
            "ip link set lo up && ip link add fab0 type veth peer name fab0p && ip link set fab0p up && ip addr add {fabric}.11/24 dev fab0 && ip link set fab0 up"
        ));
    }
    let (dir, keyring) = pair_dir("gwclock");
    let clocks: Vec<PathBuf> = ["a", "b", "bgpctl"]
        .iter()
        .map(|n| dir.join(format!("{n}.faketime")))
        .collect();
    for c in &clocks {
        set_offset(c, "+0");
    }
    // A data plane with a static network behind each (no EVPN), and /metrics.
    let extra = |fabric: &str, network: &str| {
        format!(
            "fabric:\n  vtep: {fabric}.11\n  vni: 100\n  interface: fab0\nnetworks:\n  - prefix: {network}\n    via: {fabric}.1\nmetrics:\n  listen: \"127.0.0.1:9100\"\n"
        )
    };
    a.config = write_pair_config(&dir, &SG1, &keyring, &extra("10.1.255", "10.21.0.0/16"));
    b.config = write_pair_config(&dir, &PAR1, &keyring, &extra("10.2.255", "10.22.0.0/16"));
    a.socket = dir.join("gatewan01-sg1.sock");
    b.socket = dir.join("gatewan01-par1.sock");
    a.log = dir.join("a.log");
    b.log = dir.join("b.log");
    a.env = faketime_env(&lib, &clocks[0]);
    b.env = faketime_env(&lib, &clocks[1]);

    // The probe: with only a's clock an hour ahead, b measures a's stamps an hour ahead.
    // That is libfaketime moving the daemon's SystemTime::now() (the seal's stamp).
    set_offset(&clocks[0], "+3600");
    a.start();
    b.start();
    let mut skew = None;
    let probed = wait_until(Duration::from_secs(20), || {
        skew = metric(&b, 9100, "gatewan_mesh_max_clock_skew_seconds");
        skew.is_some_and(|s| (3_590.0..=3_610.0).contains(&s))
    });
    if !probed {
        eprintln!("{}", std::fs::read_to_string(&b.log).unwrap_or_default());
    }
    assert!(
        probed,
        "libfaketime does not move the daemon's wall clock: b measured {skew:?}"
    );
    let log = strip_ansi(&std::fs::read_to_string(&b.log).unwrap_or_default());
    let line = log
        .lines()
        .find(|l| l.contains("differ by more than the replay window"))
        .unwrap_or_default();
    assert!(
        line.contains("peer=198.51.100.2:7946") || line.contains("peer=203.0.113.2:7946"),
        "b names the peer in its log: {line}"
    );
    let logged_skew: Option<i64> = line
        .split_once("skew_ms=")
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok());
    assert!(
        logged_skew.is_some_and(|s| (3_590_000..=3_610_000).contains(&s)),
        "and the skew: {line}"
    );
    eprintln!("{name}: probe: {line}");
    set_offset(&clocks[0], "+0");

    let bgpctl_log = std::fs::File::create(dir.join("bgpctl.log")).unwrap();
    let bgpctl = Bgpctl(
        a.cmd(bin("bgpctl"))
            .arg("-c")
            .arg(bgpctl_config(&dir, &keyring))
            .env("RUST_LOG", "bgpctl=debug,gatewan_mesh=info")
            .envs(faketime_env(&lib, &clocks[2]))
            .stdout(bgpctl_log.try_clone().unwrap())
            .stderr(bgpctl_log)
            .spawn()
            .expect("spawn bgpctl"),
    );
    let bgpctl_socket = dir.join("bgpctl-sg1.sock");

    let settled = wait_until(Duration::from_secs(60), || {
        let t = a.tunnels();
        t.len() == 4
            && t.iter().all(|t| t["state"] == "Established")
            && members_of(&a.socket).len() == 3
            && members_of(&a.socket)
                .iter()
                .all(|m| m.contains("\"alive\""))
            && !routes_of(&bgpctl_socket).0.is_empty()
    });
    if !settled {
        for f in ["a.log", "b.log", "bgpctl.log"] {
            eprintln!(
                "--- {f}\n{}",
                std::fs::read_to_string(dir.join(f)).unwrap_or_default()
            );
        }
    }
    assert!(settled, "tunnels, members and routes did not settle");
    // A hold-down (10 s) may still apply a first better set: let it.
    std::thread::sleep(Duration::from_secs(12));

    let snapshot = || {
        (
            tunnels_of(&a),
            tunnels_of(&b),
            members_of(&a.socket),
            members_of(&b.socket),
            members_of(&bgpctl_socket),
            routes_of(&bgpctl_socket),
        )
    };
    let before = snapshot();
    eprintln!("{name}: before the steps: {before:#?}");
    let skew_drops = |h: &Host, port| {
        metric(
            h,
            port,
            "gatewan_mesh_datagrams_dropped_total{reason=\"clock_skew\"}",
        )
        .unwrap_or(0.0)
    };
    let drops_before = skew_drops(&b, 9100);

    for offset in ["+3600", "-3600"] {
        for c in &clocks {
            set_offset(c, offset);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(25) {
            std::thread::sleep(Duration::from_secs(1));
            assert_eq!(
                snapshot(),
                before,
                "changed {:?} after the wall clock stepped to {offset} s",
                started.elapsed()
            );
        }
    }
    assert!(bgpctl.0.id() > 0);
    // Stepping three files one after the other leaves moments where the daemons' clocks
    // disagree by an hour: a few datagrams in flight then are dropped, nothing more.
    let drops = skew_drops(&b, 9100) - drops_before;
    eprintln!("{name}: clock_skew drops at par1 during the steps: {drops}");
    assert!(drops < 50.0, "{drops} datagrams dropped as clock_skew");
}
