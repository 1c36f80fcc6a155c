//! One BGP connection's decisions (pure, sans-I/O): [`SessionCore`] owns everything a
//! session decides; its tokio adapter, the `session` module, only carries it out:
//! - message framing and decoding of the octets read, and the NOTIFICATION a malformed
//!   message earns (RFC 4271 §6, RFC 7606 through [`super::inbound`]), counted;
//! - the `rustbgpd_fsm::Session` and its events; our OPEN as the FSM cannot build it
//!   ([`adjust_open`]); the pause for the peer task's collision verdict after an OPEN;
//! - the hold and keepalive timers, as deadlines: the adapter sleeps until
//!   [`SessionCore::next_deadline`] and feeds [`Input::Tick`];
//! - once Established, the session's Adj-RIB-Out: the initial table held back until the
//!   owner first sets the desired table (see [`Desired`]), End-of-RIB after it
//!   (RFC 4724 §4.1), diffs of later tables, the whole table again on ROUTE-REFRESH
//!   (RFC 2918); UPDATEs are generated only when the adapter has room for them
//!   ([`Input::SendRoom`]), so a burst of desired tables coalesces into one diff;
//! - received UPDATEs through the import policy ([`super::import`]: route targets, prefix
//!   allow-list; a refused announcement withdraws the route it replaces) and the peer's
//!   `max_prefixes` (warn, stop-learning, or teardown with Cease / Maximum Number of
//!   Prefixes Reached, RFC 4486), counted;
//! - received UPDATEs for the Adj-RIB-In, received End-of-RIB, the state changes and the
//!   facts of the close (graceful restart: keep the peer's routes stale or not) for the
//!   peer task; the peer's status counters.
//!
//! Time comes in with each input (`now`); nothing here reads a clock, sleeps or does I/O.
//! Every number taken from the wire is checked before arithmetic; nothing from the
//! network can panic the core.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustbgpd_fsm::{Action, Event, NegotiatedSession, PeerConfig, SessionState, TimerType};
use rustbgpd_wire::notification::{cease_subcode, description};
use rustbgpd_wire::{
    Afi, Capability, EXTENDED_MAX_MESSAGE_LEN, MAX_MESSAGE_LEN, Message, NotificationCode,
    NotificationMessage, RouteRefreshMessage, RouteRefreshSubtype, Safi, decode_message,
    encode_message, encode_message_with_limit, peek_message_length,
};

use super::codec::{self, ExportContext};
use super::import::{ImportPolicy, MaxPrefixAction, MaxPrefixes};
use super::inbound::{self, ReceiveContext, ReceivedKey, ReceivedType5};
use super::rib_in::RibInCmd;
use super::rib_out::{self, AdjRibOut, Desired};
use super::status::{PeerState, SharedStatus};

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

/// The peer task's answer to [`Output::OpenReceived`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Proceed,
    /// Lost the collision: close with Cease / Connection Collision Resolution.
    Reject,
}

/// What a connection is, fixed for its life; built by the peer task.
#[derive(Debug, Clone)]
pub(crate) struct SessionParams {
    pub direction: Direction,
    pub fsm: PeerConfig,
    /// Set the R bit in our graceful-restart capability (first session since start).
    pub restarting: bool,
    pub peer: IpAddr,
    pub local_asn: u32,
    pub peer_asn: u32,
    /// We keep a restarting peer's routes (RFC 4724 receiving side).
    pub graceful_restart: bool,
    /// Which received routes are kept.
    pub import: Arc<ImportPolicy>,
    /// How many routes the peer may send on this session.
    pub max_prefixes: Option<MaxPrefixes>,
    /// The desired Adj-RIB-Out when the connection starts.
    pub desired: Desired,
}

/// What happens to a session, as the adapter sees it.
#[derive(Debug)]
pub(crate) enum Input {
    /// The transport is connected: start the FSM and send our OPEN.
    Connected,
    /// Octets read from the connection, split anywhere.
    Received(Bytes),
    /// The peer task's answer to [`Output::OpenReceived`].
    Verdict(Verdict),
    /// The owner set a new desired Adj-RIB-Out.
    Desired(Desired),
    /// A new import policy (configuration reload): the peer is asked for its routes again.
    Import(Arc<ImportPolicy>),
    /// The connection takes this many more octets of UPDATEs now (the adapter asks when
    /// [`SessionCore::wants_to_send`] says so).
    SendRoom(usize),
    /// The time passed: fires the timers due at `now` (see [`SessionCore::next_deadline`]).
    Tick,
    /// The transport failed or the peer closed it.
    TransportFailed(String),
    /// The peer task closes this connection, sending this NOTIFICATION first (None: close
    /// silently, e.g. when a restarting peer's new connection replaces this one).
    Stop(Option<NotificationMessage>),
}

/// What the adapter is to do, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// Write these octets (one encoded message) to the peer.
    Send(Bytes),
    /// Report the FSM state to the peer task.
    State(PeerState),
    /// The peer's OPEN was accepted (OpenConfirm): ask the peer task to resolve
    /// collisions (RFC 4271 §6.8) and answer with [`Input::Verdict`]. Nothing more is
    /// read from the peer until then.
    OpenReceived { bgp_id: Ipv4Addr },
    /// Report the session Established to the peer task.
    Established {
        peer_gr: Option<PeerGracefulRestart>,
    },
    /// Hand this to the Adj-RIB-In.
    RibIn(RibInCmd),
    /// Report the peer's End-of-RIB to the peer task (after its UPDATEs went to the
    /// Adj-RIB-In).
    EndOfRib,
    /// Close the connection once what was sent is flushed; then call
    /// [`SessionCore::finish`].
    Close,
}

/// How a connection ended: what the peer task is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed {
    pub established: bool,
    /// The peer's routes are to be kept stale for this long (graceful restart).
    pub retain_stale: Option<Duration>,
    /// The session ended by an error (NOTIFICATION or transport), not a request.
    pub error: bool,
    /// We closed it: the peer sent more than its `max_prefixes` (teardown). Its routes
    /// are not kept, and the peer task holds the peer Idle.
    pub max_prefix_teardown: bool,
}

/// Why the connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// The peer task asked (shutdown, collision, restart takeover).
    Requested,
    /// A NOTIFICATION, the FSM or the transport.
    Error,
}

/// The NOTIFICATIONs seen on this connection, either way (RFC 8538: only a Hard Reset
/// ends graceful restart when both sides support notification GR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Notified {
    None,
    Some,
    HardReset,
}

/// The Established part of a session: its Adj-RIB-Out and what was negotiated.
struct Established {
    export: ExportContext,
    receive: ReceiveContext,
    /// What the peer holds from us (or will once `queue` is sent); None until the initial
    /// table went out (End-of-RIB follows it).
    sent: Option<Arc<AdjRibOut>>,
    /// UPDATEs generated and not yet handed to the adapter.
    queue: VecDeque<Bytes>,
    /// The peer asked for a route refresh: the whole of `sent` goes out again once `queue`
    /// drains. A flag, not a queued copy, so repeated requests coalesce.
    refresh_pending: bool,
    peer_gr: Option<PeerGracefulRestart>,
    /// Both sides support RFC 8538: a NOTIFICATION other than Hard Reset keeps routes.
    notification_gr: bool,
    /// The peer announced ROUTE-REFRESH (RFC 2918): it sends its routes again on request.
    peer_route_refresh: bool,
}

impl Established {
    /// The desired table differs from what was sent (a new table is a new `Arc`).
    fn behind(&self, desired: &Desired) -> bool {
        match (&self.sent, desired) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(sent), Some(d)) => !Arc::ptr_eq(sent, d),
        }
    }
}

/// One connection's state and decisions; see the module documentation.
pub(crate) struct SessionCore {
    params: SessionParams,
    fsm: rustbgpd_fsm::Session,
    status: SharedStatus,
    rbuf: BytesMut,
    max_len: u16,
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    /// The FSM's actions for the peer's OPEN, held until the collision verdict.
    awaiting_verdict: Option<Vec<Action>>,
    established: Option<Established>,
    closing: Option<Closing>,
    notified: Notified,
    /// Routes of this session that passed the import policy, counted for `max_prefixes`
    /// (kept only when a limit is set).
    accepted: HashSet<ReceivedKey>,
    /// `max_prefixes` warnings given on this session: (threshold, limit).
    warned: (bool, bool),
    max_prefix_teardown: bool,
    out: Vec<Output>,
}

impl SessionCore {
    pub(crate) fn new(params: SessionParams, status: SharedStatus) -> SessionCore {
        SessionCore {
            fsm: rustbgpd_fsm::Session::new(params.fsm.clone()),
            params,
            status,
            rbuf: BytesMut::new(),
            max_len: MAX_MESSAGE_LEN,
            hold_at: None,
            keepalive_at: None,
            awaiting_verdict: None,
            established: None,
            closing: None,
            notified: Notified::None,
            accepted: HashSet::new(),
            warned: (false, false),
            max_prefix_teardown: false,
            out: Vec::new(),
        }
    }

    /// Takes one input at `now`; returns what to do, in order. Once the core has output
    /// [`Output::Close`], further input is ignored.
    pub(crate) fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        if self.closing.is_some() {
            return Vec::new();
        }
        match input {
            Input::Connected => {
                // The transport is already connected: Idle → Connect → OpenSent (OPEN).
                self.event(Event::ManualStart, now);
                self.event(
                    match self.params.direction {
                        Direction::Outbound => Event::TcpConnectionConfirmed,
                        Direction::Inbound => Event::TcpConnectionAcknowledged,
                    },
                    now,
                );
            }
            Input::Received(bytes) => {
                self.rbuf.extend_from_slice(&bytes);
                self.process_input(now);
            }
            Input::Verdict(v) => {
                if let Some(actions) = self.awaiting_verdict.take() {
                    match v {
                        Verdict::Proceed => {
                            self.execute(actions, now);
                            self.process_input(now);
                        }
                        Verdict::Reject => {
                            self.stop(Some(cease(cease_subcode::CONNECTION_COLLISION_RESOLUTION)))
                        }
                    }
                }
            }
            Input::Desired(d) => self.params.desired = d,
            Input::Import(policy) => self.set_import(policy),
            Input::SendRoom(room) => self.send_updates(room),
            Input::Tick => self.fire_timers(now),
            Input::TransportFailed(why) => {
                self.status.update(|s| s.last_error = Some(why));
                self.event(Event::TcpConnectionFails, now);
                // The FSM may keep the (dead) connection in some states; it is gone.
                self.close();
            }
            Input::Stop(n) => self.stop(n),
        }
        std::mem::take(&mut self.out)
    }

    /// When the next timer is due ([`Input::Tick`] then), if any runs.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.closing.is_some() {
            return None;
        }
        match (self.hold_at, self.keepalive_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// UPDATEs are queued or due (a new desired table): the adapter should offer room.
    pub(crate) fn wants_to_send(&self) -> bool {
        self.closing.is_none()
            && self.established.as_ref().is_some_and(|e| {
                !e.queue.is_empty() || e.refresh_pending || e.behind(&self.params.desired)
            })
    }

    /// The connection is closed: resets the session's status and says how it ended.
    pub(crate) fn finish(self) -> Closed {
        let established = self.established.is_some();
        let retain_stale = self.established.as_ref().and_then(|est| {
            let gr = est.peer_gr?;
            let notification_ok = match self.notified {
                Notified::None => true,
                Notified::Some => est.notification_gr,
                Notified::HardReset => false,
            };
            let keep = self.params.graceful_restart && notification_ok && !self.max_prefix_teardown;
            keep.then_some(gr.restart_time)
        });
        if established {
            let mut cell = self.status.lock();
            cell.established_at = None;
            cell.status.established_since = None;
            cell.status.hold_time = None;
            cell.status.prefixes_sent = 0;
        }
        Closed {
            established,
            retain_stale,
            error: self.closing != Some(Closing::Requested),
            max_prefix_teardown: self.max_prefix_teardown,
        }
    }

    /// Frames and handles the complete messages read so far.
    fn process_input(&mut self, now: Instant) {
        while self.closing.is_none() && self.awaiting_verdict.is_none() {
            let len = match peek_message_length(&self.rbuf, self.max_len) {
                Ok(Some(len)) => usize::from(len),
                Ok(None) => return,
                Err(e) => {
                    self.count_malformed();
                    self.event(Event::DecodeError(e), now);
                    return;
                }
            };
            if self.rbuf.len() < len {
                self.rbuf.reserve(len - self.rbuf.len());
                return;
            }
            let mut frame = self.rbuf.split_to(len).freeze();
            match decode_message(&mut frame, self.max_len) {
                Ok(m) => self.handle_message(m, now),
                Err(e) => {
                    self.count_malformed();
                    self.event(Event::DecodeError(e), now);
                }
            }
        }
    }

    fn count_malformed(&self) {
        self.status
            .update(|s| s.input.malformed_resets = s.input.malformed_resets.saturating_add(1));
    }

    fn handle_message(&mut self, m: Message, now: Instant) {
        match m {
            Message::Open(open) => {
                let bgp_id = open.bgp_identifier;
                let actions = self.fsm.handle_event(Event::OpenReceived(open));
                if self.fsm.state() == SessionState::OpenConfirm {
                    self.awaiting_verdict = Some(actions);
                    self.out.push(Output::OpenReceived { bgp_id });
                } else {
                    self.execute(actions, now);
                }
            }
            Message::Keepalive => self.event(Event::KeepaliveReceived, now),
            Message::Notification(n) => {
                self.note_notification(&n);
                let text = format!("received NOTIFICATION {}", describe(&n));
                tracing::info!(peer = %self.params.peer, "{text}");
                self.status.update(|s| {
                    s.notifications_received = s.notifications_received.saturating_add(1);
                    s.last_error = Some(text);
                });
                self.event(Event::NotificationReceived(n), now);
            }
            Message::Update(u) => {
                self.status
                    .update(|s| s.updates_received = s.updates_received.saturating_add(1));
                let Some(est) = &self.established else {
                    // UPDATE before Established: the FSM answers with an FSM error.
                    self.event(Event::UpdateReceived, now);
                    return;
                };
                match inbound::process_update(&u, &est.receive) {
                    Ok(out) => {
                        self.status.update(|s| {
                            let i = &mut s.input;
                            i.treat_as_withdraw = i
                                .treat_as_withdraw
                                .saturating_add(u64::from(out.treat_as_withdraw));
                            i.attributes_discarded = i
                                .attributes_discarded
                                .saturating_add(u64::from(out.attributes_discarded));
                            i.nlri_ignored =
                                i.nlri_ignored.saturating_add(u64::from(out.ignored_nlri));
                            i.as_path_loops =
                                i.as_path_loops.saturating_add(u64::from(out.as_path_loops));
                        });
                        if let Some(reason) = &out.reason {
                            tracing::debug!(peer = %self.params.peer, treat_as_withdraw = out.treat_as_withdraw, "UPDATE repaired: {reason}");
                        }
                        let Some((announced, withdrawn)) =
                            self.import(out.announced, out.withdrawn)
                        else {
                            // Torn down: more prefixes than the peer may send.
                            return;
                        };
                        if !announced.is_empty() || !withdrawn.is_empty() {
                            self.out.push(Output::RibIn(RibInCmd::Update {
                                peer: self.params.peer,
                                announced,
                                withdrawn,
                            }));
                        }
                        if out.end_of_rib {
                            self.out.push(Output::EndOfRib);
                        }
                        self.event(Event::UpdateReceived, now);
                    }
                    Err(n) => {
                        self.count_malformed();
                        self.event(Event::UpdateValidationError(n), now);
                    }
                }
            }
            Message::RouteRefresh(rr) => {
                let evpn = rr.afi() == Some(Afi::L2Vpn) && rr.safi() == Some(Safi::Evpn);
                if let Some(est) = &mut self.established
                    && evpn
                    && rr.subtype() == RouteRefreshSubtype::Normal
                {
                    // RFC 2918: re-advertise the whole Adj-RIB-Out for the family. Only
                    // noted here and generated once the queue drains, so a peer that asks
                    // again and again gets one copy, not one queued copy per request.
                    // Before the initial table went out there is nothing to do: that table
                    // is the whole Adj-RIB-Out.
                    if est.sent.is_some() {
                        est.refresh_pending = true;
                    }
                }
                let (Some(afi), Some(safi)) = (rr.afi(), rr.safi()) else {
                    return;
                };
                self.event(Event::RouteRefreshReceived { afi, safi }, now);
            }
            _ => {}
        }
    }

    /// The import policy and `max_prefixes` on one UPDATE's routes: what goes to the
    /// Adj-RIB-In, or None when the session was torn down for too many prefixes.
    /// A refused announcement withdraws the route it replaces (RFC 4271 §3.1: the new
    /// version of a route replaces the old one, which must not stay as it was).
    fn import(
        &mut self,
        announced: Vec<ReceivedType5>,
        mut withdrawn: Vec<ReceivedKey>,
    ) -> Option<(Vec<ReceivedType5>, Vec<ReceivedKey>)> {
        let limit = self.params.max_prefixes;
        if limit.is_some() {
            for k in &withdrawn {
                self.accepted.remove(k);
            }
        }
        let (mut filtered, mut over) = (0u64, 0u64);
        let mut kept = Vec::with_capacity(announced.len());
        for a in announced {
            let key = a.key();
            if !self.params.import.accepts(&a.route) {
                filtered += 1;
                self.accepted.remove(&key);
                withdrawn.push(key);
                continue;
            }
            if let Some(m) = limit
                && !self.accepted.contains(&key)
            {
                if self.accepted.len() as u64 >= u64::from(m.limit) {
                    match m.action {
                        MaxPrefixAction::Warn => self.warn_limit(m),
                        MaxPrefixAction::StopLearning => {
                            self.warn_limit(m);
                            over += 1;
                            continue;
                        }
                        MaxPrefixAction::Teardown { .. } => {
                            self.count_import(filtered, over);
                            self.teardown_max_prefixes(m);
                            return None;
                        }
                    }
                }
                self.accepted.insert(key);
                if !self.warned.0 && self.accepted.len() as u64 >= m.warning_at() {
                    self.warned.0 = true;
                    tracing::warn!(
                        peer = %self.params.peer,
                        routes = self.accepted.len(),
                        limit = m.limit,
                        "peer reached {} % of its max_prefixes",
                        m.warning_threshold_percent
                    );
                }
            }
            kept.push(a);
        }
        self.count_import(filtered, over);
        Some((kept, withdrawn))
    }

    fn count_import(&self, filtered: u64, over: u64) {
        if filtered > 0 || over > 0 {
            self.status.update(|s| {
                let i = &mut s.input;
                i.routes_filtered = i.routes_filtered.saturating_add(filtered);
                i.routes_over_limit = i.routes_over_limit.saturating_add(over);
            });
        }
    }

    fn warn_limit(&mut self, m: MaxPrefixes) {
        if !self.warned.1 {
            self.warned.1 = true;
            let what = match m.action {
                MaxPrefixAction::StopLearning => "new routes are ignored (counted)",
                _ => "routes are still accepted",
            };
            tracing::warn!(peer = %self.params.peer, limit = m.limit, "peer exceeds its max_prefixes: {what}");
        }
    }

    /// RFC 4486 §4: Cease / Maximum Number of Prefixes Reached, with the family and the
    /// limit as data.
    fn teardown_max_prefixes(&mut self, m: MaxPrefixes) {
        self.max_prefix_teardown = true;
        let mut data = Vec::with_capacity(7);
        data.extend_from_slice(&25u16.to_be_bytes()); // AFI L2VPN
        data.push(70); // SAFI EVPN
        data.extend_from_slice(&m.limit.to_be_bytes());
        self.stop(Some(NotificationMessage::new(
            NotificationCode::Cease,
            cease_subcode::MAX_PREFIXES,
            Bytes::from(data),
        )));
    }

    /// Hands queued UPDATEs to the adapter up to `room` octets (the last one may pass
    /// it), generating the diff to the desired table once the queue is empty.
    fn send_updates(&mut self, room: usize) {
        let Some(est) = &mut self.established else {
            return;
        };
        let mut given = 0usize;
        loop {
            while given < room {
                match est.queue.pop_front() {
                    Some(m) => {
                        given = given.saturating_add(m.len());
                        self.out.push(Output::Send(m));
                    }
                    None => break,
                }
            }
            if given >= room || !est.queue.is_empty() {
                return;
            }
            if std::mem::take(&mut est.refresh_pending) {
                let all: Vec<_> = est.sent.iter().flat_map(|s| s.iter()).collect();
                let msgs = codec::announce_updates(&all, &est.export);
                let n = msgs.len() as u64;
                est.queue.extend(msgs);
                self.status
                    .update(|s| s.updates_sent = s.updates_sent.saturating_add(n));
                continue;
            }
            if !generate_updates(est, &self.params.desired, &self.status) {
                return;
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        if self.hold_at.is_some_and(|t| t <= now) {
            self.hold_at = None;
            self.event(Event::HoldTimerExpires, now);
        }
        if self.closing.is_none() && self.keepalive_at.is_some_and(|t| t <= now) {
            self.keepalive_at = None;
            self.event(Event::KeepaliveTimerExpires, now);
        }
    }

    /// Closes on request (shutdown, collision, restart takeover).
    /// A new import policy. Routes already kept passed the old one: the peer sends them
    /// all again (ROUTE-REFRESH, RFC 2918), and each goes through the new policy, which
    /// keeps it or withdraws it (a refused announcement withdraws the route it replaces).
    /// A peer without ROUTE-REFRESH gets the session reset (Cease, Administrative Reset)
    /// to the same end. Not Established: the next session starts with the new policy.
    fn set_import(&mut self, policy: Arc<ImportPolicy>) {
        if *self.params.import == *policy {
            return;
        }
        self.params.import = policy;
        let Some(est) = &self.established else {
            return;
        };
        if est.peer_route_refresh {
            tracing::info!(peer = %self.params.peer, "import policy changed: asking the peer for all its routes again (ROUTE-REFRESH)");
            self.write_message(&Message::RouteRefresh(RouteRefreshMessage::new(
                Afi::L2Vpn,
                Safi::Evpn,
            )));
        } else {
            tracing::warn!(peer = %self.params.peer, "import policy changed and the peer does not support ROUTE-REFRESH: resetting the session to learn its routes again");
            self.send_notification(cease(cease_subcode::ADMINISTRATIVE_RESET));
            self.close();
        }
    }

    fn stop(&mut self, n: Option<NotificationMessage>) {
        if let Some(n) = n {
            self.send_notification(n);
        }
        if self.closing.is_none() {
            self.closing = Some(Closing::Requested);
            self.out.push(Output::Close);
        }
    }

    fn close(&mut self) {
        if self.closing.is_none() {
            self.closing = Some(Closing::Error);
            self.out.push(Output::Close);
        }
    }

    fn event(&mut self, e: Event, now: Instant) {
        let actions = self.fsm.handle_event(e);
        self.execute(actions, now);
    }

    fn execute(&mut self, actions: Vec<Action>, now: Instant) {
        for a in actions {
            match a {
                Action::SendOpen(mut open) => {
                    adjust_open(&mut open.capabilities, self.params.restarting);
                    self.write_message(&Message::Open(open));
                }
                Action::SendKeepalive => self.write_message(&Message::Keepalive),
                Action::SendNotification(n) => self.send_notification(n),
                Action::StartTimer(t, secs) => {
                    let at = now.checked_add(Duration::from_secs(u64::from(secs)));
                    match t {
                        TimerType::Hold => self.hold_at = at,
                        TimerType::Keepalive => self.keepalive_at = at,
                        // Reconnecting is the peer task's job (with its own backoff).
                        _ => {}
                    }
                }
                Action::StopTimer(TimerType::Hold) => self.hold_at = None,
                Action::StopTimer(TimerType::Keepalive) => self.keepalive_at = None,
                Action::CloseTcpConnection => self.close(),
                Action::StateChanged { new, .. } => self.out.push(Output::State(new.into())),
                Action::SessionEstablished(neg) => self.on_established(&neg, now),
                _ => {}
            }
        }
    }

    fn note_notification(&mut self, n: &NotificationMessage) {
        let seen = if is_hard_reset(n) {
            Notified::HardReset
        } else {
            Notified::Some
        };
        self.notified = self.notified.max(seen);
    }

    fn send_notification(&mut self, n: NotificationMessage) {
        self.note_notification(&n);
        let text = format!("sent NOTIFICATION {}", describe(&n));
        tracing::info!(peer = %self.params.peer, "{text}");
        self.status.update(|s| {
            s.notifications_sent = s.notifications_sent.saturating_add(1);
            s.last_error = Some(text);
        });
        if let Some(est) = &mut self.established {
            // Nothing queued matters any more; the NOTIFICATION must go out now.
            est.queue.clear();
        }
        self.write_message(&Message::Notification(n));
    }

    fn write_message(&mut self, m: &Message) {
        let encoded = match m {
            Message::Notification(_) => encode_message_with_limit(m, self.max_len),
            _ => encode_message(m),
        };
        match encoded {
            Ok(b) => self.out.push(Output::Send(b.freeze())),
            Err(e) => tracing::warn!(peer = %self.params.peer, "cannot encode {m}: {e}"),
        }
    }

    fn on_established(&mut self, neg: &NegotiatedSession, now: Instant) {
        let p = &self.params;
        let ibgp = p.peer_asn == p.local_asn;
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
                local_asn: p.local_asn,
                ibgp,
                four_octet_as: neg.four_octet_as,
            },
            receive: ReceiveContext {
                local_asn: p.local_asn,
                peer_asn: p.peer_asn,
                ibgp,
                four_octet_as: neg.four_octet_as,
            },
            sent: None,
            queue: VecDeque::new(),
            refresh_pending: false,
            peer_gr,
            notification_gr: neg.peer_notification_gr,
            peer_route_refresh: neg.peer_route_refresh,
        });
        let hold = Duration::from_secs(u64::from(neg.hold_time));
        let router_id = neg.peer_router_id;
        {
            let mut cell = self.status.lock();
            cell.established_at = Some(now);
            let s = &mut cell.status;
            s.peer_router_id = Some(router_id);
            s.hold_time = Some(hold);
            s.established_count = s.established_count.saturating_add(1);
            s.prefixes_sent = 0;
        }
        tracing::info!(peer = %self.params.peer, router_id = %router_id, "session established");
        self.out.push(Output::Established { peer_gr });
    }
}

/// Diffs the desired table against what was sent and queues the UPDATEs, End-of-RIB
/// after the initial table. False if there was nothing to do: no table set yet (the
/// initial table waits for it, see [`Desired`]) or none newer than what was sent.
fn generate_updates(est: &mut Established, desired: &Desired, status: &SharedStatus) -> bool {
    if !est.behind(desired) {
        return false;
    }
    let Some(desired) = desired.clone() else {
        return false;
    };
    let initial = est.sent.is_none();
    let sent = est.sent.take().unwrap_or_default();
    let diff = rib_out::diff(&sent, &desired);
    let msgs = rib_out::updates(&diff, &est.export);
    let n = msgs.len() as u64;
    est.queue.extend(msgs);
    if initial {
        // RFC 4724 §4.1: End-of-RIB once the initial table is out.
        est.queue.push_back(codec::end_of_rib());
    }
    let prefixes = desired.len() as u64;
    est.sent = Some(desired);
    status.update(|s| {
        s.prefixes_sent = prefixes;
        s.updates_sent = s.updates_sent.saturating_add(n);
    });
    true
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::codec::tests::route;
    use crate::bgp::types::Type5Route;
    use proptest::prelude::*;
    use rustbgpd_wire::{GracefulRestartFamily, OpenMessage, RouteRefreshMessage};

    const LOCAL_AS: u32 = 65000;
    const PEER_AS: u32 = 65001;
    const PEER_ID: [u8; 4] = [10, 0, 0, 2];

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// What the peer task would build (see `PeerTask::fsm_config`).
    fn params(hold: u16, graceful_restart: bool, desired: Desired) -> SessionParams {
        let mut fsm = PeerConfig::new(LOCAL_AS, PEER_AS, Ipv4Addr::new(10, 0, 0, 1));
        fsm.hold_time = hold;
        fsm.families = vec![(Afi::L2Vpn, Safi::Evpn)];
        fsm.required_families = vec![(Afi::L2Vpn, Safi::Evpn)];
        fsm.disable_ipv4_unicast = true;
        fsm.send_hold_time = 0;
        if graceful_restart {
            fsm.graceful_restart = true;
            fsm.gr_restart_time = 120;
        }
        SessionParams {
            direction: Direction::Inbound,
            fsm,
            restarting: graceful_restart,
            peer: "192.0.2.2".parse().unwrap(),
            local_asn: LOCAL_AS,
            peer_asn: PEER_AS,
            graceful_restart,
            import: Arc::new(ImportPolicy::default()),
            max_prefixes: None,
            desired,
        }
    }

    fn encode(m: &Message) -> Bytes {
        encode_message(m).unwrap().freeze()
    }

    /// The peer's OPEN: EVPN, route refresh, 4-octet AS, graceful restart if `gr`
    /// (restart time, N bit).
    fn peer_open(hold: u16, gr: Option<(u16, bool)>) -> Bytes {
        let mut capabilities = vec![
            Capability::MultiProtocol {
                afi: Afi::L2Vpn,
                safi: Safi::Evpn,
            },
            Capability::RouteRefresh,
            Capability::FourOctetAs { asn: PEER_AS },
        ];
        if let Some((restart_time, notification)) = gr {
            capabilities.push(Capability::GracefulRestart {
                restart_state: false,
                notification,
                restart_time,
                families: vec![GracefulRestartFamily {
                    afi: Afi::L2Vpn,
                    safi: Safi::Evpn,
                    forwarding_preserved: true,
                }],
            });
        }
        encode(&Message::Open(OpenMessage {
            version: 4,
            my_as: PEER_AS as u16,
            hold_time: hold,
            bgp_identifier: Ipv4Addr::from(PEER_ID),
            capabilities,
        }))
    }

    /// A peer OPEN like `peer_open`'s without the ROUTE-REFRESH capability.
    fn peer_open_without_route_refresh() -> Bytes {
        encode(&Message::Open(OpenMessage {
            version: 4,
            my_as: PEER_AS as u16,
            hold_time: 30,
            bgp_identifier: Ipv4Addr::from(PEER_ID),
            capabilities: vec![
                Capability::MultiProtocol {
                    afi: Afi::L2Vpn,
                    safi: Safi::Evpn,
                },
                Capability::FourOctetAs { asn: PEER_AS },
            ],
        }))
    }

    fn keepalive() -> Bytes {
        encode(&Message::Keepalive)
    }

    /// An UPDATE from the peer announcing `r`.
    fn peer_update(r: &Type5Route) -> Bytes {
        let ctx = ExportContext {
            local_asn: PEER_AS,
            ibgp: false,
            four_octet_as: true,
        };
        codec::announce_updates(&[r], &ctx).remove(0)
    }

    fn table(routes: Vec<Type5Route>) -> Desired {
        Some(Arc::new(AdjRibOut::from_routes(routes).0))
    }

    /// `n` routes in two attribute groups.
    fn routes(n: u32) -> Vec<Type5Route> {
        (0..n)
            .map(|i| {
                let mut r = route(i, "192.0.2.1");
                r.router_mac[5] = u8::from(i % 2 == 1);
                r
            })
            .collect()
    }

    fn sent(out: &[Output]) -> Vec<Bytes> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(b) => Some(b.clone()),
                _ => None,
            })
            .collect()
    }

    fn decoded(out: &[Output]) -> Vec<Message> {
        sent(out)
            .into_iter()
            .map(|mut b| decode_message(&mut b, EXTENDED_MAX_MESSAGE_LEN).unwrap())
            .collect()
    }

    /// The NOTIFICATIONs sent: (code, subcode).
    fn notifications(out: &[Output]) -> Vec<(u8, u8)> {
        decoded(out)
            .into_iter()
            .filter_map(|m| match m {
                Message::Notification(n) => Some((n.code.as_u8(), n.subcode)),
                _ => None,
            })
            .collect()
    }

    fn keepalives(out: &[Output]) -> usize {
        decoded(out)
            .iter()
            .filter(|m| matches!(m, Message::Keepalive))
            .count()
    }

    fn closes(out: &[Output]) -> bool {
        out.contains(&Output::Close)
    }

    struct Harness {
        core: SessionCore,
        status: SharedStatus,
        t0: Instant,
    }

    impl Harness {
        fn new(p: SessionParams) -> Harness {
            let status = SharedStatus::new(p.peer, p.peer_asn);
            Harness {
                core: SessionCore::new(p, status.clone()),
                status,
                t0: Instant::now(),
            }
        }

        /// The input at `at` after the start.
        fn at(&mut self, at: Duration, input: Input) -> Vec<Output> {
            self.core.handle(input, self.t0 + at)
        }

        fn now(&mut self, input: Input) -> Vec<Output> {
            self.at(Duration::ZERO, input)
        }

        /// OPEN exchange to Established at t0 with the peer's OPEN.
        fn established(p: SessionParams, open: Bytes) -> Harness {
            let mut h = Harness::new(p);
            h.now(Input::Connected);
            assert_eq!(
                h.now(Input::Received(open)),
                [Output::OpenReceived {
                    bgp_id: Ipv4Addr::from(PEER_ID)
                }]
            );
            h.now(Input::Verdict(Verdict::Proceed));
            let out = h.now(Input::Received(keepalive()));
            assert!(
                out.contains(&Output::State(PeerState::Established)),
                "{out:?}"
            );
            h
        }

        /// Everything the session has to send, with unlimited room.
        fn drain(&mut self, at: Duration) -> Vec<Bytes> {
            let out = self.at(at, Input::SendRoom(usize::MAX));
            assert!(!self.core.wants_to_send());
            sent(&out)
        }
    }

    #[test]
    fn our_open_goes_out_on_connect_and_the_peer_open_waits_for_the_collision_verdict() {
        let mut h = Harness::new(params(90, true, None));
        let out = h.now(Input::Connected);
        let [Message::Open(open)] = &decoded(&out)[..] else {
            panic!("{out:?}")
        };
        assert_eq!(open.hold_time, 90);
        assert!(
            !open
                .capabilities
                .contains(&Capability::EnhancedRouteRefresh)
        );
        assert!(open.capabilities.iter().any(|c| matches!(
            c,
            Capability::GracefulRestart { restart_state: true, families, .. }
                if families.iter().all(|f| f.forwarding_preserved)
        )));
        assert_eq!(out.last(), Some(&Output::State(PeerState::OpenSent)));

        // OPEN and KEEPALIVE in one read: nothing after the OPEN before the verdict.
        let mut both = BytesMut::from(&peer_open(30, None)[..]);
        both.extend_from_slice(&keepalive());
        let out = h.now(Input::Received(both.freeze()));
        assert_eq!(
            out,
            [Output::OpenReceived {
                bgp_id: Ipv4Addr::from(PEER_ID)
            }]
        );
        let out = h.now(Input::Verdict(Verdict::Proceed));
        assert_eq!(keepalives(&out), 1);
        let states: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::State(s) => Some(*s),
                _ => None,
            })
            .collect();
        assert_eq!(states, [PeerState::OpenConfirm, PeerState::Established]);
        assert!(matches!(
            out.last(),
            Some(Output::Established { peer_gr: None })
        ));
        let s = h.status.snapshot();
        assert_eq!(s.hold_time, Some(secs(30.0)));
        assert_eq!(s.established_count, 1);
    }

    #[test]
    fn input_split_anywhere_is_framed_the_same() {
        let mut h = Harness::new(params(90, false, None));
        h.now(Input::Connected);
        let mut all = BytesMut::from(&peer_open(30, None)[..]);
        all.extend_from_slice(&keepalive());
        let mut outs = Vec::new();
        for b in all.iter() {
            outs.extend(h.now(Input::Received(Bytes::copy_from_slice(&[*b]))));
            if outs
                .last()
                .is_some_and(|o| matches!(o, Output::OpenReceived { .. }))
            {
                outs.extend(h.now(Input::Verdict(Verdict::Proceed)));
            }
        }
        assert!(
            outs.contains(&Output::State(PeerState::Established)),
            "{outs:?}"
        );
        assert!(notifications(&outs).is_empty());
    }

    #[test]
    fn a_rejected_open_closes_with_connection_collision_resolution() {
        let mut h = Harness::new(params(90, false, None));
        h.now(Input::Connected);
        h.now(Input::Received(peer_open(30, None)));
        let out = h.now(Input::Verdict(Verdict::Reject));
        assert_eq!(notifications(&out), [(6, 7)]);
        assert_eq!(keepalives(&out), 0);
        assert_eq!(out.last(), Some(&Output::Close));
        // Closed: later input does nothing.
        assert!(h.now(Input::Received(keepalive())).is_empty());
        let closed = h.core.finish();
        assert!(!closed.established);
        assert!(!closed.error, "a rejected collision is no error");
    }

    #[test]
    fn hold_timer_expiry_sends_hold_timer_expired_and_closes() {
        let mut h = Harness::established(params(90, false, None), peer_open(9, None));
        assert_eq!(h.core.next_deadline(), Some(h.t0 + secs(3.0)));
        // Our KEEPALIVEs go out every 3 s; the peer stays silent.
        for t in [3.0, 6.0] {
            let out = h.at(secs(t), Input::Tick);
            assert_eq!(keepalives(&out), 1);
            assert!(!closes(&out));
        }
        assert!(h.at(secs(8.9), Input::Tick).is_empty());
        let out = h.at(secs(9.0), Input::Tick);
        assert_eq!(notifications(&out), [(4, 0)]);
        assert!(closes(&out));
        assert!(out.contains(&Output::State(PeerState::Idle)));
        assert_eq!(h.core.next_deadline(), None);
        assert_eq!(
            h.status.snapshot().last_error.as_deref(),
            Some("sent NOTIFICATION 4/0 (Hold Timer Expired)")
        );
        let s = h.status.snapshot();
        assert_eq!((s.notifications_sent, s.notifications_received), (1, 0));
        let closed = h.core.finish();
        assert!(closed.established && closed.error);
        assert_eq!(closed.retain_stale, None);
        assert_eq!(h.status.snapshot().hold_time, None);
    }

    #[test]
    fn a_keepalive_from_the_peer_restarts_the_hold_timer() {
        let mut h = Harness::established(params(90, false, None), peer_open(9, None));
        h.at(secs(3.0), Input::Tick);
        h.at(secs(6.0), Input::Received(keepalive()));
        let out = h.at(secs(9.0), Input::Tick);
        assert!(notifications(&out).is_empty(), "{out:?}");
        assert_eq!(keepalives(&out), 1);
        h.at(secs(12.0), Input::Tick);
        let out = h.at(secs(15.0), Input::Tick);
        assert_eq!(notifications(&out), [(4, 0)]);
    }

    #[test]
    fn keepalives_are_due_at_a_third_of_the_negotiated_hold_time() {
        // We offer 90 s, the peer 30 s: 30 s it is, a KEEPALIVE every 10 s.
        let mut h = Harness::established(params(90, false, None), peer_open(30, None));
        assert_eq!(h.status.snapshot().hold_time, Some(secs(30.0)));
        assert_eq!(h.core.next_deadline(), Some(h.t0 + secs(10.0)));
        assert!(h.at(secs(9.9), Input::Tick).is_empty());
        let out = h.at(secs(10.0), Input::Tick);
        assert_eq!(keepalives(&out), 1);
        assert_eq!(h.core.next_deadline(), Some(h.t0 + secs(20.0)));
        // The peer's KEEPALIVE moves the hold timer, not our keepalive timer.
        h.at(secs(15.0), Input::Received(keepalive()));
        assert_eq!(h.core.next_deadline(), Some(h.t0 + secs(20.0)));
    }

    #[test]
    fn a_hold_time_of_zero_runs_neither_keepalives_nor_the_hold_timer() {
        let mut h = Harness::established(params(90, false, None), peer_open(0, None));
        assert_eq!(h.status.snapshot().hold_time, Some(Duration::ZERO));
        assert_eq!(h.core.next_deadline(), None);
        assert!(h.at(secs(24.0 * 3600.0), Input::Tick).is_empty());
        assert_eq!(h.core.next_deadline(), None);
    }

    #[test]
    fn end_of_rib_follows_the_initial_table() {
        let desired = table(routes(3));
        let mut h = Harness::established(params(90, false, desired.clone()), peer_open(30, None));
        assert!(h.core.wants_to_send());
        let out = h.drain(Duration::ZERO);
        let all: Vec<_> = desired.as_ref().unwrap().iter().collect();
        let mut want = codec::announce_updates(
            &all,
            &ExportContext {
                local_asn: LOCAL_AS,
                ibgp: false,
                four_octet_as: true,
            },
        );
        assert_eq!(want.len(), 2, "two attribute groups");
        want.push(codec::end_of_rib());
        assert_eq!(out, want);
        let s = h.status.snapshot();
        assert_eq!((s.prefixes_sent, s.updates_sent), (3, 2));
        // Once only.
        assert!(h.drain(secs(1.0)).is_empty());
    }

    #[test]
    fn an_empty_initial_table_is_still_followed_by_end_of_rib() {
        let mut h = Harness::established(params(90, false, table(vec![])), peer_open(30, None));
        assert_eq!(h.drain(Duration::ZERO), [codec::end_of_rib()]);
    }

    #[test]
    fn the_initial_table_waits_for_the_first_desired_table() {
        let mut h = Harness::established(params(90, true, None), peer_open(30, Some((120, true))));
        // Nothing set yet: neither the (empty) table nor End-of-RIB goes out.
        assert!(!h.core.wants_to_send());
        assert!(sent(&h.at(secs(1.0), Input::SendRoom(usize::MAX))).is_empty());
        // Keepalives still do.
        assert_eq!(keepalives(&h.at(secs(10.0), Input::Tick)), 1);

        assert!(
            h.at(secs(11.0), Input::Desired(table(routes(2))))
                .is_empty()
        );
        assert!(h.core.wants_to_send());
        let out = h.drain(secs(11.0));
        assert_eq!(out.len(), 3, "two UPDATEs and End-of-RIB");
        assert_eq!(out.last(), Some(&codec::end_of_rib()));

        // A later table: its diff only, no second End-of-RIB.
        h.at(secs(12.0), Input::Desired(table(routes(3))));
        let out = h.drain(secs(12.0));
        assert_eq!(out.len(), 1);
        assert_ne!(out[0], codec::end_of_rib());
        assert_eq!(h.status.snapshot().prefixes_sent, 3);
    }

    #[test]
    fn tables_set_before_the_updates_go_out_coalesce_into_one_diff() {
        let mut h = Harness::established(params(90, false, table(routes(2))), peer_open(30, None));
        h.drain(Duration::ZERO);
        h.now(Input::Desired(table(vec![])));
        h.now(Input::Desired(table(routes(2))));
        // Back to what was sent: nothing to withdraw or announce.
        assert!(h.drain(Duration::ZERO).is_empty());
        assert_eq!(h.status.snapshot().updates_sent, 2);
    }

    #[test]
    fn updates_are_handed_out_only_as_room_allows() {
        // Enough routes for several 4096-octet UPDATEs.
        let mut h =
            Harness::established(params(90, false, table(routes(600))), peer_open(30, None));
        let first = sent(&h.now(Input::SendRoom(1)));
        assert_eq!(first.len(), 1);
        assert!(h.core.wants_to_send());
        let rest = h.drain(Duration::ZERO);
        assert!(rest.len() >= 2, "{}", rest.len());
        assert_eq!(rest.last(), Some(&codec::end_of_rib()));
        assert_eq!(
            h.status.snapshot().updates_sent,
            (first.len() + rest.len() - 1) as u64
        );
    }

    #[test]
    fn a_route_refresh_sends_the_whole_adj_rib_out_again() {
        let mut h = Harness::established(params(90, false, table(routes(3))), peer_open(30, None));
        let initial = h.drain(Duration::ZERO);
        // Not for L2VPN EVPN: nothing.
        let ipv4 = encode(&Message::RouteRefresh(RouteRefreshMessage::new(
            Afi::Ipv4,
            Safi::Unicast,
        )));
        h.at(secs(1.0), Input::Received(ipv4));
        assert!(!h.core.wants_to_send());
        let evpn = encode(&Message::RouteRefresh(RouteRefreshMessage::new(
            Afi::L2Vpn,
            Safi::Evpn,
        )));
        let out = h.at(secs(2.0), Input::Received(evpn));
        assert!(notifications(&out).is_empty());
        assert!(h.core.wants_to_send());
        let again = h.drain(secs(2.0));
        // The same announcements, without End-of-RIB.
        assert_eq!(again, initial[..initial.len() - 1]);
        assert_eq!(h.status.snapshot().updates_sent, 4);
    }

    #[test]
    fn repeated_route_refreshes_before_the_queue_drains_send_one_copy() {
        let mut h = Harness::established(params(90, false, table(routes(3))), peer_open(30, None));
        let initial = h.drain(Duration::ZERO);
        let evpn = encode(&Message::RouteRefresh(RouteRefreshMessage::new(
            Afi::L2Vpn,
            Safi::Evpn,
        )));
        for i in 0..1000 {
            h.at(
                secs(1.0 + f64::from(i) / 1000.0),
                Input::Received(evpn.clone()),
            );
        }
        let again = h.drain(secs(2.0));
        assert_eq!(again, initial[..initial.len() - 1]);
        assert!(!h.core.wants_to_send());
        // Another request after the copy went out gets another copy.
        h.at(secs(3.0), Input::Received(evpn));
        assert_eq!(h.drain(secs(3.0)), initial[..initial.len() - 1]);
    }

    #[test]
    fn received_routes_go_to_the_adj_rib_in_and_end_of_rib_is_reported_after_them() {
        let mut h = Harness::established(params(90, false, None), peer_open(30, None));
        let mut r = route(7, "192.0.2.2");
        r.rd = "65001:1".parse().unwrap();
        let mut both = BytesMut::from(&peer_update(&r)[..]);
        both.extend_from_slice(&codec::end_of_rib());
        let out = h.at(secs(1.0), Input::Received(both.freeze()));
        let [
            Output::RibIn(RibInCmd::Update {
                announced,
                withdrawn,
                ..
            }),
            Output::EndOfRib,
        ] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(announced.len(), 1);
        assert_eq!(announced[0].route.prefix, r.prefix);
        assert!(withdrawn.is_empty());
        assert_eq!(h.status.snapshot().updates_received, 2);
        // The UPDATEs restarted the hold timer (30 s from 1 s).
        assert_eq!(notifications(&h.at(secs(30.5), Input::Tick)), []);
    }

    #[test]
    fn a_repaired_update_keeps_the_session_and_is_counted() {
        let mut h = Harness::established(params(90, false, None), peer_open(30, None));
        let good = peer_update(&route(7, "192.0.2.2"));
        // ORIGIN 7 is malformed: treat-as-withdraw (RFC 7606 §7.1).
        let mut bad = good.to_vec();
        let origin = bad
            .windows(3)
            .position(|w| w == [0x40, 1, 1])
            .expect("ORIGIN");
        bad[origin + 3] = 7;
        let out = h.now(Input::Received(Bytes::from(bad)));
        assert!(!closes(&out), "{out:?}");
        assert!(
            matches!(&out[..], [Output::RibIn(RibInCmd::Update { announced, withdrawn, .. })]
            if announced.is_empty() && withdrawn.len() == 1)
        );
        let s = h.status.snapshot();
        assert_eq!(s.input.treat_as_withdraw, 1);
        assert_eq!(s.input.malformed_resets, 0);
    }

    /// One BGP message from its type and body.
    fn raw(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![0xff; 16];
        m.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
        m.push(kind);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn malformed_messages_get_the_notification_rfc_4271_and_7606_prescribe() {
        let good = peer_update(&route(7, "192.0.2.2")).to_vec();
        let mut bad_marker = keepalive().to_vec();
        bad_marker[3] = 0;
        let mut too_long = good.clone();
        too_long[16] = 0x20;
        let mut unknown_well_known = good.clone();
        unknown_well_known.extend_from_slice(&[0x40, 99, 1, 0]);
        let len = u16::try_from(unknown_well_known.len()).unwrap();
        unknown_well_known[16..18].copy_from_slice(&len.to_be_bytes());
        let attrs_len = u16::from_be_bytes([good[21], good[22]]) + 4;
        unknown_well_known[21..23].copy_from_slice(&attrs_len.to_be_bytes());
        let cases: [(&str, Vec<u8>, (u8, u8)); 6] = [
            ("bad marker", bad_marker, (1, 1)),
            ("length beyond 4096", too_long, (1, 2)),
            ("unknown message type", raw(9, &[]), (1, 3)),
            ("KEEPALIVE with a body", raw(4, &[0]), (1, 2)),
            (
                "withdrawn length beyond the message",
                raw(2, &[0, 50, 0, 0]),
                (3, 1),
            ),
            ("unknown well-known attribute", unknown_well_known, (3, 2)),
        ];
        for (name, bytes, want) in cases {
            let mut h = Harness::established(params(90, false, None), peer_open(30, None));
            let out = h.at(secs(1.0), Input::Received(Bytes::from(bytes)));
            assert_eq!(notifications(&out), [want], "{name}");
            assert!(closes(&out), "{name}");
            assert!(
                !out.iter().any(|o| matches!(o, Output::RibIn(_))),
                "{name}: nothing reaches the Adj-RIB-In"
            );
            assert_eq!(h.status.snapshot().input.malformed_resets, 1, "{name}");
            assert!(h.core.finish().error, "{name}");
        }
    }

    #[test]
    fn a_stop_drops_queued_updates_and_sends_its_notification() {
        let mut h =
            Harness::established(params(90, false, table(routes(600))), peer_open(30, None));
        h.now(Input::SendRoom(1));
        assert!(h.core.wants_to_send());
        let out = h.now(Input::Stop(Some(cease(
            cease_subcode::ADMINISTRATIVE_SHUTDOWN,
        ))));
        assert_eq!(decoded(&out).len(), 1);
        assert_eq!(notifications(&out), [(6, 2)]);
        assert_eq!(out.last(), Some(&Output::Close));
        assert!(!h.core.wants_to_send());
        assert!(!h.core.finish().error);
    }

    #[test]
    fn graceful_restart_keeps_the_peers_routes_unless_a_notification_forbids_it() {
        let notification = |subcode| {
            encode(&Message::Notification(NotificationMessage::new(
                NotificationCode::Cease,
                subcode,
                Bytes::new(),
            )))
        };
        let restart = Some(secs(120.0));
        // (we do GR, peer's N bit, how it ends, stale routes kept for)
        let cases: [(bool, bool, Option<Bytes>, Option<Duration>); 6] = [
            (true, false, None, restart),
            (false, false, None, None),
            (
                true,
                false,
                Some(notification(cease_subcode::ADMINISTRATIVE_RESET)),
                None,
            ),
            (
                true,
                true,
                Some(notification(cease_subcode::ADMINISTRATIVE_RESET)),
                restart,
            ),
            (
                true,
                true,
                Some(notification(cease_subcode::HARD_RESET)),
                None,
            ),
            (true, true, None, restart),
        ];
        for (i, (ours, n_bit, ending, want)) in cases.into_iter().enumerate() {
            let mut p = params(90, ours, None);
            p.fsm.graceful_restart = true;
            p.fsm.gr_restart_time = 120;
            let mut h = Harness::established(p, peer_open(30, Some((120, n_bit))));
            let notified = u64::from(ending.is_some());
            let out = match ending {
                Some(n) => h.at(secs(1.0), Input::Received(n)),
                None => h.at(secs(1.0), Input::TransportFailed("read: reset".into())),
            };
            assert!(closes(&out), "case {i}");
            let s = h.status.snapshot();
            assert_eq!(
                (s.notifications_received, s.notifications_sent),
                (notified, 0),
                "case {i}: a received NOTIFICATION is counted, and not answered"
            );
            let closed = h.core.finish();
            assert_eq!(closed.retain_stale, want, "case {i}");
            assert!(closed.error && closed.established, "case {i}");
        }
    }

    mod import {
        use super::*;
        use crate::bgp::import::{ImportPrefixes, PrefixRule};

        /// An UPDATE from the peer announcing `routes` (one message per attribute group).
        fn announce(routes: &[Type5Route]) -> Bytes {
            let ctx = ExportContext {
                local_asn: PEER_AS,
                ibgp: false,
                four_octet_as: true,
            };
            let refs: Vec<&Type5Route> = routes.iter().collect();
            let mut all = BytesMut::new();
            for m in codec::announce_updates(&refs, &ctx) {
                all.extend_from_slice(&m);
            }
            all.freeze()
        }

        fn with_limit(limit: u32, action: MaxPrefixAction) -> SessionParams {
            SessionParams {
                max_prefixes: Some(MaxPrefixes {
                    limit,
                    action,
                    warning_threshold_percent: 75,
                }),
                ..params(90, true, None)
            }
        }

        /// (announced prefixes, withdrawn prefixes) handed to the Adj-RIB-In.
        fn to_rib(out: &[Output]) -> (Vec<String>, Vec<String>) {
            let mut a = Vec::new();
            let mut w = Vec::new();
            for o in out {
                if let Output::RibIn(RibInCmd::Update {
                    announced,
                    withdrawn,
                    ..
                }) = o
                {
                    a.extend(announced.iter().map(|r| r.route.prefix.to_string()));
                    w.extend(withdrawn.iter().map(|k| k.prefix.to_string()));
                }
            }
            (a, w)
        }

        fn prefixed(i: u32, prefix: &str) -> Type5Route {
            let mut r = route(i, "192.0.2.2");
            r.prefix = prefix.parse().unwrap();
            r
        }

        #[test]
        fn refused_prefixes_never_reach_the_adj_rib_in_and_are_counted() {
            let mut p = params(90, false, None);
            p.import = Arc::new(ImportPolicy {
                route_targets: vec![],
                prefixes: ImportPrefixes {
                    allow: vec![PrefixRule {
                        prefix: "10.0.0.0/8".parse().unwrap(),
                        ge: 16,
                        le: 24,
                    }],
                    ..Default::default()
                },
            });
            let mut h = Harness::established(p, peer_open(30, None));
            let out = h.now(Input::Received(announce(&[
                prefixed(1, "0.0.0.0/0"),
                prefixed(2, "10.1.0.0/16"),
                prefixed(3, "192.168.0.0/16"),
                prefixed(4, "10.1.2.128/25"),
            ])));
            let (a, w) = to_rib(&out);
            assert_eq!(a, ["10.1.0.0/16"]);
            // A refused announcement replaces (withdraws) an earlier version of the route.
            assert_eq!(w.len(), 3, "{w:?}");
            assert_eq!(h.status.snapshot().input.routes_filtered, 3);
        }

        #[test]
        fn a_new_import_policy_asks_the_peer_again_and_its_answer_goes_through_the_new_policy() {
            let rt = |t: &str| -> Arc<ImportPolicy> {
                Arc::new(ImportPolicy {
                    route_targets: vec![t.parse().unwrap()],
                    prefixes: ImportPrefixes::default(),
                })
            };
            let mut p = params(90, false, None);
            p.import = rt("65000:100");
            let mut h = Harness::established(p, peer_open(30, None));
            let mut blue = prefixed(3, "10.3.0.0/16");
            blue.route_targets = vec!["65000:200".parse().unwrap()];
            let table = [prefixed(2, "10.2.0.0/16"), blue];
            let out = h.now(Input::Received(announce(&table)));
            assert_eq!(to_rib(&out).0, ["10.2.0.0/16"]);
            // The same policy again: nothing is asked.
            assert!(sent(&h.now(Input::Import(rt("65000:100")))).is_empty());
            // 65000:200 instead: a ROUTE-REFRESH for L2VPN EVPN, nothing else.
            let out = h.now(Input::Import(rt("65000:200")));
            let msgs = decoded(&out);
            assert!(
                matches!(msgs.as_slice(), [Message::RouteRefresh(r)]
                    if (r.afi(), r.safi()) == (Some(Afi::L2Vpn), Some(Safi::Evpn))),
                "{msgs:?}"
            );
            assert!(!closes(&out));
            // The peer sends its table again: the new policy keeps the blue route and
            // withdraws the one it no longer takes.
            let out = h.now(Input::Received(announce(&table)));
            let (a, w) = to_rib(&out);
            assert_eq!(a, ["10.3.0.0/16"]);
            assert_eq!(w, ["10.2.0.0/16"]);
        }

        #[test]
        fn a_peer_without_route_refresh_has_its_session_reset_for_a_new_import_policy() {
            let mut h =
                Harness::established(params(90, false, None), peer_open_without_route_refresh());
            let out = h.now(Input::Import(Arc::new(ImportPolicy {
                route_targets: vec!["65000:200".parse().unwrap()],
                prefixes: ImportPrefixes::default(),
            })));
            assert_eq!(notifications(&out), [(6, 4)], "Cease, Administrative Reset");
            assert!(closes(&out));
            assert!(h.core.finish().error, "reconnected like any session error");
        }

        #[test]
        fn a_default_route_is_refused_by_the_default_policy() {
            let mut p = params(90, false, None);
            p.import = Arc::new(ImportPolicy {
                route_targets: vec!["65000:100".parse().unwrap()],
                prefixes: ImportPrefixes::default(),
            });
            let mut h = Harness::established(p, peer_open(30, None));
            let mut other_rt = prefixed(3, "10.3.0.0/16");
            other_rt.route_targets = vec!["65000:200".parse().unwrap()];
            let out = h.now(Input::Received(announce(&[
                prefixed(1, "0.0.0.0/0"),
                prefixed(2, "10.2.0.0/16"),
                other_rt,
            ])));
            assert_eq!(to_rib(&out).0, ["10.2.0.0/16"]);
            assert_eq!(h.status.snapshot().input.routes_filtered, 2);
        }

        #[test]
        fn stop_learning_keeps_the_first_routes_and_ignores_new_ones_beyond_the_limit() {
            let mut h = Harness::established(
                with_limit(4, MaxPrefixAction::StopLearning),
                peer_open(30, None),
            );
            let six: Vec<Type5Route> = (0..6).map(|i| route(i, "192.0.2.2")).collect();
            let (a, _) = to_rib(&h.now(Input::Received(announce(&six))));
            assert_eq!(a.len(), 4);
            assert_eq!(h.status.snapshot().input.routes_over_limit, 2);
            // An update of a route already held still goes through; after a withdrawal
            // there is room for one more.
            let withdraw = codec::withdraw_updates(&[&six[0]]);
            let out = h.now(Input::Received(withdraw[0].clone()));
            assert_eq!(to_rib(&out).1, [six[0].prefix.to_string()]);
            let out = h.now(Input::Received(announce(&six[1..])));
            let (a, _) = to_rib(&out);
            assert_eq!(a.len(), 4, "three held, one new: {a:?}");
            assert_eq!(h.status.snapshot().input.routes_over_limit, 3);
            assert!(!closes(&out), "the session stays up");
        }

        #[test]
        fn warn_keeps_every_route() {
            let mut h =
                Harness::established(with_limit(2, MaxPrefixAction::Warn), peer_open(30, None));
            let five: Vec<Type5Route> = (0..5).map(|i| route(i, "192.0.2.2")).collect();
            let out = h.now(Input::Received(announce(&five)));
            assert_eq!(to_rib(&out).0.len(), 5);
            assert!(!closes(&out));
            assert_eq!(h.status.snapshot().input.routes_over_limit, 0);
        }

        #[test]
        fn teardown_sends_cease_maximum_number_of_prefixes_and_keeps_no_route() {
            let mut h = Harness::established(
                with_limit(
                    3,
                    MaxPrefixAction::Teardown {
                        restart_after: None,
                    },
                ),
                // The peer supports graceful restart and RFC 8538: still nothing is kept.
                peer_open(30, Some((120, true))),
            );
            let three: Vec<Type5Route> = (0..3).map(|i| route(i, "192.0.2.2")).collect();
            let out = h.now(Input::Received(announce(&three)));
            assert!(!closes(&out));
            let out = h.now(Input::Received(peer_update(&route(9, "192.0.2.2"))));
            assert_eq!(notifications(&out), [(6, 1)], "{out:?}");
            let Some(Message::Notification(n)) = decoded(&out).pop() else {
                panic!("{out:?}")
            };
            // RFC 4486 §4: AFI, SAFI and the upper bound.
            assert_eq!(&n.data[..], [0, 25, 70, 0, 0, 0, 3]);
            assert!(closes(&out));
            assert!(!out.iter().any(|o| matches!(o, Output::RibIn(_))));
            let closed = h.core.finish();
            assert!(closed.max_prefix_teardown);
            assert_eq!(closed.retain_stale, None);
        }
    }

    proptest! {
        /// Whatever arrives, in whatever pieces, the core neither panics nor goes on
        /// after a NOTIFICATION it sent.
        #[test]
        fn arbitrary_input_never_panics(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
            header in any::<bool>(),
        ) {
            let mut h = Harness::established(params(90, false, table(routes(3))), peer_open(30, None));
            for (i, c) in chunks.into_iter().enumerate() {
                let mut b = if header { vec![0xff; 16] } else { Vec::new() };
                b.extend_from_slice(&c);
                let out = h.at(secs(i as f64), Input::Received(Bytes::from(b)));
                if !notifications(&out).is_empty() {
                    prop_assert!(closes(&out));
                }
                h.at(secs(i as f64), Input::SendRoom(usize::MAX));
            }
        }
    }
}
