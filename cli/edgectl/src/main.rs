//! `edgectl`: one TOML file to a tuned, verified NixOS cluster.

mod cmd;
mod exit;
mod table;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes:
  0  success, or nothing to change
  1  error: invalid input or a failed step (nothing was changed by the failing step)
  2  `plan` found changes
  3  `apply` finished but some nodes failed or rolled back
  4  `verify` ran and some checks failed";

#[derive(Parser)]
#[command(name = "edgectl", version, about = "One TOML file to a tuned, verified NixOS cluster", after_help = EXIT_CODES)]
struct Cli {
    /// When to colour output.
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    color: Color,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Args, Clone, Default)]
pub struct ProfileArgs {
    /// Extra directory of hardware profiles (`NAME.toml`), searched after `profile_dir` in the
    /// topology; a file here replaces a built-in profile of the same name.
    #[arg(long = "profiles", value_name = "DIR")]
    pub profile_dirs: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a topology file and show the cluster it describes.
    #[command(after_help = EXIT_CODES)]
    Check {
        /// The topology file (e.g. cluster.toml).
        file: PathBuf,
        /// Print the resolved cluster, or every problem, as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        profiles: ProfileArgs,
    },
    /// Write a self-contained NixOS flake for the cluster (flake.nix, hosts/, modules/, topology.json).
    #[command(after_help = EXIT_CODES)]
    Generate {
        /// The topology file.
        file: PathBuf,
        /// Output directory; replaced atomically.
        #[arg(short, long, value_name = "DIR")]
        out: PathBuf,
        /// Replace DIR even if it was not created by `edgectl generate`.
        #[arg(long)]
        force: bool,
        /// Print what was written as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        profiles: ProfileArgs,
    },
    /// List the hardware profiles, or show one.
    #[command(after_help = EXIT_CODES)]
    Profiles {
        /// Show this profile in full.
        name: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        profiles: ProfileArgs,
    },
    /// Import a topology from elsewhere (a CloudLab manifest).
    #[command(subcommand)]
    Import(cmd::cloudlab::ImportCmd),
    /// Export the topology for elsewhere (a CloudLab geni-lib profile).
    #[command(subcommand)]
    Export(cmd::cloudlab::ExportCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

pub struct Ctx {
    pub color: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Ctx {
        color: match cli.color {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        },
    };
    let code = match cli.command {
        Command::Check {
            file,
            json,
            profiles,
        } => cmd::check::run(&ctx, &file, json, &profiles),
        Command::Profiles {
            name,
            json,
            profiles,
        } => cmd::profiles::run(&ctx, name.as_deref(), json, &profiles),
        Command::Generate {
            file,
            out,
            force,
            json,
            profiles,
        } => cmd::generate::run(&ctx, &file, &out, force, json, &profiles),
        Command::Import(c) => cmd::cloudlab::import(&ctx, c),
        Command::Export(c) => cmd::cloudlab::export(&ctx, c),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "edgectl",
                &mut std::io::stdout(),
            );
            exit::OK
        }
    };
    ExitCode::from(code)
}
