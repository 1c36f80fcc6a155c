//! The gRPC API on a Unix socket (mode 0600) and, with `api.listen`, on TCP with mutual TLS:
//! the `Mesh` service (members, keyring), served by gatewan and bgpctl alike.

use std::path::Path;

use gatewan_proto::v1::mesh_server::{Mesh, MeshServer};
use gatewan_proto::v1::{self, MemberState as PbState};
use tonic::{Request, Response, Status};

use crate::mesh::driver::{KeyringOp, MeshError, MeshHandle, MeshView};
use crate::mesh::{MemberState, MeshKey, NodeId};

pub struct MeshApi {
    mesh: MeshHandle,
}

impl MeshApi {
    pub fn new(mesh: MeshHandle) -> Self {
        MeshApi { mesh }
    }

    pub fn into_server(self) -> MeshServer<Self> {
        MeshServer::new(self)
    }
}

/// The members as the API shows them: SWIM state joined with each member's NodeRecord.
pub fn members(view: &MeshView) -> Vec<v1::Member> {
    view.members
        .iter()
        .map(|m| {
            let node = view.store.node(m.id.node);
            v1::Member {
                id: m.id.node.to_string(),
                name: node.map(|n| n.name.clone()).unwrap_or_default(),
                datacenter: node.map(|n| n.datacenter.clone()).unwrap_or_default(),
                role: node.map_or(0, |n| n.role),
                addresses: m.id.addrs.iter().map(ToString::to_string).collect(),
                state: match m.state {
                    MemberState::Alive => PbState::Alive,
                    MemberState::Suspect => PbState::Suspect,
                    MemberState::Down => PbState::Down,
                } as i32,
                incarnation: u32::from(m.incarnation),
                generation: m.id.generation,
                last_change_unix_ms: i64::try_from(m.last_change_ms).unwrap_or(0),
                version: node.map(|n| n.version.clone()).unwrap_or_default(),
                local: m.local,
            }
        })
        .collect()
}

fn keys(view: &MeshView) -> v1::KeyringResponse {
    v1::KeyringResponse {
        keys: view
            .keys
            .iter()
            .map(|(fingerprint, primary)| v1::KeyInfo {
                fingerprint: fingerprint.clone(),
                primary: *primary,
            })
            .collect(),
        ..Default::default()
    }
}

/// The name a member gives itself in its NodeRecord, if we hold it.
fn member_name(view: &MeshView, node: NodeId) -> String {
    view.store
        .node(node)
        .map(|n| n.name.clone())
        .unwrap_or_default()
}

fn status(e: MeshError) -> Status {
    match e {
        MeshError::Keyring(k) => Status::failed_precondition(k.to_string()),
        MeshError::Stopped => Status::unavailable("the mesh task has stopped"),
        MeshError::Record(r) => Status::invalid_argument(r),
    }
}

impl MeshApi {
    async fn keyring(
        &self,
        op: KeyringOp,
        local_only: bool,
    ) -> Result<Response<v1::KeyringResponse>, Status> {
        let mut rx = self.mesh.subscribe();
        let _ = rx.borrow_and_update();
        let outcome = self.mesh.keyring(op, !local_only).await.map_err(status)?;
        // The view is refreshed by the mesh task right after the change.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), rx.changed()).await;
        let view = self.mesh.view();
        let mut response = keys(&view);
        if !local_only {
            response.cluster = true;
            response.members_asked = outcome.asked.len() as u32;
            response.failures = outcome
                .failures
                .into_iter()
                .map(|(node, error)| v1::KeyringFailure {
                    member_id: node.to_string(),
                    name: member_name(&view, node),
                    error,
                })
                .collect();
        }
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl Mesh for MeshApi {
    async fn list_members(
        &self,
        _: Request<v1::ListMembersRequest>,
    ) -> Result<Response<v1::ListMembersResponse>, Status> {
        Ok(Response::new(v1::ListMembersResponse {
            members: members(&self.mesh.view()),
        }))
    }

    async fn list_keys(
        &self,
        _: Request<v1::ListKeysRequest>,
    ) -> Result<Response<v1::KeyringResponse>, Status> {
        Ok(Response::new(keys(&self.mesh.view())))
    }

    async fn install_key(
        &self,
        r: Request<v1::InstallKeyRequest>,
    ) -> Result<Response<v1::KeyringResponse>, Status> {
        let r = r.into_inner();
        let key = MeshKey::from_base64(&r.key).map_err(Status::invalid_argument)?;
        self.keyring(KeyringOp::Install(key), r.local_only).await
    }

    async fn use_key(
        &self,
        r: Request<v1::UseKeyRequest>,
    ) -> Result<Response<v1::KeyringResponse>, Status> {
        let r = r.into_inner();
        self.keyring(KeyringOp::Use(r.key), r.local_only).await
    }

    async fn remove_key(
        &self,
        r: Request<v1::RemoveKeyRequest>,
    ) -> Result<Response<v1::KeyringResponse>, Status> {
        let r = r.into_inner();
        self.keyring(KeyringOp::Remove(r.key), r.local_only).await
    }
}

/// Binds the API socket with mode 0600, replacing a stale socket left by a crash but
/// refusing to steal one a running daemon still answers on.
pub fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running daemon", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // Created under a restrictive umask so no other user can connect between bind and chmod.
    use nix::sys::stat::{Mode, umask};
    let old = umask(Mode::from_bits_truncate(0o177));
    let l = tokio::net::UnixListener::bind(path);
    umask(old);
    let l = l?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
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
pub fn server_tls(
    files: &crate::config::ApiTlsFiles,
) -> Result<tonic::transport::ServerTlsConfig, TlsFileError> {
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

/// The `Tunnels` service: the tunnel manager's latest table, and key rotation.
pub struct TunnelsApi {
    tunnels: crate::tunnels::manager::TunnelsHandle,
    state_dir: crate::state_dir::StateDir,
}

impl TunnelsApi {
    pub fn new(
        tunnels: crate::tunnels::manager::TunnelsHandle,
        state_dir: crate::state_dir::StateDir,
    ) -> Self {
        TunnelsApi { tunnels, state_dir }
    }

    pub fn into_server(self) -> gatewan_proto::v1::tunnels_server::TunnelsServer<Self> {
        gatewan_proto::v1::tunnels_server::TunnelsServer::new(self)
    }
}

#[tonic::async_trait]
impl gatewan_proto::v1::tunnels_server::Tunnels for TunnelsApi {
    async fn list_tunnels(
        &self,
        _: Request<v1::ListTunnelsRequest>,
    ) -> Result<Response<v1::ListTunnelsResponse>, Status> {
        let table = self.tunnels.table.borrow().clone();
        Ok(Response::new(v1::ListTunnelsResponse {
            tunnels: table.as_ref().clone(),
        }))
    }

    async fn rotate_key(
        &self,
        _: Request<v1::RotateKeyRequest>,
    ) -> Result<Response<v1::RotateKeyResponse>, Status> {
        let state_dir = self.state_dir.clone();
        let key = tokio::task::spawn_blocking(move || state_dir.new_wireguard_key())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("cannot store the new key: {e}")))?;
        self.tunnels
            .rotate_key(key)
            .await
            .map_err(Status::unavailable)?;
        Ok(Response::new(v1::RotateKeyResponse {
            public_key: wireguard_control::Key(key).get_public().to_base64(),
        }))
    }
}
