//! `plan`: what `apply` would change on each node (options and closure), read from every node
//! in one round trip each, without taking its lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::activate;
use crate::event::{Phase, Sender, State as Ev, emit, step};
use crate::host::{Host, SshTarget, argv};
use crate::nixcmd::{self, ClosureDiff};
use crate::pool::runtime;
use crate::report::{Change, NodePlan, OptionChange, Plan};
use crate::run::{EngineError, Options, Prepared, Run, build_systems, prepare, target_for};
use crate::secrets::{Material, Secrets};
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

/// Plans the topology: what `apply` would change on each selected node. Reaching a node and
/// reading its current system need nothing from the new systems, so they run while Nix
/// evaluates and builds: a plan costs about the longer of the two, not their sum, and the
/// handshakes of a large cluster hide behind the evaluation.
pub fn plan(run: Run, opts: &Options, tx: Sender) -> Result<Plan, EngineError> {
    let r = PlanRun::prepare(run, opts, tx)?;
    let probes = r.inspect_all();
    let r = r.build()?;
    Ok(r.judge_all(probes))
}

/// One plan. Its phases run in order ([`prepare`](Self::prepare),
/// [`inspect_all`](Self::inspect_all), [`build`](Self::build), [`judge_all`](Self::judge_all)).
struct PlanRun<'a> {
    topology: String,
    p: Prepared,
    /// The selected nodes' secrets, read on the controller (their digests go in the plan).
    secrets: Secrets,
    st: State,
    opts: &'a Options,
    tx: Sender,
    rt: tokio::runtime::Runtime,
}

/// Each selected node's [`inspect_node`], running in the background, in the order selected.
type Probes = Vec<tokio::task::JoinHandle<Result<Probe, String>>>;

impl<'a> PlanRun<'a> {
    /// Reads the secrets, renders the flake and reads the recorded state; builds nothing yet.
    /// A secret that cannot be read fails the plan before any node is reached.
    fn prepare(run: Run, opts: &'a Options, tx: Sender) -> Result<PlanRun<'a>, EngineError> {
        let topology = run.topology.display().to_string();
        let secrets = Secrets::read(&run.loaded.cluster, &run.topology, &run.selected)?;
        let p = prepare(run, opts, &tx, false)?;
        let st = State::load(&p.state_dir)?;
        Ok(PlanRun {
            topology,
            p,
            secrets,
            st,
            opts,
            tx,
            rt: runtime(opts.parallel),
        })
    }

    /// Starts reading every selected node, at most `--parallel` at once.
    fn inspect_all(&self) -> Probes {
        let sem = Arc::new(tokio::sync::Semaphore::new(self.opts.parallel.max(1)));
        self.p
            .selected
            .iter()
            .map(|name| {
                let t = target_for(
                    &self.p.loaded.cluster,
                    name,
                    &self.st,
                    self.opts,
                    &self.p.state_dir,
                );
                let (sem, tx, name) = (sem.clone(), self.tx.clone(), name.clone());
                self.rt.spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    tokio::task::spawn_blocking(move || inspect_node(&name, t, &tx))
                        .await
                        .unwrap_or_else(|e| Err(format!("inspect task: {e}")))
                })
            })
            .collect()
    }

    /// Evaluates and builds the selected systems, while the nodes are read.
    fn build(mut self) -> Result<PlanRun<'a>, EngineError> {
        match build_systems(&self.p, self.opts, &self.tx) {
            Ok((systems, derivations)) => {
                self.p.systems = systems;
                self.p.derivations = derivations;
                Ok(self)
            }
            Err(e) => {
                // Unreachable nodes may still be timing out; the plan has failed anyway.
                self.rt.shutdown_background();
                Err(e)
            }
        }
    }

    /// Each node's plan, once its probe is back, in the order the nodes were selected.
    fn judge_all(self, probes: Probes) -> Plan {
        let PlanRun {
            topology,
            p,
            secrets,
            st,
            tx,
            rt,
            ..
        } = self;
        let nodes = rt.block_on(async {
            let mut tasks = Vec::new();
            for (name, probe) in p.selected.iter().zip(probes) {
                let target = p.systems[name].clone();
                let old_opts = st.nodes.get(name).and_then(|s| s.options.clone());
                let new_opts = p.contexts[name].clone();
                let node_secrets = secrets.for_node(name).to_vec();
                let (tx, name) = (tx.clone(), name.clone());
                tasks.push(tokio::spawn(async move {
                    let probe = probe
                        .await
                        .unwrap_or_else(|e| Err(format!("inspect task: {e}")));
                    tokio::task::spawn_blocking(move || {
                        judge_node(
                            &name,
                            probe,
                            &target,
                            old_opts.as_ref(),
                            &new_opts,
                            &node_secrets,
                            &tx,
                        )
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
        Plan {
            topology,
            topology_hash: p.topology_hash,
            nodes,
        }
    }
}

/// What [`inspect_node`] read on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Seen {
    /// The system it runs now (None: never deployed by us).
    current: Option<String>,
    /// The holder of its lock when an apply is running there.
    apply_in_progress: Option<String>,
}

/// What [`inspect_node`] found: the connection (kept for the closure diff), and what it read.
type Probe = (Box<dyn Host>, Seen);

/// One round trip for plan: the node's current system (two lines, kept in place when the
/// profile is missing), then [`LOCK_HELD`]'s holder of a live node lock, if any.
fn inspect_script() -> String {
    format!("{INSPECT_CURRENT}{LOCK_HELD}")
}

/// The first part of [`inspect_script`]: `readlink -f` and `readlink` of the profile (`$1`), then
/// `shift`, so that [`LOCK_HELD`]'s `$1` is the stale limit.
const INSPECT_CURRENT: &str = include_str!("sh/inspect_current_system.sh");

/// Connects to a node (its `connect` phase) and reads it with [`read_node`].
fn inspect_node(name: &str, t: SshTarget, tx: &Sender) -> Result<Probe, String> {
    let what = format!("{}@{}", t.user, t.host);
    let h = step(tx, name, Phase::Connect, what, || {
        connect(t).map(|h| {
            let key = h.host_key().map(|k| k.fingerprint).unwrap_or_default();
            (h, key)
        })
    })
    .map_err(|e| e.to_string())?;
    let seen = read_node(&h)?;
    Ok((Box::new(h), seen))
}

/// Reads the node's current system and the holder of a live lock on it, without taking the
/// lock, in one round trip ([`inspect_script`]).
fn read_node(h: &dyn Host) -> Result<Seen, String> {
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
    Ok(parse_inspect(&o.stdout))
}

/// What [`inspect_script`] printed: the current system (the first two lines) and, on the third,
/// the holder of a live lock.
fn parse_inspect(stdout: &str) -> Seen {
    let (current, _) = activate::parse_current(stdout);
    let holder = stdout
        .lines()
        .nth(2)
        .map(str::trim)
        .filter(|s| !s.is_empty());
    Seen {
        current,
        apply_in_progress: holder.map(String::from),
    }
}

/// One node's plan from what [`inspect_node`] found: [`judge`], then the closure diff where the
/// system changes and what the node holds of its secrets, with a warning when an apply is
/// running there and its `inspect` event.
fn judge_node(
    name: &str,
    probe: Result<Probe, String>,
    target: &str,
    old: Option<&Value>,
    new: &Value,
    secrets: &[Arc<Material>],
    tx: &Sender,
) -> NodePlan {
    let (h, seen) = match probe {
        Ok(x) => x,
        Err(e) => {
            let mut np = judge(name, target, Err(e), old, new);
            crate::secrets::add_to_plan(&mut np, None, secrets);
            return np;
        }
    };
    let mut np = judge(name, target, Ok(seen), old, new);
    crate::secrets::add_to_plan(&mut np, Some(h.as_ref()), secrets);
    if let Some(holder) = &np.apply_in_progress {
        emit(
            tx,
            name,
            Phase::Inspect,
            Ev::Warning,
            format!(
                "an apply is running on this node ({holder}); what this plan shows may change under it"
            ),
        );
    }
    if np.change == Change::Changed
        && let Some(c) = &np.current
    {
        np.closure = closure_diff(h.as_ref(), c, target);
    }
    let mut said = format!("{:?}", np.change).to_lowercase();
    let pending = np.secrets.iter().filter(|s| s.pending()).count();
    if pending > 0 {
        said.push_str(&format!("; {pending} secret(s) to write"));
    }
    emit(tx, name, Phase::Inspect, Ev::Ok, said);
    np
}

/// What a node's plan says, from what was seen there (or why it could not be read), the
/// system built for it, and its options at its last apply (`old`) against the new ones:
/// everything but the closure diff.
fn judge(
    name: &str,
    target: &str,
    seen: Result<Seen, String>,
    old: Option<&Value>,
    new: &Value,
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
        secrets: Vec::new(),
    };
    let seen = match seen {
        Ok(s) => s,
        Err(e) => {
            np.error = Some(e);
            return np;
        }
    };
    np.change = match &seen.current {
        None => Change::New,
        Some(c) if c == target => Change::Unchanged,
        Some(_) => Change::Changed,
    };
    if np.change == Change::Unchanged {
        np.option_changes.clear();
    }
    np.current = seen.current;
    np.apply_in_progress = seen.apply_in_progress;
    np
}

/// The closure's changes: the node's current closure (read there) against the new one (read
/// here). None when either cannot be read. The new one first: with `--build-on nodes` it is
/// not here, and the node is then spared a `path-info` over its whole closure.
fn closure_diff(h: &dyn Host, current: &str, target: &str) -> Option<ClosureDiff> {
    let new = nixcmd::local_closure(target).ok()?;
    let remote = h.run(
        &argv([
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "-r",
            "--json",
            current,
        ]),
        true,
    );
    if let Ok(r) = remote
        && r.ok()
        && let Ok(old) = nixcmd::parse_path_info(&r.stdout)
    {
        return Some(nixcmd::diff_closures(&old, &new));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::ok;

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

    const NEW: &str = "/nix/store/new-system";

    fn seen(current: Option<&str>, holder: Option<&str>) -> Seen {
        Seen {
            current: current.map(String::from),
            apply_in_progress: holder.map(String::from),
        }
    }

    fn opts(gpus: u32) -> Value {
        serde_json::json!({"ray": {"enable": true, "numGpus": gpus}})
    }

    fn changed(np: &NodePlan) -> Vec<&str> {
        np.option_changes
            .iter()
            .map(|c| c.option.as_str())
            .collect()
    }

    #[test]
    fn a_node_on_the_target_is_unchanged_whatever_its_recorded_options_say() {
        let np = judge(
            "n1",
            NEW,
            Ok(seen(Some(NEW), None)),
            Some(&opts(0)),
            &opts(1),
        );
        assert_eq!(np.change, Change::Unchanged);
        assert_eq!(np.current.as_deref(), Some(NEW));
        assert_eq!(np.target, NEW);
        assert!(np.option_changes.is_empty(), "{:?}", np.option_changes);
        assert_eq!((np.error, np.apply_in_progress), (None, None));
    }

    #[test]
    fn a_node_on_another_system_is_changed_with_the_options_that_differ() {
        let np = judge(
            "n1",
            NEW,
            Ok(seen(Some("/nix/store/old"), None)),
            Some(&opts(0)),
            &opts(1),
        );
        assert_eq!(np.change, Change::Changed);
        assert_eq!(np.current.as_deref(), Some("/nix/store/old"));
        assert_eq!(changed(&np), ["edge.ray.numGpus"]);
        assert_eq!(
            (&np.option_changes[0].old, &np.option_changes[0].new),
            (&0.into(), &1.into())
        );
        // The same options: the system changed for another reason (a new nixpkgs, say).
        let np = judge(
            "n1",
            NEW,
            Ok(seen(Some("/nix/store/old"), None)),
            Some(&opts(1)),
            &opts(1),
        );
        assert_eq!(np.change, Change::Changed);
        assert!(np.option_changes.is_empty());
    }

    #[test]
    fn a_node_with_no_current_system_is_new_and_every_option_is_listed() {
        let np = judge("n1", NEW, Ok(seen(None, None)), None, &opts(1));
        assert_eq!(np.change, Change::New);
        assert_eq!(np.current, None);
        assert_eq!(changed(&np), ["edge.ray.enable", "edge.ray.numGpus"]);
        assert!(np.option_changes.iter().all(|c| c.old == Value::Null));
    }

    #[test]
    fn an_unreachable_node_says_why_and_keeps_the_option_changes_it_would_get() {
        let np = judge(
            "n1",
            NEW,
            Err("connection refused".into()),
            Some(&opts(0)),
            &opts(1),
        );
        assert_eq!(np.change, Change::Unreachable);
        assert_eq!(np.error.as_deref(), Some("connection refused"));
        assert_eq!(np.current, None);
        assert_eq!(changed(&np), ["edge.ray.numGpus"]);
    }

    #[test]
    fn an_apply_in_progress_is_named_beside_the_change() {
        let holder = "edgectl alice@ctl pid 42";
        let np = judge(
            "n1",
            NEW,
            Ok(seen(Some("/nix/store/old"), Some(holder))),
            None,
            &opts(1),
        );
        assert_eq!(np.change, Change::Changed);
        assert_eq!(np.apply_in_progress.as_deref(), Some(holder));
        let json = serde_json::to_value(&np).unwrap();
        assert_eq!(json["apply_in_progress"], holder);
        assert_eq!(json["change"], "changed");
    }

    /// [`judge_node`]'s plan and the events it sent as (state, message).
    fn judged(probe: Result<Probe, String>) -> (NodePlan, Vec<(Ev, String)>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let np = judge_node("n1", probe, NEW, None, &opts(1), &[], &tx);
        let events = std::iter::from_fn(|| rx.try_recv().ok())
            .inspect(|e| assert_eq!((e.node.as_str(), e.phase), ("n1", Phase::Inspect)))
            .map(|e| (e.state, e.message))
            .collect();
        (np, events)
    }

    #[test]
    fn a_judged_node_warns_of_an_apply_in_progress_then_ends_its_inspection() {
        let h = crate::fake::FakeHost::new("n1");
        let (np, events) = judged(Ok((Box::new(h.clone()), seen(Some(NEW), Some("x")))));
        assert_eq!(np.change, Change::Unchanged);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].0, Ev::Warning);
        assert!(events[0].1.contains("an apply is running on this node (x)"));
        assert_eq!(events[1], (Ev::Ok, "unchanged".into()));
        assert!(
            h.calls().is_empty(),
            "no closure diff for an unchanged node"
        );
        let (np, events) = judged(Ok((Box::new(h), seen(None, None))));
        assert_eq!(np.change, Change::New);
        assert_eq!(events, [(Ev::Ok, "new".into())]);
        // Its connect step already said why.
        let (np, events) = judged(Err("refused".into()));
        assert_eq!(np.change, Change::Unreachable);
        assert_eq!(events, []);
    }

    #[test]
    fn a_node_on_its_system_with_a_secret_to_write_is_a_change_shown_by_digest() {
        let secret = edgectl_model::Secret {
            name: "tok".into(),
            source: edgectl_model::SecretSource::File("tok".into()),
            dest: "/run/keys/tok".into(),
            owner: "root".into(),
            group: "root".into(),
            mode: 0o400,
            nodes: vec!["n1".into()],
            when: edgectl_model::SecretWhen::Before,
        };
        let m = Arc::new(Material::new(&secret, b"hunter2".to_vec()));
        let h = crate::fake::FakeHost::new("n1");
        h.on_name("edgectl-secret-state", |a| {
            assert_eq!(a, ["/run/keys/tok"]);
            ok("-\n")
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let probe = Ok((Box::new(h.clone()) as Box<dyn Host>, seen(Some(NEW), None)));
        let np = judge_node(
            "n1",
            probe,
            NEW,
            None,
            &opts(1),
            std::slice::from_ref(&m),
            &tx,
        );
        assert_eq!(np.change, Change::Unchanged);
        assert!(np.has_changes(), "the secret is still to be written");
        assert_eq!(np.secrets.len(), 1);
        assert_eq!(np.secrets[0].change, crate::report::SecretChange::New);
        assert_eq!(np.secrets[0].sha256, crate::secrets::sha256_hex(b"hunter2"));
        let last = std::iter::from_fn(|| rx.try_recv().ok()).last().unwrap();
        assert_eq!(last.message, "unchanged; 1 secret(s) to write");
        let json = serde_json::to_string(&np).unwrap();
        assert!(
            json.contains(&m.sha256) && !json.contains("hunter2"),
            "{json}"
        );

        // Unreachable: its secrets are listed, unknown.
        let np = judge_node("n1", Err("refused".into()), NEW, None, &opts(1), &[m], &tx);
        assert_eq!(np.secrets[0].change, crate::report::SecretChange::Unknown);
    }

    #[test]
    fn one_round_trip_reads_the_current_system_and_a_live_lock_holder() {
        let h = crate::fake::FakeHost::new("n1");
        h.on_name("edgectl-inspect", |a| {
            assert_eq!(a, [activate::PROFILE, &LOCK_STALE_MIN.to_string()]);
            ok("/nix/store/old\nsystem-3-link\nedgectl bob@ctl pid 7\n")
        });
        let s = read_node(&h).unwrap();
        assert_eq!(s.current.as_deref(), Some("/nix/store/old"));
        assert_eq!(
            s.apply_in_progress.as_deref(),
            Some("edgectl bob@ctl pid 7")
        );
        assert_eq!(h.calls().len(), 1);
        // Never deployed, no apply running: the profile lines are empty, the third absent.
        assert_eq!(parse_inspect("\n\n"), Seen::default());
        assert_eq!(
            parse_inspect("/nix/store/old\nsystem-3-link\n  \n").apply_in_progress,
            None
        );
    }
}
