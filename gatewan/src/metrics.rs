//! The gatewan's own Prometheus metrics, served with the mesh's by
//! `gatewan_kit::metrics::serve`: the data plane's counters, read at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use gatewan_kit::metrics::counter;
use gatewan_proto::v1;
use tokio::sync::watch;

use crate::tunnels::manager::TunnelTable;

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
        Ok(())
    }
}

/// The probe engine's per-tunnel counters, for `gatewan_kit::metrics::serve`.
pub fn probe_collector(table: watch::Receiver<TunnelTable>) -> Box<dyn Collector> {
    Box::new(ProbeCollector(table))
}

#[derive(Clone)]
struct ProbeCollector(watch::Receiver<TunnelTable>);

impl std::fmt::Debug for ProbeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeCollector")
    }
}

impl Collector for ProbeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let table = self.0.borrow().clone();
        let proto = ConstCounter::new(0u64);
        type Field = fn(&v1::ProbeCounters) -> u64;
        let plain: [(&str, &str, Field); 4] = [
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
                    .encode(fam.encode_family(&[("tunnel", t.id.as_str())])?)?;
            }
        }
        let dropped: [(&str, Field); 6] = [
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
                ConstCounter::new(field(&c))
                    .encode(fam.encode_family(&[("tunnel", t.id.as_str()), ("reason", reason)])?)?;
            }
        }
        Ok(())
    }
}
