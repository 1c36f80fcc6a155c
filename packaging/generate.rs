//! The hidden `generate` subcommand with which gatewan, bgpctl and routingctl write their
//! own man pages and shell completions, from the same clap definition that parses their
//! command line, so the pages never drift from the binary (ADR 0044):
//!
//! ```text
//! BIN generate man DIR                           # BIN.8 and BIN-SUBCOMMAND.8 into DIR
//! BIN generate completions bash|zsh|fish|...     # to standard output
//! ```
//!
//! `scripts/package.sh` runs it for the `.deb` packages. Each binary's `main.rs` includes
//! this one file with `#[path]`: it is the packages' concern, not the binaries', and a
//! crate of its own for some 60 lines, shared by a CLI that may only depend on the
//! protocol (docs/architecture.md) and two daemons, would cost more than it keeps apart.
//!
//! The subcommand is added to the parser at run time, not derived into each `Cli`: man
//! pages and completions are made from the plain `Cli` and so do not offer `generate`
//! (clap's completion generators list hidden subcommands too).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgMatches, Command, FromArgMatches as _, Subcommand};

const NAME: &str = "generate";

#[derive(Subcommand)]
enum Generate {
    /// Write the man pages (section 8) of the command and each subcommand into DIR.
    Man {
        /// The directory to write into (created if missing).
        dir: PathBuf,
    },
    /// Print the completion script for SHELL.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `cli` with the hidden `generate` subcommand: parse the command line with this.
pub(crate) fn with_generate(cli: Command) -> Command {
    cli.subcommand(
        Generate::augment_subcommands(Command::new(NAME))
            .about("Write man pages or shell completions (for packaging)")
            .subcommand_required(true)
            .disable_help_subcommand(true)
            .hide(true),
    )
}

/// Runs `generate` when `matches` (from [`with_generate`]) asked for it and returns the
/// exit code; `None` for any other command line. `cli` is the plain command: the pages
/// and completions describe it.
pub(crate) fn run_if_asked(
    matches: &ArgMatches,
    cli: impl FnOnce() -> Command,
) -> Option<ExitCode> {
    let (NAME, m) = matches.subcommand()? else {
        return None;
    };
    Some(match Generate::from_arg_matches(m) {
        Err(e) => e.exit(),
        Ok(Generate::Completions { shell }) => completions(shell, cli()),
        Ok(Generate::Man { dir }) => match man_pages(cli(), &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "error: cannot write the man pages into {}: {e}",
                    dir.display()
                );
                ExitCode::from(1)
            }
        },
    })
}

/// Prints the completion script of `cli` for `shell`. Written whole at the end, so that a
/// closed pipe (`| head`) is an error to report, not a panic inside clap_complete.
pub(crate) fn completions(shell: clap_complete::Shell, mut cli: Command) -> ExitCode {
    use std::io::Write as _;
    let name = cli.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cli, name, &mut script);
    match std::io::stdout().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the completions: {e}");
            ExitCode::from(1)
        }
    }
}

/// One page per command, as git has: `gatewan.8`, `gatewan-init.8`, … Section 8, system
/// administration, as wg(8) and ip(8): all three need root (the API socket is 0600).
fn man_pages(cli: Command, dir: &Path) -> std::io::Result<()> {
    fn write(cmd: Command, dir: &Path) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub.clone(), dir)?;
        }
        clap_mangen::Man::new(cmd).section("8").generate_to(dir)?;
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    // Built so that subcommands carry their full names (gatewan-init); no `help` pages.
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    write(cli, dir)
}
