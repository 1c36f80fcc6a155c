//! The `lab` command line: parses arguments and maps outcomes to exit codes
//! (0 success, 1 runtime error, 2 usage or topology error).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};

use lab::realize::{self, SupervisorMode};
use lab::{Topology, TopologyError, ns, supervisor, wan};

#[derive(Parser)]
#[command(
    name = "lab",
    version,
    about = "Run containerlab topology files with network namespaces on this host",
    long_about = "Run containerlab topology files (*.clab.yml) on this host: every node gets its own \
network and mount namespace, links become veth pairs, and nodes labelled \
`lab.kind: wan-emulator` forward frames in userspace with delay, jitter, loss, reordering, \
duplication and a rate limit. Needs root. See docs/lab.md.\n\n\
Exit codes: 0 success, 1 runtime error, 2 usage or topology error."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Dot,
    Svg,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (or repair) the lab described by FILE.
    Up {
        /// Topology file (*.clab.yml).
        file: PathBuf,
        /// Also run Prometheus (`prometheus` from PATH) on the host, listening on ADDR and
        /// scraping every node's `lab.prometheus.scrape` endpoint through its published
        /// port; its log is /run/lab/LAB/logs/prometheus.log. ADDR left out: 127.0.0.1:19090.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:19090")]
        prometheus: Option<std::net::SocketAddr>,
        /// A rule file for the lab's Prometheus (repeat for several), e.g.
        /// monitoring/prometheus/gatewan-alerts.yml.
        #[arg(
            long = "prometheus-rules",
            value_name = "FILE",
            requires = "prometheus"
        )]
        prometheus_rules: Vec<PathBuf>,
        /// Scrape and rule evaluation interval of the lab's Prometheus.
        #[arg(long = "prometheus-interval", value_name = "DURATION", default_value = "2s",
              value_parser = parse_duration, requires = "prometheus")]
        prometheus_interval: std::time::Duration,
    },
    /// Remove everything the lab created, even after an interrupted `up`.
    Down {
        /// Topology file (*.clab.yml), or the lab's name when the file is gone.
        file: PathBuf,
    },
    /// Show nodes, interfaces and the supervisor of the lab.
    Status {
        /// Topology file (*.clab.yml).
        file: PathBuf,
    },
    /// Run a command inside a node (network and mount namespaces).
    Exec {
        /// Topology file; optional when exactly one lab is up.
        #[arg(short = 't', long = "topo")]
        topo: Option<PathBuf>,
        /// Node name.
        node: String,
        /// Command and arguments (after `--`).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Print the topology as Graphviz DOT or SVG.
    Graph {
        file: PathBuf,
        #[arg(long, value_enum, default_value = "dot")]
        format: Format,
    },
    /// Change WAN emulator impairments at runtime.
    ///
    /// Example: `lab impair wan-lumen delay=40ms jitter=5ms loss=2% reorder=1% duplicate=0.5% rate=1Gbps`.
    /// Keys not given keep their value; `reset` clears all. Without settings, prints the
    /// current settings and counters.
    Impair {
        #[arg(short = 't', long = "topo", conflicts_with = "here")]
        topo: Option<PathBuf>,
        /// Talk to the emulator of the current network namespace (inside a container);
        /// LINK is then a port name or `*` for both directions.
        #[arg(long)]
        here: bool,
        /// The emulator node (both directions) or NODE:PORT (frames arriving on PORT).
        link: String,
        /// key=value: delay, jitter, loss, reorder, duplicate, rate; or `reset`.
        settings: Vec<String>,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Run a WAN emulator in the current network namespace (for container images).
    #[command(hide = true)]
    WanEmulator {
        /// The two ports, comma separated.
        #[arg(long, default_value = "eth1,eth2")]
        ports: String,
        settings: Vec<String>,
    },
    /// Stand in for a hardware EVPN leaf inside a node (next to a gobgpd peering with the
    /// fabric): install the VRF's received type-5 routes, one Router's MAC per route (or per
    /// next hop, as Linux does), and originate its connected prefixes. See docs/lab.md.
    Leaf {
        /// The VRF (its network namespace as the node sees it, `lab.vrf.NAME`).
        #[arg(long)]
        vrf: String,
        /// L3 VNI of the VRF (its devices are vxVNI and brVNI).
        #[arg(long)]
        vni: u32,
        /// This leaf's VTEP (IPv4).
        #[arg(long)]
        vtep: std::net::Ipv4Addr,
        /// This leaf's Router's MAC (brVNI's MAC).
        #[arg(long = "router-mac", value_parser = parse_router_mac)]
        router_mac: lab::leaf::Mac,
        /// Route target imported and exported, ASN:N.
        #[arg(long = "route-target")]
        route_target: String,
        /// Route distinguisher of the originated routes [default: VTEP:1].
        #[arg(long)]
        rd: Option<String>,
        /// Interfaces of the VRF whose prefixes are originated (repeat or comma separate).
        #[arg(long = "interface", value_delimiter = ',', required = true)]
        interfaces: Vec<String>,
        /// `route`: one Router's MAC per route (a hardware leaf); `next-hop`: one per VTEP
        /// (a Linux leaf).
        #[arg(long = "mac-per", default_value = "route")]
        mac_per: lab::leaf::MacPer,
        /// Arguments that reach the gobgpd, passed to every `gobgp` call.
        #[arg(
            long = "gobgp-args",
            default_value = "-p 50051",
            allow_hyphen_values = true
        )]
        gobgp_args: String,
    },
    /// Configure the node this runs in (inside a containerlab container).
    ///
    /// Applies the node's lab.* labels from the topology file and supervises its
    /// processes and WAN emulator until SIGTERM; see docs/lab.md.
    NodeInit {
        /// Topology file [default: the file named by $LAB_TOPOLOGY].
        #[arg(env = "LAB_TOPOLOGY")]
        file: PathBuf,
        /// Node name [default: the hostname, which containerlab sets to the node name].
        #[arg(long)]
        node: Option<String>,
    },
    #[command(name = "__supervise", hide = true)]
    Supervise { lab: String },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Time to bring a topology up and down (default: topologies/two-dc.clab.yml).
    UpDown {
        file: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        iterations: usize,
    },
    /// Failover outage under tenant traffic in the two-dc lab: a ping stream host-sg1 →
    /// host-par1 every 5 ms, the transit carrying it fails (100 % loss); median and worst
    /// of RUNS. gatewan, bgpctl, routingctl and lab must be in PATH (e.g.
    /// `PATH=$PWD/target/release:$PATH`).
    Failover {
        /// Topology file [default: topologies/two-dc.clab.yml].
        file: Option<PathBuf>,
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// The gatewans run with the operator guide's fast probe setting
        /// (probe.interval 100ms, count 5, timeout 60ms).
        #[arg(long)]
        fast: bool,
    },
    /// Tenant TCP throughput and RTT host-sg1 → host-par1 through the whole path (leaves,
    /// gatewans, lumen tunnels) against bare wireguard-go over lumen in the same lab: over
    /// the tunnels the controllers choose, then through one tunnel both ways (the bare
    /// tunnel's hosts and transit). gatewan, bgpctl, routingctl and lab must be in PATH.
    Dataplane {
        /// Topology file [default: topologies/two-dc.clab.yml].
        file: Option<PathBuf>,
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Measurements of each path, alternating; medians are printed.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// TCP throughput through a WAN emulator at zero impairment vs a plain veth.
    Wan {
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
}

fn two_dc() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/topologies/two-dc.clab.yml"
    ))
}

/// The benches that run two-dc's daemons find them in PATH, as `lab up` does.
fn needs_gatewan_in_path() -> Result<()> {
    for prog in [
        "gatewan",
        "bgpctl",
        "routingctl",
        "lab",
        "gobgpd",
        "wireguard-go",
        "iperf3",
    ] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()));
        if !found {
            bail!(Usage(format!(
                "`{prog}` is not in PATH: build the workspace and run with PATH=$PWD/target/release:$PATH (scripts/bootstrap.sh installs gobgpd, wireguard-go and iperf3)"
            )));
        }
    }
    Ok(())
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .ok()
        .filter(|d| *d >= std::time::Duration::from_millis(100))
        .ok_or_else(|| format!("`{s}` is not a duration of at least 100ms, e.g. 2s"))
}

/// The lab's Prometheus as asked on the command line: rule files must exist (they are
/// read by Prometheus from the host, so absolute), and the binary must be in PATH.
fn prometheus_settings(
    listen: std::net::SocketAddr,
    rules: Vec<PathBuf>,
    interval: std::time::Duration,
) -> Result<lab::prometheus::Settings> {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("prometheus").is_file()));
    if !found {
        bail!(Usage(
            "`prometheus` is not in PATH (Debian: apt-get install prometheus)".into()
        ));
    }
    let rules = rules
        .into_iter()
        .map(|r| {
            std::path::absolute(&r)
                .ok()
                .filter(|a| a.is_file())
                .ok_or_else(|| Usage(format!("--prometheus-rules {}: no such file", r.display())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(lab::prometheus::Settings {
        listen,
        interval,
        rules,
    })
}

fn parse_router_mac(s: &str) -> Result<lab::leaf::Mac, String> {
    lab::leaf::parse_mac(s)
        .filter(|m| m[0] & 1 == 0)
        .ok_or_else(|| format!("`{s}` is not a unicast MAC address like 02:00:00:00:00:01"))
}

/// An error that should exit with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn load(p: &Path) -> Result<Topology> {
    Topology::load(p).map_err(anyhow::Error::from)
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("locate the lab binary")
}

/// The running lab named by `-t FILE`, or the only one running.
fn pick_lab(topo: Option<&Path>) -> Result<Topology> {
    if let Some(p) = topo {
        return load(p);
    }
    let labs = realize::labs();
    match labs.as_slice() {
        [one] => realize::read_state(one)
            .and_then(|s| s.topology)
            .ok_or_else(|| anyhow!("state of lab {one} is unreadable")),
        [] => Err(Usage("no lab is running".into()).into()),
        many => Err(Usage(format!(
            "several labs are running ({}); pass -t FILE",
            many.join(", ")
        ))
        .into()),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Up {
            file,
            prometheus,
            prometheus_rules,
            prometheus_interval,
        } => {
            let mut t = load(&file)?;
            if let Some(listen) = prometheus {
                t.prometheus = Some(prometheus_settings(
                    listen,
                    prometheus_rules,
                    prometheus_interval,
                )?);
            }
            realize::up(&t, SupervisorMode::Detached(exe()?))
                .context("lab up failed; run `lab up` again to repair or `lab down` to clean")?;
            println!(
                "lab {} is up ({} nodes, {} links)",
                t.name,
                t.nodes.len(),
                t.links.len()
            );
            if let Some(p) = &t.prometheus {
                println!(
                    "prometheus on http://{} scraping {} targets (log {})",
                    p.listen,
                    lab::prometheus::targets(&t).len(),
                    lab::prometheus::log_path(&t.name).display()
                );
            }
        }
        Cmd::Down { file } => {
            let name = match file.to_str() {
                Some(n) if !file.exists() && lab::topology::valid_lab_name(n) => n.to_string(),
                _ => load(&file)?.name,
            };
            realize::down(&name)?;
            println!("lab {name} is down");
        }
        Cmd::Status { file } => {
            let t = load(&file)?;
            let (text, ok) = realize::status(&t)?;
            print!("{text}");
            if !ok {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Exec { topo, node, cmd } => {
            let t = pick_lab(topo.as_deref())?;
            let n = t
                .nodes
                .get(&node)
                .ok_or_else(|| Usage(format!("no node `{node}` in lab {}", t.name)))?;
            let (prog, args) = cmd
                .split_first()
                .ok_or_else(|| Usage("no command".into()))?;
            let mut c = std::process::Command::new(prog);
            c.args(args)
                .env_clear()
                .envs(supervisor::base_env(&t.name, n));
            if let Ok(term) = std::env::var("TERM") {
                c.env("TERM", term);
            }
            ns::NodeRef::new(&t.name, &node).command(&mut c)?;
            let st = c
                .status()
                .with_context(|| format!("run {prog} on {node}"))?;
            return Ok(ExitCode::from(st.code().unwrap_or(1).clamp(0, 255) as u8));
        }
        Cmd::Graph { file, format } => {
            let t = load(&file)?;
            match format {
                Format::Dot => print!("{}", lab::graph::dot(&t)),
                Format::Svg => print!("{}", lab::graph::svg(&t)?),
            }
        }
        Cmd::Impair {
            topo,
            here,
            link,
            settings,
        } => {
            let words: Vec<&str> = settings.iter().map(String::as_str).collect();
            if let Err(e) = wan::Impairment::default().apply_unchecked(&words) {
                return Err(Usage(e).into());
            }
            if here {
                let cmd = if words.is_empty() {
                    "get".to_string()
                } else {
                    format!("set {link} {}", words.join(" "))
                };
                print!("{}", wan::control(&cmd)?);
            } else {
                let t = pick_lab(topo.as_deref())?;
                print!("{}", lab::impair(&t, &link, &words)?);
            }
        }
        Cmd::Bench { what } => match what {
            BenchCmd::UpDown { file, iterations } => {
                let f = file.unwrap_or_else(|| {
                    PathBuf::from(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/topologies/two-dc.clab.yml"
                    ))
                });
                let t = load(&f)?;
                let r = lab::bench::up_down(&f, &exe()?, iterations.max(1))?;
                for (i, m) in r.iter().enumerate() {
                    println!(
                        "run {}: up {:.3}s down {:.3}s",
                        i + 1,
                        m.up.as_secs_f64(),
                        m.down.as_secs_f64()
                    );
                }
                let mut ups: Vec<f64> = r.iter().map(|m| m.up.as_secs_f64()).collect();
                let mut downs: Vec<f64> = r.iter().map(|m| m.down.as_secs_f64()).collect();
                ups.sort_by(f64::total_cmp);
                downs.sort_by(f64::total_cmp);
                println!(
                    "{} ({} nodes, {} links): median up {:.3}s (target <= 5s), median down {:.3}s (target <= 2s)",
                    f.display(),
                    t.nodes.len(),
                    t.links.len(),
                    ups[ups.len() / 2],
                    downs[downs.len() / 2]
                );
            }
            BenchCmd::Dataplane {
                file,
                seconds,
                runs,
            } => {
                needs_gatewan_in_path()?;
                let r = lab::bench::dataplane(
                    &file.unwrap_or_else(two_dc),
                    seconds.max(1),
                    runs.max(1),
                )?;
                let print_runs = |title: &str, runs: &[lab::bench::DataplaneRun]| {
                    println!("{title}");
                    for (i, r) in runs.iter().enumerate() {
                        println!(
                            "  run {}: whole path {:.1} Mbit/s, bare {:.1} Mbit/s, ratio {:.2}; data via {}, ACKs via {}",
                            i + 1,
                            r.full_bps / 1e6,
                            r.bare_bps / 1e6,
                            r.ratio(),
                            r.data_tunnel,
                            if r.symmetric() {
                                "the same"
                            } else {
                                &r.ack_tunnel
                            }
                        );
                    }
                };
                print_runs("over the tunnels the controllers choose:", &r.chosen);
                print_runs(
                    "through one tunnel both ways (lumen drained on gatewan02-sg1 and gatewan02-par1; the bare tunnel's hosts and transit):",
                    &r.one_tunnel,
                );
                let rounds: Vec<String> = r
                    .rtt_rounds
                    .iter()
                    .map(|x| {
                        let (f, b) = x.medians();
                        format!("{f:.3}/{b:.3}")
                    })
                    .collect();
                println!(
                    "echo RTT rounds (both paths in the same seconds at random times, 100 echoes each), median whole path/bare, ms: {}",
                    rounds.join(" ")
                );
                let (_, _, added_by_means) = r.rtts_by_means();
                let (full, bare) = lab::bench::medians(&r.one_tunnel);
                let (full_rtt, bare_rtt, added_rtt) = r.rtts();
                println!(
                    "whole path (host -> leaf -> gatewan -> tunnel -> gatewan -> leaf -> host), one tunnel: median {:.1} Mbit/s, RTT {full_rtt:.3} ms",
                    full / 1e6,
                );
                println!(
                    "bare wireguard-go over the same transit: median {:.1} Mbit/s, RTT {bare_rtt:.3} ms",
                    bare / 1e6,
                );
                println!(
                    "one tunnel both ways: median ratio {:.2} over {} runs (target >= 0.9), added RTT {added_rtt:.3} ms, median of {} rounds' differences of medians (target <= 0.1 ms; by means {added_by_means:.3} ms)",
                    lab::bench::median_ratio(&r.one_tunnel),
                    r.one_tunnel.len(),
                    r.rtt_rounds.len(),
                );
                let crossed = r.chosen.iter().filter(|x| !x.symmetric()).count();
                println!(
                    "tunnels as chosen: median ratio {:.2} over {} runs, {crossed} with the ACKs through another tunnel than the data",
                    lab::bench::median_ratio(&r.chosen),
                    r.chosen.len(),
                );
            }
            BenchCmd::Failover { file, runs, fast } => {
                needs_gatewan_in_path()?;
                let f = file.unwrap_or_else(two_dc);
                let r = lab::bench::failover(&f, fast, runs.max(1))?;
                if r.is_empty() {
                    bail!("no run's stream crossed the failed transit");
                }
                let mut ms: Vec<u128> = r.iter().map(|x| x.outage.as_millis()).collect();
                ms.sort_unstable();
                let target = if fast { 300 } else { 1000 };
                println!(
                    "failover outage over {} runs ({} probe settings): median {} ms, worst {} ms (target <= {target} ms)",
                    ms.len(),
                    if fast { "fast" } else { "default" },
                    ms[ms.len() / 2],
                    ms[ms.len() - 1]
                );
            }
            BenchCmd::Wan { seconds } => {
                let (plain, emu) = lab::bench::wan(&exe()?, seconds.max(1))?;
                println!("plain veth:          {:.2} Gbit/s", plain / 1e9);
                println!(
                    "through WAN emulator: {:.2} Gbit/s (target >= 1 Gbit/s)",
                    emu / 1e9
                );
                println!("ratio:               {:.2}", emu / plain);
            }
        },
        Cmd::WanEmulator { ports, settings } => {
            let v: Vec<&str> = ports.split(',').collect();
            let [a, b] = v.as_slice() else {
                bail!(Usage("--ports needs two interfaces, e.g. eth1,eth2".into()));
            };
            let words: Vec<&str> = settings.iter().map(String::as_str).collect();
            let imp = wan::Impairment::default().apply(&words).map_err(Usage)?;
            let ports = [a.to_string(), b.to_string()];
            wan::wait_for_ports(&ports, std::time::Duration::from_secs(120))?;
            use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
            let mut set = SigSet::empty();
            set.add(Signal::SIGTERM);
            set.add(Signal::SIGINT);
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
            let e = wan::Emulator::start(ports, imp, Arc::new(AtomicBool::new(false)))?;
            eprintln!("wan-emulator forwarding {a} <-> {b}: {imp}");
            let _ = set.wait();
            e.stop();
        }
        Cmd::NodeInit { file, node } => {
            let t = load(&file)?;
            let node = match node {
                Some(n) => n,
                None => nix::unistd::gethostname()?
                    .into_string()
                    .map_err(|_| anyhow!("hostname is not UTF-8"))?,
            };
            if !t.nodes.contains_key(&node) {
                return Err(Usage(format!("no node `{node}` in {}", file.display())).into());
            }
            realize::node_init(&t, &node)?;
        }
        Cmd::Leaf {
            vrf,
            vni,
            vtep,
            router_mac,
            route_target,
            rd,
            interfaces,
            mac_per,
            gobgp_args,
        } => {
            let (asn, n) = route_target.split_once(':').ok_or_else(|| {
                Usage(format!(
                    "--route-target `{route_target}`: expected ASN:N, e.g. 65001:100"
                ))
            })?;
            if asn.parse::<u32>().is_err() || n.parse::<u32>().is_err() {
                bail!(Usage(format!(
                    "--route-target `{route_target}`: expected ASN:N, e.g. 65001:100"
                )));
            }
            if vni == 0 || vni >= 1 << 24 {
                bail!(Usage(format!("--vni {vni}: a VNI is 1 to 16777215")));
            }
            let settings = lab::leaf::LeafSettings {
                rd: rd.unwrap_or_else(|| format!("{vtep}:1")),
                vrf,
                vni,
                vtep,
                router_mac,
                route_target,
                interfaces,
                mac_per,
            };
            let args: Vec<String> = gobgp_args.split_whitespace().map(str::to_string).collect();
            lab::leaf::run(&settings, &args)?;
        }
        Cmd::Supervise { lab } => realize::supervise_main(&lab)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(c) => c,
        Err(e) => {
            let usage =
                e.downcast_ref::<Usage>().is_some() || e.downcast_ref::<TopologyError>().is_some();
            eprintln!("lab: {e:#}");
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
