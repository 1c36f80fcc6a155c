//! The gossip mesh: SWIM membership (foca) with sealed datagrams, a versioned state store
//! disseminated by piggybacked broadcasts and repaired by push-pull anti-entropy.
//!
//! Pure parts (`seal`, `signing`, `pins`, `guard`, `store`, `sync`, `core`) hold all the logic; `driver` is
//! the thin tokio adapter around a UDP socket. gatewan and bgpctl both join the mesh with
//! this crate, which links neither WireGuard nor netlink.

pub mod core;
pub mod driver;
pub mod durable;
pub mod egress;
pub mod gatewans;
pub mod guard;
pub mod identity;
pub mod keyring_file;
pub mod pins;
pub mod seal;
pub mod signing;
/// Deterministic virtual-time simulator of a whole mesh, for tests and benchmarks (feature
/// `sim`; never in the daemons).
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod store;
pub mod sync;

pub use self::core::{Counters, DropReason, MemberInfo, MemberState, MeshCore, MeshSettings};
pub use gatewans::{GatewanRecord, GatewanTransit};
pub use identity::{MemberId, NodeId};
pub use pins::KeyPins;
pub use seal::{Keyring, MeshKey};
pub use signing::{MemberKey, PublicKey};
