//! Adj-RIB-Out (pure): the desired set of type-5 routes, and the diff between what a
//! session has sent and what is desired, turned into the minimal UPDATEs: withdraw only the
//! routes that went away, (re-)announce only the new or changed ones.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map;

use bytes::Bytes;
use ipnet::IpNet;

use super::codec::{self, ExportContext};
use super::types::{RouteKey, Type5Route};
use std::sync::Arc;

/// The desired Adj-RIB-Out; None until the owner first sets it. Sessions hold back their
/// initial table and its End-of-RIB until then (RFC 4724 §4.1: a restarting speaker
/// defers its advertisement until its route selection is done): an empty table followed by
/// End-of-RIB would make a peer that kept our routes across a restart flush them.
pub(crate) type Desired = Option<Arc<AdjRibOut>>;

/// A set of type-5 routes keyed by (RD, prefix); the unit of `set_advertised`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdjRibOut {
    routes: BTreeMap<RouteKey, Type5Route>,
}

impl AdjRibOut {
    /// Builds the set; of routes with the same (RD, prefix) the last one wins. Returns the
    /// number of such duplicates so the caller can report them.
    pub fn from_routes(routes: Vec<Type5Route>) -> (AdjRibOut, usize) {
        let mut map = BTreeMap::new();
        let mut duplicates = 0;
        for mut r in routes {
            r.prefix = r.prefix.trunc();
            if map.insert(r.key(), r).is_some() {
                duplicates += 1;
            }
        }
        (AdjRibOut { routes: map }, duplicates)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Type5Route> {
        self.routes.values()
    }

    pub fn get(&self, key: &RouteKey) -> Option<&Type5Route> {
        self.routes.get(key)
    }
}

/// What has to change on a session to go from `sent` to `desired`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RibDiff<'a> {
    /// Routes (as they were sent) whose key is no longer desired.
    pub withdraw: Vec<&'a Type5Route>,
    /// Desired routes that were not sent.
    pub announce: Vec<&'a Type5Route>,
    /// Desired routes sent with other attributes or label: announced again, which
    /// replaces them at the peer (implicit withdraw, RFC 4271 §3.1).
    pub replace: Vec<&'a Type5Route>,
}

impl RibDiff<'_> {
    pub fn is_empty(&self) -> bool {
        self.withdraw.is_empty() && self.announce.is_empty() && self.replace.is_empty()
    }
}

/// Merge-joins both sets in key order: O(|sent| + |desired|).
pub fn diff<'a>(sent: &'a AdjRibOut, desired: &'a AdjRibOut) -> RibDiff<'a> {
    let mut out = RibDiff::default();
    let mut s = sent.routes.iter().peekable();
    let mut d = desired.routes.iter().peekable();
    loop {
        let order = match (s.peek(), d.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ks, _)), Some((kd, _))) => ks.cmp(kd),
        };
        match order {
            Ordering::Less => out.withdraw.extend(s.next().map(|(_, r)| r)),
            Ordering::Greater => out.announce.extend(d.next().map(|(_, r)| r)),
            Ordering::Equal => {
                if let (Some((_, rs)), Some((_, rd))) = (s.next(), d.next())
                    && rs != rd
                {
                    // A changed route is replaced by the new announcement: no
                    // MP_UNREACH for it.
                    out.replace.push(rd);
                }
            }
        }
    }
    out
}

/// Prefixes whose changes go out as one step of [`updates`]: mid-step, a peer holds the
/// old and the new paths of at most this many prefixes at once.
const PREFIXES_PER_STEP: usize = 256;

/// The UPDATEs for a diff, make before break (ADR 0065). A tunnel's routes carry its own
/// RD, so moving a prefix to other tunnels withdraws one NLRI and announces another:
/// withdrawn first, a prefix whose paths all change would have none at the leaf between
/// the two UPDATEs, and its traffic would be dropped there. So prefix by prefix, in steps
/// of [`PREFIXES_PER_STEP`], a step's new paths are announced (grouped by identical
/// attributes) before its old paths are withdrawn.
///
/// Steps go from the prefixes that lose most paths to those that gain most, so the
/// peer's table shrinks before it grows: between steps it never holds more routes than
/// the larger of the old and the new table, and mid-step at most one step's
/// announcements more, a bounded excess for its prefix limit.
pub fn updates(diff: &RibDiff<'_>, ctx: &ExportContext) -> Vec<Bytes> {
    updates_in_steps(diff, ctx, PREFIXES_PER_STEP)
}

fn updates_in_steps(diff: &RibDiff<'_>, ctx: &ExportContext, per_step: usize) -> Vec<Bytes> {
    /// A prefix's announcements, how many of them are new paths (the others replace a
    /// path), and its withdrawals.
    #[derive(Default)]
    struct Change<'a> {
        announce: Vec<&'a Type5Route>,
        new_paths: usize,
        withdraw: Vec<&'a Type5Route>,
    }
    impl Change<'_> {
        /// What the step does to the size of the peer's table.
        fn growth(&self) -> isize {
            self.new_paths as isize - self.withdraw.len() as isize
        }
    }
    let mut by_prefix: BTreeMap<IpNet, Change<'_>> = BTreeMap::new();
    for r in &diff.announce {
        let c = by_prefix.entry(r.prefix).or_default();
        c.announce.push(r);
        c.new_paths += 1;
    }
    for r in &diff.replace {
        by_prefix.entry(r.prefix).or_default().announce.push(r);
    }
    for r in &diff.withdraw {
        by_prefix.entry(r.prefix).or_default().withdraw.push(r);
    }
    let mut changes: Vec<Change<'_>> = by_prefix.into_values().collect();
    // Stable: equal growth keeps prefix order, and the UPDATEs stay deterministic.
    changes.sort_by_key(Change::growth);
    let mut out = Vec::new();
    for step in changes.chunks(per_step.max(1)) {
        let announce: Vec<&Type5Route> = step
            .iter()
            .flat_map(|c| c.announce.iter().copied())
            .collect();
        let withdraw: Vec<&Type5Route> = step
            .iter()
            .flat_map(|c| c.withdraw.iter().copied())
            .collect();
        out.extend(codec::announce_updates(&announce, ctx));
        out.extend(codec::withdraw_updates(&withdraw));
    }
    out
}

/// Iterates a set in key order (for snapshots and route refresh).
impl<'a> IntoIterator for &'a AdjRibOut {
    type Item = (&'a RouteKey, &'a Type5Route);
    type IntoIter = btree_map::Iter<'a, RouteKey, Type5Route>;

    fn into_iter(self) -> Self::IntoIter {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::types::RouteTarget;
    use proptest::prelude::*;
    use rustbgpd_wire::{EvpnRoute, PathAttribute};
    use std::collections::{BTreeSet, HashMap};

    fn route(i: u16, vni: u32, mac: u8) -> Type5Route {
        Type5Route {
            rd: "65000:1".parse().unwrap(),
            prefix: format!("10.0.{}.0/24", i % 256).parse().unwrap(),
            label_vni: vni,
            next_hop: "192.0.2.1".parse().unwrap(),
            router_mac: [2, 0, 0, 0, 0, mac],
            route_targets: vec![RouteTarget::As2 {
                asn: 65000,
                value: 100,
            }],
            link_bandwidth: None,
        }
    }

    fn set(v: Vec<Type5Route>) -> AdjRibOut {
        AdjRibOut::from_routes(v).0
    }

    #[test]
    fn table() {
        let a = route(1, 10, 1);
        let b = route(2, 10, 1);
        let b2 = route(2, 11, 1);
        let c = route(3, 10, 1);
        let sent = set(vec![a.clone(), b.clone()]);
        let desired = set(vec![b2.clone(), c.clone()]);
        let d = diff(&sent, &desired);
        assert_eq!(d.withdraw, vec![&a]);
        assert_eq!(d.announce, vec![&c]);
        assert_eq!(d.replace, vec![&b2]);
        assert!(diff(&desired, &desired).is_empty());
        let empty = AdjRibOut::default();
        let d = diff(&empty, &desired);
        assert_eq!(d.announce.len(), 2);
        assert!(d.withdraw.is_empty());
    }

    #[test]
    fn duplicates_last_wins_and_host_bits_cleared() {
        let mut x = route(1, 10, 1);
        x.prefix = "10.0.1.7/24".parse().unwrap();
        let (s, dups) = AdjRibOut::from_routes(vec![route(1, 99, 1), x]);
        assert_eq!(dups, 1);
        let only = s.iter().next().unwrap();
        assert_eq!(only.label_vni, 10);
        assert_eq!(only.prefix.to_string(), "10.0.1.0/24");
    }

    fn route_of_tunnel(prefix: u16, tunnel: u8) -> Type5Route {
        route_of_tunnel_with(prefix, tunnel, 10)
    }

    /// `vni` stands for any attribute that can change while the tunnel stays.
    fn route_of_tunnel_with(prefix: u16, tunnel: u8, vni: u32) -> Type5Route {
        Type5Route {
            rd: format!("65000:{tunnel}").parse().unwrap(),
            router_mac: [2, 0, 0, 0, 0, tunnel],
            ..route(prefix, vni, tunnel)
        }
    }

    /// What a peer keys a type-5 route by: its RD and prefix (the label is an attribute).
    type NlriKey = (rustbgpd_wire::RouteDistinguisher, IpNet);

    fn nlri_key(r: &EvpnRoute) -> NlriKey {
        match r {
            EvpnRoute::IpPrefix(p) => (p.rd, codec::prefix_of(&p.prefix)),
            other => panic!("not a type-5 route: {other:?}"),
        }
    }

    /// The routes a peer holds, as it holds them.
    fn peer_table<'a>(routes: impl Iterator<Item = &'a Type5Route>) -> HashMap<NlriKey, EvpnRoute> {
        routes
            .map(codec::to_evpn_nlri)
            .map(|r| (nlri_key(&r), r))
            .collect()
    }

    /// Applies one UPDATE to the routes a peer holds: an announcement replaces the route
    /// of the same key (implicit withdraw), a withdrawal removes it.
    fn apply(held: &mut HashMap<NlriKey, EvpnRoute>, msg: &Bytes) {
        for a in codec::tests::decode(msg) {
            match a {
                PathAttribute::MpReachNlri(mp) => {
                    held.extend(mp.evpn_announced.into_iter().map(|r| (nlri_key(&r), r)))
                }
                PathAttribute::MpUnreachNlri(mp) => {
                    for r in &mp.evpn_withdrawn {
                        held.remove(&nlri_key(r));
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn a_prefix_moved_to_other_tunnels_is_announced_there_before_it_is_withdrawn() {
        let sent = set(vec![route_of_tunnel(1, 1), route_of_tunnel(1, 2)]);
        let desired = set(vec![route_of_tunnel(1, 3), route_of_tunnel(1, 4)]);
        let msgs = updates(&diff(&sent, &desired), &codec::tests::EBGP);
        let mut held = peer_table(sent.iter());
        let mut sizes = Vec::new();
        for m in &msgs {
            apply(&mut held, m);
            sizes.push(held.len());
        }
        // One UPDATE per new tunnel (its own next hop and MAC), then one withdrawing both.
        assert_eq!(sizes, vec![3, 4, 2]);
        assert_eq!(held, peer_table(desired.iter()));
    }

    proptest! {
        /// Replayed UPDATE by UPDATE on a peer that holds `sent`: a prefix that has paths
        /// before and after has one after every UPDATE; the peer never holds more than the
        /// larger table plus one step's announcements; it ends with `desired`.
        #[test]
        fn make_before_break_keeps_every_kept_prefix_and_bounds_the_excess(
            sent in proptest::collection::vec((0u16..16, 0u8..4, 10u32..12), 0..48),
            desired in proptest::collection::vec((0u16..16, 0u8..4, 10u32..12), 0..48),
            per_step in 1usize..5,
        ) {
            let build = |v: Vec<(u16, u8, u32)>| {
                set(v.into_iter().map(|(p, t, vni)| route_of_tunnel_with(p, t, vni)).collect())
            };
            let (sent, desired) = (build(sent), build(desired));
            let kept: BTreeSet<IpNet> = sent
                .iter()
                .map(|r| r.prefix)
                .filter(|p| desired.iter().any(|r| r.prefix == *p))
                .collect();
            let bound = sent.len().max(desired.len()) + per_step * 4;
            let msgs = updates_in_steps(&diff(&sent, &desired), &codec::tests::EBGP, per_step);
            let mut held = peer_table(sent.iter());
            for m in &msgs {
                apply(&mut held, m);
                let covered: BTreeSet<IpNet> = held.keys().map(|k| k.1).collect();
                prop_assert!(kept.is_subset(&covered), "a kept prefix lost all paths");
                prop_assert!(held.len() <= bound, "{} routes held, bound {bound}", held.len());
            }
            prop_assert_eq!(held, peer_table(desired.iter()));
        }

        /// Applying the diff to `sent` gives `desired`; nothing unchanged is touched.
        #[test]
        fn diff_is_minimal_and_complete(
            sent in proptest::collection::vec((0u16..64, 0u32..3, 0u8..2), 0..40),
            desired in proptest::collection::vec((0u16..64, 0u32..3, 0u8..2), 0..40),
        ) {
            let sent = set(sent.into_iter().map(|(i, v, m)| route(i, v, m)).collect());
            let desired = set(desired.into_iter().map(|(i, v, m)| route(i, v, m)).collect());
            let d = diff(&sent, &desired);
            let mut applied: BTreeMap<RouteKey, Type5Route> =
                sent.iter().map(|r| (r.key(), r.clone())).collect();
            for w in &d.withdraw {
                prop_assert!(desired.get(&w.key()).is_none());
                applied.remove(&w.key());
            }
            for a in &d.announce {
                prop_assert!(sent.get(&a.key()).is_none());
                applied.insert(a.key(), (*a).clone());
            }
            for a in &d.replace {
                prop_assert!(sent.get(&a.key()).is_some_and(|s| s != *a));
                applied.insert(a.key(), (*a).clone());
            }
            let want: BTreeMap<RouteKey, Type5Route> =
                desired.iter().map(|r| (r.key(), r.clone())).collect();
            prop_assert_eq!(applied, want);
            let keys: BTreeSet<_> =
                d.withdraw.iter().chain(&d.announce).chain(&d.replace).map(|r| r.key()).collect();
            prop_assert_eq!(keys.len(), d.withdraw.len() + d.announce.len() + d.replace.len());
        }
    }
}
