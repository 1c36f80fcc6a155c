//! Transits drained and tunnels disabled for maintenance (ADR 0047): `routingctl transits
//! drain NAME` before a provider's maintenance window, `routingctl tunnels disable TUNNEL`
//! for one tunnel. The names are kept in `state_dir/drained-transits` and
//! `state_dir/disabled-tunnels` (one a line, synced, renamed into place) so they survive
//! restarts, and announced in our NodeRecord (`Transit.drained`, `disabled_tunnels`), so
//! every bgpctl of every datacenter moves traffic off those tunnels. The tunnels stay up:
//! traffic still in flight on them arrives, and they are the last resort when no other
//! tunnel toward a datacenter is healthy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gatewan_mesh::NodeId;
use gatewan_mesh::driver::MeshHandle;
use gatewan_proto::v1;
use tonic::{Request, Response, Status};

/// The drained transits' file in state_dir.
pub const FILE: &str = "drained-transits";
/// The disabled tunnels' file in state_dir (tunnel ids).
pub const DISABLED_FILE: &str = "disabled-tunnels";

/// Names kept in a file of state_dir: drained transits, disabled tunnels' ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Drained(pub BTreeSet<String>);

impl Drained {
    /// What `path` holds; a missing file is an empty set. Names `keep` refuses (a transit
    /// removed from the config) are dropped, and said so.
    pub fn load(path: &Path, keep: impl Fn(&str) -> bool) -> std::io::Result<Drained> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut names = BTreeSet::new();
        for name in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if keep(name) {
                names.insert(name.to_string());
            } else {
                tracing::warn!(name, file = %path.display(), "no longer configured: forgotten");
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

/// A [`Drained`] set kept in state_dir and announced in our NodeRecord: one change at a
/// time is kept (synced) first, then announced, so a crash between the two announces it
/// at the next start.
pub struct Kept {
    mesh: MeshHandle,
    local: NodeId,
    path: PathBuf,
    /// What the set is, for logs and errors ("drained transits").
    what: &'static str,
    /// Writes the set into our NodeRecord.
    apply: fn(&mut v1::NodeRecord, &Drained),
    /// Held across save and announce: two requests apply one after the other.
    set: tokio::sync::Mutex<Drained>,
}

impl Kept {
    pub fn new(
        mesh: MeshHandle,
        local: NodeId,
        path: PathBuf,
        what: &'static str,
        apply: fn(&mut v1::NodeRecord, &Drained),
        set: Drained,
    ) -> Self {
        Kept {
            mesh,
            local,
            path,
            what,
            apply,
            set: tokio::sync::Mutex::new(set),
        }
    }

    /// Puts `name` in the set (or takes it out); true when that changed it. Announced
    /// even when unchanged: that repairs a NodeRecord that lost it.
    pub async fn set(&self, name: &str, on: bool) -> Result<bool, Status> {
        let mut set = self.set.lock().await;
        let mut next = set.clone();
        let changed = if on {
            next.0.insert(name.to_string())
        } else {
            next.0.remove(name)
        };
        if changed {
            let path = self.path.clone();
            let to_save = next.clone();
            tokio::task::spawn_blocking(move || to_save.save(&path))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| {
                    Status::internal(format!(
                        "cannot keep the {} in {}: {e}",
                        self.what,
                        self.path.display()
                    ))
                })?;
            *set = next;
        }
        let names = set.clone();
        let apply = self.apply;
        crate::announce::announce(&self.mesh, self.local, self.what, |n| apply(n, &names)).await;
        Ok(changed)
    }

    /// The set now.
    pub async fn names(&self) -> Drained {
        self.set.lock().await.clone()
    }
}

/// The `Transits` service.
pub struct TransitsApi {
    mesh: MeshHandle,
    local: NodeId,
    /// The configured transits' names.
    transits: Vec<String>,
    drained: Kept,
}

impl TransitsApi {
    pub fn new(
        mesh: MeshHandle,
        local: NodeId,
        state_dir: &Path,
        transits: Vec<String>,
        drained: Drained,
    ) -> Self {
        let kept = Kept::new(
            mesh.clone(),
            local,
            state_dir.join(FILE),
            "drained transits",
            |n, names| {
                for t in &mut n.transits {
                    t.drained = names.contains(&t.name);
                }
            },
            drained,
        );
        TransitsApi {
            mesh,
            local,
            transits,
            drained: kept,
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
        let changed = self.drained.set(&r.transit, r.drained).await?;
        if changed {
            tracing::info!(
                transit = %r.transit,
                drained = r.drained,
                "transit {}",
                if r.drained { "drained: controllers move traffic off its tunnels" } else { "undrained" }
            );
        }
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
            Drained::load(&path, |n| n == "lumen").unwrap(),
            Drained::default(),
            "no file, no drain"
        );
        let d = Drained(["lumen".to_string(), "telia".to_string()].into());
        d.save(&path).unwrap();
        let back = Drained::load(&path, |n| ["lumen", "cogent"].contains(&n)).unwrap();
        assert!(back.contains("lumen") && !back.contains("telia") && !back.contains("cogent"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
