//! Graph: renders a topology as Graphviz DOT (and SVG through the `dot` program).

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::topology::{NodeRole, Topology};

fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\\\""))
}

/// DOT text: one vertex per node (WAN emulators drawn as boxes), one edge per link
/// labelled with its interface names.
pub fn dot(t: &Topology) -> String {
    let mut s = format!(
        "graph {} {{\n  layout=neato; overlap=false; splines=true;\n",
        q(&t.name)
    );
    for n in t.nodes.values() {
        let (shape, extra) = match &n.role {
            NodeRole::WanEmulator { impairment, .. } => ("box", format!("\\n{impairment}")),
            NodeRole::Host => ("ellipse", String::new()),
        };
        s.push_str(&format!(
            "  {} [shape={shape}, label={}];\n",
            q(&n.name),
            q(&format!("{}{extra}", n.name))
        ));
    }
    for l in &t.links {
        s.push_str(&format!(
            "  {} -- {} [taillabel={}, headlabel={}];\n",
            q(&l.a.0),
            q(&l.b.0),
            q(&l.a.1),
            q(&l.b.1)
        ));
    }
    s.push_str("}\n");
    s
}

/// SVG rendered by Graphviz; a clear error if `dot` is not installed.
pub fn svg(t: &Topology) -> Result<String> {
    let mut child = match Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("`dot` (Graphviz) is not installed; use --format dot or install graphviz")
        }
        Err(e) => return Err(e).context("run dot"),
    };
    if let Some(mut i) = child.stdin.take() {
        i.write_all(dot(t).as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("dot failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
