//! Tenant VRFs: `lab.vrf.*` labels realized as network namespaces, and the shipped
//! `evpn-leaf` topology, where two real FRR 8.4 leaves exchange type-5 routes through a
//! gobgpd route reflector and route a tenant's hosts over VXLAN.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lab::Harness;
use serde_json::Value;

/// FRR and gobgpd are needed besides root: skipped without them, except in CI.
fn tools_or_skip(test: &str) -> bool {
    if !common::root_or_skip(test) {
        return false;
    }
    let missing: Vec<&str> = ["/usr/lib/frr/zebra", "/usr/lib/frr/bgpd", "/usr/bin/vtysh"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .chain(["gobgpd", "gobgp"].into_iter().filter(|b| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .output()
                .is_ok_and(|o| o.status.success())
        }))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{test}: needs FRR 8.4 and gobgpd ({} missing; run scripts/bootstrap.sh)",
        missing.join(", ")
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why} (CI=true, not skipping)");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP {why}");
    false
}

/// Polls `check` until it returns Ok or `limit` passes; panics with its last complaint.
fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let t0 = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if t0.elapsed() > limit => panic!("{what}: not within {limit:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn out(lab: &lab::RunningLab, node: &str, argv: &[&str]) -> Result<String, String> {
    let o = lab.exec(node, argv).map_err(|e| format!("{e:#}"))?;
    if !o.status.success() {
        return Err(format!(
            "{node}: {argv:?}: {}{}",
            common::stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(common::stdout(&o))
}

/// A leaf of the shipped topology.
struct Leaf {
    node: &'static str,
    vtep: &'static str,
    rmac: &'static str,
    prefixes: [&'static str; 2],
}

const LEAVES: [Leaf; 2] = [
    Leaf {
        node: "leaf1",
        vtep: "10.0.255.11",
        rmac: "02:00:00:00:00:11",
        prefixes: ["172.16.1.0/24", "2001:db8:a1::/48"],
    },
    Leaf {
        node: "leaf2",
        vtep: "10.0.255.12",
        rmac: "02:00:00:00:00:12",
        prefixes: ["172.16.2.0/24", "2001:db8:a2::/48"],
    },
];

/// A type-5 route as the route reflector holds it.
#[derive(Debug)]
struct Type5 {
    prefix: String,
    nexthop: String,
    rmac: String,
    /// Encapsulation extended community: 8 is VXLAN.
    tunnel: u64,
    label: u64,
    route_targets: Vec<String>,
}

/// Type-5 routes in the route reflector's RIB.
fn rr_type5(lab: &lab::RunningLab) -> Result<Vec<Type5>, String> {
    let text = out(lab, "rr", &["gobgp", "global", "rib", "-a", "evpn", "-j"])?;
    let rib: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    let mut routes = Vec::new();
    for path in rib
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|v| v.as_array().into_iter().flatten())
    {
        let nlri = &path["nlri"];
        if nlri["type"] != 5 {
            continue;
        }
        let attrs = path["attrs"].as_array().cloned().unwrap_or_default();
        let nexthop = attrs
            .iter()
            .find(|a| a["type"] == 14)
            .and_then(|a| a["nexthop"].as_str())
            .unwrap_or_default()
            .to_string();
        let comms: Vec<Value> = attrs
            .iter()
            .filter(|a| a["type"] == 16)
            .flat_map(|a| a["value"].as_array().cloned().unwrap_or_default())
            .collect();
        // Extended communities: Router's MAC (EVPN type 6, subtype 3), encapsulation
        // (opaque type 3, subtype 12), route targets (subtype 2).
        let rmac = comms
            .iter()
            .find(|c| c["type"] == 6 && c["subtype"] == 3)
            .and_then(|c| c["mac"].as_str())
            .unwrap_or_default()
            .to_string();
        let tunnel = comms
            .iter()
            .find(|c| c["type"] == 3 && c["subtype"] == 12)
            .and_then(|c| c["tunnel_type"].as_u64())
            .unwrap_or_default();
        let route_targets = comms
            .iter()
            .filter(|c| c["subtype"] == 2)
            .filter_map(|c| c["value"].as_str().map(String::from))
            .collect();
        routes.push(Type5 {
            prefix: nlri["value"]["prefix"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            nexthop,
            rmac,
            tunnel,
            label: nlri["value"]["label"].as_u64().unwrap_or_default(),
            route_targets,
        });
    }
    Ok(routes)
}

/// Packets sent and received by the leaf's L3 VNI VXLAN device.
fn vxlan_counters(lab: &lab::RunningLab, leaf: &str) -> (u64, u64) {
    let text = out(
        lab,
        leaf,
        &["ip", "-n", "tenant", "-s", "-j", "link", "show", "vx10100"],
    )
    .expect("vx10100 counters");
    let v: Value = serde_json::from_str(&text).expect("ip -j");
    let s = &v[0]["stats64"];
    (
        s["tx"]["packets"].as_u64().expect("tx"),
        s["rx"]["packets"].as_u64().expect("rx"),
    )
}

#[test]
fn frr_leaves_route_a_tenant_over_vxlan() {
    if !tools_or_skip("frr_leaves_route_a_tenant_over_vxlan") {
        return;
    }
    let name = "t-evpn";
    let _ = lab::realize::down(name);
    let before = common::snapshot(name);
    let t0 = Instant::now();
    let lab =
        Harness::up_named(common::fixture("topologies/evpn-leaf.clab.yml"), name).expect("up");
    let limit = Duration::from_secs(60);

    // Each leaf sees its VRF, and nothing else of the lab, as a network namespace.
    for leaf in &LEAVES {
        assert_eq!(
            out(&lab, leaf.node, &["ip", "netns", "list"])
                .expect("ip netns")
                .split_whitespace()
                .next(),
            Some("tenant"),
        );
        assert_eq!(
            out(&lab, leaf.node, &["ls", "/run/netns"])
                .expect("ls")
                .trim(),
            "tenant"
        );
    }
    assert!(
        !Path::new("/run/netns/tenant").exists(),
        "the VRF's name leaked onto the host"
    );

    // Each leaf originates its tenant's prefixes as type-5 routes: next hop its VTEP, its
    // Router's MAC, VXLAN encapsulation (tunnel type 8), label = L3 VNI, the tenant's RT.
    eventually(
        "type-5 routes of both leaves at the route reflector",
        limit,
        || {
            let rib = rr_type5(&lab)?;
            for leaf in &LEAVES {
                for p in leaf.prefixes {
                    let found = rib.iter().any(|r| {
                        r.prefix == p
                            && r.nexthop == leaf.vtep
                            && r.rmac == leaf.rmac
                            && r.tunnel == 8
                            && r.label == 10100
                            && r.route_targets.iter().any(|t| t == "65001:100")
                    });
                    if !found {
                        return Err(format!("no type-5 {p} from {} in {rib:?}", leaf.node));
                    }
                }
            }
            Ok(())
        },
    );

    // Each leaf installs the other's prefixes in its VRF: onlink via the other VTEP on the
    // L3 VNI's bridge, with the neighbour (Router's MAC) and FDB (MAC -> VTEP) entries.
    for (leaf, other) in [(&LEAVES[0], &LEAVES[1]), (&LEAVES[1], &LEAVES[0])] {
        let n = leaf.node;
        eventually(
            &format!("{n} installs {}'s prefixes", other.node),
            limit,
            || {
                let v4 = out(
                    &lab,
                    n,
                    &["ip", "-n", "tenant", "route", "show", other.prefixes[0]],
                )?;
                let v6 = out(
                    &lab,
                    n,
                    &[
                        "ip",
                        "-n",
                        "tenant",
                        "-6",
                        "route",
                        "show",
                        other.prefixes[1],
                    ],
                )?;
                let via4 = format!("via {} dev br10100", other.vtep);
                let via6 = format!("via ::ffff:{} dev br10100", other.vtep);
                if !(v4.contains(&via4) && v4.contains("onlink")) {
                    return Err(format!("IPv4 route: {v4:?}, want `{via4} … onlink`"));
                }
                if !(v6.contains(&via6) && v6.contains("onlink")) {
                    return Err(format!("IPv6 route: {v6:?}, want `{via6} … onlink`"));
                }
                let neigh = out(
                    &lab,
                    n,
                    &["ip", "-n", "tenant", "neigh", "show", "dev", "br10100"],
                )?;
                let want = format!("{} lladdr {}", other.vtep, other.rmac);
                if !neigh.contains(&want) {
                    return Err(format!("neighbours: {neigh:?}, want `{want}`"));
                }
                let fdb = out(
                    &lab,
                    n,
                    &["bridge", "-n", "tenant", "fdb", "show", "dev", "vx10100"],
                )?;
                let want = format!("{} dst {}", other.rmac, other.vtep);
                if !fdb.contains(&want) {
                    return Err(format!("FDB: {fdb:?}, want `{want}`"));
                }
                Ok(())
            },
        );
    }

    // host1 reaches host2 (IPv4 and IPv6) through the leaves' VXLAN: the only path
    // between the tenant's namespaces, and the VXLAN devices count the packets.
    let (tx1, rx1) = vxlan_counters(&lab, "leaf1");
    for dst in ["172.16.2.10", "2001:db8:a2::10"] {
        eventually(
            &format!("host1 pings {dst}"),
            Duration::from_secs(10),
            || out(&lab, "host1", &["ping", "-c3", "-i0.2", "-W2", dst]).map(|_| ()),
        );
    }
    let (tx2, rx2) = vxlan_counters(&lab, "leaf1");
    assert!(
        tx2 >= tx1 + 6 && rx2 >= rx1 + 6,
        "VXLAN of leaf1: tx {tx1}->{tx2}, rx {rx1}->{rx2}"
    );
    out(&lab, "host2", &["ping", "-c1", "-W2", "172.16.1.10"]).expect("host2 -> host1");
    eprintln!("evpn-leaf: routes and pings within {:?}", t0.elapsed());

    // down leaves no namespace (VRFs included), link, mount or process behind.
    let mut inodes = Vec::new();
    for n in ["rr", "leaf1", "leaf2", "host1", "host2"] {
        inodes.extend(lab::ns::ns_inode(&lab::ns::netns_path(name, n)));
        inodes.extend(lab::ns::ns_inode(&lab::ns::mntns_path(name, n)));
    }
    for leaf in &LEAVES {
        inodes.extend(lab::ns::ns_inode(&lab::ns::vrf_netns_path(
            name, leaf.node, "tenant",
        )));
    }
    let pids = lab::ns::pids_in(&inodes);
    assert!(pids.len() >= 5, "gobgpd, zebra and bgpd x2: {pids:?}");
    lab.down().expect("down");
    assert_eq!(before, common::snapshot(name));
    for p in pids {
        assert!(!common::pid_alive(p), "pid {p} survived down");
    }
}

/// Runs the `lab` binary with `args`; `FILE` stands for the topology.
fn lab_cli(args: &[&str], topo: &Path) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lab"));
    c.args(args.iter().map(|a| {
        if *a == "FILE" {
            topo.as_os_str()
        } else {
            std::ffi::OsStr::new(a)
        }
    }));
    let o = c.output().expect("run lab");
    assert!(o.status.success(), "lab {args:?}: {o:?}");
    common::stdout(&o)
}

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(o.status.success(), "ip {args:?}: {o:?}");
    common::stdout(&o)
}

/// The realization itself, without FRR: a VRF is a namespace with its interfaces, VXLAN
/// device and bridge, visible in the node by its name; `up` repairs what was deleted
/// (keeping the same namespace when only the host's handle was removed) and `down`
/// removes it all.
#[test]
fn vrf_namespaces_are_created_repaired_and_removed() {
    if !common::root_or_skip("vrf_namespaces_are_created_repaired_and_removed") {
        return;
    }
    let name = "t-vrf";
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("t-vrf.clab.yml");
    std::fs::write(
        &f,
        format!(
            "name: {name}
topology:
  nodes:
    l:
      kind: linux
      labels:
        lab.addr.lo: 10.0.0.1/32
        lab.vrf.t: vni=77 vtep=10.0.0.1 rmac=02:00:00:00:77:01
        lab.vrf.t.interfaces: eth2
        lab.addr.eth2: 172.16.7.1/24 2001:db8:7::1/64
    h:
      kind: linux
      labels:
        lab.addr.eth1: 172.16.7.10/24
  links:
    - endpoints: [l:eth2, h:eth1]
"
        ),
    )
    .expect("write");
    lab_cli(&["down", "FILE"], &f);
    let before = common::snapshot(name);
    lab_cli(&["up", "FILE"], &f);
    let vrf = lab::ns::vrf_netns_name(name, "l", "t");
    let vrf_path = lab::ns::vrf_netns_path(name, "l", "t");
    let exec = |argv: &[&str]| {
        let mut a = vec!["exec", "-t", "FILE", "l", "--"];
        a.extend_from_slice(argv);
        lab_cli(&a, &f)
    };
    let check = |what: &str| {
        let links = ip(&["-n", &vrf, "-d", "link", "show"]);
        assert!(
            links.contains("vxlan id 77 local 10.0.0.1") && links.contains("dstport 4789"),
            "{what}: VXLAN device: {links}"
        );
        assert!(links.contains("master br77"), "{what}: {links}");
        let br = ip(&["-n", &vrf, "link", "show", "br77"]);
        assert!(
            br.contains("02:00:00:00:77:01") && br.contains(",UP"),
            "{what}: {br}"
        );
        let addrs = ip(&["-n", &vrf, "addr", "show", "eth2"]);
        assert!(
            addrs.contains("172.16.7.1/24") && addrs.contains("2001:db8:7::1/64"),
            "{what}: {addrs}"
        );
        assert_eq!(
            ip(&["netns", "exec", &vrf, "sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
            "1"
        );
        // Bridged frames skip netfilter, as in a switch (when br_netfilter is loaded at all).
        if std::path::Path::new("/proc/sys/net/bridge").exists() {
            assert_eq!(
                ip(&[
                    "netns",
                    "exec",
                    &vrf,
                    "sysctl",
                    "-n",
                    "net.bridge.bridge-nf-call-iptables"
                ])
                .trim(),
                "0",
                "{what}"
            );
        }
        // The node sees exactly this namespace as `t`.
        assert_eq!(exec(&["ls", "/run/netns"]).trim(), "t", "{what}");
        let inner = exec(&["stat", "-L", "-c", "%i", "/run/netns/t"]);
        assert_eq!(
            inner.trim().parse::<u64>().ok(),
            lab::ns::ns_inode(&vrf_path),
            "{what}: the node's `t` is another namespace"
        );
        let o = Command::new("ip")
            .args(["netns", "exec", &lab::ns::netns_name(name, "h")])
            .args(["ping", "-c1", "-W2", "172.16.7.1"])
            .output()
            .expect("ping");
        assert!(
            o.status.success(),
            "{what}: h cannot reach its gateway: {o:?}"
        );
    };
    check("after up");
    // The node's underlay keeps the VXLAN socket: the VRF has no underlay address.
    assert!(!ip(&["-n", &lab::ns::netns_name(name, "l"), "link"]).contains("vx77"));

    // Deleted devices come back.
    ip(&["-n", &vrf, "link", "del", "br77"]);
    ip(&["-n", &vrf, "link", "del", "eth2"]);
    lab_cli(&["up", "FILE"], &f);
    check("after deleting br77 and eth2");

    // `ip netns del` of the host's handle: the node still holds the namespace, so `up`
    // takes it back rather than making a new one next to it.
    let ino = lab::ns::ns_inode(&vrf_path);
    ip(&["netns", "del", &vrf]);
    lab_cli(&["up", "FILE"], &f);
    assert_eq!(lab::ns::ns_inode(&vrf_path), ino, "a new VRF namespace");
    check("after ip netns del");

    // The node's view removed: bound again.
    exec(&["umount", "/run/netns/t"]);
    exec(&["rm", "/run/netns/t"]);
    lab_cli(&["up", "FILE"], &f);
    check("after removing the node's view");
    assert!(lab_cli(&["status", "FILE"], &f).contains("vrf t: netns ok"));

    lab_cli(&["down", "FILE"], &f);
    assert_eq!(before, common::snapshot(name));
    assert!(!vrf_path.exists());
}
