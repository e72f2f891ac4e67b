//! `edgectl exec`, `status` and `ssh`: the day-2 commands, on the deploy core's day2 layer.

use std::path::Path;

use edgectl_deploy::Run;
use edgectl_deploy::day2::{self, NodeStatus};

use super::deploy::{options, short};
use super::fail;
use crate::table::Table;
use crate::{Ctx, DeployArgs, exit};

fn open(ctx: &Ctx, file: &Path, a: &DeployArgs) -> Result<(Run, edgectl_deploy::Options), u8> {
    let mut opts = options(a);
    let run = Run::load(file, &opts.load, opts.on.as_deref()).map_err(|e| fail(ctx, a.json, e))?;
    opts.identity = run.identity(opts.identity.as_deref());
    Ok((run, opts))
}

pub fn exec(ctx: &Ctx, file: &Path, a: &DeployArgs, root: bool, command: &[String]) -> u8 {
    let (run, opts) = match open(ctx, file, a) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let results = match day2::exec(&run, &opts, command, root) {
        Ok(r) => r,
        Err(e) => return fail(ctx, a.json, e),
    };
    let all_ok = results.iter().all(|r| r.ok());
    if a.json {
        println!("{}", serde_json::json!({ "ok": all_ok, "nodes": results }));
    } else {
        for r in &results {
            for l in r.stdout.lines() {
                println!("[{}] {l}", r.node);
            }
            for l in r.stderr.lines() {
                eprintln!("[{}] {l}", r.node);
            }
            match (&r.error, r.status) {
                (Some(e), _) => eprintln!("[{}] could not run: {e}", r.node),
                (None, Some(s)) if s != 0 => eprintln!("[{}] exit {s}", r.node),
                _ => {}
            }
        }
    }
    if all_ok { exit::OK } else { exit::NODES_FAILED }
}

pub fn status(ctx: &Ctx, file: &Path, a: &DeployArgs) -> u8 {
    let (run, opts) = match open(ctx, file, a) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let nodes: Vec<NodeStatus> = match day2::status(&run, &opts) {
        Ok(r) => r,
        Err(e) => return fail(ctx, a.json, e),
    };
    let unread = nodes.iter().any(|n| n.error.is_some());
    if a.json {
        println!("{}", serde_json::json!({ "ok": !unread, "nodes": nodes }));
    } else {
        let num = |g: Option<u64>| g.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
        let mut t = Table::new(&[
            "NODE",
            "RECORDED",
            "GEN",
            "LIVE",
            "GEN",
            "DRIFT",
            "LAST APPLY",
            "LAST VERIFY",
            "LOCKED BY",
        ]);
        for n in &nodes {
            t.row(vec![
                n.node.clone(),
                short(&n.recorded),
                num(n.recorded_generation),
                match &n.error {
                    Some(e) => format!("unreadable: {e}"),
                    None => short(&n.live),
                },
                num(n.live_generation),
                if n.drifted {
                    "DRIFTED".into()
                } else {
                    "-".into()
                },
                n.last_result.clone().unwrap_or_else(|| "-".into()),
                n.last_verify
                    .as_ref()
                    .map(|v| {
                        let verdict = if v.fail == 0 { "ok" } else { "FAIL" };
                        format!("{verdict} ({} pass, {} fail)", v.pass, v.fail)
                    })
                    .unwrap_or_else(|| "-".into()),
                n.locked_by.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        print!("{}", t.render());
    }
    if unread { exit::NODES_FAILED } else { exit::OK }
}

pub fn ssh(ctx: &Ctx, file: &Path, node: &str, a: &DeployArgs) -> u8 {
    let (run, opts) = match open(ctx, file, a) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let argv = match day2::ssh_command(&run, &opts, node) {
        Ok(a) => a,
        Err(e) => return fail(ctx, a.json, e),
    };
    if a.json {
        println!("{}", serde_json::json!({ "ok": true, "command": argv }));
        return exit::OK;
    }
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    fail(
        ctx,
        a.json,
        edgectl_deploy::EngineError::Failed(format!("cannot run ssh: {e}")),
    )
}
