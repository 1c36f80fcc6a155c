//! A topology comes up through the harness: nodes reach each other over links and
//! routes, every node has its own /run, /tmp and /etc, `exec` ran once, supervised
//! processes come back after a crash, and `down` restores the host exactly.

mod common;

use std::time::{Duration, Instant};

use lab::{Harness, Topology};

fn ok(lab: &lab::RunningLab, node: &str, argv: &[&str]) -> String {
    let out = lab.exec(node, argv).expect("exec");
    assert!(out.status.success(), "{node}: {argv:?} failed: {out:?}");
    common::stdout(&out)
}

#[test]
fn nodes_are_isolated_and_connected_and_down_is_clean() {
    if !common::root_or_skip("nodes_are_isolated_and_connected_and_down_is_clean") {
        return;
    }
    let name = "t-up";
    let _ = lab::realize::down(name);
    let before = common::snapshot(name);
    let mut topo =
        Topology::load(&common::fixture("tests/fixtures/small.clab.yml")).expect("fixture");
    topo.name = name.into();
    let lab = Harness::up_topology(topo).expect("up");

    // Direct link (v4 and v6), routed path through a and the WAN emulator.
    ok(&lab, "b", &["ping", "-c1", "-W2", "10.0.1.1"]);
    ok(&lab, "b", &["ping", "-c1", "-W2", "2001:db8:1::1"]);
    ok(&lab, "b", &["ping", "-c1", "-W2", "10.0.2.2"]);
    ok(&lab, "c", &["ping", "-c1", "-W2", "10.0.1.2"]);

    // Private /var/run (-> /run), /tmp and /etc per node.
    ok(
        &lab,
        "a",
        &[
            "sh",
            "-c",
            "echo a > /var/run/t-up-marker && echo a > /tmp/t-up && echo a > /etc/t-up",
        ],
    );
    for f in [
        "/var/run/t-up-marker",
        "/run/t-up-marker",
        "/tmp/t-up",
        "/etc/t-up",
    ] {
        ok(&lab, "a", &["test", "-f", f]);
        let o = lab.exec("b", &["test", "-e", f]).expect("exec");
        assert!(!o.status.success(), "{f} leaked into node b");
        assert!(
            !std::path::Path::new(f).exists(),
            "{f} leaked onto the host"
        );
    }
    ok(&lab, "b", &["test", "-d", "/var/run/wireguard"]);
    // /sys shows the node's own interfaces.
    ok(&lab, "w", &["test", "-e", "/sys/class/net/eth2"]);
    let o = lab
        .exec("b", &["test", "-e", "/sys/class/net/eth2"])
        .expect("exec");
    assert!(!o.status.success(), "b sees w's interfaces in /sys");

    // binds: relative to the topology file, read-only.
    ok(&lab, "b", &["test", "-f", "/srv/fixtures/small.clab.yml"]);
    let o = lab.exec("b", &["touch", "/srv/fixtures/x"]).expect("exec");
    assert!(!o.status.success(), "read-only bind is writable");
    assert!(
        !std::path::Path::new("/srv/fixtures").exists(),
        "bind target leaked onto the host"
    );

    // exec[] ran once, env is passed.
    ok(&lab, "a", &["test", "-f", "/run/a-was-here"]);
    assert_eq!(
        ok(&lab, "b", &["sh", "-c", "echo $GREETING"]).trim(),
        "hello"
    );

    // The supervised process of c restarts after being killed.
    let first = common::lab_pids(name, &["c"]);
    assert_eq!(first.len(), 1, "one supervised process in c: {first:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let t0 = Instant::now();
    loop {
        let now = common::lab_pids(name, &["c"]);
        if now.len() == 1 && now[0] != first[0] {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "sleeper not restarted: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(lab::supervisor::log_path(name, "c")).expect("log");
    assert!(log.contains("restarting"), "{log}");

    let pids = common::lab_pids(name, &["a", "b", "c", "w"]);
    assert!(!pids.is_empty());
    lab.down().expect("down");
    assert_eq!(before, common::snapshot(name));
    for p in pids {
        assert!(!common::pid_alive(p), "pid {p} survived down");
    }
}

#[test]
fn harness_drop_tears_down_after_a_panic() {
    if !common::root_or_skip("harness_drop_tears_down_after_a_panic") {
        return;
    }
    let name = "t-panic";
    let _ = lab::realize::down(name);
    let before = common::snapshot(name);
    let r = std::panic::catch_unwind(|| {
        let lab =
            Harness::up_named(common::fixture("tests/fixtures/small.clab.yml"), name).expect("up");
        assert!(lab.exec("a", &["true"]).expect("exec").status.success());
        panic!("test failure inside a lab");
    });
    assert!(r.is_err());
    assert_eq!(before, common::snapshot(name));
}

/// On a host whose /run/netns is still a plain directory (nothing ran `ip netns` since
/// boot), an `ip netns add` while the lab is up must not hide the lab's namespace files
/// under a new mount of /run/netns, where `lab down` could neither unmount nor remove them.
#[test]
fn down_is_clean_after_ip_netns_add_on_a_fresh_host() {
    if !common::root_or_skip("down_is_clean_after_ip_netns_add_on_a_fresh_host") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = common::renamed("tests/fixtures/small.clab.yml", "t-fresh", dir.path());
    // Its own mount namespace with an empty /run: /run/netns starts as a plain directory.
    let script = format!(
        "mount -t tmpfs tmpfs /run && {lab} up {f} >/dev/null && ip netns add t-fresh-probe \
         && {lab} down {f} >/dev/null && ls -A /run/netns",
        lab = env!("CARGO_BIN_EXE_lab"),
        f = file.display(),
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        common::stdout(&out).trim(),
        "t-fresh-probe",
        "namespace files left in /run/netns after lab down"
    );
}
