//! `gatewan`: the gatewan daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use gatewan::config::GatewanConfig;
use gatewan::transit::TransitRouting;
use gatewan::{api, metrics};
use gatewan_kit::daemon;
use gatewan_proto::v1;

#[path = "../../packaging/generate.rs"]
mod generate;

#[derive(Parser)]
#[command(
    version,
    about = "Gatewan: joins this datacenter to the others over encrypted, measured tunnels"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        short,
        long,
        default_value = "/etc/gatewan/gatewan.yaml",
        env = "GATEWAN_CONFIG"
    )]
    config: PathBuf,
    /// Validate the configuration (and the keyring and API TLS files it names), then exit.
    /// What the file leaves to the host is read at start, not here: transit gateways from
    /// the main table, fabric.vtep from fabric.interface's address.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new random mesh key (base64), for a keyring file or `routingctl keyring install`.
    Keygen,
    /// Print a commented starting config built from this host's interfaces and routes: a
    /// transit per interface with a default route, the seeds and keyring given.
    Init(gatewan::init::InitArgs),
}

fn main() -> ExitCode {
    let matches = generate::with_generate(Cli::command()).get_matches();
    if let Some(code) = generate::run_if_asked(&matches, Cli::command) {
        return code;
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match &cli.command {
        Some(Command::Keygen) => {
            println!("{}", gatewan_mesh::MeshKey::generate().to_base64());
            return ExitCode::SUCCESS;
        }
        Some(Command::Init(args)) => return gatewan::init::run(args),
        None => {}
    }
    daemon::start_daemon(
        &cli.config,
        cli.check,
        GatewanConfig::load(&cli.config),
        |p| &p.mesh,
        |p| (p.log_format, p.log_level.as_deref()),
        // What the file leaves to the host (fabric.vtep) is read before anything starts.
        // A reload compares files: what was read before the host completed it.
        |settings| {
            let from_file = settings.clone();
            async move { run(gatewan::host::complete_settings(settings).await?, from_file).await }
        },
    )
}

async fn run(
    settings: gatewan::config::GatewanSettings,
    from_file: gatewan::config::GatewanSettings,
) -> anyhow::Result<()> {
    // Opened (created) here: the transits' positions it keeps number their routing.
    gatewan_kit::state_dir::StateDir::open(&settings.state_dir)?;
    let numbering = tunnel_numbering(&settings, &settings.state_dir);
    let transit_names: Vec<&str> = settings.transits.iter().map(|t| t.name.as_str()).collect();
    let drained_file = settings.state_dir.join(gatewan::drain::FILE);
    let drained = gatewan::drain::Drained::load(&drained_file, |n| transit_names.contains(&n))
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", drained_file.display()))?;
    let disabled_file = settings.state_dir.join(gatewan::drain::DISABLED_FILE);
    // Ids of tunnels that may come back (a peer that returns): kept until enabled.
    let disabled =
        gatewan::drain::Drained::load(&disabled_file, |id| uuid::Uuid::parse_str(id).is_ok())
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", disabled_file.display()))?;
    if !drained.0.is_empty() {
        tracing::info!(transits = ?drained.0, "transits drained before the restart stay drained");
    }
    let routing = transit_routing(&settings, &numbering.0.positions).await?;
    // Gossip leaves by every transit, each from its own address with its own routing.
    let gossip_paths: Vec<(std::net::IpAddr, Option<u32>)> = settings
        .transits
        .iter()
        .flat_map(|t| {
            let r = routing.get(&t.name);
            t.addresses
                .iter()
                .map(move |&a| (a, r.filter(|r| r.routes_family_of(a)).map(|r| r.mark)))
        })
        .collect();
    let member = daemon::join_mesh(&settings.state_dir, &settings.mesh, &gossip_paths).await?;
    let wireguard_key = match &settings.tunnels {
        Some(_) => Some(gatewan::tunnels::key::wireguard_key(&member.state_dir)?),
        None => None,
    };
    let public_key = wireguard_key
        .map(|k| wireguard_control::Key(k).get_public().0.to_vec())
        .unwrap_or_default();
    let slot = settings
        .tunnels
        .as_ref()
        .and_then(|t| gatewan::tunnels::plan::slots::initial_claim(t.slot, numbering.0.claim));
    daemon::announce(
        &member,
        v1::NodeRecord {
            name: settings.name.clone(),
            datacenter: settings.datacenter.clone(),
            role: v1::Role::Gatewan as i32,
            api_address: settings.api.socket.display().to_string(),
            transits: settings
                .transits
                .iter()
                .map(|t| v1::Transit {
                    name: t.name.clone(),
                    addresses: t.addresses.iter().map(ToString::to_string).collect(),
                    capacity_bps: t.capacity.0,
                    interface: t.interface.clone().unwrap_or_default(),
                    cost: t.cost,
                    position: numbering.0.positions.get(&t.name).copied(),
                    drained: drained.contains(&t.name),
                })
                .collect(),
            wireguard_public_key: public_key.clone().into(),
            tunnel_slot: slot.map(|c| c.slot),
            tunnel_slot_claimed_ms: slot.map_or(0, |c| c.claimed_ms),
            tunnel_slot_pinned: slot.is_some_and(|c| c.pinned),
            tunnel_interface_prefix: settings
                .tunnels
                .as_ref()
                .map(|t| t.plan.interface_prefix.clone())
                .unwrap_or_default(),
            vtep: settings.vtep.map(|v| v.to_string()).unwrap_or_default(),
            disabled_tunnels: disabled.0.iter().cloned().collect(),
            tunnel_vteps: settings
                .dataplane
                .as_ref()
                .and_then(|d| d.tunnel_vteps)
                .map(|p| p.to_string())
                .unwrap_or_default(),
            ..Default::default()
        },
    )
    .await?;
    tracing::info!(name = %settings.name, datacenter = %settings.datacenter, id = %member.identity.node, "gatewan started");

    let tunnels = match (&settings.tunnels, wireguard_key) {
        (Some(t), Some(key)) => Some(start_tunnels(
            &settings, t, key, public_key, &member, routing, numbering,
        )?),
        _ => None,
    };
    let dataplane = match (&settings.dataplane, &tunnels) {
        (Some(d), Some(t)) => Some(start_dataplane(&settings, d, t, &member).await?),
        _ => None,
    };
    let reloads = std::sync::Arc::new(gatewan_kit::reload::Reloads::default());
    let thresholds = tunnels.as_ref().map(|t| t.thresholds_sender());
    gatewan_kit::reload::spawn(
        settings.config_file.clone(),
        from_file,
        GatewanConfig::load,
        gatewan::reload::decide,
        move |t| {
            if let Some(tx) = &thresholds {
                gatewan::probe::engine::set_if_changed(tx, t);
            }
        },
        reloads.clone(),
    );
    if let Some(listen) = settings.metrics_listen {
        let mesh = member.mesh.clone();
        let extra = dataplane
            .map(|d| metrics::dataplane_collector(d.stats))
            .into_iter()
            .chain(std::iter::once(gatewan_kit::reload::collector(
                "gatewan", reloads,
            )))
            .chain(
                tunnels
                    .as_ref()
                    .map(|t| metrics::tunnel_collector(t.table.clone())),
            )
            .chain(
                tunnels
                    .as_ref()
                    .map(|t| metrics::slot_collector(t.slot.clone())),
            )
            .chain(
                tunnels
                    .as_ref()
                    .map(|t| metrics::transit_collector(t.transits.clone())),
            )
            .chain(
                tunnels
                    .as_ref()
                    .map(|t| metrics::thresholds_collector(t.thresholds_sender().subscribe())),
            )
            .collect();
        tokio::spawn(async move {
            if let Err(e) = gatewan_kit::metrics::serve(listen, mesh, extra).await {
                tracing::error!(error = %e, %listen, "metrics endpoint failed");
            }
        });
    }
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(gatewan_kit::api::MeshApi::new(member.mesh.clone()).into_server());
    routes.add_service(
        gatewan::drain::TransitsApi::new(
            member.mesh.clone(),
            member.identity.node,
            &settings.state_dir,
            settings.transits.iter().map(|t| t.name.clone()).collect(),
            drained,
        )
        .into_server(),
    );
    if let Some(t) = tunnels {
        routes.add_service(
            api::TunnelsApi::new(
                t,
                member.state_dir.clone(),
                member.mesh.clone(),
                member.identity.node,
                disabled,
            )
            .into_server(),
        );
    }
    let Some(api) = daemon::serve_api_until_signal(settings.api.clone(), routes.routes()).await?
    else {
        return Ok(());
    };
    tracing::info!("shutting down: leaving the mesh");
    member.mesh.leave().await;
    drop(api);
    Ok(())
}

fn start_tunnels(
    settings: &gatewan::config::GatewanSettings,
    t: &gatewan::config::TunnelsSettings,
    private_key: [u8; 32],
    public_key: Vec<u8>,
    member: &daemon::Member,
    routing: std::collections::BTreeMap<String, TransitRouting>,
    numbering: (gatewan::tunnels::numbering::Numbering, PathBuf),
) -> anyhow::Result<gatewan::tunnels::manager::TunnelsHandle> {
    use gatewan::probe::engine::ProbeSettings;
    use gatewan::tunnels::manager::{self, ManagerConfig};
    use gatewan::tunnels::plan::{GatewanView, TransitView};
    let cfg = ManagerConfig {
        local: GatewanView {
            id: member.identity.node,
            name: settings.name.clone(),
            datacenter: settings.datacenter.clone(),
            // The manager sets the slot: pinned, kept in state_dir, or claimed.
            slot: 0,
            slot_claimed_ms: 0,
            slot_pinned: false,
            transits: settings
                .transits
                .iter()
                .filter_map(|x| {
                    Some(TransitView {
                        name: x.name.clone(),
                        addresses: x.addresses.clone(),
                        position: *numbering.0.positions.get(&x.name)?,
                    })
                })
                .collect(),
            public_key,
        },
        pinned_slot: t.slot,
        numbering,
        capacities: settings
            .transits
            .iter()
            .map(|x| (x.name.clone(), x.capacity.0))
            .collect(),
        private_key,
        plan: t.plan.clone(),
        wireguard: t.wireguard,
        grace: t.grace,
        spread_receive: t.spread_receive,
        probe: ProbeSettings {
            interval: t.probe_interval,
            count: t.probe_count,
            window: t.probe_window,
            timeout: t.probe_timeout,
            thresholds: t.thresholds,
        },
        resync: std::time::Duration::from_secs(10),
        routing: routing.into_iter().collect(),
        tunnel_vteps: settings
            .dataplane
            .as_ref()
            .and_then(|d| d.tunnel_vteps)
            .map(|pool| (pool, settings.state_dir.join("tunnel-vteps"))),
    };
    Ok(manager::spawn(cfg, member.mesh.clone())?)
}

/// The tunnel numbering kept in state_dir, with this config's transits given their
/// positions (kept, or new ones free) and saved at once: the positions are announced in
/// our NodeRecord before the manager starts.
fn tunnel_numbering(
    settings: &gatewan::config::GatewanSettings,
    state_dir: &std::path::Path,
) -> (gatewan::tunnels::numbering::Numbering, PathBuf) {
    use gatewan::tunnels::numbering;
    let path = state_dir.join("tunnel-numbering");
    let mut n = numbering::load(&path);
    let names: Vec<&str> = settings.transits.iter().map(|t| t.name.as_str()).collect();
    let positions = numbering::positions(&n.positions, &names);
    if positions != n.positions {
        n.positions = positions;
        if let Err(e) = numbering::save(&path, &n) {
            tracing::warn!(error = %e, path = %path.display(), "cannot keep the transits' positions in state_dir; a restart numbers them again");
        }
    }
    (n, path)
}

/// Each transit's routing, its gateways found in the main table where the config names
/// none, installed before the first datagram leaves. A gateway that cannot be found is a
/// config error (exit 2): with several transits, traffic would otherwise follow the main
/// table's default route into one transit, and that transit failing would silence the
/// whole gatewan.
async fn transit_routing(
    settings: &gatewan::config::GatewanSettings,
    positions: &std::collections::BTreeMap<String, u32>,
) -> anyhow::Result<std::collections::BTreeMap<String, TransitRouting>> {
    use gatewan::transit;
    use gatewan_kit::config::{ConfigError, ConfigErrors};
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    let routes = transit::main_table(&handle).await?;
    let routing =
        transit::plan_routing(&settings.transits, positions, &routes).map_err(|problems| {
            ConfigErrors(
                problems
                    .into_iter()
                    .map(|(field, message)| ConfigError {
                        file: settings.config_file.clone(),
                        line: None,
                        field,
                        message,
                    })
                    .collect(),
            )
        })?;
    for r in routing.values() {
        tracing::info!(interface = %r.interface, gateway_v4 = ?r.gateway_v4, gateway_v6 = ?r.gateway_v6, mark = r.mark, "transit routing");
        if let Err(e) = transit::ensure(&handle, r).await {
            tracing::warn!(error = %e, interface = %r.interface, "cannot set up transit routing yet; the tunnel manager retries");
        }
    }
    Ok(routing)
}

/// Starts the data plane manager and announces the static networks (`networks[]`) in the
/// mesh, as bgpctl announces those it learns from a fabric: the other datacenters then
/// learn them the same way.
async fn start_dataplane(
    settings: &gatewan::config::GatewanSettings,
    d: &gatewan::config::DataplaneSettings,
    tunnels: &gatewan::tunnels::manager::TunnelsHandle,
    member: &daemon::Member,
) -> anyhow::Result<gatewan::dataplane::manager::DataplaneHandle> {
    use gatewan::dataplane::manager::{self, DataplaneConfig};
    use gatewan::dataplane::plan::NextHop;
    for n in &d.static_networks {
        let NextHop::Gateway(via) = n.next_hop else {
            continue;
        };
        let record = v1::Network {
            prefix: n.prefix.to_string(),
            vni: d.fabric.vni,
            ..Default::default()
        };
        match member.mesh.publish(v1::record::Body::Network(record)).await {
            Ok(_) => tracing::info!(prefix = %n.prefix, %via, "static network announced"),
            Err(e) => {
                tracing::warn!(error = %e, prefix = %n.prefix, "cannot announce static network")
            }
        }
    }
    let handle = manager::spawn(
        DataplaneConfig {
            fabric: d.fabric.clone(),
            datacenter: settings.datacenter.clone(),
            static_networks: d.static_networks.clone(),
            resync: std::time::Duration::from_secs(2),
            tunnel_vteps: d.tunnel_vteps,
            fast_path: d.fast_path,
        },
        member.mesh.clone(),
        tunnels.table.clone(),
    )?;
    tracing::info!(vni = d.fabric.vni, interface = %d.fabric.interface, "data plane started");
    Ok(handle)
}
