//! `routingctl`: a thin gRPC client that shows what gatewans and bgpctls know, in a
//! table for people and YAML or JSON for scripts.

mod client;
#[path = "../../packaging/generate.rs"]
mod generate;
mod output;
mod top;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use client::{ClientPem, Pem, Target};
use gatewan_proto::v1;

#[derive(Parser)]
#[command(
    version,
    about = "Inspect and operate gatewans and bgpctls",
    after_help = "A daemon is asked on its Unix socket (--socket), or remotely on its TCP API \
                  (api.listen) with mutual TLS: --server https://HOST:PORT --ca FILE --cert FILE \
                  --key FILE. On the command line, --socket wins over ROUTINGCTL_SERVER and \
                  --server over ROUTINGCTL_SOCKET."
)]
struct Cli {
    /// API socket of the daemon to ask.
    #[arg(
        long,
        global = true,
        env = "ROUTINGCTL_SOCKET",
        value_name = "PATH",
        default_value = "/run/gatewan/gatewan.sock"
    )]
    socket: PathBuf,
    /// Ask a daemon's TCP API (its api.listen) instead, with mutual TLS, e.g.
    /// https://10.1.255.11:7947; needs --ca, --cert and --key.
    #[arg(
        long,
        global = true,
        env = "ROUTINGCTL_SERVER",
        value_name = "URL",
        value_parser = client::parse_server
    )]
    server: Option<tonic::transport::Uri>,
    /// With --server: the CA certificate (PEM) that signed the daemon's certificate.
    #[arg(
        id = "tls_ca",
        long = "ca",
        global = true,
        env = "ROUTINGCTL_CA",
        value_name = "FILE"
    )]
    ca: Option<PathBuf>,
    /// With --server: our client certificate (PEM), signed by the daemon's api.tls.client_ca.
    #[arg(
        id = "tls_cert",
        long = "cert",
        global = true,
        env = "ROUTINGCTL_CERT",
        value_name = "FILE"
    )]
    cert: Option<PathBuf>,
    /// With --server: the private key (PEM) of --cert.
    #[arg(
        id = "tls_key",
        long = "key",
        global = true,
        env = "ROUTINGCTL_KEY",
        value_name = "FILE"
    )]
    key: Option<PathBuf>,
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
    #[command(args_conflicts_with_subcommands = true)]
    Members {
        #[command(subcommand)]
        action: Option<MembersCommand>,
    },
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
    /// Transits of a gatewan as it announces them, and their drain for maintenance.
    #[command(args_conflicts_with_subcommands = true)]
    Transits {
        #[command(subcommand)]
        action: Option<TransitsCommand>,
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
    /// Measure a tunnel now, mtr-style (gatewan): COUNT probes of the tunnel's echo
    /// protocol through it, each printed as it returns, then loss and round-trip times.
    /// The tunnel's own probes and state are untouched.
    Probe {
        /// The tunnel: its interface (e.g. sdwan1) or id, as `routingctl tunnels` shows it.
        tunnel: String,
        /// Probes to send, 1 to 1000.
        #[arg(short, long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
        /// Time between probes, 10ms to 60s.
        #[arg(short, long, default_value = "200ms", value_parser = probe_interval)]
        interval: std::time::Duration,
    },
    /// The path a packet to DESTINATION takes now, hop by hop (bgpctl): the fabric's
    /// routes and their Router's MAC, the gatewan and tunnel each points at and why the
    /// controller chose it, the remote gatewan, and the remote fabric's VTEPs.
    Trace {
        /// An IPv4 or IPv6 address, e.g. 172.16.2.10.
        destination: std::net::IpAddr,
    },
    /// A live view of a bgpctl (`--socket /run/bgpctl/bgpctl.sock`): the mesh's members,
    /// every gatewan's tunnels with latency and loss sparklines, the chosen tunnels per
    /// remote datacenter and the BGP sessions. q or Ctrl-C quits, Tab moves between panes,
    /// arrows and PgUp/PgDn scroll.
    Top {
        /// Between two snapshots, 200ms to 10s.
        #[arg(long, default_value = "1s", value_parser = top::parse_interval)]
        interval: std::time::Duration,
        /// Print one frame as text and exit (for scripts and logs).
        #[arg(long)]
        once: bool,
    },
    /// The mesh keyring. A change applies to the daemon asked and then to every member of
    /// the mesh (as `serf keys`); rotation: install, use, remove the old key.
    #[command(subcommand)]
    Keyring(KeyringCommand),
    /// Print the completion script for SHELL, e.g. `source <(routingctl completions bash)`;
    /// the Debian package installs them for bash, zsh and fish.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum TunnelsCommand {
    /// Give the gatewan a new WireGuard key (kept in its state_dir); the peers learn the
    /// public key over the mesh and the tunnels pause for about one handshake.
    RotateKey,
    /// Take one tunnel out of use (make-before-break, as `transits drain` does for a
    /// transit); kept in the gatewan's state_dir across restarts.
    Disable {
        /// Its interface or id, as `routingctl tunnels` shows it.
        tunnel: String,
    },
    /// Give a disabled tunnel back.
    Enable {
        /// Its interface or id, as `routingctl tunnels` shows it.
        tunnel: String,
    },
}

/// `--interval` of `routingctl probe`: a duration such as 200ms or 1s.
fn probe_interval(s: &str) -> Result<std::time::Duration, String> {
    let d =
        humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (write e.g. 200ms or 1s)"))?;
    if !(std::time::Duration::from_millis(10)..=std::time::Duration::from_secs(60)).contains(&d) {
        return Err(format!("{s}: write 10ms to 60s"));
    }
    Ok(d)
}

#[derive(Subcommand)]
enum TransitsCommand {
    /// Before a provider's maintenance: every bgpctl moves traffic off this gatewan's
    /// tunnels over NAME (make-before-break), keeping them only if no other tunnel to a
    /// datacenter is healthy. Kept in the gatewan's state_dir across restarts.
    Drain {
        /// The transit's name, as `routingctl transits` shows it.
        name: String,
    },
    /// After the maintenance: NAME's tunnels are candidates again.
    Undrain {
        /// The transit's name, as `routingctl transits` shows it.
        name: String,
    },
}

#[derive(Subcommand)]
enum MembersCommand {
    /// Revoke a member for good (the daemon asked must be in its own mesh.admins): every
    /// member whose mesh.admins lists the daemon's key drops its records and refuses it.
    Revoke {
        /// The member's node id (the ID column).
        node_id: String,
    },
}

#[derive(Subcommand)]
enum KeyringCommand {
    /// List the daemon's installed keys by fingerprint; the primary one seals.
    List,
    /// Install a key (base64, from `gatewan keygen`) for opening datagrams, mesh-wide.
    /// The key is read from a file or standard input, never from the command line, where
    /// `ps` and the shell history would show it.
    Install {
        /// File holding the key (one line, base64); `-` reads it from standard input.
        #[arg(long = "key-file", value_name = "FILE")]
        key_file: PathBuf,
        /// Read from `--key-file` before the call.
        #[arg(skip)]
        key: String,
        /// Only on the daemon asked (e.g. a member that missed a mesh-wide change).
        #[arg(long)]
        local: bool,
    },
    /// Make an installed key primary, mesh-wide: once every member has it installed.
    Use {
        /// The key's fingerprint, as `keyring list` shows it.
        #[arg(value_name = "FINGERPRINT", value_parser = fingerprint)]
        fingerprint: String,
        /// Only on the daemon asked.
        #[arg(long)]
        local: bool,
    },
    /// Remove an installed key that is not primary, mesh-wide: once every member uses
    /// another key.
    Remove {
        /// The key's fingerprint, as `keyring list` shows it.
        #[arg(value_name = "FINGERPRINT", value_parser = fingerprint)]
        fingerprint: String,
        /// Only on the daemon asked.
        #[arg(long)]
        local: bool,
    },
}

/// A key fingerprint: 16 hex digits. A key is refused here, not passed on: it would have
/// been on the command line.
fn fingerprint(s: &str) -> Result<String, String> {
    if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(s.to_ascii_lowercase());
    }
    Err(
        "expected a key fingerprint (16 hex digits, as `routingctl keyring list` shows it); \
         keys never go on the command line: install one with `keyring install --key-file FILE`"
            .into(),
    )
}

/// The one key in `path` (`-`: standard input): its only non-empty line, trimmed.
fn read_key(path: &std::path::Path) -> Result<String, String> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("--key-file -: cannot read standard input: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("--key-file {}: {e}", path.display()))?
    };
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match (lines.next(), lines.next()) {
        (Some(key), None) => Ok(key.to_string()),
        (None, _) => Err(format!(
            "--key-file {}: no key in it (expected one line, base64, from `gatewan keygen`)",
            path.display()
        )),
        (Some(_), Some(_)) => Err(format!(
            "--key-file {}: more than one line; put the one key to install in it",
            path.display()
        )),
    }
}

fn main() -> ExitCode {
    let matches = generate::with_generate(Cli::command()).get_matches();
    if let Some(code) = generate::run_if_asked(&matches, Cli::command) {
        return code;
    }
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Asks no daemon: answered before a target is chosen (and its TLS files read).
    if let Command::Completions { shell } = cli.command {
        return generate::completions(shell, Cli::command());
    }
    if let Command::Keyring(KeyringCommand::Install { key_file, key, .. }) = &mut cli.command {
        match read_key(key_file) {
            Ok(k) => *key = k,
            Err(message) => Cli::command()
                .error(ErrorKind::ValueValidation, message)
                .exit(),
        }
    }
    let target = match target(&cli, &matches) {
        Ok(t) => t,
        Err((kind, message)) => Cli::command().error(kind, message).exit(),
    };
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
    match rt.block_on(run(cli, target)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<Refused>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// The daemon to ask, from `--socket` or `--server` and its TLS files. A flag given on the
/// command line wins over the other's environment variable; both on the command line, or
/// both in the environment, is a usage error.
fn target(cli: &Cli, matches: &ArgMatches) -> Result<Target, (ErrorKind, String)> {
    let source = |id: &str| matches.value_source(id);
    let on_command_line = |id: &str| source(id) == Some(ValueSource::CommandLine);
    let remote = match &cli.server {
        None => None,
        Some(_) if on_command_line("socket") && on_command_line("server") => {
            return Err((
                ErrorKind::ArgumentConflict,
                "--socket and --server cannot be used together: --socket asks a daemon on this \
                 host, --server one over TCP"
                    .into(),
            ));
        }
        Some(_) if on_command_line("socket") => None,
        Some(_)
            if source("socket") == Some(ValueSource::EnvVariable) && !on_command_line("server") =>
        {
            return Err((
                ErrorKind::ArgumentConflict,
                "ROUTINGCTL_SOCKET and ROUTINGCTL_SERVER are both set: unset one, or choose \
                 with --socket or --server"
                    .into(),
            ));
        }
        Some(url) => Some(url.clone()),
    };
    let Some(url) = remote else {
        // From the environment they are ignored; on the command line they are a mistake.
        if let Some((_, flag)) = [
            ("tls_ca", "--ca"),
            ("tls_cert", "--cert"),
            ("tls_key", "--key"),
        ]
        .into_iter()
        .find(|(id, _)| on_command_line(id))
        {
            return Err((
                ErrorKind::ArgumentConflict,
                format!("{flag} is only used with --server (the TCP API); the socket needs no TLS"),
            ));
        }
        return Ok(Target::Socket(cli.socket.clone()));
    };
    let (Some(ca), Some(cert), Some(key)) = (&cli.ca, &cli.cert, &cli.key) else {
        let missing: Vec<&str> = [
            (&cli.ca, "--ca FILE (the CA certificate that signed the daemon's certificate; or ROUTINGCTL_CA)"),
            (&cli.cert, "--cert FILE (our client certificate, signed by the daemon's api.tls.client_ca; or ROUTINGCTL_CERT)"),
            (&cli.key, "--key FILE (the private key of --cert; or ROUTINGCTL_KEY)"),
        ]
        .into_iter()
        .filter_map(|(v, text)| v.is_none().then_some(text))
        .collect();
        return Err((
            ErrorKind::MissingRequiredArgument,
            format!(
                "--server {} uses mutual TLS and needs {}",
                client::server_name(&url),
                missing.join(", ")
            ),
        ));
    };
    let read = |flag: &str, path: &Path, want: Pem| {
        client::read_pem(flag, path, want).map_err(|e| (ErrorKind::ValueValidation, e))
    };
    let tls = ClientPem {
        ca: read("--ca", ca, Pem::Certificates)?,
        cert: read("--cert", cert, Pem::Certificates)?,
        key: read("--key", key, Pem::PrivateKey)?,
    };
    let endpoint = client::tls_endpoint(&url, &tls).map_err(|e| (ErrorKind::ValueValidation, e))?;
    Ok(Target::Server {
        url,
        endpoint: Box::new(endpoint),
    })
}

fn bgp(
    channel: &tonic::transport::Channel,
) -> v1::bgp_client::BgpClient<tonic::transport::Channel> {
    v1::bgp_client::BgpClient::new(channel.clone())
}

/// A failed call: the daemon's message, or, when the call never reached it (connection
/// lost, TLS refused), the transport error naming where we asked.
fn call_error(s: tonic::Status, target: &Target) -> anyhow::Error {
    let Some(cause) = std::error::Error::source(&s) else {
        return anyhow::anyhow!("{}", s.message());
    };
    // With TLS 1.3 a daemon refuses a client certificate after our side of the handshake
    // is done: we only see the connection close.
    let hint = match target {
        Target::Server { .. } => {
            " (a daemon closes the connection when --cert is not signed by its api.tls.client_ca)"
        }
        Target::Socket(_) => "",
    };
    anyhow::anyhow!(
        "cannot reach the API at {target}: {}{hint}",
        client::error_chain(cause)
    )
}

fn not_bgpctl(s: tonic::Status, target: &Target) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unimplemented => anyhow::anyhow!(
            "this daemon is not a bgpctl (ask bgpctl's socket: --socket /run/bgpctl/bgpctl.sock, \
             or its api.listen with --server)"
        ),
        _ => call_error(s, target),
    }
}

fn no_transits(s: tonic::Status, target: &Target) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unimplemented => {
            anyhow::anyhow!("this daemon has no transits (is it a gatewan?)")
        }
        // An argument the daemon refused (e.g. a transit it does not have): exit 2.
        tonic::Code::InvalidArgument => Refused(s.message().to_string()).into(),
        _ => call_error(s, target),
    }
}

/// The daemon refused an argument of the command line: a usage error (exit 2).
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn no_tunnels(s: tonic::Status, target: &Target) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unimplemented => {
            anyhow::anyhow!("this daemon has no tunnels (is it a gatewan with a tunnels section?)")
        }
        tonic::Code::InvalidArgument => Refused(s.message().to_string()).into(),
        _ => call_error(s, target),
    }
}

/// `tunnels disable|enable TUNNEL`.
async fn set_disabled(
    channel: &tonic::transport::Channel,
    tunnel: String,
    disabled: bool,
    format: Format,
    refused: impl Fn(tonic::Status) -> anyhow::Error,
) -> anyhow::Result<String> {
    let mut client = v1::tunnels_client::TunnelsClient::new(channel.clone());
    let r = client
        .set_disabled(v1::SetDisabledRequest { tunnel, disabled })
        .await
        .map_err(refused)?
        .into_inner();
    output::disabled(&r, format)
}

async fn run(cli: Cli, target: Target) -> anyhow::Result<()> {
    if let Command::Top { interval, once } = cli.command {
        if !matches!(cli.output, Format::Table) {
            return Err(Refused(
                "routingctl top draws a terminal view (--once: as text); for YAML or JSON use \
                 `members`, `tunnels`, `explain` or `peers` with -o"
                    .into(),
            )
            .into());
        }
        return top::run(&target, interval, once).await;
    }
    let channel = client::connect(&target).await?;
    let mesh_channel = channel.clone();
    let mut mesh = v1::mesh_client::MeshClient::new(channel);
    let target = &target;
    let call = |s: tonic::Status| call_error(s, target);
    let not_bgpctl = |s: tonic::Status| not_bgpctl(s, target);
    let no_tunnels = |s: tonic::Status| no_tunnels(s, target);
    let out = match cli.command {
        Command::Members {
            action: Some(MembersCommand::Revoke { node_id }),
        } => {
            let r = mesh
                .revoke_member(v1::RevokeMemberRequest {
                    id: node_id.clone(),
                })
                .await
                .map_err(call)?
                .into_inner();
            output::revoked(&node_id, r.version, cli.output)
        }
        Command::Members { action: None } => {
            let r = mesh
                .list_members(v1::ListMembersRequest {})
                .await
                .map_err(call)?
                .into_inner();
            output::members(&r.members, cli.output)
        }
        Command::Transits { action: None } => {
            let mut client = v1::transits_client::TransitsClient::new(mesh_channel.clone());
            let r = client
                .list_transits(v1::ListTransitsRequest {})
                .await
                .map_err(|s| no_transits(s, target))?
                .into_inner();
            output::transits(&r.transits, cli.output)
        }
        Command::Transits {
            action: Some(action),
        } => {
            let (transit, drained) = match action {
                TransitsCommand::Drain { name } => (name, true),
                TransitsCommand::Undrain { name } => (name, false),
            };
            let mut client = v1::transits_client::TransitsClient::new(mesh_channel.clone());
            let r = client
                .set_drained(v1::SetDrainedRequest { transit, drained })
                .await
                .map_err(|s| no_transits(s, target))?
                .into_inner();
            output::drained(&r, cli.output)
        }
        Command::Tunnels {
            action: Some(TunnelsCommand::Disable { tunnel }),
            ..
        } => set_disabled(&mesh_channel, tunnel, true, cli.output, no_tunnels).await,
        Command::Tunnels {
            action: Some(TunnelsCommand::Enable { tunnel }),
            ..
        } => set_disabled(&mesh_channel, tunnel, false, cli.output, no_tunnels).await,
        Command::Tunnels {
            action: Some(TunnelsCommand::RotateKey),
            ..
        } => {
            let mut client = v1::tunnels_client::TunnelsClient::new(mesh_channel.clone());
            let r = client
                .rotate_key(v1::RotateKeyRequest {})
                .await
                .map_err(no_tunnels)?
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
                .map_err(no_tunnels)?
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
            // Page by page: a full table does not fit in one gRPC message.
            let mut client = bgp(&mesh_channel);
            let mut routes = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = client
                    .list_routes(v1::ListRoutesRequest {
                        direction: direction as i32,
                        prefix: prefix.clone().unwrap_or_default(),
                        page_size: 0,
                        page_token,
                    })
                    .await
                    .map_err(not_bgpctl)?
                    .into_inner();
                routes.extend(r.routes);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            output::routes(&routes, cli.output)
        }
        Command::Probe {
            tunnel,
            count,
            interval,
        } => {
            let mut client = v1::tunnels_client::TunnelsClient::new(mesh_channel.clone());
            let mut stream = client
                .probe(v1::ProbeRequest {
                    tunnel,
                    count,
                    interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
                })
                .await
                .map_err(no_tunnels)?
                .into_inner();
            let mut outcomes = Vec::new();
            let table = matches!(cli.output, Format::Table);
            while let Some(o) = stream.message().await.map_err(|s| call_error(s, target))? {
                if table {
                    print!("{}", output::probe_line(&o));
                }
                outcomes.push(o);
            }
            output::probe_summary(&outcomes, cli.output)
        }
        Command::Trace { destination } => {
            let r = bgp(&mesh_channel)
                .trace(v1::TraceRequest {
                    destination: destination.to_string(),
                })
                .await
                .map_err(not_bgpctl)?
                .into_inner();
            output::trace(&r, cli.output)
        }
        Command::Explain { datacenter } => {
            let r = bgp(&mesh_channel)
                .explain(v1::ExplainRequest {
                    datacenter: datacenter.unwrap_or_default(),
                })
                .await
                .map_err(not_bgpctl)?
                .into_inner();
            output::explain(&r, cli.output)
        }
        Command::Keyring(k) => {
            let r = match k {
                KeyringCommand::List => mesh.list_keys(v1::ListKeysRequest {}).await,
                KeyringCommand::Install { key, local, .. } => {
                    mesh.install_key(v1::InstallKeyRequest {
                        key,
                        local_only: local,
                    })
                    .await
                }
                KeyringCommand::Use { fingerprint, local } => {
                    mesh.use_key(v1::UseKeyRequest {
                        key: fingerprint,
                        local_only: local,
                    })
                    .await
                }
                KeyringCommand::Remove { fingerprint, local } => {
                    mesh.remove_key(v1::RemoveKeyRequest {
                        key: fingerprint,
                        local_only: local,
                    })
                    .await
                }
            }
            .map_err(call)?
            .into_inner();
            if !r.cluster {
                output::keys(&r.keys, cli.output)
            } else {
                print!("{}", output::keyring_change(&r, cli.output)?);
                if !r.failures.is_empty() {
                    anyhow::bail!(
                        "the change was not applied on {} of {} other members (listed above); \
                         fix them and repeat it, or use --local on each",
                        r.failures.len(),
                        r.members_asked
                    );
                }
                return Ok(());
            }
        }
        Command::Completions { .. } => unreachable!("answered in main, before connecting"),
        Command::Top { .. } => unreachable!("answered before connecting"),
    }?;
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks the whole command tree, e.g. that no subcommand argument takes the id of
    /// a global one (`--key` of the TLS client and a keyring key).
    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn server_urls() {
        assert!(client::parse_server("https://10.1.255.11:7947").is_ok());
        assert!(client::parse_server("https://[2001:db8::1]:7947").is_ok());
        assert!(client::parse_server("https://gw1.example.net:7947/").is_ok());
        for bad in [
            "http://10.1.255.11:7947",
            "10.1.255.11:7947",
            "https://10.1.255.11",
            "https://10.1.255.11:7947/api",
        ] {
            assert!(client::parse_server(bad).is_err(), "{bad}");
        }
    }
}
