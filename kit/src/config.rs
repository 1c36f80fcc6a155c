//! What the config files of gatewan and bgpctl share: errors that name the file, the line
//! and the field and say how to fix it; the parser; and the `mesh`, `api`, `metrics` and
//! `log` sections.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::tls::ApiTlsFiles;
use crate::units::Dur;
use gatewan_mesh::MeshSettings;
use gatewan_mesh::identity::MAX_MESH_ADDRESSES;

pub const DEFAULT_MESH_PORT: u16 = 7946;

/// A config error: where, which field, what to do.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Config errors found once the daemon runs (they depend on the host), one per line,
/// each `error: FILE: FIELD: MESSAGE`; the daemon exits 2 with them.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors with the file they belong to.
pub struct Checker<'a> {
    pub file: &'a Path,
    pub errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &'a Path) -> Self {
        Checker {
            file,
            errors: Vec::new(),
        }
    }

    pub fn error<T>(
        &mut self,
        at: Option<&Spanned<T>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: at.map(|s| s.referenced.line()).filter(|&l| l > 0),
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn finish(self) -> Result<(), Vec<ConfigError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

/// Reads and parses a YAML config file into `T`; syntax and type errors carry their line.
pub fn parse_file<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    serde_saphyr::from_str::<T>(&text).map_err(|e| {
        let line = e.location().map(|l| l.line()).filter(|&l| l > 0);
        let field = line.map(|l| yaml_path_at(&text, l)).unwrap_or_default();
        vec![ConfigError {
            file: path.to_path_buf(),
            line,
            field,
            message: yaml_message(&e),
        }]
    })
}

/// The parser's message without the location it repeats (ours goes in front).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let msg = e.render_with_formatter(&serde_saphyr::UserMessageFormatter);
    let mut first = msg.lines().next().unwrap_or("invalid YAML").trim();
    first = first.strip_prefix("error: ").unwrap_or(first);
    if let Some(rest) = first.strip_prefix("line ")
        && let Some((_, after)) = rest.split_once(": ")
    {
        first = after;
    }
    first.to_string()
}

/// The dotted path (`transits[1].capacity`) of the key on `line` (1-based) of a block-style
/// YAML document, from indentation alone: serde reports a line but not the field, and
/// operators fix fields.
pub fn yaml_path_at(text: &str, line: u64) -> String {
    // (indent of the key, key, index within the list it heads, if any)
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut list_index: Vec<(usize, usize)> = Vec::new(); // (indent of '-', index)
    for (n, raw) in text.lines().enumerate() {
        let content = raw.split(" #").next().unwrap_or("").trim_end();
        let trimmed = content.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut indent = content.len() - trimmed.len();
        let mut rest = trimmed;
        if let Some(item) = rest
            .strip_prefix("- ")
            .or_else(|| (rest == "-").then_some(""))
        {
            while list_index.last().is_some_and(|&(i, _)| i > indent) {
                list_index.pop();
            }
            match list_index.last_mut() {
                Some((i, idx)) if *i == indent => *idx += 1,
                _ => list_index.push((indent, 0)),
            }
            stack.retain(|(i, _)| *i < indent);
            let idx = list_index.last().map_or(0, |&(_, idx)| idx);
            if let Some((_, parent)) = stack.last_mut() {
                let base = parent.split('[').next().unwrap_or("").to_string();
                *parent = format!("{base}[{idx}]");
            }
            indent += 2;
            rest = item;
        }
        stack.retain(|(i, _)| *i < indent);
        list_index.retain(|&(i, _)| i < indent);
        let key = rest
            .split_once(':')
            .map(|(k, _)| k.trim().trim_matches('"').to_string());
        if let Some(k) = key.filter(|k| !k.is_empty() && !k.contains(' ')) {
            stack.push((indent, k));
        }
        if n as u64 + 1 == line {
            break;
        }
    }
    stack
        .iter()
        .map(|(_, k)| k.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

/// Names: lower-case letters, digits and dashes, as in DNS labels.
pub fn check_name(c: &mut Checker, v: &Spanned<String>, field: &str) {
    let ok = !v.value.is_empty()
        && v.value.len() <= 63
        && v.value
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
        && !v.value.starts_with('-');
    if !ok {
        c.error(
            Some(v),
            field,
            format!(
                "{:?} must be 1-63 lower-case letters, digits or dashes",
                v.value
            ),
        );
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// Address the gossip socket binds; `[::]:7946` takes IPv4 and IPv6.
    #[serde(default)]
    pub bind: Option<Spanned<String>>,
    /// Addresses announced to the mesh, one per transit; default: every transit address
    /// with the bind port.
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
}

/// The mesh section once validated.
#[derive(Debug, Clone)]
pub struct MeshMemberSettings {
    pub bind: SocketAddr,
    pub advertise: Vec<SocketAddr>,
    pub seeds: Vec<SocketAddr>,
    pub keyring_file: PathBuf,
    pub settings: MeshSettings,
}

impl MeshConfig {
    /// Validates the section. `transit_addrs` are the default advertise addresses;
    /// `passive` the default of `mesh.passive`.
    pub fn validate(
        &self,
        c: &mut Checker,
        transit_addrs: &[IpAddr],
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
            advertise = transit_addrs
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
            c.error(
                self.advertise.first(),
                "mesh.advertise",
                format!("at most {MAX_MESH_ADDRESSES} addresses"),
            );
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Unix socket of the gRPC API (mode 0600).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// The same API on TCP, e.g. `"[::]:7947"`; needs `tls` (mutual TLS).
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
    #[serde(default)]
    pub tls: Option<ApiTlsConfig>,
}

/// The TCP API's certificates, PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// The daemon's certificate (chain), presented to routingctl.
    pub cert: Spanned<PathBuf>,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<PathBuf>,
    /// The CA that signs the clients' certificates: only they are let in.
    pub client_ca: Spanned<PathBuf>,
}

/// The API section once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    pub socket: PathBuf,
    /// `api.listen` with its `api.tls`.
    pub tcp: Option<TcpApiSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpApiSettings {
    pub listen: SocketAddr,
    pub tls: ApiTlsFiles,
}

impl ApiConfig {
    /// Validates the section, reading the TLS files; `default_socket` is the daemon's.
    pub fn validate(&self, c: &mut Checker, default_socket: &str) -> ApiSettings {
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(default_socket));
        let listen = self
            .listen
            .as_ref()
            .and_then(|l| match l.value.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.error(
                        Some(l),
                        "api.listen",
                        format!(
                            "{:?} is not ip:port, e.g. \"[::]:7947\" or \"10.1.255.11:7947\"",
                            l.value
                        ),
                    );
                    None
                }
            });
        let tcp = match (&self.listen, &self.tls) {
            (None, None) => None,
            (Some(l), None) => {
                c.error(
                    Some(l),
                    "api.tls",
                    "api.listen serves the API on TCP, which must use mutual TLS (the API can \
                     change the mesh keyring): add api.tls with cert, key and client_ca (PEM \
                     files), or remove api.listen to keep only the Unix socket",
                );
                None
            }
            (None, Some(t)) => {
                c.error(
                    Some(&t.cert),
                    "api.tls",
                    "is only used by the TCP API: add api.listen, e.g. \"[::]:7947\", or remove api.tls",
                );
                None
            }
            (Some(_), Some(t)) => {
                let files = ApiTlsFiles {
                    cert: t.cert.value.clone(),
                    key: t.key.value.clone(),
                    client_ca: t.client_ca.value.clone(),
                };
                if let Err(e) = crate::tls::server_tls(&files) {
                    let at = match e.field {
                        "api.tls.key" => &t.key,
                        "api.tls.client_ca" => &t.client_ca,
                        _ => &t.cert,
                    };
                    c.error(Some(at), e.field, e.message);
                }
                listen.map(|listen| TcpApiSettings { listen, tls: files })
            }
        };
        ApiSettings { socket, tcp }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus endpoint, e.g. `127.0.0.1:9469`; off when absent.
    #[serde(default)]
    pub listen: Option<Spanned<String>>,
}

impl MetricsConfig {
    pub fn validate(&self, c: &mut Checker) -> Option<SocketAddr> {
        let l = self.listen.as_ref()?;
        match l.value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                c.error(
                    Some(l),
                    "metrics.listen",
                    format!("{:?} is not ip:port, e.g. 127.0.0.1:9469", l.value),
                );
                None
            }
        }
    }
}

#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `gatewan=debug`; `RUST_LOG` overrides it.
    #[serde(default)]
    pub level: Option<String>,
}
