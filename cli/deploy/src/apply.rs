//! `apply`: open every selected node, deliver the closures, activate wave by wave (routers
//! and the Ray head first), and record each node the moment it is done.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use edgectl_model::{Cluster, Role, SecretWhen};
use serde_json::Value;

use crate::activate::{self, Goal, Outcome};
use crate::event::{Phase, Sender, State as Ev, emit};
use crate::fanout::{Deliveries, Delivery, FanoutError};
use crate::host::HostKey;
use crate::host::{Host, argv};
use crate::pool::{parallel_map, runtime};
use crate::report::{ApplyReport, NodeOutcome, NodeResult, Plan, result};
use crate::run::{EngineError, Options, Prepared, Run, prepare, target_for};
use crate::secrets::{self, Material, Secrets};
use crate::session::{Heartbeat, Session, open_node, unlock};
use crate::state::{Lock, NodeState, State, now};

/// Applies the topology (or a saved plan, which must still match the cluster): read the
/// selected nodes' secrets, open every selected node (connect, lock, inspect), distribute the
/// closures (fanned out over the cluster LAN, or copied per node), then activate wave by
/// wave, routers and the Ray head first.
pub fn apply(
    run: Run,
    saved: Option<&Plan>,
    opts: &Options,
    tx: Sender,
) -> Result<ApplyReport, EngineError> {
    let _lock = Lock::acquire(&run.state_dir)?;
    // Every secret is read before anything is built or any node touched, so a missing file
    // or a failing command changes nothing.
    let secrets = if secrets::goal_uploads(opts.goal) {
        let s = Secrets::read(&run.loaded.cluster, &run.topology, &run.selected)?;
        if let Some(plan) = saved {
            s.check_plan(plan, &run.selected)?;
        }
        s
    } else {
        Secrets::default()
    };
    let p = prepare(run, opts, &tx, true)?;
    if let Some(plan) = saved
        && plan.topology_hash != p.topology_hash
    {
        return Err(EngineError::Failed(
            "the topology changed since this plan was made; run `edgectl plan` again".into(),
        ));
    }
    if opts.goal == Goal::Build {
        return Ok(built(&p, opts.goal));
    }
    let mut a = ApplyRun::new(p, opts, tx)?;
    a.set_secrets(secrets);
    let sessions = a.open(saved);
    let _heartbeat = Heartbeat::start(sessions.clone());
    let deliveries = a.distribute(&sessions);
    a.activate(sessions, deliveries);
    Ok(a.finish())
}

/// `edgectl rollback`: switches every selected node back to an earlier generation of its own
/// (`to`, or the one before the one it runs), with apply's lock, waves and confirm-or-revert.
/// Nothing is built or copied: a generation's closure is on its node already. The state
/// records the system, but no topology options, since the node no longer runs the topology's.
pub fn rollback(
    run: Run,
    to: Option<u64>,
    opts: &Options,
    tx: Sender,
) -> Result<ApplyReport, EngineError> {
    let _lock = Lock::acquire(&run.state_dir)?;
    let st = State::load(&run.state_dir)?;
    let rt = runtime(opts.parallel);
    let targets: Vec<_> = run
        .selected
        .iter()
        .map(|n| target_for(&run.loaded.cluster, n, &st, opts, &run.state_dir))
        .collect();
    let found = parallel_map(&rt, opts.parallel, targets, move |t| {
        let name = t.node.clone();
        let r = crate::session::connect(t)
            .map_err(|e| (NodeOutcome::Unreachable, e.to_string()))
            .and_then(|h| rollback_target(&h, to).map_err(|e| (NodeOutcome::Failed, e)));
        (name, r)
    });
    let mut systems = BTreeMap::new();
    let mut failed = Vec::new();
    for (name, r) in found {
        match r {
            Ok((_, system)) => {
                systems.insert(name, system);
            }
            Err((kind, why)) => {
                emit(&tx, &name, Phase::Done, Ev::Failed, why.clone());
                failed.push(result(&name, "", kind, why, None));
            }
        }
    }
    let all = run.selected.clone();
    let p = Prepared {
        selected: systems.keys().cloned().collect(),
        systems,
        contexts: BTreeMap::new(),
        topology_hash: st.topology_hash.clone().unwrap_or_default(),
        derivations: BTreeMap::new(),
        loaded: run.loaded,
        state_dir: run.state_dir,
    };
    let mut o = opts.clone();
    o.goal = Goal::Switch;
    let mut a = ApplyRun::new(p, &o, tx)?;
    let sessions = a.open(None);
    let _heartbeat = Heartbeat::start(sessions.clone());
    a.activate(sessions, Deliveries::new());
    for r in failed {
        a.done.insert(r.node.clone(), (r, None));
    }
    a.selected = all;
    Ok(a.finish())
}

/// The generation `to` (or the newest one before the current) of the node's system profile,
/// as its number and store path.
fn rollback_target(h: &dyn Host, to: Option<u64>) -> Result<(u64, String), String> {
    let o = h
        .run(
            &argv([
                "sh",
                "-c",
                LIST_GENERATIONS,
                "edgectl-generations",
                activate::PROFILE,
            ]),
            true,
        )
        .map_err(|e| e.to_string())?;
    pick_generation(&o.stdout, to)
}

const LIST_GENERATIONS: &str = include_str!("sh/list_generations.sh");

/// Reads `list_generations.sh`'s output and picks the target.
fn pick_generation(listing: &str, to: Option<u64>) -> Result<(u64, String), String> {
    let mut gens: Vec<(u64, String)> = Vec::new();
    let mut current = None;
    for l in listing.lines() {
        let (a, b) = l.split_once(' ').unwrap_or((l, ""));
        if a == "current" {
            current = b
                .trim()
                .strip_prefix("system-")
                .and_then(|r| r.strip_suffix("-link"))
                .and_then(|n| n.parse::<u64>().ok());
        } else if let Ok(n) = a.parse::<u64>()
            && b.starts_with("/nix/store/")
        {
            gens.push((n, b.trim().to_string()));
        }
    }
    gens.sort();
    let list = || {
        gens.iter()
            .map(|g| g.0.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(current) = current else {
        return Err(
            "the node's system profile names no generation; nothing to roll back to".into(),
        );
    };
    match to {
        Some(n) if n == current => Err(format!("the node already runs generation {n}")),
        Some(n) => gens
            .iter()
            .find(|g| g.0 == n)
            .cloned()
            .ok_or_else(|| format!("the node has no generation {n} (it has {})", list())),
        None => gens
            .iter()
            .rev()
            .find(|g| g.0 < current)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "the node has no generation before {current} (it has {}); nothing to roll back to",
                    list()
                )
            }),
    }
}

/// `--goal build`: the systems are built, and no node is touched.
fn built(p: &Prepared, goal: Goal) -> ApplyReport {
    let nodes = p
        .selected
        .iter()
        .map(|n| NodeResult {
            node: n.clone(),
            result: NodeOutcome::Built,
            system: p.systems.get(n).cloned(),
            generation: None,
            message: String::new(),
            closure: None,
        })
        .collect();
    ApplyReport { goal, nodes }
}

/// One apply once its systems are built. Its phases run in order ([`open`](Self::open),
/// [`distribute`](Self::distribute), [`activate`](Self::activate), [`finish`](Self::finish)),
/// and every node's result lands in `done` the moment the node is done, opened or not.
struct ApplyRun<'a> {
    cluster: Cluster,
    selected: Vec<String>,
    systems: BTreeMap<String, String>,
    /// With `--build-on nodes`: what each node builds (else empty).
    derivations: BTreeMap<String, String>,
    opts: &'a Options,
    rt: tokio::runtime::Runtime,
    end: Arc<NodeEnd>,
    /// Each node's result, with the host key it was seen with.
    done: BTreeMap<String, (NodeResult, Option<HostKey>)>,
}

impl<'a> ApplyRun<'a> {
    /// Takes over what `prepare` worked out, and loads the recorded state.
    fn new(p: Prepared, opts: &'a Options, tx: Sender) -> Result<ApplyRun<'a>, EngineError> {
        let Prepared {
            loaded,
            state_dir,
            selected,
            systems,
            derivations,
            contexts,
            topology_hash,
        } = p;
        let end = NodeEnd {
            st: Mutex::new(State::load(&state_dir)?),
            tx,
            goal: opts.goal,
            timeout: Duration::from_secs(
                opts.confirm_timeout
                    .unwrap_or(loaded.cluster.confirm_timeout_s),
            ),
            state_dir,
            contexts,
            topology_hash,
            secrets: Secrets::default(),
        };
        Ok(ApplyRun {
            cluster: loaded.cluster,
            selected,
            systems,
            derivations,
            opts,
            rt: runtime(opts.parallel),
            end: Arc::new(end),
            done: BTreeMap::new(),
        })
    }

    /// The secrets its nodes get (none unless set: rollback writes none).
    fn set_secrets(&mut self, s: Secrets) {
        if let Some(end) = Arc::get_mut(&mut self.end) {
            end.secrets = s;
        }
    }

    /// Opens every selected node (connect, lock, decide any activation in flight, read its
    /// system); a node that cannot be opened is done here, with why.
    fn open(&mut self, saved: Option<&Plan>) -> Vec<Arc<Session>> {
        let targets: Vec<_> = self
            .selected
            .iter()
            .map(|n| {
                let t = target_for(
                    &self.cluster,
                    n,
                    &self.end.state(),
                    self.opts,
                    &self.end.state_dir,
                );
                let expected = saved
                    .and_then(|pl| pl.nodes.iter().find(|x| &x.node == n))
                    .map(|x| x.current.clone());
                (n.clone(), t, expected)
            })
            .collect();
        let (systems, tx) = (self.systems.clone(), self.end.tx.clone());
        let (goal, timeout) = (self.end.goal, self.end.timeout);
        let opened = parallel_map(
            &self.rt,
            self.opts.parallel,
            targets,
            move |(name, t, expected)| {
                open_node(&name, t, &systems[&name], goal, timeout, expected, &tx)
            },
        );
        let mut sessions = Vec::new();
        for o in opened {
            match o {
                Ok(s) => sessions.push(Arc::new(s)),
                Err(r) => {
                    self.done.insert(r.0.node.clone(), r);
                }
            }
        }
        sessions
    }

    /// Gets the systems onto the nodes that need them: closures fanned out or copied (see
    /// `fanout`), or with `--build-on nodes` derivations that each node builds (`node_build`).
    fn distribute(&self, sessions: &[Arc<Session>]) -> Deliveries {
        let needing: Vec<Arc<Session>> =
            sessions.iter().filter(|s| !s.unchanged).cloned().collect();
        if !self.derivations.is_empty() {
            return crate::node_build::build_on_nodes(
                &self.rt,
                &needing,
                &self.derivations,
                self.opts.parallel,
                &self.end.tx,
            );
        }
        crate::fanout::copy_closures(
            &self.rt,
            &needing,
            &self.cluster,
            &self.end.state_dir,
            self.opts.parallel,
            self.opts.fanout,
            &self.end.tx,
        )
    }

    /// Finishes the opened nodes wave by wave (see [`waves`]).
    fn activate(&mut self, sessions: Vec<Arc<Session>>, deliveries: Deliveries) {
        // Nodes that never got a session are recorded now; every other node the moment it is
        // done, so a controller killed mid-apply leaves a state that knows each finished node
        // (and the host key it was first seen with).
        for (name, r) in &self.done {
            self.end.record(name, r);
        }
        let deliveries = Arc::new(deliveries);
        for wave in waves(&self.cluster, &sessions, |s| s.name.as_str()) {
            let (end, deliveries) = (self.end.clone(), deliveries.clone());
            let out = parallel_map(
                &self.rt,
                self.opts.parallel,
                wave,
                move |s: Arc<Session>| end.node(&s, deliveries.get(&s.name)),
            );
            for r in out {
                self.done.insert(r.0.node.clone(), r);
            }
        }
    }

    /// The report: every node's result, in the order the nodes were selected.
    fn finish(mut self) -> ApplyReport {
        let nodes = self
            .selected
            .iter()
            .filter_map(|n| self.done.remove(n))
            .map(|r| r.0)
            .collect();
        ApplyReport {
            goal: self.opts.goal,
            nodes,
        }
    }
}

/// What finishing an opened node needs, shared with the worker threads: activate it, unlock
/// it, and record it in the state.
struct NodeEnd {
    tx: Sender,
    goal: Goal,
    timeout: Duration,
    st: Mutex<State>,
    state_dir: PathBuf,
    contexts: BTreeMap<String, Value>,
    topology_hash: String,
    /// Each node's secrets, written around its activation.
    secrets: Secrets,
}

impl NodeEnd {
    fn state(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Activates an opened node (unless its closure did not arrive), unlocks and records it.
    fn node(
        &self,
        s: &Session,
        delivery: Option<&Result<Delivery, FanoutError>>,
    ) -> (NodeResult, Option<HostKey>) {
        let copy_error = delivery.and_then(|d| d.as_ref().err().map(|e| e.to_string()));
        let secrets = self.secrets.for_node(&s.name);
        let mut r = finish_node(s, self.goal, self.timeout, copy_error, secrets, &self.tx);
        unlock(s);
        r.closure = delivery.and_then(|d| d.as_ref().ok().cloned());
        let r = (r, s.key.clone());
        self.record(&s.name, &r);
        r
    }

    /// Updates and saves the state after each node, so a controller killed mid-apply leaves a
    /// file that describes every node it finished.
    fn record(&self, name: &str, r: &(NodeResult, Option<HostKey>)) {
        let mut s = self.state();
        let e: &mut NodeState = s.nodes.entry(name.to_string()).or_default();
        if let Some(k) = &r.1 {
            e.host_key = Some(k.clone());
        }
        e.last_result = Some(r.0.result.to_string());
        if r.0.result.applied() {
            e.system = r.0.system.clone();
            e.generation = r.0.generation.or(e.generation);
            e.options = Some(self.contexts.get(name).cloned().unwrap_or_default());
            e.applied_at = Some(now());
            s.topology_hash = Some(self.topology_hash.clone());
        }
        let _ = s.save(&self.state_dir);
    }
}

/// The activation order: first the nodes others connect to when they start (Zenoh routers and
/// the Ray head), then the rest, each wave in the given order.
fn waves<T: Clone>(c: &Cluster, items: &[T], name: impl Fn(&T) -> &str) -> [Vec<T>; 2] {
    let first = |n: &str| {
        c.node(n)
            .is_some_and(|x| x.is(Role::ZenohRouter) || x.is(Role::RayHead))
    };
    let (a, b): (Vec<T>, Vec<T>) = items.iter().cloned().partition(|x| first(name(x)));
    [a, b]
}

/// One opened node's end: nothing to do but its secrets when it already runs its system, the
/// copy's failure when its closure did not arrive, only the copy for `--goal push`, else its
/// activation between its "before" and "after" secrets; then its `done` event. A secret that
/// cannot be written fails the node (before activation: nothing is activated), and its
/// `secrets` step's failure is the node's last event.
fn finish_node(
    s: &Session,
    goal: Goal,
    timeout: Duration,
    copy_error: Option<String>,
    secrets: &[Arc<Material>],
    tx: &Sender,
) -> NodeResult {
    let (name, system) = (s.name.as_str(), s.system.as_str());
    let uploads = secrets::goal_uploads(goal);
    let deliver = |when: Option<SecretWhen>| match uploads {
        true => secrets::deliver(s.host.as_ref(), name, secrets, when, tx),
        false => Ok(()),
    };
    let r = if s.unchanged {
        // Its system runs already: every secret is written now.
        if let Err(e) = deliver(None) {
            return result(name, system, NodeOutcome::Failed, e, s.generation);
        }
        let msg = "already on this system".into();
        result(name, system, NodeOutcome::Unchanged, msg, s.generation)
    } else if let Some(e) = copy_error {
        // The copy phase has already ended in this failure: no `done` event of its own.
        return result(name, system, NodeOutcome::Failed, e, s.generation);
    } else if goal == Goal::Push {
        let msg = "closure copied".into();
        result(name, system, NodeOutcome::Pushed, msg, s.generation)
    } else {
        if let Err(e) = deliver(Some(SecretWhen::Before)) {
            let msg = format!("not activated: {e}");
            return result(name, system, NodeOutcome::Failed, msg, s.generation);
        }
        let mut r = activate_node(s, goal, timeout, tx);
        if r.result == NodeOutcome::Confirmed
            && let Err(e) = deliver(Some(SecretWhen::After))
        {
            r.result = NodeOutcome::Failed;
            r.message = format!("activated and confirmed, but {e}");
            return r;
        }
        r
    };
    let (state, shown) = done_event(&r);
    emit(tx, name, Phase::Done, state, shown);
    r
}

/// Activates the node's new system under the confirm protocol, then reads the generation it
/// is on from a new connection.
fn activate_node(s: &Session, goal: Goal, timeout: Duration, tx: &Sender) -> NodeResult {
    let (name, system) = (s.name.as_str(), s.system.as_str());
    let verb = goal.verb().unwrap_or_default();
    emit(tx, name, Phase::Activate, Ev::Started, verb);
    let on_state = |x: &str| emit(tx, name, Phase::Activate, Ev::Progress, x);
    let outcome = activate::activate(s.host.as_ref(), system, goal, timeout, &on_state)
        .unwrap_or_else(|e| Outcome::Unknown(e.to_string()));
    let after = s
        .host
        .fresh()
        .ok()
        .and_then(|f| activate::current(f.as_ref()).ok());
    let generation = after.as_ref().and_then(|a| a.1).or(s.generation);
    let (kind, msg) = match outcome {
        Outcome::Confirmed => (NodeOutcome::Confirmed, "activated and confirmed".into()),
        Outcome::Failed(m) => (NodeOutcome::Failed, m),
        Outcome::RolledBack(m) => (NodeOutcome::RolledBack, m),
        Outcome::Unknown(m) => (NodeOutcome::Unknown, m),
    };
    result(name, system, kind, msg, generation)
}

/// A finished node's `done` event from its result: the new generation when it confirmed,
/// else its message.
fn done_event(r: &NodeResult) -> (Ev, String) {
    let state = match r.result {
        NodeOutcome::Unchanged => Ev::Skipped,
        NodeOutcome::Confirmed | NodeOutcome::Pushed | NodeOutcome::Built => Ev::Ok,
        NodeOutcome::RolledBack => Ev::RolledBack,
        NodeOutcome::Failed | NodeOutcome::Unreachable | NodeOutcome::Unknown => Ev::Failed,
    };
    let shown = if r.result == NodeOutcome::Confirmed {
        let g = r.generation.map(|g| g.to_string());
        format!("generation {}", g.unwrap_or("-".into()))
    } else {
        r.message.clone()
    };
    (state, shown)
}

/// What apply decides per node, against scripted nodes and the example cluster.
#[cfg(test)]
mod decisions {
    #[test]
    fn rollback_picks_the_generation_before_or_the_one_asked_for() {
        let listing = "1 /nix/store/a-sys\n3 /nix/store/c-sys\n2 /nix/store/b-sys\n4 /nix/store/d-sys\ncurrent system-3-link\n";
        assert_eq!(
            super::pick_generation(listing, None),
            Ok((2, "/nix/store/b-sys".into()))
        );
        assert_eq!(
            super::pick_generation(listing, Some(4)),
            Ok((4, "/nix/store/d-sys".into())),
            "forward to a newer generation is allowed when asked"
        );
        let e = super::pick_generation(listing, Some(3)).unwrap_err();
        assert!(e.contains("already runs generation 3"), "{e}");
        let e = super::pick_generation(listing, Some(9)).unwrap_err();
        assert!(e.contains("no generation 9 (it has 1, 2, 3, 4)"), "{e}");
        let e =
            super::pick_generation("1 /nix/store/a\ncurrent system-1-link\n", None).unwrap_err();
        assert!(e.contains("no generation before 1"), "{e}");
        let e = super::pick_generation("", None).unwrap_err();
        assert!(e.contains("names no generation"), "{e}");
    }

    use std::path::Path;

    use super::*;
    use crate::fake::{FakeHost, exit, ok};
    use crate::host::Host;

    fn example() -> Cluster {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge-lab.toml");
        edgectl_model::load(&p, &Default::default())
            .expect("the example loads")
            .cluster
    }

    #[test]
    fn routers_and_the_ray_head_go_first() {
        let c = example();
        let names: Vec<String> = ["worker2", "head", "worker1", "worker3"]
            .map(String::from)
            .to_vec();
        let [first, rest] = waves(&c, &names, |s| s.as_str());
        assert_eq!(first, ["head"]);
        assert_eq!(rest, ["worker2", "worker1", "worker3"], "order kept");
        // A worker turned router joins the first wave.
        let mut c = c;
        c.nodes
            .iter_mut()
            .find(|n| n.name == "worker3")
            .unwrap()
            .roles
            .insert(Role::ZenohRouter);
        let [first, _] = waves(&c, &names, |s| s.as_str());
        assert_eq!(first, ["head", "worker3"]);
    }

    fn session(h: &FakeHost, unchanged: bool) -> Session {
        Session {
            name: "n1".into(),
            host: Box::new(h.clone()),
            key: h.host_key(),
            system: "/nix/store/new".into(),
            current: Some("/nix/store/old".into()),
            generation: Some(3),
            unchanged,
            lock_owner: "edgectl test".into(),
        }
    }

    fn finish(s: &Session, goal: Goal, copy_error: Option<&str>) -> NodeResult {
        finish_seen(s, goal, copy_error).0
    }

    /// [`finish_node`], and the events it sent as (phase, state, message).
    fn finish_seen(
        s: &Session,
        goal: Goal,
        copy_error: Option<&str>,
    ) -> (NodeResult, Vec<(Phase, Ev, String)>) {
        finish_events(s, goal, copy_error, &[])
    }

    /// [`finish_node`] with `secrets`, and the events it sent as (phase, state, message).
    fn finish_events(
        s: &Session,
        goal: Goal,
        copy_error: Option<&str>,
        secrets: &[Arc<Material>],
    ) -> (NodeResult, Vec<(Phase, Ev, String)>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let r = finish_node(
            s,
            goal,
            Duration::from_secs(5),
            copy_error.map(String::from),
            secrets,
            &tx,
        );
        let seen = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| (e.phase, e.state, e.message))
            .collect();
        (r, seen)
    }

    #[test]
    fn nothing_is_activated_where_nothing_changed_or_the_copy_failed_or_only_a_push_was_asked() {
        let h = FakeHost::new("n1");
        let r = finish(&session(&h, true), Goal::Switch, None);
        assert_eq!(r.result, NodeOutcome::Unchanged);
        assert_eq!(r.generation, Some(3));
        let r = finish(&session(&h, false), Goal::Switch, Some("disk full"));
        assert_eq!(r.result, NodeOutcome::Failed);
        assert_eq!(r.message, "disk full");
        let r = finish(&session(&h, false), Goal::Push, None);
        assert_eq!(r.result, NodeOutcome::Pushed);
        assert!(h.calls().is_empty(), "{:?}", h.calls());
    }

    #[test]
    fn a_confirmed_activation_reports_the_new_generation() {
        let h = FakeHost::new("n1");
        h.on_name("edgectl-launch", |_| ok(""));
        h.on_name("edgectl-status", |_| ok("done"));
        h.on_name("edgectl-current", |_| ok("/nix/store/new\nsystem-4-link\n"));
        let r = finish(&session(&h, false), Goal::Switch, None);
        assert_eq!(r.result, NodeOutcome::Confirmed, "{}", r.message);
        assert_eq!(r.generation, Some(4));
        assert_eq!(r.system.as_deref(), Some("/nix/store/new"));
    }

    #[test]
    fn each_finished_node_ends_in_one_done_event_unless_its_copy_already_failed() {
        let h = FakeHost::new("n1");
        let done = |ev: Ev, m: &str| vec![(Phase::Done, ev, m.to_string())];
        let (_, seen) = finish_seen(&session(&h, true), Goal::Switch, None);
        assert_eq!(seen, done(Ev::Skipped, "already on this system"));
        let (_, seen) = finish_seen(&session(&h, false), Goal::Push, None);
        assert_eq!(seen, done(Ev::Ok, "closure copied"));
        let (_, seen) = finish_seen(&session(&h, false), Goal::Switch, Some("disk full"));
        assert_eq!(seen, [], "the copy phase reported the failure");
    }

    #[test]
    fn an_activation_starts_with_its_verb_and_ends_with_the_generation() {
        let h = FakeHost::new("n1");
        h.on_name("edgectl-launch", |_| ok(""));
        h.on_name("edgectl-status", |_| ok("done"));
        h.on_name("edgectl-current", |_| ok("/nix/store/new\nsystem-4-link\n"));
        let (_, seen) = finish_seen(&session(&h, false), Goal::Boot, None);
        assert_eq!(
            seen.first(),
            Some(&(Phase::Activate, Ev::Started, "boot".to_string()))
        );
        assert_eq!(
            seen.last(),
            Some(&(Phase::Done, Ev::Ok, "generation 4".to_string()))
        );
        let middle = &seen[1..seen.len() - 1];
        assert!(
            middle
                .iter()
                .all(|(p, e, _)| (*p, *e) == (Phase::Activate, Ev::Progress)),
            "{seen:?}"
        );
    }

    #[test]
    fn the_done_event_says_how_the_node_ended() {
        let r = |o: NodeOutcome, generation: Option<u64>| {
            done_event(&result("n1", "/nix/store/new", o, "why".into(), generation))
        };
        assert_eq!(
            r(NodeOutcome::Confirmed, Some(7)),
            (Ev::Ok, "generation 7".into())
        );
        assert_eq!(
            r(NodeOutcome::Confirmed, None),
            (Ev::Ok, "generation -".into())
        );
        assert_eq!(
            r(NodeOutcome::Unchanged, Some(7)),
            (Ev::Skipped, "why".into())
        );
        assert_eq!(r(NodeOutcome::Pushed, None), (Ev::Ok, "why".into()));
        assert_eq!(
            r(NodeOutcome::RolledBack, None),
            (Ev::RolledBack, "why".into())
        );
        for o in [
            NodeOutcome::Failed,
            NodeOutcome::Unknown,
            NodeOutcome::Unreachable,
        ] {
            assert_eq!(r(o, None), (Ev::Failed, "why".into()), "{o}");
        }
    }

    /// A secret for n1, in /run/keys.
    fn secret(name: &str, when: SecretWhen) -> Arc<Material> {
        secret_at(name, when, &format!("/run/keys/{name}"))
    }

    fn secret_at(name: &str, when: SecretWhen, dest: &str) -> Arc<Material> {
        let s = edgectl_model::Secret {
            name: name.into(),
            source: edgectl_model::SecretSource::File(name.into()),
            dest: dest.into(),
            owner: "root".into(),
            group: "root".into(),
            mode: 0o400,
            nodes: vec!["n1".into()],
            when,
        };
        Arc::new(Material::new(&s, format!("bytes of {name}").into_bytes()))
    }

    /// A node that activates and confirms, and takes every secret.
    fn activating_node() -> FakeHost {
        let h = FakeHost::new("n1");
        h.on_name("edgectl-launch", |_| ok(""));
        h.on_name("edgectl-status", |_| ok("done"));
        h.on_name("edgectl-current", |_| ok("/nix/store/new\nsystem-4-link\n"));
        h.on_name("edgectl-secret-dir", |_| ok(""));
        h.on_name("edgectl-secret-place", |_| ok(""));
        h
    }

    /// The node's calls, in order: script names, and `upload DEST` for each upload.
    fn steps(h: &FakeHost) -> Vec<String> {
        h.calls()
            .iter()
            .filter_map(|c| match c {
                crate::fake::Call::Upload { path, .. } => Some(format!("upload {path}")),
                c => c.script_name().map(String::from),
            })
            .filter(|n| n != "edgectl-status")
            .collect()
    }

    fn finish_with(
        h: &FakeHost,
        unchanged: bool,
        goal: Goal,
        secrets: &[Arc<Material>],
    ) -> (NodeResult, Vec<(Phase, Ev, String)>) {
        finish_events(&session(h, unchanged), goal, None, secrets)
    }

    #[test]
    fn before_secrets_precede_the_activation_and_after_ones_follow_its_confirmation() {
        let h = activating_node();
        let list = [
            secret("late", SecretWhen::After),
            secret("early", SecretWhen::Before),
        ];
        let (r, seen) = finish_with(&h, false, Goal::Switch, &list);
        assert_eq!(r.result, NodeOutcome::Confirmed, "{}", r.message);
        assert_eq!(
            steps(&h),
            [
                "edgectl-secret-dir",
                "upload /run/keys/early.edgectl-secret",
                "edgectl-secret-place",
                "edgectl-launch",
                "edgectl-current",
                "edgectl-secret-dir",
                "upload /run/keys/late.edgectl-secret",
                "edgectl-secret-place",
            ]
        );
        let secrets: Vec<&String> = seen
            .iter()
            .filter(|e| e.0 == Phase::Secrets && e.1 == Ev::Started)
            .map(|e| &e.2)
            .collect();
        assert_eq!(
            secrets,
            [
                "writing early (before activation)",
                "writing late (after activation)"
            ]
        );
        assert_eq!(
            seen.last(),
            Some(&(Phase::Done, Ev::Ok, "generation 4".to_string()))
        );
    }

    #[test]
    fn a_secret_that_cannot_be_written_before_activation_fails_the_node_unactivated() {
        let h = activating_node();
        h.on_name("edgectl-secret-place", |_| {
            exit(1, "chown: invalid user: 'ray:root'")
        });
        let list = [
            secret("tok", SecretWhen::Before),
            secret("late", SecretWhen::After),
        ];
        let (r, seen) = finish_with(&h, false, Goal::Switch, &list);
        assert_eq!(r.result, NodeOutcome::Failed);
        assert_eq!(
            r.message,
            "not activated: secret `tok` (/run/keys/tok): exit 1: chown: invalid user: 'ray:root'"
        );
        assert!(
            !steps(&h).iter().any(|s| s == "edgectl-launch"),
            "{:?}",
            steps(&h)
        );
        assert_eq!(
            seen.last().map(|e| (e.0, e.1)),
            Some((Phase::Secrets, Ev::Failed)),
            "the failed step is the node's last event"
        );
    }

    #[test]
    fn an_after_secret_that_fails_fails_the_confirmed_node_and_keeps_its_generation() {
        let h = activating_node();
        h.on_name("edgectl-secret-dir", |a| {
            if a[0] == "/var/lib/app" {
                exit(1, "mkdir: read-only file system")
            } else {
                ok("")
            }
        });
        let late = secret_at("late", SecretWhen::After, "/var/lib/app/late");
        let (r, _) = finish_with(&h, false, Goal::Switch, &[late]);
        assert_eq!(r.result, NodeOutcome::Failed);
        assert!(
            r.message
                .starts_with("activated and confirmed, but secret `late` (/var/lib/app/late)"),
            "{}",
            r.message
        );
        assert_eq!(r.generation, Some(4));
    }

    #[test]
    fn no_after_secret_for_a_node_that_rolled_back() {
        let h = activating_node();
        h.on_name("edgectl-status", |_| ok("failed 3"));
        let (r, _) = finish_with(
            &h,
            false,
            Goal::Switch,
            &[secret("late", SecretWhen::After)],
        );
        assert_eq!(r.result, NodeOutcome::Failed);
        assert!(
            !h.calls()
                .iter()
                .any(|c| matches!(c, crate::fake::Call::Upload { .. })),
            "{:?}",
            steps(&h)
        );
    }

    #[test]
    fn an_unchanged_node_gets_every_secret_and_push_or_dry_activate_none() {
        let list = [
            secret("a", SecretWhen::Before),
            secret("b", SecretWhen::After),
        ];
        let h = activating_node();
        let (r, seen) = finish_with(&h, true, Goal::Switch, &list);
        assert_eq!(r.result, NodeOutcome::Unchanged);
        assert_eq!(
            steps(&h)
                .iter()
                .filter(|s| s.starts_with("upload"))
                .collect::<Vec<_>>(),
            [
                "upload /run/keys/a.edgectl-secret",
                "upload /run/keys/b.edgectl-secret"
            ]
        );
        assert_eq!(
            seen[0],
            (Phase::Secrets, Ev::Started, "writing a, b".into())
        );
        for goal in [Goal::Push, Goal::DryActivate] {
            let h = activating_node();
            let (r, _) = finish_with(&h, false, goal, &list);
            assert!(!r.failed(), "{goal:?}: {}", r.message);
            assert!(
                !h.calls()
                    .iter()
                    .any(|c| matches!(c, crate::fake::Call::Upload { .. })),
                "{goal:?}: {:?}",
                steps(&h)
            );
        }
    }

    fn end(dir: &Path, goal: Goal) -> NodeEnd {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        NodeEnd {
            tx,
            goal,
            timeout: Duration::from_secs(5),
            st: Mutex::new(State::load(dir).unwrap()),
            state_dir: dir.to_path_buf(),
            contexts: [(
                "n1".to_string(),
                serde_json::json!({"ray": {"enable": true}}),
            )]
            .into(),
            topology_hash: "h1".into(),
            secrets: Secrets::default(),
        }
    }

    #[test]
    fn a_node_is_recorded_as_applied_only_when_it_runs_the_new_system() {
        let dir = tempfile::tempdir().unwrap();
        let h = FakeHost::new("n1");
        let e = end(dir.path(), Goal::Switch);
        let failed = result(
            "n1",
            "/nix/store/new",
            NodeOutcome::RolledBack,
            "late".into(),
            Some(3),
        );
        e.record("n1", &(failed, h.host_key()));
        let st = State::load(dir.path()).unwrap();
        let n = &st.nodes["n1"];
        assert_eq!(n.last_result.as_deref(), Some("rolled-back"));
        assert_eq!(n.host_key, h.host_key(), "the key is pinned even so");
        assert_eq!(
            (&n.system, &n.options, &st.topology_hash),
            (&None, &None, &None)
        );

        let ok = result(
            "n1",
            "/nix/store/new",
            NodeOutcome::Confirmed,
            String::new(),
            None,
        );
        e.record("n1", &(ok, None));
        let st = State::load(dir.path()).unwrap();
        let n = &st.nodes["n1"];
        assert_eq!(n.last_result.as_deref(), Some("confirmed"));
        assert_eq!(n.system.as_deref(), Some("/nix/store/new"));
        assert_eq!(
            n.options,
            Some(serde_json::json!({"ray": {"enable": true}}))
        );
        assert_eq!(n.host_key, h.host_key(), "kept when none was seen");
        assert_eq!(st.topology_hash.as_deref(), Some("h1"));
    }

    #[test]
    fn a_finished_node_is_unlocked_recorded_and_keeps_where_its_closure_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let h = FakeHost::new("n1");
        h.on_name("edgectl-unlock", |_| ok(""));
        let from = Delivery {
            from: crate::fanout::Source::Controller,
            seed: None,
            fallback_reason: None,
            auto: None,
        };
        let e = end(dir.path(), Goal::Push);
        let (r, key) = e.node(&session(&h, false), Some(&Ok(from.clone())));
        assert_eq!(r.result, NodeOutcome::Pushed, "{}", r.message);
        assert_eq!(r.closure, Some(from));
        assert_eq!(key, h.host_key());
        assert_eq!(h.scripts(), ["edgectl-unlock"]);
        let st = State::load(dir.path()).unwrap();
        assert_eq!(st.nodes["n1"].last_result.as_deref(), Some("pushed"));

        // A closure that did not arrive: failed with the copy's error, and unlocked too.
        let lost = FanoutError::Controller("disk full".into());
        let (r, _) =
            end(dir.path(), Goal::Switch).node(&session(&h, false), Some(&Err(lost.clone())));
        assert_eq!(
            (r.result, r.message),
            (NodeOutcome::Failed, lost.to_string())
        );
        assert_eq!(r.closure, None);
        assert_eq!(h.scripts(), ["edgectl-unlock", "edgectl-unlock"]);
    }
}
