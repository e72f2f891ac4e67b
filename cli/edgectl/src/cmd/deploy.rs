use std::path::{Path, PathBuf};
use std::time::Duration;

use edgectl_deploy::nixcmd::NixArgs;
use edgectl_deploy::progress::{self, Mode};
use edgectl_deploy::report::Change;
use edgectl_deploy::{EngineError, Run};
use edgectl_deploy::{Goal, Options, Plan};
use edgectl_model::LoadOptions;

use super::fail;
use crate::table::Table;
use crate::{Ctx, DeployArgs, exit};

pub(crate) fn options(a: &DeployArgs) -> Options {
    Options {
        on: a.on.clone(),
        parallel: a.parallel.max(1),
        identity: a.identity.clone(),
        connect_timeout: Duration::from_secs(a.connect_timeout.max(1)),
        nix: NixArgs {
            overrides: a
                .override_input
                .chunks(2)
                .filter(|c| c.len() == 2)
                .map(|c| (c[0].clone(), c[1].clone()))
                .collect(),
        },
        load: LoadOptions {
            profile_dirs: a.profiles.profile_dirs.clone(),
        },
        ..Options::default()
    }
}

pub(crate) fn short(p: &Option<String>) -> String {
    p.as_deref()
        .map(|s| {
            s.trim_start_matches("/nix/store/")
                .chars()
                .take(40)
                .collect()
        })
        .unwrap_or_else(|| "-".into())
}

pub fn plan(
    ctx: &Ctx,
    file: &Path,
    a: &DeployArgs,
    out: Option<&Path>,
    build_on: edgectl_deploy::BuildOn,
) -> u8 {
    let mut opts = options(a);
    opts.build_on = build_on;
    let run = match Run::load(file, &opts.load, opts.on.as_deref()) {
        Ok(r) => r,
        Err(e) => return fail(ctx, a.json, e),
    };
    opts.identity = run.identity(opts.identity.as_deref());
    let (tx, r) = progress::start(if a.json {
        Mode::Quiet
    } else {
        Mode::detect(false)
    });
    let res = edgectl_deploy::plan(run, &opts, tx);
    r.finish();
    let plan = match res {
        Ok(p) => p,
        Err(e) => return fail(ctx, a.json, e),
    };
    if let Some(o) = out {
        let text = serde_json::to_vec_pretty(&plan).unwrap_or_default();
        if let Err(e) = edgectl_deploy::state::write_atomic(o, &text) {
            return fail(
                ctx,
                a.json,
                EngineError::Failed(format!("{}: {e}", o.display())),
            );
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
    } else {
        let mut t = Table::new(&["NODE", "CHANGE", "CURRENT", "TARGET", "OPTIONS", "CLOSURE"]);
        for n in &plan.nodes {
            let closure = n
                .closure
                .as_ref()
                .map(|c| {
                    format!(
                        "+{} -{} ~{} paths +{}/-{} ({:+} KiB)",
                        c.added.len(),
                        c.removed.len(),
                        c.changed.len(),
                        c.paths_added,
                        c.paths_removed,
                        c.size_delta / 1024
                    )
                })
                .unwrap_or_else(|| "-".into());
            t.row(vec![
                n.node.clone(),
                format!("{:?}", n.change).to_lowercase(),
                short(&n.current),
                short(&Some(n.target.clone())),
                n.option_changes.len().to_string(),
                closure,
            ]);
        }
        print!("{}", t.render());
        for n in &plan.nodes {
            for c in &n.option_changes {
                println!("  {}: {} = {} -> {}", n.node, c.option, c.old, c.new);
            }
            for sp in &n.secrets {
                println!("  {}: {}", n.node, sp.line());
            }
            if let Some(cd) = &n.closure {
                for (p, o, v) in &cd.changed {
                    println!("  {}: {p} {o} -> {v}", n.node);
                }
                for p in &cd.added {
                    println!("  {}: + {p}", n.node);
                }
                for p in &cd.removed {
                    println!("  {}: - {p}", n.node);
                }
            }
            if let Some(e) = &n.error {
                println!("  {}: unreachable: {e}", n.node);
            }
        }
    }
    if plan.has_unreachable() {
        exit::ERROR
    } else if plan.has_changes() {
        exit::CHANGES
    } else {
        exit::OK
    }
}

/// How `apply` goes about it (its own flags, beside the shared [`DeployArgs`]).
pub struct How {
    pub goal: Goal,
    pub confirm_timeout: Option<u64>,
    pub fanout: edgectl_deploy::fanout::Fanout,
    pub build_on: edgectl_deploy::BuildOn,
}

pub fn apply(ctx: &Ctx, file: &Path, a: &DeployArgs, how: How) -> u8 {
    let mut opts = options(a);
    opts.goal = how.goal;
    opts.confirm_timeout = how.confirm_timeout;
    opts.fanout = how.fanout;
    opts.build_on = how.build_on;
    let (topology, saved): (PathBuf, Option<Plan>) =
        if file.extension().is_some_and(|e| e == "json") {
            let plan: Plan = match std::fs::read(file)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(p) => p,
                Err(e) => {
                    return fail(
                        ctx,
                        a.json,
                        EngineError::Failed(format!("{}: not a saved plan: {e}", file.display())),
                    );
                }
            };
            let on: Vec<String> = plan
                .nodes
                .iter()
                .filter(|n| n.change != Change::Unchanged || n.secrets.iter().any(|s| s.pending()))
                .map(|n| n.node.clone())
                .collect();
            if on.is_empty() {
                println!("the plan has nothing to change");
                return exit::OK;
            }
            opts.on = Some(on.join(","));
            (PathBuf::from(&plan.topology), Some(plan))
        } else {
            (file.to_path_buf(), None)
        };
    let run = match Run::load(&topology, &opts.load, opts.on.as_deref()) {
        Ok(r) => r,
        Err(e) => return fail(ctx, a.json, e),
    };
    opts.identity = run.identity(opts.identity.as_deref());
    let (tx, r) = progress::start(Mode::detect(a.json));
    let res = edgectl_deploy::apply(run, saved.as_ref(), &opts, tx);
    r.finish();
    match res {
        Ok(report) => show_report(a, &report),
        Err(e) => fail(ctx, a.json, e),
    }
}

/// `edgectl rollback`: the selected nodes back to an earlier generation of their own.
pub fn rollback(
    ctx: &Ctx,
    file: &Path,
    a: &DeployArgs,
    to: Option<u64>,
    confirm_timeout: Option<u64>,
) -> u8 {
    if a.on.is_none() {
        return fail(
            ctx,
            a.json,
            EngineError::Failed(
                "rollback switches nodes back: name them with --on (`--on '*'` for all)".into(),
            ),
        );
    }
    let mut opts = options(a);
    opts.confirm_timeout = confirm_timeout;
    let run = match Run::load(file, &opts.load, opts.on.as_deref()) {
        Ok(r) => r,
        Err(e) => return fail(ctx, a.json, e),
    };
    opts.identity = run.identity(opts.identity.as_deref());
    let (tx, r) = progress::start(Mode::detect(a.json));
    let res = edgectl_deploy::apply::rollback(run, to, &opts, tx);
    r.finish();
    match res {
        Ok(report) => show_report(a, &report),
        Err(e) => fail(ctx, a.json, e),
    }
}

/// Prints an apply's (or rollback's) report and says by the exit code whether a node failed.
fn show_report(a: &DeployArgs, report: &edgectl_deploy::ApplyReport) -> u8 {
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "ok": !report.any_failed(), "report": report })
        );
    } else {
        use edgectl_deploy::fanout::Source;
        let mut t = Table::new(&["NODE", "RESULT", "GENERATION", "CLOSURE FROM", "MESSAGE"]);
        let mut warnings = Vec::new();
        for n in &report.nodes {
            let from = n.closure.as_ref().map(|d| {
                let seed = d.seed.as_deref().unwrap_or("the seed");
                match d.from {
                    Source::Controller => "controller".to_string(),
                    Source::Seed => "controller (seed)".into(),
                    Source::SeedStream => format!("{seed} (streamed)"),
                    Source::SeedCopy => format!("{seed} (copied)"),
                    Source::Held => "already held".into(),
                    Source::BuiltOnNode => "built on the node".into(),
                    Source::ControllerFallback => {
                        warnings.push(format!(
                            "warning: {} got its closure from this machine, not over the cluster LAN: {} (`--fanout require` makes this an error)",
                            n.node,
                            d.fallback_reason.as_deref().unwrap_or("no reason given")
                        ));
                        "controller (FALLBACK)".into()
                    }
                }
            });
            t.row(vec![
                n.node.clone(),
                n.result.to_string(),
                n.generation.map(|g| g.to_string()).unwrap_or("-".into()),
                from.unwrap_or_else(|| "-".into()),
                n.message.clone(),
            ]);
        }
        print!("{}", t.render());
        for w in warnings {
            eprintln!("{w}");
        }
    }
    if report.any_failed() {
        exit::NODES_FAILED
    } else {
        exit::OK
    }
}

/// The options only `install` has.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Read the node and print every command each phase would run; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Stop after this phase.
    #[arg(long, value_enum, value_name = "PHASE")]
    until: Option<edgectl_deploy::install::Step>,
    /// Reboot with this command instead of `systemctl reboot` (then the node counts as back
    /// once it answers, with no new boot id required).
    #[arg(long, value_name = "CMD", num_args = 1.., allow_hyphen_values = true)]
    reboot_command: Option<Vec<String>>,
    /// The Nix to copy to nodes that have none (or one older than 2.4) when Ubuntu's nix-bin
    /// cannot help (Ubuntu 20.04 has none): a store path such as /nix/store/...-nix-2.24.9.
    /// Default: this machine's own Nix, when it lives in /nix/store.
    #[arg(long, value_name = "STORE_PATH")]
    nix_from: Option<PathBuf>,
    /// Phase-1 command outputs recorded under DIR/<node>/ instead of reading them live.
    #[arg(long, value_name = "DIR", hide = true)]
    facts_from: Option<PathBuf>,
}

pub fn install(ctx: &Ctx, file: &Path, a: &DeployArgs, i: InstallArgs) -> u8 {
    let InstallArgs {
        dry_run,
        until,
        reboot_command,
        nix_from,
        facts_from,
    } = i;
    use edgectl_deploy::install::{InstallOptions, install};
    if a.on.is_none() {
        return fail(
            ctx,
            a.json,
            EngineError::Failed(
                "install replaces the operating system: name the nodes with --on".into(),
            ),
        );
    }
    if let Some(p) = &nix_from
        && let Err(e) = edgectl_deploy::nodenix::controller_nix(Some(p))
    {
        return fail(ctx, a.json, EngineError::Failed(e));
    }
    let io = InstallOptions {
        dry_run,
        facts_from,
        reboot_command,
        until,
        nix_from,
    };
    let mut opts = options(a);
    let run = match Run::load(file, &opts.load, opts.on.as_deref()) {
        Ok(r) => r,
        Err(e) => return fail(ctx, a.json, e),
    };
    opts.identity = run.identity(opts.identity.as_deref());
    let (tx, r) = progress::start(Mode::detect(a.json));
    let res = install(run, &opts, &io, tx);
    r.finish();
    let results = match res {
        Ok(r) => r,
        Err(e) => return fail(ctx, a.json, e),
    };
    let ok = results.iter().all(|r| r.ok);
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "ok": ok, "dry_run": dry_run, "nodes": results })
        );
    } else {
        let mut t = Table::new(&["NODE", "RESUMED FROM", "DONE", "RESULT"]);
        for r in &results {
            let done: Vec<&str> = r.done.iter().map(|s| s.name()).collect();
            t.row(vec![
                r.node.clone(),
                r.resumed_from
                    .map(|s| s.name().to_string())
                    .unwrap_or("-".into()),
                if done.is_empty() {
                    "-".into()
                } else {
                    done.join(",")
                },
                if r.ok { "ok".into() } else { r.message.clone() },
            ]);
        }
        print!("{}", t.render());
        for r in &results {
            for c in &r.commands {
                println!("{}: {c}", r.node);
            }
        }
    }
    if ok { exit::OK } else { exit::NODES_FAILED }
}
