//! Supervisor: keeps a lab's long-running parts alive — the `lab.run.*` processes of every
//! node (restarted with exponential backoff, output appended to
//! `/run/lab/LAB/logs/NODE.log`), the WAN emulators (threads whose sockets live in the
//! emulator node's network namespace), the nodes' published ports (`crate::ports`) and the
//! lab's Prometheus, if it has one (`crate::prometheus`, a host process logging to
//! `/run/lab/LAB/logs/prometheus.log`). `lab up` runs it as a detached `lab __supervise`
//! process; the test harness runs it inside the test process.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::ns::{self, NodeRef};
use crate::topology::{Node, NodeRole, Topology};
use crate::wan::Emulator;

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A process that ran this long is considered healthy: its backoff starts over.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Environment every node process starts with, before the node's `env`.
pub fn base_env(lab: &str, node: &Node) -> Vec<(String, String)> {
    let mut v = vec![
        // Node processes find programs where `lab up` found them (e.g. a build's target
        // directory put first in PATH), as a container finds its image's binaries.
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()
            }),
        ),
        ("HOME".to_string(), "/root".to_string()),
        ("LAB_NAME".to_string(), lab.to_string()),
        ("LAB_NODE".to_string(), node.name.clone()),
    ];
    v.extend(node.env.iter().map(|(k, val)| (k.clone(), val.clone())));
    v
}

/// Environment of the lab's host processes (its Prometheus): the caller's PATH, as node
/// processes get it, and nothing else of the caller's.
fn host_env() -> Vec<(String, String)> {
    vec![
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()
            }),
        ),
        ("HOME".to_string(), "/root".to_string()),
    ]
}

/// A shell command prepared to run inside `node`.
pub fn node_command(lab: &str, node: &Node, shell: &str) -> Result<Command> {
    node_command_at(lab, node, shell, true)
}

/// Like [`node_command`]; with `enter == false` it runs in the caller's namespaces
/// (inside a container, where the caller already is the node).
fn node_command_at(lab: &str, node: &Node, shell: &str, enter: bool) -> Result<Command> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(shell)
        .env_clear()
        .envs(base_env(lab, node));
    if enter {
        NodeRef::new(lab, &node.name).command(&mut cmd)?;
    }
    Ok(cmd)
}

pub use crate::ns::log_path;

/// The running supervisor of one lab.
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    emulators: Vec<Emulator>,
}

fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < d && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn terminate(child: &mut Child) {
    let pg = Pid::from_raw(child.id() as i32);
    let _ = killpg(pg, Signal::SIGTERM);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = child.try_wait() {
            // The leader is gone; make sure nothing of its group lingers.
            let _ = killpg(pg, Signal::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(pg, Signal::SIGKILL);
    let _ = child.wait();
}

/// Makes the command of a supervised process, afresh for every start.
type MakeCommand = Box<dyn Fn() -> Result<Command> + Send>;

/// Runs the process `make` prepares until `stop`, restarting it with backoff; its output
/// and the supervisor's notes about it (`[lab] …`) go to `log_file`.
fn supervise(
    log_file: PathBuf,
    name: String,
    cmdline: String,
    make: MakeCommand,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = BACKOFF_MIN;
    while !stop.load(Ordering::Relaxed) {
        let log = OpenOptions::new().create(true).append(true).open(&log_file);
        let mut log = match log {
            Ok(l) => l,
            Err(_) => {
                sleep_unless_stopped(&stop, backoff);
                continue;
            }
        };
        let _ = writeln!(log, "[lab] starting {name}: {cmdline}");
        let spawned = make().and_then(|mut c| {
            use std::os::unix::process::CommandExt;
            let out = log.try_clone()?;
            let err = log.try_clone()?;
            c.stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .context("spawn")
        });
        let started = Instant::now();
        match spawned {
            Ok(mut child) => loop {
                if stop.load(Ordering::Relaxed) {
                    terminate(&mut child);
                    let _ = writeln!(log, "[lab] stopped {name}");
                    return;
                }
                match child.try_wait() {
                    Ok(Some(st)) => {
                        let _ =
                            writeln!(log, "[lab] {name} exited: {st}; restarting in {backoff:?}");
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                    Err(e) => {
                        let _ = writeln!(log, "[lab] {name}: wait failed: {e}");
                        break;
                    }
                }
            },
            Err(e) => {
                let _ = writeln!(
                    log,
                    "[lab] {name} could not start: {e:#}; retrying in {backoff:?}"
                );
            }
        }
        if started.elapsed() >= HEALTHY_AFTER {
            backoff = BACKOFF_MIN;
        }
        sleep_unless_stopped(&stop, backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

impl Supervisor {
    /// Starts the emulators and processes of `topo`, whose namespaces must exist.
    pub fn start(topo: &Topology) -> Result<Supervisor> {
        let stop = Arc::new(AtomicBool::new(false));
        std::fs::create_dir_all(ns::lab_dir(&topo.name).join("logs"))?;
        let mut sup = Supervisor {
            stop: stop.clone(),
            threads: Vec::new(),
            emulators: Vec::new(),
        };
        for node in topo.nodes.values() {
            if let NodeRole::WanEmulator { ports, impairment } = &node.role {
                let (ports, imp, st) = (ports.clone(), *impairment, stop.clone());
                let e = ns::in_netns(&ns::netns_path(&topo.name, &node.name), move || {
                    Emulator::start(ports, imp, st)
                });
                match e {
                    Ok(e) => sup.emulators.push(e),
                    Err(e) => {
                        sup.stop();
                        return Err(e.context(format!("WAN emulator on node {}", node.name)));
                    }
                }
            }
        }
        // A host port that cannot be published fails the lab before any process starts.
        if let Err(e) = sup.publish_ports(topo) {
            sup.stop();
            return Err(e);
        }
        // Every transit forwards before the first daemon sends (node order is by name, and
        // `gatewan…` comes before `wan-…`).
        for node in topo.nodes.values() {
            sup.spawn_processes(&topo.name, node, true)?;
        }
        if let Some(settings) = &topo.prometheus
            && let Err(e) = sup.spawn_prometheus(topo, settings)
        {
            sup.stop();
            return Err(e);
        }
        Ok(sup)
    }

    /// A forwarder per published port of every node (`crate::ports`).
    fn publish_ports(&mut self, topo: &Topology) -> Result<()> {
        for node in topo.nodes.values() {
            for p in &node.ports {
                let netns = ns::netns_path(&topo.name, &node.name);
                self.threads.push(crate::ports::publish(
                    &node.name,
                    netns,
                    *p,
                    self.stop.clone(),
                )?);
            }
        }
        Ok(())
    }

    /// The lab's Prometheus, a host process supervised as the nodes' are.
    fn spawn_prometheus(
        &mut self,
        topo: &Topology,
        settings: &crate::prometheus::Settings,
    ) -> Result<()> {
        // One left by a supervisor that was killed would hold the listen address.
        crate::prometheus::stop_strays(&topo.name);
        crate::prometheus::prepare(topo, settings)?;
        let (lab, s) = (topo.name.clone(), settings.clone());
        let cmdline = format!(
            "prometheus {}",
            crate::prometheus::args(&lab, settings).join(" ")
        );
        let make: MakeCommand = Box::new(move || {
            let mut c = crate::prometheus::command(&lab, &s);
            c.env_clear().envs(host_env());
            Ok(c)
        });
        let (log, st) = (crate::prometheus::log_path(&topo.name), self.stop.clone());
        self.threads.push(
            std::thread::Builder::new()
                .name("sup-prometheus".into())
                .spawn(move || supervise(log, "prometheus".into(), cmdline, make, st))?,
        );
        Ok(())
    }

    /// One supervising thread per `lab.run.*` process of `node`; `enter` says whether the
    /// processes must enter the node's namespaces (not when already inside them).
    fn spawn_processes(&mut self, lab: &str, node: &Node, enter: bool) -> Result<()> {
        for (name, cmdline) in &node.run {
            let (lab, node, name, cmdline, st) = (
                lab.to_string(),
                node.clone(),
                name.clone(),
                cmdline.clone(),
                self.stop.clone(),
            );
            let log = log_path(&lab, &node.name);
            let shell = format!("exec {cmdline}");
            let make: MakeCommand = Box::new(move || node_command_at(&lab, &node, &shell, enter));
            self.threads.push(
                std::thread::Builder::new()
                    .name(format!("sup-{name}"))
                    .spawn(move || supervise(log, name, cmdline, make, st))?,
            );
        }
        Ok(())
    }

    /// Starts the emulator and processes of one node in the caller's own namespaces:
    /// `lab node-init` inside a container started by containerlab.
    pub fn start_here(lab: &str, node: &Node) -> Result<Supervisor> {
        let stop = Arc::new(AtomicBool::new(false));
        std::fs::create_dir_all(ns::lab_dir(lab).join("logs"))?;
        let mut sup = Supervisor {
            stop: stop.clone(),
            threads: Vec::new(),
            emulators: Vec::new(),
        };
        if let NodeRole::WanEmulator { ports, impairment } = &node.role {
            sup.emulators
                .push(Emulator::start(ports.clone(), *impairment, stop.clone())?);
        }
        sup.spawn_processes(lab, node, false)?;
        Ok(sup)
    }

    /// Stops every process (SIGTERM, then SIGKILL) and emulator, and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        for e in self.emulators {
            e.stop();
        }
    }
}
