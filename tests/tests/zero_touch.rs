//! Zero-touch numbering end to end (issue 16, ADR 0042): gatewans with no `tunnels.slot`
//! claim their slots through the mesh, keep them (and their transits' positions) in
//! state_dir, and a transit added anywhere in the config moves no tunnel. Real gatewan
//! daemons, each in its own network and mount namespace, with wireguard-go tunnels.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gatewan_tests::*;

/// One transit's config lines (with its interface named, as several transits need).
fn transit(name: &str, interface: &str, address: &str, gateway: Option<&str>) -> String {
    let gw = gateway.map_or(String::new(), |g| format!("    gateway: {g}\n"));
    format!(
        "  - name: {name}\n    interface: {interface}\n    addresses: [{address}]\n{gw}    capacity: 1Gbps\n"
    )
}

fn write_config(dir: &Path, name: &str, dc: &str, seeds: &[&str], transits: &str) -> PathBuf {
    let cfg = dir.join(format!("{name}.yaml"));
    let seeds: Vec<String> = seeds.iter().map(|s| format!("\"{s}:7946\"")).collect();
    std::fs::write(
        &cfg,
        format!(
            "name: {name}\ndatacenter: {dc}\nstate_dir: {state}\nmesh:\n  bind: \"0.0.0.0:7946\"\n  seeds: [{seeds}]\n  keyring: {kr}\ntransits:\n{transits}tunnels:\n  wireguard: userspace\nprobe:\n  interval: 1s\n  count: 4\napi:\n  socket: {sock}\nmetrics:\n  listen: \"127.0.0.1:9100\"\n",
            seeds = seeds.join(", "),
            state = dir.join(format!("{name}.state")).display(),
            kr = dir.join("keyring").display(),
            sock = dir.join(format!("{name}.sock")).display(),
        ),
    )
    .unwrap();
    cfg
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gw{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write_keyring(
        &dir.join("keyring"),
        &[&gatewan_mesh::MeshKey::generate().to_base64()],
    );
    dir
}

/// Whether `h` has `n` tunnels, each seen Established at least once (recorded in `seen`).
/// Not "all Established at one instant": 200 wireguard-go tunnels probing on two cores
/// see loss and latency spikes that flap probe states, which says nothing of numbering.
fn each_came_up(h: &Host, n: usize, seen: &mut BTreeSet<String>) -> bool {
    // Both ends of a tunnel share its id: the key names the end too.
    let key = |t: &serde_json::Value| {
        format!(
            "{} {}",
            h.socket.display(),
            t["id"].as_str().unwrap_or_default()
        )
    };
    let t = h.tunnels();
    for t in &t {
        if t["state"] == "Established" {
            seen.insert(key(t));
        }
    }
    t.len() == n && t.iter().all(|t| seen.contains(&key(t)))
}

/// Every gatewan's announced slot as `h` sees the mesh, and the conflicts it reports.
fn slots_seen(h: &Host) -> (BTreeMap<String, u64>, Vec<String>) {
    let out = routingctl(&h.socket, &["-o", "json", "members"]);
    let members: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut slots = BTreeMap::new();
    let mut conflicts = Vec::new();
    for m in &members {
        let name = m["name"].as_str().unwrap_or_default().to_string();
        if let Some(s) = m["tunnel_slot"].as_u64() {
            slots.insert(name.clone(), s);
        }
        if let Some(by) = m["tunnel_slot_held_by"].as_str() {
            conflicts.push(format!("{name}: held by {by}"));
        }
    }
    (slots, conflicts)
}

fn unique(slots: &BTreeMap<String, u64>) -> bool {
    slots.values().collect::<BTreeSet<_>>().len() == slots.len()
}

/// The tunnels of a host as the kernel and the planner numbered them: interface, ifindex,
/// listen port and tunnel addresses. Any renumbering or re-creation changes it.
fn numbering(h: &Host) -> Vec<String> {
    let mut v: Vec<String> = h
        .tunnel_ifindexes()
        .into_iter()
        .map(|(name, idx)| format!("{name}#{idx}"))
        .collect();
    for t in h.tunnels() {
        v.push(format!(
            "{} {} {} {}",
            t["interface"].as_str().unwrap_or_default(),
            t["local_info"]["public_endpoint"]
                .as_str()
                .unwrap_or_default(),
            t["local_info"]["local_address_v4"]
                .as_str()
                .unwrap_or_default(),
            t["local_info"]["local_address_v6"]
                .as_str()
                .unwrap_or_default(),
        ));
    }
    v.sort();
    v
}

/// What each gatewan sees, where it differs from the first one's view: for a failure.
fn diagnosis(hosts: &[Host]) -> String {
    let first = slots_seen(&hosts[0]);
    let mut out = format!("{}: slots {:?}\n", hosts[0].log.display(), first);
    for h in hosts {
        let seen = slots_seen(h);
        let states: Vec<String> = h
            .tunnels()
            .iter()
            .map(|t| t["state"].as_str().unwrap_or("?").to_string())
            .collect();
        let differs = if seen == first {
            String::new()
        } else {
            format!(" slots {seen:?}")
        };
        out.push_str(&format!(
            "{}: tunnels {states:?}{differs}\n",
            h.log.display()
        ));
    }
    out
}

#[test]
fn twenty_gatewans_started_at_once_claim_unique_slots_and_a_second_start_changes_nothing() {
    if !require_root("zero_touch") || !require_program("zero_touch", "wireguard-go") {
        return;
    }
    const N: usize = 20;
    // Two datacenters, one transit each: dc1 has 2 gatewans, dc0 the 18 others. Every
    // gatewan has tunnels, each numbered from two of the 20 slots; 72 wireguard-go
    // processes in all (10 + 10 would be 200, more than two cores start and probe at once:
    // measured, their UAPI sockets time out and the configuration never settles).
    let dc_of = |i: usize| if i < 2 { 1 } else { 0 };
    let tunnels_of = |i: usize| if dc_of(i) == 1 { N - 2 } else { 2 };
    let internet = Netns::new();
    internet.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    internet.exec_ok(&["ip", "addr", "add", "198.51.100.254/24", "dev", "br0"]);
    internet.exec_ok(&["ip", "link", "set", "br0", "up"]);
    let dir = scratch("zt20");
    let mut hosts: Vec<Host> = Vec::new();
    for i in 0..N {
        let mut h = Host::new();
        let port = format!("h{i}");
        link(&h.ns, "lumen0", &internet, &port);
        internet.exec_ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
        let addr = format!("198.51.100.{}", i + 1);
        // One default route via the transit, as a real host has.
        h.sh(&format!(
            "ip addr add {addr}/24 dev lumen0 && ip link set lumen0 up && ip route add default via 198.51.100.254"
        ));
        let name = format!("gw{i:02}-dc{}", dc_of(i));
        h.config = write_config(
            &dir,
            &name,
            &format!("dc{}", dc_of(i)),
            &["198.51.100.1", "198.51.100.2"],
            &transit("lumen", "lumen0", &addr, None),
        );
        h.socket = dir.join(format!("{name}.sock"));
        h.log = dir.join(format!("{name}.log"));
        hosts.push(h);
    }
    let settle = |hosts: &[Host], limit: Duration| -> Option<Duration> {
        let t0 = Instant::now();
        let mut seen = BTreeSet::new();
        let ok = wait_until(limit, || {
            let (slots, conflicts) = slots_seen(&hosts[0]);
            slots.len() == N
                && unique(&slots)
                && conflicts.is_empty()
                // Every gatewan sees the same slots (same-datacenter gatewans only learn
                // of each other through the mesh: no tunnel joins them).
                && hosts[1..].iter().all(|h| slots_seen(h) == (slots.clone(), Vec::new()))
                && hosts
                    .iter()
                    .enumerate()
                    .all(|(i, h)| each_came_up(h, tunnels_of(i), &mut seen))
        });
        ok.then(|| t0.elapsed())
    };
    let t0 = Instant::now();
    for h in &mut hosts {
        h.start();
    }
    let slotted = wait_until(Duration::from_secs(30), || {
        let (slots, conflicts) = slots_seen(&hosts[0]);
        slots.len() == N && unique(&slots) && conflicts.is_empty()
    });
    eprintln!(
        "slots unique as {} sees them after {:?} ({slotted})",
        hosts[0].log.display(),
        t0.elapsed()
    );
    // The target is 10 s (issue 16); the bound here is 3× that, for a busy CI machine.
    let agreed = wait_until(Duration::from_secs(30), || {
        let seen = slots_seen(&hosts[0]);
        seen.0.len() == N && hosts[1..].iter().all(|h| slots_seen(h) == seen)
    });
    eprintln!(
        "every gatewan sees the same {N} slots after {:?} ({agreed})",
        t0.elapsed()
    );
    let took = settle(&hosts, Duration::from_secs(30)).map(|_| t0.elapsed());
    if took.is_none() {
        eprintln!("{}", diagnosis(&hosts));
    }
    let (slots, conflicts) = slots_seen(&hosts[0]);
    assert!(
        took.is_some(),
        "not settled in 30 s: slots {slots:?}, conflicts {conflicts:?}, tunnels per gatewan {:?}",
        hosts.iter().map(|h| h.tunnels().len()).collect::<Vec<_>>()
    );
    let took = took.unwrap_or_default();
    let renumbered: usize = hosts
        .iter()
        .map(|h| {
            std::fs::read_to_string(&h.log)
                .unwrap_or_default()
                .matches("renumbered")
                .count()
        })
        .sum();
    eprintln!(
        "{N} gatewans: unique slots and {} tunnels up {took:?} after the start, {renumbered} renumberings; slots {slots:?}",
        2 * (N - 2) * 2
    );
    if took > Duration::from_secs(10) {
        eprintln!("MISSED TARGET: {took:?}, target 10 s");
    }
    // Every gatewan sees the same slots (settled above; asserted for the message).
    for h in &hosts[1..] {
        assert_eq!(
            slots_seen(h).0,
            slots,
            "{} sees other slots",
            h.log.display()
        );
    }
    // Stable: nothing moves once settled.
    let before: Vec<Vec<String>> = hosts.iter().map(numbering).collect();
    std::thread::sleep(Duration::from_secs(5));
    let after: Vec<Vec<String>> = hosts.iter().map(numbering).collect();
    assert_eq!(before, after, "tunnels changed after settling");

    // A second start of all of them changes nothing: same slots, the same interfaces
    // adopted in place (same ifindex), no tunnel configured again.
    for h in &mut hosts {
        h.kill9();
    }
    std::thread::sleep(Duration::from_millis(500));
    for h in &mut hosts {
        h.start();
    }
    let again = settle(&hosts, Duration::from_secs(30));
    assert!(again.is_some(), "not settled again:\n{}", diagnosis(&hosts));
    eprintln!("second start settled in {:?}", again.unwrap_or_default());
    assert_eq!(slots_seen(&hosts[0]).0, slots, "slots changed at restart");
    let restarted: Vec<Vec<String>> = hosts.iter().map(numbering).collect();
    assert_eq!(
        before, restarted,
        "tunnels renumbered or recreated at restart"
    );
    for h in &hosts {
        let log = std::fs::read_to_string(&h.log).unwrap_or_default();
        let second = log.rsplit("joining the mesh").next().unwrap_or("");
        assert!(
            !second.contains("tunnel configured") && !second.contains("tunnel slot claimed"),
            "{}: the second start claimed or configured again",
            h.log.display()
        );
    }
    drop(hosts);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_third_transit_listed_first_at_a_restart_leaves_the_tunnels_of_the_first_two_untouched() {
    if !require_root("zero_touch")
        || !require_program("zero_touch", "wireguard-go")
        || !require_program("zero_touch", "iptables")
    {
        return;
    }
    // Two gatewans, each with lumen and cogent, through an "internet" router; a gets telia
    // later, written first in its transits list.
    let internet = Netns::new();
    internet.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let dir = scratch("zt3");
    let mut a = Host::new();
    let mut b = Host::new();
    // A /30 per transit: the router's address, then the gatewan's.
    let wire = |h: &Host, side: &str, t: &str, router: &str, host: &str| {
        let port = format!("{side}-{t}");
        link(&h.ns, &format!("{t}0"), &internet, &port);
        internet.exec_ok(&["ip", "addr", "add", &format!("{router}/30"), "dev", &port]);
        internet.exec_ok(&["ip", "link", "set", &port, "up"]);
        h.sh(&format!(
            "ip addr add {host}/30 dev {t}0 && ip link set {t}0 up"
        ));
    };
    wire(&a, "a", "lumen", "198.51.100.1", "198.51.100.2");
    wire(&a, "a", "cogent", "203.0.113.1", "203.0.113.2");
    wire(&a, "a", "telia", "192.0.2.1", "192.0.2.2");
    wire(&b, "b", "lumen", "198.51.100.5", "198.51.100.6");
    wire(&b, "b", "cogent", "203.0.113.5", "203.0.113.6");
    // One default route per host, via lumen.
    a.sh("ip route add default via 198.51.100.1");
    b.sh("ip route add default via 198.51.100.5");
    let lumen_cogent = |lumen: &str, cogent: &str, gw: &str| {
        transit("lumen", "lumen0", lumen, None) + &transit("cogent", "cogent0", cogent, Some(gw))
    };
    a.config = write_config(
        &dir,
        "gw-a",
        "sg1",
        &["198.51.100.6"],
        &lumen_cogent("198.51.100.2", "203.0.113.2", "203.0.113.1"),
    );
    b.config = write_config(
        &dir,
        "gw-b",
        "par1",
        &["198.51.100.2"],
        &lumen_cogent("198.51.100.6", "203.0.113.6", "203.0.113.5"),
    );
    for (h, n) in [(&mut a, "gw-a"), (&mut b, "gw-b")] {
        h.socket = dir.join(format!("{n}.sock"));
        h.log = dir.join(format!("{n}.log"));
        h.start();
    }
    let up = wait_until(Duration::from_secs(45), || {
        a.established(4) && b.established(4)
    });
    assert!(up, "four tunnels not Established: {:#?}", a.tunnels());
    let (a_before, b_before) = (numbering(&a), numbering(&b));
    let first_two: Vec<String> = a
        .tunnels()
        .iter()
        .map(|t| t["id"].as_str().unwrap_or_default().to_string())
        .collect();

    // telia written first: with positions from the list it would take position 0 and
    // renumber every tunnel of a.
    a.kill9();
    let telia = transit("telia", "telia0", "192.0.2.2", Some("192.0.2.1"));
    std::fs::write(
        &a.config,
        std::fs::read_to_string(&a.config)
            .unwrap()
            .replace("transits:\n", &format!("transits:\n{telia}")),
    )
    .unwrap();
    a.start();
    let grown = wait_until(Duration::from_secs(45), || {
        a.established(6) && b.established(6)
    });
    assert!(grown, "six tunnels not Established: {:#?}", a.tunnels());
    let ids: BTreeSet<String> = a
        .tunnels()
        .iter()
        .map(|t| t["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        first_two.iter().all(|id| ids.contains(id)),
        "a tunnel of lumen or cogent went away"
    );
    // The four first tunnels: same interfaces (not recreated), ports and addresses.
    let a_after = numbering(&a);
    for line in &a_before {
        assert!(a_after.contains(line), "a: {line} changed: {a_after:#?}");
    }
    let b_after = numbering(&b);
    for line in &b_before {
        assert!(b_after.contains(line), "b: {line} changed: {b_after:#?}");
    }
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    let restarted = log.rsplit("joining the mesh").next().unwrap_or("");
    assert_eq!(
        restarted.matches("tunnel configured").count(),
        2,
        "only the two telia tunnels are configured after the restart"
    );
    drop(a);
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
}
