//! Prometheus metrics (`metrics.listen`) of every mesh member: read from the mesh view at
//! scrape time.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use gatewan_mesh::driver::MeshHandle;
use gatewan_mesh::{DropReason, MemberState};

#[derive(Clone)]
struct MeshCollector(MeshHandle);

impl std::fmt::Debug for MeshCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshCollector")
    }
}

/// Encodes one counter without labels.
pub fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

impl Collector for MeshCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.0.view();
        let c = &view.counters;
        counter(
            &mut enc,
            "gatewan_mesh_datagrams_received",
            "Gossip datagrams received",
            c.datagrams_in,
        )?;
        counter(
            &mut enc,
            "gatewan_mesh_received_bytes",
            "Gossip bytes received",
            c.bytes_in,
        )?;
        counter(
            &mut enc,
            "gatewan_mesh_datagrams_sent",
            "Gossip datagrams sent",
            c.datagrams_out,
        )?;
        counter(
            &mut enc,
            "gatewan_mesh_sent_bytes",
            "Gossip bytes sent",
            c.bytes_out,
        )?;
        counter(
            &mut enc,
            "gatewan_mesh_records_invalid",
            "Gossiped records refused by validation",
            c.records_invalid,
        )?;
        counter(
            &mut enc,
            "gatewan_mesh_records_from_future",
            "Gossiped records refused because their version is further ahead of our wall \
             clock than the allowed skew (2 h)",
            c.records_from_future,
        )?;
        counter(
            &mut enc,
            "gatewan_mesh_rejoins",
            "Times this member rejoined the mesh under a new generation",
            c.rejoins,
        )?;
        counter(
            &mut enc,
            "gatewan_mesh_records_pushed",
            "Records pushed to passive members (bgpctls) that asked for them, or by a passive \
             member to the members it reaches",
            c.records_pushed,
        )?;
        counter(
            &mut enc,
            "gatewan_mesh_suspicions_raised",
            "Members whose probe by us failed (each then told directly that it is suspected)",
            c.suspicions_raised,
        )?;
        counter(
            &mut enc,
            "gatewan_mesh_suspicions_of_self_refuted",
            "Suspicions of this member refuted in answer to a suspicion notice",
            c.suspicions_of_us_refuted,
        )?;
        counter(
            &mut enc,
            "gatewan_mesh_refutations_received",
            "Suspicions we raised that the suspect refuted directly",
            c.refutations_received,
        )?;
        {
            let proto = ConstCounter::new(0u64);
            let mut fam = enc.encode_descriptor(
                "gatewan_mesh_records_dropped",
                "Gossiped records refused by the store's bounds, by reason: records_over_cap (a new record of a member at mesh.max_records_per_origin), departed (a record of a member collected after mesh.departed_record_ttl)",
                None,
                proto.metric_type(),
            )?;
            for (reason, v) in [
                ("records_over_cap", c.store.records_over_cap),
                ("departed", c.store.records_departed),
            ] {
                ConstCounter::new(v).encode(fam.encode_family(&[("reason", reason)])?)?;
            }
        }
        counter(
            &mut enc,
            "gatewan_mesh_records_collected",
            "Records removed because their member was gone for mesh.departed_record_ttl",
            c.store.records_collected,
        )?;
        {
            let proto = ConstCounter::new(0u64);
            let mut fam = enc.encode_descriptor(
                "gatewan_mesh_datagrams_dropped",
                "Gossip datagrams dropped before use, by reason; for bad_signature, forged, revoked \
                 and not_admin, records and messages (a forged one is validly signed, by another \
                 key than the one pinned for the member it speaks for)",
                None,
                proto.metric_type(),
            )?;
            for r in DropReason::ALL {
                ConstCounter::new(c.dropped(r))
                    .encode(fam.encode_family(&[("reason", r.as_str())])?)?;
            }
        }
        {
            let proto = ConstGauge::new(0f64);
            let fam = enc.encode_descriptor(
                "gatewan_mesh_max_clock_skew_seconds",
                "The largest clock skew of a datagram dropped as clock_skew since start \
                 (positive: the sender's clock is ahead of ours)",
                None,
                proto.metric_type(),
            )?;
            ConstGauge::new(c.max_clock_skew_ms as f64 / 1000.0).encode(fam)?;
        }
        {
            let proto = ConstGauge::new(0i64);
            let fam = enc.encode_descriptor(
                "gatewan_mesh_local_health",
                "Lifeguard's local health, 0 (healthy) to 8: this member's probes failing, or \
                 others suspecting it, make it probe that many times slower plus one",
                None,
                proto.metric_type(),
            )?;
            ConstGauge::new(i64::try_from(c.local_health).unwrap_or(i64::MAX)).encode(fam)?;
        }
        let proto = ConstGauge::new(0i64);
        let mut fam = enc.encode_descriptor(
            "gatewan_mesh_members",
            "Mesh members by state (ourselves included)",
            None,
            proto.metric_type(),
        )?;
        for (state, label) in [
            (MemberState::Alive, "alive"),
            (MemberState::Suspect, "suspect"),
            (MemberState::Down, "down"),
        ] {
            let n = view.members.iter().filter(|m| m.state == state).count() as i64;
            ConstGauge::new(n).encode(fam.encode_family(&[("state", label)])?)?;
        }
        Ok(())
    }
}

/// The data plane's counters, read from the kernel at each reconcile.
/// Serves `/metrics` until the task is dropped: the mesh's counters and whatever `extra`
/// collectors the daemon adds (the gatewan's data plane).
pub async fn serve(
    listen: SocketAddr,
    mesh: MeshHandle,
    extra: Vec<Box<dyn Collector>>,
) -> std::io::Result<()> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MeshCollector(mesh)));
    for c in extra {
        registry.register_collector(c);
    }
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                match prometheus_client::encoding::text::encode(&mut body, &registry) {
                    Ok(()) => (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    ),
                    Err(_) => (
                        [(axum::http::header::CONTENT_TYPE, "text/plain")],
                        "encoding error".to_string(),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await
}
