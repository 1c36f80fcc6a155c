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

/// Bounds of `Watch`'s interval: faster costs a snapshot of the whole mesh per client that
/// often, slower is no longer live.
const WATCH_DEFAULT_MS: u32 = 1000;
const WATCH_MIN_MS: u32 = 200;
const WATCH_MAX_MS: u32 = 10_000;

/// The `Top` service (ADR 0048): a stream of snapshots of what this bgpctl knows, for
/// `routingctl top`.
pub struct TopApi {
    speaker: Arc<SpeakerHandle>,
    controller: watch::Receiver<Arc<ControllerView>>,
    mesh: gatewan_mesh::driver::MeshHandle,
}

impl TopApi {
    pub fn new(
        speaker: Arc<SpeakerHandle>,
        controller: watch::Receiver<Arc<ControllerView>>,
        mesh: gatewan_mesh::driver::MeshHandle,
    ) -> Self {
        TopApi {
            speaker,
            controller,
            mesh,
        }
    }

    pub fn into_server(self) -> v1::top_server::TopServer<Self> {
        v1::top_server::TopServer::new(self)
    }

    fn snapshot(&self) -> v1::TopSnapshot {
        let view = self.mesh.view();
        let controller = self.controller.borrow().clone();
        let at = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        top_snapshot(&view, &controller, &self.speaker.peers(), at)
    }
}

/// The interval a `WatchRequest` asks for, or why it is refused.
fn watch_interval(ms: u32) -> Result<std::time::Duration, Status> {
    let ms = if ms == 0 { WATCH_DEFAULT_MS } else { ms };
    if !(WATCH_MIN_MS..=WATCH_MAX_MS).contains(&ms) {
        return Err(Status::invalid_argument(format!(
            "interval {ms} ms is outside {WATCH_MIN_MS} ..= {WATCH_MAX_MS} ms"
        )));
    }
    Ok(std::time::Duration::from_millis(u64::from(ms)))
}

/// What `routingctl top` shows, from the mesh view (members, every gatewan's tunnels as
/// gossiped), the controller's latest explanation and the speaker's peers.
pub fn top_snapshot(
    view: &gatewan_mesh::driver::MeshView,
    controller: &ControllerView,
    peers: &[PeerStatus],
    at_unix_ms: i64,
) -> v1::TopSnapshot {
    use crate::controller::{Snapshot, TunnelId, state_name};
    use std::collections::{BTreeSet, HashSet};

    let me = view.members.iter().find(|m| m.local).map(|m| m.id.node);
    let own = me.and_then(|id| view.store.node(id));
    let alive = |id: gatewan_mesh::NodeId| {
        view.members
            .iter()
            .any(|m| m.id.node == id && m.state != gatewan_mesh::MemberState::Down)
    };
    let chosen: HashSet<TunnelId> = controller
        .decision
        .iter()
        .flat_map(|d| d.remotes.iter())
        .flat_map(|r| r.tunnels.iter())
        .filter_map(|t| TunnelId::from_slice(&t.id))
        .collect();
    // A snapshot per datacenter names the tunnels of its gatewans (the controller's own
    // reader of the gossiped metrics, ADR 0048): the planner derives their interface and
    // transits from the NodeRecords.
    let datacenters: BTreeSet<String> = view.store.gatewans().map(|g| g.datacenter).collect();
    let mut tunnels = Vec::new();
    for dc in &datacenters {
        let snapshot = Snapshot::from_store(dc, &view.store, alive);
        let gatewan = |id| snapshot.gatewans().find(|g| g.id == id);
        for t in snapshot.tunnels() {
            let (Some(local), Some(peer)) = (gatewan(t.gatewan), gatewan(t.peer)) else {
                continue;
            };
            let m = &t.measurements;
            tunnels.push(v1::TopTunnel {
                id: t.id.to_string(),
                gatewan: local.name.clone(),
                datacenter: local.datacenter.clone(),
                interface: t.interface.clone(),
                peer: peer.name.clone(),
                peer_datacenter: peer.datacenter.clone(),
                local_transit: t.local_transit.clone(),
                peer_transit: t.peer_transit.clone(),
                state: state_name(m.state).to_string(),
                loss_ppm: m.loss_ppm,
                latency_us: m.latency_us,
                jitter_us: m.jitter_us,
                capacity_bps: m.capacity_bps,
                rx_bps: m.rx_bps,
                tx_bps: m.tx_bps,
                // The same tunnel id at both ends: only our datacenter's end is ours to
                // choose (the other datacenter's bgpctls choose for theirs).
                chosen: own.is_some_and(|n| n.datacenter == local.datacenter)
                    && chosen.contains(&t.id),
            });
        }
    }
    tunnels
        .sort_by(|a, b| (&a.gatewan, &a.interface, &a.id).cmp(&(&b.gatewan, &b.interface, &b.id)));
    let remotes = controller
        .explanation
        .iter()
        .flat_map(|e| e.remotes.iter())
        .map(|r| v1::TopRemote {
            datacenter: r.datacenter.to_string(),
            required_bps: r.required_bps,
            chosen_bps: r.chosen_bps,
            shortfall_bps: r.shortfall_bps,
            candidates: u32::try_from(r.candidates.len()).unwrap_or(u32::MAX),
            healthy: u32::try_from(
                r.candidates
                    .iter()
                    .filter(|c| c.verdict.is_healthy())
                    .count(),
            )
            .unwrap_or(u32::MAX),
            chosen: r
                .candidates
                .iter()
                .filter(|c| c.chosen)
                .map(|c| v1::TopChosen {
                    tunnel: c.tunnel.to_string(),
                    gatewan: c.gatewan.to_string(),
                    interface: c.interface.to_string(),
                    peer: c.peer.to_string(),
                })
                .collect(),
            pending: r.pending.is_some(),
            summary: r.summary.clone(),
        })
        .collect();
    v1::TopSnapshot {
        at_unix_ms,
        name: own.map(|n| n.name.clone()).unwrap_or_default(),
        datacenter: own.map(|n| n.datacenter.clone()).unwrap_or_default(),
        members: gatewan_kit::api::members(view),
        tunnels,
        decided: controller.explanation.is_some(),
        remotes,
        peers: peers.iter().map(peer).collect(),
    }
}

type SnapshotStream =
    tonic::codegen::tokio_stream::wrappers::ReceiverStream<Result<v1::TopSnapshot, Status>>;

#[tonic::async_trait]
impl v1::top_server::Top for TopApi {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let period = watch_interval(req.into_inner().interval_ms)?;
        let api = TopApi {
            speaker: self.speaker.clone(),
            controller: self.controller.clone(),
            mesh: self.mesh.clone(),
        };
        // One snapshot in flight: a slow client delays its own next one, nothing piles up.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    // The client went away: stop at once rather than at the next tick.
                    () = tx.closed() => return,
                }
                if tx.send(Ok(api.snapshot())).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(SnapshotStream::new(rx)))
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

    mod top {
        use super::super::*;
        use gatewan_mesh::driver::MeshView;
        use gatewan_mesh::store::{StateStore, encode_record};
        use gatewan_mesh::{MemberId, MemberInfo, MemberState, NodeId};
        use gatewan_proto::v1::record::Body;
        use gatewan_tunnel_plan::{GatewanView, PlanSettings, plan};

        fn record(origin: NodeId, version: u64, body: Body) -> v1::Record {
            v1::Record {
                origin: origin.0.to_vec().into(),
                version,
                body: Some(body),
                ..Default::default()
            }
        }

        fn node(id: NodeId, name: &str, dc: &str, role: v1::Role, slot: u8) -> Body {
            Body::Node(v1::NodeRecord {
                id: id.0.to_vec().into(),
                name: name.into(),
                datacenter: dc.into(),
                role: role as i32,
                transits: ["lumen", "cogent"]
                    .iter()
                    .enumerate()
                    .map(|(i, t)| v1::Transit {
                        name: t.to_string(),
                        addresses: vec![format!("192.0.2.{}", slot * 10 + i as u8)],
                        capacity_bps: 1_000_000_000,
                        position: Some(i as u32),
                        ..Default::default()
                    })
                    .collect(),
                wireguard_public_key: vec![slot; 32].into(),
                vtep: format!("10.0.0.{slot}"),
                tunnel_slot: (role == v1::Role::Gatewan).then_some(u32::from(slot)),
                ..Default::default()
            })
        }

        fn member(id: NodeId, local: bool) -> MemberInfo {
            MemberInfo {
                id: MemberId {
                    node: id,
                    generation: 1,
                    addrs: Vec::new(),
                },
                state: MemberState::Alive,
                incarnation: 0,
                last_change_ms: 0,
                local,
                key: None,
                revoked: false,
            }
        }

        /// Both gatewans' tunnels are shown, named by the planner; only our datacenter's
        /// end of a chosen tunnel is marked chosen.
        #[test]
        fn a_snapshot_names_every_gatewans_tunnels() {
            let (sg1, par1, me) = (NodeId([1; 16]), NodeId([2; 16]), NodeId([3; 16]));
            let mut store = StateStore::default();
            for r in [
                record(sg1, 1, node(sg1, "gw-sg1", "sg1", v1::Role::Gatewan, 1)),
                record(par1, 1, node(par1, "gw-par1", "par1", v1::Role::Gatewan, 2)),
                record(me, 1, node(me, "bgpctl-sg1", "sg1", v1::Role::Bgpctl, 3)),
            ] {
                store.merge(encode_record(&r).unwrap());
            }
            let views: Vec<GatewanView> = store
                .gatewans()
                .filter_map(|g| GatewanView::from_gatewan(&g))
                .collect();
            let mut chosen = None;
            for (origin, peer) in [(sg1, par1), (par1, sg1)] {
                let local = views.iter().find(|v| v.id == origin).unwrap();
                let (planned, problems) = plan(local, &views, &PlanSettings::default());
                assert!(problems.is_empty(), "{problems:?}");
                assert_eq!(planned.len(), 4);
                let id = |t: &gatewan_tunnel_plan::PlannedTunnel| {
                    crate::controller::TunnelId::parse(&t.id)
                        .unwrap()
                        .0
                        .to_vec()
                };
                chosen.get_or_insert_with(|| id(&planned[0]));
                let metrics = v1::TunnelMetrics {
                    peer: peer.0.to_vec().into(),
                    tunnels: planned
                        .iter()
                        .map(|t| v1::TunnelMetric {
                            id: id(t).into(),
                            state: v1::TunnelState::Down as i32,
                            loss_ppm: 1_000_000,
                            latency_us: 2_000,
                            ..Default::default()
                        })
                        .collect(),
                };
                store.merge(
                    encode_record(&record(origin, 2, Body::TunnelMetrics(metrics))).unwrap(),
                );
            }
            let view = MeshView {
                members: vec![member(sg1, false), member(par1, false), member(me, true)],
                store,
                ..MeshView::default()
            };
            let controller = ControllerView {
                decision: Some(v1::Decision {
                    datacenter: "sg1".into(),
                    remotes: vec![v1::DatacenterDecision {
                        datacenter: "par1".into(),
                        tunnels: vec![v1::ChosenTunnel {
                            id: chosen.unwrap().into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                }),
                ..ControllerView::default()
            };
            let s = top_snapshot(&view, &controller, &[], 42);
            assert_eq!(
                (s.name.as_str(), s.datacenter.as_str()),
                ("bgpctl-sg1", "sg1")
            );
            assert_eq!(s.at_unix_ms, 42);
            assert_eq!(s.members.len(), 3);
            assert!(!s.decided, "no explanation yet");
            assert_eq!(s.tunnels.len(), 8, "{:#?}", s.tunnels);
            let ends = |g: &str| s.tunnels.iter().filter(|t| t.gatewan == g).count();
            assert_eq!((ends("gw-sg1"), ends("gw-par1")), (4, 4));
            let mut pairs: Vec<String> = s
                .tunnels
                .iter()
                .filter(|t| t.gatewan == "gw-sg1")
                .map(|t| {
                    format!(
                        "{}→{} {} {}",
                        t.local_transit, t.peer_transit, t.peer, t.state
                    )
                })
                .collect();
            pairs.sort();
            assert_eq!(
                pairs,
                [
                    "cogent→cogent gw-par1 Down",
                    "cogent→lumen gw-par1 Down",
                    "lumen→cogent gw-par1 Down",
                    "lumen→lumen gw-par1 Down"
                ]
            );
            assert!(
                s.tunnels
                    .iter()
                    .all(|t| t.loss_ppm == 1_000_000 && !t.interface.is_empty())
            );
            let marked: Vec<&str> = s
                .tunnels
                .iter()
                .filter(|t| t.chosen)
                .map(|t| t.gatewan.as_str())
                .collect();
            assert_eq!(marked, ["gw-sg1"], "only our end of the chosen tunnel");
        }

        #[test]
        fn watch_intervals_are_bounded() {
            assert_eq!(
                watch_interval(0).unwrap(),
                std::time::Duration::from_secs(1)
            );
            assert_eq!(
                watch_interval(200).unwrap(),
                std::time::Duration::from_millis(200)
            );
            assert!(watch_interval(199).is_err());
            assert!(watch_interval(10_001).is_err());
        }
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
