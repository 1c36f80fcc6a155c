//! What the speaker reports about each peer (`SpeakerHandle::peers`): FSM state, uptime,
//! prefix counts, last error and the counters of dropped or repaired input.
//!
//! The cells are written by the peer and session tasks and the Adj-RIB-In task, and read
//! synchronously by the handle; a `std::sync::Mutex` is enough (short, non-async sections).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// RFC 4271 §8 session state of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerState {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Idle => "Idle",
            PeerState::Connect => "Connect",
            PeerState::Active => "Active",
            PeerState::OpenSent => "OpenSent",
            PeerState::OpenConfirm => "OpenConfirm",
            PeerState::Established => "Established",
        }
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<rustbgpd_fsm::SessionState> for PeerState {
    fn from(s: rustbgpd_fsm::SessionState) -> PeerState {
        use rustbgpd_fsm::SessionState as S;
        match s {
            S::Idle => PeerState::Idle,
            S::Connect => PeerState::Connect,
            S::Active => PeerState::Active,
            S::OpenSent => PeerState::OpenSent,
            S::OpenConfirm => PeerState::OpenConfirm,
            S::Established => PeerState::Established,
        }
    }
}

/// Input the speaker repaired or dropped instead of trusting it (RFC 7606 and filters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputCounters {
    /// UPDATEs treated as withdraw (RFC 7606 §2).
    pub treat_as_withdraw: u64,
    /// Attributes discarded (RFC 7606 attribute discard, duplicates).
    pub attributes_discarded: u64,
    /// Sessions reset because a received message was malformed (NOTIFICATION sent).
    pub malformed_resets: u64,
    /// Type-5 announcements refused by the import policy (route targets, prefixes).
    pub routes_filtered: u64,
    /// New routes ignored because the peer was at its `max_prefixes` limit
    /// (stop-learning).
    pub routes_over_limit: u64,
    /// NLRI that are not EVPN type-5 (other route types or address families), ignored.
    pub nlri_ignored: u64,
    /// Announcements carrying the local ASN in their AS_PATH, ignored.
    pub as_path_loops: u64,
}

/// A peer as `SpeakerHandle::peers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub asn: u32,
    pub state: PeerState,
    /// Wall-clock time the current session became Established.
    pub established_since: Option<SystemTime>,
    pub uptime: Option<Duration>,
    pub peer_router_id: Option<Ipv4Addr>,
    /// Negotiated hold time of the current session.
    pub hold_time: Option<Duration>,
    /// Type-5 routes from this peer in the Adj-RIB-In (after the import filter).
    pub prefixes_received: u64,
    /// Of those, routes kept stale while the peer restarts (RFC 4724).
    pub prefixes_stale: u64,
    /// Type-5 routes advertised on the current session.
    pub prefixes_sent: u64,
    pub updates_received: u64,
    pub updates_sent: u64,
    /// Times the session reached Established.
    pub established_count: u64,
    /// Sessions closed because the peer sent more than `max_prefixes` (teardown).
    pub max_prefix_teardowns: u64,
    /// NOTIFICATIONs sent to the peer and received from it.
    pub notifications_sent: u64,
    pub notifications_received: u64,
    /// E.g. "sent NOTIFICATION 2/2 (Bad Peer AS)", "connect: Connection refused".
    pub last_error: Option<String>,
    pub input: InputCounters,
}

/// Shared, mutable status of one peer.
#[derive(Debug)]
pub(crate) struct StatusCell {
    pub status: PeerStatus,
    pub established_at: Option<Instant>,
}

#[derive(Debug, Clone)]
pub(crate) struct SharedStatus(Arc<Mutex<StatusCell>>);

impl SharedStatus {
    pub(crate) fn new(address: IpAddr, asn: u32) -> SharedStatus {
        SharedStatus(Arc::new(Mutex::new(StatusCell {
            status: PeerStatus {
                address,
                asn,
                state: PeerState::Idle,
                established_since: None,
                uptime: None,
                peer_router_id: None,
                hold_time: None,
                prefixes_received: 0,
                prefixes_stale: 0,
                prefixes_sent: 0,
                updates_received: 0,
                updates_sent: 0,
                established_count: 0,
                notifications_sent: 0,
                notifications_received: 0,
                max_prefix_teardowns: 0,
                last_error: None,
                input: InputCounters::default(),
            },
            established_at: None,
        })))
    }

    /// Locks the cell; a poisoned lock (a panicking writer) still holds usable counters.
    pub(crate) fn lock(&self) -> MutexGuard<'_, StatusCell> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut PeerStatus)) {
        f(&mut self.lock().status);
    }

    pub(crate) fn snapshot(&self) -> PeerStatus {
        let cell = self.lock();
        let mut s = cell.status.clone();
        s.uptime = cell.established_at.map(|t| t.elapsed());
        s
    }
}
