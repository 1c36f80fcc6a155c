//! The TCP API's mutual TLS: reading and checking the PEM files of `api.tls` (at `--check`
//! and at start) and the server configuration made from them.

use std::path::{Path, PathBuf};

/// Paths of the TCP API's PEM files (read at `--check` and again at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// What is wrong with one of the `api.tls` files: the field (`api.tls.cert`, …) and why.
#[derive(Debug)]
pub struct TlsFileError {
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for TlsFileError {}

/// How long a TLS client may take to complete its handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and checks the TCP API's PEM files and makes the server's TLS configuration:
/// the daemon's certificate and key, and the CA every client certificate must be signed by
/// (a client without one is refused during the handshake). Used by `--check` and at start.
pub fn server_tls(files: &ApiTlsFiles) -> Result<tonic::transport::ServerTlsConfig, TlsFileError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

    let read = |field: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| TlsFileError {
            field,
            message: format!("cannot read {}: {e}", path.display()),
        })
    };
    let certs =
        |field: &'static str, path: &Path, pem: &[u8]| match CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(list) if !list.is_empty() => Ok(()),
            Ok(_) => Err(TlsFileError {
                field,
                message: format!(
                    "{} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
                    path.display()
                ),
            }),
            Err(e) => Err(TlsFileError {
                field,
                message: format!("{}: invalid PEM: {e}", path.display()),
            }),
        };
    let cert = read("api.tls.cert", &files.cert)?;
    certs("api.tls.cert", &files.cert, &cert)?;
    let key = read("api.tls.key", &files.key)?;
    if let Err(e) = PrivateKeyDer::from_pem_slice(&key) {
        return Err(TlsFileError {
            field: "api.tls.key",
            message: format!(
                "{} holds no usable private key (expected PEM: PKCS#8, PKCS#1 or SEC1): {e}",
                files.key.display()
            ),
        });
    }
    let ca = read("api.tls.client_ca", &files.client_ca)?;
    certs("api.tls.client_ca", &files.client_ca, &ca)?;

    // rustls checks the rest when the acceptor is built: first the identity alone (a key
    // that does not match the certificate), then with the client CA.
    let identity = ServerTlsConfig::new()
        .identity(Identity::from_pem(&cert, &key))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Err(e) = Server::builder().tls_config(identity.clone()) {
        let why = error_chain(&e);
        return Err(TlsFileError {
            // rustls says "invalid peer certificate: BadEncoding" when the certificate is at
            // fault, and names the key otherwise (e.g. KeyMismatch).
            field: if why.contains("certificate") {
                "api.tls.cert"
            } else {
                "api.tls.key"
            },
            message: format!(
                "{} and {} are not a usable certificate and key pair: {}",
                files.cert.display(),
                files.key.display(),
                why.replace("invalid peer certificate", "invalid certificate")
            ),
        });
    }
    let config = identity.client_ca_root(Certificate::from_pem(&ca));
    if let Err(e) = Server::builder().tls_config(config.clone()) {
        return Err(TlsFileError {
            field: "api.tls.client_ca",
            message: format!(
                "{} is not a usable CA certificate: {}",
                files.client_ca.display(),
                error_chain(&e)
            ),
        });
    }
    Ok(config)
}

/// The causes of a tonic error, `a: b` (its own message is just "transport error").
fn error_chain(e: &tonic::transport::Error) -> String {
    use std::error::Error as _;
    let Some(first) = e.source() else {
        return e.to_string();
    };
    let mut out = first.to_string();
    let mut source = first.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
