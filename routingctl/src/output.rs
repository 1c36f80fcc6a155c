//! Rendering: a table for people, YAML and JSON (numbers as numbers) for scripts. The
//! field names are the operator contract of ARCHITECTURE.md.

use gatewan_proto::v1;
use serde::Serialize;

use crate::Format;

#[derive(Serialize)]
struct Member {
    id: String,
    name: String,
    datacenter: String,
    role: &'static str,
    state: &'static str,
    addresses: Vec<String>,
    incarnation: u32,
    generation: u32,
    /// RFC 3339, UTC.
    last_change: Option<String>,
    version: String,
    local: bool,
    /// The member's signing key as pinned by the answering member: 16 hex digits of
    /// BLAKE3(public key); empty until the member was seen signing.
    key_fingerprint: String,
    /// Revoked by an admin: the member asked refuses everything it sends.
    revoked: bool,
    /// A gatewan's tunnel slot, as its NodeRecord announces it.
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_slot: Option<u32>,
    /// The gatewan that keeps this slot when another announces it too (ADR 0042); empty
    /// when this member holds its slot.
    #[serde(skip_serializing_if = "String::is_empty")]
    tunnel_slot_held_by: String,
}

pub(crate) fn role(r: i32) -> &'static str {
    match v1::Role::try_from(r) {
        Ok(v1::Role::Gatewan) => "gatewan",
        Ok(v1::Role::Bgpctl) => "bgpctl",
        _ => "unknown",
    }
}

pub(crate) fn state(s: i32) -> &'static str {
    match v1::MemberState::try_from(s) {
        Ok(v1::MemberState::Alive) => "alive",
        Ok(v1::MemberState::Suspect) => "suspect",
        Ok(v1::MemberState::Down) => "down",
        _ => "unknown",
    }
}

fn rfc3339(unix_ms: i64) -> Option<String> {
    let ms = u64::try_from(unix_ms).ok().filter(|&m| m > 0)?;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(t).to_string())
}

fn render<T: Serialize>(v: &T, f: Format) -> anyhow::Result<String> {
    Ok(match f {
        Format::Json => serde_json::to_string_pretty(v)? + "\n",
        Format::Yaml => serde_saphyr::to_string(v)?,
        Format::Table => unreachable!("tables are rendered by each command"),
    })
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let l: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = width[i]))
            .collect();
        out.push_str(l.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub(crate) fn members(members: &[v1::Member], f: Format) -> anyhow::Result<String> {
    let list: Vec<Member> = members
        .iter()
        .map(|m| Member {
            id: m.id.clone(),
            name: m.name.clone(),
            datacenter: m.datacenter.clone(),
            role: role(m.role),
            state: state(m.state),
            addresses: m.addresses.clone(),
            incarnation: m.incarnation,
            generation: m.generation,
            last_change: rfc3339(m.last_change_unix_ms),
            version: m.version.clone(),
            local: m.local,
            key_fingerprint: m.key_fingerprint.clone(),
            revoked: m.revoked,
            tunnel_slot: m.tunnel_slot,
            tunnel_slot_held_by: m.tunnel_slot_held_by.clone(),
        })
        .collect();
    if !matches!(f, Format::Table) {
        return render(&list, f);
    }
    let rows = list
        .iter()
        .map(|m| {
            vec![
                format!("{}{}", m.name, if m.local { " *" } else { "" }),
                m.datacenter.clone(),
                m.role.to_string(),
                if m.revoked {
                    format!("{} revoked", m.state)
                } else {
                    m.state.to_string()
                },
                m.addresses.join(","),
                format!("{}.{}", m.generation, m.incarnation),
                m.last_change.clone().unwrap_or_else(|| "-".into()),
                m.id.clone(),
                if m.key_fingerprint.is_empty() {
                    "-".into()
                } else {
                    m.key_fingerprint.clone()
                },
                match (m.tunnel_slot, m.tunnel_slot_held_by.as_str()) {
                    (None, _) => "-".into(),
                    (Some(s), "") => s.to_string(),
                    (Some(s), holder) => format!("{s} CONFLICT: held by {holder}"),
                },
            ]
        })
        .collect();
    Ok(table(
        &[
            "NAME",
            "DC",
            "ROLE",
            "STATE",
            "ADDRESSES",
            "GEN.INC",
            "LAST CHANGE",
            "ID",
            "KEY",
            "SLOT",
        ],
        rows,
    ))
}

#[derive(Serialize)]
struct Key {
    fingerprint: String,
    primary: bool,
}

pub(crate) fn keys(keys: &[v1::KeyInfo], f: Format) -> anyhow::Result<String> {
    let list: Vec<Key> = keys
        .iter()
        .map(|k| Key {
            fingerprint: k.fingerprint.clone(),
            primary: k.primary,
        })
        .collect();
    if !matches!(f, Format::Table) {
        return render(&list, f);
    }
    let rows = list
        .iter()
        .map(|k| {
            vec![
                k.fingerprint.clone(),
                if k.primary {
                    "primary".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    Ok(table(&["FINGERPRINT", "ROLE"], rows))
}

/// A mesh-wide keyring change: the keys of the member asked, then how many other members
/// applied it and which did not.
pub(crate) fn keyring_change(r: &v1::KeyringResponse, f: Format) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Failure<'a> {
        member_id: &'a str,
        name: &'a str,
        error: &'a str,
    }
    #[derive(Serialize)]
    struct Change<'a> {
        keys: Vec<Key>,
        members_asked: u32,
        members_applied: u32,
        failures: Vec<Failure<'a>>,
    }
    let failures: Vec<Failure> = r
        .failures
        .iter()
        .map(|x| Failure {
            member_id: &x.member_id,
            name: &x.name,
            error: &x.error,
        })
        .collect();
    let applied = r.members_asked.saturating_sub(failures.len() as u32);
    if !matches!(f, Format::Table) {
        let change = Change {
            keys: r
                .keys
                .iter()
                .map(|k| Key {
                    fingerprint: k.fingerprint.clone(),
                    primary: k.primary,
                })
                .collect(),
            members_asked: r.members_asked,
            members_applied: applied,
            failures,
        };
        return render(&change, f);
    }
    let mut out = keys(&r.keys, f)?;
    out.push_str(&format!(
        "\napplied on this member and {applied} of {} other members\n",
        r.members_asked
    ));
    if !failures.is_empty() {
        let rows = failures
            .iter()
            .map(|x| {
                let name = if x.name.is_empty() { "-" } else { x.name };
                vec![
                    name.to_string(),
                    x.member_id.to_string(),
                    x.error.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["NOT APPLIED ON", "ID", "WHY"], rows));
    }
    Ok(out)
}

/// The public key after `tunnels rotate-key`.
pub(crate) fn revoked(node_id: &str, version: u64, f: Format) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Revoked<'a> {
        revoked: &'a str,
        version: u64,
    }
    match f {
        Format::Table => Ok(format!(
            "revoked {node_id}: the revocation spreads to every member\n"
        )),
        _ => render(
            &Revoked {
                revoked: node_id,
                version,
            },
            f,
        ),
    }
}

pub(crate) fn rotated_key(public_key: &str, f: Format) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Rotated<'a> {
        public_key: &'a str,
    }
    match f {
        Format::Table => Ok(format!("new WireGuard public key: {public_key}\n")),
        _ => render(&Rotated { public_key }, f),
    }
}

/// `routingctl trace`: one block per path, its hops numbered as traceroute numbers them.
pub(crate) fn trace(r: &v1::TraceResponse, f: Format) -> anyhow::Result<String> {
    if !matches!(f, Format::Table) {
        return render(r, f);
    }
    let mut out = format!(
        "{} is in {} ({}): {} path(s), the fabric spreads flows over them\n",
        r.destination,
        r.prefix,
        if r.datacenter.is_empty() {
            "datacenter unknown"
        } else {
            r.datacenter.as_str()
        },
        r.paths.len()
    );
    for (i, p) in r.paths.iter().enumerate() {
        out.push_str(&format!("path {}\n", i + 1));
        out.push_str(&format!(
            "  1  fabric route  RD {}, next hop {}, Router's MAC {}, VNI {}\n",
            p.rd, p.next_hop, p.router_mac, p.vni
        ));
        match &p.tunnel {
            Some(t) => {
                let m = t.metrics.clone().unwrap_or_default();
                out.push_str(&format!(
                    "  2  {}  tunnel {} ({}→{}): {}; {}, latency {}, loss {}\n",
                    t.gatewan,
                    t.interface,
                    t.local_transit,
                    t.peer_transit,
                    t.verdict,
                    m.state,
                    duration(u64::from(m.latency_us) * 1000),
                    percent(f64::from(m.loss_ppm) / 1e6),
                ));
                out.push_str(&format!("  3  {}  ({})\n", p.remote_gatewan, r.datacenter));
            }
            None => out.push_str(
                "  2  ?  no chosen tunnel has this next hop and MAC (the route is older than the \
                 last decision: try again)\n",
            ),
        }
        if p.egress.is_empty() {
            out.push_str("  4  ?  no VTEP of the remote fabric announces the prefix\n");
        }
        for e in &p.egress {
            out.push_str(&format!(
                "  4  remote fabric  VTEP {}, Router's MAC {}, VNI {} (learned by {})\n",
                e.vtep, e.router_mac, e.vni, e.learned_by
            ));
        }
    }
    Ok(out)
}

/// One line of `routingctl probe`, as its outcome arrives.
pub(crate) fn probe_line(o: &v1::ProbeOutcome) -> String {
    if o.lost {
        format!("{} seq={} lost\n", o.interface, o.seq)
    } else {
        format!(
            "{} to {} seq={} time={}\n",
            o.interface,
            o.peer,
            o.seq,
            duration(o.rtt_ns)
        )
    }
}

/// The end of `routingctl probe`: sent, lost, and min/avg/max/mdev of the round trips
/// (mdev as ping computes it).
pub(crate) fn probe_summary(outcomes: &[v1::ProbeOutcome], f: Format) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Summary<'a> {
        outcomes: &'a [v1::ProbeOutcome],
        sent: usize,
        lost: usize,
        loss: f64,
        rtt_min_ns: Option<u64>,
        rtt_avg_ns: Option<u64>,
        rtt_max_ns: Option<u64>,
        rtt_mdev_ns: Option<u64>,
    }
    let rtts: Vec<f64> = outcomes
        .iter()
        .filter(|o| !o.lost)
        .map(|o| o.rtt_ns as f64)
        .collect();
    let sent = outcomes.len();
    let lost = sent - rtts.len();
    let avg = (!rtts.is_empty()).then(|| rtts.iter().sum::<f64>() / rtts.len() as f64);
    let mdev = avg
        .map(|a| (rtts.iter().map(|r| (r - a) * (r - a)).sum::<f64>() / rtts.len() as f64).sqrt());
    let min = rtts.iter().copied().reduce(f64::min);
    let max = rtts.iter().copied().reduce(f64::max);
    let s = Summary {
        outcomes,
        sent,
        lost,
        loss: if sent == 0 {
            0.0
        } else {
            lost as f64 / sent as f64
        },
        rtt_min_ns: min.map(|v| v as u64),
        rtt_avg_ns: avg.map(|v| v as u64),
        rtt_max_ns: max.map(|v| v as u64),
        rtt_mdev_ns: mdev.map(|v| v as u64),
    };
    if !matches!(f, Format::Table) {
        return render(&s, f);
    }
    let d = |v: Option<u64>| v.map_or("-".to_string(), duration);
    Ok(format!(
        "{} probes, {} lost ({}); rtt min/avg/max/mdev = {}/{}/{}/{}\n",
        s.sent,
        s.lost,
        percent(s.loss),
        d(s.rtt_min_ns),
        d(s.rtt_avg_ns),
        d(s.rtt_max_ns),
        d(s.rtt_mdev_ns)
    ))
}

/// `routingctl tunnels disable|enable TUNNEL`.
pub(crate) fn disabled(r: &v1::SetDisabledResponse, f: Format) -> anyhow::Result<String> {
    if !matches!(f, Format::Table) {
        return render(r, f);
    }
    let t = format!("tunnel {} ({})", r.interface, r.tunnel);
    Ok(match (r.disabled, r.changed) {
        (true, true) => format!(
            "{t} disabled: the controllers move traffic off it (routingctl explain on a bgpctl says so)\n"
        ),
        (true, false) => format!("{t} was already disabled\n"),
        (false, true) => format!("{t} enabled: a candidate again\n"),
        (false, false) => format!("{t} was not disabled\n"),
    })
}

/// `routingctl transits`: a gatewan's transits as it announces them.
pub(crate) fn transits(list: &[v1::Transit], f: Format) -> anyhow::Result<String> {
    if !matches!(f, Format::Table) {
        return render(&list, f);
    }
    let rows = list
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.interface.clone(),
                t.addresses.join(","),
                rate(t.capacity_bps),
                t.cost.to_string(),
                if t.drained { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "NAME",
            "INTERFACE",
            "ADDRESSES",
            "CAPACITY",
            "COST",
            "DRAINED",
        ],
        rows,
    ))
}

/// `routingctl transits drain|undrain NAME`.
pub(crate) fn drained(r: &v1::SetDrainedResponse, f: Format) -> anyhow::Result<String> {
    if !matches!(f, Format::Table) {
        return render(r, f);
    }
    let t = r.transit.clone().unwrap_or_default();
    Ok(match (t.drained, r.changed) {
        (true, true) => format!(
            "transit {} drained: the controllers move traffic off its tunnels (routingctl explain on a bgpctl says so)\n",
            t.name
        ),
        (true, false) => format!("transit {} was already drained\n", t.name),
        (false, true) => format!(
            "transit {} undrained: its tunnels are candidates again\n",
            t.name
        ),
        (false, false) => format!("transit {} was not drained\n", t.name),
    })
}

pub(crate) fn rate(bps: u64) -> String {
    let b = bps as f64;
    if b >= 1e9 {
        format!("{:.1} Gbps", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} Mbps", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kbps", b / 1e3)
    } else {
        format!("{bps} bps")
    }
}

fn percent(f: f64) -> String {
    format!("{:.1}%", f * 100.0)
}

fn duration(ns: u64) -> String {
    format!("{:?}", std::time::Duration::from_nanos(ns))
}

/// One tunnel as shown: the YAML layout operators know from the original deployment (humane
/// units) and JSON (numbers as numbers) differ only in networks, usage and probe.
#[derive(Serialize)]
struct TunnelView<N, U, P> {
    id: String,
    networks: N,
    meta: Meta,
    usage: U,
    probe: P,
    peer: String,
    state: String,
    /// Disabled by an operator of this gatewan (`tunnels disable`); absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disabled: bool,
    target_datacenter: String,
    interface: String,
    router_mac: String,
    /// The tunnel's own VTEP (`fabric.tunnel_vteps`); absent when it uses the gatewan's.
    #[serde(skip_serializing_if = "Option::is_none")]
    vtep: Option<String>,
    rd: String,
    started_at: String,
    local_info: EndInfo,
    peer_info: EndInfo,
}

fn view<N, U, P>(t: &v1::TunnelInfo, networks: N, usage: U, probe: P) -> TunnelView<N, U, P> {
    TunnelView {
        id: t.id.clone(),
        networks,
        meta: meta(t),
        usage,
        probe,
        peer: t.peer.clone(),
        state: t.state.clone(),
        disabled: t.disabled,
        target_datacenter: t.target_datacenter.clone(),
        interface: t.interface.clone(),
        router_mac: t.router_mac.clone(),
        vtep: (!t.vtep.is_empty()).then(|| t.vtep.clone()),
        rd: t.rd.clone(),
        started_at: rfc3339(t.started_at_unix_ms).unwrap_or_default(),
        local_info: end(&t.local_info),
        peer_info: end(&t.peer_info),
    }
}

#[derive(Serialize)]
struct Meta {
    datacenter: String,
    local_transit: String,
    peer_transit: String,
}

#[derive(Serialize)]
struct UsageYaml {
    capacity: String,
    rx_bps: String,
    tx_bps: String,
}

#[derive(Serialize)]
struct ProbeYaml {
    source_addr: String,
    target_endpoint: String,
    measurements: u32,
    loss: String,
    latency: String,
    jitter: String,
    reorder: String,
}

#[derive(Serialize)]
struct EndInfo {
    public_endpoint: String,
    local_address_v4: String,
    local_address_v6: String,
    public_key: String,
    echo_port: u32,
}

#[derive(Serialize)]
struct UsageJson {
    capacity: u64,
    rx_bps: u64,
    tx_bps: u64,
}

#[derive(Serialize)]
struct ProbeJson {
    source_addr: String,
    target_endpoint: String,
    measurements: u32,
    loss: f64,
    latency_ns: u64,
    jitter_ns: u64,
    reorder: f64,
}

fn end(e: &Option<v1::TunnelEndInfo>) -> EndInfo {
    let e = e.clone().unwrap_or_default();
    EndInfo {
        public_endpoint: e.public_endpoint,
        local_address_v4: e.local_address_v4,
        local_address_v6: e.local_address_v6,
        public_key: e.public_key,
        echo_port: e.echo_port,
    }
}

fn meta(t: &v1::TunnelInfo) -> Meta {
    Meta {
        datacenter: t.datacenter.clone(),
        local_transit: t
            .local_info
            .as_ref()
            .map(|e| e.transit.clone())
            .unwrap_or_default(),
        peer_transit: t
            .peer_info
            .as_ref()
            .map(|e| e.transit.clone())
            .unwrap_or_default(),
    }
}

pub(crate) fn tunnels(list: &[v1::TunnelInfo], f: Format) -> anyhow::Result<String> {
    match f {
        Format::Yaml => render(
            &list
                .iter()
                .map(|t| {
                    let usage = UsageYaml {
                        capacity: rate(t.capacity_bps),
                        rx_bps: rate(t.rx_bps),
                        tx_bps: rate(t.tx_bps),
                    };
                    let probe = ProbeYaml {
                        source_addr: t.probe_source_addr.clone(),
                        target_endpoint: t.probe_target_endpoint.clone(),
                        measurements: t.measurements,
                        loss: percent(t.loss),
                        latency: duration(t.latency_ns),
                        jitter: duration(t.jitter_ns),
                        reorder: percent(t.reorder),
                    };
                    view(t, t.networks.join(", "), usage, probe)
                })
                .collect::<Vec<_>>(),
            f,
        ),
        Format::Json => render(
            &list
                .iter()
                .map(|t| {
                    let usage = UsageJson {
                        capacity: t.capacity_bps,
                        rx_bps: t.rx_bps,
                        tx_bps: t.tx_bps,
                    };
                    let probe = ProbeJson {
                        source_addr: t.probe_source_addr.clone(),
                        target_endpoint: t.probe_target_endpoint.clone(),
                        measurements: t.measurements,
                        loss: t.loss,
                        latency_ns: t.latency_ns,
                        jitter_ns: t.jitter_ns,
                        reorder: t.reorder,
                    };
                    view(t, t.networks.clone(), usage, probe)
                })
                .collect::<Vec<_>>(),
            f,
        ),
        Format::Table => {
            let rows = list
                .iter()
                .map(|t| {
                    let m = meta(t);
                    vec![
                        t.interface.clone(),
                        t.peer.clone(),
                        t.target_datacenter.clone(),
                        format!("{}→{}", m.local_transit, m.peer_transit),
                        t.state.clone(),
                        percent(t.loss),
                        duration(t.latency_ns),
                        duration(t.jitter_ns),
                        format!("{}/{}", rate(t.rx_bps), rate(t.tx_bps)),
                        rate(t.capacity_bps),
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "INTERFACE",
                    "PEER",
                    "DC",
                    "TRANSITS",
                    "STATE",
                    "LOSS",
                    "LATENCY",
                    "JITTER",
                    "RX/TX",
                    "CAPACITY",
                ],
                rows,
            ))
        }
    }
}

#[derive(Serialize)]
struct Peer {
    address: String,
    asn: u32,
    state: String,
    /// RFC 3339, UTC; absent when not Established.
    established_since: Option<String>,
    uptime_s: u64,
    router_id: String,
    hold_time_s: u32,
    prefixes_received: u64,
    prefixes_stale: u64,
    prefixes_sent: u64,
    updates_received: u64,
    updates_sent: u64,
    last_error: String,
    treat_as_withdraw: u64,
    attributes_discarded: u64,
    malformed_resets: u64,
    routes_filtered: u64,
    routes_over_limit: u64,
    max_prefix_teardowns: u64,
}

pub(crate) fn uptime(s: u64) -> String {
    if s == 0 {
        return "-".into();
    }
    let (d, h, m) = (s / 86400, s / 3600 % 24, s / 60 % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else {
        format!("{h:02}:{m:02}:{:02}", s % 60)
    }
}

/// `routingctl peers`: the BGP sessions of a bgpctl.
pub(crate) fn peers(list: &[v1::BgpPeer], f: Format) -> anyhow::Result<String> {
    let view: Vec<Peer> = list
        .iter()
        .map(|p| Peer {
            address: p.address.clone(),
            asn: p.asn,
            state: p.state.clone(),
            established_since: rfc3339(p.established_since_unix_ms),
            uptime_s: p.uptime_s,
            router_id: p.router_id.clone(),
            hold_time_s: p.hold_time_s,
            prefixes_received: p.prefixes_received,
            prefixes_stale: p.prefixes_stale,
            prefixes_sent: p.prefixes_sent,
            updates_received: p.updates_received,
            updates_sent: p.updates_sent,
            last_error: p.last_error.clone(),
            treat_as_withdraw: p.treat_as_withdraw,
            attributes_discarded: p.attributes_discarded,
            malformed_resets: p.malformed_resets,
            routes_filtered: p.routes_filtered,
            routes_over_limit: p.routes_over_limit,
            max_prefix_teardowns: p.max_prefix_teardowns,
        })
        .collect();
    if !matches!(f, Format::Table) {
        return render(&view, f);
    }
    let rows = view
        .iter()
        .map(|p| {
            vec![
                p.address.clone(),
                p.asn.to_string(),
                p.state.clone(),
                uptime(p.uptime_s),
                format!("{}/{}", p.prefixes_received, p.prefixes_sent),
                p.routes_filtered.to_string(),
                if p.last_error.is_empty() {
                    "-".into()
                } else {
                    p.last_error.clone()
                },
            ]
        })
        .collect();
    Ok(table(
        &[
            "PEER",
            "AS",
            "STATE",
            "UPTIME",
            "RCVD/SENT",
            "FILTERED",
            "LAST ERROR",
        ],
        rows,
    ))
}

#[derive(Serialize)]
struct Route {
    direction: String,
    rd: String,
    prefix: String,
    next_hop: String,
    router_mac: String,
    vni: u32,
    route_targets: Vec<String>,
    /// Bits per second; absent without the link-bandwidth community.
    link_bandwidth_bps: Option<u64>,
    /// The peer it was received from.
    peer: Option<String>,
    stale: bool,
}

/// `routingctl routes`: type-5 routes, in GoBGP's notation as the Criteo talk showed them.
pub(crate) fn routes(list: &[v1::BgpRoute], f: Format) -> anyhow::Result<String> {
    let view: Vec<Route> = list
        .iter()
        .map(|r| Route {
            direction: r.direction.clone(),
            rd: r.rd.clone(),
            prefix: r.prefix.clone(),
            next_hop: r.next_hop.clone(),
            router_mac: r.router_mac.clone(),
            vni: r.vni,
            route_targets: r.route_targets.clone(),
            link_bandwidth_bps: (r.link_bandwidth_bps > 0).then_some(r.link_bandwidth_bps),
            peer: (!r.peer.is_empty()).then(|| r.peer.clone()),
            stale: r.stale,
        })
        .collect();
    if !matches!(f, Format::Table) {
        return render(&view, f);
    }
    let mut out = String::new();
    for r in &view {
        let mut comms = vec![format!("router's mac: {}", r.router_mac)];
        comms.push("encap: VXLAN".into());
        comms.extend(r.route_targets.iter().map(|t| format!("rt: {t}")));
        if let Some(bw) = r.link_bandwidth_bps {
            comms.push(format!("link-bandwidth: {}", rate(bw)));
        }
        let mark = match (r.direction.as_str(), r.stale) {
            ("advertised", _) => "*>",
            (_, true) => "S ",
            _ => "* ",
        };
        let from = r
            .peer
            .as_ref()
            .map(|p| format!(" from {p}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{mark} [type:Prefix][rd:{}][prefix:{}] [{}] {} [{{Extcomms: [{}]}}]{from}\n",
            r.rd,
            r.prefix,
            r.vni,
            r.next_hop,
            comms.join("], [")
        ));
    }
    Ok(out)
}

/// `routingctl explain`: the controller's explanation as YAML, JSON or a table of
/// candidates per remote datacenter. The table names tunnels as `routingctl tunnels` does
/// (interface, peer, transits); YAML and JSON also carry the tunnel id.
pub(crate) fn explain(r: &v1::ExplainResponse, f: Format) -> anyhow::Result<String> {
    let Some(explanation) = &r.explanation else {
        anyhow::bail!("bgpctl sent no explanation");
    };
    if !matches!(f, Format::Table) {
        #[derive(Serialize)]
        struct Both<'a> {
            explanation: &'a v1::Explanation,
            history: &'a [v1::DecisionChange],
        }
        return render(
            &Both {
                explanation,
                history: &r.history,
            },
            f,
        );
    }
    let mut out = String::new();
    for r in &explanation.remotes {
        out.push_str(&format!(
            "datacenter {}: required {}, chosen {}{}\n",
            r.datacenter,
            rate(r.required_bps),
            rate(r.chosen_bps),
            if r.shortfall_bps > 0 {
                format!(", SHORT by {}", rate(r.shortfall_bps))
            } else {
                String::new()
            }
        ));
        if !r.summary.is_empty() {
            out.push_str(&format!("  {}\n", r.summary));
        }
        let rows = r
            .candidates
            .iter()
            .map(|c| {
                vec![
                    c.rank.map_or("-".into(), |r| r.to_string()),
                    if c.chosen { "yes" } else { "no" }.into(),
                    c.interface.clone(),
                    c.gatewan.clone(),
                    c.peer.clone(),
                    format!("{}→{}", c.local_transit, c.peer_transit),
                    format!("{:.3}", c.score),
                    c.verdict.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "RANK",
                "CHOSEN",
                "INTERFACE",
                "GATEWAN",
                "PEER",
                "TRANSITS",
                "SCORE",
                "WHY",
            ],
            rows,
        ));
        out.push('\n');
    }
    out.push_str(&format!(
        "{} decision changes in history (-o yaml shows them)\n",
        r.history.len()
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_table_names_tunnels_by_interface_peer_and_transits() {
        let response = v1::ExplainResponse {
            explanation: Some(v1::Explanation {
                datacenter: "sg1".into(),
                remotes: vec![v1::RemoteExplanation {
                    datacenter: "par1".into(),
                    required_bps: 1_500_000_000,
                    chosen_bps: 2_000_000_000,
                    shortfall_bps: 0,
                    summary: "2 tunnel(s) give 2.0 Gbps for 1.5 Gbps required: \
                              gatewan01-sg1/sdwan1 to gatewan01-par1 via lumen→lumen, \
                              gatewan01-sg1/sdwan4 to gatewan01-par1 via cogent→cogent"
                        .into(),
                    candidates: vec![v1::Candidate {
                        tunnel: "01016c02-016c-0505-0000-000000000000".into(),
                        interface: "sdwan1".into(),
                        gatewan: "gatewan01-sg1".into(),
                        peer: "gatewan01-par1".into(),
                        local_transit: "lumen".into(),
                        peer_transit: "lumen".into(),
                        score: 0.0012,
                        rank: Some(1),
                        chosen: true,
                        verdict: "chosen_for_capacity".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            history: Vec::new(),
        };
        let out = explain(&response, Format::Table).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "datacenter par1: required 1.5 Gbps, chosen 2.0 Gbps"
        );
        assert!(lines[1].contains("gatewan01-sg1/sdwan1 to gatewan01-par1 via lumen→lumen"));
        let header: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "RANK",
                "CHOSEN",
                "INTERFACE",
                "GATEWAN",
                "PEER",
                "TRANSITS",
                "SCORE",
                "WHY"
            ]
        );
        let row: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "1",
                "yes",
                "sdwan1",
                "gatewan01-sg1",
                "gatewan01-par1",
                "lumen→lumen",
                "0.001",
                "chosen_for_capacity"
            ]
        );
        assert!(
            !out.contains("01016c02"),
            "no tunnel id in the table:\n{out}"
        );
    }
}
