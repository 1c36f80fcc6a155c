//! The `mesh` section: how this member joins the gossip mesh.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Checker, DEFAULT_MESH_PORT};
use crate::units::Dur;
use gatewan_mesh::MeshSettings;
use gatewan_mesh::identity::MAX_MESH_ADDRESSES;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// Address the gossip socket binds; `[::]:7946` takes IPv4 and IPv6.
    #[serde(default)]
    pub bind: Option<Spanned<String>>,
    /// Addresses announced to the mesh, one per transit; default: every transit address
    /// (and a gatewan's fabric VTEP) with the bind port.
    #[serde(default)]
    pub advertise: Vec<Spanned<String>>,
    #[serde(default)]
    pub seeds: Vec<Spanned<String>>,
    /// File of base64 keys, one per line, the first is primary (`gatewan keygen` makes one).
    pub keyring: Spanned<PathBuf>,
    #[serde(default)]
    pub probe_interval: Option<Spanned<Dur>>,
    #[serde(default)]
    pub probe_timeout: Option<Spanned<Dur>>,
    #[serde(default)]
    pub suspicion_timeout: Option<Spanned<Dur>>,
    #[serde(default)]
    pub gossip_interval: Option<Spanned<Dur>>,
    #[serde(default)]
    pub sync_interval: Option<Spanned<Dur>>,
    /// Probe no one (never suspect nor declare anyone down); others still probe us.
    /// Default: false for a gatewan, true for a bgpctl (on its fabric it reaches only its
    /// own datacenter's gatewans).
    #[serde(default)]
    pub passive: Option<bool>,
    /// Records one member may hold in the mesh (default 4096); new ones beyond are refused.
    #[serde(default)]
    pub max_records_per_origin: Option<Spanned<u64>>,
    /// Records of a member gone this long are removed (default 24h).
    #[serde(default)]
    pub departed_record_ttl: Option<Spanned<Dur>>,
    /// Key fingerprints (16 hex digits, as `routingctl members` shows them) of the members
    /// that may ask this one for keyring changes; empty: any member may.
    #[serde(default)]
    pub admins: Vec<Spanned<String>>,
}

/// The mesh section once validated.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshMemberSettings {
    pub bind: SocketAddr,
    pub advertise: Vec<SocketAddr>,
    pub seeds: Vec<SocketAddr>,
    pub keyring_file: PathBuf,
    pub settings: MeshSettings,
}

impl MeshConfig {
    /// Validates the section. `default_advertise` are the addresses announced (with the
    /// bind port) when `mesh.advertise` is left out; `passive` the default of
    /// `mesh.passive`.
    pub fn validate(
        &self,
        c: &mut Checker,
        default_advertise: &[IpAddr],
        passive: bool,
    ) -> Option<MeshMemberSettings> {
        let errors_before = c.errors.len();
        let bind = match &self.bind {
            None => SocketAddr::from(([0u16; 8], DEFAULT_MESH_PORT)),
            Some(b) => match b.value.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    c.error(
                        Some(b),
                        "mesh.bind",
                        format!("{:?} is not ip:port, e.g. \"[::]:7946\"", b.value),
                    );
                    SocketAddr::from(([0u16; 8], DEFAULT_MESH_PORT))
                }
            },
        };
        let mut advertise = Vec::new();
        for (i, a) in self.advertise.iter().enumerate() {
            match parse_addr(&a.value, bind.port()) {
                Some(sa) if !sa.ip().is_unspecified() => advertise.push(sa),
                _ => c.error(
                    Some(a),
                    format!("mesh.advertise[{i}]"),
                    format!("{:?} is not a routable ip or ip:port", a.value),
                ),
            }
        }
        if self.advertise.is_empty() {
            advertise = default_advertise
                .iter()
                .map(|ip| SocketAddr::new(*ip, bind.port()))
                .collect();
            if advertise.is_empty() {
                if bind.ip().is_unspecified() {
                    c.error(None::<&Spanned<()>>, "mesh.advertise", "no transit address to announce: list the gossip addresses in mesh.advertise or give transits addresses");
                } else {
                    advertise.push(bind);
                }
            }
        }
        if advertise.len() > MAX_MESH_ADDRESSES {
            if self.advertise.is_empty() {
                c.error(
                    None::<&Spanned<()>>,
                    "mesh.advertise",
                    format!(
                        "left out, it is every transit address (and a gatewan's fabric VTEP): {} addresses, at most {MAX_MESH_ADDRESSES}: list those to announce in mesh.advertise",
                        advertise.len()
                    ),
                );
            } else {
                c.error(
                    self.advertise.first(),
                    "mesh.advertise",
                    format!("at most {MAX_MESH_ADDRESSES} addresses"),
                );
            }
        }
        let mut seeds = Vec::new();
        for (i, s) in self.seeds.iter().enumerate() {
            match resolve(&s.value, DEFAULT_MESH_PORT) {
                Ok(mut a) => seeds.append(&mut a),
                Err(e) => c.error(Some(s), format!("mesh.seeds[{i}]"), e),
            }
        }
        let mut settings = MeshSettings::default();
        let set = |v: &Option<Spanned<Dur>>, slot: &mut std::time::Duration| {
            if let Some(d) = v {
                *slot = d.value.0;
            }
        };
        set(&self.probe_interval, &mut settings.probe_interval);
        set(&self.probe_timeout, &mut settings.probe_timeout);
        set(&self.suspicion_timeout, &mut settings.suspicion_timeout);
        set(&self.gossip_interval, &mut settings.gossip_interval);
        set(&self.sync_interval, &mut settings.sync_interval);
        settings.passive = self.passive.unwrap_or(passive);
        if let Some(m) = &self.max_records_per_origin {
            match usize::try_from(m.value)
                .ok()
                .filter(|&n| (1..=1 << 20).contains(&n))
            {
                Some(n) => settings.max_records_per_origin = n,
                None => c.error(
                    Some(m),
                    "mesh.max_records_per_origin",
                    "1 to 1048576 records",
                ),
            }
        }
        if let Some(t) = &self.departed_record_ttl {
            if t.value.0 < std::time::Duration::from_secs(1) {
                c.error(
                    Some(t),
                    "mesh.departed_record_ttl",
                    "at least 1s (a member is only declared down after its suspicion timeout)",
                );
            }
            settings.departed_record_ttl = t.value.0;
        }
        for (i, a) in self.admins.iter().enumerate() {
            let fp = a.value.trim().to_ascii_lowercase();
            if fp.len() == 16 && fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                settings.admins.push(fp);
            } else {
                c.error(
                    Some(a),
                    format!("mesh.admins[{i}]"),
                    format!(
                        "{:?} is not a member key fingerprint: 16 hex digits, as the KEY column of `routingctl members` shows",
                        a.value
                    ),
                );
            }
        }
        if settings.sync_interval.is_zero() {
            c.error(
                self.sync_interval.as_ref(),
                "mesh.sync_interval",
                "must be greater than zero",
            );
        }
        if let Err(e) = gatewan_mesh::MeshCore::check_settings(&settings) {
            c.error(self.probe_interval.as_ref(), "mesh", e);
        }
        if c.errors.len() > errors_before {
            return None;
        }
        Some(MeshMemberSettings {
            bind,
            advertise,
            seeds,
            keyring_file: self.keyring.value.clone(),
            settings,
        })
    }
}

fn parse_addr(s: &str, default_port: u16) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default_port))
    })
}

fn resolve(s: &str, default_port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Some(a) = parse_addr(s, default_port) {
        return Ok(vec![a]);
    }
    let with_port = if s
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        s.to_string()
    } else {
        format!("{s}:{default_port}")
    };
    with_port
        .to_socket_addrs()
        .map(|a| a.collect())
        .map_err(|e| format!("{s:?} is neither ip:port nor a resolvable host: {e}"))
}
