//! The probe engine, the I/O around `stats`: per tunnel one UDP socket on the tunnel's
//! inner address and echo port, bound to the tunnel interface, that answers the peer's
//! probes and probes the peer; one supervisor that starts and stops the tunnels' tasks and
//! publishes their reports once per interval.
//!
//! Every engine's timers run on one grid (probes every `interval / count`, evaluations
//! every `interval`, from the engine's start), so 100 tunnels wake the runtime 10 times a
//! second rather than 1000, and the supervisor publishes just after the tunnels evaluate.
//! A tunnel that gets worse between evaluations (checked at every probe) is published at
//! once: failover waits for the probes' timeout, not for the next interval.
//!
//! How long a dead tunnel takes to be Down (ADR 0008): its first lost probe is sent
//! within a spacing of the failure (or just before it, its reply lost); the
//! `down.consecutive`-th lost one follows (consecutive − 1) spacings later and is settled
//! a `timeout` after that; the check at the next probe sees it, within a spacing more
//! (none when the timeout is a whole number of spacings, up to timer jitter). Defaults:
//! 0–100 + 200 + 500 + 0–100 ms = 0.7–0.9 s. The fast setting of the operator guide
//! (a probe every 20 ms, timeout 60 ms): 0–20 + 40 + 60 + 0–20 ms = 100–140 ms.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{debug, info};

use super::stats::{
    Health, Measurements, ProbeWindow, Recent, ReplyVerdict, Thresholds, TunnelState,
};
use super::wire::{self, Kind, Packet};

/// Probes closer than this are not sent: the configuration refuses them, and the engine
/// will not turn a bad setting into a busy loop either.
pub const MIN_SPACING: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSettings {
    /// How often the state is evaluated and reports are published.
    pub interval: Duration,
    /// Probes per interval, evenly spaced.
    pub count: u32,
    /// Measurements cover the probes of this last span.
    pub window: Duration,
    /// A probe unanswered after this is lost; a later reply is counted as `late`.
    pub timeout: Duration,
    pub thresholds: Thresholds,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            interval: Duration::from_secs(1),
            count: 10,
            window: Duration::from_secs(5),
            // A total failure shows only once the probes sent after it have timed out, so
            // this is most of the failover time: short for sub-second reaction, above any
            // sane WAN round trip (the talk's Singapore paths measured 224 ms), and above
            // `degraded.latency` (400 ms) so a slow tunnel shows as slow, not lossy. Lower
            // would refuse configurations that raise degraded.latency toward 500 ms, for at
            // most 100 ms of detection: the ≤ 1 s target is met with it (ADR 0008).
            timeout: Duration::from_millis(500),
            thresholds: Thresholds::default(),
        }
    }
}

impl ProbeSettings {
    fn interval(&self) -> Duration {
        self.interval.max(MIN_SPACING)
    }

    fn spacing(&self) -> Duration {
        (self.interval() / self.count.max(1)).max(MIN_SPACING)
    }
}

/// One tunnel to probe. Both ends use the same echo port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    pub tunnel_id: String,
    pub tunnel_index: u64,
    pub interface: String,
    /// Our inner address and the echo port.
    pub local: SocketAddr,
    /// The peer's inner address and the echo port.
    pub peer: SocketAddr,
    /// Whether this end starts the WireGuard handshake (see `RESPONDER_WAIT`).
    pub initiator: bool,
}

/// How long the responder end of a new tunnel stays silent unless its peer's probes arrive
/// first. When both ends of a new tunnel send at once, both start a WireGuard handshake,
/// each consumes the other's initiation and drops the response to its own, and both wait
/// out REKEY_TIMEOUT (5 s) before trying again, often more than once. One side probing
/// first avoids the crossing; the responder still starts on its own if the initiator's
/// first handshake was lost (it arrived before this end had the peer configured).
pub const RESPONDER_WAIT: Duration = Duration::from_millis(1500);

/// What happened to the datagrams of one tunnel since its task started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Requests sent.
    pub sent: u64,
    /// Probes that could not be sent (no socket, or the send failed); counted as lost.
    pub unsent: u64,
    /// Replies counted in the measurements.
    pub replies: u64,
    /// The peer's requests echoed back.
    pub requests_answered: u64,
    /// Not a probe packet (length, magic, kind, padding).
    pub malformed: u64,
    /// Another tunnel's index, a cookie not ours (another prober or an earlier run of
    /// ours), or a source other than the peer's inner address.
    pub foreign: u64,
    /// A reply for a sequence number not sent, or already out of the window.
    pub unknown_seq: u64,
    pub duplicate: u64,
    /// A reply after the probe's timeout: the probe stays lost.
    pub late: u64,
    /// A reply to a probe sent before the tunnel came back from Down, not measured.
    pub stale: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeReport {
    pub state: TunnelState,
    pub measurements: Measurements,
    pub counters: ProbeCounters,
    pub source: SocketAddr,
    pub target: SocketAddr,
    pub updated: SystemTime,
}

impl ProbeReport {
    fn initial(t: &ProbeTarget) -> ProbeReport {
        ProbeReport {
            state: TunnelState::Down,
            measurements: Measurements::default(),
            counters: ProbeCounters::default(),
            source: t.local,
            target: t.peer,
            updated: SystemTime::now(),
        }
    }
}

pub type Reports = Arc<BTreeMap<String, ProbeReport>>;

/// The running engine. Dropping it stops every tunnel's task.
#[derive(Debug)]
pub struct ProbeHandle {
    targets: watch::Sender<Vec<ProbeTarget>>,
    reports: watch::Receiver<Reports>,
    thresholds: watch::Sender<Thresholds>,
}

/// Sends `value` unless it is what the channel holds (no wake-up for an unchanged reload).
pub fn set_if_changed<T: PartialEq>(tx: &watch::Sender<T>, value: T) {
    tx.send_if_modified(|t| {
        let changed = *t != value;
        *t = value;
        changed
    });
}

/// Starts the engine with no targets. Must be called inside a tokio runtime (with time
/// and I/O enabled).
pub fn spawn(settings: ProbeSettings) -> ProbeHandle {
    let (targets_tx, targets_rx) = watch::channel(Vec::new());
    let (reports_tx, reports_rx) = watch::channel(Reports::default());
    let (thresholds_tx, thresholds_rx) = watch::channel(settings.thresholds);
    tokio::spawn(supervise(settings, targets_rx, reports_tx, thresholds_rx));
    ProbeHandle {
        targets: targets_tx,
        reports: reports_rx,
        thresholds: thresholds_tx,
    }
}

/// Starts an engine on a thread of its own, with its own single-threaded runtime, for
/// callers without a tokio runtime. The thread inherits the caller's network namespace,
/// so a caller that has entered one runs the engine there. The thread ends once the
/// handle is dropped.
pub fn spawn_thread(settings: ProbeSettings) -> io::Result<ProbeHandle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (targets_tx, targets_rx) = watch::channel(Vec::new());
    let (reports_tx, reports_rx) = watch::channel(Reports::default());
    let (thresholds_tx, thresholds_rx) = watch::channel(settings.thresholds);
    std::thread::Builder::new()
        .name("gw-probe".into())
        .spawn(move || {
            runtime.block_on(supervise(settings, targets_rx, reports_tx, thresholds_rx))
        })?;
    Ok(ProbeHandle {
        targets: targets_tx,
        reports: reports_rx,
        thresholds: thresholds_tx,
    })
}

impl ProbeHandle {
    /// The tunnels to probe, keyed by `tunnel_id` (the last wins on duplicates). Starts the
    /// new, stops the removed, restarts the changed (a new cookie and a fresh window, so
    /// Down until it has measured again); running tunnels that did not change are not
    /// touched. Calling it again with the same targets does nothing.
    pub fn set_targets(&self, targets: Vec<ProbeTarget>) {
        self.targets.send_if_modified(|current| {
            if *current == targets {
                return false;
            }
            *current = targets;
            true
        });
    }

    /// Reports by tunnel id, updated once per interval. A tunnel appears (Down) as soon as
    /// the engine has taken it on, and disappears when it is removed.
    pub fn reports(&self) -> watch::Receiver<Reports> {
        self.reports.clone()
    }

    /// New state thresholds (a configuration reload): every tunnel evaluates with them
    /// from its next evaluation on, keeping its window and its state.
    pub fn set_thresholds(&self, thresholds: Thresholds) {
        set_if_changed(&self.thresholds, thresholds);
    }

    /// Where [`ProbeHandle::set_thresholds`] writes, for an owner that hands the handle
    /// itself to another task.
    pub fn thresholds(&self) -> watch::Sender<Thresholds> {
        self.thresholds.clone()
    }
}

struct Running {
    target: ProbeTarget,
    task: JoinHandle<()>,
    report: watch::Receiver<ProbeReport>,
}

/// The first instant of the grid `epoch + k × period` after now.
fn next_on_grid(epoch: Instant, period: Duration) -> Instant {
    let period_ns = period.as_nanos().max(1);
    let elapsed_ns = Instant::now().saturating_duration_since(epoch).as_nanos();
    let next = (elapsed_ns / period_ns + 1) * period_ns;
    epoch + Duration::from_nanos(u64::try_from(next).unwrap_or(u64::MAX))
}

fn grid_interval(epoch: Instant, period: Duration, offset: Duration) -> Interval {
    let mut i = tokio::time::interval_at(next_on_grid(epoch, period) + offset, period);
    // A runtime that fell behind must not answer with a burst of probes.
    i.set_missed_tick_behavior(MissedTickBehavior::Skip);
    i
}

async fn supervise(
    settings: ProbeSettings,
    mut targets: watch::Receiver<Vec<ProbeTarget>>,
    reports: watch::Sender<Reports>,
    thresholds: watch::Receiver<Thresholds>,
) {
    let epoch = Instant::now();
    let interval = settings.interval();
    // A tenth of an interval after the tunnels evaluate, so a report is never a whole
    // interval stale when it is published.
    let mut publish = grid_interval(epoch, interval, interval / 10);
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let worsened = Arc::new(Notify::new());
    loop {
        tokio::select! {
            changed = targets.changed() => {
                if changed.is_err() {
                    break; // the handle is gone
                }
                let desired: BTreeMap<String, ProbeTarget> = targets
                    .borrow_and_update()
                    .iter()
                    .map(|t| (t.tunnel_id.clone(), t.clone()))
                    .collect();
                reconcile(&settings, &thresholds, epoch, &worsened, &mut running, desired).await;
                publish_reports(&running, &reports);
            }
            _ = publish.tick() => publish_reports(&running, &reports),
            _ = worsened.notified() => publish_reports(&running, &reports),
        }
    }
    for (_, r) in std::mem::take(&mut running) {
        stop(r).await;
    }
}

async fn reconcile(
    settings: &ProbeSettings,
    thresholds: &watch::Receiver<Thresholds>,
    epoch: Instant,
    worsened: &Arc<Notify>,
    running: &mut BTreeMap<String, Running>,
    mut desired: BTreeMap<String, ProbeTarget>,
) {
    let stale: Vec<String> = running
        .iter()
        .filter(|(id, r)| desired.get(*id) != Some(&r.target))
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        if let Some(r) = running.remove(&id) {
            // Awaited, so the socket is closed before a changed tunnel binds it again.
            stop(r).await;
        }
    }
    desired.retain(|id, _| !running.contains_key(id));
    for (id, target) in desired {
        let (tx, rx) = watch::channel(ProbeReport::initial(&target));
        let task = tokio::spawn(run_tunnel(
            settings.clone(),
            thresholds.clone(),
            epoch,
            target.clone(),
            tx,
            worsened.clone(),
        ));
        running.insert(
            id,
            Running {
                target,
                task,
                report: rx,
            },
        );
    }
}

async fn stop(r: Running) {
    r.task.abort();
    let _ = r.task.await;
}

fn publish_reports(running: &BTreeMap<String, Running>, reports: &watch::Sender<Reports>) {
    let map = running
        .iter()
        .map(|(id, r)| (id.clone(), *r.report.borrow()))
        .collect();
    reports.send_replace(Arc::new(map));
}

/// A datagram received on a tunnel's echo socket, judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inbound {
    /// The peer probes us: echo it.
    Request(Packet),
    /// An answer to one of our probes (still to be matched to the window).
    Reply {
        seq: u64,
    },
    Malformed,
    Foreign,
}

fn classify(buf: &[u8], from: SocketAddr, target: &ProbeTarget, cookie: u64) -> Inbound {
    let Ok(p) = Packet::decode(buf) else {
        return Inbound::Malformed;
    };
    // The tunnel also carries the hosts of the peer's datacenter (WireGuard's allowed IPs
    // hold its networks), and they can reach this socket: only the peer's end probes.
    if from.ip() != target.peer.ip() || p.tunnel_index != target.tunnel_index {
        return Inbound::Foreign;
    }
    match p.kind {
        Kind::Request => Inbound::Request(p),
        Kind::Reply if p.cookie == cookie => Inbound::Reply { seq: p.seq },
        Kind::Reply => Inbound::Foreign,
    }
}

/// The echo socket of a tunnel: its inner address and echo port, and only through its
/// interface, so a datagram to that address arriving by any other way never reaches it.
fn bind(target: &ProbeTarget) -> io::Result<UdpSocket> {
    bind_on(&target.interface, target.local)
}

/// A UDP socket on `local` that hears and sends only through `interface`.
pub(super) fn bind_on(interface: &str, local: SocketAddr) -> io::Result<UdpSocket> {
    // An empty name would *unbind* the device (and a NUL cut the name short): the socket
    // would then hear every interface.
    if interface.is_empty() || interface.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid interface name",
        ));
    }
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.bind(&local.into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Errors after which the socket is still good: the kernel was short of buffers.
fn transient(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(nix::libc::ENOBUFS)
}

async fn recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// One tunnel's state, owned by its task.
struct Tunnel {
    settings: ProbeSettings,
    /// The state thresholds now: they change on a configuration reload.
    thresholds: watch::Receiver<Thresholds>,
    target: ProbeTarget,
    cookie: u64,
    epoch: Instant,
    socket: Option<UdpSocket>,
    /// The last bind error, to log a change of cause once rather than every interval.
    bind_error: Option<io::ErrorKind>,
    next_seq: u64,
    window: ProbeWindow,
    health: Health,
    counters: ProbeCounters,
    report: watch::Sender<ProbeReport>,
    /// Wakes the supervisor to publish at once.
    worsened: Arc<Notify>,
}

async fn run_tunnel(
    settings: ProbeSettings,
    thresholds: watch::Receiver<Thresholds>,
    epoch: Instant,
    target: ProbeTarget,
    report: watch::Sender<ProbeReport>,
    worsened: Arc<Notify>,
) {
    let mut probes = grid_interval(epoch, settings.spacing(), Duration::ZERO);
    let mut evaluations = grid_interval(epoch, settings.interval(), Duration::ZERO);
    let mut t = Tunnel {
        window: ProbeWindow::new(settings.window, settings.timeout),
        settings,
        thresholds,
        target,
        cookie: rand::random(),
        epoch,
        socket: None,
        bind_error: None,
        next_seq: 0,
        health: Health::default(),
        counters: ProbeCounters::default(),
        report,
        worsened,
    };
    t.bind();
    let mut waiting = !t.target.initiator;
    let started = Instant::now();
    // Room for more than a probe, so an oversized datagram shows as one (and is refused).
    let mut buf = [0u8; wire::LEN + 24];
    loop {
        tokio::select! {
            _ = probes.tick() => {
                waiting &= t.counters.requests_answered == 0 && started.elapsed() < RESPONDER_WAIT;
                if !waiting {
                    t.check();
                    t.probe().await;
                }
            }
            _ = evaluations.tick() => {
                if t.socket.is_none() {
                    t.bind();
                }
                t.evaluate();
            }
            r = recv(t.socket.as_ref(), &mut buf) => match r {
                Ok((n, from)) => t.inbound(&buf[..n], from).await,
                Err(e) => {
                    // Unconnected UDP sockets report no ICMP errors, so this is the socket
                    // itself failing: rebind at the next interval rather than spin on it.
                    debug!(tunnel = %t.target.tunnel_id, error = %e, "probe socket receive failed");
                    t.socket = None;
                }
            },
        }
    }
}

impl Tunnel {
    fn now_us(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_micros() as u64
    }

    fn bind(&mut self) {
        match bind(&self.target) {
            Ok(s) => {
                if self.bind_error.take().is_some() {
                    info!(tunnel = %self.target.tunnel_id, local = %self.target.local, interface = %self.target.interface, "probe socket bound");
                }
                self.socket = Some(s);
            }
            Err(e) => {
                // Normal while the tunnel is being set up; a changed cause is worth a line.
                if self.bind_error != Some(e.kind()) {
                    info!(tunnel = %self.target.tunnel_id, local = %self.target.local, interface = %self.target.interface, error = %e, "probe socket cannot bind; retrying every interval");
                }
                self.bind_error = Some(e.kind());
            }
        }
    }

    async fn probe(&mut self) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let now = Instant::now().saturating_duration_since(self.epoch);
        // Entered even when it cannot be sent: a tunnel that cannot be probed has lost its
        // probes, and must go Down within an interval or two rather than when its window
        // has emptied.
        self.window.sent(seq, now.as_micros() as u64);
        let Some(socket) = &self.socket else {
            self.counters.unsent += 1;
            return;
        };
        let request = Packet {
            kind: Kind::Request,
            tunnel_index: self.target.tunnel_index,
            cookie: self.cookie,
            seq,
            timestamp_ns: now.as_nanos() as u64,
        };
        match socket.send_to(&request.encode(), self.target.peer).await {
            Ok(_) => self.counters.sent += 1,
            Err(e) => {
                self.counters.unsent += 1;
                if !transient(&e) {
                    // The interface or the address is gone (or going): the socket is bound
                    // to what no longer exists, so get a new one at the next interval.
                    debug!(tunnel = %self.target.tunnel_id, error = %e, "probe send failed; rebinding");
                    self.socket = None;
                    self.bind_error = Some(e.kind());
                }
            }
        }
    }

    async fn inbound(&mut self, buf: &[u8], from: SocketAddr) {
        match classify(buf, from, &self.target, self.cookie) {
            Inbound::Malformed => self.counters.malformed += 1,
            Inbound::Foreign => self.counters.foreign += 1,
            Inbound::Request(p) => {
                if let Some(s) = &self.socket
                    && s.send_to(&p.reply().encode(), from).await.is_ok()
                {
                    self.counters.requests_answered += 1;
                }
            }
            Inbound::Reply { seq } => {
                let now = self.now_us();
                if self.health.state() == TunnelState::Down {
                    self.window.resume(now);
                }
                self.count_reply(seq, now);
            }
        }
    }

    fn count_reply(&mut self, seq: u64, now_us: u64) {
        match self.window.reply(seq, now_us) {
            ReplyVerdict::Counted => self.counters.replies += 1,
            ReplyVerdict::Unknown => self.counters.unknown_seq += 1,
            ReplyVerdict::Duplicate => self.counters.duplicate += 1,
            ReplyVerdict::Late => self.counters.late += 1,
            ReplyVerdict::Stale => self.counters.stale += 1,
        }
    }

    /// The window's measurements and recent past, now.
    fn observe(&mut self) -> (Measurements, Recent) {
        let now = self.now_us();
        let m = self.window.measure(now);
        (m, self.window.recent(self.settings.interval(), now))
    }

    fn evaluate(&mut self) {
        let (m, recent) = self.observe();
        let before = self.health.state();
        let thresholds = *self.thresholds.borrow();
        let state = self.health.update(&m, &recent, &thresholds);
        if state != before {
            info!(tunnel = %self.target.tunnel_id, from = before.as_str(), to = state.as_str(), loss = m.loss, latency = ?m.latency, "tunnel state");
        }
        self.send_report(state, m);
    }

    /// Between evaluations: a tunnel whose settled probes already show it worse (a run of
    /// `down.consecutive` lost probes, most often) is reported (and published) now.
    fn check(&mut self) {
        let (m, recent) = self.observe();
        let before = self.health.state();
        let thresholds = *self.thresholds.borrow();
        if self.health.worsen(&m, &recent, &thresholds) {
            let state = self.health.state();
            info!(tunnel = %self.target.tunnel_id, from = before.as_str(), to = state.as_str(), loss = m.loss, latency = ?m.latency, lost_in_a_row = recent.lost_in_a_row, "tunnel state");
            self.send_report(state, m);
            self.worsened.notify_one();
        }
    }

    fn send_report(&self, state: TunnelState, m: Measurements) {
        self.report.send_replace(ProbeReport {
            state,
            measurements: m,
            counters: self.counters,
            source: self.target.local,
            target: self.target.peer,
            updated: SystemTime::now(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> ProbeTarget {
        ProbeTarget {
            tunnel_id: "t7".into(),
            tunnel_index: 7,
            interface: "sdwan7".into(),
            local: "100.64.0.14:20007".parse().unwrap(),
            peer: "100.64.0.15:20007".parse().unwrap(),
            initiator: true,
        }
    }

    fn packet(kind: Kind, tunnel_index: u64, cookie: u64) -> [u8; wire::LEN] {
        Packet {
            kind,
            tunnel_index,
            cookie,
            seq: 3,
            timestamp_ns: 99,
        }
        .encode()
    }

    #[test]
    fn classify_by_source_index_cookie() {
        let t = target();
        let peer = t.peer;
        let other_port: SocketAddr = "100.64.0.15:40000".parse().unwrap();
        let behind_peer: SocketAddr = "10.2.0.9:20007".parse().unwrap();
        let req = packet(Kind::Request, 7, 1234);
        assert!(matches!(
            classify(&req, peer, &t, 42),
            Inbound::Request(p) if p.cookie == 1234 && p.seq == 3
        ));
        // The port is not checked: the address is what the tunnel vouches for.
        assert!(matches!(
            classify(&req, other_port, &t, 42),
            Inbound::Request(_)
        ));
        assert_eq!(classify(&req, behind_peer, &t, 42), Inbound::Foreign);
        assert_eq!(
            classify(&packet(Kind::Request, 8, 1234), peer, &t, 42),
            Inbound::Foreign
        );
        assert_eq!(
            classify(&packet(Kind::Reply, 7, 42), peer, &t, 42),
            Inbound::Reply { seq: 3 }
        );
        assert_eq!(
            classify(&packet(Kind::Reply, 7, 43), peer, &t, 42),
            Inbound::Foreign
        );
        assert_eq!(
            classify(&packet(Kind::Reply, 6, 42), peer, &t, 42),
            Inbound::Foreign
        );
        assert_eq!(classify(&req[..39], peer, &t, 42), Inbound::Malformed);
        assert_eq!(classify(b"hello", peer, &t, 42), Inbound::Malformed);
    }

    #[test]
    fn settings_never_spin() {
        let s = ProbeSettings {
            interval: Duration::ZERO,
            count: 0,
            ..ProbeSettings::default()
        };
        assert_eq!(s.interval(), MIN_SPACING);
        assert_eq!(s.spacing(), MIN_SPACING);
        let s = ProbeSettings {
            count: 1000,
            ..ProbeSettings::default()
        };
        assert_eq!(s.spacing(), MIN_SPACING);
        assert_eq!(
            ProbeSettings::default().spacing(),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn grid_is_shared() {
        let epoch = Instant::now() - Duration::from_millis(2500);
        let next = next_on_grid(epoch, Duration::from_secs(1));
        assert_eq!(next - epoch, Duration::from_secs(3));
    }

    #[tokio::test]
    async fn unbindable_tunnel_is_down_and_set_targets_is_idempotent() {
        let settings = ProbeSettings {
            interval: Duration::from_millis(50),
            count: 2,
            window: Duration::from_millis(200),
            timeout: Duration::from_millis(50),
            ..ProbeSettings::default()
        };
        let h = spawn(settings);
        let mut rx = h.reports();
        // No such interface: the socket never binds, probes are unsent and lost.
        let mut t = target();
        t.interface = "gw-absent0".into();
        h.set_targets(vec![t.clone()]);
        h.set_targets(vec![t.clone()]);
        tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                rx.changed().await.unwrap();
                let r = rx.borrow_and_update().get("t7").copied();
                if let Some(r) = r
                    && r.counters.unsent >= 4
                {
                    assert_eq!(r.state, TunnelState::Down);
                    assert_eq!(r.counters.sent, 0);
                    break;
                }
            }
        })
        .await
        .expect("reports of the unbindable tunnel");
        h.set_targets(Vec::new());
        tokio::time::timeout(Duration::from_secs(2), async {
            while rx.borrow_and_update().contains_key("t7") {
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("removed tunnel leaves the reports");
    }
}
