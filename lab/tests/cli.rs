//! The `lab` binary: idempotent `up`, `exec`, `status`, `impair`, `down`, and cleanup
//! after `lab up` is killed with SIGKILL half-way.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn lab(args: &[&str], topo: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lab"));
    for a in args {
        if *a == "FILE" {
            c.arg(topo);
        } else {
            c.arg(a);
        }
    }
    c.output().expect("run lab")
}

fn ok(args: &[&str], topo: &Path) -> String {
    let o = lab(args, topo);
    assert!(o.status.success(), "lab {args:?}: {o:?}");
    common::stdout(&o)
}

#[test]
fn up_is_idempotent_and_down_is_clean() {
    if !common::root_or_skip("up_is_idempotent_and_down_is_clean") {
        return;
    }
    let name = "t-cli";
    let dir = tempfile::tempdir().expect("tempdir");
    let f = common::renamed("tests/fixtures/small.clab.yml", name, dir.path());
    ok(&["down", "FILE"], &f);
    let before = common::snapshot(name);

    ok(&["up", "FILE"], &f);
    let up1 = common::snapshot(name);
    let sup1 = up1.processes.clone();
    assert_eq!(sup1.len(), 1, "one supervisor: {sup1:?}");
    ok(&["up", "FILE"], &f);
    let up2 = common::snapshot(name);
    assert_eq!(up1, up2, "second `up` changed something");
    assert!(ok(&["status", "FILE"], &f).contains("up, supervisor pid"));

    // exec with -t, exit codes pass through.
    assert!(
        ok(
            &[
                "exec", "-t", "FILE", "b", "--", "ping", "-c1", "-W2", "10.0.2.2"
            ],
            &f
        )
        .contains("1 received")
    );
    let o = lab(&["exec", "-t", "FILE", "a", "--", "sh", "-c", "exit 7"], &f);
    assert_eq!(o.status.code(), Some(7));

    // Repair: a deleted interface comes back with its address.
    let netns = lab::ns::netns_name(name, "b");
    assert!(
        Command::new("ip")
            .args(["-n", &netns, "link", "del", "eth1"])
            .status()
            .expect("ip")
            .success()
    );
    ok(&["up", "FILE"], &f);
    ok(
        &[
            "exec", "-t", "FILE", "b", "--", "ping", "-c1", "-W2", "10.0.1.1",
        ],
        &f,
    );

    // impair: good settings, bad key (usage error), non-emulator node.
    ok(&["impair", "-t", "FILE", "w", "delay=1ms", "loss=0.5%"], &f);
    let state = ok(&["impair", "-t", "FILE", "w:eth1"], &f);
    assert!(state.contains("delay=1000us"), "{state}");
    assert_eq!(
        lab(&["impair", "-t", "FILE", "w", "latency=3ms"], &f)
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        lab(&["impair", "-t", "FILE", "a", "delay=3ms"], &f)
            .status
            .code(),
        Some(1)
    );

    let dot = ok(&["graph", "FILE"], &f);
    assert!(dot.contains("\"a\" -- \"w\""), "{dot}");

    ok(&["down", "FILE"], &f);
    assert_eq!(before, common::snapshot(name));
    assert_eq!(lab(&["status", "FILE"], &f).status.code(), Some(1));
    // down twice is fine, also by name.
    ok(&["down", "FILE"], &f);
    ok(&["down", name], &f);
}

/// `lab up` in a mount namespace of its own, as in a container, under `unshare -m` or in a
/// service with private mounts. The kernel numbers mount namespaces from per-CPU batches,
/// not in creation order, and refuses to bind one whose number is below the binder's (see
/// `ns::unshare_bindable_mntns`). So the lab's namespace is made on one CPU and the lab
/// runs on another, both ways round: in one of the two, the nodes' namespaces draw
/// numbers below the lab's, and before the lab allowed for that its `up` failed there
/// (EINVAL binding a node's namespace), every time. On the host the bind always passes
/// (the initial namespace has the smallest number), which is why only this test sees it.
/// With a single CPU there is no other batch to draw from: the test runs unpinned, and
/// cannot fail that way.
#[test]
fn up_works_inside_a_mount_namespace_of_its_own() {
    if !common::root_or_skip("up_works_inside_a_mount_namespace_of_its_own") {
        return;
    }
    let name = "t-mntns";
    let dir = tempfile::tempdir().expect("tempdir");
    let f = common::renamed("tests/fixtures/small.clab.yml", name, dir.path());
    ok(&["down", "FILE"], &f);
    let before = common::snapshot(name);
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).expect("affinity");
    let cpus: Vec<String> = (0..nix::sched::CpuSet::count())
        .filter(|c| allowed.is_set(*c).unwrap_or(false))
        .take(2)
        .map(|c| c.to_string())
        .collect();
    let rounds: Vec<Vec<&str>> = match &cpus[..] {
        [a, b] => vec![vec![a, b], vec![b, a]],
        _ => {
            eprintln!("up_works_inside_a_mount_namespace_of_its_own: one CPU, not pinned");
            vec![vec![]]
        }
    };
    let script = r#"set -e
"$0" up "$1"
"$0" exec -t "$1" b -- ping -c1 -W2 10.0.2.2
"$0" down "$1""#;
    for pins in rounds {
        let mut c = Command::new("taskset");
        match pins[..] {
            [ns_cpu, lab_cpu] => c
                .args(["-c", ns_cpu, "unshare", "-m", "--propagation"])
                .args(["private", "taskset", "-c", lab_cpu]),
            _ => c.args(["-c", "0-1023", "unshare", "-m", "--propagation", "private"]),
        };
        let out = c
            .args(["sh", "-c", script])
            .arg(env!("CARGO_BIN_EXE_lab"))
            .arg(&f)
            .output()
            .expect("taskset, unshare");
        if !out.status.success() {
            // Leave nothing behind for the next test, whatever failed.
            let _ = Command::new("unshare")
                .args(["-m", "--propagation", "private"])
                .arg(env!("CARGO_BIN_EXE_lab"))
                .args(["down".as_ref(), f.as_os_str()])
                .output();
        }
        assert!(
            out.status.success(),
            "namespace made on CPU, lab run on CPU {pins:?}: lab up, exec and down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(before, common::snapshot(name));
}

/// Tells whether `lab up` of the named lab has reached a given point.
type Reached = fn(&str) -> bool;

#[test]
fn down_after_kill_9_during_up_removes_everything() {
    if !common::root_or_skip("down_after_kill_9_during_up_removes_everything") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Kill at different points: after the first netns, after the first mount namespace,
    // and after the supervisor started.
    let points: [(&str, Reached); 3] = [
        ("netns", |n| {
            std::fs::read_dir("/run/netns")
                .map(|rd| {
                    rd.flatten().any(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!("lab.{n}."))
                    })
                })
                .unwrap_or(false)
        }),
        ("mntns", |n| {
            std::fs::read_dir(format!("/run/lab/{n}/ns"))
                .map(|rd| rd.count() > 2)
                .unwrap_or(false)
        }),
        ("supervisor", |n| {
            Path::new(&format!("/run/lab/{n}/supervisor.ready")).exists()
        }),
    ];
    for (i, (what, reached)) in points.iter().enumerate() {
        let name = format!("t-kill{i}");
        let f = common::renamed("topologies/three-dc.clab.yml", &name, dir.path());
        ok(&["down", "FILE"], &f);
        let before = common::snapshot(&name);
        let mut child = Command::new(env!("CARGO_BIN_EXE_lab"))
            .arg("up")
            .arg(&f)
            .spawn()
            .expect("spawn");
        let t0 = Instant::now();
        while !reached(&name) && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(reached(&name), "{what}: `lab up` never got there");
        child.kill().expect("kill -9");
        let _ = child.wait();
        let leftovers = common::snapshot(&name);
        assert_ne!(
            before, leftovers,
            "{what}: nothing was created before the kill"
        );
        ok(&["down", "FILE"], &f);
        assert_eq!(
            before,
            common::snapshot(&name),
            "{what}: leftovers after down"
        );
    }
}

/// containerlab's path: `lab node-init` inside each node (here: namespaces made by hand,
/// interfaces added after it started) configures addresses and runs the emulator.
#[test]
fn node_init_configures_a_node_from_the_inside() {
    if !common::root_or_skip("node_init_configures_a_node_from_the_inside") {
        return;
    }
    let name = "t-ni";
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("t-ni.clab.yml");
    std::fs::write(
        &f,
        format!(
            "name: {name}
topology:
  nodes:
    a: {{kind: linux, labels: {{lab.addr.eth1: 10.98.0.1/24}}}}
    b: {{kind: linux, labels: {{lab.addr.eth1: 10.98.0.2/24, lab.run.sleeper: sleep 3602}}}}
    w: {{kind: linux, labels: {{lab.kind: wan-emulator, lab.wan.impair: delay=3ms}}}}
  links:
    - endpoints: [a:eth1, w:eth1]
    - endpoints: [w:eth2, b:eth1]
"
        ),
    )
    .expect("write");
    let ns = |n: &str| format!("t-ni-{n}");
    let ip = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().expect("ip");
        assert!(st.success(), "ip {args:?}");
    };
    for n in ["a", "w", "b"] {
        let _ = Command::new("ip").args(["netns", "del", &ns(n)]).status();
        ip(&["netns", "add", &ns(n)]);
    }
    /// Stops the node-init processes and removes the namespaces, also on panic.
    struct Cleanup(Vec<std::process::Child>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = c.wait();
            }
            let inodes: Vec<u64> = ["a", "w", "b"]
                .iter()
                .filter_map(|n| lab::ns::ns_inode(Path::new(&format!("/run/netns/t-ni-{n}"))))
                .collect();
            lab::ns::kill_all_in(&inodes, Duration::from_secs(1));
            for n in ["a", "w", "b"] {
                let _ = Command::new("ip")
                    .args(["netns", "del", &format!("t-ni-{n}")])
                    .status();
            }
            let _ = std::fs::remove_dir_all("/run/lab/t-ni");
        }
    }
    let mut inits = Cleanup(Vec::new());
    for n in ["a", "w", "b"] {
        inits.0.push(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns(n),
                    env!("CARGO_BIN_EXE_lab"),
                    "node-init",
                    "--node",
                    n,
                ])
                .arg(&f)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("node-init"),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    ip(&[
        "link",
        "add",
        "eth1",
        "netns",
        &ns("a"),
        "type",
        "veth",
        "peer",
        "name",
        "eth1",
        "netns",
        &ns("w"),
    ]);
    ip(&[
        "link",
        "add",
        "eth2",
        "netns",
        &ns("w"),
        "type",
        "veth",
        "peer",
        "name",
        "eth1",
        "netns",
        &ns("b"),
    ]);
    let t0 = Instant::now();
    loop {
        let o = Command::new("ip")
            .args(["netns", "exec", &ns("a"), "ping", "-c1", "-W1", "10.98.0.2"])
            .output()
            .expect("ping");
        if o.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no connectivity: {o:?}"
        );
    }
    // Neighbours are resolved now: the RTT is the emulator's 2 x 3 ms.
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns("a"),
            "ping",
            "-c3",
            "-i0.2",
            "-W1",
            "10.98.0.2",
        ])
        .output()
        .expect("ping");
    let text = common::stdout(&o);
    let min: f64 = text
        .lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rtt: {text}"));
    assert!((6.0..8.0).contains(&min), "delay 3ms each way: {text}");
    let sleepers = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| c.starts_with(b"sleep\x003602"))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(sleepers, 1, "supervised process in b");
    for c in &mut inits.0 {
        // `ip netns exec` execs node-init, so the child is node-init itself.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let st = c.wait().expect("wait");
        assert!(st.success(), "node-init exit: {st}");
    }
    let sleepers_left = std::fs::read_dir("/proc")
        .expect("proc")
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| c.starts_with(b"sleep\x003602"))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(sleepers_left, 0, "node-init left its process behind");
    drop(inits);
}
