//! Received UPDATE handling (pure): RFC 7606 revised error handling on top of
//! `rustbgpd_wire`'s revised decoder, and extraction of EVPN type-5 announcements and
//! withdrawals.
//!
//! The outcome of an UPDATE is one of:
//! - session reset: `Err(NOTIFICATION)` for what makes the message unparseable — section
//!   length errors, malformed MP_REACH/MP_UNREACH or NLRI (RFC 7606 §3 (j), §5.3, §7.11) —
//!   and for an unrecognized well-known attribute (RFC 4271 §6.3, which RFC 7606 does
//!   not revise);
//! - treat-as-withdraw: every route of the UPDATE is withdrawn (RFC 7606 §2), e.g. for a
//!   malformed ORIGIN/AS_PATH/NEXT_HOP, a missing well-known attribute, flag conflicts;
//! - attribute discard: the attribute is dropped and the UPDATE used (RFC 7606 §7.6/7.7…);
//! - normal processing. Unknown optional transitive attributes pass; unknown optional
//!   non-transitive ones are quietly ignored (RFC 4271 §5).

use std::net::IpAddr;

use bytes::Bytes;
use ipnet::IpNet;
use rustbgpd_wire::notification::update_subcode;
use rustbgpd_wire::{
    Afi, AsPathSegment, DecodeError, ErrorDisposition, EvpnRoute, MAX_MESSAGE_LEN, Message,
    NotificationCode, NotificationMessage, PathAttribute, Safi, UpdateMessage,
    UpdateValidationOptions, decode_message, validate::validate_update_attributes_with_context,
};

use super::codec;
use super::types::{RouteDistinguisher, Type5Route};

/// Session facts the handling of an UPDATE depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveContext {
    pub local_asn: u32,
    pub peer_asn: u32,
    pub ibgp: bool,
    pub four_octet_as: bool,
}

/// Identity of a received type-5 route within one peer's Adj-RIB-In.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReceivedKey {
    pub rd: RouteDistinguisher,
    pub ethernet_tag: u32,
    pub prefix: IpNet,
}

/// A type-5 announcement as received, before the import route-target filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedType5 {
    pub route: Type5Route,
    pub ethernet_tag: u32,
    /// Gateway IP overlay index (RFC 9136 §3.1); unspecified when absent.
    pub gateway: IpAddr,
}

impl ReceivedType5 {
    pub fn key(&self) -> ReceivedKey {
        ReceivedKey {
            rd: self.route.rd,
            ethernet_tag: self.ethernet_tag,
            prefix: self.route.prefix,
        }
    }
}

/// What one UPDATE does to the Adj-RIB-In, and what was dropped on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateOutcome {
    pub announced: Vec<ReceivedType5>,
    pub withdrawn: Vec<ReceivedKey>,
    /// The L2VPN EVPN End-of-RIB marker (RFC 4724 §2).
    pub end_of_rib: bool,
    /// The UPDATE was treated as withdraw (RFC 7606 §2); `reason` says why.
    pub treat_as_withdraw: bool,
    /// Attributes discarded under RFC 7606 (including duplicates, §3 (g)).
    pub attributes_discarded: u32,
    /// NLRI that are not EVPN type-5 (other route types, other address families).
    pub ignored_nlri: u32,
    /// Announcements dropped because the local ASN is in their AS_PATH (eBGP loop).
    pub as_path_loops: u32,
    pub reason: Option<String>,
}

fn notification(code: NotificationCode, subcode: u8, data: Bytes) -> NotificationMessage {
    NotificationMessage::new(code, subcode, data)
}

fn from_decode_error(e: &DecodeError) -> NotificationMessage {
    let (code, subcode, data) = e.to_notification();
    notification(code, subcode, data)
}

/// Attribute as it appeared on the wire, the data of an UPDATE-error NOTIFICATION.
fn attribute_bytes(flags: u8, type_code: u8, value: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(value.len() + 4);
    if value.len() > 255 {
        out.extend_from_slice(&[flags | 0x10, type_code]);
        out.extend_from_slice(&(value.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags & !0x10, type_code, value.len() as u8]);
    }
    out.extend_from_slice(value);
    Bytes::from(out)
}

/// Decodes one complete BGP message (header included) and, if it is an UPDATE, handles it.
/// The entry point for fuzzing the whole receive path; a non-UPDATE message yields an
/// empty outcome.
pub fn process_update_message(
    bytes: &[u8],
    max_message_len: u16,
    ctx: &ReceiveContext,
) -> Result<UpdateOutcome, NotificationMessage> {
    let mut buf = Bytes::copy_from_slice(bytes);
    match decode_message(&mut buf, max_message_len.max(MAX_MESSAGE_LEN)) {
        Ok(Message::Update(u)) => process_update(&u, ctx),
        Ok(_) => Ok(UpdateOutcome::default()),
        Err(e) => Err(from_decode_error(&e)),
    }
}

/// Handles a framed UPDATE per RFC 7606 (see the module documentation).
pub fn process_update(
    msg: &UpdateMessage,
    ctx: &ReceiveContext,
) -> Result<UpdateOutcome, NotificationMessage> {
    let (parsed, unknown_evpn_types) = msg
        .parse_revised_observed_with_error_context(ctx.four_octet_as, ctx.ibgp, false, &[])
        .map_err(|e| from_decode_error(&e.error))?;
    let attrs = &parsed.update.attributes;
    let mut out = UpdateOutcome::default();

    for a in attrs {
        if let PathAttribute::Unknown(raw) = a
            && raw.flags & 0x80 == 0
        {
            return Err(notification(
                NotificationCode::UpdateMessage,
                update_subcode::UNRECOGNIZED_WELLKNOWN,
                attribute_bytes(raw.flags, raw.type_code, &raw.data),
            ));
        }
    }

    let mut disposition: Option<ErrorDisposition> = None;
    for m in &parsed.malformed {
        match m.disposition {
            ErrorDisposition::AttributeDiscard => out.attributes_discarded += 1,
            ErrorDisposition::SessionReset => return Err(from_decode_error(&m.error)),
            ErrorDisposition::TreatAsWithdraw => {
                out.reason
                    .get_or_insert_with(|| format!("attribute {}: {}", m.type_code, m.error));
            }
        }
        disposition = disposition.max(Some(m.disposition));
    }

    // Collect the EVPN NLRI; everything else is counted and ignored (only L2VPN EVPN is
    // negotiated, and IPv4 unicast is disabled on these sessions).
    let mut reach: Vec<(&EvpnRoute, IpAddr)> = Vec::new();
    let mut unreach: Vec<&EvpnRoute> = Vec::new();
    let mut mp_unreach_only_evpn_empty = false;
    let mut any_announcement = !parsed.update.announced.is_empty();
    out.ignored_nlri += (parsed.update.announced.len() + parsed.update.withdrawn.len()) as u32;
    for a in attrs {
        match a {
            PathAttribute::MpReachNlri(mp) if (mp.afi, mp.safi) == (Afi::L2Vpn, Safi::Evpn) => {
                any_announcement |= !mp.evpn_announced.is_empty();
                reach.extend(mp.evpn_announced.iter().map(|r| (r, mp.next_hop)));
            }
            PathAttribute::MpUnreachNlri(mp) if (mp.afi, mp.safi) == (Afi::L2Vpn, Safi::Evpn) => {
                unreach.extend(mp.evpn_withdrawn.iter());
                mp_unreach_only_evpn_empty = mp.evpn_withdrawn.is_empty();
            }
            PathAttribute::MpReachNlri(mp) => {
                let n = mp.announced.len()
                    + mp.flowspec_announced.len()
                    + mp.bgpls_announced.len()
                    + mp.vpn_announced.len()
                    + mp.labeled_announced.len()
                    + mp.rtc_announced.len();
                any_announcement |= n > 0;
                out.ignored_nlri += n as u32;
            }
            PathAttribute::MpUnreachNlri(mp) => {
                out.ignored_nlri += (mp.withdrawn.len()
                    + mp.flowspec_withdrawn.len()
                    + mp.bgpls_withdrawn.len()
                    + mp.vpn_withdrawn.len()
                    + mp.labeled_withdrawn.len()
                    + mp.rtc_withdrawn.len()) as u32;
            }
            _ => {}
        }
    }
    out.ignored_nlri += unknown_evpn_types.iter().map(|(_, n)| *n).sum::<u32>();

    out.end_of_rib = attrs.len() == 1
        && mp_unreach_only_evpn_empty
        && msg.withdrawn_routes.is_empty()
        && msg.nlri.is_empty()
        && parsed.malformed.is_empty()
        && unknown_evpn_types.is_empty();

    if let Err(e) = validate_update_attributes_with_context(
        attrs,
        any_announcement,
        !parsed.update.announced.is_empty(),
        !ctx.ibgp,
        UpdateValidationOptions::default(),
    ) {
        if e.error.subcode == update_subcode::UNRECOGNIZED_WELLKNOWN {
            // Reached only if the attribute list above missed it; same answer.
            return Err(notification(
                NotificationCode::UpdateMessage,
                e.error.subcode,
                Bytes::from(e.error.data),
            ));
        }
        if e.error.disposition == ErrorDisposition::SessionReset {
            return Err(notification(
                NotificationCode::UpdateMessage,
                e.error.subcode,
                Bytes::from(e.error.data),
            ));
        }
        if e.error.disposition == ErrorDisposition::AttributeDiscard {
            out.attributes_discarded += 1;
        } else {
            out.reason.get_or_insert_with(|| {
                format!(
                    "attribute {}: UPDATE error subcode {}",
                    e.type_code, e.error.subcode
                )
            });
        }
        disposition = disposition.max(Some(e.error.disposition));
    }

    let as_path = attrs.iter().find_map(|a| match a {
        PathAttribute::AsPath(p) => Some(p),
        _ => None,
    });
    let mut looped = false;
    if any_announcement && !ctx.ibgp {
        // RFC 4271 §6.3: the leftmost AS from an external peer must be the peer's; a
        // malformed AS_PATH is treat-as-withdraw under RFC 7606 §7.2.
        let first = as_path.and_then(|p| match p.segments.first() {
            Some(AsPathSegment::AsSequence(v)) => v.first().copied(),
            _ => None,
        });
        if first != Some(ctx.peer_asn) {
            out.reason.get_or_insert_with(|| {
                format!(
                    "AS_PATH from external peer does not start with AS {}",
                    ctx.peer_asn
                )
            });
            disposition = disposition.max(Some(ErrorDisposition::TreatAsWithdraw));
        }
        looped = as_path.is_some_and(|p| p.contains_asn(ctx.local_asn));
    }

    let type5_keys = |routes: &mut dyn Iterator<Item = &EvpnRoute>| -> Vec<ReceivedKey> {
        routes
            .filter_map(|r| match r {
                EvpnRoute::IpPrefix(p) => Some(ReceivedKey {
                    rd: codec::rd_of(&p.rd),
                    ethernet_tag: p.ethernet_tag.0,
                    prefix: codec::prefix_of(&p.prefix),
                }),
                _ => None,
            })
            .collect()
    };
    let non_type5 = reach
        .iter()
        .map(|(r, _)| *r)
        .chain(unreach.iter().copied())
        .filter(|r| !matches!(r, EvpnRoute::IpPrefix(_)))
        .count();
    out.ignored_nlri += non_type5 as u32;
    out.withdrawn = type5_keys(&mut unreach.iter().copied());

    if disposition == Some(ErrorDisposition::TreatAsWithdraw) || looped {
        let keys = type5_keys(&mut reach.iter().map(|(r, _)| *r));
        if looped && disposition != Some(ErrorDisposition::TreatAsWithdraw) {
            out.as_path_loops = keys.len() as u32;
        } else {
            out.treat_as_withdraw = true;
        }
        out.withdrawn.extend(keys);
        return Ok(out);
    }

    let communities = codec::read_communities(
        attrs
            .iter()
            .find_map(PathAttribute::extended_communities)
            .unwrap_or_default(),
    );
    for (r, next_hop) in reach {
        if let EvpnRoute::IpPrefix(p) = r {
            out.announced.push(ReceivedType5 {
                route: Type5Route {
                    rd: codec::rd_of(&p.rd),
                    prefix: codec::prefix_of(&p.prefix),
                    label_vni: p.label.value(),
                    next_hop,
                    router_mac: communities.router_mac.unwrap_or([0; 6]),
                    route_targets: communities.route_targets.clone(),
                    link_bandwidth: communities.link_bandwidth,
                },
                ethernet_tag: p.ethernet_tag.0,
                gateway: p.gateway,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::codec::{ExportContext, announce_updates, end_of_rib, withdraw_updates};

    const CTX: ReceiveContext = ReceiveContext {
        local_asn: 65000,
        peer_asn: 65001,
        ibgp: false,
        four_octet_as: true,
    };

    fn route() -> Type5Route {
        Type5Route {
            rd: "65001:7".parse().unwrap(),
            prefix: "10.1.0.0/16".parse().unwrap(),
            label_vni: 10100,
            next_hop: "192.0.2.9".parse().unwrap(),
            router_mac: [2, 0, 0, 0, 0, 9],
            route_targets: vec!["65000:100".parse().unwrap()],
            link_bandwidth: Some(1_000_000_000),
        }
    }

    /// An UPDATE for `route()` as peer AS 65001 would send it.
    fn update_bytes() -> Vec<u8> {
        let r = route();
        let ctx = ExportContext {
            local_asn: 65001,
            ibgp: false,
            four_octet_as: true,
        };
        announce_updates(&[&r], &ctx)[0].to_vec()
    }

    /// Rebuilds an UPDATE from its path attribute section.
    fn with_attributes(attrs: &[u8]) -> Vec<u8> {
        let mut m = vec![0xff; 16];
        m.extend_from_slice(&((19 + 4 + attrs.len()) as u16).to_be_bytes());
        m.push(2);
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(attrs);
        m
    }

    fn attributes_of(msg: &[u8]) -> Vec<u8> {
        msg[23..].to_vec()
    }

    /// Splits the attribute section into (flags, type, whole attribute bytes).
    fn split(attrs: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < attrs.len() {
            let ext = attrs[i] & 0x10 != 0;
            let (len, hdr) = if ext {
                (
                    usize::from(u16::from_be_bytes([attrs[i + 2], attrs[i + 3]])),
                    4,
                )
            } else {
                (usize::from(attrs[i + 2]), 3)
            };
            out.push(attrs[i..i + hdr + len].to_vec());
            i += hdr + len;
        }
        out
    }

    fn run(msg: &[u8]) -> Result<UpdateOutcome, NotificationMessage> {
        process_update_message(msg, 4096, &CTX)
    }

    #[test]
    fn round_trip_announcement() {
        let out = run(&update_bytes()).unwrap();
        assert_eq!(out.announced.len(), 1);
        assert_eq!(out.announced[0].route, route());
        assert_eq!(out.announced[0].ethernet_tag, 0);
        assert!(!out.treat_as_withdraw);
        let w = withdraw_updates(&[&route()]);
        let out = run(&w[0]).unwrap();
        assert_eq!(
            out.withdrawn,
            vec![
                ReceivedType5 {
                    route: route(),
                    ethernet_tag: 0,
                    gateway: "0.0.0.0".parse().unwrap()
                }
                .key()
            ]
        );
        assert!(!out.end_of_rib);
        assert!(run(&end_of_rib()).unwrap().end_of_rib);
    }

    /// Table of RFC 7606 outcomes for single-attribute mutations.
    #[test]
    fn rfc7606_table() {
        let parts = split(&attributes_of(&update_bytes()));
        // parts: ORIGIN, AS_PATH, MP_REACH, EXT_COMMUNITIES
        assert_eq!(parts.len(), 4);
        let build = |f: &dyn Fn(&mut Vec<Vec<u8>>)| {
            let mut p = parts.clone();
            f(&mut p);
            with_attributes(&p.concat())
        };
        enum Want {
            TaW,
            Discard,
            Reset(u8, u8),
            Pass,
        }
        let cases: Vec<(&str, Vec<u8>, Want)> = vec![
            (
                "ORIGIN value 7",
                build(&|p| p[0] = vec![0x40, 1, 1, 7]),
                Want::TaW,
            ),
            (
                "ORIGIN length 2",
                build(&|p| p[0] = vec![0x40, 1, 2, 0, 0]),
                Want::TaW,
            ),
            ("missing ORIGIN", build(&|p| drop(p.remove(0))), Want::TaW),
            ("missing AS_PATH", build(&|p| drop(p.remove(1))), Want::TaW),
            (
                "AS_PATH of another AS",
                build(&|p| p[1] = vec![0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xea]),
                Want::TaW,
            ),
            (
                "ORIGIN flagged optional",
                build(&|p| p[0][0] = 0xc0),
                Want::TaW,
            ),
            (
                "ATOMIC_AGGREGATE with a value",
                build(&|p| p.push(vec![0x40, 6, 1, 0])),
                Want::Discard,
            ),
            (
                "duplicate ORIGIN",
                build(&|p| p.push(vec![0x40, 1, 1, 0])),
                Want::Discard,
            ),
            (
                "unknown optional transitive",
                build(&|p| p.push(vec![0xc0, 200, 2, 1, 2])),
                Want::Pass,
            ),
            (
                "unknown optional non-transitive",
                build(&|p| p.push(vec![0x80, 201, 1, 1])),
                Want::Pass,
            ),
            (
                "unknown well-known",
                build(&|p| p.push(vec![0x40, 202, 1, 1])),
                Want::Reset(3, 2),
            ),
            (
                "MP_REACH NLRI length wrong",
                build(&|p| {
                    // type-5 NLRI length 34 → 33 (and the attribute one octet shorter)
                    let mp = &mut p[2];
                    assert_eq!((mp[12], mp[13]), (5, 34));
                    mp[2] -= 1;
                    mp[13] = 33;
                    mp.pop();
                }),
                // Optional Attribute Error, as RFC 4760 §7 names it for MP_REACH_NLRI.
                Want::Reset(3, 9),
            ),
            (
                "attribute overruns the section",
                build(&|p| p[3][2] = 200),
                Want::TaW,
            ),
            (
                "Router's MAC multicast",
                build(&|p| {
                    let ec = &mut p[3];
                    let i = ec.windows(2).position(|w| w == [6, 3]).unwrap();
                    ec[i + 2] = 1;
                }),
                Want::TaW,
            ),
        ];
        for (name, msg, want) in cases {
            let got = run(&msg);
            match (want, got) {
                (Want::TaW, Ok(o)) => {
                    assert!(o.treat_as_withdraw, "{name}: {o:?}");
                    assert!(o.announced.is_empty(), "{name}");
                    assert_eq!(o.withdrawn.len(), 1, "{name}");
                }
                (Want::Discard, Ok(o)) => {
                    assert!(!o.treat_as_withdraw, "{name}: {o:?}");
                    assert_eq!(o.attributes_discarded, 1, "{name}");
                    assert_eq!(o.announced.len(), 1, "{name}");
                }
                (Want::Pass, Ok(o)) => {
                    assert!(!o.treat_as_withdraw, "{name}: {o:?}");
                    assert_eq!(o.announced.len(), 1, "{name}");
                }
                (Want::Reset(c, s), Err(n)) => {
                    assert_eq!((n.code.as_u8(), n.subcode), (c, s), "{name}");
                }
                (_, got) => panic!("{name}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn length_errors_reset_the_session() {
        let mut m = update_bytes();
        // withdrawn routes length larger than the message
        m[19] = 0x10;
        assert_eq!(run(&m).unwrap_err().code, NotificationCode::UpdateMessage);
        let mut m = update_bytes();
        // header length beyond 4096
        m[16] = 0x20;
        let n = run(&m).unwrap_err();
        assert_eq!((n.code, n.subcode), (NotificationCode::MessageHeader, 2));
    }

    #[test]
    fn as_loop_drops_the_announcement() {
        let r = route();
        let ctx = ExportContext {
            local_asn: 65001,
            ibgp: false,
            four_octet_as: true,
        };
        let m = announce_updates(&[&r], &ctx)[0].to_vec();
        let parts = split(&attributes_of(&m));
        let mut p = parts.clone();
        p[1] = vec![0x40, 2, 10, 2, 2, 0, 0, 0xfd, 0xe9, 0, 0, 0xfd, 0xe8];
        let o = run(&with_attributes(&p.concat())).unwrap();
        assert_eq!(o.as_path_loops, 1);
        assert!(o.announced.is_empty());
        assert!(!o.treat_as_withdraw);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Mutated and random input never panics.
        #[test]
        fn never_panics(
            flips in proptest::collection::vec((0usize..200, proptest::prelude::any::<u8>()), 0..8),
            cut in 0usize..200,
            ibgp in proptest::prelude::any::<bool>(),
        ) {
            let mut m = update_bytes();
            for (i, b) in flips {
                let n = m.len();
                m[i % n] = b;
            }
            m.truncate(cut.max(19));
            let ctx = ReceiveContext { ibgp, ..CTX };
            let _ = process_update_message(&m, 4096, &ctx);
        }
    }
}
