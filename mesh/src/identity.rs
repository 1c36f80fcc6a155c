//! The SWIM identity of a mesh member: node id, restart generation and gossip addresses.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Stable 16-byte node id (a UUID), generated once and kept in `state_dir`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 16]);

impl NodeId {
    pub fn random() -> Self {
        NodeId(*uuid::Uuid::new_v4().as_bytes())
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 16]>::try_from(b).ok().map(NodeId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        uuid::Uuid::from_bytes(self.0).fmt(f)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for NodeId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(NodeId(*uuid::Uuid::parse_str(s)?.as_bytes()))
    }
}

/// Most addresses a member may announce: one per transit, and no deployment has more
/// than a handful of transits. Bounding it bounds the header of every SWIM datagram.
pub const MAX_MESH_ADDRESSES: usize = 8;

/// What foca knows a member by. It travels in the header of every SWIM message, so it
/// stays small: no name or datacenter here, those live in the member's NodeRecord.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    pub node: NodeId,
    /// Raised at every restart and at every rejoin after being declared down, so that a
    /// restarted member wins over its previous life.
    pub generation: u32,
    /// Gossip addresses, one per transit. Every datagram to the member goes to all of
    /// them, so the member stays reachable while any transit works.
    pub addrs: Vec<SocketAddr>,
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}{:?}", self.node, self.generation, self.addrs)
    }
}

impl foca::Identity for MemberId {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        // None at the end of the range: foca then stays out of the mesh rather than
        // wrapping to a generation that loses to every earlier one.
        Some(MemberId {
            node: self.node,
            generation: self.generation.checked_add(1)?,
            addrs: self.addrs.clone(),
        })
    }

    fn addr(&self) -> NodeId {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Newest life wins; the address list only breaks ties so every member agrees.
        (self.generation, &self.addrs) > (adversary.generation, &adversary.addrs)
    }
}

impl MemberId {
    /// Checks a decoded identity from the network before foca sees it.
    pub fn is_sane(&self) -> bool {
        !self.addrs.is_empty() && self.addrs.len() <= MAX_MESH_ADDRESSES
    }
}
