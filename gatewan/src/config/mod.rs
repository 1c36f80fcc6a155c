//! `gatewan.yaml`: parsing and validation. Every error names the file, the line and the
//! field, and says how to fix it. The `mesh`, `api`, `metrics` and `log` sections, the
//! parser and the error type are shared with bgpctl (`gatewan_kit::config`); the
//! gatewan's own sections each have a module: `transit`, `tunnels` (with `probe`),
//! `fabric` (with `networks`).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::tunnels::plan::MAX_TRANSITS;
use gatewan_kit::config::{
    ApiConfig, ApiSettings, Checker, ConfigError, LogConfig, LogFormat, MeshConfig,
    MeshMemberSettings, MetricsConfig, check_name, parse_file,
};

mod fabric;
mod transit;
mod tunnels;

pub use fabric::{DataplaneSettings, FabricConfig, NetworkConfig};
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
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
    /// The VTEP announced in the NodeRecord (`fabric.vtep`).
    pub vtep: Option<IpAddr>,
    /// Set when `fabric.vni` and `fabric.interface` are.
    pub dataplane: Option<DataplaneSettings>,
    pub log_format: LogFormat,
    pub log_level: Option<String>,
}

impl GatewanConfig {
    pub fn load(path: &Path) -> Result<GatewanSettings, Vec<ConfigError>> {
        let cfg: GatewanConfig = parse_file(path)?;
        cfg.validate(path)
    }

    pub fn validate(&self, path: &Path) -> Result<GatewanSettings, Vec<ConfigError>> {
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
        let transit_addrs: Vec<IpAddr> =
            transits.iter().flat_map(|t| t.addresses.clone()).collect();
        let mesh = self.mesh.validate(&mut c, &transit_addrs, false);
        let api = self.api.validate(&mut c, DEFAULT_API_SOCKET);
        let metrics_listen = self.metrics.validate(&mut c);
        let vtep = self
            .fabric
            .as_ref()
            .and_then(|f| match f.vtep.value.parse::<IpAddr>() {
                Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => Some(ip),
                _ => {
                    c.error(
                        Some(&f.vtep),
                        "fabric.vtep",
                        format!(
                            "{:?} is not a unicast IP address (the gatewan's VTEP)",
                            f.vtep.value
                        ),
                    );
                    None
                }
            });
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
            dataplane,
            log_format: self.log.format,
            log_level: self.log.level.clone(),
        })
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
}
