//! What a SIGHUP may change in a running gatewan (ADR 0045): the tunnels' state
//! thresholds (`probe.degraded`, `probe.down`). Pure: the settings as read from the file
//! at start (before what the host completes, `fabric.vtep` from an interface) and as read
//! now, in; a verdict out. `gatewan_kit::reload` does the rest.

use gatewan_kit::reload::Verdict;

use crate::config::GatewanSettings;
use crate::probe::stats::Thresholds;

/// The new thresholds if only they changed; the fields that need a restart if anything
/// else did.
pub fn decide(running: &GatewanSettings, new: &GatewanSettings) -> Verdict<Thresholds> {
    let (r, n) = (running, new);
    // The tunnels section without its thresholds, which a reload may change.
    let tunnels_fixed = match (&r.tunnels, &n.tunnels) {
        (Some(a), Some(b)) => {
            let mut b = b.clone();
            b.thresholds = a.thresholds;
            *a != b
        }
        (a, b) => a.is_some() != b.is_some(),
    };
    let fixed: [(&'static str, bool); 11] = [
        ("name", r.name != n.name),
        ("datacenter", r.datacenter != n.datacenter),
        ("state_dir", r.state_dir != n.state_dir),
        ("mesh", r.mesh != n.mesh),
        ("transits", r.transits != n.transits),
        (
            "tunnels (other than probe.degraded and probe.down), probe.interval, probe.count, probe.window, probe.timeout",
            tunnels_fixed,
        ),
        (
            "fabric",
            r.vtep != n.vtep || r.vtep_from_interface != n.vtep_from_interface,
        ),
        ("fabric (data plane)", r.dataplane != n.dataplane),
        ("api", r.api != n.api),
        ("metrics.listen", r.metrics_listen != n.metrics_listen),
        (
            "log",
            r.log_format != n.log_format || r.log_level != n.log_level,
        ),
    ];
    if let Some(restart) = Verdict::restart_for(&fixed) {
        return restart;
    }
    match (&r.tunnels, &n.tunnels) {
        (Some(a), Some(b)) if a.thresholds != b.thresholds => Verdict::Apply {
            change: b.thresholds,
            fields: vec!["probe.degraded", "probe.down"],
        },
        _ => Verdict::Unchanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewanConfig;

    const BASE: &str = r#"
name: gatewan01-sg1
datacenter: sg1
state_dir: /tmp/gatewan-reload-test
mesh:
  seeds: ["198.51.100.17:7946"]
  keyring: /tmp/keyring
transits:
  - name: lumen
    interface: eth2
    addresses: [198.51.100.1]
    gateway: [198.51.100.0]
    capacity: 1Gbps
tunnels:
  pairing: same-transit
probe:
  interval: 1s
  degraded:
    loss: 5%
"#;

    fn settings(text: &str) -> GatewanSettings {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gatewan.yaml");
        std::fs::write(&p, text).unwrap();
        let mut s = GatewanConfig::load(&p).unwrap();
        // Where the file was read from is no setting.
        s.config_file = "gatewan.yaml".into();
        s
    }

    #[test]
    fn the_same_file_again_changes_nothing() {
        assert_eq!(decide(&settings(BASE), &settings(BASE)), Verdict::Unchanged);
    }

    #[test]
    fn new_degraded_thresholds_are_applied() {
        let new = settings(&BASE.replace("loss: 5%", "loss: 20%"));
        let Verdict::Apply { change, fields } = decide(&settings(BASE), &new) else {
            panic!("a threshold change is applied");
        };
        assert_eq!(change, new.tunnels.as_ref().unwrap().thresholds);
        assert!((change.degraded_loss - 0.2).abs() < 1e-9, "{change:?}");
        assert_eq!(fields, ["probe.degraded", "probe.down"]);
    }

    #[test]
    fn a_new_capacity_or_probe_interval_is_refused_and_named() {
        let new = BASE
            .replace("capacity: 1Gbps", "capacity: 2Gbps")
            .replace("interval: 1s", "interval: 500ms")
            .replace("loss: 5%", "loss: 20%");
        assert_eq!(
            decide(&settings(BASE), &settings(&new)),
            Verdict::Restart(vec![
                "transits",
                "tunnels (other than probe.degraded and probe.down), probe.interval, probe.count, probe.window, probe.timeout"
            ])
        );
    }
}
