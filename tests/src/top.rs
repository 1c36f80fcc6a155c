//! `routingctl top` under tmux, for tests (ADR 0048): the real binary draws in a detached
//! tmux session of its own (a tmux server per pane, `-S /tmp/gwtop-…`), the test reads the pane as
//! text (`capture-pane -p`) and types into it (`send-keys`). In a lab node through
//! [`lab::RunningLab::command`], or on this host.
//!
//! The command runs under `sh`, which prints `[routingctl exited N]` when it ends: the
//! pane stays readable and tells the exit status.
//!
//! ```no_run
//! # fn f(lab: &lab::RunningLab) {
//! use gatewan_tests::top::{BGPCTL_SOCKET, TopPane};
//! use std::time::Duration;
//! let pane = TopPane::start(lab, "bgpctl-sg1", &["--socket", BGPCTL_SOCKET]);
//! pane.wait_for(Duration::from_secs(30), |p| p.contains("Down")).unwrap();
//! pane.send_keys(&["q"]);
//! assert_eq!(pane.wait_exit(Duration::from_secs(5)), Ok(0));
//! # }
//! ```

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// routingctl in a lab node.
pub const NODE_ROUTINGCTL: &str = "/opt/gatewan/bin/routingctl";
/// bgpctl's API socket in a lab node (and its packaged default).
pub const BGPCTL_SOCKET: &str = "/run/bgpctl/bgpctl.sock";
/// The pane's size: room for every column of the tunnels pane.
pub const WIDTH: u16 = 200;
pub const HEIGHT: u16 = 50;

const EXITED: &str = "[routingctl exited ";

enum Place<'a> {
    Host,
    Lab {
        lab: &'a lab::RunningLab,
        node: String,
    },
}

/// A tmux session running `routingctl top`; the session (and its tmux server) is killed
/// on drop.
pub struct TopPane<'a> {
    place: Place<'a>,
    /// The tmux server's socket (`tmux -S`), one per pane, removed on drop.
    server: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// `s` as one word for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl<'a> TopPane<'a> {
    /// `routingctl top ARGS` in `node` of `lab` (the node's routingctl, [`NODE_ROUTINGCTL`]),
    /// e.g. `args = ["--socket", BGPCTL_SOCKET]`.
    pub fn start(lab: &'a lab::RunningLab, node: &str, args: &[&str]) -> TopPane<'a> {
        Self::spawn(
            Place::Lab {
                lab,
                node: node.to_string(),
            },
            NODE_ROUTINGCTL,
            args,
        )
    }

    /// `ROUTINGCTL top ARGS` on this host (e.g. `crate::bin("routingctl")` against a
    /// daemon's socket).
    pub fn start_local(routingctl: &Path, args: &[&str]) -> TopPane<'static> {
        let program = routingctl.to_string_lossy().into_owned();
        TopPane::spawn(Place::Host, &program, args)
    }

    fn spawn(place: Place<'a>, routingctl: &str, args: &[&str]) -> TopPane<'a> {
        let server = format!(
            "/tmp/gwtop-{}-{}.tmux",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut line = format!("{} top", quote(routingctl));
        for a in args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        let script = format!("{line}; echo \"{EXITED}$?]\"; exec sleep 86400");
        let pane = TopPane { place, server };
        let (w, h) = (WIDTH.to_string(), HEIGHT.to_string());
        let out = pane.tmux(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &w,
            "-y",
            &h,
            "sh",
            "-c",
            &script,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session for `{line}`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pane
    }

    /// Runs `tmux -u -S SERVER ARGS` where the pane lives.
    fn tmux(&self, args: &[&str]) -> Output {
        // -u: the pane holds UTF-8 (sparklines, arrows) whatever the locale says.
        let mut argv = vec!["tmux", "-u", "-S", self.server.as_str()];
        argv.extend_from_slice(args);
        let mut cmd = match &self.place {
            Place::Host => {
                let mut c = Command::new(argv[0]);
                c.args(&argv[1..]);
                c
            }
            Place::Lab { lab, node } => lab
                .command(node, &argv)
                .unwrap_or_else(|e| panic!("tmux in {node}: {e:#}")),
        };
        cmd.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }

    /// What the pane shows now, one line per row.
    pub fn capture(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Reads the pane every 200 ms until `done` holds (the pane), or fails at `timeout`
    /// with the last capture.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let pane = self.capture();
            if done(&pane) {
                return Ok(pane);
            }
            if Instant::now() >= deadline {
                return Err(format!("not seen within {timeout:?}; the pane:\n{pane}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Types keys into the pane, in tmux's names (`q`, `Tab`, `Down`, `C-c`).
    pub fn send_keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        let out = self.tmux(&args);
        assert!(
            out.status.success(),
            "tmux send-keys {keys:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// routingctl's exit status once it has ended (None while it runs).
    pub fn exit_status(&self) -> Option<i32> {
        let pane = self.capture();
        let rest = &pane[pane.find(EXITED)? + EXITED.len()..];
        rest.split(']').next()?.trim().parse().ok()
    }

    /// Waits for routingctl to end and returns its exit status.
    pub fn wait_exit(&self, timeout: Duration) -> Result<i32, String> {
        let pane = self.wait_for(timeout, |p| p.contains(EXITED))?;
        self.exit_status()
            .ok_or_else(|| format!("no exit status in the pane:\n{pane}"))
    }
}

impl Drop for TopPane<'_> {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
        // tmux leaves its socket behind.
        match &self.place {
            Place::Host => {
                let _ = std::fs::remove_file(&self.server);
            }
            Place::Lab { lab, node } => {
                let _ = lab.exec(node, &["rm", "-f", &self.server]);
            }
        }
    }
}

/// The rows of the tunnels pane in a capture: the lines with a transit pair (`a→b`), as
/// words (`│` borders dropped).
pub fn tunnel_rows(pane: &str) -> Vec<Vec<String>> {
    pane.lines()
        .filter(|l| l.contains('→'))
        .map(|l| {
            l.replace('│', " ")
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_sh() {
        assert_eq!(quote("/run/x.sock"), "'/run/x.sock'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn tunnel_rows_are_read_from_a_capture() {
        let pane =
            "┌ tunnels (1) ┐\n│GATEWAN IFACE\n│gw1  sdwan10  gw2  lumen→cogent  Down  1.0ms │\n";
        assert_eq!(
            tunnel_rows(pane),
            [["gw1", "sdwan10", "gw2", "lumen→cogent", "Down", "1.0ms"]]
        );
    }
}
