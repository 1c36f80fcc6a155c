//! Per-tunnel VTEP addresses (`fabric.tunnel_vteps`, ADR 0007): each tunnel gets its own
//! address from a pool the fabric routes to this gatewan, the next hop of its type-5
//! routes. A Linux or FRR leaf keeps one Router's MAC per next hop; with one VTEP per
//! gatewan, two chosen tunnels collapse into one and a change of chosen tunnel changes the
//! MAC of a next hop, which FRR 8.4 mishandles (it lost the neighbour entry in the lab).
//! With an address per tunnel, a next hop's MAC never changes.
//!
//! The assignment is sticky and kept in `state_dir`: a tunnel keeps its address for its
//! life and across restarts; a new tunnel takes the lowest address never given before,
//! and only when the pool has none left one freed by a gone tunnel (a fabric may still
//! hold a gone tunnel's routes for a while, with its MAC). Pure but for [`load`]/[`save`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

/// The assignment: tunnel id → address, and every address ever given (for stickiness).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    pub by_tunnel: BTreeMap<String, Ipv4Addr>,
    /// Addresses given before and now free, oldest first: reused last.
    pub freed: Vec<Ipv4Addr>,
}

/// The assignment for `tunnels` (ids), from `previous`. Tunnels beyond the pool get none
/// (their routes then use the gatewan's VTEP), and the caller reports it.
pub fn assign(previous: &Assignment, tunnels: &[&str], pool: Ipv4Net) -> Assignment {
    let in_pool = |a: &Ipv4Addr| pool.contains(a) && *a != pool.network() && *a != pool.broadcast();
    let mut out = Assignment::default();
    for id in tunnels {
        if let Some(a) = previous.by_tunnel.get(*id).filter(|a| in_pool(a)) {
            out.by_tunnel.insert((*id).to_string(), *a);
        }
    }
    let mut freed: Vec<Ipv4Addr> = previous
        .freed
        .iter()
        .copied()
        .chain(
            previous
                .by_tunnel
                .iter()
                .filter(|(id, _)| !out.by_tunnel.contains_key(*id))
                .map(|(_, a)| *a),
        )
        .filter(|a| in_pool(a) && !out.by_tunnel.values().any(|b| b == a))
        .collect();
    freed.dedup();
    let mut fresh = pool.hosts().filter(|a| in_pool(a));
    for id in tunnels {
        if out.by_tunnel.contains_key(*id) {
            continue;
        }
        let next = loop {
            match fresh.next() {
                Some(a) if out.by_tunnel.values().any(|b| *b == a) || freed.contains(&a) => {
                    continue;
                }
                other => break other,
            }
        };
        let addr = next.or_else(|| (!freed.is_empty()).then(|| freed.remove(0)));
        match addr {
            Some(a) => {
                out.by_tunnel.insert((*id).to_string(), a);
            }
            None => break,
        }
    }
    out.freed = freed;
    out
}

/// Reads an assignment saved by [`save`]; a missing or unreadable file is an empty one
/// (addresses are then given anew, which the fabric follows).
pub fn load(path: &Path) -> Assignment {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Assignment::default();
    };
    let mut a = Assignment::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some("free"), Some(addr)) => a.freed.extend(addr.parse::<Ipv4Addr>().ok()),
            (Some(id), Some(addr)) => {
                if let Ok(addr) = addr.parse() {
                    a.by_tunnel.insert(id.to_string(), addr);
                }
            }
            _ => {}
        }
    }
    a
}

/// Writes the assignment atomically (temporary file, then rename).
pub fn save(path: &Path, a: &Assignment) -> std::io::Result<()> {
    let mut text = String::new();
    for (id, addr) in &a.by_tunnel {
        text.push_str(&format!("{id} {addr}\n"));
    }
    for addr in &a.freed {
        text.push_str(&format!("free {addr}\n"));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Ipv4Net {
        "10.1.254.0/29".parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn new_tunnels_take_the_lowest_addresses_in_id_order() {
        let a = assign(&Assignment::default(), &["t1", "t2"], pool());
        assert_eq!(a.by_tunnel["t1"], ip("10.1.254.1"));
        assert_eq!(a.by_tunnel["t2"], ip("10.1.254.2"));
    }

    #[test]
    fn a_tunnel_keeps_its_address_when_others_come_and_go() {
        let a = assign(&Assignment::default(), &["t2", "t3"], pool());
        let b = assign(&a, &["t1", "t3"], pool());
        assert_eq!(b.by_tunnel["t3"], a.by_tunnel["t3"]);
        // t1 is new: a never-given address, not t2's freed one.
        assert_eq!(b.by_tunnel["t1"], ip("10.1.254.3"));
        assert_eq!(b.freed, vec![a.by_tunnel["t2"]]);
    }

    #[test]
    fn freed_addresses_are_reused_only_when_the_pool_is_spent() {
        // A /29 has 6 host addresses.
        let ids: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let a = assign(&Assignment::default(), &refs, pool());
        assert_eq!(a.by_tunnel.len(), 6);
        let b = assign(&a, &refs[1..], pool());
        let c = assign(&b, &["t1", "t2", "t3", "t4", "t5", "t9"], pool());
        assert_eq!(c.by_tunnel["t9"], a.by_tunnel["t0"]);
        assert!(c.freed.is_empty());
        // Beyond the pool: no address.
        let d = assign(&c, &["t1", "t2", "t3", "t4", "t5", "t9", "t10"], pool());
        assert!(!d.by_tunnel.contains_key("t10"));
    }

    #[test]
    fn an_assignment_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel-vteps");
        let a = assign(&Assignment::default(), &["t1", "t2", "t3"], pool());
        let b = assign(&a, &["t1", "t3"], pool());
        save(&path, &b).unwrap();
        assert_eq!(load(&path), b);
        assert_eq!(assign(&load(&path), &["t1", "t3"], pool()), b);
    }
}
