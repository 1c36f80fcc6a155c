//! Helpers shared by the lab integration tests: root gating, renamed topology copies,
//! and host snapshots to prove that `down` leaves nothing behind.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// True if the test may run. Without root the test is skipped, except in CI
/// (`CI=true`) where a skipped namespace test would hide a broken setup.
pub(crate) fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root (CI=true, not skipping)");
    }
    // Written past the test harness's output capture so the skip is visible.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {test}: needs root");
    false
}

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// Writes a copy of `src` with its `name:` replaced, so tests can run in parallel.
pub(crate) fn renamed(src: &str, name: &str, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(fixture(src)).expect("read fixture");
    let out: String = text
        .lines()
        .map(|l| {
            if l.starts_with("name:") {
                format!("name: {name}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let p = dir.join(format!("{name}.clab.yml"));
    std::fs::write(&p, out).expect("write topology copy");
    p
}

/// What a lab can leave on the host, restricted to what names `lab` (so that tests
/// running in parallel do not disturb each other), plus the host's interfaces.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub netns: BTreeSet<String>,
    pub host_links: BTreeSet<String>,
    pub mounts: BTreeSet<String>,
    pub processes: BTreeSet<String>,
    pub unix_sockets: BTreeSet<String>,
    pub state_dir: bool,
}

pub(crate) fn snapshot(lab: &str) -> Snapshot {
    let netns_tag = format!("lab.{lab}.");
    let dir_tag = format!("/run/lab/{lab}");
    let netns = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&netns_tag))
                .collect()
        })
        .unwrap_or_default();
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let host_links = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
        .collect();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&netns_tag) || l.contains(&dir_tag))
        .map(String::from)
        .collect();
    let mut processes = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                if c.contains(&format!("__supervise {lab} "))
                    || c.ends_with(&format!("__supervise {lab}"))
                {
                    processes.insert(c);
                }
            }
        }
    }
    let unix_sockets = std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("lab-wan"))
        .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
        .collect();
    Snapshot {
        netns,
        host_links,
        mounts,
        processes,
        unix_sockets,
        state_dir: Path::new(&dir_tag).exists(),
    }
}

/// PIDs living in any namespace of the lab (read while it is up).
pub(crate) fn lab_pids(lab: &str, nodes: &[&str]) -> Vec<i32> {
    let mut inodes = Vec::new();
    for n in nodes {
        inodes.extend(lab::ns::ns_inode(&lab::ns::netns_path(lab, n)));
        inodes.extend(lab::ns::ns_inode(&lab::ns::mntns_path(lab, n)));
    }
    lab::ns::pids_in(&inodes)
}

pub(crate) fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

pub(crate) fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
