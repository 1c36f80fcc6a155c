//! Route ↔ wire conversion (pure): type-5 routes to EVPN NLRI and path attributes, packed
//! into UPDATE messages of at most 4096 octets; received EVPN NLRI and attributes back to
//! type-5 routes. Framing and encoding of the messages themselves is `rustbgpd_wire`'s.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use ipnet::IpNet;
use rustbgpd_wire::{
    Afi, AsPath, AsPathSegment, EthernetSegmentIdentifier, EthernetTagId, EvpnIpPrefixRoute,
    EvpnIpPrefixValue, EvpnRoute, ExtendedCommunity, Ipv4Prefix, Ipv4UnicastMode, Ipv6Prefix,
    MAX_MESSAGE_LEN, Message, MpReachNlri, MpUnreachNlri, MplsLabel, Origin, PathAttribute, Safi,
    UpdateMessage, encode_message,
};

use super::types::{RouteDistinguisher, RouteTarget, Type5Route};

/// BGP encapsulation tunnel type VXLAN (RFC 9012 §3.4 / IANA "BGP Tunnel Encapsulation
/// Attribute Tunnel Types").
pub const TUNNEL_TYPE_VXLAN: u16 = 8;
/// LOCAL_PREF sent to internal peers (the RFC 4271 customary default).
pub const LOCAL_PREF: u32 = 100;
/// `AS_TRANS` (RFC 6793) for 2-octet fields when the local ASN needs four octets.
const AS_TRANS: u16 = 23456;
/// Octets an EVPN type-5 NLRI takes on the wire: type, length and 34 (IPv4) or 58 (IPv6).
fn nlri_len(route: &Type5Route) -> usize {
    match route.prefix {
        IpNet::V4(_) => 2 + 34,
        IpNet::V6(_) => 2 + 58,
    }
}

/// What the attributes of an outgoing UPDATE depend on besides the routes themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportContext {
    pub local_asn: u32,
    /// iBGP: LOCAL_PREF and an empty AS_PATH; eBGP: AS_PATH with the local ASN.
    pub ibgp: bool,
    /// Both sides announced the 4-octet ASN capability (RFC 6793).
    pub four_octet_as: bool,
}

/// Encodes a type-5 route's NLRI: ESI 0, Ethernet tag 0, gateway IP 0, label = VNI.
pub fn to_evpn_nlri(route: &Type5Route) -> EvpnRoute {
    let (prefix, gateway) = match route.prefix.trunc() {
        IpNet::V4(p) => (
            EvpnIpPrefixValue::V4(Ipv4Prefix::new(p.addr(), p.prefix_len())),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ),
        IpNet::V6(p) => (
            EvpnIpPrefixValue::V6(Ipv6Prefix::new(p.addr(), p.prefix_len())),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ),
    };
    EvpnRoute::IpPrefix(EvpnIpPrefixRoute {
        rd: rustbgpd_wire::RouteDistinguisher(route.rd.0),
        esi: EthernetSegmentIdentifier::ZERO,
        ethernet_tag: EthernetTagId(0),
        prefix,
        gateway,
        label: MplsLabel::new(route.label_vni),
    })
}

/// The IP prefix of a received type-5 NLRI.
pub fn prefix_of(value: &EvpnIpPrefixValue) -> IpNet {
    match value {
        EvpnIpPrefixValue::V4(p) => {
            IpNet::V4(ipnet::Ipv4Net::new(p.addr, p.len.min(32)).unwrap_or_default())
        }
        EvpnIpPrefixValue::V6(p) => {
            IpNet::V6(ipnet::Ipv6Net::new(p.addr, p.len.min(128)).unwrap_or_default())
        }
    }
}

pub fn rd_of(rd: &rustbgpd_wire::RouteDistinguisher) -> RouteDistinguisher {
    RouteDistinguisher(rd.0)
}

/// Extended communities of an exported route: route targets (deduplicated, in order),
/// encapsulation VXLAN, Router's MAC, and the optional link bandwidth.
fn extended_communities(route: &Type5Route, local_asn: u32) -> Vec<ExtendedCommunity> {
    let mut out = Vec::with_capacity(route.route_targets.len() + 3);
    for rt in &route.route_targets {
        let c = ExtendedCommunity::new(rt.to_extended_community());
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out.push(ExtendedCommunity::bgp_encapsulation(TUNNEL_TYPE_VXLAN));
    out.push(ExtendedCommunity::router_mac(route.router_mac));
    if let Some(bps) = route.link_bandwidth {
        let asn = u16::try_from(local_asn).unwrap_or(AS_TRANS);
        // The community carries bytes per second as an IEEE float; f32 loses precision
        // beyond 2^24 but link bandwidth only weighs ECMP paths.
        out.push(ExtendedCommunity::link_bandwidth(asn, bps as f32 / 8.0));
    }
    out
}

/// Path attributes shared by a group of routes, with an MP_REACH_NLRI whose NLRI list the
/// caller fills. Sorted by type code, as RFC 4271 §5 recommends.
fn group_attributes(route: &Type5Route, ctx: &ExportContext) -> Vec<PathAttribute> {
    let mut attrs = Vec::with_capacity(5);
    attrs.push(PathAttribute::Origin(Origin::Igp));
    attrs.push(PathAttribute::AsPath(AsPath {
        segments: if ctx.ibgp {
            Vec::new()
        } else {
            vec![AsPathSegment::AsSequence(vec![ctx.local_asn])]
        },
    }));
    if ctx.ibgp {
        attrs.push(PathAttribute::LocalPref(LOCAL_PREF));
    }
    attrs.push(PathAttribute::MpReachNlri(Box::new(MpReachNlri {
        afi: Afi::L2Vpn,
        safi: Safi::Evpn,
        next_hop: route.next_hop,
        link_local_next_hop: None,
        announced: Vec::new(),
        flowspec_announced: Vec::new(),
        evpn_announced: Vec::new(),
        bgpls_announced: Vec::new(),
        vpn_announced: Vec::new(),
        labeled_announced: Vec::new(),
        rtc_announced: Vec::new(),
    })));
    attrs.push(PathAttribute::ExtendedCommunities(extended_communities(
        route,
        ctx.local_asn,
    )));
    attrs
}

fn mp_unreach(withdrawn: Vec<EvpnRoute>) -> PathAttribute {
    PathAttribute::MpUnreachNlri(Box::new(MpUnreachNlri {
        afi: Afi::L2Vpn,
        safi: Safi::Evpn,
        withdrawn: Vec::new(),
        flowspec_withdrawn: Vec::new(),
        evpn_withdrawn: withdrawn,
        bgpls_withdrawn: Vec::new(),
        vpn_withdrawn: Vec::new(),
        labeled_withdrawn: Vec::new(),
        rtc_withdrawn: Vec::new(),
    }))
}

/// Encodes one UPDATE; None only if the locally built attributes cannot be encoded, which
/// the size budget below rules out.
fn encode_update(attrs: &[PathAttribute], four_octet_as: bool) -> Option<Bytes> {
    let update = UpdateMessage::try_build(
        &[],
        &[],
        attrs,
        four_octet_as,
        false,
        Ipv4UnicastMode::MpReach,
    )
    .ok()?;
    encode_message(&Message::Update(update))
        .ok()
        .map(|b| b.freeze())
}

/// Splits `routes` into chunks whose NLRI fit into `budget` octets each.
fn chunks_by_size<'a>(
    routes: &'a [&'a Type5Route],
    budget: usize,
) -> impl Iterator<Item = &'a [&'a Type5Route]> + 'a {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= routes.len() {
            return None;
        }
        let mut used = 0;
        let mut end = start;
        while end < routes.len() && (end == start || used + nlri_len(routes[end]) <= budget) {
            used += nlri_len(routes[end]);
            end += 1;
        }
        let chunk = &routes[start..end];
        start = end;
        Some(chunk)
    })
}

/// UPDATEs announcing `routes`, packing routes with identical attributes (next hop, Router's
/// MAC, route targets, link bandwidth) into as few UPDATEs of at most 4096 octets as fit.
/// Output order is deterministic (by attribute group, then by the order given).
pub fn announce_updates(routes: &[&Type5Route], ctx: &ExportContext) -> Vec<Bytes> {
    type GroupKey<'a> = (IpAddr, [u8; 6], &'a [RouteTarget], Option<u64>);
    let mut groups: BTreeMap<GroupKey<'_>, Vec<&Type5Route>> = BTreeMap::new();
    for r in routes {
        groups
            .entry((r.next_hop, r.router_mac, &r.route_targets, r.link_bandwidth))
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for members in groups.values() {
        let mut attrs = group_attributes(members[0], ctx);
        let Some(base) = encode_update(&attrs, ctx.four_octet_as) else {
            continue;
        };
        // One octet more once MP_REACH_NLRI needs the extended length field.
        let budget = usize::from(MAX_MESSAGE_LEN).saturating_sub(base.len() + 1);
        for chunk in chunks_by_size(members, budget) {
            if let Some(PathAttribute::MpReachNlri(mp)) = attrs
                .iter_mut()
                .find(|a| matches!(a, PathAttribute::MpReachNlri(_)))
            {
                mp.evpn_announced = chunk.iter().map(|r| to_evpn_nlri(r)).collect();
            }
            out.extend(encode_update(&attrs, ctx.four_octet_as));
        }
    }
    out
}

/// UPDATEs withdrawing `routes` (MP_UNREACH_NLRI only), packed up to 4096 octets.
pub fn withdraw_updates(routes: &[&Type5Route]) -> Vec<Bytes> {
    // Header 19, two length fields 4, MP_UNREACH header with extended length 4, AFI/SAFI 3.
    let budget = usize::from(MAX_MESSAGE_LEN) - (19 + 4 + 4 + 3);
    chunks_by_size(routes, budget)
        .filter_map(|chunk| {
            encode_update(
                &[mp_unreach(chunk.iter().map(|r| to_evpn_nlri(r)).collect())],
                true,
            )
        })
        .collect()
}

/// End-of-RIB marker for L2VPN EVPN (RFC 4724 §2): an UPDATE with an empty MP_UNREACH_NLRI.
pub fn end_of_rib() -> Bytes {
    encode_update(&[mp_unreach(Vec::new())], true).unwrap_or_default()
}

/// Route fields carried in the extended communities of a received UPDATE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivedCommunities {
    pub route_targets: Vec<RouteTarget>,
    pub router_mac: Option<[u8; 6]>,
    pub link_bandwidth: Option<u64>,
    pub vxlan: bool,
}

/// Reads route targets, the first Router's MAC (RFC 9135 §8.1), encapsulation and link
/// bandwidth (either the transitive or the non-transitive variant) from received
/// extended communities.
pub fn read_communities(communities: &[ExtendedCommunity]) -> ReceivedCommunities {
    let mut out = ReceivedCommunities::default();
    for c in communities {
        if let Some(rt) = RouteTarget::from_extended_community(c.as_u64()) {
            if !out.route_targets.contains(&rt) {
                out.route_targets.push(rt);
            }
        } else if let Some(mac) = c.as_router_mac() {
            out.router_mac.get_or_insert(mac);
        } else if c.as_bgp_encapsulation() == Some(TUNNEL_TYPE_VXLAN) {
            out.vxlan = true;
        } else if let Some((_, bytes_per_sec)) = c.as_link_bandwidth()
            && out.link_bandwidth.is_none()
            && bytes_per_sec.is_finite()
            && bytes_per_sec >= 0.0
        {
            // `as` saturates for floats beyond u64, which is what a bandwidth wants.
            out.link_bandwidth = Some((f64::from(bytes_per_sec) * 8.0).round() as u64);
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustbgpd_wire::decode_message;

    pub(crate) fn route(i: u32, nh: &str) -> Type5Route {
        Type5Route {
            rd: "65000:1".parse().unwrap(),
            prefix: format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap(),
            label_vni: 10100,
            next_hop: nh.parse().unwrap(),
            router_mac: [2, 0, 0, 0, 0, 1],
            route_targets: vec!["65000:100".parse().unwrap()],
            link_bandwidth: None,
        }
    }

    pub(crate) fn decode(b: &Bytes) -> Vec<PathAttribute> {
        let mut b = b.clone();
        let Message::Update(u) = decode_message(&mut b, MAX_MESSAGE_LEN).unwrap() else {
            panic!("not an update")
        };
        u.parse(true, false, &[]).unwrap().attributes
    }

    pub(crate) const EBGP: ExportContext = ExportContext {
        local_asn: 65000,
        ibgp: false,
        four_octet_as: true,
    };

    #[test]
    fn exact_wire_bytes_of_one_ipv4_route() {
        let r = route(1, "192.0.2.1");
        let msgs = announce_updates(&[&r], &EBGP);
        assert_eq!(msgs.len(), 1);
        let body = &msgs[0][19..];
        let expected: Vec<u8> = [
            &[0u8, 0][..], // withdrawn routes length
            &[0, 88],      // path attribute length
            &[0x40, 1, 1, 0],
            &[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe8],
            // MP_REACH_NLRI: AFI 25, SAFI 70, next hop 4 octets, reserved, type 5 len 34
            &[0x80, 14, 45, 0, 25, 70, 4, 192, 0, 2, 1, 0, 5, 34],
            &[0, 0, 0xfd, 0xe8, 0, 0, 0, 1], // RD 65000:1
            &[0; 10],                        // ESI
            &[0, 0, 0, 0],                   // Ethernet tag
            &[24, 10, 0, 1, 0],              // prefix
            &[0, 0, 0, 0],                   // gateway
            &[0, 0x27, 0x74],                // VNI 10100 in the 24-bit label field
            &[0xc0, 16, 24],
            &[0, 2, 0xfd, 0xe8, 0, 0, 0, 100], // RT 65000:100
            &[3, 0x0c, 0, 0, 0, 0, 0, 8],      // encapsulation VXLAN
            &[6, 3, 2, 0, 0, 0, 0, 1],         // Router's MAC
        ]
        .concat();
        assert_eq!(body, &expected[..]);
    }

    #[test]
    fn ibgp_has_local_pref_and_empty_as_path() {
        let r = route(1, "2001:db8::1");
        let ctx = ExportContext { ibgp: true, ..EBGP };
        let attrs = decode(&announce_updates(&[&r], &ctx)[0]);
        assert!(attrs.contains(&PathAttribute::LocalPref(100)));
        assert!(attrs.contains(&PathAttribute::AsPath(AsPath { segments: vec![] })));
        let mp = attrs
            .iter()
            .find_map(|a| match a {
                PathAttribute::MpReachNlri(mp) => Some(mp),
                _ => None,
            })
            .unwrap();
        assert_eq!(mp.next_hop, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn packs_up_to_4096_octets_and_groups_by_attributes() {
        let a: Vec<Type5Route> = (0..500).map(|i| route(i, "192.0.2.1")).collect();
        let mut b: Vec<Type5Route> = (500..510).map(|i| route(i, "192.0.2.2")).collect();
        b[0].link_bandwidth = Some(1_000_000_000);
        let all: Vec<&Type5Route> = a.iter().chain(b.iter()).collect();
        let msgs = announce_updates(&all, &EBGP);
        assert!(msgs.iter().all(|m| m.len() <= 4096));
        // 500 routes of 36 octets need 5 full messages; the other next hop 2 more groups.
        assert_eq!(msgs.len(), 5 + 2);
        assert!(msgs[0].len() > 4096 - 36, "first UPDATE is full");
        let mut n = 0;
        for m in &msgs {
            for a in decode(m) {
                if let PathAttribute::MpReachNlri(mp) = a {
                    n += mp.evpn_announced.len();
                }
            }
        }
        assert_eq!(n, 510);
    }

    #[test]
    fn withdrawals_and_end_of_rib() {
        let a: Vec<Type5Route> = (0..300).map(|i| route(i, "192.0.2.1")).collect();
        let refs: Vec<&Type5Route> = a.iter().collect();
        let msgs = withdraw_updates(&refs);
        assert!(msgs.iter().all(|m| m.len() <= 4096));
        assert_eq!(msgs.len(), 3);
        let n: usize = msgs
            .iter()
            .flat_map(decode)
            .map(|a| match a {
                PathAttribute::MpUnreachNlri(mp) => mp.evpn_withdrawn.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(n, 300);
        let eor = end_of_rib();
        assert_eq!(&eor[16..], &[0, 29, 2, 0, 0, 0, 6, 0x80, 15, 3, 0, 25, 70]);
    }

    #[test]
    fn communities_round_trip() {
        let mut r = route(1, "192.0.2.1");
        r.route_targets.push("10.0.0.1:5".parse().unwrap());
        r.route_targets.push("65000:100".parse().unwrap());
        r.link_bandwidth = Some(800_000_000);
        let got = read_communities(&extended_communities(&r, 65000));
        assert_eq!(got.route_targets, r.route_targets[..2].to_vec());
        assert_eq!(got.router_mac, Some(r.router_mac));
        assert_eq!(got.link_bandwidth, Some(800_000_000));
        assert!(got.vxlan);
    }
}
