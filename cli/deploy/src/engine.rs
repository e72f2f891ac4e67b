//! plan and apply: evaluate every selected host once, then per node (bounded in parallel,
//! routers and the Ray head first) connect, compare, copy, activate with confirmation, record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgectl_model::{Cluster, Diagnostics, LoadOptions, Loaded, Role};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::activate::{self, Goal, Outcome};
use crate::event::{Phase, Sender, State as Ev, emit};
use crate::host::{Host, HostError, HostKey, SshHost, SshTarget, argv, write_known_hosts};
use crate::nixcmd::{self, ClosureDiff, NixArgs};
use crate::state::{Lock, NodeState, State, now};

#[derive(Debug, Clone)]
pub struct Options {
    pub on: Option<String>,
    pub parallel: usize,
    pub goal: Goal,
    pub confirm_timeout: Option<u64>,
    pub identity: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub nix: NixArgs,
    pub load: LoadOptions,
    /// Upload each closure once and spread it over the cluster LAN (see `fanout`).
    pub fanout: crate::fanout::Fanout,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            on: None,
            parallel: 8,
            goal: Goal::Switch,
            confirm_timeout: None,
            identity: None,
            connect_timeout: Duration::from_secs(10),
            nix: NixArgs::default(),
            load: LoadOptions::default(),
            fanout: crate::fanout::Fanout::On,
        }
    }
}

#[derive(Debug)]
pub enum EngineError {
    Invalid(Diagnostics),
    Failed(String),
}

impl From<String> for EngineError {
    fn from(s: String) -> Self {
        EngineError::Failed(s)
    }
}

/// A stable 64-bit FNV-1a, so saved plans can be compared across runs and builds.
fn fnv(bytes: impl IntoIterator<Item = u8>) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

pub(crate) struct Prepared {
    pub(crate) loaded: Loaded,
    pub(crate) state_dir: PathBuf,
    pub(crate) selected: Vec<String>,
    pub(crate) systems: BTreeMap<String, String>,
    pub(crate) contexts: BTreeMap<String, Value>,
    pub(crate) topology_hash: String,
}

pub(crate) fn prepare(
    topology: &Path,
    opts: &Options,
    tx: &Sender,
    build: bool,
) -> Result<Prepared, EngineError> {
    let mut loaded = edgectl_model::load(topology, &opts.load).map_err(EngineError::Invalid)?;
    // Facts that `edgectl install` found (boot disk, root file system) shape the system.
    let state_dir0 = crate::state::dir_for(topology);
    for n in &mut loaded.cluster.nodes {
        if let Some(f) = crate::install::InstallState::load(&state_dir0, &n.name).facts {
            n.boot_disk = Some(f.boot.disk.clone());
            n.root_device = Some(f.boot.root_device.clone());
        }
    }
    let selected = crate::select::select(&loaded.cluster, opts.on.as_deref())?;
    boot_facts_known(&loaded, &selected, topology)?;
    let state_dir = crate::state::dir_for(topology);
    crate::state::ensure(&state_dir)?;
    let files = edgectl_render::render(&loaded.cluster).map_err(|e| e.to_string())?;
    let topology_hash = fnv(files.iter().flat_map(|(k, v)| k.bytes().chain(v.bytes())));
    let flake = state_dir.join("flake");
    edgectl_render::write::write_dir(&flake, &files, true).map_err(|e| e.to_string())?;
    let contexts = loaded
        .cluster
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                edgectl_render::host::context(&loaded.cluster, n),
            )
        })
        .collect();
    let mut p = Prepared {
        loaded,
        state_dir,
        selected,
        systems: BTreeMap::new(),
        contexts,
        topology_hash,
    };
    if build {
        p.systems = build_systems(&p, opts, tx)?;
    }
    Ok(p)
}

/// Evaluates and builds the selected hosts' systems from the flake `prepare` wrote.
fn build_systems(
    p: &Prepared,
    opts: &Options,
    tx: &Sender,
) -> Result<BTreeMap<String, String>, EngineError> {
    emit(
        tx,
        "",
        Phase::Evaluate,
        Ev::Started,
        format!("evaluating and building {} host(s)", p.selected.len()),
    );
    let systems = nixcmd::build_toplevels(&p.state_dir.join("flake"), &p.selected, &opts.nix)?;
    emit(
        tx,
        "",
        Phase::Evaluate,
        Ev::Ok,
        format!("built {} system(s)", systems.len()),
    );
    Ok(systems)
}

pub(crate) fn target_for(
    c: &Cluster,
    node: &str,
    st: &State,
    opts: &Options,
    state_dir: &Path,
) -> SshTarget {
    let n = c.node(node).expect("selected nodes exist");
    let ns = st.nodes.get(node);
    let pinned = ns.and_then(|s| match (&s.host_key, &s.host_key_public) {
        (Some(f), Some(p)) => Some(HostKey {
            fingerprint: f.clone(),
            public: p.clone(),
        }),
        _ => None,
    });
    SshTarget {
        node: node.to_string(),
        host: n.host.clone(),
        port: n.port,
        user: n.user.clone(),
        identity: opts.identity.clone(),
        connect_timeout: opts.connect_timeout,
        pinned,
        known_hosts: state_dir.join("known_hosts").join(node),
    }
}

/// Connects and makes the node's key known to OpenSSH too (for `nix copy`).
pub(crate) fn connect(t: SshTarget) -> Result<SshHost, HostError> {
    let h = SshHost::connect(t.clone())?;
    if let Some(k) = h.host_key() {
        let _ = write_known_hosts(&t.known_hosts, &[(t.host.clone(), t.port, k)]);
    }
    Ok(h)
}

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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OptionChange {
    pub option: String,
    pub old: Value,
    pub new: Value,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    New,
    Changed,
    Unchanged,
    Unreachable,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodePlan {
    pub node: String,
    pub change: Change,
    pub current: Option<String>,
    pub target: String,
    pub option_changes: Vec<OptionChange>,
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub closure: Option<ClosureDiff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The holder of the node's lock when an apply was running there during the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_in_progress: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub topology: String,
    pub topology_hash: String,
    pub nodes: Vec<NodePlan>,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.change, Change::New | Change::Changed))
    }
    pub fn has_unreachable(&self) -> bool {
        self.nodes.iter().any(|n| n.change == Change::Unreachable)
    }
}

pub(crate) fn runtime(parallel: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(parallel.clamp(1, 64) + 2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn plan(topology: &Path, opts: &Options, tx: Sender) -> Result<Plan, EngineError> {
    let mut p = prepare(topology, opts, &tx, false)?;
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
        topology: topology.display().to_string(),
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
    format!(
        "readlink -f \"$1\" 2>/dev/null || echo; readlink \"$1\" 2>/dev/null || echo\nshift\n{LOCK_HELD}"
    )
}

fn inspect(name: &str, t: SshTarget, tx: &Sender) -> Result<Probe, String> {
    emit(
        tx,
        name,
        Phase::Connect,
        Ev::Started,
        format!("{}@{}", t.user, t.host),
    );
    let h = connect(t).map_err(|e| {
        emit(tx, name, Phase::Connect, Ev::Failed, e.to_string());
        e.to_string()
    })?;
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

#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub node: String,
    /// unchanged, confirmed, built, pushed, failed, rolled-back, unreachable, unknown
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    pub message: String,
    /// Where the node's closure came from, when this apply copied one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closure: Option<crate::fanout::Delivery>,
}

impl NodeResult {
    pub fn failed(&self) -> bool {
        !matches!(
            self.result.as_str(),
            "unchanged" | "confirmed" | "built" | "pushed"
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub goal: Goal,
    pub nodes: Vec<NodeResult>,
}

impl ApplyReport {
    pub fn any_failed(&self) -> bool {
        self.nodes.iter().any(NodeResult::failed)
    }
}

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
                result: "built".into(),
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
    let deliveries = crate::fanout::deliver(
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

/// Every node boots through CloudLab's chain loader from a disk and root file system that
/// only the machine can tell: without them the system would guess (`/dev/sda`), switch fine,
/// and never come back from its next reboot. So plan and apply refuse, before building or
/// connecting, and say how to learn them.
fn boot_facts_known(
    loaded: &Loaded,
    selected: &[String],
    topology: &Path,
) -> Result<(), EngineError> {
    let unknown: Vec<&str> = loaded
        .cluster
        .nodes
        .iter()
        .filter(|n| selected.contains(&n.name))
        .filter(|n| n.boot_disk.is_none() || n.root_device.is_none())
        .map(|n| n.name.as_str())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(EngineError::Failed(format!(
        "{}: the boot disk and root device of {} are unknown, so the built system could not boot again after its next reboot. Record them with `edgectl install {} --on {} --until facts` (read-only), or set `boot_disk` and `root_device` (stable /dev/disk/by-* names) in each [[node]]",
        topology.display(),
        unknown.join(", "),
        topology.display(),
        unknown.join(",")
    )))
}

/// Runs `f` over `items` on blocking threads, at most `parallel` at once, keeping their order.
pub(crate) fn parallel_map<I, O, F>(
    rt: &tokio::runtime::Runtime,
    parallel: usize,
    items: Vec<I>,
    f: F,
) -> Vec<O>
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(I) -> O + Send + Sync + Clone + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    rt.block_on(async {
        let mut handles = Vec::new();
        for item in items {
            let (sem, f) = (sem.clone(), f.clone());
            handles.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                tokio::task::spawn_blocking(move || f(item))
                    .await
                    .expect("worker")
            }));
        }
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("worker"));
        }
        out
    })
}

/// A node opened for deployment: connected, locked, inspected.
pub struct Session {
    pub name: String,
    pub host: SshHost,
    pub key: Option<HostKey>,
    pub system: String,
    pub current: Option<String>,
    pub generation: Option<u64>,
    /// Already on the target (goal switch): nothing to copy or activate.
    pub unchanged: bool,
    /// What this run wrote into the node's lock (see [`lock_owner`]).
    pub lock_owner: String,
}

fn result(
    name: &str,
    system: &str,
    result: &str,
    msg: String,
    generation: Option<u64>,
) -> NodeResult {
    NodeResult {
        node: name.into(),
        result: result.into(),
        system: Some(system.into()),
        generation,
        message: msg,
        closure: None,
    }
}

pub(crate) fn open_node(
    name: &str,
    t: SshTarget,
    system: &str,
    goal: Goal,
    timeout: Duration,
    expected_current: Option<Option<String>>,
    tx: &Sender,
) -> Result<Session, (NodeResult, Option<HostKey>)> {
    emit(
        tx,
        name,
        Phase::Connect,
        Ev::Started,
        format!("{}@{}:{}", t.user, t.host, t.port),
    );
    let h = match connect(t) {
        Ok(h) => h,
        Err(e) => {
            emit(tx, name, Phase::Connect, Ev::Failed, e.to_string());
            let kind = if matches!(e, HostError::HostKeyChanged { .. }) {
                "failed"
            } else {
                "unreachable"
            };
            return Err((result(name, system, kind, e.to_string(), None), None));
        }
    };
    let key = h.host_key();
    emit(
        tx,
        name,
        Phase::Connect,
        Ev::Ok,
        key.as_ref()
            .map(|k| k.fingerprint.clone())
            .unwrap_or_default(),
    );
    let owner = lock_owner();
    let stale_min = LOCK_STALE_MIN.to_string();
    let mut steal = String::new();
    loop {
        match h.run(
            &argv([
                "sh",
                "-c",
                NODE_LOCK,
                "edgectl-lock",
                &owner,
                &stale_min,
                &steal,
            ]),
            true,
        ) {
            Ok(o) if o.ok() => {
                if let Some(from) = o.stdout.trim().strip_prefix("took over from: ") {
                    emit(
                        tx,
                        name,
                        Phase::Connect,
                        Ev::Warning,
                        format!("took over the node lock of an apply that is gone ({from})"),
                    );
                }
                break;
            }
            Ok(o) => {
                let holder = o.stdout.trim().to_string();
                if steal.is_empty() && holder_is_dead(&holder) {
                    emit(
                        tx,
                        name,
                        Phase::Connect,
                        Ev::Progress,
                        format!("taking over the lock of a killed apply ({holder})"),
                    );
                    steal = holder;
                    continue;
                }
                return Err((
                    result(
                        name,
                        system,
                        "failed",
                        format!("node is locked by another apply ({holder})"),
                        None,
                    ),
                    key,
                ));
            }
            Err(e) => {
                return Err((
                    result(name, system, "unreachable", e.to_string(), None),
                    key,
                ));
            }
        }
    }
    let fail = |r: NodeResult| {
        let _ = h.run(
            &argv(["sh", "-c", NODE_UNLOCK, "edgectl-unlock", &owner]),
            true,
        );
        Err((r, key.clone()))
    };
    if let Err(e) = wait_for_in_flight(&h, timeout + Duration::from_secs(30), name, tx) {
        return fail(result(name, system, "failed", e, None));
    }
    let (cur, generation) = match activate::current(&h) {
        Ok(c) => c,
        Err(e) => return fail(result(name, system, "unreachable", e.to_string(), None)),
    };
    if let Some(exp) = expected_current
        && exp != cur
    {
        return fail(result(
            name,
            system,
            "failed",
            "the node changed since the plan was made; run `edgectl plan` again".into(),
            generation,
        ));
    }
    let unchanged = goal == Goal::Switch && cur.as_deref() == Some(system);
    Ok(Session {
        name: name.into(),
        host: h,
        key,
        system: system.into(),
        current: cur,
        generation,
        unchanged,
        lock_owner: owner,
    })
}

/// Frees the node's lock if it is still this run's: a lock another controller took over
/// (this one was judged dead) is theirs now and stays.
/// After a reboot (install) the session is dead: then a fresh connection frees it.
pub(crate) fn unlock(s: &Session) {
    let a = argv(["sh", "-c", NODE_UNLOCK, "edgectl-unlock", &s.lock_owner]);
    if s.host.run(&a, true).is_err()
        && let Ok(f) = s.host.fresh()
    {
        let _ = f.run(&a, true);
    }
}

/// Keeps this run's node locks fresh while it works, so a long apply never looks abandoned;
/// stops (and is joined) when dropped.
pub(crate) struct Heartbeat {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    pub(crate) fn start(sessions: Vec<Arc<Session>>) -> Heartbeat {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut since = std::time::Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if since.elapsed() < LOCK_HEARTBEAT {
                    continue;
                }
                since = std::time::Instant::now();
                for s in &sessions {
                    let _ = s.host.run(
                        &argv([
                            "sh",
                            "-c",
                            NODE_HEARTBEAT,
                            "edgectl-heartbeat",
                            &s.lock_owner,
                        ]),
                        true,
                    );
                }
            }
        });
        Heartbeat {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
            "unchanged",
            "already on this system".into(),
            s.generation,
        );
    }
    if let Some(e) = copy_error {
        return result(name, system, "failed", e, s.generation);
    }
    if goal == Goal::Push {
        emit(tx, name, Phase::Done, Ev::Ok, "closure copied");
        return result(
            name,
            system,
            "pushed",
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
        Outcome::Confirmed => ("confirmed", "activated and confirmed".to_string(), Ev::Ok),
        Outcome::Failed(m) => ("failed", m, Ev::Failed),
        Outcome::RolledBack(m) => ("rolled-back", m, Ev::RolledBack),
        Outcome::Unknown(m) => ("unknown", m, Ev::Failed),
    };
    let shown = if kind == "confirmed" {
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
    e.last_result = Some(r.0.result.clone());
    if matches!(r.0.result.as_str(), "confirmed" | "unchanged") {
        e.system = r.0.system.clone();
        e.generation = r.0.generation.or(e.generation);
        e.options = Some(ctx);
        e.applied_at = Some(now());
        s.topology_hash = Some(hash.to_string());
    }
    let _ = s.save(dir);
}

/// How often a run refreshes its node locks, and after how many minutes without a refresh a
/// lock counts as abandoned (a controller that lost its network or was killed elsewhere).
const LOCK_HEARTBEAT: Duration = Duration::from_secs(30);
const LOCK_STALE_MIN: u64 = 5;

/// Takes the node lock: `sh -c NODE_LOCK edgectl-lock OWNER STALE_MIN [DEAD_OWNER]`. A free lock
/// is taken; a held one only when its owner is DEAD_OWNER (proven dead by the caller) or it has
/// not been refreshed for STALE_MIN minutes, and then as a compare-and-swap under a mutex of its
/// own, so two controllers that both judged the holder dead cannot both win. Prints the owner
/// it took over from, or the holder and exit 1.
const NODE_LOCK: &str = r#"d=/nix/var/edgectl; l=$d/lock; me=$1; stale=$2; dead=$3
mkdir -p "$d" || exit 1
take() { printf '%s\n' "$me" > "$l/owner.tmp" && mv "$l/owner.tmp" "$l/owner" && touch "$l/heartbeat"; }
if mkdir "$l" 2>/dev/null; then take; exit $?; fi
m=$d/lock-takeover
if mkdir "$m" 2>/dev/null || { [ -n "$(find "$m" -maxdepth 0 -mmin +1 2>/dev/null)" ] && rm -rf "$m" && mkdir "$m" 2>/dev/null; }; then
  cur=$(cat "$l/owner" 2>/dev/null)
  rc=1
  if [ -n "$dead" ] && [ "$cur" = "$dead" ]; then
    take && rc=0
  elif [ -z "$(find "$l/heartbeat" "$l" -maxdepth 0 -mmin -"$stale" 2>/dev/null)" ]; then
    take && rc=0
  fi
  rmdir "$m"
  if [ "$rc" = 0 ]; then echo "took over from: $cur"; exit 0; fi
fi
cat "$l/owner" 2>/dev/null; exit 1
"#;

/// Prints the holder of the node lock if one is held and alive (refreshed within STALE_MIN).
const LOCK_HELD: &str = r#"l=/nix/var/edgectl/lock
[ -f "$l/owner" ] || exit 0
[ -n "$(find "$l/heartbeat" "$l" -maxdepth 0 -mmin -"$1" 2>/dev/null)" ] && cat "$l/owner"
exit 0
"#;

/// Who is applying to this node right now, if anyone: `plan` and `verify` take no lock (they
/// change nothing), but what they read may change under them, and they say so.
pub fn apply_in_progress(h: &dyn Host) -> Option<String> {
    let o = h
        .run(
            &argv([
                "sh",
                "-c",
                LOCK_HELD,
                "edgectl-lock-held",
                &LOCK_STALE_MIN.to_string(),
            ]),
            true,
        )
        .ok()?;
    let holder = o.stdout.trim();
    (!holder.is_empty()).then(|| holder.to_string())
}

/// Refreshes the lock if it is still OWNER's (`$1`).
const NODE_HEARTBEAT: &str = r#"l=/nix/var/edgectl/lock
[ "$(cat "$l/owner" 2>/dev/null)" = "$1" ] && touch "$l/heartbeat"
"#;

/// Frees the lock if it is still OWNER's (`$1`); exit 1 otherwise.
pub(crate) const NODE_UNLOCK: &str = r#"l=/nix/var/edgectl/lock
[ "$(cat "$l/owner" 2>/dev/null)" = "$1" ] && rm -rf "$l"
"#;

/// Who holds a node lock: this run, on this controller machine (`machine-id`, so two laptops
/// both called "laptop" are never mistaken for one), in this process (pid and its start time, so
/// a reused pid is never mistaken for the holder).
pub fn lock_owner() -> String {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(activate::token);
    let pid = std::process::id();
    format!(
        "edgectl user={} host={} machine={} pid={pid} start={} run={run}",
        whoami(),
        hostname(),
        machine_id(),
        start_time(pid).unwrap_or(0)
    )
}

fn field<'a>(owner: &'a str, key: &str) -> Option<&'a str> {
    owner
        .split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
}

/// Whether the holder of a lock is provably gone: a process of this very machine that no
/// longer exists, or whose pid now belongs to a process started at another time.
pub fn holder_is_dead(holder: &str) -> bool {
    let (Some(machine), Some(pid), Some(start)) = (
        field(holder, "machine"),
        field(holder, "pid").and_then(|p| p.parse::<u32>().ok()),
        field(holder, "start").and_then(|s| s.parse::<u64>().ok()),
    ) else {
        return false;
    };
    machine == machine_id() && start_time(pid) != Some(start)
}

/// This machine's identity: /etc/machine-id, or the host name where there is none.
fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("host-{}", hostname()))
}

/// A process's start time (clock ticks since boot), field 22 of /proc/PID/stat.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// An earlier activation (from a controller that was killed) must be decided first: one whose
/// process lives is waited for; one whose process is gone is decided now (see
/// `activate::RESOLVE_BODY`), so nothing can later roll back what we install.
fn wait_for_in_flight(
    h: &dyn Host,
    limit: Duration,
    name: &str,
    tx: &Sender,
) -> Result<(), String> {
    let end = std::time::Instant::now() + limit;
    let mut told = false;
    let script = activate::resolve_script();
    loop {
        let o = h
            .run(&argv(["sh", "-c", &script, "edgectl-resolve"]), true)
            .map_err(|e| e.to_string())?;
        let mut pending = Vec::new();
        for l in o.stdout.lines() {
            if let Some(t) = l.strip_prefix("pending ") {
                pending.push(t.to_string());
            } else if let Some(r) = l.strip_prefix("resolved ") {
                let (t, what) = r.split_once(' ').unwrap_or((r, ""));
                emit(
                    tx,
                    name,
                    Phase::Activate,
                    Ev::Warning,
                    format!(
                        "an earlier activation ({t}) whose process was gone is now decided: {what}"
                    ),
                );
            }
        }
        let pending = pending.join(", ");
        if pending.is_empty() {
            return Ok(());
        }
        if !told {
            emit(
                tx,
                name,
                Phase::Activate,
                Ev::Progress,
                format!("waiting for an earlier activation to confirm or roll back ({pending})"),
            );
            told = true;
        }
        if std::time::Instant::now() > end {
            return Err(format!(
                "an earlier activation ({pending}) is still undecided; try again later"
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "controller".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a lock script against a node state folder at `d` instead of /nix/var/edgectl.
    fn lock_script(script: &str, d: &Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script.replace("/nix/var/edgectl", d.to_str().unwrap()))
            .arg("edgectl-test")
            .args(args)
            .output()
            .unwrap()
    }

    fn owner_of(d: &Path) -> String {
        std::fs::read_to_string(d.join("lock/owner"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    #[test]
    fn the_node_lock_is_taken_kept_fresh_and_freed_only_by_its_holder() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        assert!(lock_script(NODE_LOCK, d, &["A", "5", ""]).status.success());
        assert_eq!(owner_of(d), "A");
        // Held and fresh: refused, and the holder is named.
        let o = lock_script(NODE_LOCK, d, &["B", "5", ""]);
        assert!(!o.status.success());
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "A");
        // Only the holder refreshes or frees it.
        let stamp = || {
            std::fs::metadata(d.join("lock/heartbeat"))
                .unwrap()
                .modified()
                .unwrap()
        };
        let old = std::process::Command::new("touch")
            .args(["-d", "10 minutes ago"])
            .arg(d.join("lock/heartbeat"))
            .status()
            .unwrap();
        assert!(old.success());
        let before = stamp();
        assert!(!lock_script(NODE_HEARTBEAT, d, &["B"]).status.success());
        assert_eq!(stamp(), before);
        assert!(!lock_script(NODE_UNLOCK, d, &["B"]).status.success());
        assert_eq!(owner_of(d), "A");
        assert!(lock_script(NODE_HEARTBEAT, d, &["A"]).status.success());
        assert!(stamp() > before);
        // A lock not refreshed for longer than STALE_MIN minutes is taken over, and said so.
        std::process::Command::new("touch")
            .args(["-d", "10 minutes ago"])
            .arg(d.join("lock/heartbeat"))
            .arg(d.join("lock"))
            .status()
            .unwrap();
        let o = lock_script(NODE_LOCK, d, &["B", "5", ""]);
        assert!(o.status.success());
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "took over from: A"
        );
        assert_eq!(owner_of(d), "B");
        // A holder the caller proved dead is taken over at once.
        let o = lock_script(NODE_LOCK, d, &["C", "5", "B"]);
        assert!(o.status.success());
        assert_eq!(owner_of(d), "C");
        assert!(lock_script(NODE_UNLOCK, d, &["C"]).status.success());
        assert!(!d.join("lock").exists());
    }

    #[test]
    fn two_controllers_taking_over_the_same_dead_holder_cannot_both_win() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        for round in 0..20 {
            let _ = std::fs::remove_dir_all(d.join("lock"));
            assert!(
                lock_script(NODE_LOCK, d, &["DEAD", "5", ""])
                    .status
                    .success()
            );
            let (a, b) = std::thread::scope(|s| {
                let a = s.spawn(|| lock_script(NODE_LOCK, d, &["A", "5", "DEAD"]));
                let b = s.spawn(|| lock_script(NODE_LOCK, d, &["B", "5", "DEAD"]));
                (a.join().unwrap(), b.join().unwrap())
            });
            let won = [&a, &b].iter().filter(|o| o.status.success()).count();
            assert_eq!(won, 1, "round {round}: {a:?} {b:?}");
            let winner = if a.status.success() { "A" } else { "B" };
            assert_eq!(owner_of(d), winner);
        }
    }

    #[test]
    fn a_holder_is_dead_only_when_provably_gone_from_this_machine() {
        let me = lock_owner();
        assert!(
            field(&me, "run").is_some() && field(&me, "start").is_some(),
            "{me}"
        );
        assert!(!holder_is_dead(&me), "this very process is alive");
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let gone = c.id();
        c.wait().unwrap();
        let dead = me.replace(
            &format!("pid={}", std::process::id()),
            &format!("pid={gone}"),
        );
        assert!(holder_is_dead(&dead), "{dead}");
        // A live pid with another start time is a reused pid: its holder is gone too.
        let reused = me.replace(
            &format!("start={}", field(&me, "start").unwrap()),
            "start=1",
        );
        assert!(holder_is_dead(&reused));
        // Another machine's controller, even with this host name: never judged from here.
        let elsewhere = dead.replace(
            &format!("machine={}", field(&me, "machine").unwrap()),
            "machine=0123456789abcdef",
        );
        assert!(!holder_is_dead(&elsewhere));
        assert!(!holder_is_dead("alice@laptop pid 12"));
    }

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

    #[test]
    fn hashes_are_fnv1a_64() {
        // The published FNV-1a 64-bit test vectors (Fowler, Noll and Vo's test suite).
        assert_eq!(fnv(*b""), "cbf29ce484222325");
        assert_eq!(fnv(*b"a"), "af63dc4c8601ec8c");
        assert_eq!(fnv(*b"foobar"), "85944171f73967e8");
        assert_eq!(fnv(*b"chongo was here!\n"), "46810940eff5f915");
    }
}
