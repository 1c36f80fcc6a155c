//! The gatewan's own gRPC service, `Tunnels` (the mesh service is `gatewan_kit::api`).

use gatewan_proto::v1;
use tonic::{Request, Response, Status};

/// The `Tunnels` service: the tunnel manager's latest table, and key rotation.
pub struct TunnelsApi {
    tunnels: crate::tunnels::manager::TunnelsHandle,
    state_dir: gatewan_kit::state_dir::StateDir,
}

impl TunnelsApi {
    pub fn new(
        tunnels: crate::tunnels::manager::TunnelsHandle,
        state_dir: gatewan_kit::state_dir::StateDir,
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
        let key =
            tokio::task::spawn_blocking(move || crate::tunnels::key::new_wireguard_key(&state_dir))
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
