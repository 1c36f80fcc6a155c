//! `routingctl`: a thin gRPC client that shows what gatewans and bgpctls know, in a
//! table for people and YAML or JSON for scripts.

mod client;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use gatewan_proto::v1;

#[derive(Parser)]
#[command(version, about = "Inspect and operate gatewans and bgpctls")]
struct Cli {
    /// API socket of the daemon to ask.
    #[arg(
        long,
        global = true,
        env = "ROUTINGCTL_SOCKET",
        default_value = "/run/gatewan/gatewan.sock"
    )]
    socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Members of the mesh as the daemon sees them.
    Members,
    /// Tunnels of a gatewan with their measurements.
    #[command(args_conflicts_with_subcommands = true)]
    Tunnels {
        #[command(subcommand)]
        action: Option<TunnelsCommand>,
        /// Only tunnels to this peer gatewan.
        #[arg(long)]
        peer: Option<String>,
        /// Only tunnels to this datacenter.
        #[arg(long)]
        datacenter: Option<String>,
        /// Only tunnels in this state.
        #[arg(long, value_parser = ["Established", "Degraded", "Down"], ignore_case = true)]
        state: Option<String>,
    },
    /// BGP sessions of a bgpctl (`--socket /run/bgpctl/bgpctl.sock`): state, uptime,
    /// prefixes received and sent, last error.
    Peers,
    /// Type-5 routes of a bgpctl, advertised to the fabric and received from it.
    Routes {
        /// Only the routes bgpctl advertises.
        #[arg(long, conflicts_with = "received")]
        advertised: bool,
        /// Only the routes bgpctl received (after the import route targets).
        #[arg(long)]
        received: bool,
        /// Only routes for this prefix, e.g. 10.2.0.0/16.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Why the controller of a bgpctl chose each tunnel or not, and its recent changes.
    Explain {
        /// Only this remote datacenter.
        #[arg(long)]
        datacenter: Option<String>,
    },
    /// The mesh keyring of the daemon (rotation: install everywhere, use everywhere,
    /// remove the old key everywhere).
    #[command(subcommand)]
    Keyring(KeyringCommand),
}

#[derive(Subcommand)]
enum TunnelsCommand {
    /// Give the gatewan a new WireGuard key (kept in its state_dir); the peers learn the
    /// public key over the mesh and the tunnels pause for about one handshake.
    RotateKey,
}

#[derive(Subcommand)]
enum KeyringCommand {
    /// List installed keys by fingerprint; the primary one seals.
    List,
    /// Install a key (base64, from `gatewan keygen`) for opening datagrams.
    Install { key: String },
    /// Make an installed key primary (key or fingerprint).
    Use { key: String },
    /// Remove an installed key that is not primary (key or fingerprint).
    Remove { key: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn bgp(
    channel: &tonic::transport::Channel,
) -> v1::bgp_client::BgpClient<tonic::transport::Channel> {
    v1::bgp_client::BgpClient::new(channel.clone())
}

fn not_bgpctl(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unimplemented => anyhow::anyhow!(
            "this daemon is not a bgpctl (ask bgpctl's socket: --socket /run/bgpctl/bgpctl.sock)"
        ),
        _ => anyhow::anyhow!("{}", s.message()),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let channel = client::connect(&cli.socket).await?;
    let mesh_channel = channel.clone();
    let mut mesh = v1::mesh_client::MeshClient::new(channel);
    let call = |s: tonic::Status| anyhow::anyhow!("{}", s.message());
    let out = match cli.command {
        Command::Members => {
            let r = mesh
                .list_members(v1::ListMembersRequest {})
                .await
                .map_err(call)?
                .into_inner();
            output::members(&r.members, cli.output)
        }
        Command::Tunnels {
            action: Some(TunnelsCommand::RotateKey),
            ..
        } => {
            let mut client = v1::tunnels_client::TunnelsClient::new(mesh_channel.clone());
            let r = client
                .rotate_key(v1::RotateKeyRequest {})
                .await
                .map_err(|s| match s.code() {
                    tonic::Code::Unimplemented => anyhow::anyhow!(
                        "this daemon has no tunnels (is it a gatewan with a tunnels section?)"
                    ),
                    _ => anyhow::anyhow!("{}", s.message()),
                })?
                .into_inner();
            output::rotated_key(&r.public_key, cli.output)
        }
        Command::Tunnels {
            action: None,
            peer,
            datacenter,
            state,
        } => {
            let mut client = v1::tunnels_client::TunnelsClient::new(mesh_channel.clone());
            let r = client
                .list_tunnels(v1::ListTunnelsRequest {})
                .await
                .map_err(|s| match s.code() {
                    tonic::Code::Unimplemented => anyhow::anyhow!(
                        "this daemon has no tunnels (is it a gatewan with a tunnels section?)"
                    ),
                    _ => anyhow::anyhow!("{}", s.message()),
                })?
                .into_inner();
            let list: Vec<v1::TunnelInfo> = r
                .tunnels
                .into_iter()
                .filter(|t| peer.as_ref().is_none_or(|p| &t.peer == p))
                .filter(|t| {
                    datacenter
                        .as_ref()
                        .is_none_or(|d| &t.target_datacenter == d)
                })
                .filter(|t| {
                    state
                        .as_ref()
                        .is_none_or(|s| t.state.eq_ignore_ascii_case(s))
                })
                .collect();
            output::tunnels(&list, cli.output)
        }
        Command::Peers => {
            let r = bgp(&mesh_channel)
                .list_peers(v1::ListPeersRequest {})
                .await
                .map_err(not_bgpctl)?
                .into_inner();
            output::peers(&r.peers, cli.output)
        }
        Command::Routes {
            advertised,
            received,
            prefix,
        } => {
            let direction = match (advertised, received) {
                (true, _) => v1::RouteDirection::Advertised,
                (_, true) => v1::RouteDirection::Received,
                _ => v1::RouteDirection::Unspecified,
            };
            let r = bgp(&mesh_channel)
                .list_routes(v1::ListRoutesRequest {
                    direction: direction as i32,
                    prefix: prefix.unwrap_or_default(),
                })
                .await
                .map_err(not_bgpctl)?
                .into_inner();
            output::routes(&r.routes, cli.output)
        }
        Command::Explain { datacenter } => {
            let r = bgp(&mesh_channel)
                .explain(v1::ExplainRequest {
                    datacenter: datacenter.unwrap_or_default(),
                })
                .await
                .map_err(not_bgpctl)?
                .into_inner();
            output::explain(&r.explanation_json, &r.history_json, cli.output)
        }
        Command::Keyring(k) => {
            let r = match k {
                KeyringCommand::List => mesh.list_keys(v1::ListKeysRequest {}).await,
                KeyringCommand::Install { key } => {
                    mesh.install_key(v1::InstallKeyRequest { key }).await
                }
                KeyringCommand::Use { key } => mesh.use_key(v1::UseKeyRequest { key }).await,
                KeyringCommand::Remove { key } => {
                    mesh.remove_key(v1::RemoveKeyRequest { key }).await
                }
            }
            .map_err(call)?
            .into_inner();
            output::keys(&r.keys, cli.output)
        }
    }?;
    print!("{out}");
    Ok(())
}
