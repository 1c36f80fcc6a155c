//! The tokio adapter of the mesh core: its UDP sockets (the `mesh.bind` socket and one per
//! transit address), a timer heap, a command channel. It owns the core; the rest of the
//! daemon talks to it through `MeshHandle`.
//!
//! A datagram for the WAN leaves by every transit of its family ([`super::egress`]), from
//! that transit's socket (its address, its routing mark); one for a destination the main
//! table routes through another interface (a bgpctl on the fabric) leaves by the main
//! socket. Datagrams are received on every socket alike.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewan_proto::v1::{RecordKind, record::Body};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::core::{CoreTimer, Counters, KeyringOutcome, MemberInfo, MeshCore, Now, Output};
use super::egress::Egress;
pub use super::seal::KeyringOp;
use super::seal::{KeyringError, MeshKey};
use super::store::StateStore;

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The clocks the core is given (see [`Now`]): a monotonic clock counting from
/// `origin`, and the wall clock.
fn clocks(origin: Instant) -> Now {
    Now {
        mono_ms: u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX),
        unix_ms: unix_ms(),
    }
}

/// What the rest of the daemon reads: a consistent snapshot, replaced on every change.
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    pub members: Vec<MemberInfo>,
    pub store: StateStore,
    pub counters: Counters,
    pub keys: Vec<(String, bool)>,
    /// Our own records others hold from a previous life (`MeshCore::previous_life`).
    pub previous_life: Vec<crate::store::RecordKey>,
}

/// Where a publish or withdrawal is answered: the record's version, or why not.
type PublishReply = oneshot::Sender<Result<u64, String>>;

enum Command {
    Publish(Box<Body>, PublishReply),
    Withdraw(RecordKind, String, PublishReply),
    Keyring {
        op: KeyringOp,
        cluster: bool,
        reply: oneshot::Sender<Result<KeyringOutcome, KeyringError>>,
    },
    Leave(oneshot::Sender<()>),
    Revoke(
        crate::identity::NodeId,
        oneshot::Sender<Result<u64, String>>,
    ),
}

/// Talks to the mesh task.
#[derive(Clone)]
pub struct MeshHandle {
    cmd: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<MeshView>>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("the mesh task has stopped")]
    Stopped,
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("{0}")]
    Record(String),
}

impl MeshHandle {
    pub fn view(&self) -> Arc<MeshView> {
        self.view.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshView>> {
        self.view.clone()
    }

    pub async fn publish(&self, body: Body) -> Result<u64, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Publish(Box::new(body), tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await
            .map_err(|_| MeshError::Stopped)?
            .map_err(MeshError::Record)
    }

    pub async fn withdraw(&self, kind: RecordKind, name: String) -> Result<u64, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Withdraw(kind, name, tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await
            .map_err(|_| MeshError::Stopped)?
            .map_err(MeshError::Record)
    }

    /// Changes our keyring and, with `cluster`, asks every other member to do the same
    /// (`serf keys`); the outcome says who was asked and who did not apply it.
    pub async fn keyring(&self, op: KeyringOp, cluster: bool) -> Result<KeyringOutcome, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Keyring {
                op,
                cluster,
                reply: tx,
            })
            .await
            .map_err(|_| MeshError::Stopped)?;
        Ok(rx.await.map_err(|_| MeshError::Stopped)??)
    }

    /// Revokes a member for good (see `MeshCore::revoke`).
    pub async fn revoke(&self, node: crate::identity::NodeId) -> Result<u64, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Revoke(node, tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await
            .map_err(|_| MeshError::Stopped)?
            .map_err(MeshError::Record)
    }

    /// Leaves the mesh gracefully and stops the task.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Binds the gossip socket. An unspecified IPv6 bind also takes IPv4 (dual stack).
/// `shared`: transit sockets will bind the same port on specific addresses (the kernel
/// hands each datagram to the most specific socket).
pub fn bind_socket(addr: SocketAddr, shared: bool) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.set_reuse_address(shared)?;
    sock.set_nonblocking(true)?;
    // Room for bursts of gossip (a push-pull sends a few dozen datagrams at once).
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

/// Binds the gossip socket of one transit address: `mark` routes what it sends through
/// the transit's own table. Free-bind, so a transit whose address is not (yet) on its
/// interface does not stop the daemon; it sends once the address is there.
pub fn bind_transit_socket(addr: SocketAddr, mark: Option<u32>) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
        sock.set_freebind_v6(true)?;
    } else {
        sock.set_freebind_v4(true)?;
    }
    sock.set_reuse_address(true)?;
    if let Some(m) = mark {
        sock.set_mark(m)?;
    }
    sock.set_nonblocking(true)?;
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

/// The sockets of the mesh task.
pub struct MeshSockets {
    /// `mesh.bind`: receives, and sends what is not for the WAN.
    pub main: UdpSocket,
    /// One per transit address (see [`bind_transit_socket`]).
    pub transits: Vec<UdpSocket>,
}

impl MeshSockets {
    pub fn single(main: UdpSocket) -> MeshSockets {
        MeshSockets {
            main,
            transits: Vec::new(),
        }
    }

    fn egress(&self) -> Egress {
        Egress::new(
            self.transits
                .iter()
                .filter_map(|s| s.local_addr().ok())
                .map(|a| a.ip())
                .collect(),
        )
    }

    fn all(&self) -> impl Iterator<Item = &UdpSocket> {
        std::iter::once(&self.main).chain(&self.transits)
    }

    /// The next datagram from any socket, starting the scan at a rotating socket so a
    /// flood on one cannot starve the others.
    async fn recv(
        &self,
        start: &mut usize,
        buf: &mut [u8],
    ) -> std::io::Result<(SocketAddr, usize)> {
        let n = 1 + self.transits.len();
        std::future::poll_fn(|cx| {
            for k in 0..n {
                let i = (*start + k) % n;
                let Some(sock) = self.all().nth(i) else {
                    continue;
                };
                let mut rb = tokio::io::ReadBuf::new(buf);
                if let std::task::Poll::Ready(r) = sock.poll_recv_from(cx, &mut rb) {
                    *start = (i + 1) % n;
                    return std::task::Poll::Ready(r.map(|from| (from, rb.filled().len())));
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// Whether a destination is reached over the WAN: unless the main table routes it
/// through an interface that is not a transit (the source it would pick is not a transit
/// address), it is. Asked of the kernel by connecting a UDP socket (no packet is sent),
/// and remembered for a while: routes change rarely, destinations are few.
struct Scope {
    egress: Egress,
    cache: HashMap<IpAddr, (bool, Instant)>,
}

const SCOPE_TTL: Duration = Duration::from_secs(10);

impl Scope {
    fn is_wan(&mut self, ip: IpAddr) -> bool {
        let now = Instant::now();
        if let Some(&(wan, at)) = self.cache.get(&ip)
            && now.duration_since(at) < SCOPE_TTL
        {
            return wan;
        }
        let source = || -> std::io::Result<IpAddr> {
            let any: SocketAddr = if ip.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let probe = std::net::UdpSocket::bind(any)?;
            probe.connect((ip, 9))?;
            Ok(probe.local_addr()?.ip())
        };
        // No route at all: the transits are the only way there may be.
        let wan = source().map_or(true, |s| self.egress.is_source(s));
        if self.cache.len() > 4096 {
            self.cache.clear();
        }
        self.cache.insert(ip, (wan, now));
        wan
    }
}

struct Due {
    at: Instant,
    seq: u64,
    timer: CoreTimer,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Stores a generation raised at runtime (durably: it returns once the value is on disk),
/// so that the next start uses a larger one.
pub type GenerationStore = Box<dyn FnMut(u32) -> std::io::Result<()> + Send>;

/// Where the mesh task keeps what must survive a restart.
#[derive(Debug, Clone, Default)]
pub struct MeshFiles {
    /// Receives the keyring after every change.
    pub keyring: Option<PathBuf>,
    /// Receives the pinned member keys after every change (ADR 0033).
    pub pins: Option<PathBuf>,
    /// Receives the signed revocations after every change (ADR 0033).
    pub revocations: Option<PathBuf>,
}

/// Starts the mesh task. `files` receive what must survive a restart after every change;
/// `store_generation` a generation raised at runtime, before any datagram announces it.
pub fn spawn(
    core: MeshCore,
    sockets: MeshSockets,
    files: MeshFiles,
    store_generation: Option<GenerationStore>,
) -> MeshHandle {
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (view_tx, view_rx) = watch::channel(Arc::new(MeshView::default()));
    tokio::spawn(run(core, sockets, cmd_rx, view_tx, files, store_generation));
    MeshHandle {
        cmd: cmd_tx,
        view: view_rx,
    }
}

fn make_view(core: &MeshCore) -> Arc<MeshView> {
    Arc::new(MeshView {
        members: core.members(),
        store: core.with_store(Clone::clone),
        counters: core.counters(),
        previous_life: core.previous_life(),
        keys: core
            .keyring()
            .keys()
            .enumerate()
            .map(|(i, k)| (k.fingerprint(), i == 0))
            .collect(),
    })
}

async fn run(
    mut core: MeshCore,
    sockets: MeshSockets,
    mut cmd_rx: mpsc::Receiver<Command>,
    view_tx: watch::Sender<Arc<MeshView>>,
    files: MeshFiles,
    mut store_generation: Option<GenerationStore>,
) {
    let origin = Instant::now();
    let keyring_file = files.keyring;
    let mut timers: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65536];
    let mut next_socket = 0usize;
    let egress = sockets.egress();
    let mut scope = Scope {
        egress: egress.clone(),
        cache: HashMap::new(),
    };
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    core.start(clocks(origin));
    let mut leaving: Option<oneshot::Sender<()>> = None;
    // A publish or withdrawal is answered once the view holds it: a caller that reads
    // the view after awaiting it (the drain's answer, the next read-change-publish of our
    // NodeRecord) must not see the record of before.
    let mut published: Option<(PublishReply, Result<u64, String>)> = None;
    let mut keyring_queries: HashMap<u64, oneshot::Sender<Result<KeyringOutcome, KeyringError>>> =
        HashMap::new();
    loop {
        let next = timers.peek().map(|Reverse(d)| d.at);
        let mut view_dirty = false;
        tokio::select! {
            r = sockets.recv(&mut next_socket, &mut buf) => match r {
                Ok((from, n)) => core.handle_datagram(from, &buf[..n], clocks(origin)),
                Err(e) => debug!(error = %e, "recv"),
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while timers.peek().is_some_and(|Reverse(d)| d.at <= now) {
                    if let Some(Reverse(d)) = timers.pop() {
                        core.handle_timer(d.timer, clocks(origin));
                    }
                }
            }
            c = cmd_rx.recv() => match c {
                None => break,
                Some(Command::Publish(body, reply)) => {
                    published = Some((reply, core.publish(*body, clocks(origin)).map_err(|e| e.to_string())));
                }
                Some(Command::Withdraw(kind, name, reply)) => {
                    published = Some((reply, core.withdraw(kind, &name, clocks(origin)).map_err(|e| e.to_string())));
                }
                Some(Command::Keyring { op, cluster, reply }) => {
                    view_dirty = true;
                    match apply_keyring(&mut core, &op, false, keyring_file.as_deref()) {
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                        Ok(()) if !cluster => {
                            let _ = reply.send(Ok(KeyringOutcome::default()));
                        }
                        Ok(()) => {
                            let query = core.start_keyring_query(&op, clocks(origin));
                            keyring_queries.insert(query, reply);
                        }
                    }
                }
                Some(Command::Revoke(node, reply)) => {
                    let _ = reply.send(core.revoke(node, clocks(origin)));
                }
                Some(Command::Leave(reply)) => {
                    core.leave(clocks(origin));
                    leaving = Some(reply);
                }
            },
            _ = refresh.tick() => view_dirty = true,
        }
        // Handling an output can produce more (an answer to a keyring request).
        loop {
            let outputs: Vec<Output> = core.drain_outputs().collect();
            if outputs.is_empty() {
                break;
            }
            for out in outputs {
                match out {
                    Output::Send { to, datagram } => {
                        let to = SocketAddr::new(to.ip().to_canonical(), to.port());
                        let mut sent = false;
                        if !egress.is_empty() && scope.is_wan(to.ip()) {
                            for i in egress.paths(to) {
                                sent = true;
                                if let Err(e) = sockets.transits[i].send_to(&datagram, to).await {
                                    debug!(error = %e, %to, from = %egress.sources()[i], "send");
                                }
                            }
                        }
                        if !sent && let Err(e) = sockets.main.send_to(&datagram, to).await {
                            debug!(error = %e, %to, "send");
                        }
                    }
                    Output::Schedule { after, timer } => {
                        seq += 1;
                        timers.push(Reverse(Due {
                            at: Instant::now() + after,
                            seq,
                            timer,
                        }));
                    }
                    Output::KeyringRequested { from, query, op } => {
                        info!(%from, ?op, "keyring change asked by another member");
                        let res = apply_keyring(&mut core, &op, true, keyring_file.as_deref());
                        view_dirty = true;
                        let error = res.err().map(|e| e.to_string()).unwrap_or_default();
                        core.answer_keyring(from, query, error, clocks(origin));
                    }
                    Output::GenerationRaised { generation } => {
                        // Before the datagrams that follow it announce the generation.
                        let stored = store_generation.as_mut().map(|store| store(generation));
                        match stored {
                            Some(Err(e)) => warn!(
                                error = %e,
                                generation,
                                "cannot store the generation raised at runtime: a restart \
                                 may reuse it"
                            ),
                            Some(Ok(())) => info!(generation, "stored the raised generation"),
                            None => {}
                        }
                    }
                    Output::KeyringQueryDone { query, outcome } => {
                        info!(
                            asked = outcome.asked.len(),
                            failed = outcome.failures.len(),
                            "cluster-wide keyring change done"
                        );
                        if let Some(reply) = keyring_queries.remove(&query) {
                            let _ = reply.send(Ok(outcome));
                        }
                    }
                }
            }
        }
        if let Some(pins) = core.take_changed_pins()
            && let Some(path) = &files.pins
            && let Err(e) = super::durable::write_private(path, pins.to_text().as_bytes())
        {
            // Kept in memory all the same; a restart re-pins on first sight.
            warn!(error = %e, path = %path.display(), "cannot save the pinned member keys");
        }
        if let Some(revocations) = core.take_changed_revocations()
            && let Some(path) = &files.revocations
        {
            let text = super::pins::revocations_to_text(&revocations);
            if let Err(e) = super::durable::write_private(path, text.as_bytes()) {
                // Held in memory; after a restart the other members' copies come back.
                warn!(error = %e, path = %path.display(), "cannot save the revocations");
            }
        }
        let (members, records) = core.take_changes();
        if members || records || view_dirty {
            view_tx.send_replace(make_view(&core));
        }
        if let Some((reply, result)) = published.take() {
            let _ = reply.send(result);
        }
        if let Some(reply) = leaving.take() {
            info!("left the mesh");
            let _ = reply.send(());
            break;
        }
    }
}

/// Applies a keyring change and saves the keyring file, undoing the change if it cannot
/// be saved. `asked`: the change comes from another member (`KeyringOp::apply_as_asked`).
fn apply_keyring(
    core: &mut MeshCore,
    op: &KeyringOp,
    asked: bool,
    file: Option<&std::path::Path>,
) -> Result<(), KeyringError> {
    let ring = core.keyring_mut();
    let before = ring.clone();
    if asked {
        op.apply_as_asked(ring)?;
    } else {
        op.apply(ring)?;
    }
    if let Some(path) = file {
        let keys: Vec<MeshKey> = ring.keys().cloned().collect();
        if let Err(e) = super::keyring_file::save(path, &keys) {
            warn!(error = %e, path = %path.display(), "cannot save keyring; change undone");
            *core.keyring_mut() = before;
            return Err(KeyringError::Persist(e.to_string()));
        }
    }
    info!(keys = ?core.keyring(), "keyring changed");
    Ok(())
}
