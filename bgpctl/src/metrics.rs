//! bgpctl's part of `/metrics` (added to the mesh's by `gatewan_kit::metrics::serve`):
//! each BGP peer's state, routes and the input it refused, read at scrape time.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::bgp::{PeerState, PeerStatus, SpeakerHandle};
use crate::daemon::DaemonCounters;

/// The speaker's and the decision loop's counters, for `gatewan_kit::metrics::serve`.
pub fn bgp_collector(
    speaker: Arc<SpeakerHandle>,
    daemon: Arc<DaemonCounters>,
) -> Box<dyn Collector> {
    Box::new(BgpCollector(speaker, daemon))
}

struct BgpCollector(Arc<SpeakerHandle>, Arc<DaemonCounters>);

impl std::fmt::Debug for BgpCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BgpCollector")
    }
}

type Counter = fn(&PeerStatus) -> u64;

/// Per-peer counters: (name, help, value).
const COUNTERS: [(&str, &str, Counter); 7] = [
    (
        "bgpctl_bgp_routes_filtered",
        "Type-5 announcements refused by the import policy (route targets, evpn.import_prefixes)",
        |p| p.input.routes_filtered,
    ),
    (
        "bgpctl_bgp_routes_over_max_prefixes",
        "New routes ignored because the peer was at its max_prefixes limit (stop-learning)",
        |p| p.input.routes_over_limit,
    ),
    (
        "bgpctl_bgp_max_prefix_teardowns",
        "Sessions closed because the peer sent more than its max_prefixes (teardown)",
        |p| p.max_prefix_teardowns,
    ),
    (
        "bgpctl_bgp_treat_as_withdraw",
        "UPDATEs treated as withdraw (RFC 7606)",
        |p| p.input.treat_as_withdraw,
    ),
    (
        "bgpctl_bgp_attributes_discarded",
        "Path attributes discarded (RFC 7606)",
        |p| p.input.attributes_discarded,
    ),
    (
        "bgpctl_bgp_malformed_resets",
        "Sessions reset because a received message was malformed",
        |p| p.input.malformed_resets,
    ),
    (
        "bgpctl_bgp_nlri_ignored",
        "NLRI that are not EVPN type-5, ignored",
        |p| p.input.nlri_ignored,
    ),
];

impl Collector for BgpCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let peers = self.0.peers();
        let labels: Vec<String> = peers.iter().map(|p| p.address.to_string()).collect();
        let proto = ConstCounter::new(0u64);
        for (name, help, value) in COUNTERS {
            let mut fam = enc.encode_descriptor(name, help, None, proto.metric_type())?;
            for (p, peer) in peers.iter().zip(&labels) {
                ConstCounter::new(value(p))
                    .encode(fam.encode_family(&[("peer", peer.as_str())])?)?;
            }
        }
        let gauge = ConstGauge::new(0i64);
        let mut fam = enc.encode_descriptor(
            "bgpctl_bgp_prefixes_received",
            "Type-5 routes held from the peer (after the import policy)",
            None,
            gauge.metric_type(),
        )?;
        for (p, peer) in peers.iter().zip(&labels) {
            let n = i64::try_from(p.prefixes_received).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(fam.encode_family(&[("peer", peer.as_str())])?)?;
        }
        let mut fam = enc.encode_descriptor(
            "bgpctl_bgp_peer_established",
            "1 when the session with the peer is Established",
            None,
            gauge.metric_type(),
        )?;
        for (p, peer) in peers.iter().zip(&labels) {
            let up = i64::from(p.state == PeerState::Established);
            ConstGauge::new(up).encode(fam.encode_family(&[("peer", peer.as_str())])?)?;
        }
        gatewan_kit::metrics::counter(
            &mut enc,
            "bgpctl_mesh_publish_refused",
            "Publishes the mesh refused (mesh.max_records_per_origin reached) or could not, at most one per pass",
            self.1.publish_refused.load(Ordering::Relaxed),
        )?;
        let g = ConstGauge::new(
            i64::try_from(self.1.networks_unpublished.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        );
        g.encode(enc.encode_descriptor(
            "bgpctl_networks_unpublished",
            "Networks learned from the fabric that are not in the mesh (mesh.max_records_per_origin reached)",
            None,
            g.metric_type(),
        )?)?;
        gatewan_kit::metrics::counter(
            &mut enc,
            "bgpctl_stale_networks_withdrawn",
            "Networks of a previous life of this bgpctl withdrawn from the mesh because the fabric no longer announced them",
            self.1.stale_networks_withdrawn.load(Ordering::Relaxed),
        )?;
        Ok(())
    }
}
