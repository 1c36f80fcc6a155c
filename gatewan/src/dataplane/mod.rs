//! The data plane: how a tenant packet crosses the gatewan (ARCHITECTURE, flow of state,
//! point 6). It owns, on the host:
//!
//! - one VXLAN device, [`plan::VXLAN_DEVICE`], on the fabric side (the gatewan's VTEP);
//! - per tunnel, a macvlan on that device whose MAC is the tunnel's Router's MAC
//!   ([`plan::MACVLAN_PREFIX`] + tunnel index), so a frame the fabric sends with that inner
//!   destination MAC arrives on the macvlan and nowhere else;
//! - policy rules in priorities [`plan::PRIORITY_FIRST`]..=[`plan::PRIORITY_LAST`] and the
//!   routing tables from [`plan::TABLE_FIRST`] on: per tunnel, a table whose default route
//!   goes into the tunnel's WireGuard interface (or, while it is Down, into its best healthy
//!   sibling); the egress table toward the local fabric; the replies table for what the
//!   gatewan itself sends to tenants (ICMP errors);
//! - neighbour and FDB entries on the VXLAN device (VTEP → Router's MAC → VTEP);
//! - the sysctls forwarding and reverse-path filtering need (see [`plan::rp_filter_writes`]);
//! - the source filter: an nftables table that drops, and counts per tunnel, what a tunnel
//!   brings in from outside its datacenter's networks ([`filter`]).
//!
//! - the fast path (ADR 0067): two tc programs that carry the common tenant packet past
//!   all of the above, deciding as it would from maps ([`fastpath`] plans them, [`bpf`]
//!   loads the programs and writes the maps). The kernel path stays whole for the rest.
//!
//! Tunnel interfaces belong to `tunnels`; this module only routes into and out of them.
//! `plan` and `fastpath` are pure, `reconcile` the pure diff, `system` and `bpf` the
//! adapters, `manager` the owning task.

pub mod bpf;
pub mod fastpath;
pub mod filter;
pub mod manager;
pub mod plan;
pub mod reconcile;
pub mod system;
