//! Benchmarks behind `lab bench`: lab bring-up/teardown time, and WAN emulator TCP
//! throughput compared with a plain veth path measured in the same run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::realize::{self, SupervisorMode};
use crate::supervisor::node_command;
use crate::topology::Topology;

/// One bring-up/teardown measurement.
pub struct UpDown {
    pub up: Duration,
    pub down: Duration,
}

/// Brings `path` up and down `iterations` times under the lab name `bench-ud`.
pub fn up_down(path: &Path, exe: &Path, iterations: usize) -> Result<Vec<UpDown>> {
    let mut topo = Topology::load(path)?;
    topo.name = "bench-ud".into();
    realize::down(&topo.name)?;
    let mut v = Vec::new();
    for _ in 0..iterations {
        let t0 = Instant::now();
        let r = realize::up(&topo, SupervisorMode::Detached(exe.to_path_buf()));
        let up = t0.elapsed();
        let t1 = Instant::now();
        let d = realize::down(&topo.name);
        let down = t1.elapsed();
        r?;
        d?;
        v.push(UpDown { up, down });
    }
    Ok(v)
}

/// TCP throughput in bit/s from `client` to `server_addr` (iperf3 server on `server`).
pub fn iperf(
    topo: &Topology,
    server: &str,
    client: &str,
    server_addr: &str,
    secs: u32,
    extra: &str,
) -> Result<f64> {
    let node = |n: &str| topo.nodes.get(n).ok_or_else(|| anyhow!("no node {n}"));
    let mut srv = node_command(&topo.name, node(server)?, "exec iperf3 -s -1 2>&1")?
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("start iperf3 server (is iperf3 installed?)")?;
    let t0 = Instant::now();
    let result = loop {
        let out = node_command(
            &topo.name,
            node(client)?,
            &format!("iperf3 -c {server_addr} -t {secs} -J {extra}"),
        )?
        .stdin(Stdio::null())
        .output()?;
        let parsed: Result<f64> = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .map_err(anyhow::Error::from)
            .and_then(|j| {
                j["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .ok_or_else(|| {
                        anyhow!("iperf3: {}", j["error"].as_str().unwrap_or("no result"))
                    })
            });
        // The server may not listen yet on the first attempts (slow on a busy host).
        if parsed.is_ok() || t0.elapsed() > Duration::from_secs(10) {
            break parsed;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = srv.kill();
    let _ = srv.wait();
    result
}

/// The topology used by [`wan`]: a-[wan]-b through the emulator, c-d over a plain veth.
pub fn wan_topology(name: &str) -> Result<Topology> {
    let text = format!(
        r#"name: {name}
topology:
  nodes:
    a: {{kind: linux, labels: {{lab.addr.eth1: 10.99.0.1/24}}}}
    b: {{kind: linux, labels: {{lab.addr.eth1: 10.99.0.2/24}}}}
    w: {{kind: linux, labels: {{lab.kind: wan-emulator}}}}
    c: {{kind: linux, labels: {{lab.addr.eth1: 10.99.1.1/24}}}}
    d: {{kind: linux, labels: {{lab.addr.eth1: 10.99.1.2/24}}}}
  links:
    - endpoints: ["a:eth1", "w:eth1"]
    - endpoints: ["w:eth2", "b:eth1"]
    - endpoints: ["c:eth1", "d:eth1"]
"#
    );
    Ok(Topology::parse(&text, &PathBuf::from("<bench>"))?)
}

/// (plain veth bit/s, through-emulator bit/s).
pub fn wan(exe: &Path, secs: u32) -> Result<(f64, f64)> {
    let topo = wan_topology("bench-wan")?;
    realize::down(&topo.name)?;
    let r = (|| -> Result<(f64, f64)> {
        realize::up(&topo, SupervisorMode::Detached(exe.to_path_buf()))?;
        let plain = iperf(&topo, "d", "c", "10.99.1.2", secs, "")?;
        let emu = iperf(&topo, "b", "a", "10.99.0.2", secs, "")?;
        Ok((plain, emu))
    })();
    let d = realize::down(&topo.name);
    let v = r?;
    d?;
    Ok(v)
}
