//! BGP speaker toward the fabric: L2VPN EVPN (AFI 25 / SAFI 70) sessions that advertise
//! and learn EVPN type-5 (IP Prefix) routes.
//!
//! Pure cores, each owning one concern and tested with tables and properties:
//! - [`types`]: RD, route target, type-5 route (text forms, identity);
//! - [`codec`]: type-5 routes ↔ EVPN NLRI, path attributes and packed UPDATEs;
//! - [`rib_out`]: the desired Adj-RIB-Out and the minimal diff to what a session sent;
//! - [`inbound`]: RFC 7606 handling of received UPDATEs;
//! - [`import`]: the import policy (route targets, prefix allow-list, max-prefix);
//! - [`rib_in`]: the Adj-RIB-In with stale marking;
//! - [`session_core`]: one connection's decisions, sans-I/O (`handle(input, now)`): the
//!   `rustbgpd_fsm` session, framing and malformed input, hold and keepalive deadlines,
//!   the Adj-RIB-Out sent (initial table held back until the desired table is first set,
//!   End-of-RIB, diffs, route refresh), received routes and End-of-RIB, the close's facts.
//!
//! Thin adapters, tested against gobgpd and FRR in network namespaces (`bgpctl/tests`):
//! - [`settings`]: what the daemon tells the speaker (plain data);
//! - [`transport`]: sockets, listener, TCP-MD5;
//! - [`session`]: one TCP connection: feeds the bytes read to its `session_core`, writes
//!   what it outputs, sleeps until its next deadline, carries its reports;
//! - [`peer`]: connection attempts, backoff, collisions, graceful restart (receiving side);
//! - [`speaker`]: `spawn`, the handle, the listener and Adj-RIB-In tasks.
//!
//! Sessions carry only L2VPN EVPN; capabilities: multiprotocol, 4-octet ASN, route refresh
//! (RFC 2918), graceful restart (RFC 4724, with RFC 8538 notification support), extended
//! messages (received; sent UPDATEs stay within 4096 octets).

pub mod codec;
pub mod import;
pub mod inbound;
pub mod peer;
pub mod rib_in;
pub mod rib_out;
mod session;
mod session_core;
pub mod settings;
mod speaker;
pub mod status;
pub mod transport;
pub mod types;

pub use import::{
    ImportPolicy, ImportPrefixes, MaxPrefixAction, MaxPrefixes, MinPrefixLength, PrefixRule,
};
pub use rib_in::{ReceivedRoute, ReceivedRoutes};
pub use settings::{DEFAULT_HOLD_TIME, GracefulRestart, PeerSettings, SpeakerSettings};
pub use speaker::{SpeakerError, SpeakerHandle, spawn};
pub use status::{InputCounters, PeerState, PeerStatus};
pub use types::{ParseError, RouteDistinguisher, RouteKey, RouteTarget, Type5Route};
