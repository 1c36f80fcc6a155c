//! `routingctl trace DESTINATION` (issue 17): the path a packet to DESTINATION takes now,
//! hop by hop, from what this bgpctl holds. Pure: the routes it advertises (what the
//! fabric holds), its last decision and explanation, and the mesh's networks in; the
//! path out.
//!
//! 1. the fabric's routes for the longest advertised prefix holding the destination, one
//!    per chosen tunnel (ECMP across them): RD, next hop (the tunnel's VTEP), Router's MAC;
//! 2. the local gatewan and tunnel each route points at, with the controller's verdict and
//!    the tunnel's last measurements;
//! 3. the remote gatewan, the tunnel's other end;
//! 4. the remote fabric's VTEPs for the prefix, where that gatewan sends it.

use std::net::IpAddr;

use gatewan_proto::v1;

use crate::bgp::types::{Type5Route, format_mac};
use crate::controller::TunnelId;

/// A network of the mesh: its datacenter, the bgpctl that learned it, the record.
pub struct MeshNetwork<'a> {
    pub datacenter: &'a str,
    pub learned_by: &'a str,
    pub network: &'a v1::Network,
}

/// The path toward `destination`, or why there is none.
pub fn trace<'a>(
    destination: IpAddr,
    advertised: &[Type5Route],
    decision: &v1::Decision,
    explanation: &v1::Explanation,
    networks: impl IntoIterator<Item = MeshNetwork<'a>>,
) -> Result<v1::TraceResponse, String> {
    let Some(prefix) = advertised
        .iter()
        .map(|r| r.prefix)
        .filter(|p| p.contains(&destination))
        .max_by_key(|p| p.prefix_len())
    else {
        return Err(format!(
            "no route to {destination}: this bgpctl gives the fabric no prefix holding it \
             (`routingctl routes --advertised` lists what it gives)"
        ));
    };
    let mut routes: Vec<&Type5Route> = advertised.iter().filter(|r| r.prefix == prefix).collect();
    routes.sort_by_key(|r| r.key());
    let networks: Vec<MeshNetwork<'a>> = networks.into_iter().collect();
    let mut datacenter = String::new();
    let mut paths = Vec::with_capacity(routes.len());
    for r in routes {
        // The tunnel whose VTEP and MAC the route carries.
        let chosen = decision.remotes.iter().find_map(|remote| {
            remote
                .tunnels
                .iter()
                .find(|t| {
                    t.router_mac.as_ref() == r.router_mac
                        && t.vtep.parse::<IpAddr>().ok() == Some(r.next_hop)
                })
                .map(|t| (remote.datacenter.as_str(), t))
        });
        let candidate = chosen.and_then(|(dc, t)| {
            let id = TunnelId::from_slice(&t.id)?.to_string();
            explanation
                .remotes
                .iter()
                .filter(|x| x.datacenter == dc)
                .flat_map(|x| &x.candidates)
                .find(|c| c.tunnel == id)
                .cloned()
        });
        if let Some((dc, _)) = chosen {
            datacenter = dc.to_string();
        }
        let egress = match chosen {
            Some((dc, _)) => egress(&networks, dc, &prefix.to_string()),
            None => Vec::new(),
        };
        paths.push(v1::TracePath {
            rd: r.rd.to_string(),
            next_hop: r.next_hop.to_string(),
            router_mac: format_mac(&r.router_mac),
            vni: r.label_vni,
            remote_gatewan: candidate
                .as_ref()
                .map(|c| c.peer.clone())
                .unwrap_or_default(),
            tunnel: candidate,
            egress,
        });
    }
    Ok(v1::TraceResponse {
        destination: destination.to_string(),
        prefix: prefix.to_string(),
        datacenter,
        paths,
    })
}

/// The remote fabric's VTEPs for `prefix` in `datacenter`, each once, sorted.
fn egress(networks: &[MeshNetwork<'_>], datacenter: &str, prefix: &str) -> Vec<v1::TraceEgress> {
    let mut out: Vec<v1::TraceEgress> = networks
        .iter()
        .filter(|n| n.datacenter == datacenter && n.network.prefix == prefix)
        .map(|n| v1::TraceEgress {
            vtep: n.network.vtep.clone(),
            router_mac: <[u8; 6]>::try_from(n.network.router_mac.as_ref())
                .map(|m| format_mac(&m))
                .unwrap_or_default(),
            vni: n.network.vni,
            learned_by: n.learned_by.to_string(),
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.vtep, &a.router_mac, &a.learned_by).cmp(&(&b.vtep, &b.router_mac, &b.learned_by))
    });
    // Both bgpctls of a datacenter learn the same VTEP: one line, the first bgpctl named.
    out.dedup_by(|a, b| a.vtep == b.vtep && a.router_mac == b.router_mac && a.vni == b.vni);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::types::RouteDistinguisher;

    fn route(prefix: &str, next_hop: &str, mac: u8) -> Type5Route {
        Type5Route {
            rd: RouteDistinguisher::as2(65001, u32::from(mac)),
            prefix: prefix.parse().unwrap(),
            label_vni: 10100,
            next_hop: next_hop.parse().unwrap(),
            router_mac: [2, 0x5d, 0, 0, 0, mac],
            route_targets: Vec::new(),
            link_bandwidth: None,
        }
    }

    fn chosen(id: u8, vtep: &str, mac: u8) -> v1::ChosenTunnel {
        v1::ChosenTunnel {
            id: vec![id; 16].into(),
            vtep: vtep.into(),
            router_mac: vec![2, 0x5d, 0, 0, 0, mac].into(),
            ..Default::default()
        }
    }

    fn candidate(id: u8, interface: &str, peer: &str, verdict: &str) -> v1::Candidate {
        v1::Candidate {
            tunnel: TunnelId::from_slice(&[id; 16]).unwrap().to_string(),
            interface: interface.into(),
            gatewan: "gatewan01-sg1".into(),
            peer: peer.into(),
            local_transit: "lumen".into(),
            peer_transit: "lumen".into(),
            chosen: true,
            verdict: verdict.into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_route_of_the_longest_prefix_leads_to_its_tunnel_its_peer_and_the_remote_vteps() {
        let advertised = [
            route("172.16.0.0/16", "10.1.254.1", 1),
            route("172.16.2.0/24", "10.1.254.1", 1),
            route("172.16.2.0/24", "10.1.254.33", 4),
            route("2001:db8:a2::/48", "10.1.254.1", 1),
        ];
        let decision = v1::Decision {
            remotes: vec![v1::DatacenterDecision {
                datacenter: "par1".into(),
                tunnels: vec![chosen(1, "10.1.254.1", 1), chosen(4, "10.1.254.33", 4)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let explanation = v1::Explanation {
            remotes: vec![v1::RemoteExplanation {
                datacenter: "par1".into(),
                candidates: vec![
                    candidate(1, "sdwan1", "gatewan01-par1", "chosen_for_capacity"),
                    candidate(4, "sdwan4", "gatewan02-par1", "chosen_for_diversity"),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let n = |vtep: &str| v1::Network {
            prefix: "172.16.2.0/24".into(),
            vtep: vtep.into(),
            router_mac: vec![2, 0, 0, 2, 0, 1].into(),
            vni: 10200,
        };
        let (a, b, other) = (n("10.2.255.1"), n("10.2.255.1"), n("10.1.255.1"));
        let networks = [
            MeshNetwork {
                datacenter: "par1",
                learned_by: "bgpctl2-par1",
                network: &a,
            },
            MeshNetwork {
                datacenter: "par1",
                learned_by: "bgpctl-par1",
                network: &b,
            },
            MeshNetwork {
                datacenter: "sg1",
                learned_by: "bgpctl-sg1",
                network: &other,
            },
        ];
        let t = trace(
            "172.16.2.10".parse().unwrap(),
            &advertised,
            &decision,
            &explanation,
            networks,
        )
        .unwrap();
        assert_eq!(
            (t.prefix.as_str(), t.datacenter.as_str()),
            ("172.16.2.0/24", "par1")
        );
        assert_eq!(t.paths.len(), 2, "one path per route, not the /16's");
        let p = &t.paths[0];
        assert_eq!(
            (p.next_hop.as_str(), p.router_mac.as_str()),
            ("10.1.254.1", "02:5d:00:00:00:01")
        );
        let tunnel = p.tunnel.as_ref().unwrap();
        assert_eq!(
            (tunnel.interface.as_str(), tunnel.verdict.as_str()),
            ("sdwan1", "chosen_for_capacity")
        );
        assert_eq!(p.remote_gatewan, "gatewan01-par1");
        assert_eq!(
            p.egress.len(),
            1,
            "the same VTEP from both bgpctls is one hop: {:?}",
            p.egress
        );
        assert_eq!(
            (p.egress[0].vtep.as_str(), p.egress[0].learned_by.as_str()),
            ("10.2.255.1", "bgpctl-par1")
        );
        assert_eq!(t.paths[1].tunnel.as_ref().unwrap().interface, "sdwan4");
    }

    #[test]
    fn a_destination_no_advertised_prefix_holds_has_no_path_and_says_where_to_look() {
        let err = trace(
            "192.0.2.1".parse().unwrap(),
            &[route("172.16.2.0/24", "10.1.254.1", 1)],
            &v1::Decision::default(),
            &v1::Explanation::default(),
            [],
        )
        .unwrap_err();
        assert!(err.contains("routes --advertised"), "{err}");
    }
}
