//! The `api` section: the gRPC API's Unix socket and optional TCP listener with mutual TLS.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::Checker;
use crate::tls::ApiTlsFiles;

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
