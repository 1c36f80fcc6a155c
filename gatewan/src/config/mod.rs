//! `gatewan.yaml`: parsing and validation. Every error names the file, the line and the
//! field, and says how to fix it. The `mesh`, `api`, `metrics` and `log` sections, the
//! parser and the error type are shared with bgpctl (`gatewan_kit::config`); the
//! gatewan's own sections each have a module: `transit`, `tunnels` (with `probe`),
//! `fabric` (with `networks`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::tunnels::plan::MAX_TRANSITS;
use gatewan_kit::config::{
    ApiConfig, ApiSettings, Checker, ConfigError, LogConfig, LogFormat, MeshConfig,
    MeshMemberSettings, MetricsConfig, check_name, parse_file,
};
use gatewan_mesh::identity::MAX_MESH_ADDRESSES;

mod fabric;
mod transit;
mod tunnels;

pub use fabric::{
    DataplaneSettings, FabricConfig, HostAddress, NetworkConfig, vtep_from_addresses,
};
use gatewan_kit::units::Rate;
pub use transit::{OneOrMany, TransitConfig};
pub use tunnels::{
    DegradedConfig, DownConfig, PairingConfig, ProbeConfig, TunnelsConfig, TunnelsSettings,
    WireguardConfig,
};

/// Where routingctl looks by default.
pub const DEFAULT_API_SOCKET: &str = "/run/gatewan/gatewan.sock";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewanConfig {
    pub name: Spanned<String>,
    pub datacenter: Spanned<String>,
    pub state_dir: PathBuf,
    pub mesh: MeshConfig,
    #[serde(default)]
    pub transits: Vec<TransitConfig>,
    /// Without it the gatewan only joins the mesh (no tunnels).
    #[serde(default)]
    pub tunnels: Option<TunnelsConfig>,
    #[serde(default)]
    pub probe: ProbeConfig,
    /// The gatewan's side of the datacenter's VXLAN fabric.
    #[serde(default)]
    pub fabric: Option<FabricConfig>,
    /// Static networks of this datacenter (no EVPN): routed by the data plane and
    /// announced to the mesh.
    #[serde(default)]
    pub networks: Vec<NetworkConfig>,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub log: LogConfig,
}

/// A transit once validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Transit {
    pub name: String,
    pub interface: Option<String>,
    pub addresses: Vec<IpAddr>,
    /// Configured next hops, at most one per family.
    pub gateways: Vec<IpAddr>,
    pub capacity: Rate,
    pub cost: u32,
}

/// Everything the daemon needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewanSettings {
    /// The file the settings were read from, for errors found at run time.
    pub config_file: PathBuf,
    pub name: String,
    pub datacenter: String,
    pub state_dir: PathBuf,
    pub mesh: MeshMemberSettings,
    pub transits: Vec<Transit>,
    pub tunnels: Option<TunnelsSettings>,
    pub api: ApiSettings,
    pub metrics_listen: Option<SocketAddr>,
    /// The VTEP announced in the NodeRecord (`fabric.vtep`, or the address of
    /// `fabric.interface` once read).
    pub vtep: Option<IpAddr>,
    /// Set while the VTEP is still to be read from `fabric.interface`: until then `vtep`
    /// and `dataplane` are None and `mesh.advertise` lacks it
    /// ([`GatewanSettings::with_vtep_interface_addresses`] completes them).
    pub vtep_from_interface: Option<VtepFromInterface>,
    /// Set when `fabric.vni` and `fabric.interface` are.
    pub dataplane: Option<DataplaneSettings>,
    pub log_format: LogFormat,
    pub log_level: Option<String>,
}

impl GatewanConfig {
    /// Reads and validates the file. What only the host can tell is left for the start:
    /// see [`GatewanSettings::vtep_from_interface`].
    pub fn load(path: &Path) -> Result<GatewanSettings, Vec<ConfigError>> {
        let cfg: GatewanConfig = parse_file(path)?;
        Arc::new(cfg).validate(path)
    }

    pub fn validate(self: &Arc<Self>, path: &Path) -> Result<GatewanSettings, Vec<ConfigError>> {
        self.validate_on_host(path, None)
    }

    /// Validates the config; `host_vtep` is the VTEP read from `fabric.interface` when the
    /// file leaves `fabric.vtep` out (None before it is read: the settings then say where
    /// to read it, [`GatewanSettings::vtep_from_interface`]).
    fn validate_on_host(
        self: &Arc<Self>,
        path: &Path,
        host_vtep: Option<Ipv4Addr>,
    ) -> Result<GatewanSettings, Vec<ConfigError>> {
        let mut c = Checker::new(path);
        check_name(&mut c, &self.name, "name");
        check_name(&mut c, &self.datacenter, "datacenter");
        let mut names = HashSet::new();
        let mut transits = Vec::new();
        for (i, t) in self.transits.iter().enumerate() {
            check_name(&mut c, &t.name, &format!("transits[{i}].name"));
            if !names.insert(t.name.value.clone()) {
                c.error(
                    Some(&t.name),
                    format!("transits[{i}].name"),
                    format!("transit {:?} is listed twice", t.name.value),
                );
            }
            let mut addresses = Vec::new();
            for (j, a) in t.addresses.iter().enumerate() {
                match a.value.parse::<IpAddr>() {
                    Ok(ip) if !ip.is_unspecified() => addresses.push(ip),
                    _ => c.error(
                        Some(a),
                        format!("transits[{i}].addresses[{j}]"),
                        format!("{:?} is not an IPv4 or IPv6 address", a.value),
                    ),
                }
            }
            let mut gateways: Vec<IpAddr> = Vec::new();
            if let Some(g) = &t.gateway {
                for item in g.value.items() {
                    match item.parse::<IpAddr>() {
                        Ok(ip) if ip.is_unspecified() || ip.is_multicast() => c.error(
                            Some(g),
                            format!("transits[{i}].gateway"),
                            format!("{item:?} is not a unicast address"),
                        ),
                        Ok(ip) if gateways.iter().any(|x| x.is_ipv6() == ip.is_ipv6()) => c.error(
                            Some(g),
                            format!("transits[{i}].gateway"),
                            "at most one gateway per address family: [IPv4, IPv6]",
                        ),
                        Ok(ip) => gateways.push(ip),
                        Err(_) => c.error(
                            Some(g),
                            format!("transits[{i}].gateway"),
                            format!("{item:?} is not an IP address"),
                        ),
                    }
                }
                if t.interface.is_none() {
                    c.error(Some(g), format!("transits[{i}].gateway"), "source routing through a gateway needs the transit's interface: set transits[].interface");
                }
            }
            if t.interface.is_none() && self.transits.len() > 1 {
                c.error(
                    Some(&t.name),
                    format!("transits[{i}].interface"),
                    "with several transits each one needs its interface, so that what uses a transit leaves by it and not by the main table's default route",
                );
            }
            transits.push(Transit {
                name: t.name.value.clone(),
                interface: t.interface.clone(),
                addresses,
                gateways,
                capacity: t.capacity,
                cost: t.cost,
            });
        }
        if self.transits.len() > MAX_TRANSITS {
            c.error(
                self.transits.get(MAX_TRANSITS).map(|t| &t.name),
                "transits",
                format!("a gatewan has at most {MAX_TRANSITS} transits"),
            );
        }
        let tunnels = self
            .tunnels
            .as_ref()
            .and_then(|t| t.validate(&self.probe, &mut c));
        let mut vtep_from_interface = None;
        let vtep = self.fabric.as_ref().and_then(|f| match (&f.vtep, &f.interface) {
            (Some(v), _) => match v.value.parse::<IpAddr>() {
                Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => Some(ip),
                _ => {
                    c.error(
                        Some(v),
                        "fabric.vtep",
                        format!(
                            "{:?} is not a unicast IP address (the gatewan's VTEP)",
                            v.value
                        ),
                    );
                    None
                }
            },
            (None, Some(interface)) => match host_vtep {
                Some(v4) => Some(IpAddr::V4(v4)),
                None => {
                    vtep_from_interface = Some(VtepFromInterface {
                        interface: interface.value.clone(),
                        config: self.clone(),
                    });
                    None
                }
            },
            (None, None) => {
                c.error(
                    f.vni.as_ref(),
                    "fabric.vtep",
                    "the gatewan's VTEP in the fabric is missing: set fabric.vtep, or fabric.interface to take that interface's IPv4 address",
                );
                None
            }
        });
        let mesh = self.validate_mesh(&mut c, &transits, vtep, vtep_from_interface.is_some());
        let api = self.api.validate(&mut c, DEFAULT_API_SOCKET);
        let metrics_listen = self.metrics.validate(&mut c);
        let dataplane = self.validate_dataplane(&mut c, vtep, tunnels.is_some());
        c.finish()?;
        let mesh = mesh.expect("mesh settings exist when there is no error");
        Ok(GatewanSettings {
            config_file: path.to_path_buf(),
            name: self.name.value.clone(),
            datacenter: self.datacenter.value.clone(),
            state_dir: self.state_dir.clone(),
            mesh,
            transits,
            tunnels,
            api,
            metrics_listen,
            vtep,
            vtep_from_interface,
            dataplane,
            log_format: self.log.format,
            log_level: self.log.level.clone(),
        })
    }

    /// The `mesh` section. Left out, `mesh.advertise` is every transit address and the
    /// VTEP, on the bind port: remote gatewans reach this one over its transits, and its
    /// bgpctls, which are on the fabric and nowhere else, over the VTEP. The VTEP is
    /// announced only where the gossip socket listens on it (the default `[::]` bind, or
    /// the VTEP itself).
    fn validate_mesh(
        &self,
        c: &mut Checker,
        transits: &[Transit],
        vtep: Option<IpAddr>,
        vtep_to_read: bool,
    ) -> Option<MeshMemberSettings> {
        let mut default_advertise: Vec<IpAddr> =
            transits.iter().flat_map(|t| t.addresses.clone()).collect();
        let bind_ip = self
            .mesh
            .bind
            .as_ref()
            .and_then(|b| b.value.parse::<SocketAddr>().ok())
            .map(|b| b.ip());
        if let Some(v) = vtep
            && bind_ip.is_none_or(|b| b.is_unspecified() || b == v)
            && !default_advertise.contains(&v)
        {
            default_advertise.push(v);
        }
        // The VTEP still to be read at start counts already, so that --check refuses what
        // the start would.
        if self.mesh.advertise.is_empty()
            && vtep_to_read
            && bind_ip.is_none_or(|b| b.is_unspecified())
            && default_advertise.len() + 1 > MAX_MESH_ADDRESSES
        {
            c.error(
                None::<&Spanned<()>>,
                "mesh.advertise",
                format!(
                    "left out, it is every transit address and the VTEP read from fabric.interface: {} addresses, at most {MAX_MESH_ADDRESSES}: list those to announce in mesh.advertise",
                    default_advertise.len() + 1
                ),
            );
        }
        self.mesh.validate(c, &default_advertise, false)
    }
}

/// `fabric.vtep` left out with `fabric.interface` set: the VTEP is that interface's one
/// IPv4 address, read when the daemon starts (`complete_settings` in the host module) and not
/// by `--check`, which validates the file alone (the interface may not exist where the
/// file is checked).
#[derive(Debug, Clone)]
pub struct VtepFromInterface {
    pub interface: String,
    /// The config, validated again once the VTEP is known: the VTEP joins the default
    /// `mesh.advertise`, must stay out of `fabric.tunnel_vteps` and completes the data
    /// plane, as a written `fabric.vtep` does.
    config: Arc<GatewanConfig>,
}

/// The interface names the whole difference: what `config` holds beyond it is in the
/// settings' other fields, compared there.
impl PartialEq for VtepFromInterface {
    fn eq(&self, other: &Self) -> bool {
        self.interface == other.interface
    }
}

impl GatewanSettings {
    /// Completes settings that leave `fabric.vtep` to the host with the addresses of
    /// `fabric.interface` (None: the host has no such interface); settings that leave
    /// nothing to it come back as they are. A VTEP that cannot be chosen is a config error
    /// on `fabric.vtep`, at the line of `fabric.interface`.
    pub fn with_vtep_interface_addresses(
        self,
        addresses: Option<&[fabric::HostAddress]>,
    ) -> Result<GatewanSettings, Vec<ConfigError>> {
        let Some(from) = &self.vtep_from_interface else {
            return Ok(self);
        };
        match fabric::vtep_from_addresses(&from.interface, addresses) {
            Ok(vtep) => from.config.validate_on_host(&self.config_file, Some(vtep)),
            Err(message) => {
                let mut c = Checker::new(&self.config_file);
                let at = from
                    .config
                    .fabric
                    .as_ref()
                    .and_then(|f| f.interface.as_ref());
                c.error(at, "fabric.vtep", message);
                c.finish().map(|()| self)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<GatewanSettings, Vec<ConfigError>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gatewan.yaml");
        std::fs::write(&p, yaml).unwrap();
        GatewanConfig::load(&p)
    }

    const GOOD: &str = "name: gatewan01-sg1
datacenter: sg1
state_dir: /var/lib/gatewan
mesh:
  keyring: /etc/gatewan/keyring
  seeds: [\"192.0.2.1:7946\", \"2001:db8::1\"]
transits:
  - name: lumen
    interface: eth1
    addresses: [198.51.100.10, \"2001:db8:1::10\"]
    capacity: 1Gbps
    cost: 10
";

    #[test]
    fn good_config() {
        let p = load(GOOD).unwrap();
        assert_eq!(p.mesh.advertise.len(), 2);
        assert!(!p.mesh.settings.passive, "a gatewan probes by default");
        assert_eq!(p.mesh.seeds[1], "[2001:db8::1]:7946".parse().unwrap());
        assert_eq!(p.transits[0].capacity, Rate(1_000_000_000));
        assert_eq!(p.api.socket, PathBuf::from(DEFAULT_API_SOCKET));
        assert_eq!(p.api.tcp, None);
    }

    fn one_error(yaml: &str) -> String {
        let errs = load(yaml).unwrap_err();
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A CA, a server certificate and key signed by it, and a key of another pair, as PEM
    /// files in `dir`: (cert, key, client_ca, other_key).
    fn tls_files(dir: &Path) -> [PathBuf; 4] {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let files = ["api.pem", "api.key", "ca.pem", "other.key"].map(|f| dir.join(f));
        let other = KeyPair::generate().unwrap();
        for (path, text) in files.iter().zip([
            cert.pem(),
            key.serialize_pem(),
            ca_cert.pem(),
            other.serialize_pem(),
        ]) {
            std::fs::write(path, text).unwrap();
        }
        files
    }

    fn api_section(listen: &str, [cert, key, ca]: [&Path; 3]) -> String {
        format!(
            "{GOOD}api:\n  socket: /run/gw.sock\n  listen: \"{listen}\"\n  tls:\n    cert: {}\n    key: {}\n    client_ca: {}\n",
            cert.display(),
            key.display(),
            ca.display()
        )
    }

    #[test]
    fn tcp_api_with_mutual_tls() {
        let dir = tempfile::tempdir().unwrap();
        let [cert, key, ca, other_key] = tls_files(dir.path());
        let p = load(&api_section("[::]:7947", [&cert, &key, &ca])).unwrap();
        assert_eq!(p.api.socket, PathBuf::from("/run/gw.sock"));
        let tcp = p.api.tcp.expect("api.listen is planned");
        assert_eq!(tcp.listen, "[::]:7947".parse().unwrap());
        assert_eq!(tcp.tls.client_ca, ca);
        let p = load(&api_section("127.0.0.1:7947", [&cert, &key, &ca])).unwrap();
        assert_eq!(p.api.tcp.unwrap().listen, "127.0.0.1:7947".parse().unwrap());

        // A key that is not the certificate's.
        let e = one_error(&api_section("[::]:7947", [&cert, &other_key, &ca]));
        assert!(
            e.contains(":18: api.tls.key") && e.contains("other.key"),
            "{e}"
        );
        // A key where the CA certificate should be.
        let e = one_error(&api_section("[::]:7947", [&cert, &key, &key]));
        assert!(
            e.contains(":19: api.tls.client_ca") && e.contains("holds no certificate"),
            "{e}"
        );
        let e = one_error(&api_section("7947", [&cert, &key, &ca]));
        assert!(
            e.contains(":15: api.listen") && e.contains("ip:port"),
            "{e}"
        );
    }

    #[test]
    fn tcp_api_without_tls_is_refused() {
        let e = one_error(&format!("{GOOD}api:\n  listen: \"[::]:7947\"\n"));
        assert!(
            e.contains(":14: api.tls: api.listen serves the API on TCP, which must use mutual TLS")
                && e.contains("add api.tls with cert, key and client_ca"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let [cert, key, ca, _] = tls_files(dir.path());
        let yaml =
            api_section("[::]:7947", [&cert, &key, &ca]).replace("  listen: \"[::]:7947\"\n", "");
        let e = one_error(&yaml);
        assert!(e.contains("api.tls") && e.contains("add api.listen"), "{e}");
    }

    #[test]
    fn missing_tls_file_names_field_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let [_, key, ca, _] = tls_files(dir.path());
        let missing = dir.path().join("missing.pem");
        let e = one_error(&api_section("[::]:7947", [&missing, &key, &ca]));
        assert!(
            e.contains(":17: api.tls.cert: cannot read") && e.contains("missing.pem"),
            "{e}"
        );
    }

    const DATAPLANE: &str = "tunnels:\n  slot: 1\nfabric:\n  vtep: 10.1.255.11\n  vni: 100\n  interface: eth0\nnetworks:\n  - prefix: 10.20.0.0/16\n    via: 10.1.0.1\n";

    #[test]
    fn the_data_plane_runs_with_a_vni_and_an_interface() {
        let p = load(&format!("{GOOD}{DATAPLANE}")).unwrap();
        let d = p.dataplane.expect("data plane planned");
        assert_eq!(d.fabric.vni, 100);
        assert_eq!(d.fabric.port, 4789);
        assert_eq!(d.fabric.interface, "eth0");
        assert_eq!(d.static_networks.len(), 1);
        // Without vni and interface, only the VTEP is announced.
        let p = load(&format!(
            "{GOOD}tunnels:\n  slot: 1\nfabric:\n  vtep: 10.1.255.11\n"
        ))
        .unwrap();
        assert!(p.dataplane.is_none() && p.vtep.is_some());
    }

    #[test]
    fn the_fast_path_is_on_unless_turned_off() {
        let p = load(&format!("{GOOD}{DATAPLANE}")).unwrap();
        assert!(p.dataplane.unwrap().fast_path);
        let off = format!("{GOOD}{DATAPLANE}").replace(
            "  interface: eth0\n",
            "  interface: eth0\n  fast_path: false\n",
        );
        assert!(!load(&off).unwrap().dataplane.unwrap().fast_path);
        let e = one_error(&off.replace("fast_path: false", "fast_path: sometimes"));
        assert!(e.contains("fast_path"), "{e}");
    }

    #[test]
    fn tunnel_vteps_is_a_pool_apart_from_the_vtep() {
        let with = |pool: &str| {
            format!("{GOOD}{DATAPLANE}").replace(
                "  interface: eth0\n",
                &format!("  interface: eth0\n  tunnel_vteps: {pool}\n"),
            )
        };
        let p = load(&with("10.1.254.0/27")).unwrap();
        assert_eq!(
            p.dataplane.unwrap().tunnel_vteps,
            Some("10.1.254.0/27".parse().unwrap())
        );
        for (pool, says) in [
            ("10.1.254.1/27", "host bits"),
            ("10.1.254.0/31", "at least a /30"),
            ("10.1.255.0/24", "must not hold fabric.vtep"),
            ("fd00::/64", "not an IPv4 prefix"),
        ] {
            let e = one_error(&with(pool));
            assert!(
                e.contains(":19: fabric.tunnel_vteps") && e.contains(says),
                "{pool}: {e}"
            );
        }
    }

    #[test]
    fn data_plane_errors_name_the_field() {
        let e = one_error(&format!("{GOOD}{DATAPLANE}").replace("vni: 100", "vni: 16777216"));
        assert!(
            e.contains(":17: fabric.vni") && e.contains("1 to 16777215"),
            "{e}"
        );
        let e =
            one_error(&format!("{GOOD}{DATAPLANE}").replace("interface: eth0", "interface: a/b"));
        assert!(e.contains(":18: fabric.interface"), "{e}");
        let e = one_error(&format!("{GOOD}{DATAPLANE}").replace("  interface: eth0\n", ""));
        assert!(
            e.contains("fabric.interface") && e.contains("underlay"),
            "{e}"
        );
        let e = one_error(
            &format!("{GOOD}{DATAPLANE}")
                .replace("  interface: eth0\n", "  interface: eth0\n  port: 70000\n"),
        );
        assert!(e.contains(":19: fabric.port"), "{e}");
        let e = one_error(&format!("{GOOD}{DATAPLANE}").replace("10.20.0.0/16", "10.20.1.0/16"));
        assert!(
            e.contains(":20: networks[0].prefix") && e.contains("10.20.0.0/16"),
            "{e}"
        );
        let e = one_error(&format!("{GOOD}{DATAPLANE}").replace("via: 10.1.0.1", "via: fd00::1"));
        assert!(
            e.contains(":21: networks[0].via") && e.contains("family"),
            "{e}"
        );
        let e = one_error(
            &format!("{GOOD}{DATAPLANE}").replace("vtep: 10.1.255.11", "vtep: \"fd00::11\""),
        );
        assert!(e.contains("fabric.vtep") && e.contains("IPv4"), "{e}");
        let e = one_error(&format!("{GOOD}{DATAPLANE}").replace("tunnels:\n  slot: 1\n", ""));
        assert!(e.contains("fabric.vni") && e.contains("tunnels"), "{e}");
        let e = one_error(&format!(
            "{GOOD}networks:\n  - prefix: 10.20.0.0/16\n    via: 10.1.0.1\n"
        ));
        assert!(e.contains("networks") && e.contains("fabric.vni"), "{e}");
    }

    #[test]
    fn a_transit_gateway_is_one_address_or_one_per_family() {
        let two = format!(
            "{GOOD}  - name: cogent\n    interface: eth2\n    addresses: [203.0.113.1]\n    gateway: 203.0.113.0\n    capacity: 1Gbps\n"
        );
        let p = load(&two.replace(
            "    cost: 10\n",
            "    cost: 10\n    gateway: [198.51.100.9, \"2001:db8:1::1\"]\n",
        ))
        .unwrap();
        assert_eq!(p.transits[0].gateways.len(), 2);
        assert_eq!(
            p.transits[1].gateways,
            ["203.0.113.0".parse::<IpAddr>().unwrap()]
        );
        let e = one_error(&two.replace(
            "    cost: 10\n",
            "    cost: 10\n    gateway: [198.51.100.9, 198.51.100.8]\n",
        ));
        assert!(
            e.contains("transits[0].gateway: at most one gateway per address family"),
            "{e}"
        );
    }

    #[test]
    fn several_transits_each_need_their_interface() {
        let e = one_error(&format!(
            "{GOOD}  - name: cogent\n    addresses: [203.0.113.1]\n    capacity: 1Gbps\n"
        ));
        assert!(
            e.contains(":13: transits[1].interface: with several transits"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = one_error(&GOOD.replace("1Gbps", "1Gbs"));
        assert!(
            e.contains(":11: transits[0].capacity: \"1Gbs\" is not a rate: write e.g. 1Gbps"),
            "{e}"
        );
        let e = one_error(&GOOD.replace("198.51.100.10", "198.51.100.300"));
        assert!(e.contains(":10: transits[0].addresses[0]"), "{e}");
        let e = one_error(&GOOD.replace("name: gatewan01-sg1", "name: Gatewan_01"));
        assert!(e.contains(":1: name"), "{e}");
        let e = one_error(&format!("{GOOD}colour: blue\n"));
        assert!(e.contains("colour"), "{e}");
        let e = one_error(&format!("{GOOD}  - name: lumen\n    capacity: 1Gbps\n"));
        assert!(e.contains("listed twice"), "{e}");
        let e = one_error(&format!("{GOOD}tunnels:\n  slot: 1\n  ports: 100-50\n"));
        assert!(e.contains(":15: tunnels.ports"), "{e}");
        let e = one_error(&format!("{GOOD}tunnels:\n  slot: 5000\n"));
        assert!(
            e.contains(":14: tunnels.slot") && e.contains("0 to 511"),
            "{e}"
        );
        let e = one_error(&format!(
            "{GOOD}tunnels:\n  slot: 1\nprobe:\n  count: 100\n"
        ));
        assert!(e.contains("20ms apart"), "{e}");
        let e = one_error(&format!(
            "{GOOD}tunnels:\n  slot: 1\nprobe:\n  degraded:\n    loss: 5\n"
        ));
        assert!(
            e.contains("probe.degraded.loss") && e.contains("percentage"),
            "{e}"
        );
        let e = one_error(&format!(
            "{GOOD}tunnels:\n  slot: 1\nprobe:\n  timeout: 300ms\n"
        ));
        assert!(
            e.contains("probe.timeout") && e.contains("degraded.latency"),
            "{e}"
        );
        let e = one_error(&GOOD.replace("mesh:\n", "mesh:\n  probe_interval: fast\n"));
        assert!(e.contains("fast") && e.contains("duration"), "{e}");
        let e =
            one_error(&GOOD.replace("mesh:\n", "mesh:\n  admins: [\"0123456789abcdef\", nope]\n"));
        assert!(
            e.contains("mesh.admins[1]") && e.contains("16 hex digits"),
            "{e}"
        );
    }

    #[test]
    fn admins_are_key_fingerprints_in_lower_case() {
        let p =
            load(&GOOD.replace("mesh:\n", "mesh:\n  admins: [\"0123456789ABCDEF\"]\n")).unwrap();
        assert_eq!(p.mesh.settings.admins, ["0123456789abcdef"]);
        assert!(load(GOOD).unwrap().mesh.settings.admins.is_empty());
    }

    fn tunnels_plan(yaml: &str) -> TunnelsSettings {
        load(yaml)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .tunnels
            .expect("a tunnels section")
    }

    #[test]
    fn tunnels_spread_what_they_receive_unless_the_operator_keeps_the_masks() {
        assert!(tunnels_plan(&format!("{GOOD}tunnels:\n  slot: 1\n")).spread_receive);
        let p = tunnels_plan(&format!(
            "{GOOD}tunnels:\n  slot: 1\n  spread_receive: false\n"
        ));
        assert!(!p.spread_receive);
        let e = one_error(&format!(
            "{GOOD}tunnels:\n  slot: 1\n  spread_receive: sometimes\n"
        ));
        assert!(e.contains("spread_receive"), "{e}");
    }

    #[test]
    fn a_tunnel_is_down_after_3_lost_probes_in_a_row_unless_configured() {
        let p = tunnels_plan(&format!("{GOOD}tunnels:\n  slot: 1\n"));
        assert_eq!(p.thresholds.down_consecutive, 3);
        let p = tunnels_plan(&format!(
            "{GOOD}tunnels:\n  slot: 1\nprobe:\n  down:\n    consecutive: 5\n"
        ));
        assert_eq!(p.thresholds.down_consecutive, 5);
        assert_eq!(p.thresholds.down_loss, 0.9, "the loss rule stays");
    }

    #[test]
    fn probe_down_consecutive_of_0_or_beyond_the_window_is_refused() {
        let e = one_error(&format!(
            "{GOOD}tunnels:\n  slot: 1\nprobe:\n  down:\n    consecutive: 0\n"
        ));
        assert!(
            e.contains(":17: probe.down.consecutive: must be at least 1"),
            "{e}"
        );
        // 1 s window, a probe every 100 ms: 10 probes.
        let e = one_error(&format!(
            "{GOOD}tunnels:\n  slot: 1\nprobe:\n  window: 1s\n  down:\n    consecutive: 11\n"
        ));
        assert!(
            e.contains(":18: probe.down.consecutive: 11 is more than the 10 probes"),
            "{e}"
        );
        tunnels_plan(&format!(
            "{GOOD}tunnels:\n  slot: 1\nprobe:\n  window: 1s\n  down:\n    consecutive: 10\n"
        ));
    }

    #[test]
    fn the_fast_probe_setting_of_the_operator_guide_is_accepted() {
        let guide = include_str!("../../../docs/operators.md");
        let snippet = guide
            .split("```yaml\n")
            .filter_map(|b| b.split("```").next())
            .find(|b| b.contains("interval: 100ms"))
            .expect("the fast setting in docs/operators.md");
        let p = tunnels_plan(&format!("{GOOD}tunnels:\n  slot: 1\n{snippet}"));
        assert_eq!(
            p.probe_interval / p.probe_count,
            std::time::Duration::from_millis(20)
        );
        assert_eq!(p.probe_timeout, std::time::Duration::from_millis(60));
        assert_eq!(p.probe_window, std::time::Duration::from_millis(500));
        assert_eq!(
            p.thresholds.degraded_latency,
            std::time::Duration::from_millis(50)
        );
        assert_eq!(p.thresholds.down_consecutive, 3);
        let detection = (p.probe_interval / p.probe_count) * (p.thresholds.down_consecutive - 1)
            + p.probe_timeout;
        assert_eq!(detection, std::time::Duration::from_millis(100));
    }

    fn addr(a: &str, global: bool) -> fabric::HostAddress {
        let net: ipnet::IpNet = a.parse().unwrap();
        fabric::HostAddress {
            address: net.addr(),
            prefix_len: net.prefix_len(),
            global,
        }
    }

    fn sock(a: &str) -> SocketAddr {
        a.parse().unwrap()
    }

    #[test]
    fn mesh_advertise_left_out_is_every_transit_address_and_the_vtep() {
        let p = load(&format!("{GOOD}fabric:\n  vtep: 10.1.255.11\n")).unwrap();
        assert_eq!(
            p.mesh.advertise,
            [
                sock("198.51.100.10:7946"),
                sock("[2001:db8:1::10]:7946"),
                sock("10.1.255.11:7946")
            ],
            "the transits for the remote gatewans, the VTEP for the bgpctls on the fabric"
        );
        // Written, it wins.
        let p = load(&format!(
            "{}fabric:\n  vtep: 10.1.255.11\n",
            GOOD.replace("mesh:\n", "mesh:\n  advertise: [\"198.51.100.10\"]\n")
        ))
        .unwrap();
        assert_eq!(p.mesh.advertise, [sock("198.51.100.10:7946")]);
        // The gossip socket bound to a transit address does not listen on the VTEP.
        let p = load(&format!(
            "{}fabric:\n  vtep: 10.1.255.11\n",
            GOOD.replace("mesh:\n", "mesh:\n  bind: \"198.51.100.10:7000\"\n")
        ))
        .unwrap();
        assert_eq!(
            p.mesh.advertise,
            [sock("198.51.100.10:7000"), sock("[2001:db8:1::10]:7000")]
        );
    }

    #[test]
    fn the_lab_leaves_mesh_advertise_out_and_gets_the_list_it_wrote_by_hand_before() {
        let lab = include_str!("../../../lab/topologies/two-dc/gatewan01-sg1.yaml");
        assert!(
            !lab.lines()
                .any(|l| l.trim_start().starts_with("advertise:")),
            "the lab config writes mesh.advertise"
        );
        // What gatewan01-sg1.yaml wrote by hand before the default existed.
        let by_hand: Vec<std::net::SocketAddr> = [
            "198.51.100.1:7946",
            "[2001:db8:100:11::2]:7946",
            "203.0.113.1:7946",
            "[2001:db8:200:11::2]:7946",
            "10.1.255.11:7946",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let derived = load(lab).unwrap().mesh.advertise;
        assert_eq!(
            derived.iter().collect::<std::collections::BTreeSet<_>>(),
            by_hand.iter().collect::<std::collections::BTreeSet<_>>()
        );
    }

    #[test]
    fn fabric_vtep_left_out_is_the_address_of_fabric_interface_read_at_start() {
        let yaml = format!("{GOOD}{DATAPLANE}").replace("  vtep: 10.1.255.11\n", "");
        let p = load(&yaml).unwrap();
        // --check stops here: valid, the VTEP still to read.
        assert_eq!(
            p.vtep_from_interface.as_ref().map(|v| v.interface.as_str()),
            Some("eth0")
        );
        assert!(p.vtep.is_none() && p.dataplane.is_none());
        assert_eq!(p.mesh.advertise.len(), 2);
        let eth0 = [
            addr("10.1.255.11/32", true),
            addr("fe80::1/64", false),
            addr("fd00:1::11/64", true),
        ];
        let p = p.with_vtep_interface_addresses(Some(&eth0)).unwrap();
        assert!(p.vtep_from_interface.is_none());
        assert_eq!(p.vtep, Some("10.1.255.11".parse().unwrap()));
        assert_eq!(
            p.dataplane.expect("data plane planned").fabric.vtep,
            "10.1.255.11".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(p.mesh.advertise[2], sock("10.1.255.11:7946"));
        // Settings with nothing left to the host are as they were.
        let p = load(&format!("{GOOD}{DATAPLANE}")).unwrap();
        let q = p.clone().with_vtep_interface_addresses(None).unwrap();
        assert_eq!(q.vtep, p.vtep);
    }

    #[test]
    fn a_vtep_that_cannot_be_read_is_an_error_on_fabric_vtep_at_the_interface_line() {
        let yaml = format!("{GOOD}{DATAPLANE}").replace("  vtep: 10.1.255.11\n", "");
        let read = |addrs: Option<&[fabric::HostAddress]>| {
            load(&yaml)
                .unwrap()
                .with_vtep_interface_addresses(addrs)
                .unwrap_err()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let e = read(Some(&[addr("fe80::1/64", false), addr("fd00::1/64", true)]));
        assert!(
            e.contains(":17: fabric.vtep: not set, so it is the IPv4 address of fabric.interface eth0, but eth0 has none")
                && e.contains("or set fabric.vtep"),
            "{e}"
        );
        let e = read(Some(&[
            addr("10.1.255.11/32", true),
            addr("10.1.255.12/32", true),
        ]));
        assert!(
            e.contains(":17: fabric.vtep")
                && e.contains("eth0 has 2 (10.1.255.11, 10.1.255.12): set fabric.vtep"),
            "{e}"
        );
        let e = read(None);
        assert!(
            e.contains(":17: fabric.vtep") && e.contains("this host has no interface eth0"),
            "{e}"
        );
        // A VTEP read into fabric.tunnel_vteps is refused as a written one is.
        let p = load(&yaml.replace(
            "  interface: eth0\n",
            "  interface: eth0\n  tunnel_vteps: 10.1.255.0/24\n",
        ))
        .unwrap();
        let e = p
            .with_vtep_interface_addresses(Some(&[addr("10.1.255.11/32", true)]))
            .unwrap_err();
        assert!(
            e[0].to_string().contains("must not hold fabric.vtep"),
            "{e:?}"
        );
    }

    #[test]
    fn the_example_config_is_valid_and_leaves_the_vtep_to_the_host() {
        let p = load(include_str!("../../../docs/examples/gatewan.yaml"))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            p.vtep_from_interface.as_ref().map(|v| v.interface.as_str()),
            Some("eth0")
        );
        let p = p
            .with_vtep_interface_addresses(Some(&[addr("10.1.255.11/32", true)]))
            .unwrap();
        assert_eq!(
            p.mesh.advertise,
            [
                sock("198.51.100.10:7946"),
                sock("[2001:db8:10::10]:7946"),
                sock("203.0.113.10:7946"),
                sock("10.1.255.11:7946")
            ]
        );
    }

    #[test]
    fn a_fabric_needs_its_vtep_or_its_interface() {
        let e = one_error(&format!("{GOOD}fabric:\n  port: 4789\n"));
        assert!(
            e.contains("fabric.vtep: the gatewan's VTEP in the fabric is missing: set fabric.vtep, or fabric.interface"),
            "{e}"
        );
    }

    #[test]
    fn too_many_addresses_to_advertise_by_default_is_refused_by_check() {
        let transits: String = (0..4)
            .map(|i| {
                format!(
                    "  - name: t{i}\n    interface: eth{}\n    addresses: [198.51.100.{i}, \"2001:db8::{i}\"]\n    capacity: 1Gbps\n",
                    i + 1
                )
            })
            .collect();
        let base = GOOD.split("transits:\n").next().unwrap();
        let yaml = format!("{base}transits:\n{transits}");
        assert_eq!(load(&yaml).unwrap().mesh.advertise.len(), 8);
        // A written VTEP makes nine.
        let e = one_error(&format!("{yaml}{DATAPLANE}"));
        assert!(
            e.contains("mesh.advertise: left out, it is every transit address (and a gatewan's fabric VTEP): 9 addresses, at most 8"),
            "{e}"
        );
        // So does one still to be read: --check refuses what the start would.
        let e = one_error(&format!("{yaml}{DATAPLANE}").replace("  vtep: 10.1.255.11\n", ""));
        assert!(
            e.contains("mesh.advertise: left out, it is every transit address and the VTEP read from fabric.interface: 9 addresses, at most 8"),
            "{e}"
        );
        // Written, the operator chooses.
        let chosen = format!("{yaml}{DATAPLANE}").replace(
            "mesh:\n",
            "mesh:\n  advertise: [198.51.100.0, 198.51.100.1, 10.1.255.11]\n",
        );
        assert_eq!(load(&chosen).unwrap().mesh.advertise.len(), 3);
    }
}
