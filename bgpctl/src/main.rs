//! `bgpctl`: the BGP EVPN speaker and controller daemon of a datacenter.

use std::path::PathBuf;
use std::process::ExitCode;

use bgpctl::config::{BgpctlConfig, BgpctlSettings};
use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use gatewan_kit::{api, daemon};
use gatewan_proto::v1;

#[path = "../../packaging/generate.rs"]
mod generate;

#[derive(Parser)]
#[command(
    version,
    about = "bgpctl: steers the fabric into the chosen tunnels with EVPN type-5 routes"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        short,
        long,
        default_value = "/etc/gatewan/bgpctl.yaml",
        env = "BGPCTL_CONFIG"
    )]
    config: PathBuf,
    /// Validate the configuration (and the keyring and API TLS files it names), then exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let matches = generate::with_generate(Cli::command()).get_matches();
    if let Some(code) = generate::run_if_asked(&matches, Cli::command) {
        return code;
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    daemon::start_daemon(
        &cli.config,
        cli.check,
        BgpctlConfig::load(&cli.config),
        |p| &p.mesh,
        |p| (p.log_format, p.log_level.as_deref()),
        run,
    )
}

async fn run(settings: BgpctlSettings) -> anyhow::Result<()> {
    let member = daemon::join_mesh(&settings.state_dir, &settings.mesh, &[]).await?;
    daemon::announce(
        &member,
        v1::NodeRecord {
            name: settings.name.clone(),
            datacenter: settings.datacenter.clone(),
            role: v1::Role::Bgpctl as i32,
            api_address: settings.api.socket.display().to_string(),
            ..Default::default()
        },
    )
    .await?;
    tracing::info!(name = %settings.name, datacenter = %settings.datacenter, id = %member.identity.node, "bgpctl started");
    let running = bgpctl::daemon::start(&settings, member.mesh.clone()).await?;
    let reloads = std::sync::Arc::new(gatewan_kit::reload::Reloads::default());
    let policy = running.policy.clone();
    let speaker = std::sync::Arc::downgrade(&running.speaker);
    gatewan_kit::reload::spawn(
        settings.config_file.clone(),
        settings.clone(),
        BgpctlConfig::load,
        bgpctl::reload::decide,
        move |r: bgpctl::reload::Reload| {
            if let Some(p) = r.policy {
                policy.send_replace(p);
            }
            if let (Some((targets, prefixes)), Some(speaker)) = (r.import, speaker.upgrade()) {
                speaker.set_import(targets, prefixes);
            }
        },
        reloads.clone(),
    );
    if let Some(listen) = settings.metrics_listen {
        let mesh = member.mesh.clone();
        let extra = vec![
            bgpctl::metrics::bgp_collector(&running.speaker, running.counters.clone()),
            bgpctl::metrics::controller_collector(running.controller.clone()),
            gatewan_kit::reload::collector("bgpctl", reloads),
        ];
        tokio::spawn(async move {
            if let Err(e) = gatewan_kit::metrics::serve(listen, mesh, extra).await {
                tracing::error!(error = %e, %listen, "metrics endpoint failed");
            }
        });
    }
    let routes = tonic::service::Routes::new(api::MeshApi::new(member.mesh.clone()).into_server())
        .add_service(
            bgpctl::api::BgpApi::new(
                running.speaker.clone(),
                running.controller.clone(),
                member.mesh.clone(),
            )
            .into_server(),
        )
        .add_service(
            bgpctl::api::TopApi::new(
                running.speaker.clone(),
                running.controller.clone(),
                member.mesh.clone(),
            )
            .into_server(),
        );
    let Some(api) = daemon::serve_api_until_signal(settings.api.clone(), routes).await? else {
        return Ok(());
    };
    tracing::info!("shutting down: Cease to the BGP peers, leaving the mesh");
    if let Ok(speaker) = std::sync::Arc::try_unwrap(running.speaker) {
        speaker.shutdown().await;
    }
    member.mesh.leave().await;
    drop(api);
    Ok(())
}
