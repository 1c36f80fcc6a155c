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
    // gatewan01-sg1 -> gatewan02-par1 on lumen and cogent, v4 and v6.
    reach(
        &lab,
        "gatewan01-sg1",
        &[
            "198.51.100.19",
            "2001:db8:100:22::2",
            "203.0.113.19",
            "2001:db8:200:22::2",
        ],
    );
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
