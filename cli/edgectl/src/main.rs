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
  3  `apply` or `rollback` finished but some nodes failed or rolled back; `exec`: the command failed
     or could not run on some node; `status`: some node could not be read
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

#[derive(Args, Clone)]
pub struct DeployArgs {
    /// Nodes to act on: names, globs (worker*) and tags (@gpu), comma-separated.
    #[arg(long, value_name = "SEL")]
    pub on: Option<String>,
    /// How many nodes to work on at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,
    /// SSH private key (default: ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Passed to nix: use REF for the flake input INPUT (e.g. a local nixpkgs checkout).
    #[arg(long, num_args = 2, value_names = ["INPUT", "REF"])]
    pub override_input: Vec<String>,
    /// SSH connect timeout in seconds.
    #[arg(long, default_value_t = 10, value_name = "S")]
    pub connect_timeout: u64,
    /// One JSON object per event on stdout, then the result.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub profiles: ProfileArgs,
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
    /// Show what `apply` would change on each node: option-level changes and the closure diff.
    #[command(after_help = EXIT_CODES)]
    Plan {
        /// The topology file.
        file: PathBuf,
        #[command(flatten)]
        deploy: DeployArgs,
        /// Save the plan; `edgectl apply PLAN.json` applies exactly it, or refuses if the
        /// cluster changed since.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Where the systems are built: `controller` (here; the closures are then copied), or
        /// `nodes` (evaluated here; each node gets only its derivations and builds its own
        /// system, substituting from the binary caches it reaches: the choice when the nodes'
        /// link is much faster than this machine's, as on CloudLab from a laptop).
        #[arg(long, value_enum, default_value = "controller")]
        build_on: edgectl_deploy::BuildOn,
    },
    /// Build, copy and activate with confirmation; a node not confirmed in time rolls back.
    #[command(after_help = EXIT_CODES)]
    Apply {
        /// The topology file, or a plan saved by `edgectl plan --out`.
        file: PathBuf,
        #[command(flatten)]
        deploy: DeployArgs,
        /// How far to go.
        #[arg(long, value_enum, default_value = "switch")]
        goal: edgectl_deploy::Goal,
        /// Seconds a node waits for confirmation before it reverts by itself (default: the
        /// topology's confirm_timeout_s).
        #[arg(long, value_name = "S")]
        confirm_timeout: Option<u64>,
        /// `auto`: measure this machine's link to the first node (1 MiB); below 150 Mbit/s,
        /// `on`; otherwise start the copies as `off` does and meanwhile measure the first
        /// node's link to a second over the cluster LAN, switching to `on` for the nodes not
        /// yet served when that is predicted well ahead; the report says which and why.
        /// `on`: upload each closure once, to one node, which copies it to the others over the
        /// cluster LAN (a node the LAN cannot serve gets its copy from this machine, with a
        /// warning); `require`: the same, but such a node fails instead; `off`: copy from this
        /// machine to every node.
        #[arg(long, value_enum, default_value = "auto")]
        fanout: edgectl_deploy::fanout::Fanout,
        /// Where the systems are built: `controller` (here; the closures are then copied), or
        /// `nodes` (evaluated here; each node gets only its derivations and builds its own
        /// system, substituting from the binary caches it reaches: the choice when the nodes'
        /// link is much faster than this machine's, as on CloudLab from a laptop).
        #[arg(long, value_enum, default_value = "controller")]
        build_on: edgectl_deploy::BuildOn,
    },
    /// Check every node against its profile, the topology and the targets, through the agents.
    #[command(after_help = EXIT_CODES)]
    Verify {
        /// The topology file.
        file: PathBuf,
        #[command(flatten)]
        args: cmd::verify::VerifyArgs,
    },
    /// Run the node agent (QUIC with mutual TLS); normally started by NixOS or by `verify`.
    Agent(cmd::verify::AgentArgs),
    /// Turn nodes that run CloudLab's Ubuntu into NixOS: facts, Nix, closure, switch, reboot;
    /// resumable (a rerun continues from the phase that had not completed).
    #[command(after_help = EXIT_CODES)]
    Install {
        /// The topology file.
        file: PathBuf,
        #[command(flatten)]
        deploy: DeployArgs,
        #[command(flatten)]
        install: cmd::deploy::InstallArgs,
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
    /// Run a command on the selected nodes, its output prefixed with each node's name.
    #[command(after_help = EXIT_CODES)]
    Exec {
        /// The topology file.
        file: PathBuf,
        #[command(flatten)]
        deploy: DeployArgs,
        /// Run it as root (through `sudo -n` when the login user is not root).
        #[arg(long)]
        root: bool,
        /// The command and its arguments, after `--` (passed as argv, never through a shell
        /// of ours).
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Per node: the system the last apply recorded, the one running now, drift, the lock holder.
    #[command(after_help = EXIT_CODES)]
    Status {
        /// The topology file.
        file: PathBuf,
        #[command(flatten)]
        deploy: DeployArgs,
    },
    /// Switch nodes back to an earlier generation of their own (the one before the current, or
    /// --to N), with apply's lock and confirm-or-revert; nothing is built or copied.
    #[command(after_help = EXIT_CODES)]
    Rollback {
        /// The topology file.
        file: PathBuf,
        #[command(flatten)]
        deploy: DeployArgs,
        /// The generation to go to (as `edgectl status` shows it); default: the one before.
        #[arg(long, value_name = "N")]
        to: Option<u64>,
        /// Seconds a node waits for confirmation before it reverts by itself.
        #[arg(long, value_name = "S")]
        confirm_timeout: Option<u64>,
    },
    /// Log in to one node with its user, key and pinned host key.
    #[command(after_help = EXIT_CODES)]
    Ssh {
        /// The topology file.
        file: PathBuf,
        /// The node's name.
        node: String,
        #[command(flatten)]
        deploy: DeployArgs,
    },
    /// A cluster of local nodes on this machine to try plan, apply and verify on (root; the
    /// nodes run stand-in systems, not NixOS).
    #[command(subcommand)]
    Lab(cmd::lab::LabCmd),
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
    // Like other Unix tools, stop quietly when the reader of our output goes away
    // (`edgectl plan --json | head`) instead of panicking on a failed write.
    // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // clap exits 2 on a usage error, which here means "plan found changes": a bad argument is
    // an error like any other bad input (exit 1); --help and --version are not errors.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::ERROR
            } else {
                exit::OK
            });
        }
    };
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
        Command::Plan {
            file,
            deploy,
            out,
            build_on,
        } => cmd::deploy::plan(&ctx, &file, &deploy, out.as_deref(), build_on),
        Command::Apply {
            file,
            deploy,
            goal,
            confirm_timeout,
            fanout,
            build_on,
        } => {
            let how = cmd::deploy::How {
                goal,
                confirm_timeout,
                fanout,
                build_on,
            };
            cmd::deploy::apply(&ctx, &file, &deploy, how)
        }
        Command::Verify { file, args } => cmd::verify::run(&ctx, &file, &args),
        Command::Agent(a) => cmd::verify::agent(&a),
        Command::Install {
            file,
            deploy,
            install,
        } => cmd::deploy::install(&ctx, &file, &deploy, install),
        Command::Lab(c) => cmd::lab::run(&ctx, c),
        Command::Exec {
            file,
            deploy,
            root,
            command,
        } => cmd::day2::exec(&ctx, &file, &deploy, root, &command),
        Command::Status { file, deploy } => cmd::day2::status(&ctx, &file, &deploy),
        Command::Rollback {
            file,
            deploy,
            to,
            confirm_timeout,
        } => cmd::deploy::rollback(&ctx, &file, &deploy, to, confirm_timeout),
        Command::Ssh { file, node, deploy } => cmd::day2::ssh(&ctx, &file, &node, &deploy),
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
