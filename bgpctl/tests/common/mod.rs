//! Shared harness of the BGP tests: two network namespaces joined by a veth pair, the
//! speaker running inside one of them, and gobgpd or FRR bgpd in the other.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bgpctl::bgp::{self, SpeakerHandle, SpeakerSettings, Type5Route};
pub(crate) use gatewan_tests::{Netns, require_program, require_root, skip, wait_until};

/// Root and programs present, or (outside CI) skip.
pub(crate) fn ready(test: &str, programs: &[&str]) -> bool {
    require_root(test) && programs.iter().all(|p| require_program(test, p))
}

/// Speaker side `a` (10.0.0.1, fd00::1) and peer side `b` (10.0.0.2, fd00::2) on one veth.
pub(crate) struct Pair {
    pub a: Netns,
    pub b: Netns,
    pub dir: PathBuf,
}

pub(crate) const A4: &str = "10.0.0.1";
pub(crate) const B4: &str = "10.0.0.2";
pub(crate) const A6: &str = "fd00::1";
pub(crate) const B6: &str = "fd00::2";

/// The speaker under test: AS 65000, router id A4, one peer, outgoing connections only,
/// no graceful restart, every route target imported. Tests override what they exercise.
pub(crate) fn speaker_settings(peer: bgp::PeerSettings) -> SpeakerSettings {
    SpeakerSettings {
        asn: 65000,
        router_id: A4.parse().expect("A4 is an IPv4 address"),
        listen: None,
        peers: vec![peer],
        graceful_restart: None,
        import_route_targets: vec![],
        import_prefixes: Default::default(),
    }
}

impl Pair {
    pub(crate) fn new(test: &str) -> Pair {
        let a = Netns::new();
        let b = Netns::new();
        a.exec_ok(&[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.name,
        ]);
        for (ns, v4, v6) in [(&a, A4, A6), (&b, B4, B6)] {
            ns.exec_ok(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            ns.exec_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
        }
        let dir = std::env::temp_dir().join(format!("{}-{test}", a.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        Pair { a, b, dir }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The speaker on its own runtime, inside a namespace.
pub(crate) struct Speaker {
    rt: Option<tokio::runtime::Runtime>,
    handle: Option<SpeakerHandle>,
}

impl Speaker {
    pub(crate) fn start(ns: &Netns, settings: SpeakerSettings) -> Speaker {
        let path = format!("/run/netns/{}", ns.name);
        let (rt, handle) = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            // Worker threads are created here, so they (and their sockets) live in `ns`.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let handle = {
                let _g = rt.enter();
                bgp::spawn(settings).expect("spawn speaker")
            };
            (rt, handle)
        })
        .join()
        .expect("speaker thread");
        Speaker {
            rt: Some(rt),
            handle: Some(handle),
        }
    }

    pub(crate) fn handle(&self) -> &SpeakerHandle {
        self.handle.as_ref().expect("running")
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().expect("runtime").block_on(f)
    }

    pub(crate) fn state(&self, peer: &str) -> bgp::PeerState {
        let peer: IpAddr = peer.parse().unwrap();
        self.handle()
            .peers()
            .into_iter()
            .find(|p| p.address == peer)
            .expect("peer")
            .state
    }

    pub(crate) fn status(&self, peer: &str) -> bgp::PeerStatus {
        let peer: IpAddr = peer.parse().unwrap();
        self.handle()
            .peers()
            .into_iter()
            .find(|p| p.address == peer)
            .expect("peer")
    }

    pub(crate) fn wait_established(&self, peer: &str, timeout: Duration) {
        let ok = wait_until(timeout, || self.state(peer) == bgp::PeerState::Established);
        assert!(
            ok,
            "session to {peer} not established: {:?}",
            self.status(peer)
        );
    }

    pub(crate) fn received(&self) -> std::sync::Arc<bgp::ReceivedRoutes> {
        self.handle().subscribe_received().borrow().clone()
    }

    pub(crate) fn shutdown(mut self) {
        if let (Some(rt), Some(h)) = (self.rt.as_ref(), self.handle.take()) {
            rt.block_on(h.shutdown());
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            {
                let _g = rt.enter();
                drop(self.handle.take());
            }
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// A gobgpd in a namespace, driven through the gobgp CLI.
pub(crate) struct Gobgpd {
    pub ns_name: String,
    child: Child,
    pub log: PathBuf,
}

impl Gobgpd {
    pub(crate) fn start(ns: &Netns, dir: &std::path::Path, name: &str, toml: &str) -> Gobgpd {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, toml).expect("gobgpd config");
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let child = ns
            .cmd("gobgpd")
            .arg("-f")
            .arg(&cfg)
            .args(["--api-hosts", "127.0.0.1:50051", "-p", "-l", "debug"])
            .args(["--pprof-disable"])
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn gobgpd");
        let g = Gobgpd {
            ns_name: ns.name.clone(),
            child,
            log,
        };
        let ok = wait_until(Duration::from_secs(10), || {
            g.cli(&["global"]).status.success()
        });
        assert!(ok, "gobgpd did not come up: {}", g.log_tail());
        g
    }

    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns_name, "gobgp"])
            .args(args)
            .output()
            .expect("gobgp")
    }

    pub(crate) fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "gobgp {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("-j");
        let text = self.cli_ok(&a);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("gobgp {args:?}: {e}: {text}"))
    }

    pub(crate) fn neighbor_state(&self, addr: &str) -> String {
        let v = self.json(&["neighbor", addr]);
        let s = &v["state"]["session_state"];
        // gobgp prints the gRPC enum: 1 idle … 6 established.
        match s.as_u64() {
            Some(1) => "idle".into(),
            Some(2) => "connect".into(),
            Some(3) => "active".into(),
            Some(4) => "opensent".into(),
            Some(5) => "openconfirm".into(),
            Some(6) => "established".into(),
            _ => s.as_str().map_or_else(|| s.to_string(), String::from),
        }
    }

    /// UPDATEs gobgpd received from `addr`.
    pub(crate) fn updates_received(&self, addr: &str) -> u64 {
        let v = self.json(&["neighbor", addr]);
        v["state"]["messages"]["received"]["update"]
            .as_u64()
            .unwrap_or(0)
    }

    pub(crate) fn adj_in(&self, addr: &str) -> Vec<GobgpRoute> {
        parse_rib(&self.json(&["neighbor", addr, "adj-in", "-a", "evpn"]))
    }

    pub(crate) fn global_rib(&self) -> Vec<GobgpRoute> {
        parse_rib(&self.json(&["global", "rib", "-a", "evpn"]))
    }

    pub(crate) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gobgpd {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("==== gobgpd log tail\n{}", self.log_tail());
        }
    }
}

/// A type-5 path as gobgp shows it, normalized for comparison.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GobgpRoute {
    pub rd: String,
    pub prefix: String,
    pub label: u64,
    pub gateway: String,
    pub esi: String,
    pub etag: u64,
    pub next_hop: String,
    pub local_pref: Option<u64>,
    pub as_path: Vec<u64>,
    /// Extended communities as "rt:65000:100", "encap:8", "rmac:02:..", "lbw:<bytes/s>".
    pub communities: Vec<String>,
    pub stale: bool,
}

fn parse_rib(v: &serde_json::Value) -> Vec<GobgpRoute> {
    let mut out = Vec::new();
    // gobgp prints {"<nlri>": [path, ...], ...}; an empty table prints {} or null.
    let Some(map) = v.as_object() else {
        return out;
    };
    for paths in map.values() {
        for p in paths.as_array().into_iter().flatten() {
            let nlri = &p["nlri"];
            if nlri["type"] != 5 {
                continue;
            }
            let val = &nlri["value"];
            let rd = &val["rd"];
            let rd = format!(
                "{}:{}",
                rd["admin"].as_u64().map_or_else(
                    || rd["admin"].as_str().unwrap_or("?").to_string(),
                    |a| a.to_string()
                ),
                rd["assigned"]
            );
            let mut r = GobgpRoute {
                rd,
                prefix: val["prefix"].as_str().unwrap_or("").to_string(),
                label: val["label"].as_u64().unwrap_or(u64::MAX),
                gateway: val["gateway"].as_str().unwrap_or("").to_string(),
                esi: val["esi"].as_str().unwrap_or("").to_string(),
                etag: val["etag"].as_u64().unwrap_or(u64::MAX),
                next_hop: String::new(),
                local_pref: None,
                as_path: Vec::new(),
                communities: Vec::new(),
                stale: p["stale"].as_bool().unwrap_or(false),
            };
            for a in p["attrs"].as_array().into_iter().flatten() {
                match a["type"].as_u64() {
                    Some(2) => {
                        for seg in a["as_paths"].as_array().into_iter().flatten() {
                            for asn in seg["asns"].as_array().into_iter().flatten() {
                                r.as_path.push(asn.as_u64().unwrap_or(0));
                            }
                        }
                    }
                    Some(5) => r.local_pref = a["value"].as_u64(),
                    Some(14) => r.next_hop = a["nexthop"].as_str().unwrap_or("").to_string(),
                    Some(16) => {
                        for c in a["value"].as_array().into_iter().flatten() {
                            r.communities.push(community(c));
                        }
                    }
                    _ => {}
                }
            }
            r.communities.sort();
            out.push(r);
        }
    }
    out.sort();
    out
}

fn community(c: &serde_json::Value) -> String {
    match (c["type"].as_u64(), c["subtype"].as_u64()) {
        (Some(0..=2), Some(2)) => format!("rt:{}", c["value"].as_str().unwrap_or("?")),
        (Some(3), Some(12)) => format!("encap:{}", c["tunnel_type"]),
        (Some(6), Some(3)) => format!("rmac:{}", c["mac"].as_str().unwrap_or("?")),
        (Some(0x40 | 0), Some(4)) => format!("lbw:{}", c["bandwidth"]),
        _ => format!("other:{c}"),
    }
}

/// What gobgp must show for a route the speaker advertised.
pub(crate) fn expected(r: &Type5Route, ibgp: bool, local_asn: u64) -> GobgpRoute {
    let mut communities: Vec<String> = r
        .route_targets
        .iter()
        .map(|rt| format!("rt:{rt}"))
        .collect();
    communities.push("encap:8".into());
    communities.push(format!("rmac:{}", bgp::types::format_mac(&r.router_mac)));
    if let Some(bps) = r.link_bandwidth {
        communities.push(format!("lbw:{}", (bps as f32 / 8.0)));
    }
    communities.sort();
    GobgpRoute {
        rd: r.rd.to_string(),
        prefix: r.prefix.to_string(),
        label: u64::from(r.label_vni),
        gateway: if r.prefix.addr().is_ipv4() {
            "0.0.0.0".into()
        } else {
            "::".into()
        },
        esi: "single-homed".into(),
        etag: 0,
        next_hop: r.next_hop.to_string(),
        local_pref: ibgp.then_some(100),
        as_path: if ibgp { vec![] } else { vec![local_asn] },
        communities,
        stale: false,
    }
}

pub(crate) fn sorted(mut v: Vec<GobgpRoute>) -> Vec<GobgpRoute> {
    v.sort();
    v
}

pub(crate) fn route(rd: &str, prefix: &str, vni: u32, next_hop: &str, mac: u8) -> Type5Route {
    Type5Route {
        rd: rd.parse().unwrap(),
        prefix: prefix.parse().unwrap(),
        label_vni: vni,
        next_hop: next_hop.parse().unwrap(),
        router_mac: [0x02, 0, 0, 0, 0, mac],
        route_targets: vec!["65000:100".parse().unwrap()],
        link_bandwidth: None,
    }
}

/// `command -v` for a program under a path not on PATH (FRR's daemons).
pub(crate) fn have_file(test: &str, path: &str) -> bool {
    if std::path::Path::new(path).exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {path} is missing (scripts/bootstrap.sh installs FRR)"
    );
    skip(&format!("{test}: {path} is missing"));
    false
}

pub(crate) fn null() -> Stdio {
    Stdio::null()
}

/// Routes as one line for a child process: `rd,prefix,vni,next_hop,mac,rt+rt,lbw;…`.
pub(crate) fn route_spec(routes: &[Type5Route]) -> String {
    routes
        .iter()
        .map(|r| {
            format!(
                "{},{},{},{},{},{},{}",
                r.rd,
                r.prefix,
                r.label_vni,
                r.next_hop,
                r.router_mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
                r.route_targets
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join("+"),
                r.link_bandwidth.map_or(String::new(), |b| b.to_string()),
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

pub(crate) fn parse_route_spec(s: &str) -> Vec<Type5Route> {
    s.split(';')
        .filter(|x| !x.is_empty())
        .map(|r| {
            let f: Vec<&str> = r.split(',').collect();
            let mut mac = [0u8; 6];
            for (i, m) in mac.iter_mut().enumerate() {
                *m = u8::from_str_radix(&f[4][2 * i..2 * i + 2], 16).unwrap();
            }
            Type5Route {
                rd: f[0].parse().unwrap(),
                prefix: f[1].parse().unwrap(),
                label_vni: f[2].parse().unwrap(),
                next_hop: f[3].parse().unwrap(),
                router_mac: mac,
                route_targets: f[5]
                    .split('+')
                    .filter(|x| !x.is_empty())
                    .map(|t| t.parse().unwrap())
                    .collect(),
                link_bandwidth: f[6].parse().ok(),
            }
        })
        .collect()
}
