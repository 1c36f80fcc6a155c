//! A raw TCP test peer with hand-built messages: malformed OPENs get the RFC 4271
//! NOTIFICATIONs, malformed UPDATEs the RFC 7606 treatment (treat-as-withdraw and
//! attribute discard keep the session up; unparseable messages reset it with 3/x), the
//! hold timer expires with 4/0, and a ROUTE-REFRESH is answered with the Adj-RIB-Out.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bgpctl::bgp::codec::{ExportContext, announce_updates};
use bgpctl::bgp::{PeerSettings, PeerState, SpeakerSettings, Type5Route};
use common::*;

const PEER_AS: u32 = 65001;

/// One BGP message: header (marker, length, type) and body.
fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// Capabilities: multiprotocol L2VPN EVPN, route refresh, 4-octet AS.
fn capabilities(evpn: bool) -> Vec<u8> {
    let mut caps = Vec::new();
    if evpn {
        caps.extend_from_slice(&[1, 4, 0, 25, 0, 70]);
    } else {
        caps.extend_from_slice(&[1, 4, 0, 1, 0, 1]);
    }
    caps.extend_from_slice(&[2, 0]);
    caps.extend_from_slice(&[65, 4]);
    caps.extend_from_slice(&PEER_AS.to_be_bytes());
    caps
}

fn open_with(version: u8, asn: u16, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut b = vec![version];
    b.extend_from_slice(&asn.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(params.len() as u8);
    b.extend_from_slice(params);
    message(1, &b)
}

fn cap_param(caps: &[u8]) -> Vec<u8> {
    let mut p = vec![2, caps.len() as u8];
    p.extend_from_slice(caps);
    p
}

fn good_open(hold: u16) -> Vec<u8> {
    open_with(
        4,
        PEER_AS as u16,
        hold,
        [10, 0, 0, 2],
        &cap_param(&capabilities(true)),
    )
}

const KEEPALIVE: [u8; 19] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0, 19, 4,
];

struct RawPeer {
    s: TcpStream,
}

impl RawPeer {
    /// Connects from the peer namespace to the speaker's listener.
    fn connect(pair: &Pair) -> RawPeer {
        let s = pair.b.run(|| {
            let to: SocketAddr = format!("{A4}:179").parse().unwrap();
            let mut last = None;
            for _ in 0..50 {
                match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                    Ok(s) => return s,
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("connect to the speaker: {last:?}");
        });
        RawPeer { s }
    }

    fn send(&mut self, m: &[u8]) {
        self.s.write_all(m).expect("send");
    }

    /// The next message (type, body), or None on timeout or close.
    fn recv(&mut self, timeout: Duration) -> Option<(u8, Vec<u8>)> {
        self.s.set_read_timeout(Some(timeout)).ok()?;
        let mut h = [0u8; 19];
        self.s.read_exact(&mut h).ok()?;
        let len = usize::from(u16::from_be_bytes([h[16], h[17]]));
        let mut body = vec![0u8; len.saturating_sub(19)];
        self.s.read_exact(&mut body).ok()?;
        Some((h[18], body))
    }

    /// Waits for a NOTIFICATION, skipping other messages: (code, subcode).
    fn notification(&mut self, timeout: Duration) -> Option<(u8, u8)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.recv(deadline - Instant::now())? {
                (3, body) if body.len() >= 2 => return Some((body[0], body[1])),
                _ => continue,
            }
        }
        None
    }

    /// OPEN exchange up to Established.
    fn establish(pair: &Pair, hold: u16) -> RawPeer {
        let mut p = RawPeer::connect(pair);
        let (t, _) = p.recv(Duration::from_secs(5)).expect("speaker's OPEN");
        assert_eq!(t, 1);
        p.send(&good_open(hold));
        let (t, _) = p.recv(Duration::from_secs(5)).expect("KEEPALIVE");
        assert_eq!(t, 4, "expected KEEPALIVE after our OPEN");
        p.send(&KEEPALIVE);
        p
    }

    /// Sends `open` and returns the NOTIFICATION it earns.
    fn refused(pair: &Pair, open: &[u8]) -> Option<(u8, u8)> {
        let mut p = RawPeer::connect(pair);
        let (t, _) = p.recv(Duration::from_secs(5)).expect("speaker's OPEN");
        assert_eq!(t, 1);
        p.send(open);
        p.notification(Duration::from_secs(5))
    }
}

fn start(pair: &Pair, hold: u64) -> Speaker {
    let mut peer = PeerSettings::new(B4.parse().unwrap(), PEER_AS);
    peer.passive = true;
    peer.hold_time = Duration::from_secs(hold);
    Speaker::start(
        &pair.a,
        SpeakerSettings {
            listen: Some("0.0.0.0:179".parse().unwrap()),
            ..speaker_settings(peer)
        },
    )
}

fn peer_route(prefix: &str) -> Type5Route {
    let mut r = route("65001:1", prefix, 10100, "192.0.2.1", 9);
    r.route_targets = vec!["65000:100".parse().unwrap()];
    r
}

/// A valid UPDATE from the peer (AS 65001) for `r`.
fn update(r: &Type5Route) -> Vec<u8> {
    let ctx = ExportContext {
        local_asn: PEER_AS,
        ibgp: false,
        four_octet_as: true,
    };
    announce_updates(&[r], &ctx)[0].to_vec()
}

/// The attributes of an UPDATE without withdrawn routes, split one per element.
fn attributes(m: &[u8]) -> Vec<Vec<u8>> {
    let attrs = &m[23..];
    let mut out = Vec::new();
    let mut i = 0;
    while i < attrs.len() {
        let (len, hdr) = if attrs[i] & 0x10 != 0 {
            (
                usize::from(u16::from_be_bytes([attrs[i + 2], attrs[i + 3]])),
                4,
            )
        } else {
            (usize::from(attrs[i + 2]), 3)
        };
        out.push(attrs[i..i + hdr + len].to_vec());
        i += hdr + len;
    }
    out
}

fn with_attributes(parts: &[Vec<u8>]) -> Vec<u8> {
    let attrs = parts.concat();
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(&attrs);
    message(2, &body)
}

fn received_prefixes(s: &Speaker) -> Vec<String> {
    s.received()
        .iter()
        .map(|r| r.route.prefix.to_string())
        .collect()
}

fn wait_received(s: &Speaker, want: &[&str]) {
    let ok = wait_until(Duration::from_secs(5), || received_prefixes(s) == want);
    assert!(ok, "received {:?}, want {want:?}", received_prefixes(s));
}

#[test]
fn malformed_opens_get_the_rfc4271_notifications() {
    const TEST: &str = "malformed_opens_get_the_rfc4271_notifications";
    if !ready(TEST, &[]) {
        return;
    }
    let pair = Pair::new("bad-open");
    let speaker = start(&pair, 9);
    let caps = cap_param(&capabilities(true));
    // (case, OPEN sent, NOTIFICATION code/subcode expected, its description)
    type Case = (&'static str, Vec<u8>, (u8, u8), &'static str);
    let cases: Vec<Case> = vec![
        (
            "version 3",
            open_with(3, 65001, 9, [10, 0, 0, 2], &caps),
            (2, 1),
            "Unsupported Version Number",
        ),
        (
            "wrong AS",
            {
                let mut c = capabilities(true);
                let n = c.len();
                c[n - 4..].copy_from_slice(&65099u32.to_be_bytes());
                open_with(4, 65099, 9, [10, 0, 0, 2], &cap_param(&c))
            },
            (2, 2),
            "Bad Peer AS",
        ),
        (
            "BGP identifier 0.0.0.0",
            open_with(4, 65001, 9, [0, 0, 0, 0], &caps),
            (2, 3),
            "Bad BGP Identifier",
        ),
        (
            "optional parameter type 1",
            open_with(
                4,
                65001,
                9,
                [10, 0, 0, 2],
                &[&caps[..], &[1, 2, 0, 0]].concat(),
            ),
            (2, 4),
            "Unsupported Optional Parameter",
        ),
        (
            "hold time 2 s",
            open_with(4, 65001, 2, [10, 0, 0, 2], &caps),
            (2, 6),
            "Unacceptable Hold Time",
        ),
        (
            "no L2VPN EVPN",
            open_with(4, 65001, 9, [10, 0, 0, 2], &cap_param(&capabilities(false))),
            (2, 7),
            "Unsupported Capability",
        ),
        (
            "bad marker",
            {
                let mut m = good_open(9);
                m[3] = 0;
                m
            },
            (1, 1),
            "Connection Not Synchronized",
        ),
    ];
    for (name, open, want, text) in cases {
        let got = RawPeer::refused(&pair, &open);
        assert_eq!(got, Some(want), "{name}");
        let err = speaker.status(B4).last_error.unwrap_or_default();
        assert_eq!(
            err,
            format!("sent NOTIFICATION {}/{} ({text})", want.0, want.1),
            "{name}"
        );
        assert_ne!(speaker.state(B4), PeerState::Established, "{name}");
    }
}

#[test]
fn hold_timer_expiry_sends_4_0() {
    const TEST: &str = "hold_timer_expiry_sends_4_0";
    if !ready(TEST, &[]) {
        return;
    }
    let pair = Pair::new("hold");
    let speaker = start(&pair, 9);
    let mut p = RawPeer::establish(&pair, 3);
    speaker.wait_established(B4, Duration::from_secs(5));
    assert_eq!(speaker.status(B4).hold_time, Some(Duration::from_secs(3)));
    let t0 = Instant::now();
    // Silent peer: the speaker's KEEPALIVEs arrive (every second), then 4/0 after 3 s.
    assert_eq!(p.notification(Duration::from_secs(6)), Some((4, 0)));
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let down = wait_until(Duration::from_secs(2), || {
        speaker.state(B4) != PeerState::Established
    });
    assert!(down, "{:?}", speaker.status(B4));
    assert_eq!(
        speaker.status(B4).last_error.as_deref(),
        Some("sent NOTIFICATION 4/0 (Hold Timer Expired)")
    );
}

#[test]
fn rfc7606_updates_and_route_refresh() {
    const TEST: &str = "rfc7606_updates_and_route_refresh";
    if !ready(TEST, &[]) {
        return;
    }
    let pair = Pair::new("rfc7606");
    let speaker = start(&pair, 30);
    // Something to answer a route refresh with: two attribute groups.
    let ours = vec![
        route("65000:1", "10.1.0.0/16", 10100, A4, 1),
        route("65000:1", "10.2.0.0/16", 10100, A4, 1),
        route("65000:1", "10.3.0.0/16", 10100, A4, 2),
    ];
    speaker.handle().set_advertised(ours);
    let mut p = RawPeer::establish(&pair, 30);
    speaker.wait_established(B4, Duration::from_secs(5));
    // Initial table: 2 UPDATEs, then End-of-RIB.
    let mut updates = 0;
    loop {
        let (t, body) = p.recv(Duration::from_secs(5)).expect("initial table");
        if t == 2 {
            if body == [0, 0, 0, 6, 0x80, 15, 3, 0, 25, 70] {
                break;
            }
            updates += 1;
        }
    }
    assert_eq!(updates, 2);

    let good = update(&peer_route("10.9.0.0/16"));
    p.send(&good);
    wait_received(&speaker, &["10.9.0.0/16"]);

    // Treat-as-withdraw: ORIGIN 7 withdraws the route, the session stays.
    let mut parts = attributes(&good);
    parts[0] = vec![0x40, 1, 1, 7];
    p.send(&with_attributes(&parts));
    wait_received(&speaker, &[]);
    assert_eq!(speaker.status(B4).input.treat_as_withdraw, 1);

    // Attribute discard: ATOMIC_AGGREGATE with a value; the route is used.
    let mut parts = attributes(&good);
    parts.push(vec![0x40, 6, 1, 0]);
    p.send(&with_attributes(&parts));
    wait_received(&speaker, &["10.9.0.0/16"]);
    assert_eq!(speaker.status(B4).input.attributes_discarded, 1);

    // An unknown optional transitive attribute passes.
    let other = update(&peer_route("10.8.0.0/16"));
    let mut parts = attributes(&other);
    parts.push(vec![0xc0, 222, 3, 1, 2, 3]);
    p.send(&with_attributes(&parts));
    wait_received(&speaker, &["10.8.0.0/16", "10.9.0.0/16"]);
    assert_eq!(speaker.state(B4), PeerState::Established);

    // ROUTE-REFRESH for L2VPN EVPN: exactly the two UPDATEs of the Adj-RIB-Out.
    p.send(&message(5, &[0, 25, 0, 70]));
    let mut refreshed = 0;
    while let Some((t, _)) = p.recv(Duration::from_secs(2)) {
        refreshed += u32::from(t == 2);
    }
    assert_eq!(refreshed, 2);
    assert_eq!(speaker.state(B4), PeerState::Established);
    assert_eq!(speaker.status(B4).input.malformed_resets, 0);

    // Unparseable: type-5 NLRI length one short inside MP_REACH_NLRI → 3/9, reset.
    let mut parts = attributes(&good);
    let mp = &mut parts[2];
    assert_eq!((mp[0], mp[1], mp[12], mp[13]), (0x80, 14, 5, 34));
    mp[2] -= 1;
    mp[13] = 33;
    mp.pop();
    p.send(&with_attributes(&parts));
    assert_eq!(p.notification(Duration::from_secs(5)), Some((3, 9)));
    // The peer's routes go with the session (no graceful restart here).
    wait_received(&speaker, &[]);
    assert_eq!(speaker.status(B4).input.malformed_resets, 1);

    // Unknown well-known attribute → 3/2.
    let mut p = RawPeer::establish(&pair, 30);
    speaker.wait_established(B4, Duration::from_secs(5));
    let mut parts = attributes(&good);
    parts.push(vec![0x40, 99, 1, 0]);
    p.send(&with_attributes(&parts));
    assert_eq!(p.notification(Duration::from_secs(5)), Some((3, 2)));

    // Withdrawn-routes length beyond the message → 3/1.
    let mut p = RawPeer::establish(&pair, 30);
    speaker.wait_established(B4, Duration::from_secs(5));
    p.send(&message(2, &[0, 50, 0, 0]));
    assert_eq!(p.notification(Duration::from_secs(5)), Some((3, 1)));

    // Message length beyond 4096 → 1/2.
    let mut p = RawPeer::establish(&pair, 30);
    speaker.wait_established(B4, Duration::from_secs(5));
    let mut m = good.clone();
    m[16] = 0x20;
    p.send(&m);
    assert_eq!(p.notification(Duration::from_secs(5)), Some((1, 2)));
    assert_eq!(speaker.status(B4).input.malformed_resets, 4);
    let peer: IpAddr = B4.parse().unwrap();
    assert!(speaker.received().from_peer(peer).next().is_none());
}

/// OPEN with the given BGP identifier.
fn open_from(id: [u8; 4]) -> Vec<u8> {
    open_with(4, PEER_AS as u16, 9, id, &cap_param(&capabilities(true)))
}

/// Both sides connect at once (RFC 4271 §6.8): the connection initiated by the side with
/// the higher BGP identifier survives, the other is closed with Cease 6/7.
#[test]
fn connection_collisions() {
    const TEST: &str = "connection_collisions";
    if !ready(TEST, &[]) {
        return;
    }
    // (peer's identifier, does the peer's connection survive?)
    for (id, inbound_wins) in [([10, 0, 0, 2], true), ([1, 1, 1, 1], false)] {
        let pair = Pair::new("collision");
        let listener = pair
            .b
            .run(|| std::net::TcpListener::bind(format!("{B4}:179")).unwrap());
        let mut peer = PeerSettings::new(B4.parse().unwrap(), PEER_AS);
        peer.hold_time = Duration::from_secs(9);
        let speaker = Speaker::start(
            &pair.a,
            SpeakerSettings {
                listen: Some("0.0.0.0:179".parse().unwrap()),
                ..speaker_settings(peer)
            },
        );
        // The speaker's connection (outbound for it)…
        let (s, _) = listener.accept().expect("speaker connects");
        let mut out = RawPeer { s };
        assert_eq!(out.recv(Duration::from_secs(5)).map(|m| m.0), Some(1));
        // …and ours to its listener (inbound for it).
        let mut inb = RawPeer::connect(&pair);
        assert_eq!(inb.recv(Duration::from_secs(5)).map(|m| m.0), Some(1));
        out.send(&open_from(id));
        assert_eq!(out.recv(Duration::from_secs(5)).map(|m| m.0), Some(4));
        inb.send(&open_from(id));
        let (winner, loser) = if inbound_wins {
            (&mut inb, &mut out)
        } else {
            (&mut out, &mut inb)
        };
        assert_eq!(loser.notification(Duration::from_secs(5)), Some((6, 7)));
        if inbound_wins {
            assert_eq!(winner.recv(Duration::from_secs(5)).map(|m| m.0), Some(4));
        }
        winner.send(&KEEPALIVE);
        speaker.wait_established(B4, Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(500));
        let st = speaker.status(B4);
        assert_eq!(st.state, PeerState::Established);
        assert_eq!(st.established_count, 1, "{id:?}");
    }
}

/// A peer that accepts and drops every connection: the speaker retries after 1, 2, 4 s…
#[test]
fn reconnect_backs_off_exponentially() {
    const TEST: &str = "reconnect_backs_off_exponentially";
    if !ready(TEST, &[]) {
        return;
    }
    let pair = Pair::new("backoff");
    let listener = pair
        .b
        .run(|| std::net::TcpListener::bind(format!("{B4}:179")).unwrap());
    let speaker = Speaker::start(
        &pair.a,
        speaker_settings(PeerSettings::new(B4.parse().unwrap(), PEER_AS)),
    );
    let mut accepted = Vec::new();
    for _ in 0..4 {
        let (s, _) = listener.accept().expect("accept");
        accepted.push(Instant::now());
        drop(s);
    }
    let gaps: Vec<f64> = accepted
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    // 1 s, 2 s, 4 s, each ±10 %.
    for (gap, want) in gaps.iter().zip([1.0, 2.0, 4.0]) {
        assert!(
            (gap - want).abs() <= want * 0.1 + 0.2,
            "gaps {gaps:?}, want 1, 2, 4 s"
        );
    }
    assert_ne!(speaker.state(B4), PeerState::Established);
}
