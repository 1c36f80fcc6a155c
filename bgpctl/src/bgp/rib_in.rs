//! Adj-RIB-In (pure): the type-5 routes received from every peer that passed the import
//! policy (applied by each session, see `session_core`), with graceful-restart stale
//! marking, and the snapshots published to subscribers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::inbound::{ReceivedKey, ReceivedType5};
use super::types::Type5Route;

/// Commands to the Adj-RIB-In task.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RibInCmd {
    Update {
        peer: IpAddr,
        announced: Vec<ReceivedType5>,
        withdrawn: Vec<ReceivedKey>,
    },
    MarkStale(IpAddr),
    FlushStale(IpAddr),
    /// The peer's current session sent End-of-RIB (after its UPDATEs were handed over).
    EndOfRib(IpAddr),
    Clear(IpAddr),
}

/// A received type-5 route with the peer it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRoute {
    pub peer: IpAddr,
    pub route: Type5Route,
    /// Ethernet tag of the NLRI (part of the route's identity; usually 0).
    pub ethernet_tag: u32,
    /// Gateway IP overlay index of the NLRI (unspecified when absent).
    pub gateway: IpAddr,
    /// The peer is restarting (RFC 4724) and has not re-advertised this route yet.
    pub stale: bool,
}

/// All accepted received routes, ordered by (peer, RD, Ethernet tag, prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivedRoutes {
    pub routes: Vec<ReceivedRoute>,
    /// Peers whose current session has sent End-of-RIB for L2VPN EVPN: their part of
    /// `routes` is their whole table (RFC 4724 §2), not one still arriving. Kept with the
    /// routes so that a reader sees both at the same instant.
    pub end_of_rib: BTreeSet<IpAddr>,
}

impl ReceivedRoutes {
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ReceivedRoute> {
        self.routes.iter()
    }

    /// The routes learned from one peer.
    pub fn from_peer(&self, peer: IpAddr) -> impl Iterator<Item = &ReceivedRoute> {
        self.routes.iter().filter(move |r| r.peer == peer)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    route: ReceivedType5,
    stale: bool,
}

/// Counts of what an UPDATE did to one peer's routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub added: u32,
    pub replaced: u32,
    pub removed: u32,
}

/// One peer's routes; the stale count is kept so that status updates stay O(1).
#[derive(Debug, Default)]
struct PeerRib {
    routes: BTreeMap<ReceivedKey, Entry>,
    stale: usize,
    /// The current session has sent End-of-RIB.
    end_of_rib: bool,
}

impl PeerRib {
    fn remove(&mut self, key: &ReceivedKey) -> bool {
        match self.routes.remove(key) {
            Some(e) => {
                self.stale -= usize::from(e.stale);
                true
            }
            None => false,
        }
    }
}

#[derive(Debug, Default)]
pub struct AdjRibIn {
    peers: BTreeMap<IpAddr, PeerRib>,
}

impl AdjRibIn {
    pub fn new() -> AdjRibIn {
        AdjRibIn::default()
    }

    /// Applies withdrawals, then announcements (all accepted by the session's import
    /// policy; it turns a refused announcement into a withdrawal of the route).
    pub fn apply(
        &mut self,
        peer: IpAddr,
        announced: Vec<ReceivedType5>,
        withdrawn: &[ReceivedKey],
    ) -> ApplyStats {
        let mut stats = ApplyStats::default();
        let rib = self.peers.entry(peer).or_default();
        for k in withdrawn {
            if rib.remove(k) {
                stats.removed += 1;
            }
        }
        for a in announced {
            let key = a.key();
            let entry = Entry {
                route: a,
                stale: false,
            };
            match rib.routes.insert(key, entry) {
                Some(old) => {
                    rib.stale -= usize::from(old.stale);
                    stats.replaced += 1;
                }
                None => stats.added += 1,
            }
        }
        stats
    }

    /// Marks every route of `peer` stale (the peer began a graceful restart): its next
    /// session's table is incomplete until that session's End-of-RIB.
    pub fn mark_stale(&mut self, peer: IpAddr) -> usize {
        self.peers.get_mut(&peer).map_or(0, |rib| {
            rib.routes.values_mut().for_each(|e| e.stale = true);
            rib.stale = rib.routes.len();
            rib.end_of_rib = false;
            rib.stale
        })
    }

    /// Records the End-of-RIB of `peer`'s current session (after its UPDATEs, which
    /// precede it on the session).
    pub fn end_of_rib(&mut self, peer: IpAddr) {
        self.peers.entry(peer).or_default().end_of_rib = true;
    }

    /// Removes the routes of `peer` still stale (End-of-RIB received or restart timer out).
    pub fn flush_stale(&mut self, peer: IpAddr) -> usize {
        self.peers.get_mut(&peer).map_or(0, |rib| {
            if rib.stale > 0 {
                rib.routes.retain(|_, e| !e.stale);
            }
            std::mem::take(&mut rib.stale)
        })
    }

    /// Removes every route of `peer` and its End-of-RIB (session down without graceful
    /// restart).
    pub fn clear(&mut self, peer: IpAddr) -> usize {
        self.peers.remove(&peer).map_or(0, |rib| rib.routes.len())
    }

    /// (routes, stale routes) held for `peer`.
    pub fn count(&self, peer: IpAddr) -> (usize, usize) {
        self.peers
            .get(&peer)
            .map_or((0, 0), |rib| (rib.routes.len(), rib.stale))
    }

    pub fn snapshot(&self) -> ReceivedRoutes {
        let mut routes = Vec::with_capacity(self.peers.values().map(|r| r.routes.len()).sum());
        let mut end_of_rib = BTreeSet::new();
        for (peer, rib) in &self.peers {
            if rib.end_of_rib {
                end_of_rib.insert(*peer);
            }
            for e in rib.routes.values() {
                routes.push(ReceivedRoute {
                    peer: *peer,
                    route: e.route.route.clone(),
                    ethernet_tag: e.route.ethernet_tag,
                    gateway: e.route.gateway,
                    stale: e.stale,
                });
            }
        }
        ReceivedRoutes { routes, end_of_rib }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rx(prefix: &str, rt: &str) -> ReceivedType5 {
        ReceivedType5 {
            route: Type5Route {
                rd: "65001:1".parse().unwrap(),
                prefix: prefix.parse().unwrap(),
                label_vni: 5,
                next_hop: "192.0.2.1".parse().unwrap(),
                router_mac: [2, 0, 0, 0, 0, 1],
                route_targets: vec![rt.parse().unwrap()],
                link_bandwidth: None,
            },
            ethernet_tag: 0,
            gateway: "0.0.0.0".parse().unwrap(),
        }
    }

    #[test]
    fn graceful_restart_keeps_routes_stale_until_they_come_again() {
        let p: IpAddr = "10.0.0.2".parse().unwrap();
        let mut rib = AdjRibIn::new();
        let s = rib.apply(p, vec![rx("10.2.0.0/16", "65000:100")], &[]);
        assert_eq!((s.added, s.replaced), (1, 0));
        let key2 = rx("10.2.0.0/16", "65000:100").key();
        assert_eq!(rib.apply(p, vec![], &[key2]).removed, 1);
        rib.apply(
            p,
            vec![
                rx("10.1.0.0/16", "65000:100"),
                rx("10.3.0.0/16", "65000:100"),
            ],
            &[],
        );
        assert_eq!(rib.mark_stale(p), 2);
        assert!(rib.snapshot().iter().all(|r| r.stale));
        rib.apply(p, vec![rx("10.1.0.0/16", "65000:100")], &[]);
        assert_eq!(rib.count(p), (2, 1));
        assert_eq!(rib.flush_stale(p), 1);
        let snap = rib.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap.routes[0].route.prefix.to_string(), "10.1.0.0/16");
        assert!(!snap.routes[0].stale);
        let key = rx("10.1.0.0/16", "65000:100").key();
        assert_eq!(rib.apply(p, vec![], &[key]).removed, 1);
        assert_eq!(rib.clear(p), 0);
    }

    #[test]
    fn end_of_rib_lasts_for_the_session_that_sent_it() {
        let p: IpAddr = "10.0.0.2".parse().unwrap();
        let q: IpAddr = "10.0.0.3".parse().unwrap();
        let mut rib = AdjRibIn::new();
        rib.apply(p, vec![rx("10.1.0.0/16", "65000:100")], &[]);
        assert!(rib.snapshot().end_of_rib.is_empty(), "table still arriving");
        rib.end_of_rib(p);
        // A peer with nothing to send still completes its table.
        rib.end_of_rib(q);
        let snap = rib.snapshot();
        assert_eq!(snap.end_of_rib, BTreeSet::from([p, q]));
        assert_eq!(snap.len(), 1);
        // The peer restarts: its routes stay, stale, but its next table is not complete.
        rib.mark_stale(p);
        assert_eq!(rib.snapshot().end_of_rib, BTreeSet::from([q]));
        rib.end_of_rib(p);
        assert!(rib.snapshot().end_of_rib.contains(&p));
        // Session down without graceful restart: routes and End-of-RIB go.
        rib.clear(q);
        assert_eq!(rib.snapshot().end_of_rib, BTreeSet::from([p]));
    }
}
