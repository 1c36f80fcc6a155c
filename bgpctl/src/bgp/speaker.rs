//! The speaker: `spawn`, the handle the daemon holds, the passive listener task
//! and the Adj-RIB-In task (single owner of received routes, publishing snapshots).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::import::{ImportPolicy, ImportPrefixes};
use super::peer::{PeerCmd, PeerContext, PeerTask};
use super::rib_in::{AdjRibIn, ReceivedRoutes, RibInCmd};
use super::rib_out::{AdjRibOut, Desired};
use super::settings::{PeerSettings, SpeakerSettings};
use super::status::{PeerStatus, SharedStatus};
use super::transport;
use super::types::RouteTarget;
use super::types::Type5Route;

/// Snapshots of received routes are published at most this often (coalescing bursts).
const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("invalid BGP settings: {0}")]
    InvalidSettings(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the BGP speaker must be spawned from within a Tokio runtime")]
    NoRuntime,
}

struct PeerEntry {
    settings: PeerSettings,
    status: SharedStatus,
    commands: mpsc::Sender<PeerCmd>,
    task: Option<JoinHandle<()>>,
}

/// The running speaker. Dropping it stops the speaker (peers see a Cease); `shutdown`
/// does the same and waits until the NOTIFICATIONs are out.
pub struct SpeakerHandle {
    desired: watch::Sender<Desired>,
    import: watch::Sender<Arc<ImportPolicy>>,
    received: watch::Receiver<Arc<ReceivedRoutes>>,
    peers: Vec<PeerEntry>,
    listener: Option<JoinHandle<()>>,
    rib_in: Option<JoinHandle<()>>,
}

fn validate(s: &SpeakerSettings) -> Result<(), SpeakerError> {
    let bad = |m: String| Err(SpeakerError::InvalidSettings(m));
    if s.asn == 0 {
        return bad("asn must not be 0".into());
    }
    if s.router_id.is_unspecified() {
        return bad("router_id must not be 0.0.0.0".into());
    }
    if let Some(gr) = &s.graceful_restart
        && gr.restart_time > Duration::from_secs(4095)
    {
        return bad("graceful_restart.restart_time is at most 4095s".into());
    }
    let mut seen = std::collections::HashSet::new();
    for p in &s.peers {
        let a = transport::canonical(p.address);
        if !seen.insert(a) {
            return bad(format!("peer {a} is configured twice"));
        }
        if p.asn == 0 {
            return bad(format!("peer {a}: asn must not be 0"));
        }
        let hold = p.hold_time.as_secs();
        if (hold != 0 && hold < 3) || hold > u64::from(u16::MAX) {
            return bad(format!("peer {a}: hold_time must be 0 or 3s..65535s"));
        }
        if p.password
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > transport::MD5_MAX_KEY_LEN)
        {
            return bad(format!("peer {a}: password must be 1 to 80 octets"));
        }
        if p.passive && s.listen.is_none() {
            return bad(format!(
                "peer {a} is passive but the speaker does not listen"
            ));
        }
        if let Some(m) = &p.max_prefixes
            && (m.limit == 0 || !(1..=100).contains(&m.warning_threshold_percent))
        {
            return bad(format!(
                "peer {a}: max_prefixes needs a limit above 0 and a threshold of 1 to 100 %"
            ));
        }
        if let Some(l) = p.local_address
            && l.is_ipv4() != a.is_ipv4()
        {
            return bad(format!("peer {a}: local_address {l} is of another family"));
        }
    }
    Ok(())
}

/// Binds the listener and starts a task per peer. Must be called within a Tokio runtime;
/// sockets are created in the network namespace of the calling thread (the listener) and
/// of the runtime's worker threads (outgoing connections).
pub fn spawn(settings: SpeakerSettings) -> Result<SpeakerHandle, SpeakerError> {
    validate(&settings)?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(SpeakerError::NoRuntime);
    }
    let mut peers: Vec<PeerSettings> = settings.peers.clone();
    for p in &mut peers {
        p.address = transport::canonical(p.address);
    }
    let listener = match settings.listen {
        Some(addr) => {
            let keys: Vec<(IpAddr, Vec<u8>)> = peers
                .iter()
                .filter_map(|p| Some((p.address, p.password.clone()?.into_bytes())))
                .collect();
            Some(
                transport::bind_listener(addr, &keys)
                    .map_err(|source| SpeakerError::Listen { addr, source })?,
            )
        }
        None => None,
    };

    let (desired_tx, desired_rx) = watch::channel(None);
    let (received_tx, received_rx) = watch::channel(Arc::new(ReceivedRoutes::default()));
    let (rib_in_tx, rib_in_rx) = mpsc::channel(256);

    let (import_tx, import) = watch::channel(Arc::new(ImportPolicy {
        route_targets: settings.import_route_targets.clone(),
        prefixes: settings.import_prefixes.clone(),
    }));
    let mut entries = Vec::new();
    let mut inbound_by_addr: HashMap<IpAddr, mpsc::Sender<TcpStream>> = HashMap::new();
    let mut statuses = HashMap::new();
    for p in peers {
        let status = SharedStatus::new(p.address, p.asn);
        statuses.insert(p.address, status.clone());
        let (inbound_tx, inbound_rx) = mpsc::channel(4);
        inbound_by_addr.insert(p.address, inbound_tx);
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let ctx = Arc::new(PeerContext {
            local_asn: settings.asn,
            router_id: settings.router_id,
            restart_time: settings.graceful_restart.map(|g| g.restart_time),
            import: import.clone(),
            settings: p.clone(),
        });
        let task = PeerTask::new(
            ctx,
            status.clone(),
            rib_in_tx.clone(),
            desired_rx.clone(),
            inbound_rx,
            cmd_rx,
        );
        entries.push(PeerEntry {
            settings: p,
            status,
            commands: cmd_tx,
            task: Some(tokio::spawn(task.run())),
        });
    }
    drop(rib_in_tx);

    let rib = AdjRibIn::new();
    let rib_in = tokio::spawn(run_rib_in(rib, rib_in_rx, received_tx, statuses));
    let listener = listener.map(|l| tokio::spawn(run_listener(l, inbound_by_addr)));
    Ok(SpeakerHandle {
        desired: desired_tx,
        import: import_tx,
        received: received_rx,
        peers: entries,
        listener,
        rib_in: Some(rib_in),
    })
}

impl SpeakerHandle {
    /// Replaces the whole desired Adj-RIB-Out. Each session sends only the difference to
    /// what it has sent. Of routes with the same (RD, prefix) the last one wins. Sessions
    /// send their initial table and End-of-RIB only once this has been called.
    pub fn set_advertised(&self, routes: Vec<Type5Route>) {
        let (set, duplicates) = AdjRibOut::from_routes(routes);
        if duplicates > 0 {
            tracing::warn!(
                duplicates,
                "set_advertised: routes with the same RD and prefix, the last one is used"
            );
        }
        self.desired.send_replace(Some(Arc::new(set)));
    }

    /// A new import policy (configuration reload): every Established session asks its
    /// peer for all its routes again (ROUTE-REFRESH; a session reset for a peer without
    /// it) and runs them through the new policy; the next sessions start with it.
    pub fn set_import(&self, route_targets: Vec<RouteTarget>, prefixes: ImportPrefixes) {
        let policy = ImportPolicy {
            route_targets,
            prefixes,
        };
        self.import.send_if_modified(|p| {
            let changed = **p != policy;
            if changed {
                *p = Arc::new(policy);
            }
            changed
        });
    }

    /// The desired Adj-RIB-Out as last set, in (RD, prefix) order.
    pub fn advertised(&self) -> Vec<Type5Route> {
        self.desired
            .borrow()
            .iter()
            .flat_map(|set| set.iter().cloned())
            .collect()
    }

    /// Type-5 routes from all peers after the import policy, and which peers
    /// have completed their table (End-of-RIB).
    pub fn subscribe_received(&self) -> watch::Receiver<Arc<ReceivedRoutes>> {
        self.received.clone()
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers.iter().map(|p| p.status.snapshot()).collect()
    }

    /// The configured peers, in configuration order.
    pub fn peer_settings(&self) -> Vec<PeerSettings> {
        self.peers.iter().map(|p| p.settings.clone()).collect()
    }

    /// Sends Cease (administrative shutdown) to every peer and waits until the sessions
    /// are closed (at most a few seconds).
    pub async fn shutdown(mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        let mut acks = Vec::new();
        for p in &self.peers {
            let (tx, rx) = oneshot::channel();
            if p.commands.send(PeerCmd::Shutdown(tx)).await.is_ok() {
                acks.push(rx);
            }
        }
        for rx in acks {
            let _ = rx.await;
        }
        for p in &mut self.peers {
            if let Some(t) = p.task.take() {
                let _ = t.await;
            }
        }
        if let Some(t) = self.rib_in.take() {
            t.abort();
        }
    }
}

impl Drop for SpeakerHandle {
    fn drop(&mut self) {
        // Peer tasks see their command channel close and send Cease on their own.
        if let Some(l) = self.listener.take() {
            l.abort();
        }
    }
}

async fn run_listener(
    listener: tokio::net::TcpListener,
    peers: HashMap<IpAddr, mpsc::Sender<TcpStream>>,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let addr = transport::canonical(from.ip());
        match peers.get(&addr) {
            Some(tx) => {
                if tx.try_send(stream).is_err() {
                    tracing::debug!(peer = %addr, "connection dropped: peer task busy");
                }
            }
            None => tracing::debug!(from = %addr, "connection from an unknown address closed"),
        }
    }
}

async fn run_rib_in(
    mut rib: AdjRibIn,
    mut commands: mpsc::Receiver<RibInCmd>,
    publish: watch::Sender<Arc<ReceivedRoutes>>,
    statuses: HashMap<IpAddr, SharedStatus>,
) {
    let mut dirty = false;
    let mut last_publish = Instant::now();
    loop {
        let due = dirty.then_some(last_publish + PUBLISH_INTERVAL);
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else {
                    if dirty {
                        publish.send_replace(Arc::new(rib.snapshot()));
                    }
                    return;
                };
                let peer = match cmd {
                    RibInCmd::Update { peer, announced, withdrawn } => {
                        rib.apply(peer, announced, &withdrawn);
                        peer
                    }
                    RibInCmd::MarkStale(peer) => {
                        rib.mark_stale(peer);
                        peer
                    }
                    RibInCmd::FlushStale(peer) => {
                        let n = rib.flush_stale(peer);
                        tracing::info!(peer = %peer, "flushed {n} stale routes");
                        peer
                    }
                    RibInCmd::EndOfRib(peer) => {
                        rib.end_of_rib(peer);
                        peer
                    }
                    RibInCmd::Clear(peer) => {
                        rib.clear(peer);
                        peer
                    }
                };
                let (routes, stale) = rib.count(peer);
                if let Some(s) = statuses.get(&peer) {
                    s.update(|s| {
                        s.prefixes_received = routes as u64;
                        s.prefixes_stale = stale as u64;
                    });
                }
                dirty = true;
            }
            _ = sleep_until(due), if due.is_some() => {
                publish.send_replace(Arc::new(rib.snapshot()));
                dirty = false;
                last_publish = Instant::now();
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
