//! The tunnel reconciler's decision, pure: from the tunnels wanted and the interfaces
//! seen on the host, the steps that make the host match. Steps are minimal so a restarted
//! daemon that finds its tunnels in place changes nothing (no flap), and an interface that
//! matches no wanted tunnel is removed only once its grace period has passed.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use super::plan::PlannedTunnel;

/// A tunnel as the host must have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedTunnel {
    pub interface: String,
    pub listen_port: u16,
    /// Marks the tunnel's outer packets so policy routing sends them out of its transit.
    pub fwmark: Option<u32>,
    pub peer_public_key: [u8; 32],
    pub endpoint: SocketAddr,
    pub addresses: BTreeSet<IpNet>,
}

impl WantedTunnel {
    pub fn from_plan(t: &PlannedTunnel, fwmark: Option<u32>) -> Option<WantedTunnel> {
        let key = <[u8; 32]>::try_from(t.peer.public_key.as_slice()).ok()?;
        let v4 = IpNet::new(t.local.address_v4.into(), 31).ok()?;
        let v6 = IpNet::new(t.local.address_v6.into(), 127).ok()?;
        Some(WantedTunnel {
            interface: t.interface.clone(),
            listen_port: t.listen_port,
            fwmark,
            peer_public_key: key,
            endpoint: t.peer.endpoint,
            addresses: [v4, v6].into_iter().collect(),
        })
    }
}

/// What the peer of a tunnel may carry: every unicast address, IPv4 and IPv6, and no
/// multicast (224.0.0.0/4, ff00::/8). One peer per interface, so which prefixes take which
/// tunnel is decided by policy routing, not here. Multicast is left out because the kernel
/// sends an MLD report on a link the moment it comes up (a forwarding host joins the
/// all-routers group ff02::2, and no sysctl or link flag stops the report), and WireGuard
/// answers any packet for its peer by starting a handshake. Both ends of a new tunnel come
/// up together, their handshakes cross and fail, and retries driven by probes sent in step
/// at both ends can keep failing for tens of seconds (ADR 0062). A packet for no peer's
/// allowed IPs is dropped by WireGuard: the report never leaves. A peer found with other
/// allowed IPs (set by hand, or by a gatewan from before ADR 0062) gets these in place.
pub const UNICAST: [(IpAddr, u8); 12] = [
    (IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)), 1),
    (IpAddr::V4(Ipv4Addr::new(128, 0, 0, 0)), 2),
    (IpAddr::V4(Ipv4Addr::new(192, 0, 0, 0)), 3),
    (IpAddr::V4(Ipv4Addr::new(240, 0, 0, 0)), 4),
    (IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0)), 1),
    (IpAddr::V6(Ipv6Addr::new(0x8000, 0, 0, 0, 0, 0, 0, 0)), 2),
    (IpAddr::V6(Ipv6Addr::new(0xc000, 0, 0, 0, 0, 0, 0, 0)), 3),
    (IpAddr::V6(Ipv6Addr::new(0xe000, 0, 0, 0, 0, 0, 0, 0)), 4),
    (IpAddr::V6(Ipv6Addr::new(0xf000, 0, 0, 0, 0, 0, 0, 0)), 5),
    (IpAddr::V6(Ipv6Addr::new(0xf800, 0, 0, 0, 0, 0, 0, 0)), 6),
    (IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0)), 7),
    (IpAddr::V6(Ipv6Addr::new(0xfe00, 0, 0, 0, 0, 0, 0, 0)), 8),
];

/// [`UNICAST`] as a set of networks, to compare with what a peer has.
pub fn unicast_networks() -> BTreeSet<IpNet> {
    UNICAST
        .iter()
        .filter_map(|&(address, len)| IpNet::new(address, len).ok())
        .collect()
}

/// A tunnel interface as found on the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeenTunnel {
    pub interface: String,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    /// Whether the interface holds our current private key.
    pub our_key: bool,
    pub peers: Vec<([u8; 32], Option<SocketAddr>)>,
    /// The allowed IPs of its first peer.
    pub peer_allowed_ips: BTreeSet<IpNet>,
    pub addresses: BTreeSet<IpNet>,
    pub up: bool,
    /// Whether what it receives is spread over the host's CPUs (RPS), or cannot be.
    pub spread: bool,
    /// Whether its peer has a WireGuard session young enough to carry traffic without a
    /// new handshake ([`SESSION_FRESH`]): the interface outlived a restart.
    pub live_session: bool,
}

/// A WireGuard session younger than this carries traffic without a handshake:
/// REKEY_AFTER_TIME of the WireGuard paper, after which the sending end starts a new one.
pub const SESSION_FRESH: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the interface if needed and set key, port, fwmark and its one peer
    /// (replacing any other). Never deletes the interface, so traffic keeps flowing.
    Configure(WantedTunnel),
    AddAddress {
        interface: String,
        address: IpNet,
    },
    RemoveAddress {
        interface: String,
        address: IpNet,
    },
    /// Give the interface's peer [`UNICAST`] as its allowed IPs, in place: the peer and
    /// its session stay.
    SetAllowedIps {
        interface: String,
        peer_public_key: [u8; 32],
    },
    SetUp {
        interface: String,
    },
    /// Spread what the interface receives over the host's CPUs (ADR 0063).
    SpreadReceive {
        interface: String,
    },
    Delete {
        interface: String,
    },
}

impl Step {
    pub fn interface(&self) -> &str {
        match self {
            Step::Configure(w) => &w.interface,
            Step::AddAddress { interface, .. }
            | Step::RemoveAddress { interface, .. }
            | Step::SetAllowedIps { interface, .. }
            | Step::SetUp { interface }
            | Step::SpreadReceive { interface }
            | Step::Delete { interface } => interface,
        }
    }
}

/// Steps for the host to match `wanted`. `stale_since` holds, per unwanted interface, when
/// it was first seen unwanted (updated by the caller from the returned `newly_stale`);
/// interfaces are deleted once unwanted for `grace_ms`.
pub fn steps(
    wanted: &[WantedTunnel],
    seen: &[SeenTunnel],
    stale_since: &HashMap<String, u64>,
    now_ms: u64,
    grace_ms: u64,
) -> (Vec<Step>, Vec<String>) {
    let seen_by_name: HashMap<&str, &SeenTunnel> =
        seen.iter().map(|s| (s.interface.as_str(), s)).collect();
    let unicast = unicast_networks();
    let mut out = Vec::new();
    for w in wanted {
        let s = seen_by_name.get(w.interface.as_str());
        let configured = s.is_some_and(|s| {
            s.our_key
                && s.listen_port == Some(w.listen_port)
                && s.fwmark.filter(|&m| m != 0) == w.fwmark
                && s.peers.len() == 1
                && s.peers[0] == (w.peer_public_key, Some(w.endpoint))
        });
        if !configured {
            out.push(Step::Configure(w.clone()));
        } else if s.is_some_and(|s| s.peer_allowed_ips != unicast) {
            out.push(Step::SetAllowedIps {
                interface: w.interface.clone(),
                peer_public_key: w.peer_public_key,
            });
        }
        let have = s.map(|s| s.addresses.clone()).unwrap_or_default();
        for a in w.addresses.difference(&have) {
            out.push(Step::AddAddress {
                interface: w.interface.clone(),
                address: *a,
            });
        }
        for a in have.difference(&w.addresses) {
            out.push(Step::RemoveAddress {
                interface: w.interface.clone(),
                address: *a,
            });
        }
        if !s.is_some_and(|s| s.up) {
            out.push(Step::SetUp {
                interface: w.interface.clone(),
            });
        }
        if !s.is_some_and(|s| s.spread) {
            out.push(Step::SpreadReceive {
                interface: w.interface.clone(),
            });
        }
    }
    let wanted_names: BTreeSet<&str> = wanted.iter().map(|w| w.interface.as_str()).collect();
    let mut newly_stale = Vec::new();
    for s in seen {
        if wanted_names.contains(s.interface.as_str()) {
            continue;
        }
        match stale_since.get(&s.interface) {
            None => newly_stale.push(s.interface.clone()),
            Some(&since) if now_ms.saturating_sub(since) >= grace_ms => out.push(Step::Delete {
                interface: s.interface.clone(),
            }),
            Some(_) => {}
        }
    }
    (out, newly_stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(i: u8) -> WantedTunnel {
        WantedTunnel {
            interface: format!("sdwan{i}"),
            listen_port: 20000 + u16::from(i),
            fwmark: Some(1),
            peer_public_key: [i; 32],
            endpoint: format!("192.0.2.{i}:{}", 20000 + u16::from(i))
                .parse()
                .unwrap(),
            addresses: [
                format!("100.64.0.{}/31", 2 * i).parse().unwrap(),
                format!("fd5d::{:x}/127", 2 * i).parse().unwrap(),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn seen_as(w: &WantedTunnel) -> SeenTunnel {
        SeenTunnel {
            interface: w.interface.clone(),
            listen_port: Some(w.listen_port),
            fwmark: w.fwmark,
            our_key: true,
            peers: vec![(w.peer_public_key, Some(w.endpoint))],
            peer_allowed_ips: unicast_networks(),
            addresses: w.addresses.clone(),
            up: true,
            spread: true,
            live_session: false,
        }
    }

    #[test]
    fn from_scratch_then_nothing() {
        let w = vec![wanted(1), wanted(2)];
        let (s, _) = steps(&w, &[], &HashMap::new(), 0, 60_000);
        assert_eq!(
            s.iter().filter(|s| matches!(s, Step::Configure(_))).count(),
            2
        );
        assert_eq!(
            s.iter()
                .filter(|s| matches!(s, Step::AddAddress { .. }))
                .count(),
            4
        );
        assert_eq!(
            s.iter().filter(|s| matches!(s, Step::SetUp { .. })).count(),
            2
        );
        // Spread once up: the last step of each interface.
        for w in &w {
            let last = s.iter().rfind(|s| s.interface() == w.interface);
            assert!(matches!(last, Some(Step::SpreadReceive { .. })), "{last:?}");
        }
        // What a restarted daemon finds: everything in place, so no step at all.
        let seen: Vec<_> = w.iter().map(seen_as).collect();
        let (s, stale) = steps(&w, &seen, &HashMap::new(), 0, 60_000);
        assert!(s.is_empty() && stale.is_empty(), "{s:?}");
    }

    #[test]
    fn a_peer_with_other_allowed_ips_gets_every_unicast_address_in_place() {
        let w = vec![wanted(1)];
        // A tunnel from before ADR 0062 (or edited by hand): 0.0.0.0/0 and ::/0.
        let mut seen = seen_as(&w[0]);
        seen.peer_allowed_ips = ["0.0.0.0/0", "::/0"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let (s, _) = steps(&w, &[seen.clone()], &HashMap::new(), 0, 60_000);
        assert_eq!(
            s,
            vec![Step::SetAllowedIps {
                interface: "sdwan1".into(),
                peer_public_key: [1; 32],
            }]
        );
        // A peer to be configured anyway gets them with the rest, in one step.
        seen.peers[0].1 = None;
        let (s, _) = steps(&w, &[seen], &HashMap::new(), 0, 60_000);
        assert_eq!(s, vec![Step::Configure(w[0].clone())]);
        // Multicast is what the unicast set leaves out, and all of it.
        let all = unicast_networks();
        for m in ["224.0.0.1", "239.255.255.255", "ff02::2", "ff05::1:3"] {
            let m: IpAddr = m.parse().unwrap();
            assert!(!all.iter().any(|n| n.contains(&m)), "{m} is allowed");
        }
    }

    #[test]
    fn changes_are_minimal() {
        let w = vec![wanted(1)];
        let mut seen = seen_as(&w[0]);
        seen.peers[0].1 = Some("192.0.2.99:1".parse().unwrap()); // peer moved transit address
        seen.addresses.insert("10.9.9.9/32".parse().unwrap()); // a stray address
        let (s, _) = steps(&w, &[seen.clone()], &HashMap::new(), 0, 60_000);
        assert_eq!(
            s,
            vec![
                Step::Configure(w[0].clone()),
                Step::RemoveAddress {
                    interface: "sdwan1".into(),
                    address: "10.9.9.9/32".parse().unwrap()
                }
            ]
        );
        // Key rotation: only the key differs; the interface is configured, not recreated.
        let mut seen = seen_as(&w[0]);
        seen.our_key = false;
        let (s, _) = steps(&w, &[seen], &HashMap::new(), 0, 60_000);
        assert_eq!(s, vec![Step::Configure(w[0].clone())]);
        // RPS reset by hand (or a tunnel from before ADR 0063): spread again, nothing else.
        let mut seen = seen_as(&w[0]);
        seen.spread = false;
        let (s, _) = steps(&w, &[seen], &HashMap::new(), 0, 60_000);
        assert_eq!(
            s,
            vec![Step::SpreadReceive {
                interface: "sdwan1".into()
            }]
        );
    }

    #[test]
    fn stale_interfaces_wait_for_the_grace_period() {
        let old = seen_as(&wanted(7));
        let (s, stale) = steps(
            &[],
            std::slice::from_ref(&old),
            &HashMap::new(),
            1_000,
            60_000,
        );
        assert!(s.is_empty());
        assert_eq!(stale, vec!["sdwan7".to_string()]);
        let since: HashMap<_, _> = [("sdwan7".to_string(), 1_000)].into();
        let (s, _) = steps(&[], std::slice::from_ref(&old), &since, 30_000, 60_000);
        assert!(s.is_empty(), "within grace");
        let (s, _) = steps(&[], &[old], &since, 61_000, 60_000);
        assert_eq!(
            s,
            vec![Step::Delete {
                interface: "sdwan7".into()
            }]
        );
    }
}
