//! The `tunnels` and `probe` sections: WireGuard tunnels to the other datacenters' gatewans
//! and how they are measured.

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::probe::stats::Thresholds;
use crate::tunnels::plan::{Pairing, PlanSettings};
use crate::tunnels::system::WireguardMode;
use gatewan_kit::config::Checker;
use gatewan_kit::units::{Dur, Percent};

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub enum PairingConfig {
    #[default]
    All,
    SameTransit,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum WireguardConfig {
    Kernel,
    Userspace,
    #[default]
    Auto,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelsConfig {
    /// A pinned tunnel slot. Without it (the default) the gatewan claims a free slot
    /// through the mesh and keeps it in state_dir (ADR 0042).
    #[serde(default)]
    pub slot: Option<Spanned<u32>>,
    #[serde(default)]
    pub pairing: PairingConfig,
    #[serde(default)]
    pub pool_v4: Option<Spanned<String>>,
    #[serde(default)]
    pub pool_v6: Option<Spanned<String>>,
    /// `first-last`, shared by listen and echo ports.
    #[serde(default)]
    pub ports: Option<Spanned<String>>,
    #[serde(default)]
    pub interface_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub wireguard: WireguardConfig,
    /// How long a tunnel whose peer left the mesh is kept.
    #[serde(default)]
    pub grace: Option<Dur>,
    /// Whether the gatewan sets each tunnel interface's RPS mask (ADR 0063). `false` leaves
    /// `rps_cpus` to the operator (or the kernel's default, no spreading).
    #[serde(default)]
    pub spread_receive: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DegradedConfig {
    #[serde(default)]
    pub loss: Option<Percent>,
    #[serde(default)]
    pub latency: Option<Dur>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DownConfig {
    #[serde(default)]
    pub loss: Option<Percent>,
    /// Lost probes in a row that make a tunnel Down (BFD's detect multiplier).
    #[serde(default)]
    pub consecutive: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    #[serde(default)]
    pub interval: Option<Spanned<Dur>>,
    /// Probes per interval.
    #[serde(default)]
    pub count: Option<Spanned<u32>>,
    /// Span of the sliding window the measurements cover.
    #[serde(default)]
    pub window: Option<Dur>,
    /// A probe unanswered after this is lost.
    #[serde(default)]
    pub timeout: Option<Spanned<Dur>>,
    #[serde(default)]
    pub degraded: DegradedConfig,
    #[serde(default)]
    pub down: DownConfig,
}

/// Tunnels and probes once validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelsSettings {
    /// `tunnels.slot`, when pinned; otherwise claimed through the mesh.
    pub slot: Option<u32>,
    pub plan: PlanSettings,
    pub wireguard: WireguardMode,
    pub grace: std::time::Duration,
    /// `tunnels.spread_receive`: the tunnel manager keeps each tunnel's RPS mask.
    pub spread_receive: bool,
    pub probe_interval: std::time::Duration,
    pub probe_count: u32,
    pub probe_window: std::time::Duration,
    pub probe_timeout: std::time::Duration,
    pub thresholds: Thresholds,
}

impl TunnelsConfig {
    pub(super) fn validate(&self, probe: &ProbeConfig, c: &mut Checker) -> Option<TunnelsSettings> {
        let before = c.errors.len();
        let mut plan = PlanSettings {
            pairing: match self.pairing {
                PairingConfig::All => Pairing::All,
                PairingConfig::SameTransit => Pairing::SameTransit,
            },
            ..PlanSettings::default()
        };
        if let Some(p) = &self.pool_v4 {
            match p.value.parse::<ipnet::Ipv4Net>() {
                Ok(n) => plan.pool_v4 = n.trunc(),
                Err(_) => c.error(
                    Some(p),
                    "tunnels.pool_v4",
                    format!("{:?} is not an IPv4 prefix, e.g. 100.64.0.0/10", p.value),
                ),
            }
        }
        if let Some(p) = &self.pool_v6 {
            match p.value.parse::<ipnet::Ipv6Net>() {
                Ok(n) => plan.pool_v6 = n.trunc(),
                Err(_) => c.error(
                    Some(p),
                    "tunnels.pool_v6",
                    format!("{:?} is not an IPv6 prefix, e.g. fd5d:3a00::/64", p.value),
                ),
            }
        }
        if let Some(p) = &self.ports {
            let parsed = p.value.split_once('-').and_then(|(a, b)| {
                Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
            });
            match parsed {
                Some((a, b)) if a > 0 && a <= b => plan.ports = (a, b),
                _ => c.error(
                    Some(p),
                    "tunnels.ports",
                    format!(
                        "{:?} is not a port range first-last, e.g. 20000-59999",
                        p.value
                    ),
                ),
            }
        }
        if let Some(p) = &self.interface_prefix {
            plan.interface_prefix = p.value.clone();
        }
        if c.errors.len() == before {
            if let Err(e) = plan.validate() {
                let at = self
                    .ports
                    .as_ref()
                    .or(self.pool_v4.as_ref())
                    .or(self.interface_prefix.as_ref());
                c.error(at, "tunnels", e);
            } else if let Some(slot) = &self.slot
                && u64::from(slot.value) >= plan.max_slots()
            {
                c.error(Some(slot), "tunnels.slot", format!(
                    "{} is too large: with these pools and ports, slots go from 0 to {} (widen tunnels.pool_v4 or tunnels.ports, or leave tunnels.slot out: the gatewan then claims a free slot)",
                    slot.value, plan.max_slots() - 1));
            }
        }
        let mut t = Thresholds::default();
        if let Some(l) = probe.degraded.loss {
            t.degraded_loss = l.0;
        }
        if let Some(l) = probe.degraded.latency {
            t.degraded_latency = l.0;
        }
        if let Some(l) = probe.down.loss {
            t.down_loss = l.0;
        }
        if t.down_loss <= t.degraded_loss {
            c.error(
                None::<&Spanned<()>>,
                "probe.down.loss",
                "must be higher than probe.degraded.loss",
            );
        }
        let interval = probe
            .interval
            .as_ref()
            .map_or(std::time::Duration::from_secs(1), |d| d.value.0);
        let count = probe.count.as_ref().map_or(10, |n| n.value);
        if count == 0
            || interval.is_zero()
            || interval / count < std::time::Duration::from_millis(20)
        {
            c.error(
                probe.count.as_ref(),
                "probe.count",
                "probes must be at least 20ms apart (probe.interval / probe.count)",
            );
        }
        let window = probe.window.map_or(interval * 5, |d| d.0);
        if window < interval {
            c.error(
                None::<&Spanned<()>>,
                "probe.window",
                "must be at least one probe.interval",
            );
        }
        if let Some(n) = &probe.down.consecutive {
            t.down_consecutive = n.value;
            // A run is counted within the window, so a longer one would never be seen.
            let per_window =
                window.as_micros() * u128::from(count.max(1)) / interval.as_micros().max(1);
            if n.value == 0 {
                c.error(
                    Some(n),
                    "probe.down.consecutive",
                    "must be at least 1: the lost probes in a row that make a tunnel Down",
                );
            } else if u128::from(n.value) > per_window {
                c.error(
                    Some(n),
                    "probe.down.consecutive",
                    format!(
                        "{} is more than the {per_window} probes of one probe.window",
                        n.value
                    ),
                );
            }
        }
        let timeout = probe.timeout.as_ref().map_or(
            crate::probe::engine::ProbeSettings::default().timeout,
            |d| d.value.0,
        );
        if timeout <= t.degraded_latency || timeout > window {
            c.error(
                probe.timeout.as_ref(),
                "probe.timeout",
                format!(
                    "{timeout:?} must be longer than probe.degraded.latency ({:?}, or a slow \
                     tunnel would show as lossy instead) and at most probe.window ({window:?})",
                    t.degraded_latency
                ),
            );
        }
        if c.errors.len() > before {
            return None;
        }
        Some(TunnelsSettings {
            slot: self.slot.as_ref().map(|s| s.value),
            plan,
            wireguard: match self.wireguard {
                WireguardConfig::Kernel => WireguardMode::Kernel,
                WireguardConfig::Userspace => WireguardMode::Userspace,
                WireguardConfig::Auto => WireguardMode::Auto,
            },
            grace: self
                .grace
                .map_or(std::time::Duration::from_secs(60), |d| d.0),
            spread_receive: self.spread_receive.unwrap_or(true),
            probe_interval: interval,
            probe_count: count,
            probe_window: window,
            probe_timeout: timeout,
            thresholds: t,
        })
    }
}
