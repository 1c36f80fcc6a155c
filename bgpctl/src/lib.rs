//! bgpctl: the BGP EVPN speaker and the controller (issues 5 and 6).
//!
//! It will own the BGP sessions toward the fabric, the EVPN Adj-RIB-In/Out and the
//! controller, and join the gatewans' mesh with role `bgpctl` through `gatewan::mesh`.
//! Nothing is built here yet; the crate exists so the workspace has its final shape.
