//! One configured peer (thin adapter): outgoing connection attempts with exponential
//! backoff, incoming connections handed over by the listener, connection collision
//! resolution (RFC 4271 §6.8, RFC 6286 §2.3), the peer's state for `peers()`, and the
//! receiving side of graceful restart (RFC 4724 §4.2): keep a restarting peer's routes
//! stale until its End-of-RIB or its restart time, then flush what is still stale.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustbgpd_fsm::PeerConfig;
use rustbgpd_wire::notification::cease_subcode;
use rustbgpd_wire::{Afi, Safi};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::import::{ImportPolicy, MaxPrefixAction};
use super::rib_in::RibInCmd;
use super::rib_out::Desired;
use super::session::{self, ConnCmd, ConnSetup, Direction, PeerGracefulRestart, Report, Verdict};
use super::settings::PeerSettings;
use super::status::{PeerState, SharedStatus};

/// BGP's TCP port (RFC 4271 §8.2.1).
pub const BGP_PORT: u16 = 179;
/// A session that lasted this long was healthy: the next reconnect starts the backoff over.
const STABLE_SESSION: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Delay before reconnect attempt number `failures` (0: at once): 1 s doubling to 60 s.
pub fn reconnect_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (failures - 1).min(6)).min(MAX_BACKOFF)
}

/// Spreads reconnects of many peers by ±10 % (cheap entropy from the clock; no RNG needed).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let permille = 900 + u64::from(nanos % 201);
    d * permille as u32 / 1000
}

/// Which of two colliding connections survives (RFC 4271 §6.8; equal identifiers, only
/// possible on eBGP, per RFC 6286 §2.3): true if the one the peer initiated.
pub fn keep_inbound(
    local_id: Ipv4Addr,
    remote_id: Ipv4Addr,
    local_asn: u32,
    peer_asn: u32,
) -> bool {
    if local_id == remote_id {
        peer_asn > local_asn
    } else {
        u32::from(local_id) < u32::from(remote_id)
    }
}

/// Speaker-wide facts a peer task needs.
pub(crate) struct PeerContext {
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    pub restart_time: Option<Duration>,
    /// The import policy now: a configuration reload changes it.
    pub import: watch::Receiver<Arc<ImportPolicy>>,
    pub settings: PeerSettings,
}

pub(crate) enum PeerCmd {
    Shutdown(oneshot::Sender<()>),
}

struct Slot {
    id: u64,
    direction: Direction,
    state: PeerState,
    bgp_id: Option<Ipv4Addr>,
    established_at: Option<Instant>,
    peer_gr: Option<PeerGracefulRestart>,
    /// Its routes were already marked stale by a restart takeover.
    stale_handled: bool,
    cmd: mpsc::Sender<ConnCmd>,
    task: JoinHandle<()>,
}

pub(crate) struct PeerTask {
    ctx: Arc<PeerContext>,
    status: SharedStatus,
    rib_in: mpsc::Sender<RibInCmd>,
    desired: watch::Receiver<Desired>,
    inbound: mpsc::Receiver<TcpStream>,
    commands: mpsc::Receiver<PeerCmd>,
    reports_tx: mpsc::Sender<Report>,
    reports: mpsc::Receiver<Report>,
    slots: Vec<Slot>,
    next_id: u64,
    connecting: Option<JoinHandle<std::io::Result<TcpStream>>>,
    failures: u32,
    retry_at: Instant,
    /// The last session ended by an error (Idle until the next attempt) rather than a
    /// failed connect (Active).
    idle: bool,
    had_session: bool,
    stale: Option<Instant>,
    /// The session was torn down for exceeding `max_prefixes`: no connection until then.
    held: Option<Held>,
}

/// How long a peer torn down for too many prefixes stays Idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Until(Instant),
    /// No `restart_after`: until bgpctl restarts (the operator's action).
    Forever,
}

impl PeerTask {
    pub(crate) fn new(
        ctx: Arc<PeerContext>,
        status: SharedStatus,
        rib_in: mpsc::Sender<RibInCmd>,
        desired: watch::Receiver<Desired>,
        inbound: mpsc::Receiver<TcpStream>,
        commands: mpsc::Receiver<PeerCmd>,
    ) -> PeerTask {
        let (reports_tx, reports) = mpsc::channel(64);
        PeerTask {
            ctx,
            status,
            rib_in,
            desired,
            inbound,
            commands,
            reports_tx,
            reports,
            slots: Vec::new(),
            next_id: 0,
            connecting: None,
            failures: 0,
            retry_at: Instant::now(),
            idle: false,
            had_session: false,
            stale: None,
            held: None,
        }
    }

    fn peer(&self) -> IpAddr {
        self.ctx.settings.address
    }

    pub(crate) async fn run(mut self) {
        loop {
            if let Some(Held::Until(t)) = self.held
                && Instant::now() >= t
            {
                tracing::info!(peer = %self.peer(), "max_prefixes restart_after over: connecting again");
                self.held = None;
            }
            self.maybe_connect();
            self.publish_state();
            let retry = match self.held {
                Some(Held::Until(t)) => Some(t),
                Some(Held::Forever) => None,
                None => (!self.ctx.settings.passive
                    && self.connecting.is_none()
                    && self.slots.is_empty())
                .then_some(self.retry_at),
            };
            tokio::select! {
                Some(r) = self.reports.recv() => self.on_report(r).await,
                res = join_opt(&mut self.connecting) => {
                    self.connecting = None;
                    match res {
                        Ok(Ok(stream)) => self.start_conn(stream, Direction::Outbound),
                        Ok(Err(e)) => self.connect_failed(&e.to_string()),
                        Err(e) => self.connect_failed(&e.to_string()),
                    }
                }
                Some(stream) = self.inbound.recv() => self.on_inbound(stream),
                cmd = self.commands.recv() => {
                    // A closed channel (handle dropped) shuts down as well.
                    let ack = cmd.map(|PeerCmd::Shutdown(ack)| ack);
                    self.shutdown().await;
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    return;
                }
                _ = sleep_until(retry), if retry.is_some() => {}
                _ = sleep_until(self.stale), if self.stale.is_some() => {
                    self.stale = None;
                    tracing::info!(peer = %self.peer(), "restart time over: flushing stale routes");
                    let _ = self.rib_in.send(RibInCmd::FlushStale(self.peer())).await;
                }
            }
        }
    }

    fn maybe_connect(&mut self) {
        let s = &self.ctx.settings;
        if s.passive
            || self.held.is_some()
            || self.connecting.is_some()
            || !self.slots.is_empty()
            || Instant::now() < self.retry_at
        {
            return;
        }
        let addr = SocketAddr::new(s.address, BGP_PORT);
        let local = s.local_address;
        let key = s.password.clone().map(String::into_bytes);
        self.connecting = Some(tokio::spawn(async move {
            super::transport::connect(addr, local, key.as_deref(), CONNECT_TIMEOUT).await
        }));
    }

    fn connect_failed(&mut self, why: &str) {
        self.failures += 1;
        self.idle = false;
        self.retry_at = Instant::now() + jitter(reconnect_delay(self.failures));
        let text = format!("connect: {why}");
        tracing::debug!(peer = %self.peer(), "{text}");
        self.status.update(|s| s.last_error = Some(text));
    }

    fn on_inbound(&mut self, stream: TcpStream) {
        if self.held.is_some() {
            tracing::debug!(peer = %self.peer(), "refusing a connection: held down after max_prefixes");
            return;
        }
        if self.slots.len() >= 4 {
            tracing::debug!(peer = %self.peer(), "refusing a further connection");
            return;
        }
        // A peer never opens two connections to us at once: a new one replaces one still
        // in setup (the peer gave up on it, e.g. it restarted). Against an Established
        // session the new connection goes through collision handling at OPEN time (a
        // restarting peer, RFC 4724 §4.2, or a collision, RFC 4271 §6.8).
        for s in &self.slots {
            if s.direction == Direction::Inbound && s.state != PeerState::Established {
                let _ = s.cmd.try_send(ConnCmd::Stop(None));
            }
        }
        self.start_conn(stream, Direction::Inbound);
    }

    fn fsm_config(&self) -> PeerConfig {
        let s = &self.ctx.settings;
        let mut c = PeerConfig::new(self.ctx.local_asn, s.asn, self.ctx.router_id);
        c.hold_time = u16::try_from(s.hold_time.as_secs()).unwrap_or(u16::MAX);
        c.families = vec![(Afi::L2Vpn, Safi::Evpn)];
        // The session exists for EVPN: a peer without it is refused with 2/7.
        c.required_families = vec![(Afi::L2Vpn, Safi::Evpn)];
        c.disable_ipv4_unicast = true;
        c.send_hold_time = 0;
        if let Some(t) = self.ctx.restart_time {
            c.graceful_restart = true;
            c.gr_restart_time = u16::try_from(t.as_secs()).unwrap_or(4095).min(4095);
        }
        c
    }

    fn start_conn(&mut self, stream: TcpStream, direction: Direction) {
        let id = self.next_id;
        self.next_id += 1;
        let (cmd, commands) = mpsc::channel(4);
        let setup = ConnSetup {
            id,
            direction,
            stream,
            fsm: self.fsm_config(),
            restarting: self.ctx.restart_time.is_some() && !self.had_session,
            peer: self.peer(),
            local_asn: self.ctx.local_asn,
            peer_asn: self.ctx.settings.asn,
            graceful_restart: self.ctx.restart_time.is_some(),
            import: self.ctx.import.clone(),
            max_prefixes: self.ctx.settings.max_prefixes,
            rib_in: self.rib_in.clone(),
            desired: self.desired.clone(),
            status: self.status.clone(),
            reports: self.reports_tx.clone(),
            commands,
        };
        let task = tokio::spawn(session::run(setup));
        self.slots.push(Slot {
            id,
            direction,
            state: PeerState::OpenSent,
            bgp_id: None,
            established_at: None,
            peer_gr: None,
            stale_handled: false,
            cmd,
            task,
        });
    }

    async fn on_report(&mut self, r: Report) {
        match r {
            Report::State { id, state } => {
                if let Some(s) = self.slots.iter_mut().find(|s| s.id == id) {
                    s.state = state;
                }
            }
            Report::OpenReceived { id, bgp_id, reply } => {
                let v = self.resolve_collision(id, bgp_id).await;
                let _ = reply.send(v);
            }
            Report::Established { id, peer_gr } => {
                self.had_session = true;
                self.idle = false;
                for s in &mut self.slots {
                    if s.id == id {
                        s.state = PeerState::Established;
                        s.established_at = Some(Instant::now());
                        s.peer_gr = peer_gr;
                    } else {
                        // The other connection of a collision lost.
                        let _ = s.cmd.try_send(ConnCmd::Stop(Some(session::cease(
                            cease_subcode::CONNECTION_COLLISION_RESOLUTION,
                        ))));
                    }
                }
                if self.stale.is_some() {
                    match peer_gr {
                        // RFC 4724 §4.2: stale routes wait for End-of-RIB.
                        Some(gr) if gr.forwarding_preserved => {
                            self.stale = Some(Instant::now() + gr.restart_time);
                        }
                        // No GR or no forwarding state preserved: flush at once.
                        _ => {
                            self.stale = None;
                            let _ = self.rib_in.send(RibInCmd::FlushStale(self.peer())).await;
                        }
                    }
                }
            }
            Report::EndOfRib => {
                if self.stale.take().is_some() {
                    tracing::info!(peer = %self.peer(), "End-of-RIB: flushing stale routes");
                    let _ = self.rib_in.send(RibInCmd::FlushStale(self.peer())).await;
                }
                // The session handed its UPDATEs to the Adj-RIB-In before reporting, so
                // this arrives after them: readers never see End-of-RIB with a partial table.
                let _ = self.rib_in.send(RibInCmd::EndOfRib(self.peer())).await;
            }
            Report::Closed {
                id,
                established,
                retain_stale,
                error,
                max_prefix_teardown,
            } => {
                self.on_closed(id, established, retain_stale, error).await;
                if max_prefix_teardown {
                    self.hold_after_max_prefixes();
                }
            }
        }
    }

    async fn resolve_collision(&mut self, id: u64, bgp_id: Ipv4Addr) -> Verdict {
        let Some(me) = self.slots.iter().position(|s| s.id == id) else {
            return Verdict::Reject;
        };
        self.slots[me].bgp_id = Some(bgp_id);
        self.slots[me].state = PeerState::OpenConfirm;
        let my_direction = self.slots[me].direction;
        for i in 0..self.slots.len() {
            if i == me {
                continue;
            }
            let other = &self.slots[i];
            match other.state {
                PeerState::Established => {
                    let takeover = self.ctx.restart_time.is_some() && other.peer_gr.is_some();
                    if !takeover {
                        return Verdict::Reject;
                    }
                    // RFC 4724 §4.2: a new connection from a peer whose session we still
                    // hold means it restarted: drop the old one, keep its routes stale.
                    let restart = other.peer_gr.map_or(Duration::ZERO, |g| g.restart_time);
                    let _ = other.cmd.try_send(ConnCmd::Stop(None));
                    self.slots[i].stale_handled = true;
                    self.begin_stale(restart).await;
                }
                PeerState::OpenConfirm => {
                    let inbound = keep_inbound(
                        self.ctx.router_id,
                        bgp_id,
                        self.ctx.local_asn,
                        self.ctx.settings.asn,
                    );
                    if (my_direction == Direction::Inbound) != inbound {
                        return Verdict::Reject;
                    }
                    let _ = other.cmd.try_send(ConnCmd::Stop(Some(session::cease(
                        cease_subcode::CONNECTION_COLLISION_RESOLUTION,
                    ))));
                }
                _ => {}
            }
        }
        Verdict::Proceed
    }

    async fn begin_stale(&mut self, restart_time: Duration) {
        if restart_time.is_zero() {
            let _ = self.rib_in.send(RibInCmd::Clear(self.peer())).await;
            self.stale = None;
            return;
        }
        tracing::info!(peer = %self.peer(), ?restart_time, "peer restarting: keeping its routes stale");
        let _ = self.rib_in.send(RibInCmd::MarkStale(self.peer())).await;
        self.stale = Some(Instant::now() + restart_time);
    }

    async fn on_closed(
        &mut self,
        id: u64,
        established: bool,
        retain_stale: Option<Duration>,
        error: bool,
    ) {
        let Some(i) = self.slots.iter().position(|s| s.id == id) else {
            return;
        };
        let slot = self.slots.remove(i);
        if established && !slot.stale_handled {
            match retain_stale {
                Some(t) => self.begin_stale(t).await,
                None => {
                    self.stale = None;
                    let _ = self.rib_in.send(RibInCmd::Clear(self.peer())).await;
                }
            }
        }
        let stable = slot
            .established_at
            .is_some_and(|t| t.elapsed() >= STABLE_SESSION);
        self.failures = if stable { 1 } else { self.failures + 1 };
        self.idle = error;
        self.retry_at = Instant::now() + jitter(reconnect_delay(self.failures));
    }

    /// After a max-prefix teardown: Idle until `restart_after`, or until bgpctl restarts.
    fn hold_after_max_prefixes(&mut self) {
        let restart_after = match self.ctx.settings.max_prefixes.map(|m| m.action) {
            Some(MaxPrefixAction::Teardown { restart_after }) => restart_after,
            _ => None,
        };
        self.held = Some(
            match restart_after.and_then(|d| Instant::now().checked_add(d)) {
                Some(t) => Held::Until(t),
                None => Held::Forever,
            },
        );
        self.idle = true;
        self.status.update(|s| {
            s.max_prefix_teardowns = s.max_prefix_teardowns.saturating_add(1);
        });
        tracing::warn!(
            peer = %self.peer(),
            ?restart_after,
            "session torn down: more prefixes than max_prefixes.limit; Idle until restart_after (without it, until bgpctl restarts)"
        );
    }

    fn publish_state(&self) {
        let state =
            self.slots
                .iter()
                .map(|s| s.state)
                .max()
                .unwrap_or(if self.connecting.is_some() {
                    PeerState::Connect
                } else if self.held.is_some() || (self.idle && !self.ctx.settings.passive) {
                    PeerState::Idle
                } else {
                    PeerState::Active
                });
        self.status.update(|s| s.state = state);
    }

    /// Sends Cease (administrative shutdown) on every connection and waits for them.
    async fn shutdown(&mut self) {
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        for s in &self.slots {
            let _ = s.cmd.try_send(ConnCmd::Stop(Some(session::cease(
                cease_subcode::ADMINISTRATIVE_SHUTDOWN,
            ))));
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.slots.is_empty() {
            let r = tokio::time::timeout_at(deadline.into(), self.reports.recv()).await;
            match r {
                Ok(Some(Report::Closed { id, .. })) => self.slots.retain(|s| s.id != id),
                Ok(Some(Report::OpenReceived { reply, .. })) => {
                    let _ = reply.send(Verdict::Reject);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for s in self.slots.drain(..) {
            s.task.abort();
        }
        self.status.update(|s| {
            s.state = PeerState::Idle;
            s.established_since = None;
            s.prefixes_sent = 0;
        });
    }
}

async fn join_opt<T>(h: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match h {
        Some(h) => h.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_minute() {
        let secs: Vec<u64> = (0..10).map(|n| reconnect_delay(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(reconnect_delay(u32::MAX), MAX_BACKOFF);
        let d = jitter(Duration::from_secs(10));
        assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11));
    }

    #[test]
    fn collision_keeps_the_higher_identifier_side() {
        let lo: Ipv4Addr = "10.0.0.1".parse().unwrap();
        let hi: Ipv4Addr = "10.0.0.2".parse().unwrap();
        // Our identifier is lower: the peer's connection (inbound for us) survives.
        assert!(keep_inbound(lo, hi, 65000, 65001));
        assert!(!keep_inbound(hi, lo, 65000, 65001));
        // Equal identifiers (eBGP): the larger AS's connection survives.
        assert!(keep_inbound(lo, lo, 65000, 65001));
        assert!(!keep_inbound(lo, lo, 65001, 65000));
    }
}
