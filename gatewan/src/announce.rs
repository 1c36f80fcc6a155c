//! The one way to change this gatewan's NodeRecord after start: read it from the mesh
//! store, change it, publish it. Several owners change parts of it (the tunnel slot, the
//! WireGuard key, drained transits); one lock over the read-change-publish keeps one
//! owner's publish from carrying back a copy read before another's.

use gatewan_mesh::NodeId;
use gatewan_mesh::driver::MeshHandle;
use gatewan_proto::v1::{self, record::Body};
use tracing::warn;

static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Our NodeRecord as the mesh holds it, changed by `change` and published again. False
/// when it could not be: logged, and the change is announced at the next start from what
/// its owner keeps in state_dir.
pub async fn announce(
    mesh: &MeshHandle,
    local: NodeId,
    what: &str,
    change: impl FnOnce(&mut v1::NodeRecord),
) -> bool {
    let _one_at_a_time = LOCK.lock().await;
    let Some(mut record) = mesh.view().store.node(local).cloned() else {
        warn!(
            what,
            "our NodeRecord is not in the mesh store; announced at restart"
        );
        return false;
    };
    change(&mut record);
    if let Err(e) = mesh.publish(Body::Node(record)).await {
        warn!(error = %e, what, "cannot announce it");
        return false;
    }
    true
}
