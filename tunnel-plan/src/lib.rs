//! The tunnel planner, pure: from the mesh's gatewans, the tunnels this gatewan must have,
//! with every parameter derived so that both ends compute the same without talking and no
//! two tunnels collide.
//!
//! Hashing into small spaces (a /31 pool, a port range) collides by the birthday bound long
//! before 200 gatewans, so everything derives from each gatewan's **tunnel slot**, a small
//! number unique in the mesh (announced in its NodeRecord, see `slots`):
//! - the *tunnel index* `t = pair(s_lo, s_hi) × T² + i_lo × T + i_hi` is unique in the mesh
//!   (`pair` numbers unordered slot pairs densely, `i` is a transit's position on its
//!   gatewan, `T` the most transits a gatewan may have). Addresses, interface name, tunnel
//!   MAC and RD index come from it.
//! - ports only need to be unique per host, so they use an edge colouring of the complete
//!   graph, `c = (s_a + s_b) mod M` with `M` odd: the tunnels of one gatewan all get
//!   different colours, and the colours fit a port range of `2 × M × T²` ports.
//!
//! Slots are claimed through the mesh (`slots`); a transit's position `i` is kept by its
//! gatewan in state_dir, so neither depends on the order of a config file.

pub mod slots;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};

use gatewan_mesh::{GatewanRecord, NodeId};

/// Most transits a gatewan may have: fixes the stride of the tunnel index.
pub const MAX_TRANSITS: usize = 4;
const COMBOS: u64 = (MAX_TRANSITS * MAX_TRANSITS) as u64;
/// Linux interface names are at most 15 bytes.
pub const IFNAMSIZ_MAX: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pairing {
    /// Every local transit to every remote transit.
    #[default]
    All,
    /// Only between transits of the same name (same provider at both ends).
    SameTransit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSettings {
    pub pairing: Pairing,
    pub pool_v4: Ipv4Net,
    pub pool_v6: Ipv6Net,
    /// First and last port of the range shared by WireGuard listen ports and echo ports.
    pub ports: (u16, u16),
    pub interface_prefix: String,
}

impl Default for PlanSettings {
    fn default() -> Self {
        PlanSettings {
            pairing: Pairing::All,
            pool_v4: "100.64.0.0/10".parse().expect("valid"),
            pool_v6: "fd5d:3a00::/64".parse().expect("valid"),
            ports: (20000, 59999),
            interface_prefix: "sdwan".into(),
        }
    }
}

impl PlanSettings {
    /// The number of port colours: the largest odd `M` with `2 × M × T²` ports in range.
    pub fn colours(&self) -> u64 {
        let len = u64::from(self.ports.1.saturating_sub(self.ports.0)) + 1;
        let m = len / (2 * COMBOS);
        if m.is_multiple_of(2) {
            m.saturating_sub(1)
        } else {
            m
        }
    }

    /// Slots below this get tunnels with every other slot below it.
    pub fn max_slots(&self) -> u64 {
        let v4_pairs = (1u64 << (32 - self.pool_v4.prefix_len())) / (2 * COMBOS);
        // Largest n with n(n-1)/2 <= pairs.
        let by_pool = ((1.0 + (1.0 + 8.0 * v4_pairs as f64).sqrt()) / 2.0).floor() as u64;
        by_pool.min(self.colours())
    }

    /// Checks the settings themselves; errors name the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.ports.0 > self.ports.1 {
            return Err(format!(
                "tunnels.ports: {}-{} is empty",
                self.ports.0, self.ports.1
            ));
        }
        if self.colours() < 3 {
            return Err(format!(
                "tunnels.ports: {}-{} is too small: at least {} ports are needed",
                self.ports.0,
                self.ports.1,
                2 * 3 * COMBOS
            ));
        }
        if self.pool_v4.prefix_len() > 26 {
            return Err(format!(
                "tunnels.pool_v4: {} is too small: use a /26 or larger",
                self.pool_v4
            ));
        }
        if self.pool_v6.prefix_len() > 96 {
            return Err(format!(
                "tunnels.pool_v6: {} is too small: use a /96 or larger",
                self.pool_v6
            ));
        }
        if self.interface_prefix.is_empty()
            || self.interface_prefix.len() > 7
            || !self
                .interface_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err("tunnels.interface_prefix: 1 to 7 letters, digits, '-' or '_'".into());
        }
        Ok(())
    }
}

/// A transit of a gatewan as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitView {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    /// Its position on its gatewan (below [`MAX_TRANSITS`], unique on the gatewan).
    pub position: u32,
}

/// A gatewan as the planner sees it (from its NodeRecord).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewanView {
    pub id: NodeId,
    pub name: String,
    pub datacenter: String,
    pub slot: u32,
    /// How the slot was claimed: decides who keeps a slot two gatewans announce.
    pub slot_claimed_ms: u64,
    pub slot_pinned: bool,
    pub transits: Vec<TransitView>,
    pub public_key: Vec<u8>,
}

impl GatewanView {
    /// The planner's view of a gatewan; None until it has announced its tunnel slot.
    pub fn from_gatewan(g: &GatewanRecord) -> Option<GatewanView> {
        Some(GatewanView {
            id: g.id,
            name: g.name.clone(),
            datacenter: g.datacenter.clone(),
            slot: g.tunnel_slot?,
            slot_claimed_ms: g.tunnel_slot_claimed_ms,
            slot_pinned: g.tunnel_slot_pinned,
            transits: g
                .transits
                .iter()
                .enumerate()
                .map(|(i, t)| TransitView {
                    name: t.name.clone(),
                    addresses: t.addresses.clone(),
                    // An earlier version's transits sit at their place in the list.
                    position: t.position.unwrap_or(i as u32),
                })
                .collect(),
            public_key: g.wireguard_key.map(|k| k.to_vec()).unwrap_or_default(),
        })
    }

    /// The slot claim its record announces.
    pub fn claim(&self) -> slots::SlotClaim {
        slots::SlotClaim {
            slot: self.slot,
            claimed_ms: self.slot_claimed_ms,
            pinned: self.slot_pinned,
        }
    }

    /// Whether its transits' positions are all below [`MAX_TRANSITS`] and distinct.
    fn positions_valid(&self) -> bool {
        let mut seen = [false; MAX_TRANSITS];
        self.transits.iter().all(|t| {
            let Some(s) = seen.get_mut(t.position as usize) else {
                return false;
            };
            !std::mem::replace(s, true)
        })
    }
}

/// One end of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelEnd {
    pub node: NodeId,
    pub name: String,
    pub datacenter: String,
    pub transit: String,
    /// The public address on the transit, with the tunnel's listen port.
    pub endpoint: SocketAddr,
    pub address_v4: Ipv4Addr,
    pub address_v6: Ipv6Addr,
    pub public_key: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTunnel {
    /// Stable id, the same at both ends (UUID form).
    pub id: String,
    pub index: u64,
    pub interface: String,
    pub listen_port: u16,
    pub echo_port: u16,
    /// Locally administered unicast MAC, unique in the mesh.
    pub mac: [u8; 6],
    pub rd_index: u32,
    pub local: TunnelEnd,
    pub peer: TunnelEnd,
}

/// The route distinguisher of a tunnel's type-5 routes, type 0 (2-octet administrator,
/// 4-octet assigned number): the assigned number is the RD index, unique in the mesh; the
/// administrator field, from a hash of the tunnel id, only makes RDs look unlike each
/// other to a person reading them. Both gatewans and bgpctls compute it from the id and
/// the index alone.
pub fn route_distinguisher(tunnel_id: &str, rd_index: u32) -> (u16, u32) {
    let h = blake3::hash(tunnel_id.as_bytes());
    (
        u16::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1]]),
        rd_index,
    )
}

/// Why a tunnel the pairing asks for is not planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanProblem {
    /// `holder` keeps `slot`, which `gatewan` announces too: `gatewan` gets no tunnel until
    /// it claims another (or, pinned, until a pin changes).
    SlotConflict {
        gatewan: String,
        holder: String,
        slot: u32,
    },
    SlotTooLarge {
        gatewan: String,
        slot: u32,
        max: u64,
    },
    TooManyTransits {
        gatewan: String,
    },
    NoCommonFamily {
        peer: String,
        local_transit: String,
        peer_transit: String,
    },
    PoolExhausted {
        peer: String,
    },
}

impl std::fmt::Display for PlanProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanProblem::SlotConflict {
                gatewan,
                holder,
                slot,
            } => {
                write!(
                    f,
                    "{gatewan} announces tunnel slot {slot}, which {holder} keeps: no tunnel with {gatewan} until it claims another"
                )
            }
            PlanProblem::SlotTooLarge { gatewan, slot, max } => write!(
                f,
                "{gatewan} has tunnel slot {slot}, but tunnels.pool_v4 and tunnels.ports allow slots below {max}"
            ),
            PlanProblem::TooManyTransits { gatewan } => write!(
                f,
                "{gatewan} has more than {MAX_TRANSITS} transits, or two at one position"
            ),
            PlanProblem::NoCommonFamily {
                peer,
                local_transit,
                peer_transit,
            } => write!(
                f,
                "no address family in common between our {local_transit} and {peer}'s {peer_transit}"
            ),
            PlanProblem::PoolExhausted { peer } => {
                write!(f, "address pools exhausted for tunnels to {peer}")
            }
        }
    }
}

/// Dense number of the unordered pair {lo, hi}, lo < hi.
fn pair_index(lo: u64, hi: u64) -> u64 {
    hi * (hi - 1) / 2 + lo
}

fn tunnel_uuid(a: NodeId, ta: &str, b: NodeId, tb: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"gatewan tunnel v1");
    for (n, t) in [(a, ta), (b, tb)] {
        h.update(&n.0);
        h.update(&(t.len() as u32).to_be_bytes());
        h.update(t.as_bytes());
    }
    let mut b16 = [0u8; 16];
    b16.copy_from_slice(&h.finalize().as_bytes()[..16]);
    // Shaped as a version 8 (custom) UUID.
    uuid::Builder::from_custom_bytes(b16)
        .into_uuid()
        .to_string()
}

/// Picks the endpoint address of `transit` for a tunnel with `other`: IPv6 when both
/// sides have it (no NAT on the path), else IPv4.
fn common_family(a: &TransitView, b: &TransitView) -> Option<(IpAddr, IpAddr)> {
    let v6 = |t: &TransitView| t.addresses.iter().copied().find(IpAddr::is_ipv6);
    let v4 = |t: &TransitView| t.addresses.iter().copied().find(IpAddr::is_ipv4);
    v6(a).zip(v6(b)).or_else(|| v4(a).zip(v4(b)))
}

/// The tunnels `local` must have with the gatewans of other datacenters.
pub fn plan(
    local: &GatewanView,
    gatewans: &[GatewanView],
    s: &PlanSettings,
) -> (Vec<PlannedTunnel>, Vec<PlanProblem>) {
    let mut tunnels = Vec::new();
    let mut problems = Vec::new();
    let max_slots = s.max_slots();
    if u64::from(local.slot) >= max_slots {
        problems.push(PlanProblem::SlotTooLarge {
            gatewan: local.name.clone(),
            slot: local.slot,
            max: max_slots,
        });
        return (tunnels, problems);
    }
    if local.transits.len() > MAX_TRANSITS || !local.positions_valid() {
        problems.push(PlanProblem::TooManyTransits {
            gatewan: local.name.clone(),
        });
        return (tunnels, problems);
    }
    let holders = slots::holders(std::iter::once(local).chain(gatewans));
    let holder_name = |slot: u32| {
        let id = holders.get(&slot);
        gatewans
            .iter()
            .find(|g| Some(&g.id) == id)
            .map_or_else(String::new, |g| g.name.clone())
    };
    if holders.get(&local.slot).is_some_and(|h| *h != local.id) {
        problems.push(PlanProblem::SlotConflict {
            gatewan: local.name.clone(),
            holder: holder_name(local.slot),
            slot: local.slot,
        });
        return (tunnels, problems);
    }
    let colours = s.colours();
    let range_len = u64::from(s.ports.1) - u64::from(s.ports.0) + 1;
    let half = range_len / 2;
    for peer in gatewans {
        if peer.id == local.id || peer.datacenter == local.datacenter {
            continue;
        }
        if peer.slot == local.slot || holders.get(&peer.slot).is_some_and(|h| *h != peer.id) {
            problems.push(PlanProblem::SlotConflict {
                gatewan: peer.name.clone(),
                holder: holder_name(peer.slot),
                slot: peer.slot,
            });
            continue;
        }
        if u64::from(peer.slot) >= max_slots {
            problems.push(PlanProblem::SlotTooLarge {
                gatewan: peer.name.clone(),
                slot: peer.slot,
                max: max_slots,
            });
            continue;
        }
        if peer.transits.len() > MAX_TRANSITS || !peer.positions_valid() {
            problems.push(PlanProblem::TooManyTransits {
                gatewan: peer.name.clone(),
            });
            continue;
        }
        let local_is_lo = local.slot < peer.slot;
        let (lo, hi) = if local_is_lo {
            (local, peer)
        } else {
            (peer, local)
        };
        let pair = pair_index(u64::from(lo.slot), u64::from(hi.slot));
        let colour = (u64::from(lo.slot) + u64::from(hi.slot)) % colours;
        for lt in &lo.transits {
            for ht in &hi.transits {
                if s.pairing == Pairing::SameTransit && lt.name != ht.name {
                    continue;
                }
                let (local_t, peer_t) = if local_is_lo { (lt, ht) } else { (ht, lt) };
                let Some((local_ip, peer_ip)) = common_family(local_t, peer_t) else {
                    problems.push(PlanProblem::NoCommonFamily {
                        peer: peer.name.clone(),
                        local_transit: local_t.name.clone(),
                        peer_transit: peer_t.name.clone(),
                    });
                    continue;
                };
                let combo = u64::from(lt.position) * MAX_TRANSITS as u64 + u64::from(ht.position);
                let index = pair * COMBOS + combo;
                let v4 = u64::from(u32::from(s.pool_v4.network())) + 2 * index;
                let v4_last = u64::from(u32::from(s.pool_v4.broadcast()));
                let v6_base = u128::from(s.pool_v6.network());
                let v6_room = if s.pool_v6.prefix_len() == 0 {
                    u128::MAX
                } else {
                    (1u128 << (128 - s.pool_v6.prefix_len())) - 1
                };
                if v4 + 1 > v4_last || u128::from(2 * index + 1) > v6_room {
                    problems.push(PlanProblem::PoolExhausted {
                        peer: peer.name.clone(),
                    });
                    continue;
                }
                let lo_v4 = Ipv4Addr::from(v4 as u32);
                let hi_v4 = Ipv4Addr::from(v4 as u32 + 1);
                let lo_v6 = Ipv6Addr::from(v6_base + u128::from(2 * index));
                let hi_v6 = Ipv6Addr::from(v6_base + u128::from(2 * index) + 1);
                let port_offset = colour * COMBOS + combo;
                let listen_port = (u64::from(s.ports.0) + port_offset) as u16;
                let echo_port = (u64::from(s.ports.0) + half + port_offset) as u16;
                let end =
                    |g: &GatewanView, t: &TransitView, ip: IpAddr, v4: Ipv4Addr, v6: Ipv6Addr| {
                        TunnelEnd {
                            node: g.id,
                            name: g.name.clone(),
                            datacenter: g.datacenter.clone(),
                            transit: t.name.clone(),
                            endpoint: SocketAddr::new(ip, listen_port),
                            address_v4: v4,
                            address_v6: v6,
                            public_key: g.public_key.clone(),
                        }
                    };
                let (local_v4, peer_v4, local_v6, peer_v6) = if local_is_lo {
                    (lo_v4, hi_v4, lo_v6, hi_v6)
                } else {
                    (hi_v4, lo_v4, hi_v6, lo_v6)
                };
                let i = index.to_be_bytes();
                tunnels.push(PlannedTunnel {
                    id: tunnel_uuid(lo.id, &lt.name, hi.id, &ht.name),
                    index,
                    interface: format!("{}{index}", s.interface_prefix),
                    listen_port,
                    echo_port,
                    mac: [0x02, 0x5d, i[4], i[5], i[6], i[7]],
                    rd_index: index as u32,
                    local: end(local, local_t, local_ip, local_v4, local_v6),
                    peer: end(peer, peer_t, peer_ip, peer_v4, peer_v6),
                });
            }
        }
    }
    tunnels.sort_by_key(|t| t.index);
    (tunnels, problems)
}

/// Collisions among planned tunnels, for tests and for the daemon's self-check.
pub fn collisions(per_gatewan: &[Vec<PlannedTunnel>]) -> Vec<String> {
    let mut out = Vec::new();
    let mut mesh_ids = std::collections::HashMap::new();
    for tunnels in per_gatewan {
        let mut host: HashSet<String> = HashSet::new();
        for t in tunnels {
            for key in [
                format!("interface {}", t.interface),
                format!("listen port {}", t.listen_port),
                format!("echo port {}", t.echo_port),
                format!("address {}", t.local.address_v4),
                format!("address {}", t.local.address_v6),
            ] {
                if !host.insert(key.clone()) {
                    out.push(format!("{}: {key} used twice", t.local.name));
                }
            }
            // Mesh-wide: the same value must only appear for the same tunnel id.
            for key in [
                format!("mac {:02x?}", t.mac),
                format!("rd {}", t.rd_index),
                format!("v4 {}", t.local.address_v4),
                format!("v6 {}", t.local.address_v6),
            ] {
                if let Some(other) = mesh_ids.insert(key.clone(), (t.id.clone(), t.local.node)) {
                    let same_tunnel = other.0 == t.id;
                    let same_end = other.1 == t.local.node;
                    // A MAC/RD is shared by the two ends of one tunnel; an address never.
                    if !same_tunnel
                        || (key.starts_with('v') && !same_end)
                        || (!key.starts_with('v') && same_end)
                    {
                        out.push(format!("{key} shared by tunnels {} and {}", other.0, t.id));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gatewan(i: u32, dc: u32, transits: &[(&str, &[&str])]) -> GatewanView {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        id[15] = 0xaa;
        GatewanView {
            id: NodeId(id),
            name: format!("gatewan{i:02}-dc{dc}"),
            datacenter: format!("dc{dc}"),
            slot: i,
            slot_claimed_ms: 0,
            slot_pinned: false,
            transits: transits
                .iter()
                .enumerate()
                .map(|(k, (n, a))| TransitView {
                    name: n.to_string(),
                    addresses: a.iter().map(|s| s.parse().unwrap()).collect(),
                    position: k as u32,
                })
                .collect(),
            public_key: vec![i as u8; 32],
        }
    }

    fn mesh(n: u32, per_dc: u32) -> Vec<GatewanView> {
        (0..n)
            .map(|i| {
                let a = format!("198.51.{}.{}", i / 250, i % 250 + 1);
                let b = format!("2001:db8:{i:x}::1");
                let c = format!("203.0.{}.{}", i / 250, i % 250 + 1);
                gatewan(
                    i,
                    i / per_dc,
                    &[("lumen", &[&a, &b]), ("cogent", &[&c]), ("telstra", &[&b])],
                )
            })
            .collect()
    }

    #[test]
    fn both_ends_agree() {
        let g = mesh(4, 2);
        let s = PlanSettings::default();
        let (a, p) = plan(&g[0], &g, &s);
        // 3 × 3 transit pairs, less IPv4-only cogent with IPv6-only telstra both ways.
        assert_eq!(a.len(), 2 * 7, "two remote gatewans");
        assert!(
            p.iter()
                .all(|p| matches!(p, PlanProblem::NoCommonFamily { .. })),
            "{p:?}"
        );
        let (b, _) = plan(&g[3], &g, &s);
        for t in a.iter().filter(|t| t.peer.node == g[3].id) {
            let u = b
                .iter()
                .find(|u| u.id == t.id)
                .expect("same tunnel at the other end");
            assert_eq!(
                (
                    u.index,
                    &u.interface,
                    u.listen_port,
                    u.echo_port,
                    u.mac,
                    u.rd_index
                ),
                (
                    t.index,
                    &t.interface,
                    t.listen_port,
                    t.echo_port,
                    t.mac,
                    t.rd_index
                )
            );
            assert_eq!(u.local, t.peer);
            assert_eq!(u.peer, t.local);
        }
        // /31 and /127 pairs: the two ends differ in the last bit only.
        let t = &a[0];
        assert_eq!(
            u32::from(t.local.address_v4) ^ u32::from(t.peer.address_v4),
            1
        );
        assert_eq!(
            u128::from(t.local.address_v6) ^ u128::from(t.peer.address_v6),
            1
        );
        assert_eq!(t.mac[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn endpoint_family_and_pairing() {
        let g = mesh(2, 1);
        let (t, _) = plan(&g[0], &g, &PlanSettings::default());
        let lumen = t
            .iter()
            .find(|t| t.local.transit == "lumen" && t.peer.transit == "lumen")
            .unwrap();
        assert!(
            lumen.peer.endpoint.is_ipv6(),
            "IPv6 preferred when both ends have it"
        );
        let cogent = t
            .iter()
            .find(|t| t.local.transit == "cogent" && t.peer.transit == "cogent")
            .unwrap();
        assert!(cogent.peer.endpoint.is_ipv4());
        assert_eq!(cogent.peer.endpoint.port(), cogent.listen_port);
        // cogent (IPv4 only) to telstra (IPv6 only): no tunnel, and the reason is reported.
        let (_, problems) = plan(&g[0], &g, &PlanSettings::default());
        assert!(
            problems
                .iter()
                .any(|p| matches!(p, PlanProblem::NoCommonFamily { .. }))
        );
        let same = PlanSettings {
            pairing: Pairing::SameTransit,
            ..PlanSettings::default()
        };
        let (t, _) = plan(&g[0], &g, &same);
        assert_eq!(t.len(), 3);
        assert!(t.iter().all(|t| t.local.transit == t.peer.transit));
    }

    #[test]
    fn no_collisions_with_200_gatewans_of_3_transits() {
        let g = mesh(200, 2);
        let s = PlanSettings::default();
        let plans: Vec<Vec<PlannedTunnel>> = g.iter().map(|l| plan(l, &g, &s).0).collect();
        let total: usize = plans.iter().map(Vec::len).sum();
        // 100 datacenters of 2: each gatewan has 198 remote gatewans, 3×3 pairs minus the
        // 2 pairs of IPv4-only cogent with IPv6-only telstra.
        assert_eq!(plans[0].len(), 198 * 7);
        assert_eq!(total, 200 * 198 * 7);
        let c = collisions(&plans);
        assert!(
            c.is_empty(),
            "{} collisions, first: {:?}",
            c.len(),
            &c[..c.len().min(3)]
        );
        assert!(
            plans
                .iter()
                .flatten()
                .all(|t| t.interface.len() <= IFNAMSIZ_MAX)
        );
        assert!(
            plans
                .iter()
                .flatten()
                .all(|t| s.pool_v4.contains(&t.local.address_v4)
                    && s.pool_v6.contains(&t.local.address_v6))
        );
        assert!(
            plans
                .iter()
                .flatten()
                .all(|t| (s.ports.0..=s.ports.1).contains(&t.listen_port)
                    && (s.ports.0..=s.ports.1).contains(&t.echo_port))
        );
    }

    /// What of a tunnel must not change while it lives: its name and numbers.
    fn numbers(t: &PlannedTunnel) -> (String, u64, String, u16, u16, Ipv4Addr, Ipv6Addr) {
        (
            t.id.clone(),
            t.index,
            t.interface.clone(),
            t.listen_port,
            t.echo_port,
            t.local.address_v4,
            t.local.address_v6,
        )
    }

    #[test]
    fn a_transit_added_at_a_new_position_leaves_every_other_tunnel_as_it_was() {
        let g = mesh(4, 2);
        let s = PlanSettings {
            pairing: Pairing::SameTransit,
            ..PlanSettings::default()
        };
        let (before, _) = plan(&g[0], &g, &s);
        // gatewan 0 gains "ntt", listed first in its config but given the free position 3.
        let mut grown = g.clone();
        grown[0].transits.insert(
            0,
            TransitView {
                name: "ntt".into(),
                addresses: vec!["192.0.2.1".parse().unwrap()],
                position: 3,
            },
        );
        for peer in [2, 3] {
            grown[peer].transits.push(TransitView {
                name: "ntt".into(),
                addresses: vec![format!("192.0.2.{}", peer + 1).parse().unwrap()],
                position: 3,
            });
        }
        let (after, _) = plan(&grown[0], &grown, &s);
        assert_eq!(
            after.len(),
            before.len() + 2,
            "one ntt tunnel per remote gatewan"
        );
        for t in &before {
            let u = after.iter().find(|u| u.id == t.id).expect("still planned");
            assert_eq!(numbers(u), numbers(t));
        }
        // Had the position followed the list, every tunnel of gatewan 0 would have moved.
        let mut by_order = grown.clone();
        for (k, t) in by_order[0].transits.iter_mut().enumerate() {
            t.position = k as u32;
        }
        let (moved, _) = plan(&by_order[0], &by_order, &s);
        assert!(before.iter().all(|t| {
            moved
                .iter()
                .find(|u| u.id == t.id)
                .is_none_or(|u| numbers(u) != numbers(t))
        }));
    }

    #[test]
    fn two_transits_at_one_position_get_no_tunnel_and_say_why() {
        let mut g = mesh(2, 1);
        g[1].transits[1].position = 0;
        let (t, p) = plan(&g[0], &g, &PlanSettings::default());
        assert!(t.is_empty());
        assert!(p.iter().any(
            |p| matches!(p, PlanProblem::TooManyTransits { gatewan } if *gatewan == g[1].name)
        ));
    }

    #[test]
    fn of_two_gatewans_announcing_one_slot_only_the_holder_gets_tunnels_everywhere() {
        let mut g = mesh(6, 2);
        // Gatewans 4 and 5 (one datacenter) both announce slot 4; 5 claimed it first.
        g[4].slot_claimed_ms = 2_000;
        g[5].slot = 4;
        g[5].slot_claimed_ms = 1_000;
        let s = PlanSettings::default();
        let (t0, p0) = plan(&g[0], &g, &s);
        assert!(t0.iter().any(|t| t.peer.node == g[5].id));
        assert!(
            t0.iter().all(|t| t.peer.node != g[4].id),
            "the later claim gets no tunnel"
        );
        assert!(p0.iter().any(|p| matches!(p, PlanProblem::SlotConflict { gatewan, slot: 4, .. } if *gatewan == g[4].name)));
        let (t4, p4) = plan(&g[4], &g, &s);
        assert!(t4.is_empty(), "the later claim builds none either");
        assert!(p4.iter().any(
            |p| matches!(p, PlanProblem::SlotConflict { holder, .. } if *holder == g[5].name)
        ));
        // A pinned slot keeps it against any claim.
        g[4].slot_pinned = true;
        let (t0, _) = plan(&g[0], &g, &s);
        assert!(t0.iter().any(|t| t.peer.node == g[4].id));
        assert!(t0.iter().all(|t| t.peer.node != g[5].id));
    }

    #[test]
    fn settings_bound_slots_and_report_problems() {
        let s = PlanSettings {
            pool_v4: "10.0.0.0/24".parse().unwrap(),
            ..PlanSettings::default()
        };
        // 256 addresses = 8 pairs of 16 combos: slots 0..4 (4×3/2 = 6 pairs).
        assert_eq!(s.max_slots(), 4);
        let g = mesh(6, 1);
        let (_, p) = plan(&g[0], &g, &s);
        assert!(
            p.iter()
                .any(|p| matches!(p, PlanProblem::SlotTooLarge { slot: 5, .. })),
            "{p:?}"
        );
        let mut g = mesh(3, 1);
        g[2].slot = 0;
        let (_, p) = plan(&g[0], &g, &PlanSettings::default());
        assert!(
            p.iter()
                .any(|p| matches!(p, PlanProblem::SlotConflict { slot: 0, .. }))
        );
        assert!(
            PlanSettings {
                ports: (100, 110),
                ..PlanSettings::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            PlanSettings {
                interface_prefix: "toolongprefix".into(),
                ..PlanSettings::default()
            }
            .validate()
            .is_err()
        );
        assert!(PlanSettings::default().validate().is_ok());
        // The defaults (a /10 pool, 40,000 ports) take 512 gatewans.
        assert_eq!(PlanSettings::default().max_slots(), 512);
    }
}
