//! Advertising benchmark of the BGP speaker, against gobgpd, plus a fuzz run.
//!
//! `cargo bench -p bgpctl --bench bgp_advertise` (as root, with gobgpd/gobgp installed);
//! `BGP_BENCH_QUICK=1` runs 10,000 routes and 100,000 fuzz inputs instead of 100,000 and
//! 1,000,000.
//!
//! On one bridged LAN of network namespaces:
//! - S, the speaker under test (a child process, for a clean peak RSS), advertises N
//!   type-5 routes to gobgpd B: time from B's session Established to B holding all N;
//! - C, a second speaker, advertises N other routes to S (S then has N out and N in: its
//!   peak RSS, VmHWM, is printed) and to gobgpd A;
//! - once A holds those N routes, A's neighbor B2 (another gobgpd) is enabled: time from
//!   that session's Established to B2 holding all N. The ratio ours/GoBGP is printed
//!   (target ≤ 0.5), as is S's peak RSS (target ≤ 150 MB);
//! - the fuzz run feeds random mutations of valid UPDATEs through the UPDATE path
//!   (framing, decoding, RFC 7606 handling) and prints the count and the time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bgpctl::bgp::codec::{ExportContext, announce_updates, end_of_rib, withdraw_updates};
use bgpctl::bgp::inbound::{ReceiveContext, process_update_message};
use bgpctl::bgp::{PeerSettings, RouteDistinguisher, RouteTarget, SpeakerSettings, Type5Route};
use common::{Gobgpd, Netns, wait_until};

const CHILD_ENV: &str = "BGP_BENCH_CHILD";

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    // cargo bench passes --bench; a plain `cargo test --benches` run passes nothing and
    // must not take minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!("bgp_advertise: run with `cargo bench -p bgpctl --bench bgp_advertise`");
        return;
    }
    let quick = std::env::var("BGP_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
    let (routes, fuzz_inputs) = if quick {
        (10_000, 100_000)
    } else {
        (100_000, 1_000_000)
    };
    let network = nix::unistd::geteuid().is_root()
        && ["gobgpd", "gobgp"].iter().all(|p| {
            Command::new("sh")
                .args(["-c", &format!("command -v {p}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if network {
        advertise(routes);
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "bgp_advertise needs root and gobgpd in CI"
        );
        println!("SKIP advertising benchmark: needs root, gobgpd and gobgp");
    }
    fuzz(fuzz_inputs);
}

/// N routes: /32 prefixes under `base`.0.0.0/8, 64 tunnels (next hop, Router's MAC, RD).
fn generate(n: usize, base: u8) -> Vec<Type5Route> {
    (0..n)
        .map(|i| {
            let tunnel = (i % 64) as u8;
            let i = i as u32;
            Type5Route {
                rd: RouteDistinguisher::ipv4(Ipv4Addr::new(192, 0, 2, tunnel), u16::from(base)),
                prefix: ipnet::IpNet::from(IpAddr::V4(Ipv4Addr::new(
                    base,
                    (i >> 16) as u8,
                    (i >> 8) as u8,
                    i as u8,
                ))),
                label_vni: 10_000 + u32::from(base),
                next_hop: IpAddr::V4(Ipv4Addr::new(198, 51, 100, tunnel)),
                router_mac: [0x02, 0, 0, 0, base, tunnel],
                route_targets: vec![RouteTarget::As2 {
                    asn: 65000,
                    value: 100,
                }],
                link_bandwidth: Some(1_000_000_000),
            }
        })
        .collect()
}

/// Child process: a speaker per `asn,router_id,listen,routes,base,peer_ip:peer_asn[:passive]…`.
/// Prints `received N` twice a second.
fn child(spec: &str) {
    let f: Vec<&str> = spec.split(',').collect();
    let asn: u32 = f[0].parse().expect("asn");
    let router_id: Ipv4Addr = f[1].parse().expect("router id");
    let listen = (!f[2].is_empty()).then(|| f[2].parse().expect("listen"));
    let n: usize = f[3].parse().expect("routes");
    let base: u8 = f[4].parse().expect("base");
    let peers = f[5..]
        .iter()
        .map(|p| {
            let x: Vec<&str> = p.split(':').collect();
            let mut s = PeerSettings::new(x[0].parse().expect("peer"), x[1].parse().expect("asn"));
            s.passive = x.get(2) == Some(&"passive");
            s
        })
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let h = bgpctl::bgp::spawn(SpeakerSettings {
            asn,
            router_id,
            listen,
            peers,
            graceful_restart: None,
            import_route_targets: vec![],
            import_prefixes: Default::default(),
        })
        .expect("spawn");
        h.set_advertised(generate(n, base));
        let rx = h.subscribe_received();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let sent: u64 = h.peers().iter().map(|p| p.prefixes_sent).sum();
            println!("received {} sent {sent}", rx.borrow().len());
        }
    });
}

/// Namespaces on one bridge: node i has 10.0.0.i/24.
struct Lan {
    /// Holds the bridge; deleted (with the namespace) on drop.
    _lan: Netns,
    nodes: Vec<Netns>,
    dir: std::path::PathBuf,
}

impl Lan {
    fn new(n: usize) -> Lan {
        let lan = Netns::new();
        lan.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        lan.exec_ok(&["ip", "link", "set", "br0", "up"]);
        let mut nodes = Vec::new();
        for i in 1..=n {
            let ns = Netns::new();
            let port = format!("p{i}");
            lan.exec_ok(&[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns.name,
            ]);
            lan.exec_ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
            ns.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("10.0.0.{i}/24"),
                "dev",
                "eth0",
            ]);
            ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
            nodes.push(ns);
        }
        let dir = std::env::temp_dir().join(format!("{}-bgp-bench", lan.name));
        std::fs::create_dir_all(&dir).expect("bench dir");
        Lan {
            _lan: lan,
            nodes,
            dir,
        }
    }

    fn node(&self, i: usize) -> &Netns {
        &self.nodes[i - 1]
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A speaker child process whose `received N` lines are followed.
struct ChildSpeaker {
    child: Child,
    received: Arc<AtomicU64>,
    _log: Arc<Mutex<Vec<String>>>,
}

impl ChildSpeaker {
    fn start(ns: &Netns, spec: &str) -> ChildSpeaker {
        let mut child = ns
            .cmd(std::env::current_exe().expect("bench binary"))
            .env(CHILD_ENV, spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child speaker");
        let received = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let (r, l) = (received.clone(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = line
                    .strip_prefix("received ")
                    .and_then(|x| x.split_whitespace().next())
                    .and_then(|x| x.parse().ok())
                {
                    r.store(n, Ordering::Relaxed);
                }
                if let Ok(mut l) = l.lock() {
                    l.push(line);
                }
            }
        });
        ChildSpeaker {
            child,
            received,
            _log: log,
        }
    }

    /// Peak resident set size in bytes (VmHWM). `ip netns exec` execs, so the pid is the
    /// speaker's.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for ChildSpeaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gobgpd_toml(asn: u32, id: &str, neighbors: &[(&str, u32, &str)]) -> String {
    let mut s = format!("[global.config]\n  as = {asn}\n  router-id = \"{id}\"\n");
    for (addr, peer_as, extra) in neighbors {
        s += &format!(
            r#"
[[neighbors]]
  [neighbors.config]
    neighbor-address = "{addr}"
    peer-as = {peer_as}
{extra}
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 90
    keepalive-interval = 30
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "l2vpn-evpn"
"#
        );
    }
    s
}

const PASSIVE: &str = "  [neighbors.transport.config]\n    passive-mode = true";

fn rib_count(g: &Gobgpd) -> u64 {
    let out = g.cli(&["global", "rib", "-a", "evpn", "summary"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("Destination:")
        .nth(1)
        .and_then(|x| x.split(',').next())
        .and_then(|x| x.trim().parse().ok())
        .unwrap_or(0)
}

/// Time from the session to `neighbor` being Established at `g` until `g` holds `n` routes.
fn time_to_hold(g: &Gobgpd, neighbor: &str, n: u64, limit: Duration) -> Option<Duration> {
    let deadline = Instant::now() + limit;
    let mut up = None;
    while Instant::now() < deadline {
        if up.is_none() && g.neighbor_state(neighbor) == "established" {
            up = Some(Instant::now());
        }
        if up.is_some() && rib_count(g) >= n {
            return up.map(|t| t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn advertise(n: usize) {
    println!("== advertising {n} type-5 routes");
    // 1 S (speaker under test), 2 B, 3 A, 4 C (second speaker), 5 B2.
    let lan = Lan::new(5);
    let limit = Duration::from_secs(600);
    let b = Gobgpd::start(
        lan.node(2),
        &lan.dir,
        "b",
        &gobgpd_toml(65001, "10.0.0.2", &[("10.0.0.1", 65000, PASSIVE)]),
    );
    let s = ChildSpeaker::start(
        lan.node(1),
        &format!("65000,10.0.0.1,0.0.0.0:179,{n},10,10.0.0.2:65001,10.0.0.4:65003:passive"),
    );
    let ours = time_to_hold(&b, "10.0.0.1", n as u64, limit).expect("gobgpd B got all routes");
    println!(
        "speaker → gobgpd: {n} routes held after {:.3} s ({:.0} routes/s)",
        ours.as_secs_f64(),
        n as f64 / ours.as_secs_f64()
    );

    let b2 = Gobgpd::start(
        lan.node(5),
        &lan.dir,
        "b2",
        &gobgpd_toml(65004, "10.0.0.5", &[("10.0.0.3", 65002, PASSIVE)]),
    );
    let a = Gobgpd::start(
        lan.node(3),
        &lan.dir,
        "a",
        &gobgpd_toml(
            65002,
            "10.0.0.3",
            &[
                ("10.0.0.4", 65003, PASSIVE),
                ("10.0.0.5", 65004, "    admin-down = true"),
            ],
        ),
    );
    let _c = ChildSpeaker::start(
        lan.node(4),
        &format!("65003,10.0.0.4,,{n},11,10.0.0.1:65000,10.0.0.3:65002"),
    );
    let loaded = wait_until(limit, || {
        rib_count(&a) >= n as u64 && s.received.load(Ordering::Relaxed) >= n as u64
    });
    assert!(
        loaded,
        "loading: gobgpd A holds {}, speaker received {}",
        rib_count(&a),
        s.received.load(Ordering::Relaxed)
    );
    let rss = s.peak_rss();
    println!(
        "speaker peak RSS with {n} routes out and {n} in: {:.1} MB (VmHWM)",
        rss as f64 / 1e6
    );

    a.cli_ok(&["neighbor", "10.0.0.5", "enable"]);
    let theirs = time_to_hold(&b2, "10.0.0.3", n as u64, limit).expect("gobgpd B2 got all routes");
    println!(
        "gobgpd → gobgpd: {n} routes held after {:.3} s ({:.0} routes/s)",
        theirs.as_secs_f64(),
        n as f64 / theirs.as_secs_f64()
    );
    println!(
        "ratio speaker/gobgpd: {:.3} (target ≤ 0.5); peak RSS {:.1} MB (target ≤ 150 MB)",
        ours.as_secs_f64() / theirs.as_secs_f64(),
        rss as f64 / 1e6
    );
}

/// xorshift64*: enough randomness for mutations, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn fuzz(inputs: u64) {
    println!("== fuzzing the UPDATE path with {inputs} inputs");
    let mut routes = generate(40, 10);
    routes[3].prefix = "2001:db8::/48".parse().expect("prefix");
    routes[5].next_hop = "2001:db8::1".parse().expect("next hop");
    // One attribute group of 100 routes: multi-NLRI UPDATEs near 4096 octets.
    for i in 0..100u32 {
        let mut r = routes[0].clone();
        r.prefix = ipnet::IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)));
        routes.push(r);
    }
    let refs: Vec<&Type5Route> = routes.iter().collect();
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    for ibgp in [false, true] {
        let ctx = ExportContext {
            local_asn: 65001,
            ibgp,
            four_octet_as: true,
        };
        corpus.extend(announce_updates(&refs, &ctx).iter().map(|b| b.to_vec()));
    }
    corpus.extend(withdraw_updates(&refs).iter().map(|b| b.to_vec()));
    corpus.push(end_of_rib().to_vec());
    let ctxs = [
        ReceiveContext {
            local_asn: 65000,
            peer_asn: 65001,
            ibgp: false,
            four_octet_as: true,
        },
        ReceiveContext {
            local_asn: 65001,
            peer_asn: 65001,
            ibgp: true,
            four_octet_as: false,
        },
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut withdrawn, mut reset) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    for i in 0..inputs {
        let mut m = corpus[rng.below(corpus.len())].clone();
        match rng.below(5) {
            // a few byte flips anywhere in the body
            0 | 1 => {
                for _ in 0..=rng.below(4) {
                    let at = 19 + rng.below(m.len() - 19);
                    m[at] = rng.next() as u8;
                }
            }
            // a length or flags octet of the section or attribute headers
            2 => {
                let at = 19 + rng.below(m.len().min(60) - 19);
                m[at] = [0, 1, 2, 3, 4, 0x10, 0x40, 0x80, 0xc0, 0xff][rng.below(10)];
            }
            // truncate or extend
            3 => {
                let len = 19 + rng.below(m.len() + 16 - 19);
                m.resize(len, rng.next() as u8);
            }
            // random bytes behind a valid header
            _ => {
                let len = 19 + rng.below(200);
                m.truncate(19);
                while m.len() < len {
                    m.push(rng.next() as u8);
                }
            }
        }
        // Mostly keep the framing consistent so that inputs reach the attribute decoder;
        // sometimes leave it inconsistent (framing errors).
        if rng.below(8) != 0 {
            let len = m.len() as u16;
            m[16..18].copy_from_slice(&len.to_be_bytes());
        }
        let ctx = &ctxs[(i % 2) as usize];
        let r = std::panic::catch_unwind(|| process_update_message(&m, 4096, ctx));
        match r {
            Ok(Ok(o)) if o.treat_as_withdraw => withdrawn += 1,
            Ok(Ok(_)) => ok += 1,
            Ok(Err(_)) => reset += 1,
            Err(_) => {
                let hex: String = m.iter().map(|b| format!("{b:02x}")).collect();
                panic!("UPDATE path panicked on input {i}: {hex}");
            }
        }
    }
    let took = t0.elapsed();
    println!(
        "fuzz: {inputs} inputs in {:.2} s ({:.0}/s), no panic: {ok} processed, {withdrawn} treat-as-withdraw, {reset} session resets",
        took.as_secs_f64(),
        inputs as f64 / took.as_secs_f64()
    );
}
