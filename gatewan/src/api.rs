//! The gatewan's own gRPC service, `Tunnels` (the mesh service is `gatewan_kit::api`):
//! the tunnel table, key rotation, on-demand probes and disabled tunnels.

use gatewan_proto::v1;
use tonic::{Request, Response, Status};

/// The `Tunnels` service: the tunnel manager's latest table, key rotation, probes and
/// the tunnels disabled by an operator.
pub struct TunnelsApi {
    tunnels: crate::tunnels::manager::TunnelsHandle,
    state_dir: gatewan_kit::state_dir::StateDir,
    disabled: crate::drain::Kept,
}

impl TunnelsApi {
    pub fn new(
        tunnels: crate::tunnels::manager::TunnelsHandle,
        state_dir: gatewan_kit::state_dir::StateDir,
        mesh: gatewan_mesh::driver::MeshHandle,
        local: gatewan_mesh::NodeId,
        disabled: crate::drain::Drained,
    ) -> Self {
        let disabled = crate::drain::Kept::new(
            mesh,
            local,
            state_dir.path().join(crate::drain::DISABLED_FILE),
            "disabled tunnels",
            |n, ids| n.disabled_tunnels = ids.0.iter().cloned().collect(),
            disabled,
        );
        TunnelsApi {
            tunnels,
            state_dir,
            disabled,
        }
    }

    pub fn into_server(self) -> gatewan_proto::v1::tunnels_server::TunnelsServer<Self> {
        gatewan_proto::v1::tunnels_server::TunnelsServer::new(self)
    }
}

/// The row of `tunnel` (interface or id), or an error that lists the tunnels.
fn row<'a>(table: &'a [v1::TunnelInfo], tunnel: &str) -> Result<&'a v1::TunnelInfo, Status> {
    table
        .iter()
        .find(|t| t.interface == tunnel || t.id == tunnel)
        .ok_or_else(|| {
            let mut names: Vec<&str> = table.iter().map(|t| t.interface.as_str()).collect();
            names.sort_unstable();
            Status::invalid_argument(format!(
                "no tunnel {tunnel:?} on this gatewan: name one by its interface ({}) or id, as `routingctl tunnels` shows them",
                names.join(", ")
            ))
        })
}

/// The on-demand probe target of `tunnel` (interface or id) from the tunnel table.
fn probe_target(
    table: &[v1::TunnelInfo],
    tunnel: &str,
) -> Result<(crate::probe::ondemand::Target, String), Status> {
    let t = row(table, tunnel)?;
    let local = t.probe_source_addr.parse().ok();
    let peer = t.probe_target_endpoint.parse().ok();
    let (Some(local), Some(peer)) = (local, peer) else {
        return Err(Status::unavailable(format!(
            "tunnel {} has no inner addresses yet",
            t.interface
        )));
    };
    Ok((
        crate::probe::ondemand::Target {
            interface: t.interface.clone(),
            tunnel_index: t.index,
            local,
            peer,
        },
        t.peer.clone(),
    ))
}

#[tonic::async_trait]
impl gatewan_proto::v1::tunnels_server::Tunnels for TunnelsApi {
    type ProbeStream = tokio_stream::wrappers::ReceiverStream<Result<v1::ProbeOutcome, Status>>;

    async fn probe(
        &self,
        request: Request<v1::ProbeRequest>,
    ) -> Result<Response<Self::ProbeStream>, Status> {
        use crate::probe::ondemand::{MAX_COUNT, MAX_INTERVAL, MIN_INTERVAL, run};
        let r = request.into_inner();
        let count = if r.count == 0 { 10 } else { r.count };
        if count > MAX_COUNT {
            return Err(Status::invalid_argument(format!(
                "count {count} is more than {MAX_COUNT}"
            )));
        }
        let interval = match r.interval_ms {
            0 => std::time::Duration::from_millis(200),
            ms => std::time::Duration::from_millis(u64::from(ms)),
        };
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            return Err(Status::invalid_argument(format!(
                "interval {interval:?} is outside {MIN_INTERVAL:?} to {MAX_INTERVAL:?}"
            )));
        }
        let table = self.tunnels.table.borrow().clone();
        let (target, peer) = probe_target(&table, &r.tunnel)?;
        // A reply later than a second (or two intervals) is lost, as for the tunnel's own.
        let timeout = std::time::Duration::from_secs(1).max(interval * 2);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let interface = target.interface.clone();
            let result = run(&target, count, interval, timeout, |o| {
                let outcome = v1::ProbeOutcome {
                    seq: o.seq,
                    lost: o.rtt.is_none(),
                    rtt_ns: o
                        .rtt
                        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
                    interface: interface.clone(),
                    peer: peer.clone(),
                };
                // A full channel waits for the client; a closed one ends the probe.
                tx.try_send(Ok(outcome)).is_ok() || !tx.is_closed()
            })
            .await;
            if let Err(e) = result {
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "cannot probe {interface}: {e}"
                    ))))
                    .await;
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn list_tunnels(
        &self,
        _: Request<v1::ListTunnelsRequest>,
    ) -> Result<Response<v1::ListTunnelsResponse>, Status> {
        let table = self.tunnels.table.borrow().clone();
        let mut tunnels = table.as_ref().clone();
        let disabled = self.disabled.names().await;
        for t in &mut tunnels {
            t.disabled = disabled.contains(&t.id);
        }
        Ok(Response::new(v1::ListTunnelsResponse { tunnels }))
    }

    async fn set_disabled(
        &self,
        request: Request<v1::SetDisabledRequest>,
    ) -> Result<Response<v1::SetDisabledResponse>, Status> {
        let r = request.into_inner();
        let table = self.tunnels.table.borrow().clone();
        let t = row(&table, &r.tunnel)?;
        let changed = self.disabled.set(&t.id, r.disabled).await?;
        if changed {
            tracing::info!(
                tunnel = %t.id,
                interface = %t.interface,
                "tunnel {}",
                if r.disabled { "disabled: controllers move traffic off it" } else { "enabled" }
            );
        }
        Ok(Response::new(v1::SetDisabledResponse {
            tunnel: t.id.clone(),
            interface: t.interface.clone(),
            disabled: r.disabled,
            changed,
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
