//! `apply`: open every selected node, deliver the closures, activate wave by wave (routers
//! and the Ray head first), and record each node the moment it is done.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgectl_model::Role;
use serde_json::Value;

use crate::activate::{self, Goal, Outcome};
use crate::event::{Phase, Sender, State as Ev, emit};
use crate::host::{Host, HostKey, SshTarget};
use crate::pool::{parallel_map, runtime};
use crate::report::{ApplyReport, NodeOutcome, NodeResult, Plan, result};
use crate::run::{EngineError, Options, prepare, target_for};
use crate::session::{Heartbeat, Session, open_node, unlock};
use crate::state::{Lock, NodeState, State, now};

/// Applies the topology (or a saved plan, which must still match the cluster): open every
/// selected node (connect, lock, inspect), distribute the closures (fanned out over the
/// cluster LAN, or copied per node), then activate wave by wave, routers and the Ray head first.
pub fn apply(
    topology: &Path,
    saved: Option<&Plan>,
    opts: &Options,
    tx: Sender,
) -> Result<ApplyReport, EngineError> {
    let state_dir = crate::state::dir_for(topology);
    let _lock = Lock::acquire(&state_dir)?;
    let p = prepare(topology, opts, &tx, true)?;
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
    let first = |n: &str| {
        c.node(n)
            .is_some_and(|x| x.is(Role::ZenohRouter) || x.is(Role::RayHead))
    };
    let waves: [Vec<Arc<Session>>; 2] = [
        sessions
            .iter()
            .filter(|s| first(&s.name))
            .cloned()
            .collect(),
        sessions
            .iter()
            .filter(|s| !first(&s.name))
            .cloned()
            .collect(),
    ];
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
    let outcome = activate::activate(&s.host, system, goal, timeout, &on_state)
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
        e.host_key = Some(k.fingerprint.clone());
        e.host_key_public = Some(k.public.clone());
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
