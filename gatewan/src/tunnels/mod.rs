//! Tunnels: one WireGuard tunnel per (local transit, remote transit) pair to every gatewan
//! of another datacenter. `plan` is the pure planner, `reconcile` the pure
//! desired-versus-observed diff, `system` the host adapter, `manager` the owning task.

pub mod manager;
pub mod plan;
pub mod reconcile;
pub mod system;
pub mod vtep;
