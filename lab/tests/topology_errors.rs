//! Bad topology files: every rejection names the key and line, and the CLI exits with
//! code 2 without creating anything.

mod common;

use std::path::Path;
use std::process::Command;

use lab::Topology;

fn parse(text: &str) -> Result<Topology, lab::TopologyError> {
    Topology::parse(text, Path::new("/tmp/t.clab.yml"))
}

fn err(text: &str) -> lab::TopologyError {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

const GOOD: &str = "name: ok
topology:
  nodes:
    a: {kind: linux}
    b: {kind: linux}
  links:
    - endpoints: [\"a:eth1\", \"b:eth1\"]
";

#[test]
fn accepts_a_minimal_file_and_the_shipped_topologies() {
    let t = parse(GOOD).expect("minimal topology");
    assert_eq!(t.links.len(), 1);
    for f in [
        "topologies/two-dc.clab.yml",
        "topologies/three-dc.clab.yml",
        "topologies/evpn-leaf.clab.yml",
        "tests/fixtures/small.clab.yml",
    ] {
        Topology::load(&common::fixture(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let e = err("name: x\ntopology:\n  nodes:\n    a:\n      kind: linux\n      imagee: foo\n");
    assert_eq!(e.line, 6, "{e}");
    assert!(e.to_string().contains("imagee"), "{e}");

    let e = err("name: x\nmgmt: {}\ntopology:\n  nodes:\n    a: {kind: linux}\n");
    assert_eq!(e.line, 2, "{e}");
    assert!(e.to_string().contains("mgmt"), "{e}");

    let e = err(
        "name: x\ntopology:\n  nodes:\n    a:\n      kind: linux\n      labels:\n        lab.bogus: 1\n",
    );
    assert_eq!(e.line, 7, "{e}");
    assert!(e.key.ends_with("labels.lab.bogus"), "{e}");
}

#[test]
fn bad_values_are_named_with_their_line() {
    let cases: &[(&str, u64, &str)] = &[
        // unsupported kind
        (
            "name: x\ntopology:\n  nodes:\n    a:\n      kind: nokia_srlinux\n",
            5,
            "kind",
        ),
        // link to a missing node
        (
            "name: x\ntopology:\n  nodes:\n    a: {kind: linux}\n  links:\n    - endpoints: [\"a:eth1\", \"b:eth1\"]\n",
            6,
            "endpoints",
        ),
        // interface name too long
        (
            "name: x\ntopology:\n  nodes:\n    a: {kind: linux}\n    b: {kind: linux}\n  links:\n    - endpoints: [\"a:eth1234567890123\", \"b:eth1\"]\n",
            7,
            "endpoints",
        ),
        // address without prefix length
        (
            "name: x\ntopology:\n  nodes:\n    a:\n      kind: linux\n      labels:\n        lab.addr.eth1: 10.0.0.1\n    b: {kind: linux}\n  links:\n    - endpoints: [\"a:eth1\", \"b:eth1\"]\n",
            7,
            "lab.addr.eth1",
        ),
        // address on an interface that no link creates
        (
            "name: x\ntopology:\n  nodes:\n    a:\n      kind: linux\n      labels:\n        lab.addr.eth9: 10.0.0.1/24\n",
            7,
            "lab.addr.eth9",
        ),
        // host-wide sysctl
        (
            "name: x\ntopology:\n  nodes:\n    a:\n      kind: linux\n      labels:\n        lab.sysctl.kernel.panic: \"1\"\n",
            7,
            "lab.sysctl.kernel.panic",
        ),
        // bad route
        (
            "name: x\ntopology:\n  nodes:\n    a:\n      kind: linux\n      labels:\n        lab.route.0: 10.0.0.0/8 through 10.0.0.1\n",
            7,
            "lab.route.0",
        ),
        // bad impairment
        (
            "name: x\ntopology:\n  nodes:\n    a: {kind: linux}\n    b: {kind: linux}\n    w:\n      kind: linux\n      labels:\n        lab.kind: wan-emulator\n        lab.wan.impair: delay=soon\n  links:\n    - endpoints: [\"a:eth1\", \"w:eth1\"]\n    - endpoints: [\"w:eth2\", \"b:eth1\"]\n",
            10,
            "lab.wan.impair",
        ),
        // emulator without its ports
        (
            "name: x\ntopology:\n  nodes:\n    w:\n      kind: linux\n      labels:\n        lab.kind: wan-emulator\n",
            7,
            "lab.wan.ports",
        ),
        // bad lab name
        (
            "name: \"bad/name\"\ntopology:\n  nodes:\n    a: {kind: linux}\n",
            1,
            "name",
        ),
        // bind from a missing host path
        (
            "name: x\ntopology:\n  nodes:\n    a:\n      kind: linux\n      binds:\n        - /nonexistent/lab/path:/x\n",
            7,
            "binds[0]",
        ),
        // unsupported endpoint type
        (
            "name: x\ntopology:\n  nodes:\n    a: {kind: linux}\n  links:\n    - endpoints: [\"a:eth1\", \"host:veth9\"]\n",
            6,
            "endpoints",
        ),
    ];
    for (text, line, key) in cases {
        let e = err(text);
        assert_eq!(e.line, *line, "wrong line for:\n{text}\n{e}");
        assert!(
            e.key.contains(key) || e.message.contains(key),
            "key `{key}` not named:\n{text}\n{e}"
        );
    }
}

/// A leaf `l` (VTEP 10.0.0.1 on lo) with a tenant host `h` on eth2 and an underlay
/// neighbour `u` on eth1; `labels` start on line 7, one per line.
fn vrf_file(labels: &[&str]) -> String {
    format!(
        "name: x
topology:
  nodes:
    l:
      kind: linux
      labels:
        {}
        lab.addr.lo: 10.0.0.1/32
        lab.addr.eth1: 10.1.0.0/31
    h: {{kind: linux}}
    u: {{kind: linux}}
  links:
    - endpoints: [l:eth2, h:eth1]
    - endpoints: [l:eth1, u:eth1]
",
        labels.join("\n        ")
    )
}

#[test]
fn vrf_labels_are_parsed() {
    let t = parse(&vrf_file(&[
        "lab.vrf.tenant: \"vni=10100 vtep=10.0.0.1 rmac=02:AA:00:00:00:01\"",
        "lab.vrf.tenant.interfaces: eth2",
        "lab.addr.eth2: 172.16.1.1/24",
        "lab.vrf.plain: \"\"",
    ]))
    .expect("VRF labels");
    let l = &t.nodes["l"];
    let v = &l.vrfs["tenant"];
    assert_eq!(v.interfaces, ["eth2"]);
    let l3 = v.l3vni.as_ref().expect("L3 VNI");
    assert_eq!(
        (l3.vni, l3.vtep.to_string(), l3.rmac.as_str()),
        (10100, "10.0.0.1".into(), "02:aa:00:00:00:01")
    );
    assert_eq!(
        (l3.vxlan_dev().as_str(), l3.bridge_dev().as_str()),
        ("vx10100", "br10100")
    );
    assert_eq!(l.vrf_of("eth2"), Some("tenant"));
    assert_eq!(l.vrf_of("eth1"), None);
    assert!(l.vrfs["plain"].l3vni.is_none() && l.vrfs["plain"].interfaces.is_empty());
}

#[test]
fn bad_vrf_labels_are_named_with_their_line() {
    const L3: &str = "lab.vrf.t: \"vni=10 vtep=10.0.0.1 rmac=02:00:00:00:00:01\"";
    // (labels, line of the bad one, its key, words of the message)
    let cases: &[(&[&str], u64, &str, &str)] = &[
        (
            &["lab.vrf.t: \"vni=0 vtep=10.0.0.1 rmac=02:00:00:00:00:01\""],
            7,
            "lab.vrf.t",
            "vni `0`",
        ),
        (
            &["lab.vrf.t: \"vni=16777216 vtep=10.0.0.1 rmac=02:00:00:00:00:01\""],
            7,
            "lab.vrf.t",
            "1-16777215",
        ),
        (
            &["lab.vrf.t: \"vni=10 vtep=2001:db8::1 rmac=02:00:00:00:00:01\""],
            7,
            "lab.vrf.t",
            "IPv4",
        ),
        (
            &["lab.vrf.t: \"vni=10 vtep=10.0.0.1 rmac=01:00:00:00:00:01\""],
            7,
            "lab.vrf.t",
            "unicast",
        ),
        (
            &["lab.vrf.t: \"vni=10 vtep=10.0.0.1\""],
            7,
            "lab.vrf.t",
            "needs all",
        ),
        (
            &["lab.vrf.t: \"vni=10 vni=11 vtep=10.0.0.1 rmac=02:00:00:00:00:01\""],
            7,
            "lab.vrf.t",
            "twice",
        ),
        (
            &["lab.vrf.t: \"vni=10 colour=red\""],
            7,
            "lab.vrf.t",
            "unknown key `colour`",
        ),
        (
            &["lab.vrf.t: \"vni=10 vtep=10.9.9.9 rmac=02:00:00:00:00:01\""],
            7,
            "lab.vrf.t",
            "not an address of the node",
        ),
        (
            &["lab.vrf.default: \"\""],
            7,
            "lab.vrf.default",
            "not `default`",
        ),
        (
            &["lab.vrf.a-very-long-vrf-name: \"\""],
            7,
            "lab.vrf.a-very-long-vrf-name",
            "1-15",
        ),
        (
            &["lab.vrf.t.ports: eth2"],
            7,
            "lab.vrf.t.ports",
            "unknown VRF label",
        ),
        (
            &["lab.vrf.t.interfaces: eth2"],
            7,
            "lab.vrf.t.interfaces",
            "no VRF `t`",
        ),
        (
            &[L3, "lab.vrf.t.interfaces: eth9"],
            8,
            "lab.vrf.t.interfaces",
            "no interface `eth9`",
        ),
        (
            &[
                L3,
                "lab.vrf.t.interfaces: eth1",
                "lab.vrf.u: \"\"",
                "lab.vrf.u.interfaces: eth1",
            ],
            10,
            "lab.vrf.u.interfaces",
            "already in VRF `t`",
        ),
        (
            &[
                L3,
                "lab.vrf.u: \"vni=10 vtep=10.0.0.1 rmac=02:00:00:00:00:02\"",
            ],
            8,
            "lab.vrf.u",
            "also the L3 VNI of VRF `t`",
        ),
        // The VTEP is an underlay address, not one of the VRF's.
        (
            &[
                "lab.vrf.t: \"vni=10 vtep=172.16.1.1 rmac=02:00:00:00:00:01\"",
                "lab.vrf.t.interfaces: eth2",
                "lab.addr.eth2: 172.16.1.1/24",
            ],
            7,
            "lab.vrf.t",
            "not an address of the node",
        ),
        (
            &[
                L3,
                "lab.vrf.t.interfaces: eth2",
                "lab.route.x: 10.9.0.0/16 dev eth2",
            ],
            9,
            "lab.route.x",
            "in VRF `t`",
        ),
        (
            &[
                L3,
                "lab.vrf.t.interfaces: eth2",
                "lab.sysctl.net.ipv4.conf.eth2.rp_filter: \"0\"",
            ],
            9,
            "lab.sysctl.net.ipv4.conf.eth2.rp_filter",
            "in VRF `t`",
        ),
    ];
    for (labels, line, key, msg) in cases {
        let e = err(&vrf_file(labels));
        assert_eq!(e.line, *line, "wrong line for {labels:?}: {e}");
        assert!(
            e.key.ends_with(&format!("labels.{key}")),
            "key `{key}` not named for {labels:?}: {e}"
        );
        assert!(
            e.message.contains(msg),
            "`{msg}` not in the message for {labels:?}: {e}"
        );
    }
}

#[test]
fn malformed_yaml_is_rejected_with_a_line() {
    let e = err("name: x\ntopology:\n  nodes:\n    a: {kind: linux\n");
    assert!(e.line > 0, "{e}");
    let e = err("name: x\ntopology:\n  nodes: [1, 2]\n");
    assert!(e.line > 0, "{e}");
}

#[test]
fn cli_exits_2_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = "t-badcli";
    let p = dir.path().join("bad.clab.yml");
    std::fs::write(
        &p,
        format!(
            "name: {name}\ntopology:\n  nodes:\n    a:\n      kind: linux\n      colour: blue\n"
        ),
    )
    .expect("write");
    let before = common::snapshot(name);
    for sub in ["up", "down", "status", "graph"] {
        let out = Command::new(env!("CARGO_BIN_EXE_lab"))
            .arg(sub)
            .arg(&p)
            .output()
            .expect("run lab");
        assert_eq!(out.status.code(), Some(2), "lab {sub}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(":6:") && err.contains("colour"),
            "lab {sub}: {err}"
        );
    }
    assert_eq!(before, common::snapshot(name));
    assert!(!Path::new("/run/lab").join(name).exists());
    let out = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["up"])
        .output()
        .expect("run lab");
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing argument is a usage error"
    );
}
