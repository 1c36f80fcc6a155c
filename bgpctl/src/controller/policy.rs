//! The controller's policy: bgpctl.yaml's `controller` section in plain units (durations
//! as [`Duration`], rates in bit/s, loss as a fraction), with its defaults and checks.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Relative weights of the score terms; each is divided by their sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub latency: f64,
    pub jitter: f64,
    pub loss: f64,
    /// Usage of the local transit interface by the tunnels to other datacenters.
    pub usage: f64,
    /// Cost of the tunnel's two transits.
    pub cost: f64,
}

impl Default for Weights {
    /// Latency, jitter and loss in Patronus's 40/30/30 proportions, then usage and cost.
    fn default() -> Self {
        Weights {
            latency: 0.4,
            jitter: 0.3,
            loss: 0.3,
            usage: 0.2,
            cost: 0.1,
        }
    }
}

impl Weights {
    /// In the order of [`crate::controller::ScoreTerms`], divided by their sum; all zero
    /// when the sum is not positive (then every healthy tunnel scores 0 and the tunnel id
    /// alone ranks them).
    pub(crate) fn normalised(&self) -> [f64; 5] {
        let w = [self.latency, self.jitter, self.loss, self.usage, self.cost];
        let w = w.map(|x| if x.is_finite() && x > 0.0 { x } else { 0.0 });
        let sum: f64 = w.iter().sum();
        if sum > 0.0 {
            w.map(|x| x / sum)
        } else {
            [0.0; 5]
        }
    }
}

/// Capacity each remote datacenter needs, in bit/s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredCapacity {
    pub default_bps: u64,
    /// Per remote datacenter name, overriding the default.
    pub datacenters: BTreeMap<String, u64>,
}

impl Default for RequiredCapacity {
    fn default() -> Self {
        RequiredCapacity {
            default_bps: 1_000_000_000,
            datacenters: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub weights: Weights,
    /// Tunnels with more loss (a fraction, 0.02 = 2 %) are not candidates.
    pub max_loss: f64,
    /// Tunnels with a longer round-trip time are not candidates. Also the scale of the
    /// latency and jitter terms: both are time, so a millisecond of jitter weighs
    /// `weights.jitter / weights.latency` times a millisecond of latency.
    pub max_latency: Duration,
    pub required_capacity: RequiredCapacity,
    pub min_tunnels: u32,
    pub max_tunnels: u32,
    /// How long a better choice must hold before the chosen tunnels change for it, and how
    /// long a tunnel that was unhealthy must stay healthy before it is chosen again when
    /// it is not needed.
    pub hold_down: Duration,
    /// How long the chosen tunnels to a datacenter stay advertised when none of its
    /// tunnels is healthy (0: withdrawn at once). A restarting gatewan stops answering
    /// probes while the kernel and WireGuard still carry its traffic; withdrawing would
    /// turn that blind moment into an outage. A failure that lasts longer is withdrawn,
    /// so a fabric with another path to that datacenter can use it.
    pub hold_when_none_healthy: Duration,
    /// Relative score improvement a tunnel needs to replace a chosen one (0.1 = 10 %).
    pub margin: f64,
    /// Give each chosen tunnel a weight for the link-bandwidth extended community; when
    /// false every weight is 0 and the type-5 routes carry no community.
    pub link_bandwidth: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            weights: Weights::default(),
            max_loss: 0.02,
            max_latency: Duration::from_millis(300),
            required_capacity: RequiredCapacity::default(),
            min_tunnels: 2,
            max_tunnels: 8,
            hold_down: Duration::from_secs(30),
            hold_when_none_healthy: Duration::from_secs(10),
            margin: 0.1,
            link_bandwidth: false,
        }
    }
}

/// A policy value that cannot work, named by its bgpctl.yaml field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// e.g. `controller.max_loss`
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// The capacity a remote datacenter needs.
    pub fn required_bps(&self, datacenter: &str) -> u64 {
        self.required_capacity
            .datacenters
            .get(datacenter)
            .copied()
            .unwrap_or(self.required_capacity.default_bps)
    }

    /// Every problem at once, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<PolicyError>> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(PolicyError {
                field: format!("controller.{field}"),
                message,
            })
        };
        let w = &self.weights;
        let mut any_positive = false;
        for (name, v) in [
            ("latency", w.latency),
            ("jitter", w.jitter),
            ("loss", w.loss),
            ("usage", w.usage),
            ("cost", w.cost),
        ] {
            if !v.is_finite() || v < 0.0 {
                err(
                    &format!("weights.{name}"),
                    format!("{v} is not a weight: use a number ≥ 0"),
                );
            } else if v > 0.0 {
                any_positive = true;
            }
        }
        if !any_positive {
            err(
                "weights",
                "at least one weight must be above 0, or every tunnel scores the same".into(),
            );
        }
        if !self.max_loss.is_finite() || !(0.0..=1.0).contains(&self.max_loss) {
            err(
                "max_loss",
                format!("{} is not a loss fraction from 0 to 1", self.max_loss),
            );
        }
        if self.max_latency.is_zero() {
            err(
                "max_latency",
                "must be above 0: no tunnel has a round-trip time of 0".into(),
            );
        }
        if self.min_tunnels == 0 {
            err(
                "min_tunnels",
                "must be at least 1, or no tunnel carries traffic".into(),
            );
        }
        if self.max_tunnels == 0 {
            err("max_tunnels", "must be at least 1".into());
        } else if self.max_tunnels < self.min_tunnels {
            err(
                "max_tunnels",
                format!(
                    "{} is below min_tunnels ({})",
                    self.max_tunnels, self.min_tunnels
                ),
            );
        }
        if !self.margin.is_finite() || !(0.0..1.0).contains(&self.margin) {
            err(
                "margin",
                format!(
                    "{} is not a fraction from 0 to below 1 (0.1 = 10 %)",
                    self.margin
                ),
            );
        }
        for dc in self.required_capacity.datacenters.keys() {
            if dc.trim().is_empty() {
                err(
                    "required_capacity.datacenters",
                    "a datacenter name is empty".into(),
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
