//! Configuration reload on SIGHUP (ADR 0045), shared by both daemons: read the file
//! again, validate it as at start, and hand the daemon both settings; the daemon's own
//! pure `reload` says what it applies or which fields need a restart. All or nothing: a
//! file with one field that needs a restart applies nothing, so that what runs is always
//! one whole file, the old one or the new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tracing::{error, info, warn};

use crate::config::ConfigError;

/// What a daemon's `reload` decides for a new, valid file.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<A> {
    /// Nothing that matters changed.
    Unchanged,
    /// Apply this; the strings name what changed, for the log.
    Apply {
        change: A,
        fields: Vec<&'static str>,
    },
    /// These fields changed and can only be taken at a restart: nothing is applied.
    Restart(Vec<&'static str>),
}

impl<A> Verdict<A> {
    /// `Restart` naming the fields of `fixed` (config keys, changed or not) that changed;
    /// None when none did.
    pub fn restart_for(fixed: &[(&'static str, bool)]) -> Option<Verdict<A>> {
        let changed: Vec<&'static str> = fixed
            .iter()
            .filter(|(_, changed)| *changed)
            .map(|(field, _)| *field)
            .collect();
        (!changed.is_empty()).then_some(Verdict::Restart(changed))
    }
}

/// Reloads since start, by result, and when the file last loaded whole.
#[derive(Debug, Default)]
pub struct Reloads {
    applied: AtomicU64,
    unchanged: AtomicU64,
    needs_restart: AtomicU64,
    invalid: AtomicU64,
    /// 1 while the file on disk differs from what runs (refused or invalid since the last
    /// success): the daemon does not run what its file says.
    pending: AtomicU64,
}

impl Reloads {
    fn count(&self, result: &AtomicU64, pending: bool) {
        result.fetch_add(1, Ordering::Relaxed);
        self.pending.store(u64::from(pending), Ordering::Relaxed);
    }
}

/// Waits for SIGHUP, then reads `path` with `load` and gives old and new settings to
/// `decide`; an applied change is handed to `apply` and becomes the settings compared
/// with at the next SIGHUP. Runs until the runtime stops.
pub fn spawn<S, A>(
    path: PathBuf,
    initial: S,
    load: fn(&Path) -> Result<S, Vec<ConfigError>>,
    decide: fn(&S, &S) -> Verdict<A>,
    mut apply: impl FnMut(A) + Send + 'static,
    reloads: Arc<Reloads>,
) where
    S: Send + 'static,
    A: Send + 'static,
{
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGHUP: configuration reload is off");
            return;
        }
    };
    tokio::spawn(async move {
        let mut current = initial;
        while hangups.recv().await.is_some() {
            let file = path.display();
            let new = match load(&path) {
                Ok(new) => new,
                Err(errors) => {
                    for e in &errors {
                        error!("configuration reload refused: {e}");
                    }
                    error!(file = %file, errors = errors.len(), "configuration reload refused: the file is not valid; the running configuration is unchanged");
                    reloads.count(&reloads.invalid, true);
                    continue;
                }
            };
            match decide(&current, &new) {
                Verdict::Unchanged => {
                    info!(file = %file, "configuration reloaded: nothing that can change at run time changed");
                    reloads.count(&reloads.unchanged, false);
                }
                Verdict::Restart(fields) => {
                    warn!(file = %file, fields = %fields.join(", "), "configuration reload refused: these fields change only at a restart; nothing was applied (restart the daemon, or put them back and reload)");
                    reloads.count(&reloads.needs_restart, true);
                }
                Verdict::Apply { change, fields } => {
                    apply(change);
                    current = new;
                    info!(file = %file, applied = %fields.join(", "), "configuration reloaded");
                    reloads.count(&reloads.applied, false);
                }
            }
        }
    });
}

/// `PREFIX_config_reloads_total{result}` and `PREFIX_config_reload_pending`.
pub fn collector(prefix: &'static str, reloads: Arc<Reloads>) -> Box<dyn Collector> {
    Box::new(ReloadCollector(prefix, reloads))
}

#[derive(Debug)]
struct ReloadCollector(&'static str, Arc<Reloads>);

impl Collector for ReloadCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = &self.1;
        let proto = ConstCounter::new(0u64);
        let name = format!("{}_config_reloads", self.0);
        let mut fam = enc.encode_descriptor(
            &name,
            "Configuration reloads (SIGHUP) by result: applied, unchanged, needs_restart \
             (a changed field that only a restart takes: nothing applied), invalid",
            None,
            proto.metric_type(),
        )?;
        for (result, n) in [
            ("applied", &r.applied),
            ("unchanged", &r.unchanged),
            ("needs_restart", &r.needs_restart),
            ("invalid", &r.invalid),
        ] {
            ConstCounter::new(n.load(Ordering::Relaxed))
                .encode(fam.encode_family(&[("result", result)])?)?;
        }
        let g = ConstGauge::new(i64::from(r.pending.load(Ordering::Relaxed) != 0));
        let name = format!("{}_config_reload_pending", self.0);
        g.encode(enc.encode_descriptor(
            &name,
            "1 while the last reload was refused: the configuration file differs from what runs",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}
