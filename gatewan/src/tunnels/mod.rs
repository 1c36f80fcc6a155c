//! Tunnels: one WireGuard tunnel per (local transit, remote transit) pair to every gatewan
//! of another datacenter. `plan` is the pure planner.

pub mod plan;
pub mod reconcile;
