//! One BGP connection (thin adapter): TCP reads and writes, message framing, hold and
//! keepalive timers, all driven by a `rustbgpd_fsm::Session`; once Established, the
//! session's Adj-RIB-Out (diffs of the desired set, route refresh, End-of-RIB) and the
//! hand-off of received UPDATEs to the Adj-RIB-In.
//!
//! Reads and writes are multiplexed in one task so that a large table being sent never
//! stops the session from reading (two speakers that both only write would deadlock on
//! full TCP buffers). Outgoing UPDATEs are generated only once the previous batch has
//! been handed to TCP, so a burst of `set_advertised` calls coalesces into one diff.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use rustbgpd_fsm::{Action, Event, NegotiatedSession, PeerConfig, SessionState, TimerType};
use rustbgpd_wire::notification::{cease_subcode, description};
use rustbgpd_wire::{
    Afi, Capability, EXTENDED_MAX_MESSAGE_LEN, MAX_MESSAGE_LEN, Message, NotificationCode,
    NotificationMessage, RouteRefreshSubtype, Safi, decode_message, encode_message,
    encode_message_with_limit, peek_message_length,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};

use super::codec::{self, ExportContext};
use super::inbound::{self, ReceiveContext};
use super::rib_in::RibInCmd;
use super::rib_out::{self, AdjRibOut, Desired};
use super::status::{PeerState, SharedStatus};

/// Output handed to TCP before more is generated (keeps KEEPALIVE latency low).
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// How long a closing session may take to flush its last messages (the NOTIFICATION).
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// We connected to the peer.
    Outbound,
    /// The peer connected to our listener.
    Inbound,
}

/// The peer's graceful-restart capability for L2VPN EVPN (RFC 4724 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerGracefulRestart {
    pub restart_time: Duration,
    /// F bit: the peer kept its forwarding state across the restart.
    pub forwarding_preserved: bool,
}

/// What a connection tells its peer task.
#[derive(Debug)]
pub(crate) enum Report {
    State {
        id: u64,
        state: PeerState,
    },
    /// The peer's OPEN was accepted (OpenConfirm); the peer task resolves connection
    /// collisions (RFC 4271 §6.8) before the session may continue.
    OpenReceived {
        id: u64,
        bgp_id: Ipv4Addr,
        reply: oneshot::Sender<Verdict>,
    },
    Established {
        id: u64,
        peer_gr: Option<PeerGracefulRestart>,
    },
    EndOfRib,
    Closed {
        id: u64,
        established: bool,
        /// The peer's routes are to be kept stale for this long (graceful restart).
        retain_stale: Option<Duration>,
        /// The session ended by an error (NOTIFICATION or transport), not a request.
        error: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Proceed,
    /// Lost the collision: close with Cease / Connection Collision Resolution.
    Reject,
}

#[derive(Debug)]
pub(crate) enum ConnCmd {
    /// Close, sending this NOTIFICATION first (None: close silently, e.g. when a
    /// restarting peer's new connection replaces this one).
    Stop(Option<NotificationMessage>),
}

/// Everything a connection needs; built by the peer task.
pub(crate) struct ConnSetup {
    pub id: u64,
    pub direction: Direction,
    pub stream: TcpStream,
    pub fsm: PeerConfig,
    /// Set the R bit in our graceful-restart capability (first session since start).
    pub restarting: bool,
    pub peer: IpAddr,
    pub local_asn: u32,
    pub peer_asn: u32,
    pub graceful_restart: bool,
    pub rib_in: mpsc::Sender<RibInCmd>,
    pub desired: watch::Receiver<Desired>,
    pub status: SharedStatus,
    pub reports: mpsc::Sender<Report>,
    pub commands: mpsc::Receiver<ConnCmd>,
}

struct Established {
    export: ExportContext,
    receive: ReceiveContext,
    /// What the peer holds from us (or will once `pending` is written).
    sent: Arc<AdjRibOut>,
    pending: VecDeque<Bytes>,
    rib_dirty: bool,
    eor_pending: bool,
    peer_gr: Option<PeerGracefulRestart>,
    /// Both sides support RFC 8538: a NOTIFICATION other than Hard Reset keeps routes.
    notification_gr: bool,
}

struct Conn {
    id: u64,
    peer: IpAddr,
    local_asn: u32,
    peer_asn: u32,
    restarting: bool,
    graceful_restart: bool,
    fsm: rustbgpd_fsm::Session,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_len: u16,
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    established: Option<Established>,
    was_established: bool,
    closing: bool,
    stopped_by_request: bool,
    notification_seen: bool,
    hard_reset: bool,
    desired_open: bool,
    rib_in: mpsc::Sender<RibInCmd>,
    desired: watch::Receiver<Desired>,
    status: SharedStatus,
    reports: mpsc::Sender<Report>,
    commands: mpsc::Receiver<ConnCmd>,
}

/// Runs one connection until it closes, then reports `Closed`.
pub(crate) async fn run(setup: ConnSetup) {
    let ConnSetup {
        id,
        direction,
        stream,
        fsm,
        restarting,
        peer,
        local_asn,
        peer_asn,
        graceful_restart,
        rib_in,
        desired,
        status,
        reports,
        commands,
    } = setup;
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let mut c = Conn {
        id,
        peer,
        local_asn,
        peer_asn,
        restarting,
        graceful_restart,
        fsm: rustbgpd_fsm::Session::new(fsm),
        reader,
        writer,
        rbuf: BytesMut::with_capacity(2 * usize::from(MAX_MESSAGE_LEN)),
        wbuf: BytesMut::with_capacity(WRITE_HIGH_WATER),
        max_len: MAX_MESSAGE_LEN,
        hold_at: None,
        keepalive_at: None,
        established: None,
        was_established: false,
        closing: false,
        stopped_by_request: false,
        notification_seen: false,
        hard_reset: false,
        desired_open: true,
        rib_in,
        desired,
        status,
        reports,
        commands,
    };
    // The transport is already connected: Idle → Connect → OpenSent (OPEN is sent).
    c.event(Event::ManualStart).await;
    c.event(match direction {
        Direction::Outbound => Event::TcpConnectionConfirmed,
        Direction::Inbound => Event::TcpConnectionAcknowledged,
    })
    .await;
    c.run_loop().await;
    c.finish().await;
}

impl Conn {
    async fn run_loop(&mut self) {
        while !self.closing {
            self.fill_write_buffer();
            if let Some(est) = &self.established
                && est.rib_dirty
                && est.pending.is_empty()
                && self.wbuf.len() < WRITE_HIGH_WATER
            {
                self.generate_updates();
                continue;
            }
            let next_timer = match (self.hold_at, self.keepalive_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let watch_rib =
                self.desired_open && self.established.as_ref().is_some_and(|e| !e.rib_dirty);
            tokio::select! {
                r = self.reader.read_buf(&mut self.rbuf) => match r {
                    Ok(0) => self.transport_failed("connection closed by peer").await,
                    Ok(_) => self.process_input().await,
                    Err(e) => self.transport_failed(&format!("read: {e}")).await,
                },
                r = self.writer.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => {
                    if let Err(e) = r {
                        self.transport_failed(&format!("write: {e}")).await;
                    }
                }
                _ = sleep_until(next_timer), if next_timer.is_some() => self.fire_timers().await,
                r = self.desired.changed(), if watch_rib => match r {
                    Ok(()) => {
                        if let Some(est) = &mut self.established {
                            est.rib_dirty = true;
                        }
                    }
                    Err(_) => self.desired_open = false,
                },
                cmd = self.commands.recv() => match cmd {
                    Some(ConnCmd::Stop(n)) => self.stop(n),
                    None => self.stop(Some(cease(cease_subcode::ADMINISTRATIVE_SHUTDOWN))),
                },
            }
        }
    }

    /// Moves queued UPDATEs into the write buffer up to the high-water mark.
    fn fill_write_buffer(&mut self) {
        let Some(est) = &mut self.established else {
            return;
        };
        while self.wbuf.len() < WRITE_HIGH_WATER {
            match est.pending.pop_front() {
                Some(m) => self.wbuf.extend_from_slice(&m),
                None => break,
            }
        }
    }

    /// Diffs the desired set against what was sent and queues the UPDATEs.
    fn generate_updates(&mut self) {
        let Some(est) = &mut self.established else {
            return;
        };
        let Some(desired) = self.desired.borrow_and_update().clone() else {
            // Nothing set yet: the initial table waits for it (see `Desired`); the
            // watch wakes this session when it comes.
            est.rib_dirty = false;
            return;
        };
        let diff = rib_out::diff(&est.sent, &desired);
        let msgs = rib_out::updates(&diff, &est.export);
        let n = msgs.len() as u64;
        est.pending.extend(msgs);
        est.sent = desired;
        est.rib_dirty = false;
        if est.eor_pending {
            // RFC 4724 §4.1: End-of-RIB once the initial table is out.
            est.pending.push_back(codec::end_of_rib());
            est.eor_pending = false;
        }
        let sent = est.sent.len() as u64;
        self.status.update(|s| {
            s.prefixes_sent = sent;
            s.updates_sent += n;
        });
    }

    async fn process_input(&mut self) {
        while !self.closing {
            let len = match peek_message_length(&self.rbuf, self.max_len) {
                Ok(Some(len)) => usize::from(len),
                Ok(None) => return,
                Err(e) => {
                    self.count_malformed();
                    self.event(Event::DecodeError(e)).await;
                    return;
                }
            };
            if self.rbuf.len() < len {
                self.rbuf.reserve(len - self.rbuf.len());
                return;
            }
            let mut frame = self.rbuf.split_to(len).freeze();
            match decode_message(&mut frame, self.max_len) {
                Ok(m) => self.handle_message(m).await,
                Err(e) => {
                    self.count_malformed();
                    self.event(Event::DecodeError(e)).await;
                }
            }
        }
    }

    fn count_malformed(&self) {
        self.status.update(|s| s.input.malformed_resets += 1);
    }

    async fn handle_message(&mut self, m: Message) {
        match m {
            Message::Open(open) => {
                let bgp_id = open.bgp_identifier;
                let actions = self.fsm.handle_event(Event::OpenReceived(open));
                if self.fsm.state() == SessionState::OpenConfirm {
                    let (tx, rx) = oneshot::channel();
                    let asked = self
                        .reports
                        .send(Report::OpenReceived {
                            id: self.id,
                            bgp_id,
                            reply: tx,
                        })
                        .await;
                    if asked.is_err() || rx.await != Ok(Verdict::Proceed) {
                        self.stop(Some(cease(cease_subcode::CONNECTION_COLLISION_RESOLUTION)));
                        return;
                    }
                }
                self.execute(actions).await;
            }
            Message::Keepalive => self.event(Event::KeepaliveReceived).await,
            Message::Notification(n) => {
                self.notification_seen = true;
                self.hard_reset |= is_hard_reset(&n);
                let text = format!("received NOTIFICATION {}", describe(&n));
                tracing::info!(peer = %self.peer, "{text}");
                self.status.update(|s| s.last_error = Some(text));
                self.event(Event::NotificationReceived(n)).await;
            }
            Message::Update(u) => {
                self.status.update(|s| s.updates_received += 1);
                let Some(est) = &self.established else {
                    // UPDATE before Established: the FSM answers with an FSM error.
                    self.event(Event::UpdateReceived).await;
                    return;
                };
                match inbound::process_update(&u, &est.receive) {
                    Ok(out) => {
                        self.status.update(|s| {
                            s.input.treat_as_withdraw += u64::from(out.treat_as_withdraw);
                            s.input.attributes_discarded += u64::from(out.attributes_discarded);
                            s.input.nlri_ignored += u64::from(out.ignored_nlri);
                            s.input.as_path_loops += u64::from(out.as_path_loops);
                        });
                        if let Some(reason) = &out.reason {
                            tracing::debug!(peer = %self.peer, treat_as_withdraw = out.treat_as_withdraw, "UPDATE repaired: {reason}");
                        }
                        if !out.announced.is_empty() || !out.withdrawn.is_empty() {
                            let _ = self
                                .rib_in
                                .send(RibInCmd::Update {
                                    peer: self.peer,
                                    announced: out.announced,
                                    withdrawn: out.withdrawn,
                                })
                                .await;
                        }
                        if out.end_of_rib {
                            let _ = self.reports.send(Report::EndOfRib).await;
                        }
                        self.event(Event::UpdateReceived).await;
                    }
                    Err(n) => {
                        self.count_malformed();
                        self.event(Event::UpdateValidationError(n)).await;
                    }
                }
            }
            Message::RouteRefresh(rr) => {
                let evpn = rr.afi() == Some(Afi::L2Vpn) && rr.safi() == Some(Safi::Evpn);
                if let Some(est) = &mut self.established
                    && evpn
                    && rr.subtype() == RouteRefreshSubtype::Normal
                {
                    // RFC 2918: re-advertise the whole Adj-RIB-Out for the family.
                    let all: Vec<_> = est.sent.iter().collect();
                    let msgs = codec::announce_updates(&all, &est.export);
                    let n = msgs.len() as u64;
                    est.pending.extend(msgs);
                    self.status.update(|s| s.updates_sent += n);
                }
                let (Some(afi), Some(safi)) = (rr.afi(), rr.safi()) else {
                    return;
                };
                self.event(Event::RouteRefreshReceived { afi, safi }).await;
            }
            _ => {}
        }
    }

    async fn fire_timers(&mut self) {
        let now = Instant::now();
        if self.hold_at.is_some_and(|t| t <= now) {
            self.hold_at = None;
            self.event(Event::HoldTimerExpires).await;
        }
        if self.keepalive_at.is_some_and(|t| t <= now) {
            self.keepalive_at = None;
            self.event(Event::KeepaliveTimerExpires).await;
        }
    }

    async fn transport_failed(&mut self, why: &str) {
        if self.closing {
            return;
        }
        let text = why.to_string();
        self.status.update(|s| s.last_error = Some(text));
        self.event(Event::TcpConnectionFails).await;
        // The FSM may keep the (dead) connection in some states; it is gone either way.
        self.closing = true;
    }

    /// Closes on request (shutdown, collision, restart takeover).
    fn stop(&mut self, n: Option<NotificationMessage>) {
        self.stopped_by_request = true;
        if let Some(n) = n {
            self.send_notification(n);
        }
        self.closing = true;
    }

    async fn event(&mut self, e: Event) {
        let actions = self.fsm.handle_event(e);
        self.execute(actions).await;
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::SendOpen(mut open) => {
                    adjust_open(&mut open.capabilities, self.restarting);
                    self.write_message(&Message::Open(open));
                }
                Action::SendKeepalive => self.write_message(&Message::Keepalive),
                Action::SendNotification(n) => self.send_notification(n),
                Action::StartTimer(t, secs) => {
                    let at = Some(Instant::now() + Duration::from_secs(u64::from(secs)));
                    match t {
                        TimerType::Hold => self.hold_at = at,
                        TimerType::Keepalive => self.keepalive_at = at,
                        // Reconnecting is the peer task's job (with its own backoff).
                        _ => {}
                    }
                }
                Action::StopTimer(TimerType::Hold) => self.hold_at = None,
                Action::StopTimer(TimerType::Keepalive) => self.keepalive_at = None,
                Action::CloseTcpConnection => self.closing = true,
                Action::StateChanged { new, .. } => {
                    let _ = self
                        .reports
                        .send(Report::State {
                            id: self.id,
                            state: new.into(),
                        })
                        .await;
                }
                Action::SessionEstablished(neg) => self.on_established(&neg).await,
                _ => {}
            }
        }
    }

    fn send_notification(&mut self, n: NotificationMessage) {
        self.notification_seen = true;
        self.hard_reset |= is_hard_reset(&n);
        let text = format!("sent NOTIFICATION {}", describe(&n));
        tracing::info!(peer = %self.peer, "{text}");
        self.status.update(|s| s.last_error = Some(text));
        if let Some(est) = &mut self.established {
            // Nothing queued matters any more; the NOTIFICATION must go out now.
            est.pending.clear();
        }
        self.write_message(&Message::Notification(n));
    }

    fn write_message(&mut self, m: &Message) {
        let encoded = match m {
            Message::Notification(_) => encode_message_with_limit(m, self.max_len),
            _ => encode_message(m),
        };
        match encoded {
            Ok(b) => self.wbuf.extend_from_slice(&b),
            Err(e) => tracing::warn!(peer = %self.peer, "cannot encode {m}: {e}"),
        }
    }

    async fn on_established(&mut self, neg: &NegotiatedSession) {
        let ibgp = self.peer_asn == self.local_asn;
        if neg.peer_extended_message {
            self.max_len = EXTENDED_MAX_MESSAGE_LEN;
        }
        let peer_gr = neg
            .peer_gr_families
            .iter()
            .find(|f| (f.afi, f.safi) == (Afi::L2Vpn, Safi::Evpn))
            .filter(|_| neg.peer_gr_capable)
            .map(|f| PeerGracefulRestart {
                restart_time: Duration::from_secs(u64::from(neg.peer_restart_time)),
                forwarding_preserved: f.forwarding_preserved,
            });
        self.established = Some(Established {
            export: ExportContext {
                local_asn: self.local_asn,
                ibgp,
                four_octet_as: neg.four_octet_as,
            },
            receive: ReceiveContext {
                local_asn: self.local_asn,
                peer_asn: self.peer_asn,
                ibgp,
                four_octet_as: neg.four_octet_as,
            },
            sent: Arc::new(AdjRibOut::default()),
            pending: VecDeque::new(),
            rib_dirty: true,
            eor_pending: true,
            peer_gr,
            notification_gr: neg.peer_notification_gr,
        });
        self.was_established = true;
        let hold = Duration::from_secs(u64::from(neg.hold_time));
        let router_id = neg.peer_router_id;
        {
            let mut cell = self.status.lock();
            cell.established_at = Some(Instant::now());
            let s = &mut cell.status;
            s.established_since = Some(SystemTime::now());
            s.peer_router_id = Some(router_id);
            s.hold_time = Some(hold);
            s.established_count += 1;
            s.prefixes_sent = 0;
        }
        tracing::info!(peer = %self.peer, router_id = %router_id, "session established");
        let _ = self
            .reports
            .send(Report::Established {
                id: self.id,
                peer_gr,
            })
            .await;
    }

    /// Flushes what is left (the NOTIFICATION), closes, and reports.
    async fn finish(mut self) {
        let _ = tokio::time::timeout(CLOSE_FLUSH, async {
            while !self.wbuf.is_empty() {
                if self.writer.write_buf(&mut self.wbuf).await.is_err() {
                    break;
                }
            }
            let _ = self.writer.shutdown().await;
        })
        .await;
        let retain_stale = self.established.as_ref().and_then(|est| {
            let gr = est.peer_gr?;
            let notification_ok = !self.notification_seen || est.notification_gr;
            (self.graceful_restart && !self.hard_reset && notification_ok)
                .then_some(gr.restart_time)
        });
        if self.was_established {
            let mut cell = self.status.lock();
            cell.established_at = None;
            cell.status.established_since = None;
            cell.status.hold_time = None;
            cell.status.prefixes_sent = 0;
        }
        let _ = self
            .reports
            .send(Report::Closed {
                id: self.id,
                established: self.was_established,
                retain_stale,
                error: !self.stopped_by_request,
            })
            .await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn cease(subcode: u8) -> NotificationMessage {
    NotificationMessage::new(NotificationCode::Cease, subcode, Bytes::new())
}

fn is_hard_reset(n: &NotificationMessage) -> bool {
    n.code == NotificationCode::Cease && n.subcode == cease_subcode::HARD_RESET
}

/// "2/2 (Bad Peer AS)".
pub(crate) fn describe(n: &NotificationMessage) -> String {
    format!(
        "{}/{} ({})",
        n.code.as_u8(),
        n.subcode,
        description(n.code, n.subcode)
    )
}

/// Our OPEN as the FSM builds it, adjusted for what the FSM cannot know:
/// - graceful restart (RFC 4724 §3): the R bit on the first session after the process
///   started (we may be a restarting speaker), and the F bit for EVPN, since the gatewans'
///   data plane forwards on while bgpctl restarts;
/// - no Enhanced Route Refresh (RFC 7313): plain ROUTE-REFRESH is answered, BoRR/EoRR is
///   not implemented, so it is not announced.
pub(crate) fn adjust_open(caps: &mut Vec<Capability>, restarting: bool) {
    caps.retain(|c| !matches!(c, Capability::EnhancedRouteRefresh));
    for c in caps.iter_mut() {
        if let Capability::GracefulRestart {
            restart_state,
            families,
            ..
        } = c
        {
            *restart_state = restarting;
            for f in families.iter_mut() {
                f.forwarding_preserved = true;
            }
        }
    }
}
