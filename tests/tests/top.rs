//! `routingctl top` (issue 17, ADR 0048), the real binary under tmux against real
//! daemons: two datacenters, one gatewan each, two transits (lumen, cogent) through an
//! "internet" namespace as in `tunnels.rs` (a VTEP announced, no data plane), wireguard-go,
//! and a bgpctl of sg1 next to gatewan01-sg1 (its fabric peer is down: nothing listens
//! there). The test reads the pane:
//! - every tunnel of both gatewans Established, the members, the BGP session, the chosen
//!   tunnels toward par1;
//! - the cogent transit of sg1 black-holed: its tunnels go Down in the pane, at both ends,
//!   and the chosen tunnels move off them;
//! - bgpctl killed: the pane says RECONNECTING and keeps the last snapshot; bgpctl
//!   started again: connected again, live;
//! - q: routingctl exits 0.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use gatewan_tests::top::{TopPane, tunnel_rows};
use gatewan_tests::*;

/// bgpctl of sg1 in gatewan01-sg1's namespaces, gossiping on its lumen address. Its one
/// BGP peer is lumen's gateway, where nothing listens: the session stays down.
fn bgpctl_config(dir: &Path, keyring: &Path) -> PathBuf {
    let cfg = dir.join("bgpctl-sg1.yaml");
    std::fs::write(
        &cfg,
        format!(
            "name: bgpctl-sg1\ndatacenter: sg1\nstate_dir: {state}\nmesh:\n  bind: \"198.51.100.2:7950\"\n  seeds: [\"198.51.100.2:7946\"]\n  keyring: {kr}\nbgp:\n  asn: 65001\n  router_id: 198.51.100.2\n  peers:\n    - address: 198.51.100.1\n      asn: 65001\n      hold_time: 9s\nevpn:\n  vni: 10100\n  route_targets:\n    export: [\"65001:100\"]\napi:\n  socket: {sock}\n",
            state = dir.join("bgpctl-sg1.state").display(),
            kr = keyring.display(),
            sock = dir.join("bgpctl-sg1.sock").display(),
        ),
    )
    .unwrap();
    cfg
}

/// A bgpctl process, killed on drop.
struct Bgpctl(Child);

impl Bgpctl {
    fn start(host: &Host, config: &Path, log: &Path) -> Bgpctl {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = host
            .cmd(bin("bgpctl"))
            .arg("-c")
            .arg(config)
            .env("RUST_LOG", "bgpctl=info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Bgpctl(child)
    }
}

impl Drop for Bgpctl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The tunnel rows of a pane reported by `gatewan` whose transits match `transits`
/// (`cogent→` for sg1's end of cogent's tunnels, `→cogent` for par1's).
fn rows<'a>(all: &'a [Vec<String>], gatewan: &str, transits: &str) -> Vec<&'a Vec<String>> {
    all.iter()
        .filter(|r| r.first().is_some_and(|g| g == gatewan))
        .filter(|r| r.get(3).is_some_and(|t| t.contains(transits)))
        .collect()
}

fn state_of(row: &[String]) -> &str {
    row.get(4).map_or("", String::as_str)
}

/// The chosen pane's tunnels: the words `gatewan/interface` of its rows.
fn chosen(pane: &str) -> Vec<String> {
    pane.lines()
        .skip_while(|l| !l.contains("chosen tunnels of"))
        .flat_map(|l| {
            l.replace('│', " ")
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|w| w.starts_with("gatewan01-sg1/"))
        .collect()
}

#[test]
fn top_shows_a_transit_failover_and_survives_a_bgpctl_restart() {
    const TEST: &str = "top_shows_a_transit_failover_and_survives_a_bgpctl_restart";
    if !require_root(TEST)
        || !require_program(TEST, "wireguard-go")
        || !require_program(TEST, "iptables")
        || !require_program(TEST, "tmux")
    {
        return;
    }
    let t0 = Instant::now();
    let (_internet, mut a, mut b) = pair_world();
    let (dir, keyring) = pair_dir("gwtop");
    // A VTEP (no data plane): without one the controller rejects every tunnel.
    a.config = write_pair_config(&dir, &SG1, &keyring, "fabric:\n  vtep: 10.1.255.11\n");
    b.config = write_pair_config(&dir, &PAR1, &keyring, "fabric:\n  vtep: 10.2.255.11\n");
    a.socket = dir.join("gatewan01-sg1.sock");
    b.socket = dir.join("gatewan01-par1.sock");
    a.log = dir.join("a.log");
    b.log = dir.join("b.log");
    a.start();
    b.start();
    let bgpctl_cfg = bgpctl_config(&dir, &keyring);
    let bgpctl_log = dir.join("bgpctl.log");
    let bgpctl_sock = dir.join("bgpctl-sg1.sock");
    let mut bgpctl = Some(Bgpctl::start(&a, &bgpctl_cfg, &bgpctl_log));
    let bgpctl_tail = || {
        let text = std::fs::read_to_string(&bgpctl_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(30).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    assert!(
        wait_until(Duration::from_secs(20), || a.established(4)
            && b.established(4)),
        "four tunnels not Established at both ends: {:#?}",
        a.tunnels()
    );
    // bgpctl serves its API once the mesh has settled (about 3 s after its start).
    assert!(
        wait_until(Duration::from_secs(15), || bgpctl_sock.exists()
            && routingctl(&bgpctl_sock, &["peers"]).status.success()),
        "bgpctl's API never answered:\n{}",
        bgpctl_tail()
    );
    eprintln!("world up in {:?}", t0.elapsed());

    let sock = bgpctl_sock.to_string_lossy().into_owned();
    let pane = TopPane::start_local(&bin("routingctl"), &["--socket", &sock]);
    // Every tunnel, of both gatewans, Established; the members, the session, a decision.
    let seen = pane.wait_for(Duration::from_secs(20), |p| {
        let all = tunnel_rows(p);
        all.len() == 8
            && all.iter().all(|r| state_of(r) == "Established")
            && p.contains("bgpctl-sg1 (sg1)")
            && p.contains("gatewan01-par1")
            && p.contains("198.51.100.1")
            && !chosen(p).is_empty()
    });
    let before = seen.unwrap_or_else(|e| panic!("{e}\nbgpctl:\n{}", bgpctl_tail()));
    eprintln!("top shows 8 Established tunnels at {:?}", t0.elapsed());
    for m in ["gatewan01-sg1", "gatewan01-par1", "bgpctl-sg1"] {
        assert!(before.contains(m), "member {m} missing:\n{before}");
    }
    assert!(before.contains("connected to"), "{before}");
    // --once: one frame as text; a gatewan's socket is refused with the one to use.
    let once = routingctl(&bgpctl_sock, &["top", "--once"]);
    let text = String::from_utf8_lossy(&once.stdout);
    assert!(
        once.status.success() && tunnel_rows(&text).len() == 8,
        "{text}"
    );
    let refused = routingctl(&a.socket, &["top", "--once"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("--socket /run/bgpctl/bgpctl.sock"),
        "{err}"
    );

    // sg1's cogent black-holed: its tunnels go Down, seen from both ends, and the
    // controller chooses only tunnels that are up.
    let failed = Instant::now();
    a.sh("iptables -A INPUT -i cogent0 -j DROP");
    let after = pane
        .wait_for(Duration::from_secs(15), |p| {
            let all = tunnel_rows(p);
            let sg1_cogent = rows(&all, "gatewan01-sg1", "cogent→");
            let par1_cogent = rows(&all, "gatewan01-par1", "→cogent");
            let sg1_lumen = rows(&all, "gatewan01-sg1", "lumen→");
            let up: Vec<String> = sg1_lumen
                .iter()
                .filter_map(|r| r.get(1).map(|i| format!("gatewan01-sg1/{i}")))
                .collect();
            let chosen = chosen(p);
            sg1_cogent.len() == 2
                && par1_cogent.len() == 2
                && sg1_cogent
                    .iter()
                    .chain(&par1_cogent)
                    .all(|r| state_of(r) == "Down")
                && sg1_lumen.iter().all(|r| state_of(r) == "Established")
                && !chosen.is_empty()
                && chosen.iter().all(|c| up.contains(c))
        })
        .unwrap_or_else(|e| panic!("{e}\nbgpctl:\n{}", bgpctl_tail()));
    eprintln!(
        "top shows the cogent tunnels Down and the choice on lumen {:?} after the failure",
        failed.elapsed()
    );
    // A Down tunnel has lost probes: its loss is not 0, its loss sparkline rose.
    for r in tunnel_rows(&after).iter().filter(|r| state_of(r) == "Down") {
        assert_ne!(r.get(7).map(String::as_str), Some("0.0%"), "{r:?}\n{after}");
        assert!(
            r.get(8).is_some_and(|s| !s.ends_with('▁')),
            "{r:?}\n{after}"
        );
    }

    // bgpctl restarts: the pane says so and keeps the last snapshot, then is live again.
    drop(bgpctl.take());
    let lost = pane
        .wait_for(Duration::from_secs(10), |p| {
            p.contains("RECONNECTING") && tunnel_rows(p).len() == 8
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(lost.contains(&sock), "{lost}");
    bgpctl = Some(Bgpctl::start(&a, &bgpctl_cfg, &bgpctl_log));
    pane.wait_for(Duration::from_secs(20), |p| {
        p.contains("connected to") && !p.contains("RECONNECTING") && tunnel_rows(p).len() == 8
    })
    .unwrap_or_else(|e| panic!("{e}\nbgpctl:\n{}", bgpctl_tail()));
    eprintln!(
        "top reconnected after the bgpctl restart at {:?}",
        t0.elapsed()
    );

    pane.send_keys(&["q"]);
    assert_eq!(pane.wait_exit(Duration::from_secs(5)), Ok(0));
    drop(bgpctl);
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("done in {:?}", t0.elapsed());
}
