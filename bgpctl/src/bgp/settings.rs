//! What the daemon tells the speaker: its ASN and router ID, its peers, graceful restart
//! and the import policy (route targets, prefixes, max-prefix). Plain data, shared by the speaker, its peer tasks and
//! their sessions.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::import::{ImportPrefixes, MaxPrefixes};
use super::types::RouteTarget;

/// Hold time proposed when a peer's is not configured (RFC 4271 §10).
pub const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(90);
/// Graceful restart (RFC 4724) as restarting and as receiving speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GracefulRestart {
    /// Announced restart time (at most 4095 s): how long peers keep our routes when the
    /// session drops. Peers keep them also after our Cease on `shutdown` when they support
    /// RFC 8538 (notification N bit), which this speaker announces.
    pub restart_time: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerSettings {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// Passive listener, e.g. `[::]:179` (dual-stack); None: outgoing connections only.
    pub listen: Option<SocketAddr>,
    pub peers: Vec<PeerSettings>,
    pub graceful_restart: Option<GracefulRestart>,
    /// Received type-5 routes are kept only if they carry one of these route targets;
    /// empty accepts all.
    pub import_route_targets: Vec<RouteTarget>,
    /// Received type-5 routes are kept only if their prefix passes this.
    pub import_prefixes: ImportPrefixes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    pub address: IpAddr,
    /// Equal to the speaker's ASN: iBGP (LOCAL_PREF, empty AS_PATH); else eBGP.
    pub asn: u32,
    /// TCP-MD5 password (RFC 2385), at most 80 octets.
    pub password: Option<String>,
    /// Only accept the peer's connections, never connect.
    pub passive: bool,
    /// Proposed hold time: 0 or at least 3 s (whole seconds); keepalive is a third of the
    /// negotiated one.
    pub hold_time: Duration,
    /// Source address of outgoing connections.
    pub local_address: Option<IpAddr>,
    /// How many routes (after the import policy) the peer may send.
    pub max_prefixes: Option<MaxPrefixes>,
}

impl PeerSettings {
    /// An active peer with the default hold time, no password, any source address.
    pub fn new(address: IpAddr, asn: u32) -> PeerSettings {
        PeerSettings {
            address,
            asn,
            password: None,
            passive: false,
            hold_time: DEFAULT_HOLD_TIME,
            local_address: None,
            max_prefixes: None,
        }
    }
}
