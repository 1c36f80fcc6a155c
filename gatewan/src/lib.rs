//! The gatewan daemon's library: everything that touches the host's network. It builds the
//! WireGuard tunnels to every remote gatewan (`tunnels`: pure planner, pure diff, netlink
//! and WireGuard adapter), probes them (`probe`), carries tenant traffic between the
//! fabric and the tunnels (`dataplane`), keeps the mesh reachable over every transit
//! (`transit`), and reads its config (`config`), completed at start by what the host says
//! (`host`); `init` writes a starting config from the host; `reload` says what a SIGHUP
//! may change; `drain` keeps and announces transits drained for maintenance, through
//! `announce`, the one way our NodeRecord changes after start.
//!
//! The mesh is the `gatewan-mesh` crate and the daemon kit (shared config sections, API,
//! metrics, state directory) is `gatewan-kit`; bgpctl uses those two and not this crate.

pub mod announce;
pub mod api;
pub mod config;
pub mod dataplane;
pub mod drain;
pub mod host;
pub mod init;
pub mod metrics;
pub mod netlink;
pub mod probe;
pub mod reload;
pub mod transit;
pub mod tunnels;
