//! The shipped topologies come up and route: gatewans reach each other over every
//! transit (IPv4 and IPv6, through the WAN emulators) and the fabric nodes' loopbacks.

mod common;

use lab::Harness;

fn reach(lab: &lab::RunningLab, from: &str, to: &[&str]) {
    for addr in to {
        let out = lab
            .exec(from, &["ping", "-c1", "-W3", addr])
            .expect("exec ping");
        assert!(
            out.status.success(),
            "{} -> {addr} failed:\n{}",
            from,
            common::stdout(&out)
        );
    }
}

#[test]
fn two_dc_routes_over_both_transits() {
    if !common::root_or_skip("two_dc_routes_over_both_transits") {
        return;
    }
    let _ = lab::realize::down("t-2dc");
    let lab =
        Harness::up_named(common::fixture("topologies/two-dc.clab.yml"), "t-2dc").expect("up");
    // gatewan01-sg1 -> gatewan02-par1 on lumen (its default route), v4 and v6.
    reach(
        &lab,
        "gatewan01-sg1",
        &["198.51.100.19", "2001:db8:100:22::2"],
    );
    // Cogent is not their default route: as gatewan does (ADR 0003), a table per transit
    // and rules from its mark and its addresses route it, at both ends.
    for (node, gw4, gw6, own) in [
        (
            "gatewan01-sg1",
            "203.0.113.0",
            "2001:db8:200:11::1",
            ["203.0.113.1", "2001:db8:200:11::2"],
        ),
        (
            "gatewan02-par1",
            "203.0.113.18",
            "2001:db8:200:22::1",
            ["203.0.113.19", "2001:db8:200:22::2"],
        ),
    ] {
        let setup = format!(
            "ip route replace default via {gw4} table 0x5d02 && ip -6 route replace default via {gw6} table 0x5d02 \
             && ip rule add fwmark 0x5d02 table 0x5d02 && ip rule add from {} table 0x5d02 \
             && ip -6 rule add fwmark 0x5d02 table 0x5d02 && ip -6 rule add from {} table 0x5d02",
            own[0], own[1]
        );
        let out = lab.exec(node, &["sh", "-c", &setup]).expect("exec ip");
        assert!(out.status.success(), "{node}: {}", common::stdout(&out));
    }
    for addr in ["203.0.113.19", "2001:db8:200:22::2"] {
        let out = lab
            .exec(
                "gatewan01-sg1",
                &["ping", "-c1", "-W3", "-m", "23810", addr],
            )
            .expect("exec ping");
        assert!(
            out.status.success(),
            "gatewan01-sg1 -> {addr} over cogent failed:\n{}",
            common::stdout(&out)
        );
    }
    // Fabric: loopbacks of the fabric node, the other gatewan and bgpctl through the leaf.
    reach(
        &lab,
        "gatewan01-sg1",
        &["10.1.255.2", "10.1.255.12", "10.1.255.21"],
    );
    reach(&lab, "bgpctl-par1", &["10.2.255.2", "10.2.255.11"]);
    lab.down().expect("down");
}

#[test]
fn three_dc_routes_over_asymmetric_transits() {
    if !common::root_or_skip("three_dc_routes_over_asymmetric_transits") {
        return;
    }
    let _ = lab::realize::down("t-3dc");
    let lab =
        Harness::up_named(common::fixture("topologies/three-dc.clab.yml"), "t-3dc").expect("up");
    // sg1 -> par1 over lumen (through the core) and cogent; sg1 -> iad1 over telia (v6 only).
    reach(
        &lab,
        "gatewan01-sg1",
        &[
            "198.51.100.17",
            "2001:db8:100:21::2",
            "203.0.113.17",
            "2001:db8:300:21::2",
        ],
    );
    // par1 -> iad1 over lumen only.
    reach(
        &lab,
        "gatewan02-par1",
        &["198.51.100.33", "2001:db8:100:31::2"],
    );
    // telia carries no IPv4.
    let out = lab
        .exec(
            "gatewan01-iad1",
            &["ip", "-4", "addr", "show", "dev", "eth3"],
        )
        .expect("exec");
    assert!(
        common::stdout(&out).lines().all(|l| !l.contains("inet ")),
        "telia has IPv4"
    );
    lab.down().expect("down");
}
