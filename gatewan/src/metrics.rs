//! The gatewan's own Prometheus metrics, served with the mesh's by
//! `gatewan_kit::metrics::serve`: the data plane's counters, read at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use gatewan_kit::metrics::counter;
use gatewan_proto::v1;
use tokio::sync::watch;

use crate::tunnels::manager::{SlotStatus, TransitUsage, TunnelTable};

type DataplaneStatsRx = watch::Receiver<std::sync::Arc<crate::dataplane::manager::DataplaneStats>>;

/// The data plane's counters, for `gatewan_kit::metrics::serve`.
pub fn dataplane_collector(stats: DataplaneStatsRx) -> Box<dyn Collector> {
    Box::new(DataplaneCollector(stats))
}

#[derive(Clone)]
struct DataplaneCollector(DataplaneStatsRx);

impl std::fmt::Debug for DataplaneCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataplaneCollector")
    }
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.borrow().clone();
        counter(
            &mut enc,
            "gatewan_dataplane_reconciles",
            "Data plane reconciles run",
            s.reconciles,
        )?;
        counter(
            &mut enc,
            "gatewan_dataplane_reconcile_steps",
            "Changes the data plane reconciler made on the host",
            s.steps,
        )?;
        counter(
            &mut enc,
            "gatewan_dataplane_reconcile_errors",
            "Data plane changes that failed (retried at the next reconcile)",
            s.errors,
        )?;
        let g = ConstGauge::new(s.last_reconcile.as_secs_f64());
        g.encode(enc.encode_descriptor(
            "gatewan_dataplane_reconcile_seconds",
            "Duration of the last data plane reconcile",
            None,
            g.metric_type(),
        )?)?;
        counter(
            &mut enc,
            "gatewan_dataplane_egress_packets",
            "Packets sent to the fabric (VXLAN device), as of the last reconcile",
            s.egress_packets,
        )?;
        let proto = ConstCounter::new(0u64);
        let mut fam = enc.encode_descriptor(
            "gatewan_dataplane_ingress_packets",
            "Packets the fabric sent to a tunnel's Router's MAC (its macvlan), as of the last reconcile",
            None,
            proto.metric_type(),
        )?;
        for (interface, packets) in &s.ingress_packets {
            ConstCounter::new(*packets)
                .encode(fam.encode_family(&[("interface", interface.as_str())])?)?;
        }
        let mut fam = enc.encode_descriptor(
            "gatewan_dataplane_spoofed_packets",
            "Packets a tunnel brought in from outside its datacenter's networks, dropped by the source filter",
            None,
            proto.metric_type(),
        )?;
        for (interface, packets) in &s.spoofed_packets {
            ConstCounter::new(*packets)
                .encode(fam.encode_family(&[("interface", interface.as_str())])?)?;
        }
        let on = ConstGauge::new(i64::from(s.fast_path.is_some()));
        on.encode(enc.encode_descriptor(
            "gatewan_dataplane_fast_path_on",
            "1 while the tc fast path carries tenant packets (ADR 0067), 0 with fabric.fast_path false or refused by the kernel",
            None,
            on.metric_type(),
        )?)?;
        counter(
            &mut enc,
            "gatewan_dataplane_fast_path_errors",
            "Fast path changes (maps, attachments) that failed (retried at the next reconcile)",
            s.fast_path_errors,
        )?;
        if let Some(c) = &s.fast_path {
            use crate::dataplane::bpf::COUNTER_NAMES;
            for (name, help, offset) in [
                (
                    "gatewan_dataplane_fast_path_packets",
                    "Tenant packets the fast path carried, by direction (to_tunnel: from the fabric into a tunnel; to_fabric: from a tunnel to the fabric)",
                    0,
                ),
                (
                    "gatewan_dataplane_fast_path_bytes",
                    "Tenant bytes (IP packets) the fast path carried, by direction",
                    1,
                ),
            ] {
                let mut fam = enc.encode_descriptor(name, help, None, proto.metric_type())?;
                for (direction, base) in [("to_tunnel", 0), ("to_fabric", 2)] {
                    ConstCounter::new(c.totals[base + offset])
                        .encode(fam.encode_family(&[("direction", direction)])?)?;
                }
            }
            let mut fam = enc.encode_descriptor(
                "gatewan_dataplane_fast_path_passed_packets",
                "Tenant packets the fast path left to the kernel path, by reason (not_forwardable: TTL 1, options, fragment, extension header, TCP SYN, a malformed header, a multicast, broadcast, loopback or link-local address; too_big: over the MTU or GSO; local: to the gatewan; unknown_mac; source: not allowed from that tunnel; no_fast_route: no route, ECMP or a static gateway; underlay: no resolved next hop toward the VTEP; error)",
                None,
                proto.metric_type(),
            )?;
            for (name, n) in COUNTER_NAMES.iter().zip(c.totals).skip(4) {
                ConstCounter::new(n).encode(fam.encode_family(&[("reason", *name)])?)?;
            }
        }
        Ok(())
    }
}

/// Every routed transit's interface counters and capacity, labelled by `transit` and
/// `interface`: what the gatewan sends and receives over each provider, tunnels, gossip
/// and anything else that leaves by it.
pub fn transit_collector(
    usage: watch::Receiver<std::sync::Arc<Vec<TransitUsage>>>,
) -> Box<dyn Collector> {
    Box::new(TransitCollector(usage))
}

type TransitBytes = fn(&TransitUsage) -> u64;

#[derive(Clone)]
struct TransitCollector(watch::Receiver<std::sync::Arc<Vec<TransitUsage>>>);

impl std::fmt::Debug for TransitCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransitCollector")
    }
}

impl Collector for TransitCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let usage = self.0.borrow().clone();
        let proto = ConstCounter::new(0u64);
        let counters: [(&str, &str, TransitBytes); 2] = [
            (
                "gatewan_transit_receive_bytes",
                "Bytes received on the transit's interface, at the last usage reading",
                |t| t.rx_bytes,
            ),
            (
                "gatewan_transit_transmit_bytes",
                "Bytes sent on the transit's interface, at the last usage reading",
                |t| t.tx_bytes,
            ),
        ];
        for (name, help, field) in counters {
            let mut fam = enc.encode_descriptor(name, help, None, proto.metric_type())?;
            for t in usage.iter() {
                ConstCounter::new(field(t)).encode(fam.encode_family(&[
                    ("transit", t.transit.as_str()),
                    ("interface", t.interface.as_str()),
                ])?)?;
            }
        }
        let g = ConstGauge::new(0f64);
        let mut fam = enc.encode_descriptor(
            "gatewan_transit_capacity_bytes_per_second",
            "The transit's configured capacity (transits[].capacity)",
            None,
            g.metric_type(),
        )?;
        for t in usage.iter() {
            ConstGauge::new(t.capacity_bps as f64 / 8.0).encode(fam.encode_family(&[
                ("transit", t.transit.as_str()),
                ("interface", t.interface.as_str()),
            ])?)?;
        }
        Ok(())
    }
}

/// The tunnel state thresholds in force (`probe.degraded`, `probe.down`; a reload changes
/// them), so that alert rules compare with each gatewan's own.
pub fn thresholds_collector(
    thresholds: watch::Receiver<crate::probe::stats::Thresholds>,
) -> Box<dyn Collector> {
    Box::new(ThresholdsCollector(thresholds))
}

#[derive(Clone)]
struct ThresholdsCollector(watch::Receiver<crate::probe::stats::Thresholds>);

impl std::fmt::Debug for ThresholdsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThresholdsCollector")
    }
}

impl Collector for ThresholdsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = *self.0.borrow();
        for (name, help, v) in [
            (
                "gatewan_probe_degraded_loss_ratio",
                "probe.degraded.loss in force: a tunnel losing more is Degraded",
                t.degraded_loss,
            ),
            (
                "gatewan_probe_degraded_latency_seconds",
                "probe.degraded.latency in force: a tunnel slower than this is Degraded",
                t.degraded_latency.as_secs_f64(),
            ),
            (
                "gatewan_probe_down_loss_ratio",
                "probe.down.loss in force: a tunnel losing more is Down",
                t.down_loss,
            ),
        ] {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

/// This gatewan's tunnel slot (ADR 0042): which it holds, how often it gave one up, and
/// what keeps it from one with tunnels.
pub fn slot_collector(status: watch::Receiver<SlotStatus>) -> Box<dyn Collector> {
    Box::new(SlotCollector(status))
}

#[derive(Clone)]
struct SlotCollector(watch::Receiver<SlotStatus>);

impl std::fmt::Debug for SlotCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotCollector")
    }
}

impl Collector for SlotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::tunnels::plan::slots::SlotTrouble;
        let s = self.0.borrow().clone();
        if let Some(c) = s.claim {
            let g = ConstGauge::new(i64::from(c.slot));
            g.encode(enc.encode_descriptor(
                "gatewan_tunnel_slot",
                "The tunnel slot this gatewan announces (absent until it has one)",
                None,
                g.metric_type(),
            )?)?;
        }
        counter(
            &mut enc,
            "gatewan_tunnel_slot_renumberings",
            "Tunnel slots given up to a gatewan whose claim came first",
            s.renumberings,
        )?;
        let proto = ConstGauge::new(0i64);
        let mut fam = enc.encode_descriptor(
            "gatewan_tunnel_slot_trouble",
            "1 while this gatewan has no slot with tunnels: pinned_conflict (tunnels.slot pinned by another gatewan too) or no_free_slot",
            None,
            proto.metric_type(),
        )?;
        for (reason, on) in [
            (
                "pinned_conflict",
                matches!(s.trouble, Some(SlotTrouble::PinnedConflict { .. })),
            ),
            (
                "no_free_slot",
                matches!(s.trouble, Some(SlotTrouble::NoFreeSlot { .. })),
            ),
        ] {
            ConstGauge::new(i64::from(on)).encode(fam.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}

/// Every tunnel's state, measurements, rates and probe counters, for
/// `gatewan_kit::metrics::serve`. Series are labelled by `interface` (unique on a gatewan,
/// as `routingctl tunnels` and the data plane metrics name tunnels);
/// `gatewan_tunnel_info` joins it to the tunnel id, peer and transits.
pub fn tunnel_collector(table: watch::Receiver<TunnelTable>) -> Box<dyn Collector> {
    Box::new(TunnelCollector(table))
}

#[derive(Clone)]
struct TunnelCollector(watch::Receiver<TunnelTable>);

impl std::fmt::Debug for TunnelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelCollector")
    }
}

type Counter = fn(&v1::ProbeCounters) -> u64;
type Reading = fn(&v1::TunnelInfo) -> f64;
type Bytes = fn(&v1::TunnelInfo) -> u64;

/// The tunnel states `routingctl tunnels` shows.
const STATES: [&str; 3] = ["Established", "Degraded", "Down"];

impl Collector for TunnelCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let table = self.0.borrow().clone();
        let gauge = ConstGauge::new(0f64);
        let end = |e: &Option<v1::TunnelEndInfo>| {
            e.as_ref().map(|e| e.transit.clone()).unwrap_or_default()
        };
        let mut fam = enc.encode_descriptor(
            "gatewan_tunnel_info",
            "One series per tunnel: its id, peer gatewan, datacenter and transits",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for t in table.iter() {
            let (lt, pt) = (end(&t.local_info), end(&t.peer_info));
            ConstGauge::new(1i64).encode(fam.encode_family(&[
                ("interface", t.interface.as_str()),
                ("tunnel", t.id.as_str()),
                ("peer", t.peer.as_str()),
                ("target_datacenter", t.target_datacenter.as_str()),
                ("local_transit", lt.as_str()),
                ("peer_transit", pt.as_str()),
            ])?)?;
        }
        let mut fam = enc.encode_descriptor(
            "gatewan_tunnel_state",
            "1 for the tunnel's current state (Established, Degraded, Down), 0 for the others",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for t in table.iter() {
            for state in STATES {
                ConstGauge::new(i64::from(t.state == state)).encode(
                    fam.encode_family(&[("interface", t.interface.as_str()), ("state", state)])?,
                )?;
            }
        }
        let readings: [(&str, &str, Reading); 7] = [
            (
                "gatewan_tunnel_loss_ratio",
                "Probe loss over the probe window (0 to 1)",
                |t| t.loss,
            ),
            (
                "gatewan_tunnel_latency_seconds",
                "Probe round-trip time over the window",
                |t| t.latency_ns as f64 / 1e9,
            ),
            (
                "gatewan_tunnel_jitter_seconds",
                "Probe jitter over the window",
                |t| t.jitter_ns as f64 / 1e9,
            ),
            (
                "gatewan_tunnel_reorder_ratio",
                "Probe replies out of order over the window (0 to 1)",
                |t| t.reorder,
            ),
            (
                "gatewan_tunnel_capacity_bytes_per_second",
                "Capacity of the tunnel: the smaller of its two transits' capacities",
                |t| t.capacity_bps as f64 / 8.0,
            ),
            (
                "gatewan_tunnel_receive_bytes_per_second",
                "Rate received on the tunnel, last reading",
                |t| t.rx_bps as f64 / 8.0,
            ),
            (
                "gatewan_tunnel_transmit_bytes_per_second",
                "Rate sent on the tunnel, last reading",
                |t| t.tx_bps as f64 / 8.0,
            ),
        ];
        for (name, help, reading) in readings {
            let mut fam = enc.encode_descriptor(name, help, None, gauge.metric_type())?;
            for t in table.iter() {
                ConstGauge::new(reading(t))
                    .encode(fam.encode_family(&[("interface", t.interface.as_str())])?)?;
            }
        }
        let proto = ConstCounter::new(0u64);
        let bytes: [(&str, &str, Bytes); 2] = [
            (
                "gatewan_tunnel_receive_bytes",
                "Bytes received on the tunnel interface (decrypted), at the last usage reading",
                |t| t.rx_bytes,
            ),
            (
                "gatewan_tunnel_transmit_bytes",
                "Bytes sent into the tunnel interface (before encryption), at the last usage reading",
                |t| t.tx_bytes,
            ),
        ];
        for (name, help, field) in bytes {
            let mut fam = enc.encode_descriptor(name, help, None, proto.metric_type())?;
            for t in table.iter() {
                ConstCounter::new(field(t))
                    .encode(fam.encode_family(&[("interface", t.interface.as_str())])?)?;
            }
        }
        let plain: [(&str, &str, Counter); 4] = [
            (
                "gatewan_probe_sent",
                "Probe requests sent, by tunnel",
                |c| c.sent,
            ),
            (
                "gatewan_probe_unsent",
                "Probes that could not be sent (counted as lost), by tunnel",
                |c| c.unsent,
            ),
            (
                "gatewan_probe_replies",
                "Probe replies measured, by tunnel",
                |c| c.replies,
            ),
            (
                "gatewan_probe_requests_answered",
                "The peer's probe requests echoed back, by tunnel",
                |c| c.requests_answered,
            ),
        ];
        for (name, help, field) in plain {
            let mut fam = enc.encode_descriptor(name, help, None, proto.metric_type())?;
            for t in table.iter() {
                let c = t.probe_counters.unwrap_or_default();
                ConstCounter::new(field(&c))
                    .encode(fam.encode_family(&[("interface", t.interface.as_str())])?)?;
            }
        }
        let dropped: [(&str, Counter); 6] = [
            ("malformed", |c| c.malformed),
            ("foreign", |c| c.foreign),
            ("unknown_seq", |c| c.unknown_seq),
            ("duplicate", |c| c.duplicate),
            ("late", |c| c.late),
            ("stale", |c| c.stale),
        ];
        let mut fam = enc.encode_descriptor(
            "gatewan_probe_datagrams_dropped",
            "Probe datagrams received and not measured, by tunnel and reason",
            None,
            proto.metric_type(),
        )?;
        for t in table.iter() {
            let c = t.probe_counters.unwrap_or_default();
            for (reason, field) in dropped {
                ConstCounter::new(field(&c)).encode(
                    fam.encode_family(&[("interface", t.interface.as_str()), ("reason", reason)])?,
                )?;
            }
        }
        Ok(())
    }
}
