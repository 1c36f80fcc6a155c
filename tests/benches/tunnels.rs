//! Benchmark of issue 4: one gatewan with 100 tunnels.
//!
//! Run as root, after a release build of the binaries:
//! `cargo build --release --bins && cargo bench -p gatewan-tests --bench tunnels`.
//!
//! 1. Planning and the reconcile decision for 100 tunnels (pure, no kernel), timed alone.
//! 2. The real daemon: a `gatewan` in a namespace meets 50 remote gatewans of another
//!    datacenter (mesh members run by this program in a second namespace, each announcing
//!    two transits), so it plans 100 tunnels (pairing same-transit) and reconciles them from
//!    scratch with wireguard-go. Measured: the reconciles' own time (from the daemon's log),
//!    the time from the daemon's start until 100 tunnels are configured, the
//!    daemon's CPU while it probes them (10 probes/s each) and its peak RSS. The peer in
//!    the same run: the same 100 interfaces configured by a shell script of `ip` and `wg`
//!    commands, the way one would by hand.
//! 3. The probe engine alone with replies: two engines of 100 tunnels each over a veth,
//!    against 100 `ping -i 0.1` processes doing the same probing, CPU of each.
//!
//! `TUNNELS_BENCH_SECONDS` sets the CPU sampling time (default 20).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gatewan::probe::engine::{self, ProbeHandle, ProbeSettings, ProbeTarget};
use gatewan::probe::stats::TunnelState;
use gatewan::tunnels::reconcile::{self, WantedTunnel};
use gatewan_mesh::driver;
use gatewan_mesh::{Keyring, MemberId, MeshCore, MeshKey, MeshSettings, NodeId};
use gatewan_proto::v1::{self, record::Body};
use gatewan_tests::{Netns, bin, wait_until};
use gatewan_tunnel_plan::{GatewanView, Pairing, PlanSettings, TransitView, plan};

const REMOTES: u32 = 50;
const TARGET_RECONCILE: Duration = Duration::from_secs(3);
const TARGET_CPU_PERCENT: f64 = 2.0;
const TARGET_RSS_MB: f64 = 40.0;

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("tunnels bench: needs root (network namespaces, wireguard-go); skipped");
        return;
    }
    let seconds: u64 = std::env::var("TUNNELS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    pure_parts();
    daemon_with_100_tunnels(Duration::from_secs(seconds));
    probe_engine_against_ping(Duration::from_secs(seconds));
}

fn view(i: u32, datacenter: &str, transits: &[(&str, Ipv4Addr)]) -> GatewanView {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&i.to_be_bytes());
    id[4] = datacenter.len() as u8;
    GatewanView {
        id: NodeId(id),
        name: format!("{datacenter}-{i}"),
        datacenter: datacenter.into(),
        slot: i,
        slot_claimed_ms: 0,
        slot_pinned: false,
        transits: transits
            .iter()
            .enumerate()
            .map(|(k, (n, a))| TransitView {
                name: (*n).into(),
                addresses: vec![IpAddr::V4(*a)],
                position: k as u32,
            })
            .collect(),
        public_key: vec![i as u8; 32],
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pure_parts() {
    let transits = [
        ("lumen", Ipv4Addr::new(198, 51, 100, 1)),
        ("cogent", Ipv4Addr::new(203, 0, 113, 1)),
    ];
    let local = view(1, "local", &transits);
    let mut all = vec![local.clone()];
    all.extend((0..REMOTES).map(|i| view(i + 2, "remote", &transits)));
    let settings = PlanSettings {
        pairing: Pairing::SameTransit,
        ..PlanSettings::default()
    };
    let mut plans = Vec::new();
    let mut decisions = Vec::new();
    let mut steps = 0;
    for _ in 0..200 {
        let t = Instant::now();
        let (tunnels, problems) = plan(&local, &all, &settings);
        plans.push(t.elapsed());
        assert_eq!((tunnels.len(), problems.len()), (100, 0));
        let t = Instant::now();
        let wanted: Vec<WantedTunnel> = tunnels
            .iter()
            .filter_map(|t| WantedTunnel::from_plan(t, Some(0x5d01)))
            .collect();
        let (s, _) = reconcile::steps(&wanted, &[], &HashMap::new(), 0, 0);
        decisions.push(t.elapsed());
        steps = s.len();
    }
    println!("== 1. pure parts, 100 tunnels (median of 200)");
    println!("   plan:               {:>10.1?}", median(plans));
    println!(
        "   reconcile decision: {:>10.1?} ({steps} steps from scratch)",
        median(decisions)
    );
}

/// CPU time (user + system) of a process, from /proc/PID/stat.
fn process_cpu(pid: u32) -> Duration {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    Duration::from_secs_f64((utime + stime) / ticks)
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn tunnel_links(ns: &Netns, prefix: &str) -> usize {
    let out = ns
        .cmd("ip")
        .args(["-o", "link", "show", "up"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|n| n.trim().starts_with(prefix))
        })
        .count()
}

fn veth(a: &Netns, b: &Netns, name: &str, a_addr: &str, b_addr: &str) {
    let ok = |c: &mut Command| assert!(c.status().expect("ip").success(), "{c:?}");
    ok(Command::new("ip").args([
        "link", "add", name, "netns", &a.name, "type", "veth", "peer", "name", name, "netns",
        &b.name,
    ]));
    for (ns, addr) in [(a, a_addr), (b, b_addr)] {
        ok(ns.cmd("ip").args(["addr", "add", addr, "dev", name]));
        ok(ns.cmd("ip").args(["link", "set", name, "up"]));
    }
}

/// 50 gatewans of datacenter "remote", as mesh members of this process inside `ns`.
fn remote_gatewans(ns: &Netns, keyring: MeshKey, seed: SocketAddr) -> std::thread::JoinHandle<()> {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut handles = Vec::new();
            for i in 0..REMOTES {
                let port = 7001 + i as u16;
                let addrs = vec![
                    SocketAddr::new(Ipv4Addr::new(198, 51, 100, 2).into(), port),
                    SocketAddr::new(Ipv4Addr::new(203, 0, 113, 2).into(), port),
                ];
                let id = MemberId {
                    node: NodeId::random(),
                    generation: 1,
                    addrs: addrs.clone(),
                };
                let mut rng = [0u8; 32];
                rand::fill(&mut rng);
                let mut signer = [0u8; 32];
                rand::fill(&mut signer);
                let core = MeshCore::new(
                    id.clone(),
                    gatewan_mesh::MemberKey::from_seed(signer),
                    gatewan_mesh::KeyPins::default(),
                    Keyring::new(keyring.clone()),
                    MeshSettings::default(),
                    vec![seed],
                    rng,
                )
                .expect("mesh core");
                let socket =
                    driver::bind_socket(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port), false)
                        .expect("bind");
                let h = driver::spawn(
                    core,
                    driver::MeshSockets::single(socket),
                    driver::MeshFiles::default(),
                    None,
                );
                let mut key = [0u8; 32];
                rand::fill(&mut key);
                h.publish(Body::Node(v1::NodeRecord {
                    id: bytes::Bytes::copy_from_slice(&id.node.0),
                    name: format!("remote{i:02}"),
                    datacenter: "remote".into(),
                    role: v1::Role::Gatewan as i32,
                    transits: [("lumen", "198.51.100.2"), ("cogent", "203.0.113.2")]
                        .iter()
                        .map(|(n, a)| v1::Transit {
                            name: (*n).into(),
                            addresses: vec![(*a).into()],
                            capacity_bps: 1_000_000_000,
                            ..Default::default()
                        })
                        .collect(),
                    wireguard_public_key: wireguard_control::Key(key)
                        .get_public()
                        .0
                        .to_vec()
                        .into(),
                    mesh_addresses: addrs.iter().map(ToString::to_string).collect(),
                    tunnel_slot: Some(i + 2),
                    ..Default::default()
                }))
                .await
                .expect("publish");
                handles.push(h);
            }
            // Serve until the process ends.
            std::future::pending::<()>().await;
            drop(handles);
        });
    })
}

fn daemon_with_100_tunnels(sample: Duration) {
    println!("== 2. gatewan daemon with 100 tunnels (wireguard-go)");
    let a = Netns::new();
    let b = Netns::new();
    veth(&a, &b, "lumen0", "198.51.100.1/24", "198.51.100.2/24");
    veth(&a, &b, "cogent0", "203.0.113.1/24", "203.0.113.2/24");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = MeshKey::generate();
    let keyring = dir.path().join("keyring");
    gatewan_mesh::keyring_file::save(&keyring, std::slice::from_ref(&key)).expect("keyring");
    let config = dir.path().join("gatewan.yaml");
    std::fs::write(
        &config,
        format!(
            "name: bench-local\ndatacenter: local\nstate_dir: {state}\n\
             mesh:\n  bind: \"0.0.0.0:7946\"\n  seeds: [\"198.51.100.2:7001\"]\n  keyring: {keyring}\n\
             transits:\n  - name: lumen\n    interface: lumen0\n    addresses: [198.51.100.1]\n    capacity: 1Gbps\n\
             \x20 - name: cogent\n    interface: cogent0\n    addresses: [203.0.113.1]\n    capacity: 1Gbps\n\
             tunnels:\n  slot: 1\n  pairing: same-transit\n  interface_prefix: bnch\n  wireguard: userspace\n\
             api:\n  socket: {api}\nlog:\n  level: info\n  format: json\n",
            state = dir.path().join("state").display(),
            keyring = keyring.display(),
            api = dir.path().join("api.sock").display(),
        ),
    )
    .expect("config");
    let _remotes = remote_gatewans(&b, key, "198.51.100.1:7946".parse().expect("addr"));
    let start = Instant::now();
    let mut daemon = a
        .cmd(bin("gatewan"))
        .args(["-c", config.to_str().expect("utf-8")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gatewan");
    let pid = daemon.id();
    // The daemon logs each reconcile that changed something with its duration: their sum
    // is the reconcile proper, without the wait for the mesh to bring the 50 remotes
    // (they retry their seed, this gatewan, every 2 s).
    let reconciles = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Duration>::new()));
    {
        let reconciles = reconciles.clone();
        let stderr = daemon.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("tunnels reconciled")
                    && let Some(took) = json_duration(&line, "took")
                {
                    reconciles.lock().expect("lock").push(took);
                }
            }
        });
    }
    let mut first = None;
    let all = wait_until(Duration::from_secs(60), || {
        let n = tunnel_links(&a, "bnch");
        if n > 0 && first.is_none() {
            first = Some(start.elapsed());
        }
        n >= 100
    });
    let total = start.elapsed();
    assert!(all, "gatewan did not configure 100 tunnels in 60 s");
    // The log line of the last reconcile follows its last link by a moment.
    std::thread::sleep(Duration::from_millis(300));
    let rounds = reconciles.lock().expect("lock").clone();
    let reconcile: Duration = rounds.iter().sum();
    let first = first.unwrap_or(total);
    std::thread::sleep(Duration::from_secs(3));
    let cpu0 = process_cpu(pid);
    let t0 = Instant::now();
    std::thread::sleep(sample);
    let cpu = (process_cpu(pid) - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    let rss = status_kb(pid, "VmRSS:") as f64 / 1024.0;
    let hwm = status_kb(pid, "VmHWM:") as f64 / 1024.0;
    let _ = daemon.kill();
    let _ = daemon.wait();
    // wireguard-go exits when its interface goes; the namespace's end removes them.
    drop(a);

    // The peer: the same 100 wireguard-go interfaces by shell.
    let c = Netns::new();
    let script = dir.path().join("by-hand.sh");
    let mut sh = String::from("set -e\n");
    let private = dir.path().join("private");
    std::fs::write(&private, MeshKey::generate().to_base64()).expect("key");
    for i in 0..100u32 {
        let (x, y) = (i / 100, i % 100);
        sh.push_str(&format!(
            "wireguard-go hand{i} 2>/dev/null\n\
             wg set hand{i} private-key {key} listen-port {port} peer {peer} endpoint 198.51.100.2:{port} allowed-ips 0.0.0.0/0,::/0\n\
             ip addr add 100.64.{x}.{a}/31 dev hand{i}\n\
             ip addr add fd5d:3a00::{i:x}:0/127 dev hand{i}\n\
             ip link set hand{i} up\n",
            key = private.display(),
            port = 30000 + i,
            peer = wireguard_control::Key([i as u8 + 1; 32]).get_public().to_base64(),
            a = y * 2,
        ));
    }
    std::fs::write(&script, sh).expect("script");
    let t = Instant::now();
    let ok = c.cmd("sh").arg(&script).status().expect("sh").success();
    let by_hand = t.elapsed();
    assert!(ok, "the shell peer failed");
    assert_eq!(tunnel_links(&c, "hand"), 100);
    drop(c);

    println!(
        "   reconcile of 100 tunnels from scratch: {reconcile:.2?} in {} rounds {rounds:.2?} \
         (target {TARGET_RECONCILE:?}: {})",
        rounds.len(),
        verdict(reconcile <= TARGET_RECONCILE)
    );
    println!(
        "   start -> first tunnel up {first:.2?}; -> 100 tunnels configured {total:.2?} \
         (the daemon's start and the mesh join of 50 remotes included: {})",
        verdict(total <= TARGET_RECONCILE)
    );
    println!(
        "   peer: 100 wireguard-go interfaces by shell (ip + wg): {by_hand:.2?}; gatewan reconcile / shell = {:.2}",
        reconcile.as_secs_f64() / by_hand.as_secs_f64()
    );
    println!(
        "   gatewan CPU while probing 100 tunnels (no replies: the remotes have no WireGuard): {cpu:.2} % of a core over {sample:?}"
    );
    println!(
        "   gatewan RSS {rss:.1} MB, peak {hwm:.1} MB (target {TARGET_RSS_MB} MB: {})",
        verdict(hwm <= TARGET_RSS_MB)
    );
}

/// A `Duration`'s Debug text (`1.2s`, `35.1ms`, `870µs`) from a JSON log line's field.
fn json_duration(line: &str, field: &str) -> Option<Duration> {
    let key = format!("\"{field}\":\"");
    let start = line.find(&key)? + key.len();
    let text = &line[start..start + line[start..].find('"')?];
    let (number, scale) = if let Some(v) = text.strip_suffix("ms") {
        (v, 1e-3)
    } else if let Some(v) = text.strip_suffix("µs") {
        (v, 1e-6)
    } else if let Some(v) = text.strip_suffix("ns") {
        (v, 1e-9)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    Some(Duration::from_secs_f64(number.parse::<f64>().ok()? * scale))
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// CPU time of this process's engine threads (`schedstat`: nanoseconds on a CPU).
fn engine_threads_cpu() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim() != "gw-probe" {
                continue;
            }
            ns += std::fs::read_to_string(t.path().join("schedstat"))
                .unwrap_or_default()
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

fn probe_engine_against_ping(sample: Duration) {
    println!("== 3. probe engine, 100 tunnels at 10 probes/s with replies, against ping");
    let a = Netns::new();
    let b = Netns::new();
    veth(&a, &b, "probe0", "100.65.255.0/31", "100.65.255.1/31");
    let targets = |side: u32| -> Vec<ProbeTarget> {
        (0..100u32)
            .map(|i| {
                let base = u32::from(Ipv4Addr::new(100, 65, 0, 0)) + 2 * i;
                let ip = |k: u32| IpAddr::from(Ipv4Addr::from(base + k));
                ProbeTarget {
                    tunnel_id: format!("t{i}"),
                    tunnel_index: u64::from(i),
                    interface: "probe0".into(),
                    local: SocketAddr::new(ip(side), 21000 + i as u16),
                    peer: SocketAddr::new(ip(1 - side), 21000 + i as u16),
                    initiator: side == 0,
                }
            })
            .collect()
    };
    for (side, ns) in [(0, &a), (1, &b)] {
        let batch: String = targets(side)
            .iter()
            .map(|t| format!("addr add {}/31 dev probe0\n", t.local.ip()))
            .collect();
        let file = std::env::temp_dir().join(format!("{}-addrs", ns.name));
        std::fs::write(&file, batch).expect("batch");
        ns.exec_ok(&["ip", "-batch", file.to_str().expect("utf-8")]);
        let _ = std::fs::remove_file(&file);
    }
    let engine_in = |ns: &Netns, side: u32| -> ProbeHandle {
        let h = ns.run(|| engine::spawn_thread(ProbeSettings::default()).expect("engine"));
        h.set_targets(targets(side));
        h
    };
    let ea = engine_in(&a, 0);
    let eb = engine_in(&b, 1);
    let established = |h: &ProbeHandle| {
        let r = h.reports().borrow().clone();
        r.len() == 100 && r.values().all(|r| r.state == TunnelState::Established)
    };
    assert!(
        wait_until(Duration::from_secs(10), || established(&ea)
            && established(&eb)),
        "100 probed tunnels not Established"
    );
    let (cpu0, t0) = (engine_threads_cpu(), Instant::now());
    std::thread::sleep(sample);
    let engines = (engine_threads_cpu() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    // Two engines, each probing 100 tunnels and answering its peer's 100.
    let per_engine = engines / 2.0 * 100.0;
    drop(ea);
    drop(eb);

    // The peer: 100 pings at the same rate, each from one of the local addresses.
    let pings: Vec<_> = targets(0)
        .iter()
        .map(|t| {
            a.cmd("ping")
                .args(["-q", "-i", "0.1", "-I"])
                .arg(t.local.ip().to_string())
                .arg(t.peer.ip().to_string())
                .stdout(Stdio::null())
                .spawn()
                .expect("ping")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let cpu_of =
        |ps: &[std::process::Child]| -> Duration { ps.iter().map(|p| process_cpu(p.id())).sum() };
    let (c0, t0) = (cpu_of(&pings), Instant::now());
    std::thread::sleep(sample);
    let ping = (cpu_of(&pings) - c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    for mut p in pings {
        let _ = p.kill();
        let _ = p.wait();
    }
    println!(
        "   probe engine: {per_engine:.2} % of a core (target {TARGET_CPU_PERCENT} %: {})",
        verdict(per_engine <= TARGET_CPU_PERCENT)
    );
    println!(
        "   peer: 100 x `ping -i 0.1` (echo answered by the kernel): {ping:.2} % of a core; engine / ping = {}",
        if ping > 0.0 {
            format!("{:.2}", per_engine / ping)
        } else {
            "n/a (ping used no measurable CPU over the sample)".to_string()
        }
    );
}
