//! The two-dc lab with its gatewans running (lab.run labels): two datacenters × two
//! gatewans × two transits through the lab's userspace WAN emulators, wireguard-go.
//!
//! One lab for several checks, in order (bringing the lab up costs more than each check):
//! - tunnels come up; 60 s later every bgpctl holds a minimal set, both of a datacenter
//!   the same, and the fabrics' routes then stay the same for five minutes, while these
//!   checks run (none of them may move a route):
//!   - the fabrics' prefixes, originated by each datacenter's leaf, reach the mesh through
//!     bgpctl and come back to the other fabric as type-5 routes over the chosen tunnels,
//!     and the other leaf installs them in its tenant VRF (sg1's leaf stands in for
//!     hardware, one Router's MAC per route: `lab leaf`; par1's is FRR 10, a Linux leaf,
//!     one per next hop);
//!   - the two bgpctls of a datacenter advertise the same routes, and kill -9 of one
//!     changes nothing the fabric holds;
//!   - a tunnel's traffic from outside its datacenter's networks is dropped and counted;
//!   - the MTU budget: 1420 bytes with DF cross, 1421 get the gatewan's ICMP error;
//! - latency and jitter measured by the probes against what the WAN emulator applies (the
//!   kernel has no netem here);
//! - tenant traffic: hosts ping each other over IPv4 and IPv6, TCP both ways, through
//!   exactly the chosen tunnels (their WireGuard counters), never in clear on a transit;
//! - TCP crosses for a host that drops ICMP errors (MSS clamped into the tunnels);
//! - kill -9 of both gatewans of a datacenter under traffic: nothing recreated, nothing
//!   withdrawn, no packet lost;
//! - a prefix the leaf stops originating leaves the other fabric;
//! - the controller moves the routes off the transit that carries a ping stream when it
//!   fails (about 0.9 s; bound 3 s), and traffic moves at once (local repair): the
//!   packets lost; none lost when it comes back;
//! - the same failover with the operator guide's fast probe setting (the gatewans restart
//!   with it): its outage;
//! - after all these changes of routes, FRR on leaf-par1 still holds a Router's MAC for
//!   every next hop of its routes to sg1 (FRR 8.4 lost some, ADR 0051).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gatewan_tests::{NODE_BIN, require_program, require_root, wait_until, with_build_binaries};
use lab::{Harness, RunningLab};

const GATEWANS: [&str; 4] = [
    "gatewan01-sg1",
    "gatewan02-sg1",
    "gatewan01-par1",
    "gatewan02-par1",
];

fn tunnels(lab: &RunningLab, node: &str) -> Vec<serde_json::Value> {
    let routingctl = format!("{NODE_BIN}/routingctl");
    let Ok(out) = lab.exec(node, &[&routingctl, "-o", "json", "tunnels"]) else {
        return Vec::new();
    };
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_default()
}

/// For a failure at start: every gatewan's tunnels as routingctl and wg show them, and
/// its log's last lines about tunnels, probes and WireGuard, so a miss in CI says why.
fn print_tunnel_diagnosis(lab: &RunningLab) {
    let routingctl = format!("{NODE_BIN}/routingctl");
    for node in GATEWANS {
        // WireGuard's own view beside ours: endpoint, latest handshake, bytes.
        for argv in [
            &[routingctl.as_str(), "tunnels"][..],
            &["wg", "show", "all"],
        ] {
            match lab.exec(node, argv) {
                Ok(out) => println!(
                    "{node}: {}\n{}{}",
                    argv.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => println!("{node}: {} failed: {e:#}", argv.join(" ")),
            }
        }
        let log = lab::ns::log_path(lab.name(), node);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                ["tunnel", "probe", "handshake", "wireguard"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .collect();
        println!("{}, last tunnel lines:", log.display());
        for l in &lines[lines.len().saturating_sub(25)..] {
            println!("  {l}");
        }
    }
}

fn established(lab: &RunningLab, node: &str) -> usize {
    tunnels(lab, node)
        .iter()
        .filter(|t| t["state"] == "Established")
        .count()
}

/// (tunnel id, latency ms, jitter ms) of every lumen tunnel end.
fn lumen_readings(lab: &RunningLab) -> Vec<(String, f64, f64)> {
    let mut v = Vec::new();
    for node in GATEWANS {
        for t in tunnels(lab, node) {
            if t["meta"]["local_transit"] == "lumen" {
                let ms = |k: &str| t["probe"][k].as_f64().unwrap_or(f64::NAN) / 1e6;
                v.push((
                    t["id"].as_str().unwrap_or_default().to_string(),
                    ms("latency_ns"),
                    ms("jitter_ns"),
                ));
            }
        }
    }
    v
}

/// (frames delayed, sum of delays in µs) per direction of a WAN emulator, so far.
fn applied_delays(lab: &RunningLab, emulator: &str) -> Vec<(f64, f64)> {
    let stats = lab.impair(emulator, &[]).expect("emulator stats");
    stats
        .lines()
        .map(|l| {
            let field = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(f64::NAN)
            };
            (field("delayed="), field("delay_sum_us="))
        })
        .collect()
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0u32), |(s, n), x| (s + x, n + 1));
    s / f64::from(n.max(1))
}

/// The median (the mean of the middle two for an even count; NaN for none).
fn median(xs: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = xs.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The type-5 routes gobgpd on `fabric` holds for `prefix`, whichever bgpctl of the
/// datacenter sent them (each sends every route; a path kept stale through a graceful
/// restart counts): (next hop, Router's MAC, line), one per (next hop, MAC).
fn fabric_routes(lab: &RunningLab, fabric: &str, prefix: &str) -> Vec<(String, String, String)> {
    let Ok(out) = lab.exec(fabric, &["gobgp", "global", "rib", "-a", "evpn"]) else {
        return Vec::new();
    };
    let mut routes: Vec<(String, String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("[prefix:{prefix}]")))
        .filter_map(|l| {
            // `*> [type:Prefix][rd:…][etag:0][prefix:…]  [label]  next-hop  …`: the next
            // hop follows the label, whatever marks the path.
            let cols: Vec<&str> = l.split_whitespace().collect();
            let label = cols.iter().position(|c| {
                c.strip_prefix('[')
                    .and_then(|c| c.strip_suffix(']'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })?;
            let next_hop = cols.get(label + 1)?.to_string();
            let mac = l
                .split("router's mac: ")
                .nth(1)?
                .split(']')
                .next()?
                .to_string();
            Some((next_hop, mac, l.to_string()))
        })
        .collect();
    routes.sort();
    routes.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    routes
}

/// Router's MAC → local transit of every tunnel of the datacenter's gatewans.
fn tunnel_macs(lab: &RunningLab, gatewans: &[&str]) -> Vec<(String, String)> {
    tunnel_ends(lab, gatewans)
        .into_iter()
        .map(|(mac, transit, _)| (mac, transit))
        .collect()
}

/// (Router's MAC, local transit, own VTEP) of every tunnel of the datacenter's gatewans.
fn tunnel_ends(lab: &RunningLab, gatewans: &[&str]) -> Vec<(String, String, String)> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    gatewans
        .iter()
        .flat_map(|g| tunnels(lab, g))
        .map(|t| {
            (
                text(&t["router_mac"]),
                text(&t["meta"]["local_transit"]),
                text(&t["vtep"]),
            )
        })
        .collect()
}

/// `routingctl` on bgpctl-sg1's socket: its session to the fabric, the routes it received
/// (par1's prefixes are not among them: the sg1 fabric announces sg1's) and the ones it
/// advertises, as JSON and in the talk's GoBGP-style table.
fn check_routingctl_on_bgpctl(lab: &RunningLab) {
    let routingctl = format!("{NODE_BIN}/routingctl");
    let run = |args: &[&str]| {
        let mut argv = vec![routingctl.as_str(), "--socket", "/run/bgpctl/bgpctl.sock"];
        argv.extend_from_slice(args);
        let out = lab
            .exec("bgpctl-sg1", &argv)
            .expect("routingctl on bgpctl-sg1");
        assert!(
            out.status.success(),
            "routingctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let json = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut argv = vec!["-o", "json"];
        argv.extend_from_slice(args);
        let text = run(&argv);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    };

    let peers = json(&["peers"]);
    assert_eq!(peers.len(), 1, "{peers:#?}");
    let fabric = &peers[0];
    assert_eq!(fabric["address"], "10.1.255.2");
    assert_eq!(fabric["state"], "Established");
    assert!(
        fabric["prefixes_received"].as_u64() >= Some(2),
        "{fabric:#?}"
    );
    assert!(fabric["prefixes_sent"].as_u64() >= Some(2), "{fabric:#?}");
    // The same session in /metrics, with the input drop counters by reason.
    let metrics = lab
        .exec(
            "bgpctl-sg1",
            &["curl", "-sf", "http://127.0.0.1:9101/metrics"],
        )
        .expect("curl on bgpctl-sg1");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    for sample in [
        "bgpctl_bgp_peer_established{peer=\"10.1.255.2\"} 1",
        "bgpctl_bgp_input_dropped_total{peer=\"10.1.255.2\",reason=\"nlri_ignored\"} ",
        "bgpctl_bgp_input_dropped_total{peer=\"10.1.255.2\",reason=\"as_path_loops\"} ",
        "gatewan_mesh_datagrams_dropped_total{reason=",
        "bgpctl_controller_required_capacity_bytes_per_second{datacenter=\"par1\"} 187500000",
        "bgpctl_controller_chosen_tunnels{datacenter=\"par1\"} ",
    ] {
        assert!(
            metrics.contains(sample),
            "{sample} missing from:\n{metrics}"
        );
    }

    let received = json(&["routes", "--received", "--prefix", "172.16.1.0/24"]);
    assert_eq!(received.len(), 1, "{received:#?}");
    assert_eq!(received[0]["direction"], "received");
    assert_eq!(received[0]["peer"], "10.1.255.2");
    assert_eq!(received[0]["vni"], 10100);

    let advertised = json(&["routes", "--advertised"]);
    assert!(!advertised.is_empty());
    for r in &advertised {
        assert_eq!(r["direction"], "advertised", "{r}");
        assert!(
            r["next_hop"]
                .as_str()
                .is_some_and(|n| n.starts_with("10.1.254.")),
            "next hop of an advertised route is a tunnel's own VTEP (fabric.tunnel_vteps): {r}"
        );
        assert_eq!(r["route_targets"], serde_json::json!(["65001:100"]), "{r}");
    }

    let table = run(&["routes", "--advertised", "--prefix", "172.16.2.0/24"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(!lines.is_empty(), "no advertised route to 172.16.2.0/24");
    for l in lines {
        assert!(
            l.starts_with("*> [type:Prefix][rd:")
                && l.contains("][prefix:172.16.2.0/24] [10100] 10.1.254.")
                && l.contains("router's mac: ")
                && l.contains("encap: VXLAN")
                && l.contains("rt: 65001:100"),
            "{l}"
        );
    }

    // The controller's explanation crosses the API as typed messages: both renderings.
    let text = run(&["-o", "json", "explain", "--datacenter", "par1"]);
    let e: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("explain: {err}: {text}"));
    let remote = &e["explanation"]["remotes"][0];
    assert_eq!(remote["datacenter"], "par1", "{e:#}");
    let candidates = remote["candidates"].as_array().expect("candidates");
    assert!(
        candidates.iter().any(|c| c["chosen"] == true),
        "no chosen candidate: {e:#}"
    );
    for c in candidates {
        assert!(
            c["interface"]
                .as_str()
                .is_some_and(|i| i.starts_with("sdwan"))
                && c["verdict"].as_str().is_some_and(|v| !v.is_empty())
                && c["tunnel"].as_str().is_some_and(|t| t.len() == 36),
            "{c:#}"
        );
    }
    let table = run(&["explain", "--datacenter", "par1"]);
    assert!(
        table.starts_with("datacenter par1: required ") && table.contains("RANK"),
        "{table}"
    );
    println!(
        "routingctl on bgpctl-sg1: peers, routes --received/--advertised, explain as expected"
    );
}

/// Issue 12 in the lab: 60 s after start every bgpctl holds a minimal set (here two
/// tunnels toward the other datacenter: 1.5 Gbps needs one lumen tunnel (1 Gbps) and one
/// more, and no single tunnel has it), both bgpctls of a datacenter the same, and both
/// fabrics then hold the same routes for five minutes (the WAN emulators add jitter).
fn check_minimal_and_stable(lab: &RunningLab, started: Instant) {
    std::thread::sleep(Duration::from_secs(60).saturating_sub(started.elapsed()));
    for (bgpctls, prefix) in [
        (["bgpctl-sg1", "bgpctl2-sg1"], "172.16.2.0/24"),
        (["bgpctl-par1", "bgpctl2-par1"], "172.16.1.0/24"),
    ] {
        let sets: Vec<Vec<(String, String)>> = bgpctls
            .iter()
            .map(|b| {
                advertised(lab, b)
                    .into_iter()
                    .filter(|r| r.1 == prefix)
                    .map(|r| (r.2, r.3))
                    .collect()
            })
            .collect();
        assert_eq!(
            sets[0].len(),
            2,
            "{}: not a minimal set: {:?}\n{}",
            bgpctls[0],
            sets[0],
            diagnosis(lab, bgpctls[0])
        );
        assert_eq!(sets[0], sets[1], "{bgpctls:?} hold different sets");
        println!(
            "60 s after lab up: {bgpctls:?} both advertise {prefix} over {:?}",
            sets[0]
        );
    }
    let held = || {
        [
            ("fabric-sg1", "172.16.2.0/24"),
            ("fabric-par1", "172.16.1.0/24"),
        ]
        .map(|(f, p)| {
            fabric_routes(lab, f, p)
                .into_iter()
                .map(|(nh, mac, _)| (nh, mac))
                .collect::<Vec<_>>()
        })
    };
    let first = held();
    let watch = Instant::now();
    let mut samples = 0;
    while watch.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_secs(2));
        let now = held();
        samples += 1;
        assert_eq!(
            now,
            first,
            "the fabrics' routes changed {:?} into the five minutes",
            watch.elapsed()
        );
    }
    println!("both fabrics held the same routes for 5 minutes ({samples} samples): {first:?}");
}

/// What a failed check on `bgpctl` prints: its controller's explanation, its view of the
/// mesh and the end of its log, so that a CI failure says why.
fn diagnosis(lab: &RunningLab, bgpctl: &str) -> String {
    let routingctl = format!("{NODE_BIN}/routingctl");
    let mut out = String::new();
    for what in ["explain", "members"] {
        let shown = lab
            .exec(
                bgpctl,
                &[&routingctl, "--socket", "/run/bgpctl/bgpctl.sock", what],
            )
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_else(|e| e.to_string());
        out.push_str(&format!("--- routingctl {what} on {bgpctl}:\n{shown}\n"));
    }
    let log = std::fs::read_to_string(lab::supervisor::log_path(lab.name(), bgpctl))
        .unwrap_or_else(|e| e.to_string());
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    out.push_str(&format!("--- end of {bgpctl}'s log:\n"));
    for line in tail.into_iter().rev() {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Runs `checks` while `check_minimal_and_stable` watches the fabrics' routes for five
/// minutes: checks that must leave those routes as they are (a bgpctl killed under a ping
/// stream, filters, MTU, a path trace) make the watch stricter, and the lab test shorter.
fn while_stable(lab: &RunningLab, started: Instant, checks: impl FnOnce()) {
    std::thread::scope(|scope| {
        let watch = scope.spawn(|| check_minimal_and_stable(lab, started));
        // The minimal-set check comes first (60 s after start); then the checks run.
        std::thread::sleep(Duration::from_secs(61).saturating_sub(started.elapsed()));
        checks();
        if let Err(panic) = watch.join() {
            std::panic::resume_unwind(panic);
        }
    });
}

/// (RD, prefix, next hop, Router's MAC) of every route a bgpctl advertises, sorted.
fn advertised(lab: &RunningLab, bgpctl: &str) -> Vec<(String, String, String, String)> {
    let routingctl = format!("{NODE_BIN}/routingctl");
    let Ok(out) = lab.exec(
        bgpctl,
        &[
            &routingctl,
            "--socket",
            "/run/bgpctl/bgpctl.sock",
            "-o",
            "json",
            "routes",
            "--advertised",
        ],
    ) else {
        return Vec::new();
    };
    let routes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut v: Vec<_> = routes
        .iter()
        .map(|r| {
            (
                text(&r["rd"]),
                text(&r["prefix"]),
                text(&r["next_hop"]),
                text(&r["router_mac"]),
            )
        })
        .collect();
    v.sort();
    v
}

/// Bytes sent (tx) by every WireGuard tunnel of `gatewans`, by interface.
fn wg_tx(lab: &RunningLab, gatewans: &[&str]) -> std::collections::BTreeMap<String, u64> {
    lab::bench::wg_sent(lab, gatewans).into_iter().collect()
}

/// `ping` from `node` to `to`; true when every one of `count` echo requests is answered.
fn ping_all(lab: &RunningLab, node: &str, to: &str, count: u32) -> bool {
    let c = count.to_string();
    lab.exec(node, &["ping", "-c", &c, "-i", "0.2", "-W", "2", to])
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains(&format!("{count} received"))
        })
}

/// A TCP transfer with iperf3 (`streams` parallel flows for `seconds`) from `client` to
/// `server` at `address`; the bytes received.
fn iperf3(
    lab: &RunningLab,
    client: &str,
    server: &str,
    address: &str,
    streams: u32,
    seconds: u32,
) -> u64 {
    let mut received = 0;
    // A one-off server per attempt, on a port of its own: a failed attempt may have used
    // up the previous one.
    let mut port = 5200;
    let ran = wait_until(Duration::from_secs(5), || {
        port += 1;
        let port = port.to_string();
        let started = lab
            .exec(server, &["iperf3", "-s", "-D", "-1", "-p", &port])
            .expect("iperf3 -s");
        assert!(started.status.success(), "iperf3 -s on {server}");
        std::thread::sleep(Duration::from_millis(200));
        let Ok(out) = lab.exec(
            client,
            &[
                "iperf3",
                "-c",
                address,
                "-p",
                &port,
                "-P",
                &streams.to_string(),
                "-t",
                &seconds.to_string(),
                "-J",
            ],
        ) else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        received = v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
        out.status.success() && received > 0
    });
    assert!(ran, "iperf3 from {client} to {address} did not run");
    received
}

/// A ping stream from `from` to `to` for about `seconds`, started now: one request every
/// 5 ms, which ping sends at 150 to 200 a second here (its timer is coarse). A count, not a
/// deadline: at a deadline ping counts the requests still in flight as lost.
fn ping_stream(lab: &RunningLab, from: &str, to: &str, seconds: u32) -> std::process::Child {
    let count = (seconds * 175).to_string();
    let argv = ["ping", "-q", "-i", "0.005", "-W", "1", "-c", &count, to];
    lab.command(from, &argv)
        .expect("ping stream")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping stream")
}

/// Frames the two leaves' L3 VNI VXLAN devices dropped so far (kernel `tx_dropped`: a frame
/// to a MAC without an FDB entry, as the devices have no default destination).
#[derive(Clone, Copy, Debug)]
struct LeafDrops {
    /// leaf-par1, FRR 10.3.
    frr: u64,
    /// leaf-sg1, `lab leaf`.
    lab_leaf: u64,
}

fn leaf_drops(lab: &RunningLab) -> LeafDrops {
    let dropped = |node: &str, dev: &str| -> u64 {
        let out = lab
            .exec(
                node,
                &["ip", "-n", "tenant", "-s", "-j", "link", "show", dev],
            )
            .expect("ip link");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{node}: ip -j link show {dev}: {e}"));
        v[0]["stats64"]["tx"]["dropped"]
            .as_u64()
            .unwrap_or_else(|| panic!("{node}: no tx dropped count for {dev}: {v}"))
    };
    LeafDrops {
        frr: dropped("leaf-par1", "vx10200"),
        lab_leaf: dropped("leaf-sg1", "vx10100"),
    }
}

/// A stream that must cross `what` without loss, but for one hole that is FRR's, not the
/// gatewans': when zebra (10.3) replaces a type-5 route it deletes and reinstalls the
/// neighbour and FDB entries of every next hop the route keeps, and a reply routed to one
/// of them in that window (about 0.2 ms here) is dropped by leaf-par1's VXLAN device
/// (docs/lab.md, ADR 0051). So a loss passes only when leaf-par1 dropped at least as many
/// frames over the stream and leaf-sg1 none: a packet lost anywhere else fails.
fn assert_lossless_but_for_frr(
    what: &str,
    sent: u64,
    received: u64,
    before: LeafDrops,
    after: LeafDrops,
) {
    let lost = sent - received;
    let frr = after.frr - before.frr;
    let lab_leaf = after.lab_leaf - before.lab_leaf;
    if lost > 0 {
        println!(
            "{what}: {lost} of {sent} lost; leaf-par1 (FRR) dropped {frr} frames for a next hop it was reinstalling, leaf-sg1 {lab_leaf}"
        );
    }
    assert!(
        lost == 0 || (lost <= frr && lab_leaf == 0),
        "{what} lost {lost} of {sent} packets, not all in FRR's next-hop reinstall: leaf-par1 dropped {frr} frames, leaf-sg1 {lab_leaf}"
    );
}

/// (sent, received) of a finished ping stream.
fn stream_result(child: std::process::Child) -> (u64, u64) {
    let (sent, received, _) = stream_figures(child);
    (sent, received)
}

/// (sent, received, milliseconds) of a finished ping stream.
fn stream_figures(child: std::process::Child) -> (u64, u64, u64) {
    let out = child.wait_with_output().expect("ping stream");
    let text = String::from_utf8_lossy(&out.stdout);
    lab::bench::ping_summary(&text).unwrap_or_else(|| panic!("no ping summary: {text}"))
}

/// The MTU budget (docs/operators.md): the tunnels carry 1420-byte packets; a DF packet of
/// that size crosses, one byte more gets ICMP "fragmentation needed" / "packet too big"
/// from the gatewan back to the host.
/// TCP crosses for a host that drops ICMP errors (no path MTU discovery): the gatewans
/// clamp the MSS of SYNs entering a tunnel (ADR 0012). The destinations are addresses
/// added for this check, so no earlier packet taught host-sg1 their path MTU; without the
/// clamp, its 1460-byte segments die at the tunnel and the transfer hangs.
/// A TCP connection opened as soon as tenant traffic crosses, within the gatewans' 30 s
/// startup hold, already gets a segment size that fits the tunnels (ADR 0052). The lab's
/// fabric underlay is 1500, so the fabric carries 1450: an unclamped connection sends
/// 1448-byte segments that never arrive, for as long as it lives.
fn check_mss_clamped_from_the_start(lab: &RunningLab, start: Instant) {
    let crossed = wait_until(Duration::from_secs(20), || {
        ping_all(lab, "host-sg1", "172.16.2.10", 1)
    });
    assert!(crossed, "no tenant ping crossed within 20 s of the tunnels");
    let at = start.elapsed();
    lab.exec("host-par1", &["iperf3", "-s", "-D", "-1", "-p", "5300"])
        .expect("iperf3 -s");
    std::thread::sleep(Duration::from_millis(200));
    let out = lab
        .exec(
            "host-sg1",
            &["iperf3", "-c", "172.16.2.10", "-p", "5300", "-t", "1", "-J"],
        )
        .expect("iperf3 -c");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    // The MSS of iperf3's control connection, from TCP_MAXSEG: 1380 less the timestamp
    // option when clamped to a 1420 tunnel, 1448 when not.
    let mss = v["start"]["tcp_mss_default"].as_u64();
    println!("first TCP connection, {at:?} after lab up: MSS {mss:?}");
    assert!(
        mss.is_some_and(|m| m <= 1380),
        "a connection opened {at:?} after lab up has MSS {mss:?}, not clamped to the tunnel's 1380: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    if at > Duration::from_secs(25) {
        println!(
            "note: the first connection came {at:?} after lab up, near the end of the startup hold"
        );
    }
}

fn check_tcp_without_icmp(lab: &RunningLab) {
    let run = |node: &str, argv: &[&str]| {
        let out = lab.exec(node, argv).expect("exec");
        assert!(
            out.status.success(),
            "{node}: {argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for a in ["172.16.2.11/24", "2001:db8:a2::11/48"] {
        run(
            "host-par1",
            &["ip", "addr", "add", a, "dev", "eth1", "nodad"],
        );
    }
    let rules = "table inet noicmp {
  chain input {
    type filter hook input priority filter; policy accept;
    icmp type destination-unreachable drop
    icmpv6 type packet-too-big drop
  }
}
";
    run(
        "host-sg1",
        &["sh", "-c", &format!("echo '{rules}' | nft -f -")],
    );
    for to in ["172.16.2.11", "2001:db8:a2::11"] {
        let bytes = iperf3(lab, "host-sg1", "host-par1", to, 1, 2);
        println!(
            "TCP host-sg1 -> {to}, ICMP errors dropped at host-sg1: {:.1} MB in 2 s",
            bytes as f64 / 1e6
        );
        assert!(
            bytes >= 1_000_000,
            "TCP to {to} black-holed without ICMP: {bytes} bytes in 2 s"
        );
    }
    run("host-sg1", &["nft", "delete", "table", "inet", "noicmp"]);
    for a in ["172.16.2.11/24", "2001:db8:a2::11/48"] {
        run("host-par1", &["ip", "addr", "del", a, "dev", "eth1"]);
    }
}

fn check_mtu(lab: &RunningLab) {
    for (to, fits, header) in [
        ("172.16.2.10", 1420 - 28, "IPv4"),
        ("2001:db8:a2::10", 1420 - 48, "IPv6"),
    ] {
        let ping = |size: u32| {
            let size = size.to_string();
            lab.exec(
                "host-sg1",
                &[
                    "ping", "-M", "do", "-c", "2", "-i", "0.3", "-W", "2", "-s", &size, to,
                ],
            )
            .expect("ping")
        };
        // The first oversize packet teaches the host the path MTU; ping reports it.
        let ok = wait_until(Duration::from_secs(5), || ping(fits).status.success());
        assert!(ok, "{header}: a DF packet of 1420 bytes does not cross");
        let big = ping(fits + 1);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&big.stdout),
            String::from_utf8_lossy(&big.stderr)
        );
        assert!(
            !big.status.success(),
            "{header}: 1421 bytes crossed with DF: {text}"
        );
        assert!(
            text.contains("mtu=1420") || text.contains("mtu: 1420") || text.contains("mtu = 1420"),
            "{header}: no ICMP error naming MTU 1420 for 1421 bytes with DF: {text}"
        );
        println!(
            "{header}: 1420 bytes with DF cross; 1421 get the gatewan's ICMP error (mtu 1420)"
        );
    }
}

/// What a restart must not recreate on a gatewan: its links (name → ifindex) and its
/// wireguard-go processes (pids).
fn gatewan_fixtures(lab: &RunningLab, node: &str) -> (Vec<String>, Vec<String>) {
    let text = |argv: &[&str]| {
        lab.exec(node, argv)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let mut links: Vec<String> = text(&["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| {
            let mut cols = l.split(": ");
            let index = cols.next()?;
            let name = cols.next()?.split('@').next()?;
            Some(format!("{name}#{index}"))
        })
        .collect();
    links.sort();
    let same_netns = "for p in $(pgrep -x wireguard-go); do [ \"$(readlink /proc/$p/ns/net)\" = \"$(readlink /proc/self/ns/net)\" ] && echo $p; done; true";
    let mut pids: Vec<String> = text(&["sh", "-c", same_netns])
        .lines()
        .map(str::to_string)
        .collect();
    pids.sort();
    (links, pids)
}

/// kill -9 of both gatewans of sg1 while a ping stream crosses (their supervisor restarts
/// them): the kernel keeps the data plane and wireguard-go its tunnels, the restarted
/// daemons adopt them (no link, tunnel or VTEP recreated) and hold back their tunnels'
/// metrics until the probes have measured, so sg1's bgpctls change nothing. par1's see
/// the tunnels to sg1 go Down one after the other within a few hundred milliseconds: they
/// may move their routes onto tunnels not yet seen Down, and once none is healthy they
/// keep what they chose (ADR 0011); the kernels forward throughout, so no packet is lost.
fn check_gatewan_restart(lab: &RunningLab) {
    let sg1 = ["gatewan01-sg1", "gatewan02-sg1"];
    let before: Vec<_> = sg1.iter().map(|g| gatewan_fixtures(lab, g)).collect();
    // (next hop, Router's MAC): the route lines also hold their age.
    let held = |fabric: &str, prefix: &str| -> Vec<(String, String)> {
        fabric_routes(lab, fabric, prefix)
            .into_iter()
            .map(|(nh, mac, _)| (nh, mac))
            .collect()
    };
    let routes_before = held("fabric-sg1", "172.16.2.0/24");
    let par1_before = held("fabric-par1", "172.16.1.0/24");
    let stream = ping_stream(lab, "host-sg1", "172.16.2.10", 15);
    std::thread::sleep(Duration::from_secs(2));
    for g in sg1 {
        kill_9(lab, g, "gatewan");
    }
    let (sent, received) = stream_result(stream);
    let lost = sent - received;
    for g in sg1 {
        let restarted = wait_until(Duration::from_secs(10), || established(lab, g) == 4);
        assert!(
            restarted,
            "{g} did not come back with its 4 tunnels Established"
        );
    }
    let par1_after = held("fabric-par1", "172.16.1.0/24");
    println!(
        "kill -9 of both sg1 gatewans under a ping stream host-sg1 -> host-par1: {lost} of {sent} lost (goal 0); fabric-par1's routes to sg1 {}",
        if par1_after == par1_before {
            "unchanged".to_string()
        } else {
            format!("moved from {par1_before:?} to {par1_after:?}")
        }
    );
    let after: Vec<_> = sg1.iter().map(|g| gatewan_fixtures(lab, g)).collect();
    assert_eq!(
        before, after,
        "a restart recreated links or wireguard-go processes"
    );
    assert_eq!(
        routes_before,
        held("fabric-sg1", "172.16.2.0/24"),
        "fabric-sg1's routes changed across the restart"
    );
    // Goal 0, met: the kernel and wireguard-go forward on while the daemons restart, and
    // the other datacenter's bgpctls keep their routes while no tunnel answers probes
    // (ADR 0011). 1 % is room for a busy machine; withdrawn routes lost 10 %.
    assert!(
        lost * 100 <= sent,
        "{lost} of {sent} lost across a gatewan restart"
    );
}

/// A ping stream host-sg1 → host-par1 for about `seconds`, and after 2 s the sg1 tunnel
/// carrying it (the one whose WireGuard counter grew most) and that tunnel's transit.
fn stream_and_its_transit(lab: &RunningLab, seconds: u32) -> (std::process::Child, String, String) {
    let sg1 = ["gatewan01-sg1", "gatewan02-sg1"];
    let before = lab::bench::wg_sent(lab, &sg1);
    let stream = ping_stream(lab, "host-sg1", "172.16.2.10", seconds);
    std::thread::sleep(Duration::from_secs(2));
    let (carrier, transit) =
        lab::bench::busiest_tunnel(lab, &sg1, &before).expect("the stream's tunnel and transit");
    (stream, carrier, transit)
}

/// kill -9 of `program` in `node` (its supervisor restarts it). Nodes share the host's
/// process table: only the process in the node's own network namespace is killed.
fn kill_9(lab: &RunningLab, node: &str, program: &str) {
    let script = format!(
        "for p in $(pgrep -x {program}); do [ \"$(readlink /proc/$p/ns/net)\" = \"$(readlink /proc/self/ns/net)\" ] && kill -9 $p; done; true"
    );
    let out = lab.exec(node, &["sh", "-c", &script]).expect("kill");
    assert!(out.status.success(), "kill -9 {program} in {node}");
}

/// `routingctl trace 172.16.2.10` on bgpctl-sg1 (issue 17): its paths are the routes
/// fabric-sg1 holds (next hop and Router's MAC), each names an sg1 gatewan and tunnel, and
/// the tunnel whose WireGuard counter a ping there grows is one of them. It runs in the
/// five-minute watch: a check that follows one packet through one tunnel needs the routes
/// at rest, and after the transfers of `check_tenant_traffic` they are not until a
/// hold-down has passed (the controller adds tunnels at once under load).
fn check_trace(lab: &RunningLab) {
    let sg1 = ["gatewan01-sg1", "gatewan02-sg1"];
    let routingctl = format!("{NODE_BIN}/routingctl");
    let trace = |json: bool| {
        let mut argv = vec![routingctl.as_str(), "--socket", "/run/bgpctl/bgpctl.sock"];
        if json {
            argv.extend(["-o", "json"]);
        }
        argv.extend(["trace", "172.16.2.10"]);
        let out = lab.exec("bgpctl-sg1", &argv).expect("routingctl trace");
        assert!(
            out.status.success(),
            "routingctl trace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // bgpctl-sg1 was killed just before (check_two_bgpctls) and restarted by the lab: the
    // trace is read until the restarted one agrees with the fabric.
    let mut text = String::new();
    let mut fabric = std::collections::BTreeSet::new();
    let mut traced = std::collections::BTreeSet::new();
    let agreed = wait_until(Duration::from_secs(20), || {
        text = trace(true);
        fabric = fabric_routes(lab, "fabric-sg1", "172.16.2.0/24")
            .into_iter()
            .map(|(nh, mac, _)| (nh, mac))
            .collect();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        traced = v["paths"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        (
                            p["next_hop"].as_str().unwrap_or("").to_string(),
                            p["router_mac"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        !fabric.is_empty() && fabric == traced
    });
    assert!(
        agreed,
        "trace {traced:?} is not the fabric's routes {fabric:?}:\n{text}"
    );
    let v: serde_json::Value = serde_json::from_str(&text).expect("trace JSON");
    assert_eq!(v["prefix"], "172.16.2.0/24", "{v:#}");
    assert_eq!(v["datacenter"], "par1", "{v:#}");
    let tunnels: Vec<(String, String)> = v["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .map(|p| {
            let t = &p["tunnel"];
            assert!(
                p["remote_gatewan"]
                    .as_str()
                    .is_some_and(|g| g.ends_with("-par1"))
                    && p["egress"][0]["vtep"] == "10.2.255.1",
                "{p:#}"
            );
            (
                t["gatewan"].as_str().unwrap_or("").to_string(),
                t["interface"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    // A ping there: the tunnel it took, by the WireGuard counters of each sg1 gatewan.
    let before: Vec<Vec<(String, u64)>> =
        sg1.iter().map(|g| lab::bench::wg_sent(lab, &[g])).collect();
    assert!(
        ping_all(lab, "host-sg1", "172.16.2.10", 20),
        "ping host-par1"
    );
    let (_, gatewan, interface) = sg1
        .iter()
        .zip(&before)
        .flat_map(|(g, b)| {
            lab::bench::wg_sent(lab, &[g])
                .into_iter()
                .map(move |(i, n)| {
                    let was = b.iter().find(|(j, _)| *j == i).map_or(0, |x| x.1);
                    (n.saturating_sub(was), g.to_string(), i)
                })
        })
        .max()
        .expect("WireGuard counters");
    assert!(
        tunnels.contains(&(gatewan.clone(), interface.clone())),
        "the ping went through {gatewan}/{interface}, the trace names {tunnels:?}"
    );
    let table = trace(false);
    assert!(
        table.contains("path 1") && table.contains(&gatewan) && table.contains("remote fabric"),
        "{table}"
    );
    println!(
        "routingctl trace 172.16.2.10: {tunnels:?}; a ping took {gatewan}/{interface}\n{table}"
    );
}

/// `routingctl transits …` on a gatewan; its standard output (the call must succeed).
fn transits_cmd(lab: &RunningLab, node: &str, args: &[&str]) -> String {
    let routingctl = format!("{NODE_BIN}/routingctl");
    let mut argv = vec![routingctl.as_str()];
    argv.extend_from_slice(args);
    let out = lab.exec(node, &argv).expect("routingctl");
    assert!(
        out.status.success(),
        "routingctl {args:?} on {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Maintenance of a provider (issue 17, ADR 0047): lumen is drained on both sg1
/// gatewans while a ping stream crosses. Within one hold-down (10 s here; about a second
/// is expected: one gossip round and a decision) the sg1 fabric holds no route over a
/// lumen tunnel, and not one packet is lost: the tunnels stay up while the routes move.
/// The drain survives a kill -9 of a gatewan; undrained, lumen carries routes again
/// (sg1's 1.5 Gbps need is short on cogent's 2 × 500 Mbps).
fn check_drain(lab: &RunningLab) {
    const HOLD_DOWN: Duration = Duration::from_secs(10);
    let sg1 = ["gatewan01-sg1", "gatewan02-sg1"];
    let macs = tunnel_macs(lab, &sg1);
    let over = || -> Vec<String> {
        fabric_routes(lab, "fabric-sg1", "172.16.2.0/24")
            .iter()
            .map(|r| {
                macs.iter()
                    .find(|(m, _)| *m == r.1)
                    .map_or("?".to_string(), |(_, t)| t.clone())
            })
            .collect()
    };
    // After the failover checks lumen may still be recovering: wait until it carries a
    // route again, so that the drain has something to move.
    let mut routes = Vec::new();
    let ready = wait_until(Duration::from_secs(60), || {
        routes = over();
        routes.iter().any(|t| t == "lumen")
    });
    assert!(ready, "no route over lumen before the drain: {routes:?}");
    // A transit the gatewan does not have: a usage error that names the ones it has.
    let out = lab
        .exec(
            "gatewan01-sg1",
            &[
                &format!("{NODE_BIN}/routingctl"),
                "transits",
                "drain",
                "telia",
            ],
        )
        .expect("routingctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("lumen, cogent"), "{err}");
    let drops = leaf_drops(lab);
    // Both families: leaf-par1 routes the replies to host-sg1 with routes that change here.
    let stream = ping_stream(lab, "host-sg1", "172.16.2.10", 8);
    let stream6 = ping_stream(lab, "host-sg1", "2001:db8:a2::10", 8);
    std::thread::sleep(Duration::from_secs(1));
    let drained_at = Instant::now();
    for node in sg1 {
        let out = transits_cmd(lab, node, &["transits", "drain", "lumen"]);
        assert!(out.contains("transit lumen drained"), "{node}: {out}");
    }
    let moved = wait_until(HOLD_DOWN, || {
        routes = over();
        !routes.is_empty() && routes.iter().all(|t| t == "cogent")
    });
    let took = drained_at.elapsed();
    assert!(
        moved,
        "routes still over lumen {took:?} after the drain: {routes:?}\n{}",
        diagnosis(lab, "bgpctl-sg1")
    );
    println!(
        "lumen drained on sg1: the fabric's routes to par1 left it in {took:?} (bound: one hold-down, 10 s)"
    );
    let (sent, received) = stream_result(stream);
    let (sent6, received6) = stream_result(stream6);
    println!(
        "drain under ping streams host-sg1 -> host-par1: IPv4 {} of {sent} lost, IPv6 {} of {sent6}",
        sent - received,
        sent6 - received6
    );
    assert_lossless_but_for_frr(
        "the drain",
        sent + sent6,
        received + received6,
        drops,
        leaf_drops(lab),
    );
    let explain = transits_cmd(
        lab,
        "bgpctl-sg1",
        &[
            "--socket",
            "/run/bgpctl/bgpctl.sock",
            "explain",
            "--datacenter",
            "par1",
        ],
    );
    assert!(
        explain.contains("drained"),
        "explain does not say why:\n{explain}"
    );

    // kill -9: the restarted gatewan announces the drain it kept in state_dir.
    kill_9(lab, "gatewan01-sg1", "gatewan");
    let mut list = String::new();
    let kept = wait_until(Duration::from_secs(20), || {
        let argv = [
            format!("{NODE_BIN}/routingctl"),
            "-o".into(),
            "json".into(),
            "transits".into(),
        ];
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        list = lab
            .exec("gatewan01-sg1", &argv)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        serde_json::from_str::<Vec<serde_json::Value>>(&list).is_ok_and(|ts| {
            ts.iter()
                .any(|t| t["name"] == "lumen" && t["drained"] == true)
        })
    });
    assert!(kept, "the drain did not survive a restart: {list}");
    std::thread::sleep(Duration::from_secs(2));
    routes = over();
    assert!(
        routes.iter().all(|t| t == "cogent"),
        "a restarted gatewan brought lumen back: {routes:?}"
    );

    let undrained_at = Instant::now();
    for node in sg1 {
        let out = transits_cmd(lab, node, &["transits", "undrain", "lumen"]);
        assert!(out.contains("transit lumen undrained"), "{node}: {out}");
    }
    let back = wait_until(HOLD_DOWN * 3, || {
        routes = over();
        routes.iter().any(|t| t == "lumen")
    });
    assert!(
        back,
        "lumen not used again after the undrain: {routes:?}\n{}",
        diagnosis(lab, "bgpctl-sg1")
    );
    println!(
        "lumen undrained: routes over it again {:?} later",
        undrained_at.elapsed()
    );
}

/// The operator guide's fast probe setting: every gatewan restarts with it (a restart
/// costs no packet, `check_gatewan_restart`), then the transit carrying a ping stream fails.
/// Target 300 ms of outage; the bound is three times that, so a busy machine does not flake.
fn check_fast_failover(lab: &RunningLab, topology: &Path) {
    lab::bench::use_fast_probes(topology).expect("fast probe settings");
    for g in GATEWANS {
        kill_9(lab, g, "gatewan");
    }
    // Back, and past the fast probes' window (0.5 s) and their first reports.
    std::thread::sleep(Duration::from_secs(3));
    let up = wait_until(Duration::from_secs(30), || {
        GATEWANS.iter().all(|n| established(lab, n) == 4)
    });
    assert!(
        up,
        "the gatewans did not come back with the fast probe setting"
    );
    std::thread::sleep(Duration::from_secs(3));
    let (stream, carrier, transit) = stream_and_its_transit(lab, 6);
    let emulator = format!("wan-{transit}");
    lab.impair(&emulator, &["loss=100%"]).expect("impair");
    let (sent, received, ms) = stream_figures(stream);
    lab.impair(&emulator, &["reset"]).expect("impair reset");
    let lost = sent - received;
    let outage = lost * ms / sent.max(1);
    println!(
        "fast probe setting: {transit} (carrying {carrier}) failed under a ping stream: {lost} of {sent} lost, an outage of about {outage} ms (target 300 ms)"
    );
    if outage > 300 {
        println!("MISSED TARGET: fast failover outage {outage} ms (target 300 ms)");
    }
    assert!(lost > 0, "the failure of {transit} did not hit the stream");
    assert!(
        outage <= 900,
        "fast failover lost {lost} of {sent} packets ({outage} ms)"
    );
}

/// Packets the source filters of sg1's gatewans dropped (every tunnel's counter).
fn spoofed_at_sg1(lab: &RunningLab) -> u64 {
    ["gatewan01-sg1", "gatewan02-sg1"]
        .iter()
        .map(|g| {
            let out = lab
                .exec(
                    g,
                    &["nft", "-j", "list", "counters", "table", "inet", "gatewan"],
                )
                .expect("nft");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["counter"]["packets"].as_u64())
                .sum::<u64>()
        })
        .sum()
}

/// A par1 gatewan sends into its tunnels traffic from an address outside par1's networks
/// (a spoof, or a routing mistake): sg1's gatewans drop it and count it; host-sg1 never
/// sees it. Traffic from par1's networks still crosses.
fn check_source_filter(lab: &RunningLab) {
    let spoofer = "gatewan01-par1";
    let add = lab
        .exec(
            spoofer,
            &["ip", "addr", "add", "10.99.99.1/32", "dev", "lo"],
        )
        .expect("ip addr add");
    assert!(add.status.success());
    let before = spoofed_at_sg1(lab);
    // Its own packets to a tenant follow the replies table, into a tunnel to sg1.
    let _ = lab.exec(
        spoofer,
        &[
            "ping",
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "10.99.99.1",
            "172.16.1.10",
        ],
    );
    let after = spoofed_at_sg1(lab);
    assert!(
        after >= before + 5,
        "sg1's source filters counted {} of 5 spoofed packets",
        after - before
    );
    assert!(
        ping_all(lab, "host-par1", "172.16.1.10", 3),
        "traffic from par1's networks no longer crosses"
    );
    let _ = lab.exec(
        spoofer,
        &["ip", "addr", "del", "10.99.99.1/32", "dev", "lo"],
    );
    println!(
        "5 packets from 10.99.99.1 (not a par1 network) sent by {spoofer} into its tunnels: dropped and counted by sg1's source filters ({before} -> {after})"
    );
}

const TRANSIT_ROUTERS: [&str; 4] = ["lumen-sg1", "lumen-par1", "cogent-sg1", "cogent-par1"];

/// Rules that only count, first in the raw table, on every transit router: any packet
/// from or to a tenant address arriving there (a tenant packet in clear on a transit).
fn tap_transits(lab: &RunningLab) {
    for r in TRANSIT_ROUTERS {
        for (cmd, net) in [
            ("iptables", "172.16.0.0/16"),
            ("ip6tables", "2001:db8:a0::/44"),
        ] {
            for dir in ["-s", "-d"] {
                let out = lab
                    .exec(r, &[cmd, "-t", "raw", "-I", "PREROUTING", dir, net])
                    .expect("iptables");
                assert!(
                    out.status.success(),
                    "{cmd} on {r}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// Packets the tap rules counted, by router.
fn tapped(lab: &RunningLab) -> Vec<(String, u64)> {
    TRANSIT_ROUTERS
        .iter()
        .map(|r| {
            let mut n = 0;
            for cmd in ["iptables", "ip6tables"] {
                let out = lab
                    .exec(r, &[cmd, "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"])
                    .expect("iptables -L");
                for l in String::from_utf8_lossy(&out.stdout).lines().skip(2) {
                    n += l
                        .split_whitespace()
                        .next()
                        .and_then(|x| x.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
            (r.to_string(), n)
        })
        .collect()
}

/// Tenant traffic, host-sg1 ↔ host-par1, through leaves of both kinds (sg1's keeps one
/// Router's MAC per route as hardware does, par1's one per next-hop IP as Linux does):
/// ping over IPv4 and IPv6 both ways, TCP both ways; the sg1 → par1 transfer leaves sg1
/// through exactly the tunnels of the fabric's routes, spread over all of them; and no
/// transit router ever sees a tenant address.
/// Tenant packets the fast path (ADR 0067) of `node` carried so far, (to tunnels, to the
/// fabric), from its /metrics.
fn fast_path_packets(lab: &RunningLab, node: &str) -> (u64, u64) {
    let out = lab
        .exec(node, &["curl", "-sf", "http://127.0.0.1:9469/metrics"])
        .expect("curl on a gatewan");
    let metrics = String::from_utf8_lossy(&out.stdout);
    let read = |direction: &str| {
        let sample =
            format!("gatewan_dataplane_fast_path_packets_total{{direction=\"{direction}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&sample))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{node}: no {sample} in its metrics:\n{metrics}"))
    };
    (read("to_tunnel"), read("to_fabric"))
}

fn check_tenant_traffic(lab: &RunningLab) {
    tap_transits(lab);
    let fast_before: Vec<(u64, u64)> = GATEWANS.iter().map(|g| fast_path_packets(lab, g)).collect();
    for (from, to) in [
        ("host-sg1", "172.16.2.10"),
        ("host-sg1", "2001:db8:a2::10"),
        ("host-par1", "172.16.1.10"),
        ("host-par1", "2001:db8:a1::10"),
    ] {
        // The leaves poll their RIB: the first ping may precede the route.
        let ok = wait_until(Duration::from_secs(20), || ping_all(lab, from, to, 1))
            && ping_all(lab, from, to, 5);
        assert!(ok, "{from} cannot ping {to}");
        println!("{from} pings {to}: 5 of 5 answered");
    }
    // The pings took the fast path (a first packet may resolve the leaf's MAC on the
    // kernel path): into the tunnels and out to the fabric, at both ends.
    let fast_after: Vec<(u64, u64)> = GATEWANS.iter().map(|g| fast_path_packets(lab, g)).collect();
    let grown = |f: fn(&(u64, u64)) -> u64| -> u64 {
        fast_before
            .iter()
            .zip(&fast_after)
            .map(|(b, a)| f(a).saturating_sub(f(b)))
            .sum()
    };
    let (to_tunnel, to_fabric) = (grown(|c| c.0), grown(|c| c.1));
    println!(
        "the gatewans' fast path carried {to_tunnel} packets into tunnels and {to_fabric} to the fabrics during the pings"
    );
    assert!(
        to_tunnel >= 30 && to_fabric >= 30,
        "the fast path carried {to_tunnel} packets into tunnels and {to_fabric} to the fabrics; 24 echoes and their 24 replies each crossed one of each"
    );
    let sg1 = ["gatewan01-sg1", "gatewan02-sg1"];
    let ends: Vec<(String, String)> = sg1
        .iter()
        .flat_map(|g| tunnels(lab, g))
        .map(|t| {
            let text = |k: &str| t[k].as_str().unwrap_or_default().to_string();
            (text("router_mac"), text("interface"))
        })
        .collect();
    let chosen_now = || -> std::collections::BTreeSet<String> {
        fabric_routes(lab, "fabric-sg1", "172.16.2.0/24")
            .into_iter()
            .filter_map(|(_, mac, _)| ends.iter().find(|(m, _)| *m == mac).map(|(_, i)| i.clone()))
            .collect()
    };
    // Lumen still has the probe check's jitter, and near-equal tunnels may trade places
    // (one change per hold-down at most): a transfer counts only if the fabric's routes
    // were the same from a second before it (the leaf reads its RIB every 0.5 s) to its
    // end. Else it is taken again; routes that change under three transfers in a row
    // fail the check below.
    let mut attempt = 0;
    let (chosen, sent, bytes) = loop {
        attempt += 1;
        let chosen = chosen_now();
        std::thread::sleep(Duration::from_secs(1));
        let before = wg_tx(lab, &sg1);
        let settled = chosen_now() == chosen;
        // 16 flows: the leaf hashes on ports, so every chosen tunnel gets some unless the
        // hash is very unlucky (2 tunnels: 2 × 2^-16).
        let bytes = iperf3(lab, "host-sg1", "host-par1", "172.16.2.10", 16, 3);
        let after = wg_tx(lab, &sg1);
        let sent: Vec<(String, u64)> = after
            .iter()
            .map(|(i, tx)| {
                (
                    i.clone(),
                    tx.saturating_sub(before.get(i).copied().unwrap_or(0)),
                )
            })
            .collect();
        let now = chosen_now();
        if (settled && now == chosen) || attempt == 3 {
            break (chosen, sent, bytes);
        }
        println!(
            "the fabric's routes to par1 moved during transfer {attempt} ({chosen:?} -> {now:?}): taken again"
        );
    };
    assert!(
        chosen.len() >= 2,
        "the fabric's routes to par1 name {chosen:?}"
    );
    println!(
        "TCP host-sg1 -> host-par1: {:.1} MB received in 3 s (16 flows); sent per sg1 tunnel: {sent:?}; chosen: {chosen:?}",
        bytes as f64 / 1e6
    );
    for (iface, n) in &sent {
        if chosen.contains(iface) {
            assert!(
                *n >= 1_000_000,
                "chosen tunnel {iface} carried only {n} bytes: {sent:?}"
            );
        } else {
            // Probes only: about 2 kB/s each way.
            assert!(
                *n < 200_000,
                "tunnel {iface} is not chosen but sent {n} bytes: {sent:?}"
            );
        }
    }
    let back = iperf3(lab, "host-par1", "host-sg1", "2001:db8:a1::10", 4, 2);
    println!(
        "TCP host-par1 -> host-sg1 over IPv6: {:.1} MB received in 2 s",
        back as f64 / 1e6
    );
    let seen = tapped(lab);
    assert!(
        seen.iter().all(|(_, n)| *n == 0),
        "tenant packets in clear on a transit: {seen:?}"
    );
    println!("transit routers saw no tenant packet: {seen:?}");
}

/// The probes measure what the WAN emulator applies (the kernel has no netem here):
/// latency and jitter of the lumen tunnels against its counters.
fn check_probe_measurements(lab: &RunningLab, window: Duration, settle: Duration) {
    // Baseline: what wireguard-go, the probes and the emulator add to the delay it
    // applies, measured at the same 20 ms without jitter (on this small machine what a
    // round trip costs beyond the emulator's delay depends on the delay itself).
    let base_delay = 40.0;
    lab.impair("wan-lumen", &["reset"]).expect("impair reset");
    lab.impair("wan-lumen", &["delay=20ms"])
        .expect("impair 20 ms");
    std::thread::sleep(settle);
    let mut baseline = lumen_readings(lab);
    std::thread::sleep(window);
    baseline.extend(lumen_readings(lab));
    lab.impair("wan-lumen", &["delay=20ms", "jitter=5ms"])
        .expect("impair");
    std::thread::sleep(settle - window);
    let applied_from = applied_delays(lab, "wan-lumen");
    std::thread::sleep(window);
    // Four disjoint windows, both ends of each tunnel: eight windows a tunnel, so the
    // test is about the measurement, not the sampling noise of one 50-probe window
    // (σ ≈ 0.6 ms for the mean RTT of one window at ±5 ms uniform in each direction).
    let mut readings = Vec::new();
    for i in 0..4 {
        if i > 0 {
            std::thread::sleep(window);
        }
        readings.extend(lumen_readings(lab));
    }
    // The emulator delays each direction by 20 ms ± 5 ms (uniform), a frame never before
    // the previous one of its flow: what it applied, per direction, from its counters.
    // Consecutive round trips differ by the sum of four independent uniform ±5 ms terms,
    // whose mean absolute value is 14/15 × 5 ms ≈ 4.67 ms.
    let applied_to = applied_delays(lab, "wan-lumen");
    let applied_rtt: f64 = applied_from
        .iter()
        .zip(&applied_to)
        .map(|((n0, s0), (n1, s1))| (s1 - s0) / (n1 - n0) / 1000.0)
        .sum();
    println!("the emulator applied {applied_rtt:.3} ms per round trip (20 ms ± 5 ms each way)");
    assert!(
        (applied_rtt - 40.0).abs() < 2.0,
        "emulator applied {applied_rtt} ms"
    );
    let applied_jitter = 14.0 / 15.0 * 5.0;
    let mut ids: Vec<&String> = readings.iter().map(|r| &r.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "four lumen tunnels: {readings:?}");
    let mut per_tunnel = Vec::new();
    for id in ids {
        let mine = || readings.iter().filter(move |r| &r.0 == id);
        let base_readings = || baseline.iter().filter(move |r| &r.0 == id);
        let base = median(base_readings().map(|r| r.1)) - base_delay;
        // The jitter this machine adds by itself, read at 20 ms without jitter just
        // before. Host and emulator noise are independent, so the mean absolute change
        // of their sum lies between the emulator's alone and the two added: a busy
        // 2-core machine can raise the reading (6.29 ms against 4.67 applied was seen
        // once in CI, under 2.1 ms of host overhead), never lower it.
        let base_jitter = median(base_readings().map(|r| r.2));
        // Medians of the tunnel's eight windows: a stall of the busy 2-core machine lands
        // in one window and moves its mean by whole milliseconds (6.95 ms of jitter
        // against 4.67 applied was seen once in CI); the emulator's jitter is in all.
        let latency = median(mine().map(|r| r.1)) - base;
        let jitter = median(mine().map(|r| r.2));
        println!(
            "tunnel {id}: latency {latency:.3} ms over its {base:.3} ms overhead (applied {applied_rtt:.3} ms), jitter {jitter:.3} ms (applied {applied_jitter:.3} ms, this machine's own {base_jitter:.3} ms)"
        );
        // The counters average every frame of the link; a tunnel whose requests and
        // replies to its peer's probes happen to interleave closely is held back by
        // per-flow ordering more often (up to ~1 ms more): 0.5 ms of room per tunnel.
        assert!(
            (latency - applied_rtt).abs() <= 1.5
                && jitter >= applied_jitter - 1.5
                && jitter <= applied_jitter + base_jitter + 1.5,
            "tunnel {id}: latency {latency:.3} ms, jitter {jitter:.3} ms; the emulator applied {applied_rtt:.3} ms, {applied_jitter:.3} ms; this machine alone {base_jitter:.3} ms of jitter"
        );
        per_tunnel.push((latency, jitter, base_jitter));
    }
    let latency = mean(per_tunnel.iter().map(|t| t.0));
    let jitter = mean(per_tunnel.iter().map(|t| t.1));
    let base_jitter = mean(per_tunnel.iter().map(|t| t.2));
    println!(
        "lumen tunnels: latency {latency:.3} ms, jitter {jitter:.3} ms (this machine's own {base_jitter:.3} ms)"
    );
    // The mean's bound is the per-tunnel one: probes are timestamped in userspace, so on
    // a busy 2-core machine every tunnel reads up to ~1 ms high together (41.0 ms against
    // 40.0 ms applied was seen once in CI), which is scheduling, not the emulator.
    assert!(
        (latency - applied_rtt).abs() <= 1.5,
        "latency {latency:.3} ms, the emulator applied {applied_rtt:.3} ms"
    );
    assert!(
        jitter >= applied_jitter - 1.0 && jitter <= applied_jitter + base_jitter + 1.0,
        "jitter {jitter:.3} ms, the emulator applied {applied_jitter:.3} ms, this machine alone {base_jitter:.3} ms"
    );
}

/// What runs during the five-minute watch of the fabrics' routes (`while_stable`): all
/// of it leaves those routes as they are.
fn check_routes_and_filters(lab: &RunningLab) {
    // Routes: each fabric's tenant prefixes, originated by its leaf, reach the other
    // fabric through the mesh, next hop the tunnel's own VTEP (fabric.tunnel_vteps),
    // Router's MAC the tunnel's MAC.
    for (fabric, local_gatewans, remote_prefixes, rt, vni) in [
        (
            "fabric-sg1",
            ["gatewan01-sg1", "gatewan02-sg1"],
            ["172.16.2.0/24", "2001:db8:a2::/48"],
            "65001:100",
            "[10100]",
        ),
        (
            "fabric-par1",
            ["gatewan01-par1", "gatewan02-par1"],
            ["172.16.1.0/24", "2001:db8:a1::/48"],
            "65002:100",
            "[10200]",
        ),
    ] {
        let ends = tunnel_ends(lab, &local_gatewans);
        for prefix in remote_prefixes {
            let mut routes = Vec::new();
            let there = wait_until(Duration::from_secs(15), || {
                routes = fabric_routes(lab, fabric, prefix);
                !routes.is_empty()
            });
            assert!(there, "{fabric} has no route for {prefix}");
            for (next_hop, mac, line) in &routes {
                assert!(
                    ends.iter().any(|(m, _, v)| m == mac && v == next_hop),
                    "not a tunnel's MAC with its own VTEP as next hop: {line}\n{ends:?}"
                );
                assert!(
                    line.contains(rt) && line.contains("[VXLAN]") && line.contains(vni),
                    "{line}"
                );
            }
            println!("{fabric}: {prefix} via {} tunnels", routes.len());
        }
        // The prefixes are the peer datacenter's networks in the mesh, as gatewans show.
        let shown = tunnels(lab, local_gatewans[0]);
        assert!(
            shown
                .iter()
                .all(|t| remote_prefixes.iter().all(|p| t["networks"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|x| x == p)))),
            "tunnel networks of {}: {shown:#?}",
            local_gatewans[0]
        );
    }

    check_routingctl_on_bgpctl(lab);
    check_two_bgpctls(lab);

    // Each leaf installs the other datacenter's prefixes in its tenant VRF through its own
    // datacenter's gatewans: sg1's (one Router's MAC per route) via an adjacency of its
    // own per route, whose MAC's FDB entry is a tunnel's VTEP; par1's (one per next hop)
    // via the tunnels' VTEPs themselves.
    for (leaf, prefix, vteps) in [
        ("leaf-sg1", "172.16.2.0/24", ["169.254."]),
        ("leaf-par1", "172.16.1.0/24", ["10.2.254."]),
    ] {
        let mut shown = String::new();
        let installed = wait_until(Duration::from_secs(15), || {
            shown = lab
                .exec(
                    leaf,
                    &[
                        "ip", "netns", "exec", "tenant", "ip", "route", "show", prefix,
                    ],
                )
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            vteps.iter().any(|v| shown.contains(&format!("via {v}"))) && shown.contains("dev br")
        });
        assert!(
            installed,
            "{leaf} did not install {prefix} via a gatewan VTEP: {shown}"
        );
        println!(
            "{leaf}: {prefix} installed in the tenant VRF via {}",
            shown.trim().replace('\n', " ")
        );
    }
    let fdb = lab
        .exec(
            "leaf-sg1",
            &["bridge", "-n", "tenant", "fdb", "show", "dev", "vx10100"],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        fdb.contains("dst 10.1.254."),
        "leaf-sg1's FDB holds no tunnel VTEP: {fdb}"
    );

    check_source_filter(lab);
    check_mtu(lab);
}

/// FRR's leaf (leaf-par1) has taken every change of the other datacenter's routes (start,
/// hold-down, failovers and returns, restarts): each next hop of its routes to sg1 still
/// has its neighbour entry, the tunnel VTEP's Router's MAC. FRR 8.4 dropped the entries of
/// next hops a route kept when its best path changed, leaving them to ARP (ADR 0051).
fn check_frr_next_hops(lab: &RunningLab) {
    let ip = |args: &[&str]| {
        let mut cmd = vec!["ip", "-n", "tenant"];
        cmd.extend_from_slice(args);
        lab.exec("leaf-par1", &cmd)
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let mut missing = Vec::new();
    let mut shown = String::new();
    // The last failover's routes may still be settling.
    let whole = wait_until(Duration::from_secs(15), || {
        let routes = ip(&["route", "show", "172.16.1.0/24"])
            + &ip(&["-6", "route", "show", "2001:db8:a1::/48"]);
        let neigh = ip(&["neigh", "show", "dev", "br10200"]);
        let hops: Vec<String> = routes
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_string())
            .collect();
        missing = hops
            .iter()
            .filter(|h| {
                !neigh
                    .lines()
                    .any(|l| l.starts_with(&format!("{h} ")) && l.contains("lladdr"))
            })
            .cloned()
            .collect();
        shown = format!("{routes}\n{neigh}");
        !hops.is_empty() && missing.is_empty()
    });
    assert!(
        whole,
        "leaf-par1 (FRR) routes through next hops without a Router's MAC: {missing:?}\n{shown}"
    );
    println!(
        "leaf-par1 (FRR): every next hop of its routes to sg1 has its Router's MAC after all the changes"
    );
}

/// Two bgpctls per datacenter, as production runs them (redundancy without a leader): both
/// advertise the same routes, and kill -9 of one (its supervisor restarts it) leaves what
/// the fabric holds for the other datacenter unchanged.
fn check_two_bgpctls(lab: &RunningLab) {
    for (a, b) in [
        ("bgpctl-sg1", "bgpctl2-sg1"),
        ("bgpctl-par1", "bgpctl2-par1"),
    ] {
        let mut last = (Vec::new(), Vec::new());
        let same = wait_until(Duration::from_secs(30), || {
            last = (advertised(lab, a), advertised(lab, b));
            !last.0.is_empty() && last.0 == last.1
        });
        assert!(same, "{a} and {b} advertise different routes: {last:#?}");
        println!("{a} and {b} advertise the same {} routes", last.0.len());
    }
    let held = |prefix: &str| {
        let mut v: Vec<(String, String)> = fabric_routes(lab, "fabric-sg1", prefix)
            .into_iter()
            .map(|(nh, mac, _)| (nh, mac))
            .collect();
        v.sort();
        v
    };
    let before = held("172.16.2.0/24");
    assert!(!before.is_empty());
    // Tenant traffic meanwhile: not a packet lost.
    let stream = ping_stream(lab, "host-sg1", "172.16.2.10", 16);
    std::thread::sleep(Duration::from_millis(500));
    kill_9(lab, "bgpctl-sg1", "bgpctl");
    let killed_at = Instant::now();
    let mut changes = Vec::new();
    while killed_at.elapsed() < Duration::from_secs(15) {
        let now = held("172.16.2.0/24");
        if now != before {
            changes.push((killed_at.elapsed(), now));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        changes.is_empty(),
        "fabric-sg1's routes to par1 changed after kill -9 of bgpctl-sg1: before {before:?}, then {changes:?}"
    );
    let (sent, received) = stream_result(stream);
    println!(
        "kill -9 of bgpctl-sg1: fabric-sg1 kept its {} routes to par1 unchanged for 15 s; a ping stream host-sg1 -> host-par1 lost {} of {sent}",
        before.len(),
        sent - received
    );
    assert_eq!(sent, received, "packets lost while a bgpctl died");
}

/// `ip addr OP 2001:db8:a2::1/48 dev eth6 EXTRA` in leaf-par1's tenant VRF: the address
/// from which the FRR leaf originates par1's IPv6 prefix (a connected route).
fn leaf_par1_v6_address(lab: &RunningLab, op: &str, extra: &[&str]) {
    let mut argv = vec![
        "ip",
        "netns",
        "exec",
        "tenant",
        "ip",
        "addr",
        op,
        "2001:db8:a2::1/48",
        "dev",
        "eth6",
    ];
    argv.extend(extra);
    let out = lab.exec("leaf-par1", &argv).expect("ip addr");
    assert!(
        out.status.success(),
        "ip addr {op} in leaf-par1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_datacenters_tunnels_routes_and_failover() {
    let name = "two_datacenters_tunnels_routes_and_failover";
    if !require_root(name)
        || !require_program(name, "wireguard-go")
        || !require_program(name, "gobgpd")
        || !require_program(name, "iperf3")
    {
        return;
    }
    // From a copy of the topology's directory: the fast-failover check changes the
    // gatewans' configs while the lab runs.
    let (_copy, topo_file) = lab::bench::copy_topology(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../lab/topologies/two-dc.clab.yml"),
    )
    .expect("copy of two-dc");
    let mut topo = lab::Topology::load(&topo_file).expect("topology");
    topo.name = "t-wan".into();
    with_build_binaries(&mut topo);
    let lab = Harness::up_topology(topo).expect("lab up");
    let start = Instant::now();
    // The target is 10 s; two handshakes that cross cost WireGuard's 5 s retry, and a
    // busy CI machine more: the bound is three times the target, a miss is reported.
    let up = wait_until(Duration::from_secs(30), || {
        GATEWANS.iter().all(|n| established(&lab, n) == 4)
    });
    let took = start.elapsed();
    if !up {
        print_tunnel_diagnosis(&lab);
    }
    assert!(up, "16 tunnel ends not Established within 30 s");
    println!("all 8 tunnels Established at both ends {took:?} after lab up");
    if took > Duration::from_secs(10) {
        println!("MISSED TARGET: tunnels took {took:?} to come up (target 10 s)");
    }

    check_mss_clamped_from_the_start(&lab, start);
    while_stable(&lab, start, || {
        check_routes_and_filters(&lab);
        check_trace(&lab);
    });
    // In the quiet lab: the probes against what the emulator applies.
    let window = Duration::from_secs(5); // probe.window default: 5 × 1 s
    // Past the window, a probe's timeout (0.5 s) and the age of a measurement when it is
    // read (up to a probe interval), with room for a busy machine: a reading taken 1 s
    // after the window once mixed in probes of the previous delay (a baseline 0.5 ms
    // below the 40 ms the emulator applied, which no round trip can be).
    let settle = window + Duration::from_secs(3);
    check_probe_measurements(&lab, window, settle);
    // Outside the watch: a saturated tunnel here (two cores; with wireguard-go before
    // 0.0.20230223 its socket buffer overflows) may lose probes, and the controller may
    // move off it.
    check_tenant_traffic(&lab);
    check_tcp_without_icmp(&lab);
    check_gatewan_restart(&lab);

    // A prefix the par1 leaf stops originating (its tenant address is removed) leaves the
    // mesh and the sg1 fabric.
    let v6 = "2001:db8:a2::/48";
    leaf_par1_v6_address(&lab, "del", &[]);
    // Leaf, route reflector, a par1 bgpctl, the mesh (pushed across the bgpctls' hops,
    // ADR 0050), an sg1 bgpctl, fabric-sg1: about 1 s here. The bound is room for a busy
    // machine; before ADR 0050 gossip sometimes left it to anti-entropy, up to 20 s.
    let withdrawn = Instant::now();
    let gone = wait_until(Duration::from_secs(10), || {
        fabric_routes(&lab, "fabric-sg1", v6).is_empty()
    });
    assert!(
        gone,
        "{v6} still at fabric-sg1 10 s after leaf-par1 withdrew it"
    );
    let took = withdrawn.elapsed();
    assert!(
        !fabric_routes(&lab, "fabric-sg1", "172.16.2.0/24").is_empty(),
        "the other prefix went too"
    );
    println!("{v6} withdrawn by leaf-par1 is gone from fabric-sg1 {took:.1?} later");
    // And back: the address returns (without duplicate address detection, which would
    // hold it tentative for a second), leaf-par1 originates the prefix again, and it
    // reaches fabric-sg1. The drain below streams IPv6 across it.
    leaf_par1_v6_address(&lab, "add", &["nodad"]);
    let added = Instant::now();
    let back = wait_until(Duration::from_secs(10), || {
        !fabric_routes(&lab, "fabric-sg1", v6).is_empty()
    });
    assert!(
        back,
        "{v6} not back at fabric-sg1 10 s after leaf-par1 originated it again"
    );
    let took = added.elapsed();
    // leaf-sg1 installs what the fabric holds at its next RIB poll (0.5 s).
    assert!(
        wait_until(Duration::from_secs(10), || ping_all(
            &lab,
            "host-sg1",
            "2001:db8:a2::10",
            3
        )),
        "host-sg1 cannot ping host-par1 over IPv6 10 s after {v6} came back"
    );
    println!("{v6} originated again by leaf-par1 is back at fabric-sg1 {took:.1?} later");

    // Failover: sg1 needs 1.5 Gbps toward par1 (lumen 2 × 1 Gbps, cogent 2 × 500 Mbps), so
    // its controller chose tunnels of both transits. The transit carrying a ping stream
    // fails: within two probe intervals (2 s) gobgpd on fabric-sg1 holds only routes over
    // the other transit's tunnels.
    lab.impair("wan-lumen", &["reset"]).expect("impair reset");
    std::thread::sleep(settle);
    let macs = tunnel_macs(&lab, &["gatewan01-sg1", "gatewan02-sg1"]);
    let transit_of = |mac: &str| {
        macs.iter()
            .find(|(m, _)| m == mac)
            .map_or("?".to_string(), |(_, t)| t.clone())
    };
    let before: Vec<String> = fabric_routes(&lab, "fabric-sg1", "172.16.2.0/24")
        .iter()
        .map(|r| transit_of(&r.1))
        .collect();
    println!("routes to par1 before: over {before:?}");
    assert!(
        before.iter().any(|t| t == "lumen") && before.iter().any(|t| t == "cogent"),
        "the chosen tunnels do not use both transits: {before:?}"
    );
    // Tenant traffic during the failover: a ping stream (150+ packets/s); each gatewan
    // moves a Down tunnel's traffic onto a healthy one at once (local repair), so the
    // outage is the probes' detection time, not detection + BGP + the leaf.
    let (stream, carrier, failed) = stream_and_its_transit(&lab, 8);
    let other = if failed == "lumen" { "cogent" } else { "lumen" };
    let emulator = format!("wan-{failed}");
    lab.impair(&emulator, &["loss=100%"]).expect("impair");
    let failed_at = Instant::now();
    let mut after = Vec::new();
    let moved = wait_until(Duration::from_secs(10), || {
        after = fabric_routes(&lab, "fabric-sg1", "172.16.2.0/24")
            .iter()
            .map(|r| transit_of(&r.1))
            .collect();
        !after.is_empty() && after.iter().all(|t| t == other)
    });
    let took = failed_at.elapsed();
    println!("routes to par1 moved to {after:?} {took:?} after {failed} failed");
    assert!(moved, "routes did not leave {failed}: {after:?}");
    // A tunnel is checked at every probe and published when it gets worse, so this is the
    // probe timeout (500 ms) + a few lost probes + a gossip round + the decision and
    // UPDATE: about 0.9 s (0.9 to 1.3 s by hand on this machine). The bound is three
    // times that, for a busy CI machine; it was 2 s and a run took 2.08 s.
    assert!(
        took <= Duration::from_secs(3),
        "routes moved after {took:?}, more than three times the expected 0.9 s"
    );
    let (sent, received, ms) = stream_figures(stream);
    let lost = sent - received;
    let outage = lost * ms / sent.max(1);
    println!(
        "{failed} (carrying {carrier}) failed under a ping stream host-sg1 -> host-par1 ({} packets/s): {lost} of {sent} lost, an outage of about {outage} ms (target 1000 ms with default probe settings)",
        sent * 1000 / ms.max(1)
    );
    if outage > 1000 {
        println!("MISSED TARGET: failover outage {outage} ms (target 1000 ms)");
    }
    // Detection takes at least a probe timeout: a stream that crossed loses some.
    assert!(lost > 0, "the failure of {failed} did not hit the stream");
    // The target is 1 s; three times that is the bound, so a busy machine does not flake.
    assert!(
        outage <= 3000,
        "failover lost {lost} of {sent} packets ({outage} ms)"
    );

    // The transit comes back: its tunnels come up again and the routes may return to them;
    // no packet is lost on the way but in FRR's own next-hop reinstall.
    let drops = leaf_drops(&lab);
    let stream = ping_stream(&lab, "host-sg1", "172.16.2.10", 7);
    std::thread::sleep(Duration::from_secs(1));
    lab.impair(&emulator, &["reset"]).expect("impair reset");
    let (sent, received) = stream_result(stream);
    println!(
        "{failed} restored under the same stream: {} of {sent} lost",
        sent - received
    );
    assert_lossless_but_for_frr(
        &format!("restoring {failed}"),
        sent,
        received,
        drops,
        leaf_drops(&lab),
    );
    check_drain(&lab);
    check_fast_failover(&lab, &topo_file);
    check_frr_next_hops(&lab);
    lab.down().expect("lab down");
}
