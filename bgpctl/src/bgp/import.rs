//! Import policy (pure): which received type-5 routes become part of the Adj-RIB-In, and
//! how many a peer may send (`max_prefixes`, as FRR's `neighbor maximum-prefix`).
//!
//! A fabric is trusted only within these bounds: a default route or a leaked full table
//! in one datacenter's fabric would otherwise become routes toward that datacenter in
//! every other fabric (through the mesh's Network records).

use std::time::Duration;

use ipnet::IpNet;

use super::types::{RouteTarget, Type5Route};

/// One allow-list entry, with FRR prefix-list semantics: a route matches when its prefix
/// is inside `prefix` and its length is within `[ge, le]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixRule {
    pub prefix: IpNet,
    pub ge: u8,
    pub le: u8,
}

impl PrefixRule {
    /// `ge` and `le` default to the prefix's own length (an exact match).
    pub fn exact(prefix: IpNet) -> PrefixRule {
        PrefixRule {
            prefix,
            ge: prefix.prefix_len(),
            le: prefix.prefix_len(),
        }
    }

    pub fn matches(&self, p: &IpNet) -> bool {
        let len = p.prefix_len();
        let same_family = matches!(
            (self.prefix, p),
            (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
        );
        same_family
            && (self.ge..=self.le).contains(&len)
            && len >= self.prefix.prefix_len()
            && self.prefix.contains(&p.network())
    }
}

/// Shortest prefixes accepted when no allow-list is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinPrefixLength {
    pub ipv4: u8,
    pub ipv6: u8,
}

impl Default for MinPrefixLength {
    /// /8 and /16: the shortest a real allocation is (a former class A, an RIR's block);
    /// shorter ones are aggregates or leaks, never one datacenter's networks.
    fn default() -> Self {
        MinPrefixLength { ipv4: 8, ipv6: 16 }
    }
}

/// Which prefixes are imported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportPrefixes {
    /// The allow-list; empty: any prefix at least `min_length` long (never a default
    /// route). Not empty: exactly the prefixes an entry matches (a default route only if
    /// an entry allows it explicitly, e.g. `0.0.0.0/0`).
    pub allow: Vec<PrefixRule>,
    pub min_length: MinPrefixLength,
}

impl ImportPrefixes {
    pub fn accepts(&self, p: &IpNet) -> bool {
        if !self.allow.is_empty() {
            return self.allow.iter().any(|r| r.matches(p));
        }
        let min = match p {
            IpNet::V4(_) => self.min_length.ipv4,
            IpNet::V6(_) => self.min_length.ipv6,
        };
        p.prefix_len() > 0 && p.prefix_len() >= min
    }
}

/// What the speaker imports: route targets and prefixes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportPolicy {
    /// A route is kept only if it carries one of these; empty accepts any.
    pub route_targets: Vec<RouteTarget>,
    pub prefixes: ImportPrefixes,
}

impl ImportPolicy {
    pub fn accepts(&self, route: &Type5Route) -> bool {
        let rt_ok = self.route_targets.is_empty()
            || route
                .route_targets
                .iter()
                .any(|rt| self.route_targets.contains(rt));
        rt_ok && self.prefixes.accepts(&route.prefix)
    }
}

/// What a session does when its peer sends more than `limit` routes (after the import
/// policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxPrefixAction {
    /// Log (once at the threshold, once past the limit) and keep every route.
    Warn,
    /// Keep the first `limit` routes; ignore (and count) new ones beyond it.
    StopLearning,
    /// Close the session with Cease / Maximum Number of Prefixes Reached (RFC 4486
    /// subcode 1), drop its routes, and stay Idle until `restart_after` (forever without:
    /// until bgpctl restarts).
    Teardown { restart_after: Option<Duration> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPrefixes {
    pub limit: u32,
    pub action: MaxPrefixAction,
    /// Warn once when the count reaches this share of the limit (FRR: 75 %).
    pub warning_threshold_percent: u8,
}

impl MaxPrefixes {
    /// The count at which the warning is due: at least 1.
    pub fn warning_at(&self) -> u64 {
        (u64::from(self.limit) * u64::from(self.warning_threshold_percent) / 100).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn rule(p: &str, ge: u8, le: u8) -> PrefixRule {
        PrefixRule {
            prefix: net(p),
            ge,
            le,
        }
    }

    #[test]
    fn an_entry_matches_prefixes_inside_it_with_a_length_in_ge_to_le() {
        let r = rule("10.0.0.0/8", 16, 24);
        for (p, want) in [
            ("10.1.0.0/16", true),
            ("10.1.2.0/24", true),
            ("10.1.2.128/25", false),
            ("10.0.0.0/8", false),
            ("11.1.0.0/16", false),
            ("2001:db8::/32", false),
        ] {
            assert_eq!(r.matches(&net(p)), want, "{p}");
        }
        let exact = PrefixRule::exact(net("192.0.2.0/24"));
        assert!(exact.matches(&net("192.0.2.0/24")));
        assert!(!exact.matches(&net("192.0.2.0/25")));
    }

    #[test]
    fn without_a_list_default_routes_and_short_prefixes_are_refused() {
        let p = ImportPrefixes::default();
        for (x, want) in [
            ("0.0.0.0/0", false),
            ("::/0", false),
            ("8.0.0.0/7", false),
            ("10.0.0.0/8", true),
            ("10.1.2.3/32", true),
            ("2001::/15", false),
            ("2001:db8::/16", true),
        ] {
            assert_eq!(p.accepts(&net(x)), want, "{x}");
        }
        // A minimum of 0 still never takes a default route.
        let zero = ImportPrefixes {
            min_length: MinPrefixLength { ipv4: 0, ipv6: 0 },
            ..Default::default()
        };
        assert!(!zero.accepts(&net("0.0.0.0/0")));
        assert!(zero.accepts(&net("0.0.0.0/1")));
    }

    #[test]
    fn a_default_route_passes_only_when_an_entry_allows_it() {
        let p = ImportPrefixes {
            allow: vec![rule("10.0.0.0/8", 8, 24)],
            ..Default::default()
        };
        assert!(!p.accepts(&net("0.0.0.0/0")));
        assert!(p.accepts(&net("10.2.0.0/16")));
        assert!(!p.accepts(&net("192.168.0.0/16")), "outside the list");
        let with_default = ImportPrefixes {
            allow: vec![PrefixRule::exact(net("0.0.0.0/0"))],
            ..Default::default()
        };
        assert!(with_default.accepts(&net("0.0.0.0/0")));
        assert!(!with_default.accepts(&net("10.0.0.0/8")));
    }

    #[test]
    fn the_warning_threshold_is_a_share_of_the_limit() {
        let m = MaxPrefixes {
            limit: 1000,
            action: MaxPrefixAction::Warn,
            warning_threshold_percent: 75,
        };
        assert_eq!(m.warning_at(), 750);
        let tiny = MaxPrefixes { limit: 1, ..m };
        assert_eq!(tiny.warning_at(), 1);
    }
}
