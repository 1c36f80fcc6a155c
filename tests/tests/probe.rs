//! The probe engine on real sockets: two namespaces joined by a veth pair named like a
//! tunnel (`sdwan7` at both ends, 100.64.0.14/31 and 100.64.0.15/31), one engine per side
//! on a thread inside its namespace, impairments with iptables.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use gatewan::probe::engine::{self, ProbeHandle, ProbeReport, ProbeSettings, ProbeTarget};
use gatewan::probe::stats::TunnelState;
use gatewan::probe::wire::{Kind, Packet};
use gatewan_tests::*;

const PORT: u16 = 20007;
const A: &str = "100.64.0.14";
const B: &str = "100.64.0.15";

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn target(local: &str, peer: &str) -> ProbeTarget {
    ProbeTarget {
        tunnel_id: "t7".into(),
        tunnel_index: 7,
        interface: "sdwan7".into(),
        local: addr(local, PORT),
        peer: addr(peer, PORT),
        initiator: local < peer,
    }
}

/// Short intervals where the test is about behaviour, not about the statistics.
fn fast() -> ProbeSettings {
    ProbeSettings {
        interval: Duration::from_millis(250),
        count: 10,
        window: Duration::from_millis(1500),
        timeout: Duration::from_millis(250),
        ..ProbeSettings::default()
    }
}

/// The veth "tunnel" between `a` and `b`, addressed and up.
fn link(a: &Netns, b: &Netns) {
    a.exec_ok(&[
        "ip", "link", "add", "sdwan7", "type", "veth", "peer", "name", "sdwan7p",
    ]);
    a.exec_ok(&["ip", "link", "set", "sdwan7p", "netns", &b.name]);
    b.exec_ok(&["ip", "link", "set", "sdwan7p", "name", "sdwan7"]);
    for (ns, ip) in [(a, A), (b, B)] {
        ns.exec_ok(&["ip", "addr", "add", &format!("{ip}/31"), "dev", "sdwan7"]);
        ns.exec_ok(&["ip", "link", "set", "sdwan7", "up"]);
    }
}

fn pair() -> (Netns, Netns) {
    let (a, b) = (Netns::new(), Netns::new());
    link(&a, &b);
    (a, b)
}

fn engine(ns: &Netns, settings: ProbeSettings, targets: Vec<ProbeTarget>) -> ProbeHandle {
    let h = ns.run(move || engine::spawn_thread(settings).expect("engine thread"));
    h.set_targets(targets);
    h
}

fn report(h: &ProbeHandle) -> Option<ProbeReport> {
    h.reports().borrow().get("t7").copied()
}

/// Waits for a report that satisfies `ok`; panics with the last one seen.
fn wait_report(
    h: &ProbeHandle,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&ProbeReport) -> bool,
) -> (ProbeReport, Duration) {
    let start = Instant::now();
    let mut last = None;
    let found = wait_until(timeout, || {
        last = report(h);
        last.as_ref().is_some_and(&ok)
    });
    assert!(
        found,
        "{what}: not within {timeout:?}; last report {last:#?}"
    );
    (last.unwrap(), start.elapsed())
}

fn iptables(ns: &Netns, args: &str) {
    let argv: Vec<&str> = std::iter::once("iptables")
        .chain(args.split_whitespace())
        .collect();
    ns.exec_ok(&argv);
}

/// A plain UDP socket of the test inside `ns`.
fn test_socket(ns: &Netns, bind: SocketAddr) -> UdpSocket {
    ns.run(move || {
        let s = UdpSocket::bind(bind).expect("test socket");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    })
}

#[test]
fn clean_tunnel_then_total_loss_then_recovery() {
    if !require_root("clean_tunnel_then_total_loss_then_recovery")
        || !require_program("clean_tunnel_then_total_loss_then_recovery", "iptables")
    {
        return;
    }
    let (a, b) = pair();
    let settings = ProbeSettings::default();
    let ea = engine(&a, settings.clone(), vec![target(A, B)]);
    let eb = engine(&b, settings, vec![target(B, A)]);

    // Nothing dropped: Established with a full window and no loss at both ends.
    for (h, side) in [(&ea, "a"), (&eb, "b")] {
        let (r, _) = wait_report(h, side, Duration::from_secs(10), |r| {
            r.state == TunnelState::Established && r.measurements.measured >= 45
        });
        let c = r.counters;
        assert_eq!(r.measurements.loss, 0.0, "{side}: {r:#?}");
        assert!(
            r.measurements.latency < Duration::from_millis(50),
            "{side}: {r:#?}"
        );
        assert!(c.replies > 0 && c.requests_answered > 0, "{side}: {c:?}");
        assert_eq!(
            (
                c.unsent,
                c.malformed,
                c.foreign,
                c.unknown_seq,
                c.duplicate,
                c.late
            ),
            (0, 0, 0, 0, 0, 0),
            "{side}: {c:?}"
        );
        assert_eq!(
            (r.source, r.target),
            if side == "a" {
                (addr(A, PORT), addr(B, PORT))
            } else {
                (addr(B, PORT), addr(A, PORT))
            }
        );
    }

    // Replies guessed by a stranger on the peer's address (any cookie, recent sequence
    // numbers) are foreign, never replies, and leave the measurements clean.
    let before = report(&ea).unwrap();
    let stranger = test_socket(&b, addr(B, 0));
    let sent = before.counters.sent;
    for i in 0..200u64 {
        if i % 20 == 0 {
            // Short of the engine's receive buffer.
            std::thread::sleep(Duration::from_millis(2));
        }
        let p = Packet {
            kind: Kind::Reply,
            tunnel_index: 7,
            cookie: rand::random(),
            seq: sent.saturating_sub(i % 20),
            timestamp_ns: 0,
        };
        stranger.send_to(&p.encode(), addr(A, PORT)).unwrap();
    }
    let (r, _) = wait_report(&ea, "forged replies counted", Duration::from_secs(3), |r| {
        r.counters.foreign == 200
    });
    assert_eq!(r.measurements.loss, 0.0, "{r:#?}");
    assert!(r.counters.replies <= r.counters.sent, "{r:#?}");
    assert_eq!(r.state, TunnelState::Established);

    // Everything into b dropped: both ends Down within 3 intervals (recent loss ≥ 90 %
    // once the probes of a whole interval have timed out).
    iptables(&b, "-A INPUT -i sdwan7 -j DROP");
    // Allowed: 3 intervals, the publication a tenth of an interval after the evaluation,
    // and this test's polling.
    let (_, took) = wait_report(&ea, "a down", Duration::from_millis(3300), |r| {
        r.state == TunnelState::Down
    });
    eprintln!("total loss: a Down after {took:?}");
    wait_report(&eb, "b down", Duration::from_secs(1), |r| {
        r.state == TunnelState::Down
    });

    // Restored: Established again once the losses have left the window (5 s + timeout)
    // and three clear intervals have passed.
    iptables(&b, "-D INPUT -i sdwan7 -j DROP");
    let (r, took) = wait_report(&ea, "a recovered", Duration::from_secs(14), |r| {
        r.state == TunnelState::Established
    });
    eprintln!("restored: a Established after {took:?}: {r:?}");
}

#[test]
fn random_loss_on_one_side_is_measured() {
    if !require_root("random_loss_on_one_side_is_measured")
        || !require_program("random_loss_on_one_side_is_measured", "iptables")
    {
        return;
    }
    let (a, b) = pair();
    // 30 % of what arrives at b is dropped. A round trip crosses b's INPUT exactly once
    // whoever probes: a's requests arrive at b (30 % dropped) and b's replies arrive at a
    // (no rule); b's requests arrive at a, a's replies arrive at b (30 % dropped). So both
    // ends expect 30 % round-trip loss, not 1 - 0.7² = 51 % (that would need the rule at
    // both ends).
    iptables(
        &b,
        "-A INPUT -i sdwan7 -m statistic --mode random --probability 0.3 -j DROP",
    );
    let settings = ProbeSettings {
        count: 50,
        ..ProbeSettings::default()
    };
    let ea = engine(&a, settings.clone(), vec![target(A, B)]);
    let eb = engine(&b, settings, vec![target(B, A)]);
    // Two disjoint full windows (250 probes each) per end: the mean of 500 probes has a
    // standard deviation of 2 %, so ± 6 % is ~3 σ.
    let mut samples = [Vec::new(), Vec::new()];
    // A report is at most an interval old, and its window must already be all under the
    // rule: window + timeout + interval, and a little.
    std::thread::sleep(Duration::from_millis(7200));
    for round in 0..2 {
        if round == 1 {
            std::thread::sleep(Duration::from_secs(5));
        }
        for (i, h) in [&ea, &eb].into_iter().enumerate() {
            let r = report(h).unwrap();
            assert!(r.measurements.measured >= 240, "{r:#?}");
            assert_eq!(r.state, TunnelState::Degraded, "{r:#?}");
            samples[i].push(r.measurements.loss);
        }
    }
    for (side, s) in ["a", "b"].iter().zip(&samples) {
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        eprintln!("30 % INPUT drop at b: {side} measures {s:?}, mean {mean:.3}");
        assert!(
            (mean - 0.3).abs() <= 0.06,
            "{side}: loss {mean} (windows {s:?})"
        );
    }
}

/// The test's own end of the tunnel: it answers a's probes like a peer would, and forges
/// whatever else it likes from the peer's address (it knows a's cookie from the requests).
struct FakePeer {
    socket: UdpSocket,
    to_a: SocketAddr,
    /// Genuine replies sent, each to a probe not answered before.
    answered: u64,
    /// The last request answered.
    last: Option<Packet>,
    /// Replies a sent to our own requests.
    echoes: Vec<Packet>,
}

impl FakePeer {
    fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.to_a).unwrap();
    }

    /// Answers every request for `span`; with `hold`, keeps the first request of the span
    /// unanswered and returns it.
    fn answer_for(&mut self, span: Duration, mut hold: bool) -> Option<Packet> {
        let mut held = None;
        let mut buf = [0u8; 100];
        let until = Instant::now() + span;
        while Instant::now() < until {
            let Ok((n, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let p = Packet::decode(&buf[..n]).expect("a well-formed packet from a");
            match p.kind {
                Kind::Request => {
                    assert_eq!((from, p.tunnel_index), (self.to_a, 7));
                    if hold {
                        hold = false;
                        held = Some(p);
                        continue;
                    }
                    self.send(&p.reply().encode());
                    self.answered += 1;
                    self.last = Some(p);
                }
                Kind::Reply => self.echoes.push(p),
            }
        }
        held
    }
}

#[test]
fn forged_and_stray_packets_are_counted_never_measured() {
    if !require_root("forged_and_stray_packets_are_counted_never_measured") {
        return;
    }
    let (a, b) = pair();
    let settings = fast();
    let ea = engine(&a, settings.clone(), vec![target(A, B)]);
    let socket = test_socket(&b, addr(B, PORT));
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut peer = FakePeer {
        socket,
        to_a: addr(A, PORT),
        answered: 0,
        last: None,
        echoes: Vec::new(),
    };
    // Answered, the tunnel comes up; it is never silent from then on, so every reply
    // below is judged against a live window.
    let up = Instant::now();
    while report(&ea).is_none_or(|r| r.state != TunnelState::Established) {
        assert!(
            up.elapsed() < Duration::from_secs(5),
            "never Established: {:#?}",
            report(&ea)
        );
        peer.answer_for(Duration::from_millis(50), false);
    }
    let held = peer
        .answer_for(Duration::from_millis(100), true)
        .expect("a request to hold");
    let last = peer.last.expect("an answered request");
    // The last genuine reply again.
    peer.send(&last.reply().encode());
    // Unknown sequence number, with the right cookie.
    peer.send(
        &Packet {
            seq: last.seq + 1_000_000,
            ..last.reply()
        }
        .encode(),
    );
    // Foreign: another cookie, another tunnel's reply, another tunnel's request.
    peer.send(
        &Packet {
            cookie: last.cookie ^ 1,
            ..last.reply()
        }
        .encode(),
    );
    peer.send(
        &Packet {
            tunnel_index: 8,
            ..last.reply()
        }
        .encode(),
    );
    peer.send(
        &Packet {
            tunnel_index: 8,
            ..last
        }
        .encode(),
    );
    // Malformed: truncated, too long, empty, bad magic, unknown kind, padding.
    let good = last.reply().encode();
    peer.send(&good[..39]);
    let mut long = [0u8; 41];
    long[..40].copy_from_slice(&good);
    peer.send(&long);
    peer.send(&[]);
    for (at, v) in [(0usize, b'X'), (4, 3), (6, 1)] {
        let mut bad = good;
        bad[at] = v;
        peer.send(&bad);
    }
    // A's own echo service answers a genuine request from the peer's address.
    let ours = Packet {
        kind: Kind::Request,
        tunnel_index: 7,
        cookie: 0xfeed,
        seq: 42,
        timestamp_ns: 123_456,
    };
    peer.send(&ours.encode());
    // A reply after its probe's timeout is late, and the probe stays lost.
    peer.answer_for(settings.timeout + Duration::from_millis(100), false);
    peer.send(&held.reply().encode());
    peer.answer_for(Duration::from_millis(200), false);
    assert_eq!(peer.echoes, vec![ours.reply()]);

    // Every genuine reply counted once, as a reply or (the first, which restarted the
    // window of a tunnel that had never answered) as stale; nothing forged among them.
    let answered = peer.answered;
    let (r, _) = wait_report(&ea, "counted", Duration::from_secs(2), |r| {
        r.counters.late == 1 && r.counters.replies + r.counters.stale == answered
    });
    let c = r.counters;
    assert_eq!(
        (
            c.duplicate,
            c.unknown_seq,
            c.foreign,
            c.malformed,
            c.late,
            c.requests_answered
        ),
        (1, 1, 3, 6, 1, 1),
        "{c:?}"
    );
    assert!(c.stale >= 1 && c.replies > 10, "{c:?}");
}

/// UDP datagrams that found no socket in `ns` (`Udp: … NoPorts` of /proc/net/snmp).
fn udp_no_ports(ns: &Netns) -> u64 {
    let out = ns.exec_ok(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "NoPorts")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn only_the_tunnel_interface_reaches_the_echo_socket() {
    if !require_root("only_the_tunnel_interface_reaches_the_echo_socket") {
        return;
    }
    let (a, b) = pair();
    // A second link between the two, and b's route to a's echo address over it.
    a.exec_ok(&[
        "ip", "link", "add", "other0", "type", "veth", "peer", "name", "other0p",
    ]);
    a.exec_ok(&["ip", "link", "set", "other0p", "netns", &b.name]);
    b.exec_ok(&["ip", "link", "set", "other0p", "name", "other0"]);
    for (ns, ip) in [(&a, "10.99.0.1/30"), (&b, "10.99.0.2/30")] {
        ns.exec_ok(&["ip", "addr", "add", ip, "dev", "other0"]);
        ns.exec_ok(&["ip", "link", "set", "other0", "up"]);
    }
    b.exec_ok(&["ip", "route", "add", &format!("{A}/32"), "via", "10.99.0.1"]);
    let ea = engine(&a, fast(), vec![target(A, B)]);
    wait_report(&ea, "bound", Duration::from_secs(2), |r| {
        r.counters.sent > 0
    });

    let junk = b"not a probe";
    let s = test_socket(&b, "0.0.0.0:0".parse().unwrap());
    let no_ports = udp_no_ports(&a);
    for _ in 0..20 {
        s.send_to(junk, addr(A, PORT)).unwrap();
    }
    // They reached a (no socket took them), and the engine saw none.
    assert!(
        wait_until(Duration::from_secs(2), || udp_no_ports(&a) >= no_ports + 20),
        "the datagrams via other0 did not reach a"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(report(&ea).unwrap().counters.malformed, 0);

    // The same through the tunnel interface is received (and refused as malformed).
    b.exec_ok(&["ip", "route", "del", &format!("{A}/32")]);
    for _ in 0..20 {
        s.send_to(junk, addr(A, PORT)).unwrap();
    }
    wait_report(&ea, "received via sdwan7", Duration::from_secs(2), |r| {
        r.counters.malformed == 20
    });
}

#[test]
fn vanished_interface_is_down_and_recovers() {
    if !require_root("vanished_interface_is_down_and_recovers") {
        return;
    }
    let (a, b) = pair();
    let settings = fast();
    let interval = settings.interval;
    let ea = engine(&a, settings.clone(), vec![target(A, B)]);
    let eb = engine(&b, settings, vec![target(B, A)]);
    for h in [&ea, &eb] {
        wait_report(h, "established", Duration::from_secs(5), |r| {
            r.state == TunnelState::Established
        });
    }
    // Deleting one end of a veth deletes both.
    a.exec_ok(&["ip", "link", "del", "sdwan7"]);
    for h in [&ea, &eb] {
        // 3 intervals, plus publication and polling (see the test above).
        let (r, took) = wait_report(h, "down", interval * 3 + Duration::from_millis(250), |r| {
            r.state == TunnelState::Down
        });
        assert!(r.counters.unsent > 0, "{r:#?}");
        eprintln!("interface gone: Down after {took:?}");
    }
    let unsent = report(&ea).unwrap().counters.unsent;
    std::thread::sleep(interval * 2);
    assert!(
        report(&ea).unwrap().counters.unsent > unsent,
        "still trying"
    );

    // The interface back: both ends rebind and recover.
    link(&a, &b);
    for h in [&ea, &eb] {
        let (r, took) = wait_report(h, "recovered", Duration::from_secs(5), |r| {
            r.state == TunnelState::Established
        });
        eprintln!(
            "interface back: Established after {took:?}: {:?}",
            r.counters
        );
    }
}

/// CPU time of the engine threads of this process (`schedstat`: nanoseconds on a CPU).
fn engine_cpu() -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let p = task.path();
        if std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "gw-probe") {
            let stat = std::fs::read_to_string(p.join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

#[test]
fn hundred_tunnels_cost_little_cpu() {
    if !require_root("hundred_tunnels_cost_little_cpu") {
        return;
    }
    let (a, b) = pair();
    // 100 tunnels over the one link: 100.65.0.0/31, 100.65.0.2/31, … each with its port.
    let targets = |side: usize| -> Vec<ProbeTarget> {
        (0..100u32)
            .map(|i| {
                let base = u32::from(std::net::Ipv4Addr::new(100, 65, 0, 0)) + 2 * i;
                let ip = |k: u32| std::net::IpAddr::from(std::net::Ipv4Addr::from(base + k));
                ProbeTarget {
                    tunnel_id: format!("t{i}"),
                    tunnel_index: u64::from(i),
                    interface: "sdwan7".into(),
                    local: SocketAddr::new(ip(side as u32), 21000 + i as u16),
                    peer: SocketAddr::new(ip(1 - side as u32), 21000 + i as u16),
                    initiator: side == 0,
                }
            })
            .collect()
    };
    for (side, ns) in [&a, &b].into_iter().enumerate() {
        let batch: String = targets(side)
            .iter()
            .map(|t| format!("addr add {}/31 dev sdwan7\n", t.local.ip()))
            .collect();
        let file = std::env::temp_dir().join(format!("{}-addrs", ns.name));
        std::fs::write(&file, batch).unwrap();
        ns.exec_ok(&["ip", "-batch", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
    }
    let settings = ProbeSettings::default();
    let ea = engine(&a, settings.clone(), targets(0));
    let eb = engine(&b, settings, targets(1));
    let all_established = |h: &ProbeHandle| {
        let r = h.reports().borrow().clone();
        r.len() == 100 && r.values().all(|r| r.state == TunnelState::Established)
    };
    assert!(
        wait_until(Duration::from_secs(8), || all_established(&ea)
            && all_established(&eb)),
        "100 tunnels not all Established"
    );
    let (cpu0, t0) = (engine_cpu(), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let (cpu, wall) = (engine_cpu() - cpu0, t0.elapsed());
    // Two engines, each probing 100 tunnels and answering 100: one gatewan's load each.
    let per_engine = cpu.as_secs_f64() / wall.as_secs_f64() / 2.0 * 100.0;
    eprintln!("100 tunnels × 10 probes/s: {per_engine:.2} % of a core per engine");
    assert!(all_established(&ea) && all_established(&eb));
    // Loose on purpose: tests build without optimisation, and parallel tests' engines
    // share the thread name, so this is an upper bound.
    assert!(per_engine < 10.0, "{per_engine:.2} % of a core");
}

/// A configuration reload changes the thresholds of running tunnels (ADR 0045): a
/// latency threshold below the veth's round trip makes the tunnel Degraded at its next
/// evaluation, without a new window (it is not probed again from scratch), and the old
/// threshold brings it back.
#[test]
fn new_thresholds_apply_to_running_tunnels_keeping_their_window() {
    if !require_root("new_thresholds_apply_to_running_tunnels_keeping_their_window") {
        return;
    }
    let (a, b) = pair();
    let settings = fast();
    let ea = engine(&a, settings.clone(), vec![target(A, B)]);
    let _eb = engine(&b, settings.clone(), vec![target(B, A)]);
    let full = |r: &ProbeReport| r.measurements.measured >= 50;
    wait_report(&ea, "established", Duration::from_secs(10), |r| {
        r.state == TunnelState::Established && full(r)
    });
    let sent_before = report(&ea).unwrap().counters.sent;
    ea.set_thresholds(gatewan::probe::stats::Thresholds {
        degraded_latency: Duration::from_nanos(1),
        ..settings.thresholds
    });
    // Worse is taken at the next evaluation: a 250 ms interval, 10 × as a sanity bound.
    let (r, _) = wait_report(
        &ea,
        "degraded by latency",
        Duration::from_millis(2500),
        |r| r.state == TunnelState::Degraded,
    );
    assert!(full(&r), "the window was kept: {r:#?}");
    assert!(r.counters.sent > sent_before, "the same probe task: {r:#?}");
    ea.set_thresholds(settings.thresholds);
    // Better must hold for recover_intervals evaluations.
    let (r, _) = wait_report(&ea, "established again", Duration::from_secs(10), |r| {
        r.state == TunnelState::Established
    });
    assert!(full(&r), "{r:#?}");
}
