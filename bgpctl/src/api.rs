//! The `Bgp` gRPC service of bgpctl (and the shared `Mesh` service): peers, routes, and
//! the controller's explanation, for routingctl.

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
}

impl BgpApi {
    pub fn new(
        speaker: Arc<SpeakerHandle>,
        controller: watch::Receiver<Arc<ControllerView>>,
    ) -> Self {
        BgpApi {
            speaker,
            controller,
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
    }
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
        Ok(Response::new(v1::ListRoutesResponse { routes }))
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
