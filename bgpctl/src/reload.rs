//! What a SIGHUP may change in a running bgpctl (ADR 0045): the controller's policy
//! (weights, required capacities, health thresholds, hold-downs, tunnel counts) and the
//! import policy (route targets, prefixes). Pure: the running and the new settings in, a
//! verdict out; `gatewan_kit::reload` does the rest.

use gatewan_kit::reload::Verdict;

use crate::bgp::{ImportPrefixes, RouteTarget};
use crate::config::BgpctlSettings;
use crate::controller::Policy;

/// What a reload applies: each part only when it changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Reload {
    pub policy: Option<Policy>,
    /// Route targets and prefixes: every session asks its peer for its routes again.
    pub import: Option<(Vec<RouteTarget>, ImportPrefixes)>,
}

/// What changed of the policies; the fields that need a restart if anything else did.
pub fn decide(running: &BgpctlSettings, new: &BgpctlSettings) -> Verdict<Reload> {
    let s = &new.speaker;
    let r = &running.speaker;
    // Each with the config keys it comes from, as the operator wrote them.
    let fixed: [(&'static str, bool); 14] = [
        ("name", running.name != new.name),
        ("datacenter", running.datacenter != new.datacenter),
        ("state_dir", running.state_dir != new.state_dir),
        ("mesh", running.mesh != new.mesh),
        ("bgp.asn", r.asn != s.asn),
        ("bgp.router_id", r.router_id != s.router_id),
        ("bgp.listen", r.listen != s.listen),
        ("bgp.peers", r.peers != s.peers),
        (
            "bgp.graceful_restart",
            r.graceful_restart != s.graceful_restart,
        ),
        ("evpn.vni", running.vni != new.vni),
        (
            "evpn.route_targets.export",
            running.export_route_targets != new.export_route_targets,
        ),
        (
            "evpn.link_bandwidth",
            running.link_bandwidth != new.link_bandwidth,
        ),
        ("api", running.api != new.api),
        (
            "metrics.listen, log",
            running.metrics_listen != new.metrics_listen
                || running.log_format != new.log_format
                || running.log_level != new.log_level,
        ),
    ];
    if let Some(restart) = Verdict::restart_for(&fixed) {
        return restart;
    }
    let mut fields = Vec::new();
    let policy = (running.policy != new.policy).then(|| {
        fields.push("controller");
        new.policy.clone()
    });
    let import = (r.import_route_targets != s.import_route_targets
        || r.import_prefixes != s.import_prefixes)
        .then(|| {
            fields.push("evpn.route_targets.import, evpn.import_prefixes, evpn.min_prefix_length");
            (s.import_route_targets.clone(), s.import_prefixes.clone())
        });
    if fields.is_empty() {
        return Verdict::Unchanged;
    }
    Verdict::Apply {
        change: Reload { policy, import },
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BgpctlConfig;

    const BASE: &str = r#"
name: bgpctl-sg1
datacenter: sg1
state_dir: /tmp/bgpctl-reload-test
mesh:
  bind: "10.1.255.21:7946"
  seeds: ["10.1.255.11:7946"]
  keyring: /tmp/keyring
bgp:
  asn: 65001
  router_id: 10.1.255.21
  peers:
    - address: 10.1.255.2
      asn: 65001
evpn:
  vni: 10100
  route_targets:
    import: ["65001:100"]
    export: ["65001:100"]
controller:
  required_capacity:
    default: 1500Mbps
  hold_down: 10s
"#;

    fn settings(text: &str) -> BgpctlSettings {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bgpctl.yaml");
        std::fs::write(&p, text).unwrap();
        BgpctlConfig::load(&p).unwrap()
    }

    #[test]
    fn the_same_file_again_changes_nothing() {
        assert_eq!(decide(&settings(BASE), &settings(BASE)), Verdict::Unchanged);
    }

    #[test]
    fn required_capacity_weights_and_hold_down_are_applied() {
        let new = BASE.replace("default: 1500Mbps", "default: 3Gbps").replace(
            "hold_down: 10s",
            "hold_down: 30s\n  weights:\n    latency: 2",
        );
        let Verdict::Apply { change, fields } = decide(&settings(BASE), &settings(&new)) else {
            panic!("a policy change is applied");
        };
        assert_eq!(change.policy, Some(settings(&new).policy));
        assert_ne!(change.policy, Some(settings(BASE).policy));
        assert_eq!(change.import, None);
        assert_eq!(fields, ["controller"]);
    }

    #[test]
    fn new_import_route_targets_are_applied_alone() {
        let new = settings(&BASE.replace("import: [\"65001:100\"]", "import: [\"65001:200\"]"));
        let Verdict::Apply { change, fields } = decide(&settings(BASE), &new) else {
            panic!("an import change is applied");
        };
        assert_eq!(change.policy, None);
        assert_eq!(
            change.import,
            Some((
                new.speaker.import_route_targets.clone(),
                new.speaker.import_prefixes.clone()
            ))
        );
        assert_eq!(
            fields,
            ["evpn.route_targets.import, evpn.import_prefixes, evpn.min_prefix_length"]
        );
    }

    #[test]
    fn a_new_peer_is_refused_and_named_and_nothing_else_applies() {
        let new = BASE
            .replace(
                "      asn: 65001\nevpn",
                "      asn: 65001\n    - address: 10.1.255.3\n      asn: 65001\nevpn",
            )
            .replace("import: [\"65001:100\"]", "import: [\"65001:200\"]")
            .replace("default: 1500Mbps", "default: 3Gbps");
        assert_eq!(
            decide(&settings(BASE), &settings(&new)),
            Verdict::Restart(vec!["bgp.peers"]),
            "all or nothing: neither the capacity nor the import is applied"
        );
    }
}
