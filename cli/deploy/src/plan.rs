//! `plan`: what `apply` would change on each node (options and closure), read from every node
//! in one round trip each, without taking its lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::activate;
use crate::event::{Phase, Sender, State as Ev, emit, step};
use crate::host::{Host, SshHost, SshTarget, argv};
use crate::nixcmd;
use crate::pool::runtime;
use crate::report::{Change, NodePlan, OptionChange, Plan};
use crate::run::{EngineError, Options, Run, build_systems, prepare, target_for};
use crate::session::connect;
use crate::session::{LOCK_HELD, LOCK_STALE_MIN};
use crate::state::State;

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                flatten(
                    &if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    },
                    x,
                    out,
                );
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

pub fn option_changes(old: Option<&Value>, new: &Value) -> Vec<OptionChange> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    if let Some(o) = old {
        flatten("edge", o, &mut a);
    }
    flatten("edge", new, &mut b);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| OptionChange {
            option: k.clone(),
            old: a.get(k).cloned().unwrap_or(Value::Null),
            new: b.get(k).cloned().unwrap_or(Value::Null),
        })
        .collect()
}

pub fn plan(run: Run, opts: &Options, tx: Sender) -> Result<Plan, EngineError> {
    let topology = run.topology.display().to_string();
    let mut p = prepare(run, opts, &tx, false)?;
    let st = State::load(&p.state_dir)?;
    let rt = runtime(opts.parallel);
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
    // Reaching a node and reading its current system need nothing from the new systems, so
    // they run while Nix evaluates and builds: a plan costs about the longer of the two, not
    // their sum, and the handshakes of a large cluster hide behind the evaluation.
    let probes: Vec<_> = p
        .selected
        .iter()
        .map(|name| {
            let t = target_for(&p.loaded.cluster, name, &st, opts, &p.state_dir);
            let (sem, tx, name) = (sem.clone(), tx.clone(), name.clone());
            rt.spawn(async move {
                let _permit = sem.acquire_owned().await;
                tokio::task::spawn_blocking(move || inspect(&name, t, &tx))
                    .await
                    .unwrap_or_else(|e| Err(format!("inspect task: {e}")))
            })
        })
        .collect();
    p.systems = match build_systems(&p, opts, &tx) {
        Ok(s) => s,
        Err(e) => {
            // Unreachable nodes may still be timing out; the plan has failed anyway.
            rt.shutdown_background();
            return Err(e);
        }
    };
    let nodes = rt.block_on(async {
        let mut tasks = Vec::new();
        for (name, probe) in p.selected.iter().zip(probes) {
            let target = p.systems[name].clone();
            let old_opts = st.nodes.get(name).and_then(|s| s.options.clone());
            let new_opts = p.contexts[name].clone();
            let (tx, name) = (tx.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                let probe = probe
                    .await
                    .unwrap_or_else(|e| Err(format!("inspect task: {e}")));
                tokio::task::spawn_blocking(move || {
                    judge(&name, probe, &target, old_opts.as_ref(), &new_opts, &tx)
                })
                .await
                .expect("plan task")
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("plan task"));
        }
        out
    });
    Ok(Plan {
        topology,
        topology_hash: p.topology_hash,
        nodes,
    })
}

/// Connects to a node and reads the system it runs now (None: never deployed by us).
/// What [`inspect`] found: the session, the node's current system, and the holder of its lock
/// when an apply is running there.
type Probe = (SshHost, Option<String>, Option<String>);

/// One round trip for plan: the node's current system (two lines, kept in place when the
/// profile is missing), then [`LOCK_HELD`]'s holder of a live node lock, if any.
fn inspect_script() -> String {
    format!("{INSPECT_CURRENT}{LOCK_HELD}")
}

/// The first part of [`inspect_script`]: `readlink -f` and `readlink` of the profile (`$1`), then
/// `shift`, so that [`LOCK_HELD`]'s `$1` is the stale limit.
const INSPECT_CURRENT: &str = include_str!("sh/inspect_current_system.sh");

fn inspect(name: &str, t: SshTarget, tx: &Sender) -> Result<Probe, String> {
    let what = format!("{}@{}", t.user, t.host);
    let h = step(tx, name, Phase::Connect, what, || {
        connect(t).map(|h| {
            let key = h.host_key().map(|k| k.fingerprint).unwrap_or_default();
            (h, key)
        })
    })
    .map_err(|e| e.to_string())?;
    let o = h
        .run(
            &argv([
                "sh",
                "-c",
                &inspect_script(),
                "edgectl-inspect",
                activate::PROFILE,
                &LOCK_STALE_MIN.to_string(),
            ]),
            true,
        )
        .map_err(|e| e.to_string())?;
    let (cur, _) = activate::parse_current(&o.stdout);
    let holder = o
        .stdout
        .lines()
        .nth(2)
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let holder = holder.map(String::from);
    Ok((h, cur, holder))
}

/// One node's plan from what [`inspect`] found and the system built for it.
fn judge(
    name: &str,
    probe: Result<Probe, String>,
    target: &str,
    old: Option<&Value>,
    new: &Value,
    tx: &Sender,
) -> NodePlan {
    let mut np = NodePlan {
        node: name.into(),
        change: Change::Unreachable,
        current: None,
        target: target.into(),
        option_changes: option_changes(old, new),
        closure: None,
        error: None,
        apply_in_progress: None,
    };
    let (h, cur, holder) = match probe {
        Ok(x) => x,
        Err(e) => {
            np.error = Some(e);
            return np;
        }
    };
    if let Some(holder) = holder {
        emit(
            tx,
            name,
            Phase::Inspect,
            Ev::Warning,
            format!(
                "an apply is running on this node ({holder}); what this plan shows may change under it"
            ),
        );
        np.apply_in_progress = Some(holder);
    }
    np.current = cur.clone();
    np.change = match &cur {
        None => Change::New,
        Some(c) if c == target => Change::Unchanged,
        Some(_) => Change::Changed,
    };
    if np.change == Change::Unchanged {
        np.option_changes.clear();
    }
    if let Some(c) = cur.filter(|c| c != target) {
        let remote = h.run(
            &argv([
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "path-info",
                "-r",
                "--json",
                &c,
            ]),
            true,
        );
        if let (Ok(r), Ok(new)) = (remote, nixcmd::local_closure(target))
            && r.ok()
            && let Ok(old) = nixcmd::parse_path_info(&r.stdout)
        {
            np.closure = Some(nixcmd::diff_closures(&old, &new));
        }
    }
    emit(
        tx,
        name,
        Phase::Inspect,
        Ev::Ok,
        format!("{:?}", np.change).to_lowercase(),
    );
    np
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_diffs() {
        let old =
            serde_json::json!({"ray": {"enable": true, "numGpus": 0}, "wasm": {"enable": true}});
        let new = serde_json::json!({"ray": {"enable": true, "numGpus": 1}, "zenoh": {"enable": true}, "wasm": {"enable": true}});
        let d = option_changes(Some(&old), &new);
        let keys: Vec<&str> = d.iter().map(|c| c.option.as_str()).collect();
        assert_eq!(keys, vec!["edge.ray.numGpus", "edge.zenoh.enable"]);
        assert_eq!(d[0].old, 0);
        assert_eq!(d[1].old, Value::Null);
    }
}
