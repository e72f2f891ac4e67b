//! Day-2 commands on running nodes, beside plan and apply: run a command everywhere (`exec`),
//! see what runs where (`status`), and open a login (`ssh`), each through the node's pinned
//! host key, bounded by the same pool.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::activate;
use crate::host::{Host, HostError, SshHost, SshTarget};
use crate::pool::{parallel_map, runtime};
use crate::run::{EngineError, Options, Run, target_for};
use crate::session::{apply_in_progress, connect};
use crate::state::State;

/// One node's answer to `exec`.
#[derive(Debug, Clone, Serialize)]
pub struct ExecResult {
    pub node: String,
    /// The command's exit status; None when it could not run (see `error`).
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ExecResult {
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }
}

/// What runs on one node, beside what edgectl recorded there.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: String,
    /// The system the last apply confirmed, and its generation.
    pub recorded: Option<String>,
    pub recorded_generation: Option<u64>,
    /// What the last apply did to the node (`confirmed`, `rolled-back`, ...).
    pub last_result: Option<String>,
    /// When (Unix seconds) the recorded system was applied.
    pub applied_at: Option<u64>,
    /// The system the node's profile points at now, and its generation.
    pub live: Option<String>,
    pub live_generation: Option<u64>,
    /// Live and recorded differ: someone or something changed the node since.
    pub drifted: bool,
    /// Who holds the node's apply lock, when someone does.
    pub locked_by: Option<String>,
    /// The node's checks in the last `verify`.
    pub last_verify: Option<crate::state::VerifyRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Connects to every selected node (in parallel, bounded) with its pinned key, recording the
/// key of a node seen for the first time, and gives each connection to `f`.
fn each_node<O, F>(run: &Run, opts: &Options, f: F) -> Result<Vec<O>, EngineError>
where
    O: Send + 'static,
    F: Fn(String, Result<SshHost, HostError>) -> O + Send + Sync + Clone + 'static,
{
    let st = Arc::new(Mutex::new(State::load(&run.state_dir)?));
    let targets: Vec<SshTarget> = {
        let st = st.lock().unwrap_or_else(|e| e.into_inner());
        run.selected
            .iter()
            .map(|n| target_for(&run.loaded.cluster, n, &st, opts, &run.state_dir))
            .collect()
    };
    let rt = runtime(opts.parallel);
    let dir = run.state_dir.clone();
    let out = parallel_map(&rt, opts.parallel, targets, {
        let st = st.clone();
        move |t: SshTarget| {
            let name = t.node.clone();
            let h = connect(t);
            if let Ok(h) = &h
                && let Some(k) = h.host_key()
            {
                let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                let e = s.nodes.entry(name.clone()).or_default();
                if e.host_key.is_none() {
                    e.host_key = Some(k);
                    let _ = s.save(&dir);
                }
            }
            f(name, h)
        }
    });
    Ok(out)
}

/// Runs `argv` on every selected node (as root through sudo when `root`).
pub fn exec(
    run: &Run,
    opts: &Options,
    argv: &[String],
    root: bool,
) -> Result<Vec<ExecResult>, EngineError> {
    if argv.is_empty() {
        return Err(EngineError::Failed(
            "no command: write it after `--`, e.g. `edgectl exec cluster.toml -- uptime`".into(),
        ));
    }
    let argv = argv.to_vec();
    each_node(run, opts, move |node, h| {
        let r = h.and_then(|h| h.run(&argv, root));
        match r {
            Ok(o) => ExecResult {
                node,
                status: Some(o.status),
                stdout: o.stdout,
                stderr: o.stderr,
                error: None,
            },
            Err(e) => ExecResult {
                node,
                status: None,
                stdout: String::new(),
                stderr: String::new(),
                error: Some(e.to_string()),
            },
        }
    })
}

/// What runs on every selected node, against what edgectl recorded.
pub fn status(run: &Run, opts: &Options) -> Result<Vec<NodeStatus>, EngineError> {
    let st = State::load(&run.state_dir)?;
    let recorded = Arc::new(st.nodes);
    each_node(run, opts, move |node, h| {
        let r = recorded.get(&node).cloned().unwrap_or_default();
        let mut s = NodeStatus {
            node: node.clone(),
            recorded: r.system.clone(),
            recorded_generation: r.generation,
            last_result: r.last_result.clone(),
            applied_at: r.applied_at,
            live: None,
            live_generation: None,
            drifted: false,
            locked_by: None,
            last_verify: r.last_verify.clone(),
            error: None,
        };
        match h {
            Ok(h) => {
                match activate::current(&h) {
                    Ok((live, generation)) => {
                        s.drifted = r.system.is_some() && live != r.system;
                        s.live = live;
                        s.live_generation = generation;
                    }
                    Err(e) => s.error = Some(e.to_string()),
                }
                s.locked_by = apply_in_progress(&h);
            }
            Err(e) => s.error = Some(e.to_string()),
        }
        s
    })
}

/// The OpenSSH command line that logs in to `node` as edgectl does: its user, port and key,
/// and its pinned host key only (connecting once first, to pin it on first contact).
pub fn ssh_command(run: &Run, opts: &Options, node: &str) -> Result<Vec<String>, EngineError> {
    if run.loaded.cluster.node(node).is_none() {
        let names: Vec<&str> = run
            .loaded
            .cluster
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        return Err(EngineError::Failed(format!(
            "no node named `{node}` in {}; its nodes are {}",
            run.topology.display(),
            names.join(", ")
        )));
    }
    let one = run.on(vec![node.to_string()]);
    let mut hosts = each_node(&one, opts, |_, h| {
        h.map(|h| {
            let t = h.target().clone();
            (h.openssh_options(), format!("{}@{}", t.user, t.host))
        })
    })?;
    let (mut argv, login) = match hosts.pop() {
        Some(Ok((o, login))) => (o, login),
        Some(Err(e)) => return Err(EngineError::Failed(format!("{node}: {e}"))),
        None => return Err(EngineError::Failed(format!("{node}: not selected"))),
    };
    // Interactive: a terminal, and prompts are fine for a person (no BatchMode).
    let mut cmd = vec!["ssh".to_string(), "-t".into()];
    let mut it = argv.drain(..);
    while let Some(a) = it.next() {
        if a == "-o" {
            match it.next() {
                Some(v) if v == "BatchMode=yes" => {}
                Some(v) => cmd.extend([a, v]),
                None => {}
            }
        } else {
            cmd.push(a);
        }
    }
    cmd.push(login);
    Ok(cmd)
}
