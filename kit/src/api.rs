//! The gRPC API on a Unix socket (mode 0600) and, with `api.listen`, on TCP with mutual TLS:
//! the `Mesh` service (members, keyring), served by gatewan and bgpctl alike.

use std::path::Path;

use gatewan_proto::v1::mesh_server::{Mesh, MeshServer};
use gatewan_proto::v1::{self, MemberState as PbState};
use tonic::{Request, Response, Status};

use gatewan_mesh::driver::{KeyringOp, MeshError, MeshHandle, MeshView};
use gatewan_mesh::{MemberState, MeshKey, NodeId};
use gatewan_tunnel_plan::{GatewanView, slots};

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
    let gatewans: Vec<GatewanView> = view
        .store
        .gatewans()
        .filter_map(|g| GatewanView::from_gatewan(&g))
        .collect();
    let holders = slots::holders(&gatewans);
    let name_of = |id: NodeId| {
        gatewans
            .iter()
            .find(|g| g.id == id)
            .map_or_else(|| id.to_string(), |g| g.name.clone())
    };
    view.members
        .iter()
        .map(|m| {
            let node = view.store.node(m.id.node);
            let slot = gatewans.iter().find(|g| g.id == m.id.node).map(|g| g.slot);
            let held_by = slot
                .and_then(|s| holders.get(&s))
                .filter(|h| **h != m.id.node)
                .map(|h| name_of(*h))
                .unwrap_or_default();
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
                key_fingerprint: m.key.map(|k| k.fingerprint()).unwrap_or_default(),
                revoked: m.revoked,
                tunnel_slot: slot,
                tunnel_slot_held_by: held_by,
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

    async fn revoke_member(
        &self,
        r: Request<v1::RevokeMemberRequest>,
    ) -> Result<Response<v1::RevokeMemberResponse>, Status> {
        let id = r.into_inner().id;
        let node: NodeId = id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("{id:?} is not a node id: {e}")))?;
        let version = self.mesh.revoke(node).await.map_err(|e| match e {
            MeshError::Record(r) => Status::permission_denied(r),
            e => status(e),
        })?;
        Ok(Response::new(v1::RevokeMemberResponse { version }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use gatewan_mesh::store::{StateStore, encode_record};
    use gatewan_mesh::{MemberId, MemberInfo};
    use gatewan_proto::v1::record::Body;

    /// A gatewan `gw{n}` announcing `slot`, in `store`, and its member entry.
    fn gatewan(store: &mut StateStore, n: u8, slot: u32, pinned: bool) -> MemberInfo {
        let id = NodeId([n; 16]);
        let record = v1::Record {
            origin: id.0.to_vec().into(),
            version: 1,
            body: Some(Body::Node(v1::NodeRecord {
                id: id.0.to_vec().into(),
                name: format!("gw{n}"),
                datacenter: "sg1".into(),
                role: v1::Role::Gatewan as i32,
                wireguard_public_key: vec![n; 32].into(),
                tunnel_slot: Some(slot),
                tunnel_slot_claimed_ms: 1_000,
                tunnel_slot_pinned: pinned,
                ..Default::default()
            })),
            ..Default::default()
        };
        store.merge(encode_record(&record).expect("a valid node record"));
        MemberInfo {
            id: MemberId {
                node: id,
                generation: 1,
                addrs: Vec::new(),
            },
            state: MemberState::Alive,
            incarnation: 0,
            last_change_ms: 0,
            local: false,
            key: None,
            revoked: false,
        }
    }

    #[test]
    fn members_show_each_gatewans_slot_and_who_keeps_a_slot_pinned_twice() {
        let mut store = StateStore::default();
        let members = vec![
            gatewan(&mut store, 2, 7, true),
            gatewan(&mut store, 1, 7, true),
            gatewan(&mut store, 3, 8, false),
        ];
        let view = MeshView {
            members,
            store,
            ..MeshView::default()
        };
        let shown: Vec<(String, Option<u32>, String)> = super::members(&view)
            .into_iter()
            .map(|m| (m.name, m.tunnel_slot, m.tunnel_slot_held_by))
            .collect();
        assert_eq!(
            shown,
            [
                // Pinned twice: the lower node id keeps it, the other is shown in conflict.
                ("gw2".to_string(), Some(7), "gw1".to_string()),
                ("gw1".to_string(), Some(7), String::new()),
                ("gw3".to_string(), Some(8), String::new()),
            ]
        );
    }
}
