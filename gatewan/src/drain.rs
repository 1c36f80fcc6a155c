//! Transits drained for maintenance (ADR 0047): `routingctl transits drain NAME` before a
//! provider's maintenance window. The drained names are kept in
//! `state_dir/drained-transits` (one a line, synced, renamed into place) so a drain
//! survives restarts, and announced in our NodeRecord (`Transit.drained`), so every
//! bgpctl of every datacenter moves traffic off the transit's tunnels. The tunnels stay
//! up: traffic still in flight on them arrives, and they are the last resort when no
//! other tunnel toward a datacenter is healthy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gatewan_mesh::NodeId;
use gatewan_mesh::driver::MeshHandle;
use gatewan_proto::v1;
use tonic::{Request, Response, Status};

/// The file's name in state_dir.
pub const FILE: &str = "drained-transits";

/// The drained transits' names, as kept in state_dir.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Drained(pub BTreeSet<String>);

impl Drained {
    /// What `path` holds; a missing file is no drain. Names not among `transits` (a
    /// transit removed from the config) are dropped, and said so.
    pub fn load(path: &Path, transits: &[&str]) -> std::io::Result<Drained> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut names = BTreeSet::new();
        for name in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if transits.contains(&name) {
                names.insert(name.to_string());
            } else {
                tracing::warn!(transit = name, file = %path.display(), "a drained transit that is no longer configured: forgotten");
            }
        }
        Ok(Drained(names))
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut text = String::new();
        for n in &self.0 {
            text.push_str(n);
            text.push('\n');
        }
        gatewan_mesh::durable::write_private(path, text.as_bytes())
    }

    pub fn contains(&self, transit: &str) -> bool {
        self.0.contains(transit)
    }
}

/// The `Transits` service.
pub struct TransitsApi {
    mesh: MeshHandle,
    local: NodeId,
    path: PathBuf,
    /// The configured transits' names.
    transits: Vec<String>,
    /// Held across save and announce: two requests apply one after the other.
    drained: Arc<tokio::sync::Mutex<Drained>>,
}

impl TransitsApi {
    pub fn new(
        mesh: MeshHandle,
        local: NodeId,
        state_dir: &Path,
        transits: Vec<String>,
        drained: Drained,
    ) -> Self {
        TransitsApi {
            mesh,
            local,
            path: state_dir.join(FILE),
            transits,
            drained: Arc::new(tokio::sync::Mutex::new(drained)),
        }
    }

    pub fn into_server(self) -> v1::transits_server::TransitsServer<Self> {
        v1::transits_server::TransitsServer::new(self)
    }

    /// Our transits as the mesh holds our NodeRecord.
    fn announced(&self) -> Vec<v1::Transit> {
        self.mesh
            .view()
            .store
            .node(self.local)
            .map(|n| n.transits.clone())
            .unwrap_or_default()
    }
}

#[tonic::async_trait]
impl v1::transits_server::Transits for TransitsApi {
    async fn list_transits(
        &self,
        _: Request<v1::ListTransitsRequest>,
    ) -> Result<Response<v1::ListTransitsResponse>, Status> {
        Ok(Response::new(v1::ListTransitsResponse {
            transits: self.announced(),
        }))
    }

    async fn set_drained(
        &self,
        request: Request<v1::SetDrainedRequest>,
    ) -> Result<Response<v1::SetDrainedResponse>, Status> {
        let r = request.into_inner();
        if !self.transits.contains(&r.transit) {
            return Err(Status::invalid_argument(format!(
                "no transit {:?} on this gatewan: its transits are {}",
                r.transit,
                self.transits.join(", ")
            )));
        }
        let mut drained = self.drained.lock().await;
        let mut next = drained.clone();
        let changed = if r.drained {
            next.0.insert(r.transit.clone())
        } else {
            next.0.remove(&r.transit)
        };
        if changed {
            // Kept first: a crash before the announce announces it at restart.
            let path = self.path.clone();
            let to_save = next.clone();
            tokio::task::spawn_blocking(move || to_save.save(&path))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| {
                    Status::internal(format!(
                        "cannot keep the drain in {}: {e}",
                        self.path.display()
                    ))
                })?;
            *drained = next;
            tracing::info!(
                transit = %r.transit,
                drained = r.drained,
                "transit {}",
                if r.drained { "drained: controllers move traffic off its tunnels" } else { "undrained" }
            );
        }
        // Announced even when unchanged: repairs a NodeRecord that lost it.
        let names = drained.clone();
        crate::announce::announce(&self.mesh, self.local, "drained transits", |n| {
            for t in &mut n.transits {
                t.drained = names.contains(&t.name);
            }
        })
        .await;
        let transit = self
            .announced()
            .into_iter()
            .find(|t| t.name == r.transit)
            .unwrap_or_else(|| v1::Transit {
                name: r.transit.clone(),
                drained: r.drained,
                ..Default::default()
            });
        Ok(Response::new(v1::SetDrainedResponse {
            transit: Some(transit),
            changed,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_is_kept_and_read_back_and_a_transit_no_longer_configured_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(
            Drained::load(&path, &["lumen"]).unwrap(),
            Drained::default(),
            "no file, no drain"
        );
        let d = Drained(["lumen".to_string(), "telia".to_string()].into());
        d.save(&path).unwrap();
        let back = Drained::load(&path, &["lumen", "cogent"]).unwrap();
        assert!(back.contains("lumen") && !back.contains("telia") && !back.contains("cogent"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
