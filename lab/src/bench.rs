//! Benchmarks behind `lab bench`: lab bring-up/teardown time, and WAN emulator TCP
//! throughput compared with a plain veth path measured in the same run.

use std::collections::{BTreeMap, BTreeSet};
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

/// One failover under a ping stream: packets sent and lost, and the outage they make.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    pub sent: u64,
    pub lost: u64,
    pub outage: Duration,
}

/// The probe settings of the operator guide's fast failover (docs/operators.md).
pub const FAST_PROBE: &str = "probe:\n  interval: 100ms\n  count: 5\n  timeout: 60ms\n  degraded: {latency: 50ms}\n  down: {consecutive: 3}\n";

/// Copies the topology's directory to a temporary one (removed when the returned
/// [`TempDir`] drops); returns the copied topology file. A lab brought up from the copy
/// sees its files through its binds, so its configs can be changed while it runs.
pub fn copy_topology(file: &Path) -> Result<(TempDir, PathBuf)> {
    let src = file
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", file.display()))?;
    let dir = TempDir::new()?;
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dir.path())
        .status()?;
    if !status.success() {
        return Err(anyhow!("cp -a {} failed", src.display()));
    }
    let name = file.file_name().ok_or_else(|| anyhow!("no file name"))?;
    let copied = dir.path().join(name);
    Ok((dir, copied))
}

/// A copy of the topology's directory whose gatewans have the fast probe settings.
fn with_fast_probes(file: &Path) -> Result<(TempDir, PathBuf)> {
    let (dir, copied) = copy_topology(file)?;
    use_fast_probes(&copied)?;
    Ok((dir, copied))
}

/// Replaces the `probe:` section of every `gatewan*.yaml` beside the topology `file` (in
/// its `NAME/` directory) with [`FAST_PROBE`]; the gatewans take it when they restart.
pub fn use_fast_probes(file: &Path) -> Result<()> {
    let name = file.file_name().ok_or_else(|| anyhow!("no file name"))?;
    let stem = name
        .to_string_lossy()
        .trim_end_matches(".clab.yml")
        .to_string();
    let configs = file
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", file.display()))?
        .join(&stem);
    let mut changed = 0;
    for e in std::fs::read_dir(&configs).with_context(|| format!("read {}", configs.display()))? {
        let p = e?.path();
        let n = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !(n.starts_with("gatewan") && n.ends_with(".yaml")) {
            continue;
        }
        let text = std::fs::read_to_string(&p)?;
        // The section runs from `probe:` to the next top-level key.
        let mut out = String::new();
        let mut skipping = false;
        for line in text.lines() {
            if line.starts_with("probe:") {
                skipping = true;
                out.push_str(FAST_PROBE);
                continue;
            }
            if skipping && (line.starts_with(' ') || line.is_empty()) {
                continue;
            }
            skipping = false;
            out.push_str(line);
            out.push('\n');
        }
        if !out.contains(FAST_PROBE) {
            out.push_str(FAST_PROBE);
        }
        std::fs::write(&p, out)?;
        changed += 1;
    }
    if changed == 0 {
        return Err(anyhow!("no gatewan*.yaml in {}", configs.display()));
    }
    Ok(())
}

pub use tempfile_dir::TempDir;

/// A temporary directory removed on drop (the lab crate has no tempfile dependency outside
/// its tests).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> std::io::Result<TempDir> {
            let base = std::env::temp_dir();
            for i in 0..1000u32 {
                let p = base.join(format!("lab-bench-{}-{i}", std::process::id()));
                if std::fs::create_dir(&p).is_ok() {
                    // Nodes read the bound directory as user frr too (FRR leaves).
                    let _ = std::fs::set_permissions(
                        &p,
                        std::os::unix::fs::PermissionsExt::from_mode(0o755),
                    );
                    return Ok(TempDir(p));
                }
            }
            Err(std::io::Error::other("no free temporary directory name"))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// (sent, received, milliseconds) from the summary line of `ping`'s output.
pub fn ping_summary(text: &str) -> Option<(u64, u64, u64)> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    let num = |word: &str| {
        line.split(',')
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    let ms = line
        .split("time ")
        .nth(1)?
        .trim_end_matches("ms")
        .trim()
        .parse()
        .ok()?;
    Some((num("transmitted")?, num("received")?, ms))
}

/// Tunnels of `node` in `state`, from `routingctl -o json tunnels` in the node.
fn tunnels_in(lab: &crate::RunningLab, node: &str, transit: &str, state: &str) -> usize {
    let Ok(out) = lab.exec(node, &["routingctl", "-o", "json", "tunnels"]) else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["meta"]["local_transit"] == transit && t["state"] == state)
        .count()
}

/// Bytes sent by each WireGuard interface of `nodes`.
pub fn wg_sent(lab: &crate::RunningLab, nodes: &[&str]) -> Vec<(String, u64)> {
    nodes
        .iter()
        .flat_map(|node| {
            let text = lab
                .exec(node, &["wg", "show", "all", "transfer"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            text.lines()
                .filter_map(|l| {
                    let c: Vec<&str> = l.split_whitespace().collect();
                    Some((c.first()?.to_string(), c.get(3)?.parse().ok()?))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The tunnel of `nodes` whose sent bytes grew most since `before` (from [`wg_sent`]),
/// with its local transit: the one carrying a stream started in between.
pub fn busiest_tunnel(
    lab: &crate::RunningLab,
    nodes: &[&str],
    before: &[(String, u64)],
) -> Option<(String, String)> {
    let (_, iface) = wg_sent(lab, nodes)
        .into_iter()
        .map(|(i, n)| {
            let b = before.iter().find(|(j, _)| *j == i).map_or(0, |x| x.1);
            (n.saturating_sub(b), i)
        })
        .max()?;
    let transit = nodes.iter().find_map(|g| {
        let out = lab.exec(g, &["routingctl", "-o", "json", "tunnels"]).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?
            .iter()
            .find(|t| t["interface"] == iface.as_str())
            .and_then(|t| t["meta"]["local_transit"].as_str().map(str::to_string))
    })?;
    Some((iface, transit))
}

/// `runs` failovers in the two-dc lab (gatewan, bgpctl and routingctl from PATH): a ping
/// stream host-sg1 → host-par1 every 5 ms; the transit whose tunnel carries it (found by
/// the WireGuard counters) fails (100 % loss at its WAN emulator) 2 s in; the packets lost
/// make the outage. Then the transit comes back and its tunnels come up before the next
/// run; a run whose stream did not cross the failed transit is redone. `fast`: the
/// gatewans run with [`FAST_PROBE`].
pub fn failover(file: &Path, fast: bool, runs: usize) -> Result<Vec<Failover>> {
    let (_dir, file) = if fast {
        let (d, f) = with_fast_probes(file)?;
        (Some(d), f)
    } else {
        (None, file.to_path_buf())
    };
    let mut topo = Topology::load(&file)?;
    topo.name = "bench-fo".into();
    let lab = crate::Harness::up_topology(topo)?;
    let gatewans = [
        "gatewan01-sg1",
        "gatewan02-sg1",
        "gatewan01-par1",
        "gatewan02-par1",
    ];
    let ready = |lab: &crate::RunningLab, secs: u64| {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            let up = gatewans.iter().all(|g| {
                tunnels_in(lab, g, "lumen", "Established") == 2
                    && tunnels_in(lab, g, "cogent", "Established") == 2
            });
            let ping = lab
                .exec("host-sg1", &["ping", "-c", "1", "-W", "1", "172.16.2.10"])
                .is_ok_and(|o| o.status.success());
            if up && ping {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        false
    };
    if !ready(&lab, 120) {
        return Err(anyhow!(
            "the lab did not come up: tunnels or tenant traffic missing"
        ));
    }
    let mut out = Vec::new();
    // A run whose stream did not cross the failed transit (the routes moved between the
    // look at the counters and the failure) measures nothing: it is redone, up to as many
    // times again as there are runs.
    for run in 0..runs * 2 {
        if out.len() == runs {
            break;
        }
        let sg1 = ["gatewan01-sg1", "gatewan02-sg1"];
        let before = wg_sent(&lab, &sg1);
        let stream = lab
            .command(
                "host-sg1",
                &[
                    "ping",
                    "-q",
                    "-i",
                    "0.005",
                    "-W",
                    "1",
                    // A count, not a deadline: at a deadline ping counts the requests
                    // still in flight as lost.
                    "-c",
                    "1200",
                    "172.16.2.10",
                ],
            )?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_secs(2));
        // The stream's tunnel: the one whose counter grew most in these 2 s.
        let transit = busiest_tunnel(&lab, &sg1, &before).map_or_else(|| "lumen".into(), |t| t.1);
        let emulator = format!("wan-{transit}");
        lab.impair(&emulator, &["loss=100%"])?;
        let done = stream.wait_with_output()?;
        lab.impair(&emulator, &["loss=0%"])?;
        let (sent, received, ms) = ping_summary(&String::from_utf8_lossy(&done.stdout))
            .ok_or_else(|| anyhow!("no ping summary"))?;
        let lost = sent.saturating_sub(received);
        let outage = Duration::from_millis(lost * ms / sent.max(1));
        if lost == 0 {
            // Detection takes at least one probe timeout: at 200 packets/s a stream that
            // crossed the failed transit loses some.
            println!(
                "run {}: {transit} failed, 0 of {sent} lost: the stream did not cross it, not counted",
                run + 1
            );
        } else {
            println!(
                "run {}: {transit} failed, {lost} of {sent} lost: outage {} ms",
                run + 1,
                outage.as_millis()
            );
            out.push(Failover { sent, lost, outage });
        }
        if !ready(&lab, 60) {
            return Err(anyhow!(
                "the tunnels did not come back after run {}",
                run + 1
            ));
        }
        // Past the probes' recovery hysteresis and the controller's reaction.
        std::thread::sleep(Duration::from_secs(3));
    }
    lab.down()?;
    Ok(out)
}

/// One whole-path flow and the bare flow measured right after it.
#[derive(Debug, Clone)]
pub struct DataplaneRun {
    /// TCP bit/s host-sg1 → host-par1 through leaves, gatewans and tunnels.
    pub full_bps: f64,
    /// TCP bit/s through the bare wireguard-go tunnel gatewan01-sg1 → gatewan01-par1.
    pub bare_bps: f64,
    /// The sg1 gatewan and tunnel that sent the most bytes of the whole-path flow.
    pub data_tunnel: String,
    /// The sg1 gatewan and tunnel that received the most packets meanwhile: the ACKs,
    /// through the tunnel that par1's leaf hashed them to.
    pub ack_tunnel: String,
}

impl DataplaneRun {
    pub fn ratio(&self) -> f64 {
        self.full_bps / self.bare_bps
    }

    /// Data and ACKs crossed one tunnel, as in the bare tunnel.
    pub fn symmetric(&self) -> bool {
        self.data_tunnel == self.ack_tunnel
    }
}

/// What [`dataplane`] measures, in the order measured. The whole-path and bare flows
/// alternate, so that a slow spell of a shared machine falls on both.
#[derive(Debug, Clone)]
pub struct DataplaneFigures {
    /// Over lumen's tunnels as the controllers choose them (two, for the capacity two-dc
    /// asks): each leaf hashes a flow onto one of them, so the ACKs may come back through
    /// another tunnel, that is, two more wireguard-go processes on other gatewans.
    pub chosen: Vec<DataplaneRun>,
    /// Through one tunnel both ways: lumen is drained on the other gatewans, which leaves
    /// gatewan01-sg1 ↔ gatewan01-par1 over lumen, the bare tunnel's hosts and transit.
    pub one_tunnel: Vec<DataplaneRun>,
    /// Rounds of echo RTTs through the one tunnel (host-sg1 → host-par1) and through the
    /// bare tunnel, both paths in the same seconds (see [`RttRound`]).
    pub rtt_rounds: Vec<RttRound>,
}

/// ICMP echo RTTs, ms, timed in µs (ping(8) prints 0.1 ms steps above 10 ms): through the
/// whole path and through the bare tunnel, sent in the same seconds, each path at its own
/// random times. The WAN emulator's timers drift by more than the effect measured, and
/// both paths cross it: paired in time, the drift falls on both. Random rather than
/// lockstep times: echoes of the two paths sent at the same moments slow each other by
/// as much as the effect, by an amount that depends on their phase (ADR 0060).
#[derive(Debug, Clone, Default)]
pub struct RttRound {
    pub full: Vec<f64>,
    pub bare: Vec<f64>,
}

impl RttRound {
    /// Median RTT of the whole path and of the bare tunnel in this round.
    pub fn medians(&self) -> (f64, f64) {
        (
            median(self.full.iter().copied()),
            median(self.bare.iter().copied()),
        )
    }
}

impl DataplaneFigures {
    /// Median RTT of the whole path and of the bare tunnel over all echoes, and the
    /// median of the rounds' own differences of medians (the added RTT). Medians, as a
    /// wake-up of a busy 2-core machine's scheduler adds milliseconds to one echo of
    /// either path now and then, which a mean of 100 carries as tenths of a ms.
    pub fn rtts(&self) -> (f64, f64, f64) {
        self.rtts_by(|v| median(v.iter().copied()))
    }

    /// As [`Self::rtts`] with means, for the report.
    pub fn rtts_by_means(&self) -> (f64, f64, f64) {
        self.rtts_by(|v| v.iter().sum::<f64>() / v.len().max(1) as f64)
    }

    fn rtts_by(&self, stat: impl Fn(&[f64]) -> f64) -> (f64, f64, f64) {
        let r = &self.rtt_rounds;
        let all = |side: fn(&RttRound) -> &[f64]| -> Vec<f64> {
            r.iter().flat_map(|x| side(x).iter().copied()).collect()
        };
        (
            stat(&all(|x| &x.full)),
            stat(&all(|x| &x.bare)),
            median(r.iter().map(|x| stat(&x.full) - stat(&x.bare))),
        )
    }
}

/// Median bit/s of the whole path and of bare wireguard-go.
pub fn medians(runs: &[DataplaneRun]) -> (f64, f64) {
    (
        median(runs.iter().map(|r| r.full_bps)),
        median(runs.iter().map(|r| r.bare_bps)),
    )
}

/// Median of the runs' ratios (whole path / bare): each ratio compares two measurements
/// taken seconds apart.
pub fn median_ratio(runs: &[DataplaneRun]) -> f64 {
    median(runs.iter().map(DataplaneRun::ratio))
}

/// Median of `values` (the mean of the middle two for an even count; 0 for none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn exec_ok(lab: &crate::RunningLab, node: &str, shell: &str) -> Result<String> {
    let out = lab.exec(node, &["sh", "-c", shell])?;
    if !out.status.success() {
        return Err(anyhow!(
            "{node}: `{shell}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One [`RttRound`] of `count` echoes per path, one every 20 ms on average:
/// host-sg1 → host-par1 and gatewan01-sg1 → gatewan01-par1 through the bare tunnel, in
/// the same two seconds, each path at its own random times (ADR 0060).
fn rtt_round(lab: &crate::RunningLab, rng: &mut impl rand::Rng, count: u16) -> Result<RttRound> {
    let every = Duration::from_millis(20);
    let (full_gaps, bare_gaps) = (
        crate::echo::random_gaps(rng, count, every),
        crate::echo::random_gaps(rng, count, every),
    );
    let netns = |node: &str| crate::ns::netns_path(lab.name(), node);
    let (full, bare) = (netns("host-sg1"), netns("gatewan01-sg1"));
    let (full, bare) = std::thread::scope(|s| {
        let full = s.spawn(|| crate::echo::rtts(&full, [172, 16, 2, 10].into(), &full_gaps));
        let bare = s.spawn(|| crate::echo::rtts(&bare, [192, 168, 255, 2].into(), &bare_gaps));
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Vec<f64>>>| {
            h.join().map_err(|_| anyhow!("echo thread panicked"))?
        };
        (join(full), join(bare))
    });
    let (full, bare) = (full?, bare?);
    let lost = |v: &[f64]| usize::from(count) - v.len();
    if full.is_empty() || bare.is_empty() || lost(&full) * 10 > usize::from(count) {
        return Err(anyhow!(
            "echoes lost: {} of {count} through the whole path, {} through the bare tunnel",
            lost(&full),
            lost(&bare)
        ));
    }
    Ok(RttRound { full, bare })
}

/// TCP bit/s from `client` to `address` (iperf3 server on `server`), one flow.
fn iperf_once(
    lab: &crate::RunningLab,
    client: &str,
    server: &str,
    address: &str,
    secs: u32,
) -> Result<f64> {
    exec_ok(lab, server, "iperf3 -s -D -1")?;
    let t0 = Instant::now();
    loop {
        let out = lab.exec(
            client,
            &["iperf3", "-c", address, "-t", &secs.to_string(), "-J"],
        )?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(anyhow!("iperf3 {client} -> {address}: {}", v["error"]));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `(gatewan, tunnel interface)` → (tx bytes, rx packets) of every tunnel of `nodes`.
fn tunnel_counters(
    lab: &crate::RunningLab,
    nodes: &[&str],
) -> Result<BTreeMap<(String, String), (u64, u64)>> {
    let mut out = BTreeMap::new();
    for node in nodes {
        let text = exec_ok(
            lab,
            node,
            "for d in /sys/class/net/sdwan*; do [ -e \"$d\" ] && echo ${d##*/} $(cat $d/statistics/tx_bytes) $(cat $d/statistics/rx_packets); done; true",
        )?;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [iface, tx, rx] = f[..] {
                let (Ok(tx), Ok(rx)) = (tx.parse(), rx.parse()) else {
                    continue;
                };
                out.insert((node.to_string(), iface.to_string()), (tx, rx));
            }
        }
    }
    Ok(out)
}

/// The tunnels of sg1's gatewans that sent the most bytes and received the most packets
/// between `before` and `after`, as `gatewan/interface`.
fn busiest(
    before: &BTreeMap<(String, String), (u64, u64)>,
    after: &BTreeMap<(String, String), (u64, u64)>,
) -> (String, String) {
    let delta = |pick: fn(&(u64, u64)) -> u64| {
        after
            .iter()
            .max_by_key(|(k, v)| pick(v).saturating_sub(before.get(*k).map_or(0, pick)))
            .map_or_else(|| "none".to_string(), |((n, i), _)| format!("{n}/{i}"))
    };
    (delta(|c| c.0), delta(|c| c.1))
}

const SG1_GATEWANS: [&str; 2] = ["gatewan01-sg1", "gatewan02-sg1"];

/// `runs` alternating whole-path and bare flows of `secs` each.
fn alternate(lab: &crate::RunningLab, secs: u32, runs: usize) -> Result<Vec<DataplaneRun>> {
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let before = tunnel_counters(lab, &SG1_GATEWANS)?;
        let full_bps = iperf_once(lab, "host-sg1", "host-par1", "172.16.2.10", secs)?;
        let after = tunnel_counters(lab, &SG1_GATEWANS)?;
        let (data_tunnel, ack_tunnel) = busiest(&before, &after);
        let bare_bps = iperf_once(
            lab,
            "gatewan01-sg1",
            "gatewan01-par1",
            "192.168.255.2",
            secs,
        )?;
        out.push(DataplaneRun {
            full_bps,
            bare_bps,
            data_tunnel,
            ack_tunnel,
        });
    }
    Ok(out)
}

/// The tunnels `bgpctl` has chosen, as `gatewan/interface`.
fn chosen_tunnels(lab: &crate::RunningLab, bgpctl: &str) -> Result<BTreeSet<String>> {
    let out = exec_ok(
        lab,
        bgpctl,
        "routingctl --socket /run/bgpctl/bgpctl.sock -o json explain",
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| anyhow!("{bgpctl}: routingctl explain: {e}: {out}"))?;
    Ok(v["explanation"]["remotes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["candidates"].as_array().into_iter().flatten())
        .filter(|c| c["chosen"] == true)
        .map(|c| {
            format!(
                "{}/{}",
                c["gatewan"].as_str().unwrap_or("?"),
                c["interface"].as_str().unwrap_or("?")
            )
        })
        .collect())
}

/// The data plane against bare wireguard-go in the two-dc lab (binaries from PATH): TCP
/// throughput (one flow, `secs`, `runs` times alternating with the bare tunnel) through
/// the whole path host-sg1 → leaf → gatewan → tunnel → gatewan → leaf → host-par1, and
/// through two bare wireguard-go devices that the bench adds on gatewan01-sg1 and
/// gatewan01-par1 over lumen. Cogent fails for the run, so the path takes lumen tunnels
/// as the bare one does, and both see the same WAN emulator. First over the tunnels the
/// controllers choose, then through one tunnel both ways (see [`DataplaneFigures`]), where
/// ping RTTs are compared too.
pub fn dataplane(file: &Path, secs: u32, runs: usize) -> Result<DataplaneFigures> {
    let mut topo = Topology::load(file)?;
    topo.name = "bench-dp".into();
    let lab = crate::Harness::up_topology(topo)?;
    let t0 = Instant::now();
    let ready = loop {
        let ok = lab
            .exec("host-sg1", &["ping", "-c", "1", "-W", "1", "172.16.2.10"])
            .is_ok_and(|o| o.status.success());
        if ok || t0.elapsed() > Duration::from_secs(120) {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if !ready {
        return Err(anyhow!("no tenant traffic in the lab after 120 s"));
    }
    // Tenant traffic over lumen tunnels only, as the bare tunnel: cogent fails, and the
    // gatewans move the traffic at once (local repair).
    lab.impair("wan-cogent", &["loss=100%"])?;
    std::thread::sleep(Duration::from_secs(5));
    // The bare tunnel: wireguard-go on the gatewans' lumen addresses, its own keys and
    // port, 192.168.255.0/30 inside. IPv6 endpoints, as the lab's tunnels have: wireguard-go
    // sends over IPv6 with a route and source address lookup of its own per packet.
    let ends = [
        ("gatewan01-sg1", "192.168.255.1/30", "[2001:db8:100:11::2]"),
        ("gatewan01-par1", "192.168.255.2/30", "[2001:db8:100:21::2]"),
    ];
    let mut keys = Vec::new();
    for (node, _, _) in ends {
        keys.push(exec_ok(
            &lab,
            node,
            "umask 077; wg genkey > /tmp/bench.key; wg pubkey < /tmp/bench.key",
        )?);
    }
    for (i, (node, inner, _)) in ends.iter().enumerate() {
        let (_, _, peer_addr) = ends[1 - i];
        exec_ok(
            &lab,
            node,
            &format!(
                "wireguard-go wgbench >/dev/null 2>&1 && wg set wgbench listen-port 51999 private-key /tmp/bench.key peer {} allowed-ips 192.168.255.0/30 endpoint {peer_addr}:51999 && ip addr add {inner} dev wgbench && ip link set wgbench up",
                keys[1 - i]
            ),
        )?;
    }
    let chosen = alternate(&lab, secs, runs)?;

    // One tunnel both ways: lumen is drained on gatewan02-sg1 and gatewan02-par1, and the
    // controllers leave every tunnel with a drained end. Not by failing their lumen ports:
    // that cuts both gatewan02s off from the other datacenter (cogent has failed), and
    // the mesh then flaps under the partial partition, withdrawing routes mid-run.
    for node in ["gatewan02-sg1", "gatewan02-par1"] {
        exec_ok(&lab, node, "routingctl transits drain lumen")?;
    }
    let t0 = Instant::now();
    loop {
        let sg1 = chosen_tunnels(&lab, "bgpctl-sg1")?;
        let par1 = chosen_tunnels(&lab, "bgpctl-par1")?;
        let only = |set: &BTreeSet<String>, gatewan: &str| {
            set.len() == 1 && set.iter().all(|t| t.starts_with(gatewan))
        };
        if only(&sg1, "gatewan01-sg1/") && only(&par1, "gatewan01-par1/") {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            return Err(anyhow!(
                "60 s after lumen was drained on gatewan02-sg1 and gatewan02-par1, the controllers still choose {sg1:?} (sg1) and {par1:?} (par1)"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The routes follow the choice through both fabrics' BGP.
    std::thread::sleep(Duration::from_secs(3));
    let mut rtt_rounds = Vec::with_capacity(runs);
    let mut rng = rand::rng();
    for _ in 0..runs {
        rtt_rounds.push(rtt_round(&lab, &mut rng, 100)?);
    }
    let one_tunnel = alternate(&lab, secs, runs)?;
    lab.down()?;
    Ok(DataplaneFigures {
        chosen,
        one_tunnel,
        rtt_rounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }

    fn run(full_bps: f64, bare_bps: f64, data: &str, acks: &str) -> DataplaneRun {
        DataplaneRun {
            full_bps,
            bare_bps,
            data_tunnel: data.into(),
            ack_tunnel: acks.into(),
        }
    }

    #[test]
    fn the_median_ratio_pairs_each_run_with_its_own_bare_measurement() {
        let runs = [
            run(90.0, 100.0, "a", "a"),
            run(50.0, 200.0, "a", "a"),
            run(160.0, 200.0, "a", "a"),
        ];
        // Ratios 0.9, 0.25, 0.8: the median is 0.8, not median(full)/median(bare) = 0.45.
        assert_eq!(median_ratio(&runs), 0.8);
        assert_eq!(medians(&runs), (90.0, 200.0));
    }

    #[test]
    fn the_added_rtt_is_the_median_of_each_rounds_own_difference_of_medians() {
        let round = |base: f64, spike: f64| RttRound {
            full: vec![base + 0.02, base + 0.03, base + 0.04 + spike],
            bare: vec![base, base + 0.01, base + 0.02],
        };
        let f = DataplaneFigures {
            chosen: vec![],
            one_tunnel: vec![],
            // The emulator drifts by 0.3 ms between rounds, a wake-up adds 0.3 ms to one
            // echo of two rounds; the path adds 0.02 ms.
            rtt_rounds: vec![round(10.6, 0.0), round(10.9, 0.3), round(10.5, 0.3)],
        };
        let (full, bare, added) = f.rtts();
        assert!((full - 10.64).abs() < 1e-9, "{full}");
        assert!((bare - 10.61).abs() < 1e-9, "{bare}");
        assert!((added - 0.02).abs() < 1e-9, "{added}");
        let (_, _, by_means) = f.rtts_by_means();
        assert!(
            (by_means - 0.12).abs() < 1e-9,
            "spikes move means: {by_means}"
        );
    }

    #[test]
    fn the_busiest_tunnels_are_found_by_what_they_carried_during_the_flow_not_before() {
        let k = |n: &str, i: &str| (n.to_string(), i.to_string());
        let before = BTreeMap::from([
            (k("gw1", "sdwan1"), (1_000_000_000, 10)),
            (k("gw2", "sdwan2"), (0, 0)),
        ]);
        let after = BTreeMap::from([
            (k("gw1", "sdwan1"), (1_000_000_100, 900)),
            (k("gw2", "sdwan2"), (5_000_000, 20)),
        ]);
        assert_eq!(
            busiest(&before, &after),
            ("gw2/sdwan2".to_string(), "gw1/sdwan1".to_string())
        );
        assert!(!run(1.0, 1.0, "gw2/sdwan2", "gw1/sdwan1").symmetric());
    }
}
