//! Test harness: brings a topology up from a test of any crate and guarantees teardown.
//!
//! ```no_run
//! let lab = lab::Harness::up_named("lab/topologies/two-dc.clab.yml", "t-mytest")?;
//! let out = lab.exec("gatewan01-sg1", &["ping", "-c1", "198.51.100.2"])?;
//! assert!(out.status.success());
//! lab.impair("wan-lumen", &["delay=40ms"])?;
//! lab.down()?; // also done by Drop, even when the test panics
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Processes and WAN emulators run as threads of the test process, so no `lab` binary is
//! needed. Use a lab name unique to the test so tests can run in parallel.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, Result, anyhow};

use crate::ns::NodeRef;
use crate::realize::{self, SupervisorMode};
use crate::supervisor::{Supervisor, base_env};
use crate::topology::Topology;

/// Entry point of the harness.
pub struct Harness;

impl Harness {
    /// Brings up the topology file under its own name.
    pub fn up(path: impl AsRef<Path>) -> Result<RunningLab> {
        let topo = Topology::load(path.as_ref())?;
        Self::up_topology(topo)
    }

    /// Brings up the topology file under another lab name (1-24 of `[A-Za-z0-9_-]`).
    pub fn up_named(path: impl AsRef<Path>, name: &str) -> Result<RunningLab> {
        let mut topo = Topology::load(path.as_ref())?;
        topo.name = name.to_string();
        Self::up_topology(topo)
    }

    /// Brings up an already parsed topology; on failure nothing is left behind.
    /// A lab of the same name left over by an earlier (killed) run is removed first, so
    /// every test starts from a fresh lab.
    pub fn up_topology(topo: Topology) -> Result<RunningLab> {
        realize::down(&topo.name)?;
        match realize::up(&topo, SupervisorMode::InProcess) {
            Ok(sup) => Ok(RunningLab {
                topo,
                sup,
                down: false,
            }),
            Err(e) => {
                let _ = realize::down(&topo.name);
                Err(e)
            }
        }
    }
}

/// A lab that is up; torn down by [`RunningLab::down`] or on drop.
pub struct RunningLab {
    topo: Topology,
    sup: Option<Supervisor>,
    down: bool,
}

impl RunningLab {
    pub fn name(&self) -> &str {
        &self.topo.name
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// A command (argv, no shell) prepared to run in `node`, with the node's env.
    pub fn command(&self, node: &str, argv: &[&str]) -> Result<Command> {
        let n = self
            .topo
            .nodes
            .get(node)
            .ok_or_else(|| anyhow!("no node `{node}` in lab {}", self.topo.name))?;
        let (prog, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
        let mut c = Command::new(prog);
        c.args(args).env_clear().envs(base_env(&self.topo.name, n));
        NodeRef::new(&self.topo.name, node).command(&mut c)?;
        Ok(c)
    }

    /// Runs `argv` in `node` to completion and returns its output.
    pub fn exec(&self, node: &str, argv: &[&str]) -> Result<Output> {
        self.command(node, argv)?
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("exec {argv:?} on {node}"))
    }

    /// Starts `argv` in `node` in the background; `down` kills it if still running.
    pub fn spawn(&self, node: &str, argv: &[&str]) -> Result<Child> {
        self.command(node, argv)?
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {argv:?} on {node}"))
    }

    /// Changes the impairments of a WAN emulator node (`NODE` for both directions,
    /// `NODE:PORT` for frames arriving on PORT), e.g. `&["delay=40ms", "loss=1%"]`.
    pub fn impair(&self, link: &str, settings: &[&str]) -> Result<String> {
        crate::impair(&self.topo, link, settings)
    }

    /// Tears the lab down, returning the first error.
    pub fn down(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if self.down {
            return Ok(());
        }
        self.down = true;
        if let Some(s) = self.sup.take() {
            s.stop();
        }
        realize::down(&self.topo.name)
    }
}

impl Drop for RunningLab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("lab {}: teardown failed: {e:#}", self.topo.name);
        }
    }
}
