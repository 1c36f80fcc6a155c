//! `gatewan`: the gatewan daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatewan::config::GatewanConfig;
use gatewan::{api, daemon, metrics};
use gatewan_proto::v1;

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
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a new random mesh key (base64), for a keyring file or `routingctl keyring install`.
    Keygen,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Keygen) = cli.command {
        println!("{}", gatewan::mesh::MeshKey::generate().to_base64());
        return ExitCode::SUCCESS;
    }
    daemon::start_daemon(
        &cli.config,
        cli.check,
        GatewanConfig::load(&cli.config),
        |p| &p.mesh,
        |p| (p.log_format, p.log_level.as_deref()),
        run,
    )
}

async fn run(plan: gatewan::config::GatewanPlan) -> anyhow::Result<()> {
    let member = daemon::join_mesh(&plan.state_dir, &plan.mesh).await?;
    let wireguard_key = match &plan.tunnels {
        Some(_) => Some(member.state_dir.wireguard_key()?),
        None => None,
    };
    let public_key = wireguard_key
        .map(|k| wireguard_control::Key(k).get_public().0.to_vec())
        .unwrap_or_default();
    daemon::announce(
        &member,
        v1::NodeRecord {
            name: plan.name.clone(),
            datacenter: plan.datacenter.clone(),
            role: v1::Role::Gatewan as i32,
            api_address: plan.api.socket.display().to_string(),
            transits: plan
                .transits
                .iter()
                .map(|t| v1::Transit {
                    name: t.name.clone(),
                    addresses: t.addresses.iter().map(ToString::to_string).collect(),
                    capacity_bps: t.capacity.0,
                    interface: t.interface.clone().unwrap_or_default(),
                    cost: t.cost,
                })
                .collect(),
            wireguard_public_key: public_key.clone().into(),
            tunnel_slot: plan.tunnels.as_ref().map(|t| t.slot),
            tunnel_interface_prefix: plan
                .tunnels
                .as_ref()
                .map(|t| t.plan.interface_prefix.clone())
                .unwrap_or_default(),
            vtep: plan.vtep.map(|v| v.to_string()).unwrap_or_default(),
            ..Default::default()
        },
    )
    .await?;
    tracing::info!(name = %plan.name, datacenter = %plan.datacenter, id = %member.identity.node, "gatewan started");

    if let Some(listen) = plan.metrics_listen {
        let mesh = member.mesh.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listen, mesh).await {
                tracing::error!(error = %e, %listen, "metrics endpoint failed");
            }
        });
    }
    let tunnels = match (&plan.tunnels, wireguard_key) {
        (Some(t), Some(key)) => Some(start_tunnels(&plan, t, key, public_key, &member)?),
        _ => None,
    };
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(api::MeshApi::new(member.mesh.clone()).into_server());
    if let Some(t) = tunnels {
        routes.add_service(api::TunnelsApi::new(t, member.state_dir.clone()).into_server());
    }
    let Some(api) = daemon::serve_api_until_signal(plan.api.clone(), routes.routes()).await? else {
        return Ok(());
    };
    tracing::info!("shutting down: leaving the mesh");
    member.mesh.leave().await;
    drop(api);
    Ok(())
}

fn start_tunnels(
    plan: &gatewan::config::GatewanPlan,
    t: &gatewan::config::TunnelsPlan,
    private_key: [u8; 32],
    public_key: Vec<u8>,
    member: &daemon::Member,
) -> anyhow::Result<gatewan::tunnels::manager::TunnelsHandle> {
    use gatewan::probe::engine::ProbeSettings;
    use gatewan::tunnels::manager::{self, ManagerConfig};
    use gatewan::tunnels::plan::{GatewanView, TransitView};
    let cfg = ManagerConfig {
        local: GatewanView {
            id: member.identity.node,
            name: plan.name.clone(),
            datacenter: plan.datacenter.clone(),
            slot: t.slot,
            transits: plan
                .transits
                .iter()
                .map(|x| TransitView {
                    name: x.name.clone(),
                    addresses: x.addresses.clone(),
                })
                .collect(),
            public_key,
        },
        capacities: plan
            .transits
            .iter()
            .map(|x| (x.name.clone(), x.capacity.0))
            .collect(),
        private_key,
        plan: t.plan.clone(),
        wireguard: t.wireguard,
        grace: t.grace,
        probe: ProbeSettings {
            interval: t.probe_interval,
            count: t.probe_count,
            window: t.probe_window,
            timeout: t.probe_timeout,
            thresholds: t.thresholds,
        },
        resync: std::time::Duration::from_secs(10),
        routing: plan
            .transits
            .iter()
            .enumerate()
            .filter_map(|(i, x)| {
                let r = gatewan::tunnels::system::TransitRouting::for_transit(
                    i,
                    x.interface.as_deref()?,
                    x.gateway?,
                );
                Some((x.name.clone(), r))
            })
            .collect(),
    };
    Ok(manager::spawn(cfg, member.mesh.clone())?)
}
