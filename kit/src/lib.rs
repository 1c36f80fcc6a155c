//! The kit every mesh member daemon (gatewan, bgpctl) is built from: the config sections
//! and error type they share (`config`), operator units (`units`), the state directory,
//! the `Mesh` gRPC service and its Unix/TLS listeners (`api`, `tls`), `/metrics`, what a
//! daemon does at start and stop (`daemon`) and what it tells systemd then (`systemd`),
//! and how it reloads its configuration on SIGHUP (`reload`).
//!
//! It links neither WireGuard nor netlink: what touches the host's network lives in the
//! `gatewan` crate.

pub mod api;
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod reload;
pub mod state_dir;
pub mod systemd;
pub mod tls;
pub mod units;
