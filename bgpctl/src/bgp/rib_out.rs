//! Adj-RIB-Out (pure): the desired set of type-5 routes, and the diff between what a
//! session has sent and what is desired, turned into the minimal UPDATEs: withdraw only the
//! routes that went away, (re-)announce only the new or changed ones.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map;

use bytes::Bytes;

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
    /// Desired routes that were not sent, or were sent with other attributes or label.
    pub announce: Vec<&'a Type5Route>,
}

impl RibDiff<'_> {
    pub fn is_empty(&self) -> bool {
        self.withdraw.is_empty() && self.announce.is_empty()
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
                    // A changed route is replaced by the new announcement (implicit
                    // withdraw, RFC 4271 §3.1): no MP_UNREACH for it.
                    out.announce.push(rd);
                }
            }
        }
    }
    out
}

/// The UPDATEs for a diff: withdrawals first (so a peer's prefix limit never sees both
/// generations), then announcements grouped by identical attributes.
pub fn updates(diff: &RibDiff<'_>, ctx: &ExportContext) -> Vec<Bytes> {
    let mut out = codec::withdraw_updates(&diff.withdraw);
    out.extend(codec::announce_updates(&diff.announce, ctx));
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
    use std::collections::BTreeSet;

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
        assert_eq!(d.announce, vec![&b2, &c]);
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

    proptest! {
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
                prop_assert_ne!(sent.get(&a.key()), Some(*a));
                applied.insert(a.key(), (*a).clone());
            }
            let want: BTreeMap<RouteKey, Type5Route> =
                desired.iter().map(|r| (r.key(), r.clone())).collect();
            prop_assert_eq!(applied, want);
            let keys: BTreeSet<_> = d.withdraw.iter().chain(&d.announce).map(|r| r.key()).collect();
            prop_assert_eq!(keys.len(), d.withdraw.len() + d.announce.len());
        }
    }
}
