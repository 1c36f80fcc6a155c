//! `bgpctl.yaml`: parsing and validation. The `mesh`, `api`, `metrics` and `log` sections
//! are the gatewan's (`gatewan::config`); errors name the file, the line and the field.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use gatewan_kit::config::{
    ApiConfig, ApiSettings, Checker, ConfigError, LogConfig, LogFormat, MeshConfig,
    MeshMemberSettings, MetricsConfig, check_name, parse_file,
};
use gatewan_kit::units::{Dur, Percent, Rate};
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::bgp::{
    GracefulRestart, ImportPrefixes, MaxPrefixAction, MaxPrefixes, PeerSettings, PrefixRule,
    RouteTarget, SpeakerSettings,
};
use crate::controller::{Policy, RequiredCapacity, Weights};

/// Where routingctl finds bgpctl: `routingctl --socket /run/bgpctl/bgpctl.sock …`.
pub const DEFAULT_API_SOCKET: &str = "/run/bgpctl/bgpctl.sock";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpctlConfig {
    pub name: Spanned<String>,
    pub datacenter: Spanned<String>,
    pub state_dir: PathBuf,
    pub mesh: MeshConfig,
    pub bgp: BgpConfig,
    pub evpn: EvpnConfig,
    #[serde(default)]
    pub controller: ControllerConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    pub asn: Spanned<u32>,
    pub router_id: Spanned<String>,
    /// Passive listener, e.g. `"[::]:179"`; none by default (sessions are active).
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub graceful_restart: Option<GracefulRestartConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub address: Spanned<String>,
    pub asn: Spanned<u32>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub passive: bool,
    #[serde(default)]
    pub hold_time: Option<Spanned<Dur>>,
    /// Source address of the session (active side).
    #[serde(default)]
    pub local_address: Option<Spanned<String>>,
    /// How many routes the peer may send (FRR's `neighbor maximum-prefix`).
    #[serde(default)]
    pub max_prefixes: Option<MaxPrefixesConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxPrefixesConfig {
    pub limit: Spanned<u32>,
    /// `warn`, `stop-learning` or `teardown`.
    pub action: Spanned<String>,
    /// Default 75.
    #[serde(default)]
    pub warning_threshold_percent: Option<Spanned<u32>>,
    /// Teardown only: how long the session stays Idle (default: until bgpctl restarts).
    #[serde(default)]
    pub restart_after: Option<Spanned<Dur>>,
}

/// One `evpn.import_prefixes` entry (FRR prefix-list semantics).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixRuleConfig {
    pub prefix: Spanned<String>,
    #[serde(default)]
    pub ge: Option<Spanned<u32>>,
    #[serde(default)]
    pub le: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinPrefixLengthConfig {
    #[serde(default)]
    pub ipv4: Option<Spanned<u32>>,
    #[serde(default)]
    pub ipv6: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GracefulRestartConfig {
    pub restart_time: Spanned<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvpnConfig {
    /// The L3 VNI: label of the advertised type-5 routes.
    pub vni: Spanned<u32>,
    pub route_targets: RouteTargetsConfig,
    /// Add the link-bandwidth extended community (weighted ECMP by tunnel headroom).
    #[serde(default)]
    pub link_bandwidth: bool,
    /// Allow-list of received prefixes; absent: any but default routes and prefixes
    /// shorter than `min_prefix_length`.
    #[serde(default)]
    pub import_prefixes: Option<Vec<PrefixRuleConfig>>,
    /// Shortest prefixes imported without `import_prefixes` (default IPv4 /8, IPv6 /16).
    #[serde(default)]
    pub min_prefix_length: Option<MinPrefixLengthConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTargetsConfig {
    /// Received type-5 routes carrying one of these become the datacenter's networks;
    /// empty takes every route.
    #[serde(default)]
    pub import: Vec<Spanned<String>>,
    pub export: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    #[serde(default)]
    pub weights: Option<WeightsConfig>,
    #[serde(default)]
    pub max_loss: Option<Spanned<Percent>>,
    #[serde(default)]
    pub max_latency: Option<Spanned<Dur>>,
    #[serde(default)]
    pub required_capacity: Option<RequiredCapacityConfig>,
    #[serde(default)]
    pub min_tunnels: Option<u32>,
    #[serde(default)]
    pub max_tunnels: Option<u32>,
    #[serde(default)]
    pub hold_down: Option<Spanned<Dur>>,
    /// How long chosen tunnels stay advertised when none to their datacenter is healthy.
    #[serde(default)]
    pub hold_when_none_healthy: Option<Spanned<Dur>>,
    /// Improvement a tunnel needs over a chosen one to replace it, e.g. `10%`.
    #[serde(default)]
    pub margin: Option<Spanned<Percent>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsConfig {
    #[serde(default)]
    pub latency: Option<f64>,
    #[serde(default)]
    pub jitter: Option<f64>,
    #[serde(default)]
    pub loss: Option<f64>,
    #[serde(default)]
    pub usage: Option<f64>,
    #[serde(default)]
    pub cost: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredCapacityConfig {
    #[serde(default)]
    pub default: Option<Rate>,
    #[serde(default)]
    pub datacenters: BTreeMap<String, Rate>,
}

/// Everything the daemon needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct BgpctlSettings {
    /// The file the settings were read from: SIGHUP reads it again.
    pub config_file: PathBuf,
    pub name: String,
    pub datacenter: String,
    pub state_dir: PathBuf,
    pub mesh: MeshMemberSettings,
    pub speaker: SpeakerSettings,
    pub vni: u32,
    pub export_route_targets: Vec<RouteTarget>,
    pub link_bandwidth: bool,
    pub policy: Policy,
    pub api: ApiSettings,
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub log_level: Option<String>,
}

fn route_targets(c: &mut Checker, list: &[Spanned<String>], field: &str) -> Vec<RouteTarget> {
    let mut out = Vec::new();
    for (i, rt) in list.iter().enumerate() {
        match rt.value.parse::<RouteTarget>() {
            Ok(r) => out.push(r),
            Err(e) => c.error(
                Some(rt),
                format!("{field}[{i}]"),
                format!("{e} (write ASN:NN or IP:NN, e.g. 65000:100)"),
            ),
        }
    }
    out
}

fn max_prefixes(c: &mut Checker, m: &MaxPrefixesConfig, field: &str) -> Option<MaxPrefixes> {
    let errors = c.errors.len();
    if m.limit.value == 0 {
        c.error(
            Some(&m.limit),
            format!("{field}.limit"),
            "must be at least 1",
        );
    }
    let threshold = m.warning_threshold_percent.as_ref().map_or(75, |t| t.value);
    if !(1..=100).contains(&threshold) {
        c.error(
            m.warning_threshold_percent.as_ref(),
            format!("{field}.warning_threshold_percent"),
            "a percentage of the limit, 1 to 100",
        );
    }
    let restart_after = m.restart_after.as_ref().map(|r| r.value.0);
    let action = match m.action.value.as_str() {
        "warn" => MaxPrefixAction::Warn,
        "stop-learning" => MaxPrefixAction::StopLearning,
        "teardown" => MaxPrefixAction::Teardown { restart_after },
        other => {
            c.error(
                Some(&m.action),
                format!("{field}.action"),
                format!("{other:?} is not warn, stop-learning or teardown"),
            );
            MaxPrefixAction::Warn
        }
    };
    if let Some(r) = &m.restart_after {
        if !matches!(action, MaxPrefixAction::Teardown { .. }) {
            c.error(
                Some(r),
                format!("{field}.restart_after"),
                "only with action: teardown",
            );
        } else if r.value.0.is_zero() {
            c.error(
                Some(r),
                format!("{field}.restart_after"),
                "must be greater than zero (leave it out to stay Idle until bgpctl restarts)",
            );
        }
    }
    (c.errors.len() == errors).then_some(MaxPrefixes {
        limit: m.limit.value,
        action,
        warning_threshold_percent: threshold as u8,
    })
}

fn import_prefixes(c: &mut Checker, e: &EvpnConfig) -> ImportPrefixes {
    let mut out = ImportPrefixes::default();
    if let Some(m) = &e.min_prefix_length {
        for (v, max, slot, name) in [
            (&m.ipv4, 32, &mut out.min_length.ipv4, "ipv4"),
            (&m.ipv6, 128, &mut out.min_length.ipv6, "ipv6"),
        ] {
            if let Some(v) = v {
                match u8::try_from(v.value).ok().filter(|&l| u32::from(l) <= max) {
                    Some(l) => *slot = l,
                    None => c.error(
                        Some(v),
                        format!("evpn.min_prefix_length.{name}"),
                        format!("a prefix length, 0 to {max}"),
                    ),
                }
            }
        }
    }
    let Some(list) = &e.import_prefixes else {
        return out;
    };
    if list.is_empty() {
        c.error(
            None::<&Spanned<()>>,
            "evpn.import_prefixes",
            "an empty list would import nothing: list prefixes, or leave the key out to import \
             any prefix at least evpn.min_prefix_length long",
        );
    }
    for (i, r) in list.iter().enumerate() {
        let field = |f: &str| format!("evpn.import_prefixes[{i}].{f}");
        let prefix = match r.prefix.value.parse::<ipnet::IpNet>() {
            Ok(p) if p.trunc() == p => p,
            Ok(p) => {
                c.error(
                    Some(&r.prefix),
                    field("prefix"),
                    format!(
                        "{:?} has host bits set: write {}",
                        r.prefix.value,
                        p.trunc()
                    ),
                );
                continue;
            }
            Err(_) => {
                c.error(
                    Some(&r.prefix),
                    field("prefix"),
                    format!("{:?} is not a prefix, e.g. 10.0.0.0/8", r.prefix.value),
                );
                continue;
            }
        };
        let max = u32::from(prefix.max_prefix_len());
        let len = u32::from(prefix.prefix_len());
        let mut bound = |v: &Option<Spanned<u32>>, name: &str| -> u8 {
            let Some(v) = v else {
                return prefix.prefix_len();
            };
            if !(len..=max).contains(&v.value) {
                c.error(
                    Some(v),
                    field(name),
                    format!("{} is outside {len} to {max} (the prefix's length to the family's longest)", v.value),
                );
                return prefix.prefix_len();
            }
            v.value as u8
        };
        let ge = bound(&r.ge, "ge");
        // Only ge given: up to the family's longest, as in FRR.
        let le = match (&r.ge, &r.le) {
            (Some(_), None) => prefix.max_prefix_len(),
            _ => bound(&r.le, "le"),
        };
        if ge > le {
            c.error(
                r.ge.as_ref(),
                field("ge"),
                format!("ge {ge} is greater than le {le}"),
            );
        }
        out.allow.push(PrefixRule { prefix, ge, le });
    }
    out
}

impl BgpctlConfig {
    pub fn load(path: &Path) -> Result<BgpctlSettings, Vec<ConfigError>> {
        let cfg: BgpctlConfig = parse_file(path)?;
        cfg.validate(path)
    }

    pub fn validate(&self, path: &Path) -> Result<BgpctlSettings, Vec<ConfigError>> {
        let mut c = Checker::new(path);
        check_name(&mut c, &self.name, "name");
        check_name(&mut c, &self.datacenter, "datacenter");
        let b = &self.bgp;
        if b.asn.value == 0 {
            c.error(Some(&b.asn), "bgp.asn", "0 is not an AS number");
        }
        let router_id = b.router_id.value.parse::<Ipv4Addr>().unwrap_or_else(|_| {
            c.error(
                Some(&b.router_id),
                "bgp.router_id",
                format!(
                    "{:?} is not an IPv4 address (the BGP identifier)",
                    b.router_id.value
                ),
            );
            Ipv4Addr::UNSPECIFIED
        });
        let listen = b
            .listen
            .as_ref()
            .and_then(|l| match l.value.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.error(
                        Some(l),
                        "bgp.listen",
                        format!("{:?} is not ip:port, e.g. \"[::]:179\"", l.value),
                    );
                    None
                }
            });
        if b.peers.is_empty() {
            c.error(
                None::<&Spanned<()>>,
                "bgp.peers",
                "list at least one BGP peer (the fabric's route reflectors)",
            );
        }
        let mut peers = Vec::new();
        for (i, p) in b.peers.iter().enumerate() {
            let field = |f: &str| format!("bgp.peers[{i}].{f}");
            let Ok(address) = p.address.value.parse::<IpAddr>() else {
                c.error(
                    Some(&p.address),
                    field("address"),
                    format!("{:?} is not an IP address", p.address.value),
                );
                continue;
            };
            if peers.iter().any(|x: &PeerSettings| x.address == address) {
                c.error(
                    Some(&p.address),
                    field("address"),
                    "this peer is listed twice",
                );
            }
            let mut s = PeerSettings::new(address, p.asn.value);
            if p.asn.value == 0 {
                c.error(Some(&p.asn), field("asn"), "0 is not an AS number");
            }
            if let Some(pw) = &p.password {
                if pw.is_empty() || pw.len() > 80 {
                    c.error(
                        None::<&Spanned<()>>,
                        field("password"),
                        "a TCP-MD5 password has 1 to 80 characters",
                    );
                }
                s.password = Some(pw.clone());
            }
            s.passive = p.passive;
            if let Some(h) = &p.hold_time {
                let secs = h.value.0.as_secs();
                if secs != 0 && !(3..=65535).contains(&secs) {
                    c.error(
                        Some(h),
                        field("hold_time"),
                        "0 (no keepalives) or 3s to 65535s",
                    );
                }
                s.hold_time = h.value.0;
            }
            if let Some(l) = &p.local_address {
                match l.value.parse::<IpAddr>() {
                    Ok(a) => s.local_address = Some(a),
                    Err(_) => c.error(
                        Some(l),
                        field("local_address"),
                        format!("{:?} is not an IP address", l.value),
                    ),
                }
            }
            if let Some(m) = &p.max_prefixes {
                s.max_prefixes = max_prefixes(&mut c, m, &field("max_prefixes"));
            }
            if s.passive && listen.is_none() {
                c.error(
                    Some(&p.address),
                    field("passive"),
                    "a passive peer needs bgp.listen, e.g. \"[::]:179\"",
                );
            }
            peers.push(s);
        }
        let graceful_restart = b.graceful_restart.as_ref().map(|g| {
            let t = g.restart_time.value.0;
            if t.as_secs() == 0 || t.as_secs() > 4095 {
                c.error(
                    Some(&g.restart_time),
                    "bgp.graceful_restart.restart_time",
                    "1s to 4095s (RFC 4724 has 12 bits for it)",
                );
            }
            GracefulRestart { restart_time: t }
        });
        let e = &self.evpn;
        if e.vni.value == 0 || e.vni.value >= 1 << 24 {
            c.error(Some(&e.vni), "evpn.vni", "a VNI is 1 to 16777215");
        }
        let import = route_targets(&mut c, &e.route_targets.import, "evpn.route_targets.import");
        let export = route_targets(&mut c, &e.route_targets.export, "evpn.route_targets.export");
        if e.route_targets.export.is_empty() {
            c.error(
                None::<&Spanned<()>>,
                "evpn.route_targets.export",
                "list at least one route target for the advertised routes",
            );
        }
        let import_prefixes = import_prefixes(&mut c, e);
        let policy = self.policy(&mut c, e.link_bandwidth);
        // Passive: see `MeshConfig::passive`.
        let mesh = self.mesh.validate(&mut c, &[], true);
        let api = self.api.validate(&mut c, DEFAULT_API_SOCKET);
        let metrics_listen = self.metrics.validate(&mut c);
        c.finish()?;
        Ok(BgpctlSettings {
            config_file: path.to_path_buf(),
            name: self.name.value.clone(),
            datacenter: self.datacenter.value.clone(),
            state_dir: self.state_dir.clone(),
            mesh: mesh.expect("mesh settings exist when there is no error"),
            speaker: SpeakerSettings {
                asn: b.asn.value,
                router_id,
                listen,
                peers,
                graceful_restart,
                import_route_targets: import,
                import_prefixes,
            },
            vni: e.vni.value,
            export_route_targets: export,
            link_bandwidth: e.link_bandwidth,
            policy,
            api,
            metrics_listen,
            log_format: self.log.format,
            log_level: self.log.level.clone(),
        })
    }

    fn policy(&self, c: &mut Checker, link_bandwidth: bool) -> Policy {
        let k = &self.controller;
        let mut p = Policy {
            link_bandwidth,
            ..Policy::default()
        };
        if let Some(w) = &k.weights {
            let d = Weights::default();
            p.weights = Weights {
                latency: w.latency.unwrap_or(d.latency),
                jitter: w.jitter.unwrap_or(d.jitter),
                loss: w.loss.unwrap_or(d.loss),
                usage: w.usage.unwrap_or(d.usage),
                cost: w.cost.unwrap_or(d.cost),
            };
        }
        if let Some(v) = &k.max_loss {
            p.max_loss = v.value.0;
        }
        if let Some(v) = &k.max_latency {
            p.max_latency = v.value.0;
        }
        if let Some(r) = &k.required_capacity {
            p.required_capacity = RequiredCapacity {
                default_bps: r.default.map_or(p.required_capacity.default_bps, |x| x.0),
                datacenters: r
                    .datacenters
                    .iter()
                    .map(|(k, v)| (k.clone(), v.0))
                    .collect(),
            };
        }
        if let Some(v) = k.min_tunnels {
            p.min_tunnels = v;
        }
        if let Some(v) = k.max_tunnels {
            p.max_tunnels = v;
        }
        if let Some(v) = &k.hold_down {
            p.hold_down = v.value.0;
        }
        if let Some(v) = &k.hold_when_none_healthy {
            p.hold_when_none_healthy = v.value.0;
        }
        if let Some(v) = &k.margin {
            p.margin = v.value.0;
        }
        if let Err(errors) = p.validate() {
            for e in errors {
                c.error(None::<&Spanned<()>>, e.field, e.message);
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn load(text: &str) -> Result<BgpctlSettings, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bgpctl.yaml");
        std::fs::write(&p, text).unwrap();
        BgpctlConfig::load(&p)
    }

    const GOOD: &str = "name: bgpctl-sg1
datacenter: sg1
state_dir: /var/lib/bgpctl
mesh:
  bind: \"10.1.255.21:7946\"
  seeds: [\"10.1.255.11:7946\"]
  keyring: /etc/gatewan/keyring
bgp:
  asn: 65001
  router_id: 10.1.255.21
  peers:
    - address: 10.1.255.2
      asn: 65001
      password: s3cret
  graceful_restart:
    restart_time: 120s
evpn:
  vni: 10100
  route_targets:
    import: [\"65001:100\"]
    export: [\"65001:100\"]
controller:
  max_loss: 2%
  required_capacity:
    default: 1Gbps
    datacenters:
      par1: 2Gbps
";

    #[test]
    fn a_good_file_plans() {
        let p = load(GOOD).expect("valid");
        assert_eq!(p.speaker.asn, 65001);
        assert_eq!(p.speaker.peers[0].password.as_deref(), Some("s3cret"));
        assert_eq!(p.vni, 10100);
        assert_eq!(p.policy.required_bps("par1"), 2_000_000_000);
        assert_eq!(p.policy.required_bps("iad1"), 1_000_000_000);
        assert_eq!(p.api.socket, PathBuf::from(DEFAULT_API_SOCKET));
        // A bgpctl is a passive mesh member unless told otherwise.
        assert!(p.mesh.settings.passive);
        let active = load(&GOOD.replace("mesh:\n", "mesh:\n  passive: false\n")).expect("valid");
        assert!(!active.mesh.settings.passive);
    }

    #[test]
    fn errors_name_line_and_field() {
        let bad = GOOD
            .replace("router_id: 10.1.255.21", "router_id: fe80::1")
            .replace("vni: 10100", "vni: 99999999")
            .replace("export: [\"65001:100\"]", "export: [\"nonsense\"]");
        let errors = load(&bad).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(has(":10: bgp.router_id"), "{text:?}");
        assert!(has(":18: evpn.vni"), "{text:?}");
        assert!(has("evpn.route_targets.export[0]"), "{text:?}");
    }

    #[test]
    fn tcp_api_needs_mutual_tls() {
        let errors = load(&format!("{GOOD}api:\n  listen: \"[::]:7948\"\n")).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.contains(":29: api.tls:") && t.contains("mutual TLS")),
            "{text:?}"
        );
    }

    #[test]
    fn hold_when_none_healthy_is_10s_unless_set() {
        let p = load(GOOD).expect("valid");
        assert_eq!(p.policy.hold_when_none_healthy, Duration::from_secs(10));
        let p = load(&GOOD.replace(
            "controller:\n",
            "controller:\n  hold_when_none_healthy: 0s\n",
        ))
        .expect("valid");
        assert_eq!(p.policy.hold_when_none_healthy, Duration::ZERO);
    }

    #[test]
    fn the_documented_example_loads() {
        let example = include_str!("../../docs/examples/bgpctl.yaml");
        let p = load(example).unwrap_or_else(|e| panic!("docs/examples/bgpctl.yaml: {e:?}"));
        assert_eq!(p.policy.hold_when_none_healthy, Duration::from_secs(10));
        assert_eq!(p.policy.hold_down, Duration::from_secs(30));
    }

    #[test]
    fn import_prefixes_and_max_prefixes_load() {
        let text = GOOD
            .replace(
                "      password: s3cret\n",
                "      password: s3cret\n      max_prefixes:\n        limit: 1000\n        action: teardown\n        restart_after: 5m\n",
            )
            .replace(
                "  vni: 10100\n",
                "  vni: 10100\n  import_prefixes:\n    - prefix: 10.0.0.0/8\n      le: 24\n    - prefix: 0.0.0.0/0\n    - prefix: 2001:db8::/32\n      ge: 48\n  min_prefix_length:\n    ipv4: 12\n",
            );
        let p = load(&text).expect("valid");
        let rules = &p.speaker.import_prefixes.allow;
        assert_eq!(rules.len(), 3);
        assert_eq!((rules[0].ge, rules[0].le), (8, 24));
        assert_eq!((rules[1].ge, rules[1].le), (0, 0));
        assert_eq!((rules[2].ge, rules[2].le), (48, 128));
        assert_eq!(p.speaker.import_prefixes.min_length.ipv4, 12);
        assert_eq!(p.speaker.import_prefixes.min_length.ipv6, 16);
        let m = p.speaker.peers[0].max_prefixes.expect("max_prefixes");
        assert_eq!(m.limit, 1000);
        assert_eq!(m.warning_threshold_percent, 75);
        assert_eq!(
            m.action,
            MaxPrefixAction::Teardown {
                restart_after: Some(Duration::from_secs(300))
            }
        );
        // Without the keys: no list, the default minimum lengths, no limit.
        let p = load(GOOD).expect("valid");
        assert!(p.speaker.import_prefixes.allow.is_empty());
        assert_eq!(
            p.speaker.import_prefixes.min_length,
            crate::bgp::MinPrefixLength::default()
        );
        assert!(p.speaker.peers[0].max_prefixes.is_none());
    }

    #[test]
    fn bad_import_prefixes_and_max_prefixes_name_their_field() {
        let text = GOOD
            .replace(
                "      password: s3cret\n",
                "      password: s3cret\n      max_prefixes:\n        limit: 0\n        action: stop-learning\n        warning_threshold_percent: 150\n        restart_after: 5m\n",
            )
            .replace(
                "  vni: 10100\n",
                "  vni: 10100\n  import_prefixes:\n    - prefix: 10.0.0.1/8\n    - prefix: 10.0.0.0/8\n      ge: 24\n      le: 16\n    - prefix: 10.0.0.0/16\n      le: 33\n    - prefix: nonsense\n  min_prefix_length:\n    ipv6: 129\n",
            );
        let errors = load(&text).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(has("bgp.peers[0].max_prefixes.limit"), "{text:?}");
        assert!(
            has("bgp.peers[0].max_prefixes.warning_threshold_percent"),
            "{text:?}"
        );
        assert!(
            has("bgp.peers[0].max_prefixes.restart_after: only with action: teardown"),
            "{text:?}"
        );
        assert!(
            has(
                "evpn.import_prefixes[0].prefix: \"10.0.0.1/8\" has host bits set: write 10.0.0.0/8"
            ),
            "{text:?}"
        );
        assert!(
            has("evpn.import_prefixes[1].ge: ge 24 is greater than le 16"),
            "{text:?}"
        );
        assert!(
            has("evpn.import_prefixes[2].le: 33 is outside 16 to 32"),
            "{text:?}"
        );
        assert!(has("evpn.import_prefixes[3].prefix"), "{text:?}");
        assert!(has("evpn.min_prefix_length.ipv6"), "{text:?}");
        let bad_action = GOOD.replace(
            "      password: s3cret\n",
            "      password: s3cret\n      max_prefixes:\n        limit: 10\n        action: shutdown\n",
        );
        let errors = load(&bad_action).unwrap_err();
        assert!(
            errors[0]
                .to_string()
                .contains("bgp.peers[0].max_prefixes.action"),
            "{errors:?}"
        );
    }

    #[test]
    fn mesh_record_bounds_default_and_load() {
        let p = load(GOOD).expect("valid");
        assert_eq!(p.mesh.settings.max_records_per_origin, 4096);
        assert_eq!(
            p.mesh.settings.departed_record_ttl,
            Duration::from_secs(86400)
        );
        let text = GOOD.replace(
            "mesh:\n",
            "mesh:\n  max_records_per_origin: 100\n  departed_record_ttl: 10m\n",
        );
        let p = load(&text).expect("valid");
        assert_eq!(p.mesh.settings.max_records_per_origin, 100);
        assert_eq!(
            p.mesh.settings.departed_record_ttl,
            Duration::from_secs(600)
        );
        let bad = GOOD.replace(
            "mesh:\n",
            "mesh:\n  max_records_per_origin: 0\n  departed_record_ttl: 0s\n",
        );
        let text: Vec<String> = load(&bad)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            text.iter()
                .any(|t| t.contains("mesh.max_records_per_origin")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("mesh.departed_record_ttl")),
            "{text:?}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let errors = load(&GOOD.replace(
            "  asn: 65001\n  router_id",
            "  asn: 65001\n  routerid: 1.1.1.1\n  router_id",
        ))
        .unwrap_err();
        assert!(errors[0].to_string().contains("routerid"), "{errors:?}");
    }
}
