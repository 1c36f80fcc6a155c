//! What every mesh member daemon (gatewan, bgpctl) does at start and stop: logging, the
//! state directory, joining the mesh, serving the API, metrics and signals.

use std::path::Path;

use gatewan_proto::v1::{self, record::Body};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{error, info};

use crate::config::{ApiSettings, LogFormat, MeshMemberSettings};
use crate::state_dir::StateDir;
use gatewan_mesh::driver::{self, MeshHandle};
use gatewan_mesh::{MemberId, MeshCore, keyring_file};

pub fn init_tracing(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// What every daemon's `main` does with its validated settings: config errors exit 2 naming
/// file, line and field; the keyring is checked too; `--check` stops there; otherwise
/// logging starts and `run` runs on a tokio runtime (a runtime error exits 1).
pub fn start_daemon<P, F>(
    config: &Path,
    check: bool,
    settings: Result<P, Vec<crate::config::ConfigError>>,
    mesh: impl Fn(&P) -> &MeshMemberSettings,
    log: impl Fn(&P) -> (LogFormat, Option<&str>),
    run: impl FnOnce(P) -> F,
) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    use std::process::ExitCode;
    let settings = match settings {
        Ok(p) => p,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    if let Err(e) = keyring_file::load(&mesh(&settings).keyring_file) {
        eprintln!("error: {}: mesh.keyring: {e}", config.display());
        return ExitCode::from(2);
    }
    if check {
        println!("{}: configuration is valid", config.display());
        return ExitCode::SUCCESS;
    }
    let (format, level) = log(&settings);
    init_tracing(format, level);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        // What only the host can tell (a transit's gateway) is still the config's fault.
        Err(e) if e.downcast_ref::<crate::config::ConfigErrors>().is_some() => {
            error!("{e:#}");
            eprintln!("{e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A member that has joined the mesh.
pub struct Member {
    pub mesh: MeshHandle,
    pub identity: MemberId,
    pub state_dir: StateDir,
}

/// Opens the state directory, loads the keyring, binds the gossip sockets and starts the
/// mesh task. `transits`: the transit addresses to send WAN gossip from, each with its
/// routing mark (none for bgpctl: it reaches the mesh through its fabric). Errors here
/// are runtime errors (exit 1).
pub async fn join_mesh(
    state_dir: &Path,
    mesh: &MeshMemberSettings,
    transits: &[(std::net::IpAddr, Option<u32>)],
) -> anyhow::Result<Member> {
    use anyhow::Context as _;
    let state_dir =
        StateDir::open(state_dir).with_context(|| format!("state_dir {}", state_dir.display()))?;
    let node = state_dir.node_id().context("node id")?;
    let signer = state_dir.signing_key().context("signing key")?;
    let pins = state_dir.pinned_keys().context("pinned member keys")?;
    let revocations = state_dir.revocations().context("revocations")?;
    let generation = state_dir.next_generation().context("generation")?;
    let keyring = keyring_file::load(&mesh.keyring_file).map_err(anyhow::Error::msg)?;
    let identity = MemberId {
        node,
        generation,
        addrs: mesh.advertise.clone(),
    };
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let fingerprint = signer.public().fingerprint();
    let mut core = MeshCore::new(
        identity.clone(),
        signer,
        pins,
        keyring,
        mesh.settings.clone(),
        mesh.seeds.clone(),
        seed,
    )
    .map_err(anyhow::Error::msg)?;
    for refused in core.restore_revocations(&revocations) {
        tracing::warn!(%refused, "a saved revocation no longer holds (mesh.admins changed?)");
    }
    let main = driver::bind_socket(mesh.bind, !transits.is_empty())
        .with_context(|| format!("mesh.bind {}", mesh.bind))?;
    let mut sockets = driver::MeshSockets::single(main);
    for &(ip, mark) in transits {
        let addr = std::net::SocketAddr::new(ip, mesh.bind.port());
        sockets.transits.push(
            driver::bind_transit_socket(addr, mark)
                .with_context(|| format!("gossip socket of transit address {addr}"))?,
        );
    }
    info!(id = %node, key = %fingerprint, generation, bind = %mesh.bind, advertise = ?mesh.advertise, seeds = ?mesh.seeds, transits = ?transits, "joining the mesh");
    let files = driver::MeshFiles {
        keyring: Some(mesh.keyring_file.clone()),
        pins: Some(state_dir.pins_file()),
        revocations: Some(state_dir.revocations_file()),
    };
    let store = state_dir.clone();
    let mesh = driver::spawn(
        core,
        sockets,
        files,
        Some(Box::new(move |g| store.store_generation(g))),
    );
    Ok(Member {
        mesh,
        identity,
        state_dir,
    })
}

/// Publishes our NodeRecord.
pub async fn announce(member: &Member, mut record: v1::NodeRecord) -> anyhow::Result<()> {
    record.id = bytes::Bytes::copy_from_slice(&member.identity.node.0);
    record.version = env!("CARGO_PKG_VERSION").to_string();
    record.mesh_addresses = member
        .identity
        .addrs
        .iter()
        .map(ToString::to_string)
        .collect();
    member.mesh.publish(Body::Node(record)).await?;
    Ok(())
}

/// Serves the gRPC services on the API socket and, with `api.listen`, on TCP with mutual
/// TLS, until `shutdown` resolves. Both serve the same `routes`.
pub async fn serve_api(
    api: ApiSettings,
    routes: Routes,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use futures_util::FutureExt as _;
    // Bound before anything is served, so a TCP error leaves no socket file behind.
    let tcp = match &api.tcp {
        None => None,
        Some(t) => {
            let tls = crate::tls::server_tls(&t.tls)?;
            let listener = tokio::net::TcpListener::bind(t.listen)
                .await
                .with_context(|| format!("api.listen {}", t.listen))?;
            Some((t.listen, tls, listener))
        }
    };
    let listener = crate::api::bind_unix(&api.socket)
        .with_context(|| format!("api.socket {}", api.socket.display()))?;
    info!(socket = %api.socket.display(), "API listening");
    // Both daemons joined the mesh before serving; with the API bound, routingctl answers.
    crate::systemd::ready();
    let shutdown = shutdown.boxed().shared();
    let unix = Server::builder()
        .add_routes(routes.clone())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown.clone());
    let res = match tcp {
        None => unix.await.map_err(anyhow::Error::from),
        Some((addr, tls, listener)) => {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            info!(listen = %addr, "API listening on TCP (mutual TLS)");
            let tcp = async {
                Server::builder()
                    .tls_config(tls)
                    .with_context(|| format!("api.tls of api.listen {addr}"))?
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
                    .with_context(|| format!("api.listen {addr}"))
            };
            let unix = async { unix.await.map_err(anyhow::Error::from) };
            tokio::try_join!(unix, tcp).map(|_| ())
        }
    };
    let _ = std::fs::remove_file(&api.socket);
    res
}

/// Serves the API until SIGINT or SIGTERM. On a signal it returns a handle that keeps the
/// API up while the caller shuts down (routingctl still answers) and stops it when
/// dropped; `None` if the API stopped on its own without error.
pub async fn serve_api_until_signal(
    api: ApiSettings,
    routes: Routes,
) -> anyhow::Result<Option<tokio::sync::oneshot::Sender<()>>> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(serve_api(api, routes, async {
        let _ = stop_rx.await;
    }));
    tokio::select! {
        _ = shutdown_signal() => {
            crate::systemd::stopping();
            Ok(Some(stop_tx))
        }
        // The API stopped on its own: that is an error (e.g. the socket is taken).
        r = api => match r {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Ok(None),
            Err(e) => Err(e.into()),
        },
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
