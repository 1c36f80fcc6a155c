//! The `Bgp` gRPC service of bgpctl (and the shared `Mesh` service): peers, routes, the
//! controller's explanation and the path toward a destination, for routingctl.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use gatewan_proto::v1::{self, bgp_server::Bgp};
use ipnet::IpNet;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::bgp::{PeerStatus, SpeakerHandle, Type5Route, types::format_mac};
use crate::daemon::ControllerView;

pub struct BgpApi {
    speaker: Arc<SpeakerHandle>,
    controller: watch::Receiver<Arc<ControllerView>>,
    mesh: gatewan_mesh::driver::MeshHandle,
}

impl BgpApi {
    pub fn new(
        speaker: Arc<SpeakerHandle>,
        controller: watch::Receiver<Arc<ControllerView>>,
        mesh: gatewan_mesh::driver::MeshHandle,
    ) -> Self {
        BgpApi {
            speaker,
            controller,
            mesh,
        }
    }

    pub fn into_server(self) -> v1::bgp_server::BgpServer<Self> {
        v1::bgp_server::BgpServer::new(self)
    }
}

fn peer(p: &PeerStatus) -> v1::BgpPeer {
    v1::BgpPeer {
        address: p.address.to_string(),
        asn: p.asn,
        state: p.state.as_str().to_string(),
        established_since_unix_ms: p
            .established_since
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64),
        uptime_s: p.uptime.map_or(0, |d| d.as_secs()),
        router_id: p.peer_router_id.map(|r| r.to_string()).unwrap_or_default(),
        hold_time_s: p.hold_time.map_or(0, |d| d.as_secs() as u32),
        prefixes_received: p.prefixes_received,
        prefixes_stale: p.prefixes_stale,
        prefixes_sent: p.prefixes_sent,
        updates_received: p.updates_received,
        updates_sent: p.updates_sent,
        last_error: p.last_error.clone().unwrap_or_default(),
        treat_as_withdraw: p.input.treat_as_withdraw,
        attributes_discarded: p.input.attributes_discarded,
        malformed_resets: p.input.malformed_resets,
        routes_filtered: p.input.routes_filtered,
        routes_over_limit: p.input.routes_over_limit,
        max_prefix_teardowns: p.max_prefix_teardowns,
    }
}

/// Routes per `ListRoutes` page unless the client asks otherwise, and at most: 10,000
/// routes of about 200 octets stay well inside tonic's 4 MB message limit.
const DEFAULT_PAGE_SIZE: usize = 1000;
const MAX_PAGE_SIZE: usize = 10_000;

/// The position of a route in `ListRoutes`'s order, and the page token that names it.
fn route_key(r: &v1::BgpRoute) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}|{}",
        r.direction, r.peer, r.rd, r.prefix, r.next_hop, r.router_mac, r.vni
    )
}

/// The `size` routes after `after` (a route key; empty: from the start) and the token of
/// the next page (empty when none follows).
fn page(routes: Vec<v1::BgpRoute>, after: &str, size: usize) -> (Vec<v1::BgpRoute>, String) {
    let mut keyed: Vec<(String, v1::BgpRoute)> = routes
        .into_iter()
        .map(|r| (route_key(&r), r))
        .filter(|(k, _)| after.is_empty() || k.as_str() > after)
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let more = keyed.len() > size;
    keyed.truncate(size);
    let next = match keyed.last() {
        Some((k, _)) if more => k.clone(),
        _ => String::new(),
    };
    (keyed.into_iter().map(|(_, r)| r).collect(), next)
}

fn route(direction: &str, r: &Type5Route, peer: String, stale: bool) -> v1::BgpRoute {
    v1::BgpRoute {
        direction: direction.into(),
        rd: r.rd.to_string(),
        prefix: r.prefix.trunc().to_string(),
        next_hop: r.next_hop.to_string(),
        router_mac: format_mac(&r.router_mac),
        vni: r.label_vni,
        route_targets: r.route_targets.iter().map(ToString::to_string).collect(),
        link_bandwidth_bps: r.link_bandwidth.unwrap_or(0),
        peer,
        stale,
    }
}

#[tonic::async_trait]
impl Bgp for BgpApi {
    async fn list_peers(
        &self,
        _: Request<v1::ListPeersRequest>,
    ) -> Result<Response<v1::ListPeersResponse>, Status> {
        Ok(Response::new(v1::ListPeersResponse {
            peers: self.speaker.peers().iter().map(peer).collect(),
        }))
    }

    async fn list_routes(
        &self,
        req: Request<v1::ListRoutesRequest>,
    ) -> Result<Response<v1::ListRoutesResponse>, Status> {
        let req = req.into_inner();
        let prefix: Option<IpNet> = if req.prefix.is_empty() {
            None
        } else {
            Some(
                req.prefix
                    .parse::<IpNet>()
                    .map_err(|_| {
                        Status::invalid_argument(format!(
                            "{:?} is not a prefix, e.g. 10.2.0.0/16",
                            req.prefix
                        ))
                    })?
                    .trunc(),
            )
        };
        let wanted = |r: &Type5Route| prefix.is_none_or(|p| r.prefix.trunc() == p);
        let direction =
            v1::RouteDirection::try_from(req.direction).unwrap_or(v1::RouteDirection::Unspecified);
        let mut routes = Vec::new();
        if direction != v1::RouteDirection::Received {
            routes.extend(
                self.speaker
                    .advertised()
                    .iter()
                    .filter(|r| wanted(r))
                    .map(|r| route("advertised", r, String::new(), false)),
            );
        }
        if direction != v1::RouteDirection::Advertised {
            let received = self.speaker.subscribe_received().borrow().clone();
            routes.extend(
                received
                    .routes
                    .iter()
                    .filter(|r| wanted(&r.route))
                    .map(|r| route("received", &r.route, r.peer.to_string(), r.stale)),
            );
        }
        let size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let (routes, next_page_token) = page(routes, &req.page_token, size);
        Ok(Response::new(v1::ListRoutesResponse {
            routes,
            next_page_token,
        }))
    }

    async fn trace(
        &self,
        req: Request<v1::TraceRequest>,
    ) -> Result<Response<v1::TraceResponse>, Status> {
        let text = req.into_inner().destination;
        let destination: std::net::IpAddr = text.trim().parse().map_err(|_| {
            Status::invalid_argument(format!(
                "{text:?} is not an IPv4 or IPv6 address (e.g. 172.16.2.10 or 2001:db8:a2::10)"
            ))
        })?;
        let view = self.controller.borrow().clone();
        let (Some(decision), Some(explanation)) = (&view.decision, &view.explanation) else {
            return Err(Status::unavailable(
                "the controller has not decided yet (bgpctl is starting)",
            ));
        };
        let mesh = self.mesh.view();
        let node = |id| mesh.store.node(id);
        let networks = mesh.store.networks().filter_map(|(origin, network)| {
            let n = node(origin)?;
            Some(crate::trace::MeshNetwork {
                datacenter: n.datacenter.as_str(),
                learned_by: n.name.as_str(),
                network,
            })
        });
        crate::trace::trace(
            destination,
            &self.speaker.advertised(),
            decision,
            &explanation.to_proto(),
            networks,
        )
        .map(Response::new)
        .map_err(Status::not_found)
    }

    async fn explain(
        &self,
        req: Request<v1::ExplainRequest>,
    ) -> Result<Response<v1::ExplainResponse>, Status> {
        let dc = req.into_inner().datacenter;
        let view = self.controller.borrow().clone();
        let Some(mut explanation) = view.explanation.clone() else {
            return Err(Status::unavailable(
                "the controller has not decided yet (bgpctl is starting)",
            ));
        };
        let mut history = view.history.clone();
        if !dc.is_empty() {
            explanation.remotes.retain(|r| *r.datacenter == *dc);
            history.retain(|c| c.datacenter == dc);
            if explanation.remotes.is_empty() {
                return Err(Status::not_found(format!(
                    "no remote datacenter {dc:?} in the controller's view"
                )));
            }
        }
        // The controller's times are monotonic; the API dates them.
        let date = |ms: u64| view.clock.unix_of(ms);
        let mut explanation = explanation.to_proto();
        explanation.at_ms = date(explanation.at_ms);
        for r in &mut explanation.remotes {
            if let Some(p) = &mut r.pending {
                p.since_ms = date(p.since_ms);
                p.applies_at_ms = date(p.applies_at_ms);
            }
        }
        let history = history
            .iter()
            .map(|c| {
                let mut c = c.to_proto();
                c.at_ms = date(c.at_ms);
                c
            })
            .collect();
        Ok(Response::new(v1::ExplainResponse {
            explanation: Some(explanation),
            history,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(direction: &str, prefix: &str) -> v1::BgpRoute {
        v1::BgpRoute {
            direction: direction.into(),
            prefix: prefix.into(),
            ..Default::default()
        }
    }

    fn prefixes(routes: &[v1::BgpRoute]) -> Vec<String> {
        routes
            .iter()
            .map(|r| format!("{} {}", r.direction, r.prefix))
            .collect()
    }

    #[test]
    fn pages_cover_every_route_once_in_order() {
        let all: Vec<_> = (0..25)
            .rev()
            .map(|i| {
                r(
                    if i % 2 == 0 { "advertised" } else { "received" },
                    &format!("10.{i}.0.0/16"),
                )
            })
            .collect();
        let mut got = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let (routes, next) = page(all.clone(), &token, 10);
            assert!(routes.len() <= 10);
            got.extend(routes);
            pages += 1;
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(pages, 3);
        let mut want = all.clone();
        want.sort_by_key(route_key);
        assert_eq!(prefixes(&got), prefixes(&want));
    }

    #[test]
    fn a_table_that_changes_between_pages_repeats_or_loses_no_route_that_stayed() {
        let first: Vec<_> = (0..6)
            .map(|i| r("received", &format!("10.{i}.0.0/16")))
            .collect();
        let (p1, token) = page(first.clone(), "", 3);
        assert_eq!(prefixes(&p1).len(), 3);
        // 10.0/16 withdrawn and 10.9/16 learned before the second page.
        let mut second: Vec<_> = first[1..].to_vec();
        second.push(r("received", "10.9.0.0/16"));
        let (p2, next) = page(second.clone(), &token, 3);
        let (p3, last) = page(second, &next, 3);
        assert!(last.is_empty());
        let rest: Vec<_> = prefixes(&p2).into_iter().chain(prefixes(&p3)).collect();
        assert_eq!(
            rest,
            ["10.3.0.0/16", "10.4.0.0/16", "10.5.0.0/16", "10.9.0.0/16"]
                .map(|p| format!("received {p}"))
        );
    }
}
