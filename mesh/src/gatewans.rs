//! The gatewans of the mesh as their gossiped NodeRecords describe them, parsed and checked
//! once: the one view that the tunnel planner, the tunnel manager, bgpctl's controller and
//! its route export read. A record is gossip from another member, so nothing in it is
//! trusted: an address that does not parse is left out, a key that is not 32 bytes is no
//! key.

use std::net::IpAddr;

use gatewan_proto::v1::{self, Role, record::Body};
use ipnet::IpNet;

use crate::identity::NodeId;
use crate::store::StateStore;

/// One IP transit of a gatewan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewanTransit {
    pub name: String,
    /// The addresses that parse, in the announced order.
    pub addresses: Vec<IpAddr>,
    pub capacity_bps: u64,
    pub cost: u32,
    /// Its position on the gatewan, as announced; None from an earlier version (then its
    /// place in the list).
    pub position: Option<u32>,
    /// Drained for maintenance (`routingctl transits drain`).
    pub drained: bool,
}

/// A gatewan's NodeRecord, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewanRecord {
    pub id: NodeId,
    pub name: String,
    pub datacenter: String,
    /// In the gatewan's configured order: a transit's position is part of its tunnels'
    /// index.
    pub transits: Vec<GatewanTransit>,
    /// None unless the record carries exactly 32 bytes.
    pub wireguard_key: Option<[u8; 32]>,
    /// The fabric VTEP, as announced (empty when it has none) and parsed.
    pub vtep: String,
    pub vtep_address: Option<IpAddr>,
    /// None until the gatewan has announced its tunnel slot.
    pub tunnel_slot: Option<u32>,
    /// When the slot was claimed (Unix ms) and whether it is pinned by config: who keeps
    /// a slot two gatewans announce (ADR 0042).
    pub tunnel_slot_claimed_ms: u64,
    pub tunnel_slot_pinned: bool,
    /// `tunnels.interface_prefix` as announced; empty means the default.
    pub tunnel_interface_prefix: String,
    /// `fabric.tunnel_vteps`, when announced and parseable.
    pub tunnel_vteps: Option<IpNet>,
    /// Tunnel ids its operator disabled, as announced (at most `MAX_DISABLED_TUNNELS`).
    pub disabled_tunnels: Vec<String>,
}

/// Disabled tunnels read from one NodeRecord: a gatewan has at most a few hundred
/// tunnels; a longer list is cut, not trusted.
pub const MAX_DISABLED_TUNNELS: usize = 4096;

impl GatewanRecord {
    /// The checked view of a NodeRecord; None for a member that is not a gatewan.
    pub fn from_node(id: NodeId, n: &v1::NodeRecord) -> Option<GatewanRecord> {
        if n.role != Role::Gatewan as i32 {
            return None;
        }
        Some(GatewanRecord {
            id,
            name: n.name.clone(),
            datacenter: n.datacenter.clone(),
            transits: n
                .transits
                .iter()
                .map(|t| GatewanTransit {
                    name: t.name.clone(),
                    addresses: t.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                    capacity_bps: t.capacity_bps,
                    cost: t.cost,
                    position: t.position,
                    drained: t.drained,
                })
                .collect(),
            wireguard_key: n.wireguard_public_key.as_ref().try_into().ok(),
            vtep: n.vtep.clone(),
            vtep_address: n.vtep.parse().ok(),
            tunnel_slot: n.tunnel_slot,
            tunnel_slot_claimed_ms: n.tunnel_slot_claimed_ms,
            tunnel_slot_pinned: n.tunnel_slot_pinned,
            tunnel_interface_prefix: n.tunnel_interface_prefix.clone(),
            tunnel_vteps: n.tunnel_vteps.parse().ok(),
            disabled_tunnels: n
                .disabled_tunnels
                .iter()
                .take(MAX_DISABLED_TUNNELS)
                .cloned()
                .collect(),
        })
    }
}

impl StateStore {
    /// Every gatewan that has a live NodeRecord, in the order of the store (by origin).
    pub fn gatewans(&self) -> impl Iterator<Item = GatewanRecord> + '_ {
        self.iter().filter_map(|r| match r.record.body.as_ref()? {
            Body::Node(n) => GatewanRecord::from_node(r.key.origin, n),
            _ => None,
        })
    }

    /// The gatewan `id`, if it has a live NodeRecord and is a gatewan.
    pub fn gatewan(&self, id: NodeId) -> Option<GatewanRecord> {
        GatewanRecord::from_node(id, self.node(id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::encode_record;

    fn node(role: Role, key: &[u8], vtep: &str) -> v1::NodeRecord {
        v1::NodeRecord {
            name: "gw".into(),
            datacenter: "sg1".into(),
            role: role as i32,
            transits: vec![v1::Transit {
                name: "lumen".into(),
                addresses: vec![
                    "198.51.100.1".into(),
                    "not an address".into(),
                    "2001:db8::1".into(),
                ],
                capacity_bps: 10,
                cost: 2,
                ..Default::default()
            }],
            wireguard_public_key: key.to_vec().into(),
            vtep: vtep.into(),
            tunnel_slot: Some(3),
            tunnel_vteps: "10.0.128.0/24".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_bgpctl_is_not_a_gatewan() {
        assert_eq!(
            GatewanRecord::from_node(NodeId([1; 16]), &node(Role::Bgpctl, &[7; 32], "")),
            None
        );
    }

    #[test]
    fn what_does_not_parse_is_left_out_and_a_short_key_is_no_key() {
        let g =
            GatewanRecord::from_node(NodeId([1; 16]), &node(Role::Gatewan, &[7; 31], "10.0.0.9x"))
                .unwrap();
        assert_eq!(g.wireguard_key, None);
        assert_eq!(g.vtep_address, None);
        assert_eq!(
            g.transits[0].addresses,
            [
                "198.51.100.1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ]
        );
        let g =
            GatewanRecord::from_node(NodeId([1; 16]), &node(Role::Gatewan, &[7; 32], "10.0.0.9"))
                .unwrap();
        assert_eq!(g.wireguard_key, Some([7; 32]));
        assert_eq!(g.vtep_address, Some("10.0.0.9".parse().unwrap()));
        assert_eq!(g.tunnel_vteps, Some("10.0.128.0/24".parse().unwrap()));
        assert_eq!(g.tunnel_slot, Some(3));
    }

    #[test]
    fn the_store_lists_gatewans_and_only_gatewans() {
        let mut store = StateStore::default();
        for (i, role) in [(1u8, Role::Gatewan), (2, Role::Bgpctl), (3, Role::Gatewan)] {
            let mut n = node(role, &[i; 32], "10.0.0.1");
            n.id = vec![i; 16].into();
            let record = v1::Record {
                origin: vec![i; 16].into(),
                version: 1,
                body: Some(Body::Node(n)),
                ..Default::default()
            };
            store.merge(encode_record(&record).unwrap());
        }
        let ids: Vec<NodeId> = store.gatewans().map(|g| g.id).collect();
        assert_eq!(ids, [NodeId([1; 16]), NodeId([3; 16])]);
        assert!(store.gatewan(NodeId([2; 16])).is_none());
        assert_eq!(
            store.gatewan(NodeId([3; 16])).unwrap().wireguard_key,
            Some([3; 32])
        );
    }
}
