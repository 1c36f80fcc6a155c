//! bgpctl's own Prometheus metrics, served with the mesh's by `gatewan_kit::metrics::serve`:
//! each BGP peer's session state, route and UPDATE counts, the input the speaker dropped
//! or repaired instead of trusting it, and the controller's last decision per remote
//! datacenter, read at scrape time.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use tokio::sync::watch;

use crate::bgp::{PeerState, PeerStatus, SpeakerHandle};
use crate::daemon::{ControllerView, DaemonCounters};

/// The BGP speaker's per-peer metrics and the decision loop's counters. Holds the speaker
/// weakly so that shutdown can still take it back (and send Cease) while the metrics
/// endpoint runs.
pub fn bgp_collector(
    speaker: &Arc<SpeakerHandle>,
    daemon: Arc<DaemonCounters>,
) -> Box<dyn Collector> {
    Box::new(BgpCollector(Arc::downgrade(speaker), daemon))
}

#[derive(Clone)]
struct BgpCollector(Weak<SpeakerHandle>, Arc<DaemonCounters>);

impl std::fmt::Debug for BgpCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BgpCollector")
    }
}

type Field = fn(&PeerStatus) -> u64;

impl Collector for BgpCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let d = &self.1;
        gatewan_kit::metrics::counter(
            &mut enc,
            "bgpctl_mesh_publish_refused",
            "Publishes the mesh refused (mesh.max_records_per_origin reached) or could not, at most one per pass",
            d.publish_refused.load(Ordering::Relaxed),
        )?;
        let g = ConstGauge::new(
            i64::try_from(d.networks_unpublished.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
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
            d.stale_networks_withdrawn.load(Ordering::Relaxed),
        )?;
        let Some(speaker) = self.0.upgrade() else {
            return Ok(());
        };
        let peers = speaker.peers();
        let addresses: Vec<String> = peers.iter().map(|p| p.address.to_string()).collect();
        let gauge = ConstGauge::new(0i64);
        let mut fam = enc.encode_descriptor(
            "bgpctl_bgp_peer_established",
            "1 when the BGP session with the peer is Established",
            None,
            gauge.metric_type(),
        )?;
        for (p, a) in peers.iter().zip(&addresses) {
            ConstGauge::new(i64::from(p.state == PeerState::Established))
                .encode(fam.encode_family(&[("peer", a.as_str())])?)?;
        }
        let gauges: [(&str, &str, Field); 3] = [
            (
                "bgpctl_bgp_prefixes_received",
                "Type-5 routes from the peer in the Adj-RIB-In (after the import filters)",
                |p| p.prefixes_received,
            ),
            (
                "bgpctl_bgp_prefixes_stale",
                "Routes of the peer kept stale while it restarts (RFC 4724)",
                |p| p.prefixes_stale,
            ),
            (
                "bgpctl_bgp_prefixes_sent",
                "Type-5 routes advertised to the peer on the current session",
                |p| p.prefixes_sent,
            ),
        ];
        for (name, help, field) in gauges {
            let mut fam = enc.encode_descriptor(name, help, None, gauge.metric_type())?;
            for (p, a) in peers.iter().zip(&addresses) {
                ConstGauge::new(i64::try_from(field(p)).unwrap_or(i64::MAX))
                    .encode(fam.encode_family(&[("peer", a.as_str())])?)?;
            }
        }
        let counter = ConstCounter::new(0u64);
        let counters: [(&str, &str, Field); 4] = [
            (
                "bgpctl_bgp_updates_received",
                "UPDATE messages received from the peer",
                |p| p.updates_received,
            ),
            (
                "bgpctl_bgp_updates_sent",
                "UPDATE messages sent to the peer",
                |p| p.updates_sent,
            ),
            (
                "bgpctl_bgp_established_transitions",
                "Times the session with the peer reached Established",
                |p| p.established_count,
            ),
            (
                "bgpctl_bgp_max_prefix_teardowns",
                "Sessions closed because the peer sent more than its max_prefixes (teardown)",
                |p| p.max_prefix_teardowns,
            ),
        ];
        for (name, help, field) in counters {
            let mut fam = enc.encode_descriptor(name, help, None, counter.metric_type())?;
            for (p, a) in peers.iter().zip(&addresses) {
                ConstCounter::new(field(p)).encode(fam.encode_family(&[("peer", a.as_str())])?)?;
            }
        }
        let mut fam = enc.encode_descriptor(
            "bgpctl_bgp_notifications",
            "BGP NOTIFICATION messages, by peer and direction (sent, received)",
            None,
            counter.metric_type(),
        )?;
        for (p, a) in peers.iter().zip(&addresses) {
            for (direction, n) in [
                ("sent", p.notifications_sent),
                ("received", p.notifications_received),
            ] {
                ConstCounter::new(n).encode(
                    fam.encode_family(&[("peer", a.as_str()), ("direction", direction)])?,
                )?;
            }
        }
        // RFC 7606 repairs and the filters: what the speaker did not take as sent.
        let input: [(&str, Field); 7] = [
            ("treat_as_withdraw", |p| p.input.treat_as_withdraw),
            ("attributes_discarded", |p| p.input.attributes_discarded),
            ("malformed_resets", |p| p.input.malformed_resets),
            ("routes_filtered", |p| p.input.routes_filtered),
            ("routes_over_max_prefixes", |p| p.input.routes_over_limit),
            ("nlri_ignored", |p| p.input.nlri_ignored),
            ("as_path_loops", |p| p.input.as_path_loops),
        ];
        let mut fam = enc.encode_descriptor(
            "bgpctl_bgp_input_dropped",
            "Input from the peer dropped or repaired instead of trusted, by reason: \
             treat_as_withdraw, attributes_discarded, malformed_resets (RFC 7606); \
             routes_filtered (import policy), routes_over_max_prefixes (stop-learning), \
             nlri_ignored (not EVPN type 5), as_path_loops",
            None,
            counter.metric_type(),
        )?;
        for (p, a) in peers.iter().zip(&addresses) {
            for (reason, field) in input {
                ConstCounter::new(field(p))
                    .encode(fam.encode_family(&[("peer", a.as_str()), ("reason", reason)])?)?;
            }
        }
        Ok(())
    }
}

/// The controller's last decision, per remote datacenter.
pub fn controller_collector(view: watch::Receiver<Arc<ControllerView>>) -> Box<dyn Collector> {
    Box::new(ControllerCollector(view))
}

#[derive(Clone)]
struct ControllerCollector(watch::Receiver<Arc<ControllerView>>);

impl std::fmt::Debug for ControllerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControllerCollector")
    }
}

type Remote = fn(&crate::controller::RemoteExplanation) -> f64;

impl Collector for ControllerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.0.borrow().clone();
        let Some(explanation) = &view.explanation else {
            return Ok(());
        };
        let gauge = ConstGauge::new(0f64);
        let readings: [(&str, &str, Remote); 4] = [
            (
                "bgpctl_controller_required_capacity_bytes_per_second",
                "Capacity the policy requires toward the remote datacenter",
                |r| r.required_bps as f64 / 8.0,
            ),
            (
                "bgpctl_controller_chosen_capacity_bytes_per_second",
                "Capacity of the tunnels chosen toward the remote datacenter",
                |r| r.chosen_bps as f64 / 8.0,
            ),
            (
                "bgpctl_controller_shortfall_bytes_per_second",
                "Required capacity the chosen tunnels do not cover",
                |r| r.shortfall_bps as f64 / 8.0,
            ),
            (
                "bgpctl_controller_chosen_tunnels",
                "Tunnels chosen toward the remote datacenter",
                |r| {
                    r.candidates
                        .iter()
                        .filter(|c| c.verdict.is_chosen())
                        .count() as f64
                },
            ),
        ];
        for (name, help, reading) in readings {
            let mut fam = enc.encode_descriptor(name, help, None, gauge.metric_type())?;
            for r in &explanation.remotes {
                ConstGauge::new(reading(r))
                    .encode(fam.encode_family(&[("datacenter", &*r.datacenter)])?)?;
            }
        }
        let counter = ConstCounter::new(0u64);
        let mut fam = enc.encode_descriptor(
            "bgpctl_controller_decision_changes",
            "Changes of the chosen tunnels since start, by reason (a change with two reasons \
             counts for both): first, unhealthy (a chosen tunnel left the healthy set), \
             drained (its transit was drained), \
             none_healthy (hold_when_none_healthy expired), better_set (hold_down expired), \
             short (capacity, min_tunnels or diversity), above_max_tunnels, datacenter_left",
            None,
            counter.metric_type(),
        )?;
        for (reason, n) in &view.changes {
            ConstCounter::new(*n).encode(fam.encode_family(&[("reason", reason.as_str())])?)?;
        }
        Ok(())
    }
}
