//! lab: runs containerlab topology files (`*.clab.yml`) on one Linux host with network
//! and mount namespaces, with a userspace WAN emulator on transit links and a harness for
//! tests. See docs/lab.md for the supported subset and the `lab.*` label extensions.

pub mod bench;
mod echo;
pub mod graph;
pub mod harness;
pub mod leaf;
pub mod ns;
pub mod ports;
pub mod prometheus;
pub mod realize;
pub mod supervisor;
pub mod topology;
pub mod wan;

use anyhow::{Result, anyhow, bail};

pub use harness::{Harness, RunningLab};
pub use topology::{Topology, TopologyError};

/// Sends impairment settings to the WAN emulator node named by `link` (`NODE` or
/// `NODE:PORT`) of a running lab; returns the emulator's reply.
pub fn impair(topo: &Topology, link: &str, settings: &[&str]) -> Result<String> {
    let (node, port) = match link.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (link, None),
    };
    let n = topo
        .nodes
        .get(node)
        .ok_or_else(|| anyhow!("no node `{node}` in lab {}", topo.name))?;
    let topology::NodeRole::WanEmulator { ports, .. } = &n.role else {
        bail!("node `{node}` is not a WAN emulator (label `lab.kind: wan-emulator`)");
    };
    if let Some(p) = port
        && !ports.iter().any(|x| x == p)
    {
        bail!(
            "WAN emulator `{node}` has no port `{p}` (ports: {})",
            ports.join(", ")
        );
    }
    // Validate locally first so that typos are reported as usage errors.
    wan::Impairment::default()
        .apply_unchecked(settings)
        .map_err(|e| anyhow!(e))?;
    let netns = ns::netns_path(&topo.name, node);
    if settings.is_empty() {
        return ns::in_netns(&netns, || wan::control("get"));
    }
    let cmd = format!("set {} {}", port.unwrap_or("*"), settings.join(" "));
    let reply = ns::in_netns(&netns, move || {
        wan::control(&cmd)?;
        wan::control("json")
    })?;
    let params: [wan::Impairment; 2] = serde_json::from_str(reply.trim())?;
    realize::set_wan_gso(topo, node, ports, &params)?;
    Ok("ok\n".into())
}
