//! Which transits a datagram to the WAN leaves by: every local transit of the
//! destination's address family, each from its own address (and, in the daemon, with its
//! own routing mark), never only the main table's default route.
//!
//! The core already sends a datagram to every address of a member (one per remote
//! transit); fanning each out over every local transit makes the mesh see a member alive
//! while any pair of transits works, as the tunnels do with `pairing: all`. The copies
//! share one sealed datagram, so the receiver's replay filter keeps the first and counts
//! the others as duplicates. The cost is one copy per (local transit, remote address) pair
//! of a family: with two transits at both ends, four copies of each datagram (about
//! 1.4 KB/s per member at 50 members in the simulator, ADR 0003).
//!
//! Pure: the driver and the simulator both ask it.

use std::net::{IpAddr, SocketAddr};

/// The local transits' source addresses, in the order of the driver's transit sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    sources: Vec<IpAddr>,
}

impl Egress {
    pub fn new(sources: Vec<IpAddr>) -> Egress {
        Egress { sources }
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn sources(&self) -> &[IpAddr] {
        &self.sources
    }

    /// Indices of the sources a datagram to `to` leaves from: those of its family (an
    /// IPv4-mapped IPv6 address counts as IPv4). None when no transit has that family:
    /// the caller then sends from its main socket.
    pub fn paths(&self, to: SocketAddr) -> impl Iterator<Item = usize> + '_ {
        let v6 = to.ip().to_canonical().is_ipv6();
        self.sources
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.is_ipv6() == v6)
            .map(|(i, _)| i)
    }

    /// Whether `ip` is one of our transit addresses.
    pub fn is_source(&self, ip: IpAddr) -> bool {
        self.sources.contains(&ip.to_canonical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress() -> Egress {
        Egress::new(
            ["198.51.100.1", "2001:db8:100::2", "203.0.113.1"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
        )
    }

    #[test]
    fn a_datagram_leaves_by_every_transit_of_its_family() {
        let e = egress();
        let v4: Vec<usize> = e.paths("192.0.2.9:7946".parse().unwrap()).collect();
        assert_eq!(v4, [0, 2]);
        let v6: Vec<usize> = e.paths("[2001:db8::9]:7946".parse().unwrap()).collect();
        assert_eq!(v6, [1]);
    }

    #[test]
    fn an_ipv4_mapped_destination_leaves_by_the_ipv4_transits() {
        let e = egress();
        let mapped: Vec<usize> = e
            .paths("[::ffff:192.0.2.9]:7946".parse().unwrap())
            .collect();
        assert_eq!(mapped, [0, 2]);
        assert!(e.is_source("::ffff:198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn no_transit_of_the_family_means_no_path() {
        let e = Egress::new(vec!["198.51.100.1".parse().unwrap()]);
        assert_eq!(e.paths("[2001:db8::9]:7946".parse().unwrap()).count(), 0);
    }
}
