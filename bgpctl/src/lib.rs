//! bgpctl: the BGP EVPN speaker and the controller of Gatewan.
//!
//! - `bgp`: BGP sessions toward the fabric (rustbgpd-fsm + rustbgpd-wire), EVPN type-5
//!   Adj-RIB-Out (minimal UPDATEs) and Adj-RIB-In (import policy: route targets, prefixes, max-prefix).
//! - `controller`: pure decision code: from a mesh snapshot and a policy, the tunnels that
//!   carry traffic to each remote datacenter, and why.
//! - `export`: decision → type-5 routes, fabric routes → the datacenter's networks (pure).
//! - `config` (`bgpctl.yaml`), `daemon` (the decision loop), `api` (gRPC for routingctl),
//!   `metrics` (bgpctl's part of `/metrics`), `reload` (what SIGHUP may change), `trace`
//!   (the path toward a destination, for `routingctl trace`).
//!
//! bgpctl joins the gatewans' mesh with role `bgpctl` through the `gatewan-mesh` crate.

pub mod api;
pub mod bgp;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod export;
pub mod metrics;
pub mod reload;
pub mod trace;
