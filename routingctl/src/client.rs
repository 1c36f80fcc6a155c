//! Connection to a daemon's API: its Unix socket, or its TCP listener with mutual TLS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// Where the daemon's API is.
pub(crate) enum Target {
    Socket(PathBuf),
    /// `--server`, its TLS settings made from `--ca`, `--cert` and `--key`.
    Server {
        url: Uri,
        endpoint: Box<Endpoint>,
    },
}

/// The PEM files of `--ca`, `--cert` and `--key`, read and checked.
pub(crate) struct ClientPem {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "{}", p.display()),
            Target::Server { url, .. } => write!(f, "{}", server_name(url)),
        }
    }
}

/// Dials the daemon; failures name the socket or the server.
pub(crate) async fn connect(target: &Target) -> anyhow::Result<Channel> {
    match target {
        Target::Socket(socket) => connect_unix(socket).await,
        Target::Server { url, endpoint } => connect_tls(url, endpoint).await,
    }
}

async fn connect_unix(socket: &Path) -> anyhow::Result<Channel> {
    // Fail early with the socket's name: tonic's own error for a missing socket is vague.
    std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the API at {} (is the daemon running? use --socket)",
            socket.display()
        )
    })?;
    let path: PathBuf = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector always dials the socket.
    Endpoint::try_from("http://[::1]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .with_context(|| format!("cannot reach the API at {}", socket.display()))
}

/// `https://host:port`, as the operator wrote it (a `Uri` prints a trailing `/`).
pub(crate) fn server_name(url: &Uri) -> String {
    match url.authority() {
        Some(a) => format!("https://{a}"),
        None => url.to_string(),
    }
}

/// The endpoint of `--server` with mutual TLS: the daemon must present a certificate signed
/// by `--ca`, and we present `--cert`. Errors (e.g. a key that is not the certificate's)
/// are the operator's to fix.
pub(crate) fn tls_endpoint(url: &Uri, pem: &ClientPem) -> Result<Endpoint, String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pem.ca))
        .identity(Identity::from_pem(&pem.cert, &pem.key));
    Endpoint::from(url.clone())
        .connect_timeout(Duration::from_secs(10))
        .tls_config(tls)
        .map_err(|e| {
            format!(
                "--ca, --cert and --key do not make a usable TLS client (is --key the key of \
                 --cert?): {}",
                error_chain(&e)
            )
        })
}

async fn connect_tls(url: &Uri, endpoint: &Endpoint) -> anyhow::Result<Channel> {
    let name = server_name(url);
    endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))
        .with_context(|| {
            format!(
                "cannot reach the API at {name} (is it the daemon's api.listen? did the CA of \
                 --ca sign the daemon's api.tls.cert?)"
            )
        })
}

/// An error with its sources, `a: b: c`, without the repeats tonic's errors carry.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Checks that `--ca`, `--cert` and `--key` hold what they should: the message names the
/// flag and the file.
pub(crate) fn read_pem(flag: &str, path: &Path, want: Pem) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bytes = std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    match want {
        Pem::Certificates => {
            match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
                Ok(v) if !v.is_empty() => {}
                Ok(_) => {
                    return Err(format!(
                        "{flag} {}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
                        path.display()
                    ));
                }
                Err(e) => return Err(format!("{flag} {}: invalid PEM: {e}", path.display())),
            }
        }
        Pem::PrivateKey => {
            if let Err(e) = PrivateKeyDer::from_pem_slice(&bytes) {
                return Err(format!(
                    "{flag} {}: no usable private key in it (expected PEM: PKCS#8, PKCS#1 or SEC1): {e}",
                    path.display()
                ));
            }
        }
    }
    Ok(bytes)
}

#[derive(Clone, Copy)]
pub(crate) enum Pem {
    Certificates,
    PrivateKey,
}

/// `--server`'s value: `https://host:port`.
pub(crate) fn parse_server(s: &str) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|e| format!("{s:?} is not a URL ({e}): write https://HOST:PORT"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(other) => {
            return Err(format!(
                "{other}:// is not served: the TCP API only speaks mutual TLS, write https://HOST:PORT"
            ));
        }
        None => return Err(format!("{s:?} has no scheme: write https://HOST:PORT")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host: write https://HOST:PORT"));
    }
    if uri.port().is_none() {
        return Err(format!(
            "{s:?} has no port: write https://HOST:PORT (the port of the daemon's api.listen)"
        ));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!(
            "{s:?} has a path: write https://HOST:PORT (the API is at the root)"
        ));
    }
    Ok(uri)
}
