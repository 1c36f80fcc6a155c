//! One BGP connection (thin tokio adapter): reads octets from the TCP connection and
//! feeds them to its [`SessionCore`], writes what the core outputs, sleeps until the core's
//! next deadline, and carries the core's reports to the peer task and its received routes
//! to the Adj-RIB-In. Every decision (FSM, timers, Adj-RIB-Out, End-of-RIB, graceful
//! restart hold-back, route refresh, malformed input) is the core's
//! ([`super::session_core`]).
//!
//! Reads and writes are multiplexed in one task so that a large table being sent never
//! stops the session from reading (two speakers that both only write would deadlock on
//! full TCP buffers). The core generates UPDATEs only when the write buffer has room
//! ([`Input::SendRoom`]), so a burst of `set_advertised` calls coalesces into one diff.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use rustbgpd_fsm::PeerConfig;
use rustbgpd_wire::NotificationMessage;
use rustbgpd_wire::notification::cease_subcode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};

use super::import::{ImportPolicy, MaxPrefixes};
use super::rib_in::RibInCmd;
use super::rib_out::Desired;
pub(crate) use super::session_core::{Direction, PeerGracefulRestart, Verdict, cease};
use super::session_core::{Input, Output, SessionCore, SessionParams};
use super::status::{PeerState, SharedStatus};

/// Output handed to TCP before more is generated (keeps KEEPALIVE latency low).
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 16 * 1024;
/// How long a closing session may take to flush its last messages (the NOTIFICATION).
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

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
        /// We closed it because the peer sent more than its `max_prefixes` (teardown).
        max_prefix_teardown: bool,
    },
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
    pub import: watch::Receiver<Arc<ImportPolicy>>,
    pub max_prefixes: Option<MaxPrefixes>,
    pub rib_in: mpsc::Sender<RibInCmd>,
    pub desired: watch::Receiver<Desired>,
    pub status: SharedStatus,
    pub reports: mpsc::Sender<Report>,
    pub commands: mpsc::Receiver<ConnCmd>,
}

struct Conn {
    id: u64,
    core: SessionCore,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// The core said Close: leave the loop, flush, report.
    closing: bool,
    desired: watch::Receiver<Desired>,
    /// The owner still holds the desired table's sender.
    desired_open: bool,
    import: watch::Receiver<Arc<ImportPolicy>>,
    import_open: bool,
    rib_in: mpsc::Sender<RibInCmd>,
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
        mut import,
        max_prefixes,
        rib_in,
        mut desired,
        status,
        reports,
        commands,
    } = setup;
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let params = SessionParams {
        direction,
        fsm,
        restarting,
        peer,
        local_asn,
        peer_asn,
        graceful_restart,
        import: import.borrow_and_update().clone(),
        max_prefixes,
        desired: desired.borrow_and_update().clone(),
    };
    let mut c = Conn {
        id,
        core: SessionCore::new(params, status.clone()),
        reader,
        writer,
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        wbuf: BytesMut::with_capacity(WRITE_HIGH_WATER),
        closing: false,
        desired,
        desired_open: true,
        import,
        import_open: true,
        rib_in,
        status,
        reports,
        commands,
    };
    c.feed(Input::Connected).await;
    c.run_loop().await;
    c.finish().await;
}

impl Conn {
    async fn run_loop(&mut self) {
        while !self.closing {
            if self.wbuf.len() < WRITE_HIGH_WATER && self.core.wants_to_send() {
                // The newest desired table, if it changed since the watch was polled.
                if self.desired_open && self.desired.has_changed().unwrap_or(false) {
                    let d = self.desired.borrow_and_update().clone();
                    self.feed(Input::Desired(d)).await;
                }
                let room = WRITE_HIGH_WATER - self.wbuf.len();
                self.feed(Input::SendRoom(room)).await;
                continue;
            }
            let deadline = self.core.next_deadline();
            self.rbuf.reserve(READ_CHUNK);
            tokio::select! {
                r = self.reader.read_buf(&mut self.rbuf) => match r {
                    Ok(0) => self.transport_failed("connection closed by peer".to_string()).await,
                    Ok(_) => {
                        let read = self.rbuf.split().freeze();
                        self.feed(Input::Received(read)).await;
                    }
                    Err(e) => self.transport_failed(format!("read: {e}")).await,
                },
                r = self.writer.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => {
                    if let Err(e) = r {
                        self.transport_failed(format!("write: {e}")).await;
                    }
                }
                _ = sleep_until(deadline), if deadline.is_some() => self.feed(Input::Tick).await,
                r = self.desired.changed(), if self.desired_open => match r {
                    Ok(()) => {
                        let d = self.desired.borrow_and_update().clone();
                        self.feed(Input::Desired(d)).await;
                    }
                    Err(_) => self.desired_open = false,
                },
                r = self.import.changed(), if self.import_open => match r {
                    Ok(()) => {
                        let p = self.import.borrow_and_update().clone();
                        self.feed(Input::Import(p)).await;
                    }
                    Err(_) => self.import_open = false,
                },
                cmd = self.commands.recv() => {
                    let n = match cmd {
                        Some(ConnCmd::Stop(n)) => n,
                        None => Some(cease(cease_subcode::ADMINISTRATIVE_SHUTDOWN)),
                    };
                    self.feed(Input::Stop(n)).await;
                }
            }
        }
    }

    async fn transport_failed(&mut self, why: String) {
        self.feed(Input::TransportFailed(why)).await;
        // The connection is gone whatever the core decided.
        self.closing = true;
    }

    /// Gives the core one input now and carries out what it outputs.
    async fn feed(&mut self, input: Input) {
        let mut out = self.core.handle(input, Instant::now());
        while !out.is_empty() {
            let mut next = Vec::new();
            for o in out {
                match o {
                    Output::Send(b) => self.wbuf.extend_from_slice(&b),
                    Output::State(state) => {
                        let _ = self
                            .reports
                            .send(Report::State { id: self.id, state })
                            .await;
                    }
                    Output::OpenReceived { bgp_id } => {
                        // The core outputs nothing after this until it has the verdict.
                        let verdict = self.ask_verdict(bgp_id).await;
                        next = self.core.handle(Input::Verdict(verdict), Instant::now());
                    }
                    Output::Established { peer_gr } => {
                        self.status
                            .update(|s| s.established_since = Some(SystemTime::now()));
                        let _ = self
                            .reports
                            .send(Report::Established {
                                id: self.id,
                                peer_gr,
                            })
                            .await;
                    }
                    Output::RibIn(cmd) => {
                        let _ = self.rib_in.send(cmd).await;
                    }
                    Output::EndOfRib => {
                        let _ = self.reports.send(Report::EndOfRib).await;
                    }
                    Output::Close => self.closing = true,
                }
            }
            out = next;
        }
    }

    /// Asks the peer task whether this connection may go on (collision resolution).
    async fn ask_verdict(&mut self, bgp_id: Ipv4Addr) -> Verdict {
        let (tx, rx) = oneshot::channel();
        let report = Report::OpenReceived {
            id: self.id,
            bgp_id,
            reply: tx,
        };
        if self.reports.send(report).await.is_err() {
            return Verdict::Reject;
        }
        rx.await.unwrap_or(Verdict::Reject)
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
        let closed = self.core.finish();
        let _ = self
            .reports
            .send(Report::Closed {
                id: self.id,
                established: closed.established,
                retain_stale: closed.retain_stale,
                error: closed.error,
                max_prefix_teardown: closed.max_prefix_teardown,
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
