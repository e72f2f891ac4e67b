//! `apply`: open every selected node, deliver the closures, activate wave by wave (routers
//! and the Ray head first), and record each node the moment it is done.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgectl_model::{Cluster, Role};
use serde_json::Value;

use crate::activate::{self, Goal, Outcome};
use crate::event::{Phase, Sender, State as Ev, emit};
use crate::host::{HostKey, SshTarget};
use crate::pool::{parallel_map, runtime};
use crate::report::{ApplyReport, NodeOutcome, NodeResult, Plan, result};
use crate::run::{EngineError, Options, Run, prepare, target_for};
use crate::session::{Heartbeat, Session, open_node, unlock};
use crate::state::{Lock, NodeState, State, now};

/// Applies the topology (or a saved plan, which must still match the cluster): open every
/// selected node (connect, lock, inspect), distribute the closures (fanned out over the
/// cluster LAN, or copied per node), then activate wave by wave, routers and the Ray head first.
pub fn apply(
    run: Run,
    saved: Option<&Plan>,
    opts: &Options,
    tx: Sender,
) -> Result<ApplyReport, EngineError> {
    let _lock = Lock::acquire(&run.state_dir)?;
    let p = prepare(run, opts, &tx, true)?;
    if let Some(plan) = saved
        && plan.topology_hash != p.topology_hash
    {
        return Err(EngineError::Failed(
            "the topology changed since this plan was made; run `edgectl plan` again".into(),
        ));
    }
    if opts.goal == Goal::Build {
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
        return Ok(ApplyReport {
            goal: opts.goal,
            nodes,
        });
    }
    let st = Arc::new(Mutex::new(State::load(&p.state_dir)?));
    let timeout = Duration::from_secs(
        opts.confirm_timeout
            .unwrap_or(p.loaded.cluster.confirm_timeout_s),
    );
    let c = &p.loaded.cluster;
    let rt = runtime(opts.parallel);

    // 1. Open every node.
    let targets: Vec<(String, SshTarget, Option<Option<String>>)> = p
        .selected
        .iter()
        .map(|n| {
            let t = target_for(
                c,
                n,
                &st.lock().unwrap_or_else(|e| e.into_inner()),
                opts,
                &p.state_dir,
            );
            let expected = saved
                .and_then(|pl| pl.nodes.iter().find(|x| &x.node == n))
                .map(|x| x.current.clone());
            (n.clone(), t, expected)
        })
        .collect();
    let opened: Vec<Result<Session, (NodeResult, Option<HostKey>)>> =
        parallel_map(&rt, opts.parallel, targets, {
            let (systems, tx, goal) = (p.systems.clone(), tx.clone(), opts.goal);
            move |(name, t, expected)| {
                open_node(&name, t, &systems[&name], goal, timeout, expected, &tx)
            }
        });
    let mut finished: BTreeMap<String, (NodeResult, Option<HostKey>)> = BTreeMap::new();
    let mut sessions: Vec<Arc<Session>> = Vec::new();
    for o in opened {
        match o {
            Ok(s) => sessions.push(Arc::new(s)),
            Err(r) => {
                finished.insert(r.0.node.clone(), r);
            }
        }
    }

    let _heartbeat = Heartbeat::start(sessions.clone());

    // 2. Distribute closures to the nodes that need them.
    let needing: Vec<Arc<Session>> = sessions.iter().filter(|s| !s.unchanged).cloned().collect();
    let deliveries = crate::fanout::copy_closures(
        &rt,
        &needing,
        c,
        &p.state_dir,
        opts.parallel,
        opts.fanout,
        &tx,
    );
    let copy_errors: BTreeMap<String, String> = deliveries
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| (n.clone(), e.clone())))
        .collect();

    // 3. Activate, wave by wave.
    let waves = waves(c, &sessions, |s| s.name.as_str());
    // Nodes that never got a session are recorded now; every other node the moment it is
    // done, so a controller killed mid-apply leaves a state that knows each finished node
    // (and the host key it was first seen with).
    for (name, r) in &finished {
        record(
            &st,
            &p.state_dir,
            name,
            r,
            p.contexts[name].clone(),
            &p.topology_hash,
        );
    }
    let deliveries = Arc::new(deliveries);
    for wave in waves {
        let out = parallel_map(&rt, opts.parallel, wave, {
            let (tx, copy_errors, goal) = (tx.clone(), copy_errors.clone(), opts.goal);
            let (st, dir, contexts, hash, deliveries) = (
                st.clone(),
                p.state_dir.clone(),
                p.contexts.clone(),
                p.topology_hash.clone(),
                deliveries.clone(),
            );
            move |s: Arc<Session>| {
                let mut r = finish_node(&s, goal, timeout, copy_errors.get(&s.name).cloned(), &tx);
                unlock(&s);
                r.closure = deliveries
                    .get(&s.name)
                    .and_then(|d| d.as_ref().ok().cloned());
                let r = (r, s.key.clone());
                let ctx = contexts.get(&s.name).cloned().unwrap_or_default();
                record(&st, &dir, &s.name, &r, ctx, &hash);
                r
            }
        });
        for r in out {
            finished.insert(r.0.node.clone(), r);
        }
    }
    let mut results = Vec::new();
    for name in &p.selected {
        if let Some(r) = finished.remove(name) {
            results.push(r.0);
        }
    }
    Ok(ApplyReport {
        goal: opts.goal,
        nodes: results,
    })
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

fn finish_node(
    s: &Session,
    goal: Goal,
    timeout: Duration,
    copy_error: Option<String>,
    tx: &Sender,
) -> NodeResult {
    let (name, system) = (s.name.as_str(), s.system.as_str());
    if s.unchanged {
        emit(tx, name, Phase::Done, Ev::Skipped, "already on this system");
        return result(
            name,
            system,
            NodeOutcome::Unchanged,
            "already on this system".into(),
            s.generation,
        );
    }
    if let Some(e) = copy_error {
        return result(name, system, NodeOutcome::Failed, e, s.generation);
    }
    if goal == Goal::Push {
        emit(tx, name, Phase::Done, Ev::Ok, "closure copied");
        return result(
            name,
            system,
            NodeOutcome::Pushed,
            "closure copied".into(),
            s.generation,
        );
    }
    emit(
        tx,
        name,
        Phase::Activate,
        Ev::Started,
        goal.verb().unwrap_or_default(),
    );
    let on_state = |x: &str| emit(tx, name, Phase::Activate, Ev::Progress, x);
    let outcome = activate::activate(s.host.as_ref(), system, goal, timeout, &on_state)
        .unwrap_or_else(|e| Outcome::Unknown(e.to_string()));
    let after = s
        .host
        .fresh()
        .ok()
        .and_then(|f| activate::current(f.as_ref()).ok());
    let generation = after.as_ref().and_then(|a| a.1).or(s.generation);
    let (kind, msg, ev) = match outcome {
        Outcome::Confirmed => (
            NodeOutcome::Confirmed,
            "activated and confirmed".to_string(),
            Ev::Ok,
        ),
        Outcome::Failed(m) => (NodeOutcome::Failed, m, Ev::Failed),
        Outcome::RolledBack(m) => (NodeOutcome::RolledBack, m, Ev::RolledBack),
        Outcome::Unknown(m) => (NodeOutcome::Unknown, m, Ev::Failed),
    };
    let shown = if kind == NodeOutcome::Confirmed {
        format!(
            "generation {}",
            generation.map(|g| g.to_string()).unwrap_or("-".into())
        )
    } else {
        msg.clone()
    };
    emit(tx, name, Phase::Done, ev, shown);
    result(name, system, kind, msg, generation)
}

/// Updates and saves the state after each node, so a controller killed mid-apply leaves a
/// file that describes every node it finished.
fn record(
    st: &Mutex<State>,
    dir: &Path,
    name: &str,
    r: &(NodeResult, Option<HostKey>),
    ctx: Value,
    hash: &str,
) {
    let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
    let e: &mut NodeState = s.nodes.entry(name.to_string()).or_default();
    if let Some(k) = &r.1 {
        e.host_key = Some(k.clone());
    }
    e.last_result = Some(r.0.result.to_string());
    if r.0.result.applied() {
        e.system = r.0.system.clone();
        e.generation = r.0.generation.or(e.generation);
        e.options = Some(ctx);
        e.applied_at = Some(now());
        s.topology_hash = Some(hash.to_string());
    }
    let _ = s.save(dir);
}

/// What apply decides per node, against scripted nodes and the example cluster.
#[cfg(test)]
mod decisions {
    use super::*;
    use crate::fake::{FakeHost, ok};
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
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        finish_node(
            s,
            goal,
            Duration::from_secs(5),
            copy_error.map(String::from),
            &tx,
        )
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
}
