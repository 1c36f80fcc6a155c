//! A real Prometheus for a lab: run on the host (the Debian binary, `prometheus` from
//! PATH) by the lab's supervisor, scraping every node's `lab.prometheus.scrape` endpoint
//! through its published port (`crate::ports`), with the given rule files loaded. Its
//! configuration, database and log live in the lab's directory, so `lab down` removes
//! them with everything else.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::ns;
use crate::topology::Topology;

pub use crate::topology::PrometheusSettings as Settings;

/// One scrape target: a node's published metrics port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub job: String,
    /// `127.0.0.1:HOST_PORT`.
    pub address: String,
    /// Target labels, `instance` included (the node's name unless the label sets one).
    pub labels: BTreeMap<String, String>,
}

/// Directory of the lab's Prometheus: `prometheus.yml` and `data/`.
pub fn dir(lab: &str) -> PathBuf {
    ns::lab_dir(lab).join("prometheus")
}

pub fn config_path(lab: &str) -> PathBuf {
    dir(lab).join("prometheus.yml")
}

pub fn data_path(lab: &str) -> PathBuf {
    dir(lab).join("data")
}

pub fn log_path(lab: &str) -> PathBuf {
    ns::log_path(lab, "prometheus")
}

/// Every node's metrics endpoint, by node name.
pub fn targets(topo: &Topology) -> Vec<Target> {
    topo.nodes
        .values()
        .filter_map(|n| {
            let s = n.scrape.as_ref()?;
            // The parser made sure the port is published.
            let host = n.ports.iter().find(|p| p.node == s.port)?.host;
            let mut labels = s.labels.clone();
            let job = labels.remove("job").unwrap_or_else(|| "lab".to_string());
            labels
                .entry("instance".to_string())
                .or_insert_with(|| n.name.clone());
            Some(Target {
                job,
                address: format!("127.0.0.1:{host}"),
                labels,
            })
        })
        .collect()
}

/// A YAML string (JSON's quoting is valid YAML and escapes everything that needs it).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// `prometheus.yml` for the lab: one job per `job` label, every target with its labels.
pub fn config(topo: &Topology, settings: &Settings) -> String {
    let secs = settings.interval.as_secs_f64();
    let interval = format!("{}ms", settings.interval.as_millis().max(1));
    // Prometheus refuses a scrape timeout longer than the interval (its default is 10 s).
    let timeout = format!(
        "{}ms",
        settings
            .interval
            .min(Duration::from_secs(10))
            .as_millis()
            .max(1)
    );
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Written by lab for lab {}: every node's lab.prometheus.scrape endpoint through its\n\
         # published port, every {secs} s (scrape and rule evaluation).",
        topo.name
    );
    let _ = writeln!(
        y,
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {timeout}\n  evaluation_interval: {interval}\n  external_labels:\n    lab: {}",
        quoted(&topo.name)
    );
    if !settings.rules.is_empty() {
        y.push_str("rule_files:\n");
        for r in &settings.rules {
            let _ = writeln!(y, "  - {}", quoted(&r.to_string_lossy()));
        }
    }
    y.push_str("scrape_configs:\n");
    let mut jobs: BTreeMap<String, Vec<Target>> = BTreeMap::new();
    for t in targets(topo) {
        jobs.entry(t.job.clone()).or_default().push(t);
    }
    if jobs.is_empty() {
        // Prometheus needs a list; an empty one scrapes nothing.
        y.push_str("  []\n");
    }
    for (job, targets) in jobs {
        let _ = writeln!(y, "  - job_name: {}\n    static_configs:", quoted(&job));
        for t in targets {
            let _ = writeln!(
                y,
                "      - targets: [{}]\n        labels:",
                quoted(&t.address)
            );
            for (k, v) in &t.labels {
                let _ = writeln!(y, "          {k}: {}", quoted(v));
            }
        }
    }
    y
}

/// Writes the configuration and creates the database directory.
pub fn prepare(topo: &Topology, settings: &Settings) -> Result<()> {
    std::fs::create_dir_all(data_path(&topo.name))?;
    let p = config_path(&topo.name);
    std::fs::write(&p, config(topo, settings)).with_context(|| format!("write {}", p.display()))
}

/// The command line of the lab's Prometheus. `--storage.tsdb.path` names the lab's own
/// directory, which is how [`stop_strays`] recognizes it.
pub fn args(lab: &str, settings: &Settings) -> Vec<String> {
    vec![
        format!("--config.file={}", config_path(lab).display()),
        format!("--storage.tsdb.path={}", data_path(lab).display()),
        format!("--web.listen-address={}", settings.listen),
        // A lab lives for minutes; its database is on the lab's tmpfs-backed /run.
        "--storage.tsdb.retention.time=1d".to_string(),
    ]
}

pub fn command(lab: &str, settings: &Settings) -> Command {
    let mut c = Command::new("prometheus");
    c.args(args(lab, settings));
    c
}

/// PIDs of Prometheus processes of this lab, found by their database path: one whose
/// supervisor was killed (kill -9 of `lab __supervise`, a test process killed) is not in
/// any of the lab's namespaces, so `lab down` would not find it otherwise.
fn pids(lab: &str) -> Vec<i32> {
    let marker = format!("--storage.tsdb.path={}", data_path(lab).display());
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == marker.as_bytes()))
        })
        .collect()
}

/// Stops any Prometheus of this lab left running (SIGTERM, SIGKILL after 2 s).
pub fn stop_strays(lab: &str) {
    ns::terminate(|| pids(lab), Duration::from_secs(2));
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPO: &str = r#"
name: prom
topology:
  nodes:
    gw1:
      kind: linux
      ports: ["19111:9469"]
      labels:
        lab.prometheus.scrape: "9469 job=gatewan local_datacenter=sg1"
    bg1:
      kind: linux
      ports: ["19121:9101/tcp", "18000:80"]
      labels:
        lab.prometheus.scrape: "9101 job=bgpctl local_datacenter=sg1 instance=bgpctl-one"
    plain:
      kind: linux
      ports: ["18001:80"]
"#;

    fn topo() -> Topology {
        Topology::parse(TOPO, std::path::Path::new("/nonexistent/prom.clab.yml")).expect("parse")
    }

    #[test]
    fn targets_are_the_scraped_nodes_through_their_host_ports() {
        let t = targets(&topo());
        assert_eq!(t.len(), 2, "{t:?}");
        let bg = &t[0];
        assert_eq!(
            (bg.job.as_str(), bg.address.as_str()),
            ("bgpctl", "127.0.0.1:19121")
        );
        assert_eq!(bg.labels["instance"], "bgpctl-one");
        assert!(!bg.labels.contains_key("job"));
        let gw = &t[1];
        assert_eq!(
            (gw.job.as_str(), gw.address.as_str()),
            ("gatewan", "127.0.0.1:19111")
        );
        assert_eq!(gw.labels["instance"], "gw1");
        assert_eq!(gw.labels["local_datacenter"], "sg1");
    }

    #[test]
    fn config_has_a_job_per_role_the_interval_and_the_rules() {
        let s = Settings {
            listen: "127.0.0.1:19090".parse().unwrap(),
            interval: Duration::from_secs(2),
            rules: vec![PathBuf::from("/x/alerts.yml")],
        };
        let y = config(&topo(), &s);
        assert!(y.contains("scrape_interval: 2000ms"), "{y}");
        assert!(y.contains("scrape_timeout: 2000ms"), "{y}");
        assert!(y.contains("evaluation_interval: 2000ms"), "{y}");
        assert!(y.contains("rule_files:\n  - \"/x/alerts.yml\""), "{y}");
        assert!(y.contains("- job_name: \"bgpctl\""), "{y}");
        assert!(y.contains("- job_name: \"gatewan\""), "{y}");
        assert!(y.contains("targets: [\"127.0.0.1:19111\"]"), "{y}");
        assert!(y.contains("instance: \"gw1\""), "{y}");
        assert!(
            !y.contains("18001"),
            "an unscraped port is not a target: {y}"
        );
        let long = Settings {
            interval: Duration::from_secs(30),
            ..s
        };
        assert!(config(&topo(), &long).contains("scrape_timeout: 10000ms"));
    }

    #[test]
    fn published_ports_and_scrape_labels_are_checked() {
        let bad = |node: &str| {
            let text = format!("name: x\ntopology:\n  nodes:\n{node}");
            Topology::parse(&text, std::path::Path::new("/x.clab.yml"))
                .expect_err(node)
                .to_string()
        };
        let e = bad("    a:\n      kind: linux\n      ports: [\"1:2/udp\"]\n");
        assert!(e.contains("TCP ports only") && e.contains(":6:"), "{e}");
        let e = bad("    a:\n      kind: linux\n      ports: [\"127.0.0.1:1:2\"]\n");
        assert!(e.contains("127.0.0.1 only"), "{e}");
        let e = bad("    a:\n      kind: linux\n      ports: [\"0:2\"]\n");
        assert!(e.contains("1 to 65535"), "{e}");
        let e = bad(
            "    a:\n      kind: linux\n      ports: [\"9000:1\"]\n    b:\n      kind: linux\n      ports: [\"9000:1\"]\n",
        );
        assert!(e.contains("already published by node `a`"), "{e}");
        let e = bad(
            "    a:\n      kind: linux\n      labels:\n        lab.prometheus.scrape: \"9469\"\n",
        );
        assert!(e.contains("not published"), "{e}");
        let e = bad(
            "    a:\n      kind: linux\n      ports: [\"9000:9469\"]\n      labels:\n        lab.prometheus.scrape: \"9469 __address__=x\"\n",
        );
        assert!(e.contains("not a Prometheus label name"), "{e}");
    }
}
