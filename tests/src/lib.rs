//! Harness for end-to-end tests: real daemons as processes in a private network
//! namespace, inspected through routingctl and their metrics endpoint.
//!
//! Tests need root (namespaces, iptables). Without it they fail when `CI=true` and skip
//! with a message otherwise.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod top;

/// Where a lab test's nodes find the build's binaries (see [`with_build_binaries`]).
pub const NODE_BIN: &str = "/opt/gatewan/bin";

/// Binds the build's binary directory into every node of `topo` at [`NODE_BIN`], first in
/// PATH: the lab's nodes run `gatewan`, `bgpctl` and `routingctl` from PATH, as a container
/// runs its image's binaries (a node has its own /tmp and /run, so host paths there would
/// not be seen).
pub fn with_build_binaries(topo: &mut lab::Topology) {
    let bin_dir = bin("gatewan").parent().expect("bin dir").to_path_buf();
    assert!(bin_dir.join("bgpctl").exists(), "bgpctl is not built");
    for node in topo.nodes.values_mut() {
        node.binds
            .push((bin_dir.clone(), PathBuf::from(NODE_BIN), true));
        node.env.insert(
            "PATH".into(),
            format!("{NODE_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        );
    }
}

/// Path of a workspace binary next to the test executable (`target/<profile>/NAME`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// True when the test may run; false (after a message) when it must skip. Panics in CI.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root, and CI=true forbids skipping"
    );
    skip(&format!("{test}: needs root (network namespaces)"));
    false
}

/// Fails in CI, skips elsewhere, when a program the test needs is missing.
pub fn require_program(test: &str, program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {program} is missing (scripts/bootstrap.sh installs it)"
    );
    skip(&format!(
        "{test}: {program} is missing (run scripts/bootstrap.sh)"
    ));
    false
}

/// Says that a test is skipped on the process's real stderr: libtest captures `eprintln!`
/// and shows captured output only for failures, so a skipped test that "passes" would
/// otherwise say nothing to the person running it.
pub fn skip(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIP {why}");
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A network namespace with `lo` up, deleted (with its processes) on drop.
pub struct Netns {
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "gwt-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    pub fn exec_ok(&self, argv: &[&str]) -> Output {
        run_ok(self.cmd(argv[0]).args(&argv[1..]))
    }

    /// Runs `f` on a thread that has entered this namespace (for sockets of the test).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let f_ns = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(f_ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    }

    /// Runs the future `make` returns on a current-thread tokio runtime of a thread that
    /// has entered this namespace: a netlink socket opened there belongs to it, as a
    /// daemon's adapter opened in its own namespace.
    pub fn block_on<T, F>(&self, make: impl FnOnce() -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: std::future::Future<Output = T>,
    {
        self.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(make())
        })
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One gatewan process of a test cluster.
pub struct Node {
    pub name: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

/// Where a cluster's nodes gossip: `addresses` are announced, `bind` is listened on.
pub struct NodeSpec {
    pub name: String,
    pub datacenter: String,
    pub bind: SocketAddr,
    pub advertise: Vec<SocketAddr>,
    pub seeds: Vec<SocketAddr>,
}

/// gatewans in one namespace, sharing a working directory.
pub struct Cluster {
    pub ns: Netns,
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    pub keyring: PathBuf,
    /// `mesh.admins` of the nodes added from now on (key fingerprints).
    pub admins: Vec<String>,
}

impl Cluster {
    pub fn new(test: &str) -> Cluster {
        let ns = Netns::new();
        let dir = std::env::temp_dir().join(format!("{}-{test}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test dir");
        let keyring = dir.join("keyring");
        write_keyring(&keyring, &[&gatewan_mesh::MeshKey::generate().to_base64()]);
        Cluster {
            ns,
            dir,
            nodes: Vec::new(),
            keyring,
            admins: Vec::new(),
        }
    }

    /// `count` nodes on 127.0.0.{1..}, all seeded with the first.
    pub fn simple(test: &str, count: usize) -> Cluster {
        let mut c = Cluster::new(test);
        let seed: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        for i in 1..=count {
            let addr: SocketAddr = format!("127.0.0.{i}:7946").parse().unwrap();
            c.add(NodeSpec {
                name: format!("gw{i}"),
                datacenter: format!("dc{}", i.div_ceil(2)),
                bind: addr,
                advertise: vec![addr],
                seeds: vec![seed],
            });
        }
        c
    }

    /// Writes a node's config (its own keyring file, a copy of the cluster's) and starts it.
    pub fn add(&mut self, spec: NodeSpec) -> usize {
        let keyring = self.dir.join(format!("{}.keyring", spec.name));
        std::fs::copy(&self.keyring, &keyring).expect("keyring copy");
        self.add_with_keyring(spec, &keyring)
    }

    pub fn add_with_keyring(&mut self, spec: NodeSpec, keyring: &Path) -> usize {
        let i = self.nodes.len();
        let metrics: SocketAddr = format!("127.0.0.{}:{}", 200, 9000 + i).parse().unwrap();
        let socket = self.dir.join(format!("{}.sock", spec.name));
        let config = self.dir.join(format!("{}.yaml", spec.name));
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let admins = self
            .admins
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let yaml = format!(
            "name: {name}\ndatacenter: {dc}\nstate_dir: {state}\nmesh:\n  bind: \"{bind}\"\n  advertise: [{adv}]\n  seeds: [{seeds}]\n  keyring: {keyring}\n  admins: [{admins}]\ntransits:\n  - name: lumen\n    capacity: 1Gbps\napi:\n  socket: {socket}\nmetrics:\n  listen: \"{metrics}\"\n",
            name = spec.name,
            dc = spec.datacenter,
            state = self.dir.join(format!("{}.state", spec.name)).display(),
            bind = spec.bind,
            adv = list(&spec.advertise),
            seeds = list(&spec.seeds),
            keyring = keyring.display(),
            socket = socket.display(),
        );
        std::fs::write(&config, yaml).expect("config");
        let log = self.dir.join(format!("{}.log", spec.name));
        let mut node = Node {
            name: spec.name,
            config,
            socket,
            metrics,
            log,
            child: None,
        };
        self.start_node(&mut node);
        self.nodes.push(node);
        i
    }

    fn start_node(&self, node: &mut Node) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("log");
        let child = self
            .ns
            .cmd(bin("gatewan"))
            .arg("-c")
            .arg(&node.config)
            .env("RUST_LOG", "gatewan=debug")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn gatewan");
        node.child = Some(child);
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self, i: usize) {
        self.kill9(i);
        let mut node = std::mem::replace(
            &mut self.nodes[i],
            Node {
                name: String::new(),
                config: PathBuf::new(),
                socket: PathBuf::new(),
                metrics: "0.0.0.0:0".parse().unwrap(),
                log: PathBuf::new(),
                child: None,
            },
        );
        self.start_node(&mut node);
        self.nodes[i] = node;
    }

    /// `routingctl -o json members` against node `i`; None while its API is not up.
    pub fn members(&self, i: usize) -> Option<Vec<serde_json::Value>> {
        let out = routingctl(&self.nodes[i].socket, &["-o", "json", "members"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// State of the member named `name` as node `i` sees it.
    pub fn state_of(&self, i: usize, name: &str) -> Option<String> {
        self.members(i)?
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["state"].as_str().map(String::from))
    }

    /// Node `i` sees exactly the running nodes alive (and named).
    pub fn sees_all_alive(&self, i: usize, n: usize) -> bool {
        self.members(i).is_some_and(|m| {
            m.len() == n
                && m.iter().all(|m| {
                    m["state"] == "alive" && m["name"].as_str().is_some_and(|s| !s.is_empty())
                })
        })
    }

    pub fn wait_converged(&self, n: usize, timeout: Duration) {
        let ok = wait_until(timeout, || (0..n).all(|i| self.sees_all_alive(i, n)));
        if !ok {
            self.dump_logs();
        }
        assert!(
            ok,
            "the {n} nodes did not all see each other alive within {timeout:?}"
        );
    }

    /// A Prometheus sample of node `i`, e.g. `gatewan_mesh_datagrams_dropped_total{reason="replay"}`.
    pub fn metric(&self, i: usize, sample: &str) -> Option<f64> {
        let addr = self.nodes[i].metrics;
        let body = self.ns.run(move || http_get(addr, "/metrics"))?;
        body.lines().find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == sample).then(|| v.parse().ok()).flatten()
        })
    }

    pub fn dump_logs(&self) {
        for n in &self.nodes {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "==== {} (last lines)\n{}",
                n.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("test files kept in {}", self.dir.display());
        }
    }
}

/// One gatewan of the two-datacenter pair the tunnel tests build in namespaces: its
/// name, datacenter, slot, its lumen and cogent addresses (each a /30 whose gateway is the
/// address below it) and the seed, the other side's lumen address.
pub struct PairSide {
    pub name: &'static str,
    pub dc: &'static str,
    pub slot: u32,
    pub lumen: &'static str,
    pub cogent: &'static str,
    pub seed: &'static str,
}

pub const SG1: PairSide = PairSide {
    name: "gatewan01-sg1",
    dc: "sg1",
    slot: 1,
    lumen: "198.51.100.2",
    cogent: "203.0.113.2",
    seed: "198.51.100.6",
};

pub const PAR1: PairSide = PairSide {
    name: "gatewan01-par1",
    dc: "par1",
    slot: 2,
    lumen: "198.51.100.6",
    cogent: "203.0.113.6",
    seed: "198.51.100.2",
};

/// Writes `dir/NAME.yaml` for `side`: both transits (lumen 1 Gbps, cogent 500 Mbps, each
/// with its gateway), its pinned slot, wireguard-go, 50 probes a second over a 3 s window,
/// its state and API socket in `dir`; `extra` is YAML appended (whole top-level
/// sections: `metrics`, `fabric`, …).
pub fn write_pair_config(dir: &Path, side: &PairSide, keyring: &Path, extra: &str) -> PathBuf {
    let cfg = dir.join(format!("{}.yaml", side.name));
    let gw = |a: &str| {
        a.rsplit_once('.')
            .map(|(p, l)| format!("{p}.{}", l.parse::<u8>().unwrap() - 1))
            .unwrap()
    };
    std::fs::write(
        &cfg,
        format!(
            "name: {name}\ndatacenter: {dc}\nstate_dir: {state}\nmesh:\n  bind: \"0.0.0.0:7946\"\n  seeds: [\"{seed}:7946\"]\n  keyring: {kr}\ntransits:\n  - name: lumen\n    interface: lumen0\n    addresses: [{lumen}]\n    gateway: {glumen}\n    capacity: 1Gbps\n  - name: cogent\n    interface: cogent0\n    addresses: [{cogent}]\n    gateway: {gcogent}\n    capacity: 500Mbps\ntunnels:\n  slot: {slot}\n  wireguard: userspace\nprobe:\n  interval: 1s\n  count: 50\n  window: 3s\napi:\n  socket: {sock}\n{extra}",
            name = side.name,
            dc = side.dc,
            seed = side.seed,
            lumen = side.lumen,
            cogent = side.cogent,
            slot = side.slot,
            state = dir.join(format!("{}.state", side.name)).display(),
            kr = keyring.display(),
            glumen = gw(side.lumen),
            gcogent = gw(side.cogent),
            sock = dir.join(format!("{}.sock", side.name)).display(),
        ),
    )
    .unwrap();
    cfg
}

/// The two sides of the tunnel pair in namespaces: an "internet" router, and `SG1` and
/// `PAR1` each with `lumen0` and `cogent0` toward it (/30s), routed as real hosts are, by
/// one default route via lumen. Returns (internet, sg1, par1).
pub fn pair_world() -> (Netns, Host, Host) {
    let internet = Netns::new();
    internet.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let a = Host::new();
    let b = Host::new();
    let gateway = |addr: &str| {
        addr.rsplit_once('.')
            .map(|(p, l)| format!("{p}.{}", l.parse::<u8>().unwrap() - 1))
            .unwrap()
    };
    for (h, side, tag) in [(&a, &SG1, "a"), (&b, &PAR1, "b")] {
        for (transit, addr) in [("lumen", side.lumen), ("cogent", side.cogent)] {
            let outside = format!("{tag}-{transit}");
            link(&h.ns, &format!("{transit}0"), &internet, &outside);
            let gw = format!("{}/30", gateway(addr));
            internet.exec_ok(&["ip", "addr", "add", &gw, "dev", &outside]);
            internet.exec_ok(&["ip", "link", "set", &outside, "up"]);
        }
        h.sh(&format!(
            "ip addr add {lumen}/30 dev lumen0 && ip link set lumen0 up && ip addr add {cogent}/30 dev cogent0 && ip link set cogent0 up && ip route add default via {gl}",
            lumen = side.lumen,
            cogent = side.cogent,
            gl = gateway(side.lumen),
        ));
    }
    (internet, a, b)
}

/// A fresh directory for a test's configs and state (`TMP/PREFIX-PID`), and a keyring of
/// one new key in it.
pub fn pair_dir(prefix: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let keyring = dir.join("keyring");
    write_keyring(&keyring, &[&gatewan_mesh::MeshKey::generate().to_base64()]);
    (dir, keyring)
}

pub fn write_keyring(path: &Path, keys: &[&str]) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, keys.join("\n") + "\n").expect("keyring");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

pub fn routingctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(bin("routingctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run routingctl")
}

/// A minimal HTTP/1.0 GET for the metrics endpoint (no client crate needed for one call).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body.split_once("\r\n\r\n")?.1.to_string())
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

/// A gatewan host: its own network namespace and, held by a process, its own mount
/// namespace (a private /run/wireguard, kept across daemon restarts).
pub struct Host {
    pub ns: Netns,
    pub holder: Child,
    pub gatewan: Option<Child>,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Extra environment of the daemons started in the node (e.g. libfaketime's).
    pub env: Vec<(String, String)>,
}

impl Host {
    pub fn new() -> Host {
        let ns = Netns::new();
        std::fs::create_dir_all("/run/wireguard").unwrap();
        // A process that owns the node's mount namespace, so every daemon (re)started in the
        // node sees the same private /run/wireguard.
        let holder = ns
            .cmd("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs tmpfs /run/wireguard && exec sleep 3600",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        Host {
            ns,
            holder,
            gatewan: None,
            socket: PathBuf::new(),
            config: PathBuf::new(),
            log: PathBuf::new(),
            env: Vec::new(),
        }
    }

    /// A command inside the node (its network and mount namespaces).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-m", "-n", "--"])
            .arg(program);
        c
    }

    pub fn sh(&self, script: &str) -> String {
        let out = run_ok(self.cmd("sh").args(["-c", script]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .cmd(bin("gatewan"))
            .arg("-c")
            .arg(&self.config)
            .env("RUST_LOG", "gatewan=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.gatewan = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.gatewan.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn tunnels(&self) -> Vec<serde_json::Value> {
        let out = routingctl(&self.socket, &["-o", "json", "tunnels"]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Whether the gatewan has exactly `n` tunnels, all Established.
    pub fn established(&self, n: usize) -> bool {
        let t = self.tunnels();
        t.len() == n && t.iter().all(|t| t["state"] == "Established")
    }

    /// Interface name → ifindex of the tunnel interfaces.
    pub fn tunnel_ifindexes(&self) -> Vec<(String, String)> {
        let out = self.sh("ip -o link show | grep sdwan || true");
        let mut v: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| {
                let mut it = l.split(": ");
                let idx = it.next()?.trim().to_string();
                let name = it.next()?.split('@').next()?.to_string();
                Some((name, idx))
            })
            .collect();
        v.sort();
        v
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "==== {} (last lines)\n{}",
                self.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// A veth pair between two namespaces, named `a_if` in `a` and `b_if` in `b`.
pub fn link(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = format!("t{}x{n}", std::process::id() % 100000);
    run_ok(Command::new("ip").args([
        "link",
        "add",
        &format!("{tmp}a"),
        "type",
        "veth",
        "peer",
        "name",
        &format!("{tmp}b"),
    ]));
    run_ok(Command::new("ip").args([
        "link",
        "set",
        &format!("{tmp}a"),
        "netns",
        &a.name,
        "name",
        a_if,
    ]));
    run_ok(Command::new("ip").args([
        "link",
        "set",
        &format!("{tmp}b"),
        "netns",
        &b.name,
        "name",
        b_if,
    ]));
}
