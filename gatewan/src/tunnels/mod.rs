//! Tunnels: one WireGuard tunnel per (local transit, remote transit) pair to every gatewan
//! of another datacenter. `plan` is the pure planner (the `gatewan-tunnel-plan` crate,
//! which bgpctl shares), `reconcile` the pure desired-versus-observed diff, `system` the
//! host adapter, `manager` the owning task.

pub mod key;
pub mod manager;
pub mod numbering;
pub use gatewan_tunnel_plan as plan;
pub mod reconcile;
pub mod state;
pub mod system;
pub mod vtep;
