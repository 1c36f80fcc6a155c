//! The tokio adapter of the mesh core: one UDP socket, a timer heap, a command channel.
//! It owns the core; the rest of the daemon talks to it through `MeshHandle`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatewan_proto::v1::{RecordKind, record::Body};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::core::{CoreTimer, Counters, KeyringOutcome, MemberInfo, MeshCore, Output};
pub use super::seal::KeyringOp;
use super::seal::{KeyringError, MeshKey};
use super::store::StateStore;

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the rest of the daemon reads: a consistent snapshot, replaced on every change.
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    pub members: Vec<MemberInfo>,
    pub store: StateStore,
    pub counters: Counters,
    pub keys: Vec<(String, bool)>,
}

enum Command {
    Publish(Box<Body>, oneshot::Sender<Result<u64, String>>),
    Withdraw(RecordKind, String, oneshot::Sender<Result<u64, String>>),
    Keyring {
        op: KeyringOp,
        cluster: bool,
        reply: oneshot::Sender<Result<KeyringOutcome, KeyringError>>,
    },
    Leave(oneshot::Sender<()>),
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

    /// Leaves the mesh gracefully and stops the task.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Binds the gossip socket. An unspecified IPv6 bind also takes IPv4 (dual stack).
pub fn bind_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(false)?;
    }
    sock.set_nonblocking(true)?;
    // Room for bursts of gossip (a push-pull sends a few dozen datagrams at once).
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
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

/// Starts the mesh task. `keyring_file` receives the keyring after every change so a
/// restart keeps it.
pub fn spawn(core: MeshCore, socket: UdpSocket, keyring_file: Option<PathBuf>) -> MeshHandle {
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (view_tx, view_rx) = watch::channel(Arc::new(MeshView::default()));
    tokio::spawn(run(core, socket, cmd_rx, view_tx, keyring_file));
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
    socket: UdpSocket,
    mut cmd_rx: mpsc::Receiver<Command>,
    view_tx: watch::Sender<Arc<MeshView>>,
    keyring_file: Option<PathBuf>,
) {
    let mut timers: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65536];
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    core.start(unix_ms());
    let mut leaving: Option<oneshot::Sender<()>> = None;
    let mut keyring_queries: HashMap<u64, oneshot::Sender<Result<KeyringOutcome, KeyringError>>> =
        HashMap::new();
    loop {
        let next = timers.peek().map(|Reverse(d)| d.at);
        let mut view_dirty = false;
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => core.handle_datagram(from, &buf[..n], unix_ms()),
                Err(e) => debug!(error = %e, "recv"),
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while timers.peek().is_some_and(|Reverse(d)| d.at <= now) {
                    if let Some(Reverse(d)) = timers.pop() {
                        core.handle_timer(d.timer, unix_ms());
                    }
                }
            }
            c = cmd_rx.recv() => match c {
                None => break,
                Some(Command::Publish(body, reply)) => {
                    let _ = reply.send(core.publish(*body, unix_ms()).map_err(|e| e.to_string()));
                }
                Some(Command::Withdraw(kind, name, reply)) => {
                    let _ = reply.send(core.withdraw(kind, &name, unix_ms()).map_err(|e| e.to_string()));
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
                            let query = core.start_keyring_query(&op, unix_ms());
                            keyring_queries.insert(query, reply);
                        }
                    }
                }
                Some(Command::Leave(reply)) => {
                    core.leave(unix_ms());
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
                        if let Err(e) = socket.send_to(&datagram, to).await {
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
                        core.answer_keyring(from, query, error, unix_ms());
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
        let (members, records) = core.take_changes();
        if members || records || view_dirty {
            view_tx.send_replace(make_view(&core));
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
