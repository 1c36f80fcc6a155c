//! The operator-facing EVPN vocabulary of the speaker: route distinguishers, route targets
//! and type-5 (IP Prefix) routes, with their usual text forms (`65000:100`, `10.0.0.1:7`).
//!
//! These types are ours rather than re-exports of `rustbgpd_wire` so that the daemon,
//! its configuration and its API do not change when the codec crate does; the codec
//! module converts between the two.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// Why a route distinguisher or route target could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: {reason}")]
pub struct ParseError {
    what: &'static str,
    text: String,
    reason: &'static str,
}

impl ParseError {
    fn new(what: &'static str, text: &str, reason: &'static str) -> ParseError {
        ParseError {
            what,
            text: text.to_string(),
            reason,
        }
    }
}

/// An administrator field: an AS number or an IPv4 address.
enum Admin {
    Asn(u32),
    Ip(Ipv4Addr),
}

/// Splits `ADMIN:NN` (the administrator may itself be an IPv4 address, never IPv6 here).
fn split_admin(what: &'static str, s: &str) -> Result<(Admin, u64), ParseError> {
    let (admin, assigned) = s
        .rsplit_once(':')
        .ok_or_else(|| ParseError::new(what, s, "expected ASN:NN or IPv4:NN"))?;
    let assigned: u64 = assigned
        .parse()
        .map_err(|_| ParseError::new(what, s, "the number after ':' is not a number"))?;
    if let Ok(ip) = admin.parse::<Ipv4Addr>() {
        return Ok((Admin::Ip(ip), assigned));
    }
    let asn: u32 = admin
        .parse()
        .map_err(|_| ParseError::new(what, s, "the part before ':' is neither an ASN nor IPv4"))?;
    Ok((Admin::Asn(asn), assigned))
}

/// Route distinguisher (RFC 4364 §4.2): type 0 `ASN2:NN32`, type 1 `IPv4:NN16`,
/// type 2 `ASN4:NN16`. `ASN:NN` with an ASN up to 65535 parses as type 0, above as type 2,
/// as FRR and GoBGP do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteDistinguisher(pub [u8; 8]);

impl RouteDistinguisher {
    pub fn octets(&self) -> [u8; 8] {
        self.0
    }

    /// Type 0: 2-octet AS administrator, 4-octet assigned number.
    pub fn as2(asn: u16, assigned: u32) -> RouteDistinguisher {
        let mut b = [0u8; 8];
        b[2..4].copy_from_slice(&asn.to_be_bytes());
        b[4..8].copy_from_slice(&assigned.to_be_bytes());
        RouteDistinguisher(b)
    }

    /// Type 1: IPv4 administrator, 2-octet assigned number.
    pub fn ipv4(addr: Ipv4Addr, assigned: u16) -> RouteDistinguisher {
        let mut b = [0u8; 8];
        b[1] = 1;
        b[2..6].copy_from_slice(&addr.octets());
        b[6..8].copy_from_slice(&assigned.to_be_bytes());
        RouteDistinguisher(b)
    }

    /// Type 2: 4-octet AS administrator, 2-octet assigned number.
    pub fn as4(asn: u32, assigned: u16) -> RouteDistinguisher {
        let mut b = [0u8; 8];
        b[1] = 2;
        b[2..6].copy_from_slice(&asn.to_be_bytes());
        b[6..8].copy_from_slice(&assigned.to_be_bytes());
        RouteDistinguisher(b)
    }
}

impl fmt::Display for RouteDistinguisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        match u16::from_be_bytes([b[0], b[1]]) {
            0 => write!(
                f,
                "{}:{}",
                u16::from_be_bytes([b[2], b[3]]),
                u32::from_be_bytes([b[4], b[5], b[6], b[7]])
            ),
            1 => write!(
                f,
                "{}:{}",
                Ipv4Addr::new(b[2], b[3], b[4], b[5]),
                u16::from_be_bytes([b[6], b[7]])
            ),
            2 => write!(
                f,
                "{}:{}",
                u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
                u16::from_be_bytes([b[6], b[7]])
            ),
            // Unknown RD types from the network still need a stable, unambiguous text.
            _ => {
                f.write_str("0x")?;
                b.iter().try_for_each(|x| write!(f, "{x:02x}"))
            }
        }
    }
}

impl FromStr for RouteDistinguisher {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "route distinguisher";
        match split_admin(WHAT, s)? {
            (Admin::Ip(ip), n) => u16::try_from(n)
                .map(|n| RouteDistinguisher::ipv4(ip, n))
                .map_err(|_| ParseError::new(WHAT, s, "IPv4:NN takes NN up to 65535")),
            (Admin::Asn(asn), n) => match u16::try_from(asn) {
                Ok(asn) => u32::try_from(n)
                    .map(|n| RouteDistinguisher::as2(asn, n))
                    .map_err(|_| ParseError::new(WHAT, s, "ASN:NN takes NN up to 4294967295")),
                Err(_) => u16::try_from(n)
                    .map(|n| RouteDistinguisher::as4(asn, n))
                    .map_err(|_| ParseError::new(WHAT, s, "a 4-octet ASN takes NN up to 65535")),
            },
        }
    }
}

/// Route target extended community (RFC 4360 §4): 2-octet AS (`65000:100`), IPv4
/// (`10.0.0.1:100`) or 4-octet AS (`4200000000:100`, RFC 5668). `ASN:NN` with an ASN up to
/// 65535 parses as the 2-octet AS form, as FRR and GoBGP do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteTarget {
    As2 { asn: u16, value: u32 },
    Ipv4 { addr: Ipv4Addr, value: u16 },
    As4 { asn: u32, value: u16 },
}

impl RouteTarget {
    /// The 8-octet extended community (transitive type 0x00/0x01/0x02, subtype 0x02).
    pub fn to_extended_community(self) -> u64 {
        let mut b = [0u8; 8];
        b[1] = 0x02;
        match self {
            RouteTarget::As2 { asn, value } => {
                b[0] = 0x00;
                b[2..4].copy_from_slice(&asn.to_be_bytes());
                b[4..8].copy_from_slice(&value.to_be_bytes());
            }
            RouteTarget::Ipv4 { addr, value } => {
                b[0] = 0x01;
                b[2..6].copy_from_slice(&addr.octets());
                b[6..8].copy_from_slice(&value.to_be_bytes());
            }
            RouteTarget::As4 { asn, value } => {
                b[0] = 0x02;
                b[2..6].copy_from_slice(&asn.to_be_bytes());
                b[6..8].copy_from_slice(&value.to_be_bytes());
            }
        }
        u64::from_be_bytes(b)
    }

    /// The route target carried by an extended community, if it is one. Route targets are
    /// transitive by definition, so the non-transitive 0x40.. types are not route targets.
    pub fn from_extended_community(raw: u64) -> Option<RouteTarget> {
        let b = raw.to_be_bytes();
        if b[1] != 0x02 {
            return None;
        }
        match b[0] {
            0x00 => Some(RouteTarget::As2 {
                asn: u16::from_be_bytes([b[2], b[3]]),
                value: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            }),
            0x01 => Some(RouteTarget::Ipv4 {
                addr: Ipv4Addr::new(b[2], b[3], b[4], b[5]),
                value: u16::from_be_bytes([b[6], b[7]]),
            }),
            0x02 => Some(RouteTarget::As4 {
                asn: u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
                value: u16::from_be_bytes([b[6], b[7]]),
            }),
            _ => None,
        }
    }
}

impl fmt::Display for RouteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteTarget::As2 { asn, value } => write!(f, "{asn}:{value}"),
            RouteTarget::Ipv4 { addr, value } => write!(f, "{addr}:{value}"),
            RouteTarget::As4 { asn, value } => write!(f, "{asn}:{value}"),
        }
    }
}

impl FromStr for RouteTarget {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "route target";
        match split_admin(WHAT, s)? {
            (Admin::Ip(addr), n) => u16::try_from(n)
                .map(|value| RouteTarget::Ipv4 { addr, value })
                .map_err(|_| ParseError::new(WHAT, s, "IPv4:NN takes NN up to 65535")),
            (Admin::Asn(asn), n) => match u16::try_from(asn) {
                Ok(asn) => u32::try_from(n)
                    .map(|value| RouteTarget::As2 { asn, value })
                    .map_err(|_| ParseError::new(WHAT, s, "ASN:NN takes NN up to 4294967295")),
                Err(_) => u16::try_from(n)
                    .map(|value| RouteTarget::As4 { asn, value })
                    .map_err(|_| ParseError::new(WHAT, s, "a 4-octet ASN takes NN up to 65535")),
            },
        }
    }
}

/// Formats a MAC address the way operators and FRR/GoBGP write it.
pub fn format_mac(mac: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// An EVPN type-5 (IP Prefix, RFC 9136) route as the speaker advertises and receives it.
///
/// On export the speaker always adds ESI 0, Ethernet tag 0, gateway IP 0 (of the prefix's
/// family) and the encapsulation extended community VXLAN (tunnel type 8, RFC 9012); the
/// route is identified on the wire by (RD, Ethernet tag, prefix).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Type5Route {
    pub rd: RouteDistinguisher,
    /// The IP prefix; host bits are cleared on export.
    pub prefix: IpNet,
    /// The L3 VNI, carried in the whole 24-bit label field of the NLRI (RFC 8365 §5.1.3);
    /// values above 2^24-1 are truncated to 24 bits on export.
    pub label_vni: u32,
    /// The VTEP: MP_REACH_NLRI next hop, IPv4 or IPv6 independently of the prefix.
    pub next_hop: IpAddr,
    /// Router's MAC extended community (RFC 9135 §8.1): inner destination MAC for traffic
    /// encapsulated toward `next_hop`. Zero when a received route carries none.
    pub router_mac: [u8; 6],
    /// Route targets, exported in the given order (duplicates are sent once).
    pub route_targets: Vec<RouteTarget>,
    /// Link bandwidth in **bits per second**, exported as the non-transitive link bandwidth
    /// extended community (type 0x40 subtype 0x04, draft-ietf-idr-link-bandwidth) whose
    /// value is an IEEE float in bytes per second; received values are converted back to
    /// bits per second (rounded). None: no community.
    pub link_bandwidth: Option<u64>,
}

impl Type5Route {
    /// The key that identifies the route in an Adj-RIB (Ethernet tag is always 0 on export).
    pub fn key(&self) -> RouteKey {
        RouteKey {
            rd: self.rd,
            prefix: self.prefix.trunc(),
        }
    }
}

/// Identity of an exported type-5 route: (RD, prefix). Ordered for deterministic output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub rd: RouteDistinguisher,
    pub prefix: IpNet,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]:{}", self.rd, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rd_text_forms() {
        for (text, bytes) in [
            ("65000:1", [0, 0, 0xfd, 0xe8, 0, 0, 0, 1]),
            ("10.0.0.1:7", [0, 1, 10, 0, 0, 1, 0, 7]),
            ("4200000000:5", [0, 2, 0xfa, 0x56, 0xea, 0, 0, 5]),
            (
                "65000:4294967295",
                [0, 0, 0xfd, 0xe8, 0xff, 0xff, 0xff, 0xff],
            ),
        ] {
            let rd: RouteDistinguisher = text.parse().unwrap();
            assert_eq!(rd.0, bytes, "{text}");
            assert_eq!(rd.to_string(), text);
        }
        for bad in [
            "65000",
            "x:1",
            "10.0.0.1:70000",
            "4200000000:70000",
            "65000:-1",
            "::1:5",
        ] {
            assert!(bad.parse::<RouteDistinguisher>().is_err(), "{bad}");
        }
        assert_eq!(
            RouteDistinguisher([0, 9, 1, 2, 3, 4, 5, 6]).to_string(),
            "0x0009010203040506"
        );
    }

    #[test]
    fn rt_text_forms_and_wire() {
        let rt: RouteTarget = "65000:100".parse().unwrap();
        assert_eq!(rt.to_extended_community(), 0x0002_fde8_0000_0064);
        let rt: RouteTarget = "10.1.2.3:9".parse().unwrap();
        assert_eq!(rt.to_extended_community(), 0x0102_0a01_0203_0009);
        let rt: RouteTarget = "4200000000:9".parse().unwrap();
        assert_eq!(rt.to_extended_community(), 0x0202_fa56_ea00_0009);
        assert_eq!(rt.to_string(), "4200000000:9");
        // Non-transitive or non-RT subtypes are not route targets.
        assert_eq!(
            RouteTarget::from_extended_community(0x4002_fde8_0000_0064),
            None
        );
        assert_eq!(
            RouteTarget::from_extended_community(0x0003_fde8_0000_0064),
            None
        );
    }

    fn any_rt() -> impl Strategy<Value = RouteTarget> {
        prop_oneof![
            (any::<u16>(), any::<u32>()).prop_map(|(asn, value)| RouteTarget::As2 { asn, value }),
            (any::<u32>(), any::<u16>()).prop_map(|(a, value)| RouteTarget::Ipv4 {
                addr: Ipv4Addr::from(a),
                value
            }),
            (65536u32.., any::<u16>()).prop_map(|(asn, value)| RouteTarget::As4 { asn, value }),
        ]
    }

    proptest! {
        #[test]
        fn rt_round_trips(rt in any_rt()) {
            prop_assert_eq!(rt.to_string().parse::<RouteTarget>().unwrap(), rt);
            prop_assert_eq!(RouteTarget::from_extended_community(rt.to_extended_community()), Some(rt));
        }

        #[test]
        fn rd_round_trips(t in 0u8..3, a in any::<u32>(), n in any::<u32>()) {
            let rd = match t {
                0 => RouteDistinguisher::as2(a as u16, n),
                1 => RouteDistinguisher::ipv4(Ipv4Addr::from(a), n as u16),
                _ => RouteDistinguisher::as4(a.max(65536), n as u16),
            };
            prop_assert_eq!(rd.to_string().parse::<RouteDistinguisher>().unwrap(), rd);
        }
    }
}
