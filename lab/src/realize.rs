//! Realization: turns a [`Topology`] into namespaces, veth pairs, addresses, routes and
//! sysctls (`up`), reports on it (`status`) and removes every trace of it (`down`).
//!
//! Host-visible objects are named from the lab name (`/run/netns/lab.LAB.*`,
//! `/run/lab/LAB/`); veth pairs are created directly inside the node namespaces, so they
//! never exist on the host. The state file is written before anything is created, and
//! `down` also sweeps by name, so it cleans up after a `lab up` killed half-way.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::ns::{self, MountSpec};
use crate::supervisor::{self, Supervisor};
use crate::topology::{Node, NodeRole, Topology};

/// Persistent record of a lab, in `/run/lab/LAB/state.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub topology: Option<Topology>,
    pub supervisor_pid: Option<i32>,
    /// Nodes whose `exec` commands completed (they run once per lab lifetime).
    pub exec_done: BTreeSet<String>,
    pub complete: bool,
}

fn state_path(lab: &str) -> PathBuf {
    ns::lab_dir(lab).join("state.json")
}

pub fn read_state(lab: &str) -> Option<State> {
    let s = std::fs::read_to_string(state_path(lab)).ok()?;
    serde_json::from_str(&s).ok()
}

fn write_state(lab: &str, st: &State) -> Result<()> {
    let p = state_path(lab);
    let tmp = p.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(st)?)?;
    std::fs::rename(&tmp, &p)?;
    Ok(())
}

fn lock(lab: &str) -> Result<Flock<File>> {
    let dir = ns::lab_dir(lab);
    std::fs::create_dir_all(&dir)?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| anyhow!("lock lab {lab}: {e}"))
}

/// Labs that have state on this host.
pub fn labs() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(ns::RUN_DIR)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("state.json").exists())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn run_ip(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut c = Command::new("ip");
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().context("run `ip` (is iproute2 installed?)")?;
    if let Some(s) = stdin
        && let Some(mut i) = child.stdin.take()
    {
        i.write_all(s.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Interface names present in network namespace `netns` (`None`: the caller's).
fn node_links(netns: Option<&str>) -> Result<BTreeSet<String>> {
    let out = match netns {
        Some(n) => run_ip(&["-n", n, "-o", "link", "show"], None)?,
        None => run_ip(&["-o", "link", "show"], None)?,
    };
    Ok(out
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
        .collect())
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn write_sysctl(key: &str, val: &str) -> Result<()> {
    std::fs::write(sysctl_path(key), val).with_context(|| format!("sysctl {key}={val}"))
}

/// Bridged frames skip the namespace's iptables, as they do in a switch. Once the host has
/// br_netfilter loaded (Docker loads it), every new namespace sends each frame crossing a
/// bridge (a leaf's VXLAN bridge) through its netfilter hooks: about 1 % of this machine's
/// CPU in `lab bench dataplane`, for nothing. Without br_netfilter the keys do not exist.
fn bridges_skip_netfilter() -> Result<()> {
    for key in [
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
        "net.bridge.bridge-nf-call-arptables",
    ] {
        if sysctl_path(key).exists() {
            write_sysctl(key, "0")?;
        }
    }
    Ok(())
}

/// Who keeps the lab's processes and emulators alive.
pub enum SupervisorMode {
    /// A detached `EXE __supervise LAB` process (the CLI).
    Detached(PathBuf),
    /// Threads of the calling process (the test harness); returned by [`up`].
    InProcess,
}

fn supervisor_alive(lab: &str, pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.iter().any(|a| *a == b"__supervise") && args.contains(&lab.as_bytes())
        })
        .unwrap_or(false)
}

/// Brings `topo` up, or repairs it if it is already (partly) up.
pub fn up(topo: &Topology, mode: SupervisorMode) -> Result<Option<Supervisor>> {
    if !nix::unistd::geteuid().is_root() {
        bail!("lab needs root (network and mount namespaces)");
    }
    let lab = topo.name.as_str();
    let _lock = lock(lab)?;
    let mut st = read_state(lab).unwrap_or_default();
    if let Some(old) = &st.topology {
        let mut a = old.clone();
        let mut b = topo.clone();
        a.source = None;
        b.source = None;
        if a.prometheus != b.prometheus && a.nodes == b.nodes && a.links == b.links {
            bail!(match (&a.prometheus, &b.prometheus) {
                (Some(p), None) => format!(
                    "lab {lab} runs a Prometheus on {}: repair it with the same --prometheus options, or run `lab down` first",
                    p.listen
                ),
                (None, _) =>
                    format!("lab {lab} is up without a Prometheus; run `lab down` first to add one"),
                (Some(p), Some(_)) => format!(
                    "lab {lab} runs a Prometheus with other settings (on {}); run `lab down` first",
                    p.listen
                ),
            });
        }
        if a != b {
            bail!("lab {lab} is already up with a different topology; run `lab down` first");
        }
    }
    st.topology = Some(topo.clone());
    st.complete = false;
    write_state(lab, &st)?;
    std::fs::write(
        ns::lab_dir(lab).join("topology.json"),
        serde_json::to_vec(topo)?,
    )?;

    for node in topo.nodes.values() {
        let name = ns::netns_name(lab, &node.name);
        ns::create_netns(&name)?;
        // DAD would leave fresh IPv6 addresses unusable for a second or two.
        ns::in_netns(&ns::netns_path(lab, &node.name), || {
            write_sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            write_sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            bridges_skip_netfilter()
        })?;
        // Before the links: a VRF's interfaces are created directly inside its namespace.
        for vrf in node.vrfs.keys() {
            let path = ns::vrf_netns_path(lab, &node.name, vrf);
            if !ns::is_ns_mount(&path)
                && !ns::recover_netns(&ns::mntns_path(lab, &node.name), vrf, &path)?
            {
                ns::create_netns(&ns::vrf_netns_name(lab, &node.name, vrf))?;
            }
            ns::in_netns(&ns::vrf_netns_path(lab, &node.name, vrf), || {
                for (k, v) in VRF_SYSCTLS {
                    write_sysctl(k, v)?;
                }
                bridges_skip_netfilter()
            })
            .with_context(|| format!("sysctls of VRF {vrf} of node {}", node.name))?;
        }
    }
    ns::ensure_private_dir(&ns::mntns_dir(lab))?;
    ns::ensure_tmpfs(&ns::lab_dir(lab).join("nodes"))?;
    for node in topo.nodes.values() {
        let nd = ns::lab_dir(lab).join("nodes").join(&node.name);
        ns::create_mntns(MountSpec {
            netns: ns::netns_path(lab, &node.name),
            target: ns::mntns_path(lab, &node.name),
            etc_upper: nd.join("etc"),
            etc_work: nd.join("etc.work"),
            binds: node.binds.clone(),
        })
        .with_context(|| format!("mount namespace of {}", node.name))?;
        // The node (its zebra in particular) sees its VRFs, and only them, by their names.
        let vrfs: Vec<(String, PathBuf)> = node
            .vrfs
            .keys()
            .map(|v| (v.clone(), ns::vrf_netns_path(lab, &node.name, v)))
            .collect();
        ns::bind_netns_into(&ns::mntns_path(lab, &node.name), &vrfs)
            .with_context(|| format!("VRF namespaces in node {}", node.name))?;
    }

    // Links: repair half-created pairs, create missing ones in one batch.
    let mut present: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in topo.nodes.values() {
        for n in node_netns_names(lab, node) {
            let links = node_links(Some(&n))?;
            present.insert(n, links);
        }
    }
    let mut batch = String::new();
    for l in &topo.links {
        let na = link_netns(topo, &l.a.0, &l.a.1);
        let nb = link_netns(topo, &l.b.0, &l.b.1);
        let has_a = present[&na].contains(&l.a.1);
        let has_b = present[&nb].contains(&l.b.1);
        if has_a && has_b {
            continue;
        }
        // `ip -batch` lines cannot name a namespace: lone ends go one by one.
        if has_a {
            run_ip(&["-n", &na, "link", "del", &l.a.1], None)?;
        }
        if has_b {
            run_ip(&["-n", &nb, "link", "del", &l.b.1], None)?;
        }
        batch.push_str(&format!(
            "link add {} netns {na} type veth peer name {} netns {nb}\n",
            l.a.1, l.b.1,
        ));
    }
    if !batch.is_empty() {
        run_ip(&["-batch", "-"], Some(&batch))?;
    }

    for node in topo.nodes.values() {
        let sysctls = node_sysctls(node);
        ns::in_netns(&ns::netns_path(lab, &node.name), move || {
            for (k, v) in &sysctls {
                write_sysctl(k, v)?;
            }
            Ok(())
        })
        .with_context(|| format!("sysctls of node {}", node.name))?;
        let netns = ns::netns_name(lab, &node.name);
        run_ip(&["-n", &netns, "-batch", "-"], Some(&node_ip_batch(node)))
            .with_context(|| format!("configure node {}", node.name))?;
        configure_vrfs(node, Some(&netns), &|v| {
            ns::vrf_netns_name(lab, &node.name, v)
        })?;
    }
    for node in topo.nodes.values() {
        if let NodeRole::WanEmulator { ports, impairment } = &node.role {
            set_wan_gso(topo, &node.name, ports, &[*impairment, *impairment])?;
        }
    }

    let sup = match mode {
        SupervisorMode::InProcess => Some(Supervisor::start(topo)?),
        SupervisorMode::Detached(exe) => {
            let alive = st.supervisor_pid.is_some_and(|p| supervisor_alive(lab, p));
            if !alive {
                st.supervisor_pid = Some(spawn_supervisor(lab, &exe)?);
                write_state(lab, &st)?;
            }
            None
        }
    };

    for node in topo.nodes.values() {
        if st.exec_done.contains(&node.name) {
            continue;
        }
        for c in &node.exec {
            let out = supervisor::node_command(lab, node, c)?
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("exec on {}", node.name))?;
            if !out.status.success() {
                bail!(
                    "exec `{c}` on node {} failed ({}): {}{}",
                    node.name,
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        st.exec_done.insert(node.name.clone());
        write_state(lab, &st)?;
    }
    st.complete = true;
    write_state(lab, &st)?;
    Ok(sup)
}

/// Sysctls of every VRF namespace: a VRF routes between its interfaces and its L3 VNI
/// (a kernel VRF would share the node's settings, which a routing leaf has on anyway), and
/// its addresses are usable at once, as the node's are.
const VRF_SYSCTLS: [(&str, &str); 4] = [
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
];

/// Network namespaces of a node (as named for `ip -n`): its own, then its VRFs'.
fn node_netns_names(lab: &str, node: &Node) -> Vec<String> {
    std::iter::once(ns::netns_name(lab, &node.name))
        .chain(
            node.vrfs
                .keys()
                .map(|v| ns::vrf_netns_name(lab, &node.name, v)),
        )
        .collect()
}

/// The namespace that holds `node`'s end `ifname` of a link: the node's, or its VRF's.
fn link_netns(topo: &Topology, node: &str, ifname: &str) -> String {
    match topo.nodes.get(node).and_then(|n| n.vrf_of(ifname)) {
        Some(vrf) => ns::vrf_netns_name(&topo.name, node, vrf),
        None => ns::netns_name(&topo.name, node),
    }
}

/// Brings the node's VRFs up, or repairs them: in the underlay namespace (`underlay`,
/// `None` for the caller's own), creates each missing L3 VNI VXLAN device and moves it, and
/// any VRF interface still there (containerlab creates them in the node's namespace), into
/// the VRF's namespace (`vrf_ns(name)`, for `ip -n`); there, brings the interfaces up with
/// their addresses and enslaves the VXLAN device to a bridge carrying the Router's MAC.
///
/// The VXLAN device is created in the underlay so that its UDP socket stays there (x-netns
/// VXLAN): encapsulated traffic is routed by the node toward the remote VTEPs.
fn configure_vrfs(
    node: &Node,
    underlay: Option<&str>,
    vrf_ns: &dyn Fn(&str) -> String,
) -> Result<()> {
    if node.vrfs.is_empty() {
        return Ok(());
    }
    let under_links = node_links(underlay)?;
    let mut under = String::new();
    let mut inside = Vec::new();
    for vrf in node.vrfs.values() {
        let vns = vrf_ns(&vrf.name);
        let vrf_links = node_links(Some(&vns))?;
        let mut b = String::from("link set lo up\n");
        for i in &vrf.interfaces {
            if !vrf_links.contains(i) && under_links.contains(i) {
                under.push_str(&format!("link set {i} netns {vns}\n"));
            }
            b.push_str(&format!("link set {i} up\n"));
            for a in node.addresses.get(i).into_iter().flatten() {
                b.push_str(&format!("addr replace {a} dev {i}\n"));
            }
        }
        if let Some(l) = &vrf.l3vni {
            let (vx, br) = (l.vxlan_dev(), l.bridge_dev());
            if !vrf_links.contains(&vx) {
                if !under_links.contains(&vx) {
                    under.push_str(&format!(
                        "link add {vx} type vxlan id {} local {} dstport 4789 nolearning\n",
                        l.vni, l.vtep
                    ));
                }
                under.push_str(&format!("link set {vx} netns {vns}\n"));
            }
            if !vrf_links.contains(&br) {
                b.push_str(&format!("link add {br} type bridge\n"));
            }
            b.push_str(&format!(
                "link set {br} address {}\nlink set {vx} master {br}\nlink set {vx} up\nlink set {br} up\n",
                l.rmac
            ));
        }
        inside.push((vrf.name.clone(), vns, b));
    }
    if !under.is_empty() {
        let mut args = Vec::new();
        if let Some(u) = underlay {
            args.extend(["-n", u]);
        }
        args.extend(["-batch", "-"]);
        run_ip(&args, Some(&under))
            .with_context(|| format!("VRF devices of node {}", node.name))?;
    }
    for (name, vns, b) in inside {
        run_ip(&["-n", &vns, "-batch", "-"], Some(&b))
            .with_context(|| format!("VRF {name} of node {}", node.name))?;
    }
    Ok(())
}

/// Sysctls of a node, the implicit ones first.
fn node_sysctls(node: &Node) -> Vec<(String, String)> {
    let mut sysctls: Vec<(String, String)> = Vec::new();
    if let NodeRole::WanEmulator { ports, .. } = &node.role {
        for p in ports {
            // The emulator's ports are wires: no addresses, no IPv6 chatter.
            sysctls.push((format!("net.ipv6.conf.{p}.disable_ipv6"), "1".into()));
        }
    }
    sysctls.extend(node.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())));
    sysctls
}

/// `ip -batch` input that brings a node's interfaces outside its VRFs up, with addresses
/// and routes.
fn node_ip_batch(node: &Node) -> String {
    let mut b = String::from("link set lo up\n");
    // A VRF's interfaces are configured in its own namespace (configure_vrfs).
    for i in node.interfaces.iter().filter(|i| node.vrf_of(i).is_none()) {
        b.push_str(&format!("link set {i} up\n"));
    }
    for (i, addrs) in node
        .addresses
        .iter()
        .filter(|(i, _)| node.vrf_of(i).is_none())
    {
        for a in addrs {
            b.push_str(&format!("addr replace {a} dev {i}\n"));
        }
    }
    for r in &node.routes {
        b.push_str(&format!("route replace {}\n", r.ip_args().join(" ")));
    }
    b
}

/// Body of `lab node-init`: configures the node this process runs in (a container
/// started by containerlab, whose hostname is the node name) from the topology's
/// `lab.*` labels, then supervises its processes and WAN emulator until SIGTERM.
/// `exec` commands are left to containerlab.
pub fn node_init(topo: &Topology, node: &str) -> Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
    let n = topo
        .nodes
        .get(node)
        .ok_or_else(|| anyhow!("no node `{node}` in {}", topo.name))?;
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    // containerlab creates the links after the container has started. A VRF's interface
    // may already be in the VRF's namespace (node-init restarted).
    let missing = |i: &String| {
        crate::wan::ifindex(i).is_none()
            && !n.vrf_of(i).is_some_and(|v| {
                ns::is_ns_mount(&Path::new("/run/netns").join(v))
                    && node_links(Some(v)).is_ok_and(|l| l.contains(i))
            })
    };
    let t0 = Instant::now();
    while n.interfaces.iter().any(missing) {
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("interfaces {} did not appear", n.interfaces.join(", "));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bridges_skip_netfilter()?;
    for (k, v) in node_sysctls(n) {
        write_sysctl(&k, &v)?;
    }
    run_ip(&["-batch", "-"], Some(&node_ip_batch(n)))?;
    // The container's own /run/netns: VRFs are network namespaces here too, named as the
    // VRF, so the node's daemons (zebra -n) see the same thing as under lab.
    for vrf in n.vrfs.keys() {
        ns::create_netns(vrf)?;
        ns::in_netns(&Path::new("/run/netns").join(vrf), || {
            for (k, v) in VRF_SYSCTLS {
                write_sysctl(k, v)?;
            }
            bridges_skip_netfilter()
        })
        .with_context(|| format!("sysctls of VRF {vrf}"))?;
    }
    configure_vrfs(n, None, &|v| v.to_string())?;
    let sup = Supervisor::start_here(&topo.name, n)?;
    eprintln!("lab node-init: node {node} of {} configured", topo.name);
    let _ = set.wait();
    sup.stop();
    Ok(())
}

/// Lets the neighbours of WAN emulator `wan` send GSO super-frames only in directions
/// without per-packet impairments (see the `wan` module); `params[i]` is the direction
/// of frames arriving on `ports[i]`.
pub fn set_wan_gso(
    topo: &Topology,
    wan: &str,
    ports: &[String; 2],
    params: &[crate::wan::Impairment; 2],
) -> Result<()> {
    for (port, p) in ports.iter().zip(params) {
        if let Some((peer, ifname)) = topo.peer_of(wan, port) {
            let segs = if p.per_packet() { "1" } else { "65535" };
            run_ip(
                &[
                    "-n",
                    &ns::netns_name(&topo.name, peer),
                    "link",
                    "set",
                    ifname,
                    "gso_max_segs",
                    segs,
                ],
                None,
            )?;
        }
    }
    Ok(())
}

fn spawn_supervisor(lab: &str, exe: &Path) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let dir = ns::lab_dir(lab);
    let ready = dir.join("supervisor.ready");
    let _ = std::fs::remove_file(&ready);
    std::fs::create_dir_all(dir.join("logs"))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("logs").join("supervisor.log"))?;
    let mut c = Command::new(exe);
    c.arg("__supervise")
        .arg(lab)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let mut child = c
        .spawn()
        .with_context(|| format!("spawn {}", exe.display()))?;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if ready.exists() {
            return Ok(child.id() as i32);
        }
        if let Ok(Some(st)) = child.try_wait() {
            bail!(
                "supervisor exited ({st}); see {}",
                dir.join("logs/supervisor.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    bail!("supervisor did not become ready within 10s")
}

/// Body of the detached supervisor process: runs until SIGTERM or SIGINT.
pub fn supervise_main(lab: &str) -> Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    // Blocked before any thread starts, so every thread inherits the mask and the
    // signal is only ever consumed by sigwait below.
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    let text = std::fs::read(ns::lab_dir(lab).join("topology.json"))?;
    let topo: Topology = serde_json::from_slice(&text)?;
    let sup = Supervisor::start(&topo)?;
    std::fs::write(
        ns::lab_dir(lab).join("supervisor.ready"),
        std::process::id().to_string(),
    )?;
    // SIGHUP is ignored (a closing terminal must not stop the lab).
    while let Ok(Signal::SIGHUP) = set.wait() {}
    sup.stop();
    Ok(())
}

/// Removes everything of lab `lab`: processes, namespaces, mounts, state.
pub fn down(lab: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("lab needs root (network and mount namespaces)");
    }
    let dir = ns::lab_dir(lab);
    let _lock = if dir.exists() { Some(lock(lab)?) } else { None };
    let st = read_state(lab).unwrap_or_default();
    let mut pids: Vec<i32> = st.supervisor_pid.into_iter().collect();
    if let Ok(p) = std::fs::read_to_string(dir.join("supervisor.ready")) {
        pids.extend(p.trim().parse::<i32>().ok());
    }
    for p in pids {
        if supervisor_alive(lab, p) {
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
            let t0 = Instant::now();
            while supervisor_alive(lab, p) && t0.elapsed() < Duration::from_secs(4) {
                std::thread::sleep(Duration::from_millis(10));
            }
            if supervisor_alive(lab, p) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }

    let prefix = ns::netns_prefix(lab);
    let netns: Vec<PathBuf> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    let mntns: Vec<PathBuf> = std::fs::read_dir(ns::mntns_dir(lab))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let inodes: Vec<u64> = netns
        .iter()
        .chain(mntns.iter())
        .filter(|p| ns::is_ns_mount(p))
        .filter_map(|p| ns::ns_inode(p))
        .collect();
    ns::kill_all_in(&inodes, Duration::from_secs(2));
    // The lab's Prometheus runs on the host, in none of the lab's namespaces.
    crate::prometheus::stop_strays(lab);
    for p in netns.iter().chain(mntns.iter()) {
        while ns::is_ns_mount(p) {
            if umount2(p.as_path(), MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
        let _ = std::fs::remove_file(p);
    }
    for d in [ns::mntns_dir(lab), dir.join("nodes")] {
        while ns::is_mountpoint(&d) {
            if umount2(d.as_path(), MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    Ok(())
}

/// Human-readable state of a lab; `Ok(false)` in the tuple when it is not fully up.
pub fn status(topo: &Topology) -> Result<(String, bool)> {
    let lab = &topo.name;
    let st = read_state(lab);
    let mut out = String::new();
    let mut ok = st.as_ref().is_some_and(|s| s.complete);
    match &st {
        None => {
            out.push_str(&format!("lab {lab}: not running\n"));
            return Ok((out, false));
        }
        Some(s) => {
            let sup = s.supervisor_pid.filter(|p| supervisor_alive(lab, *p));
            out.push_str(&format!(
                "lab {lab}: {}, supervisor {}\n",
                if s.complete {
                    "up"
                } else {
                    "incomplete (run `lab up` to repair)"
                },
                sup.map(|p| format!("pid {p}"))
                    .unwrap_or_else(|| "not running".into())
            ));
        }
    }
    for node in topo.nodes.values() {
        let netns = ns::is_ns_mount(&ns::netns_path(lab, &node.name));
        let mnt = ns::is_ns_mount(&ns::mntns_path(lab, &node.name));
        ok &= netns && mnt;
        out.push_str(&format!(
            "{}{}: netns {} mntns {}\n",
            node.name,
            if matches!(node.role, NodeRole::WanEmulator { .. }) {
                " (wan-emulator)"
            } else {
                ""
            },
            if netns { "ok" } else { "MISSING" },
            if mnt { "ok" } else { "MISSING" }
        ));
        if netns
            && let Ok(br) = run_ip(
                &["-n", &ns::netns_name(lab, &node.name), "-br", "addr"],
                None,
            )
        {
            for l in br.lines().filter(|l| !l.starts_with("lo ")) {
                out.push_str(&format!("    {l}\n"));
            }
        }
        for p in &node.ports {
            out.push_str(&format!(
                "  port 127.0.0.1:{} -> {}{}\n",
                p.host,
                p.node,
                if node.scrape.as_ref().is_some_and(|s| s.port == p.node) {
                    " (metrics, scraped)"
                } else {
                    ""
                }
            ));
        }
        for vrf in node.vrfs.keys() {
            let vns = ns::vrf_netns_name(lab, &node.name, vrf);
            let present = ns::is_ns_mount(&ns::vrf_netns_path(lab, &node.name, vrf));
            ok &= present;
            out.push_str(&format!(
                "  vrf {vrf}: netns {}\n",
                if present { "ok" } else { "MISSING" }
            ));
            if present && let Ok(br) = run_ip(&["-n", &vns, "-br", "addr"], None) {
                for l in br.lines().filter(|l| !l.starts_with("lo ")) {
                    out.push_str(&format!("    {l}\n"));
                }
            }
        }
    }
    // Whether it runs a Prometheus is in the running lab's state, not in the file.
    let running = st.as_ref().and_then(|s| s.topology.as_ref());
    if let Some(p) = running.and_then(|t| t.prometheus.as_ref()) {
        out.push_str(&format!(
            "prometheus: http://{} ({} targets, every {:?}), config {}, log {}\n",
            p.listen,
            crate::prometheus::targets(topo).len(),
            p.interval,
            crate::prometheus::config_path(lab).display(),
            crate::prometheus::log_path(lab).display()
        ));
    }
    Ok((out, ok))
}
