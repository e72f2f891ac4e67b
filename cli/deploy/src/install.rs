//! `edgectl install`: Ubuntu (CloudLab's images) to NixOS, as resumable phases per node, each
//! checked before the next, following the NixOS manual's "Installing from another Linux
//! distribution" (system profile, /etc/NIXOS, /etc/NIXOS_LUSTRATE, `switch-to-configuration
//! boot`). Completed phases are recorded in `.edgectl/install/<node>.json`, so an install killed
//! at any point resumes from the phase that had not completed.
//!
//! [`install`] runs the phases in order as methods of one `Install`; each node's work in a
//! phase runs on a worker thread as a method of `Worker`, wrapped by [`step`] so the phase
//! always ends in an ok or failed event. What a node still needs is decided once, from its
//! record alone, by `resume_from`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::event::{Phase, Sender, State as Ev, emit, step};
use crate::facts::{self, NodeFacts};
use crate::host::{Host, HostError, HostKey, SshTarget, argv};
pub use crate::install_state::{InstallState, Step};
use crate::pool::{parallel_map, runtime};
use crate::run::{EngineError, Options, Run, prepare, target_for};
use crate::session::{Heartbeat, Session, open_node, unlock};
use crate::state::{Lock, State, now};

#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub dry_run: bool,
    /// Recorded outputs of the phase-1 commands, `DIR/<node>/<name>` (for tests and audits).
    pub facts_from: Option<PathBuf>,
    /// How to reboot; the default waits for the boot id to change.
    pub reboot_command: Option<Vec<String>>,
    /// Stop after this phase.
    pub until: Option<Step>,
    /// The Nix store path to ship to nodes without a usable Nix (default: the controller's own,
    /// when it lives in /nix/store).
    pub nix_from: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstallResult {
    pub node: String,
    /// The phase it resumed from (None: nothing left to do).
    pub resumed_from: Option<Step>,
    pub done: Vec<Step>,
    pub ok: bool,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

/// Lists the node's SSH host key files: `sh -c LIST_HOST_KEYS edgectl-host-keys`.
const LIST_HOST_KEYS: &str = include_str!("sh/list_host_keys.sh");

/// What NIXOS_LUSTRATE keeps, from what [`LIST_HOST_KEYS`] found: the SSH host keys, so the
/// node's identity (and the fingerprint edgectl pinned) survive the switch. Only files the
/// node has (the boot copies each back from /old-root, and a missing one fails that step);
/// none at all is refused, since NixOS would make new keys that edgectl then refuses.
pub(crate) fn lustrate_list(found: &str) -> Result<String, String> {
    let keep: Vec<&str> = found
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("etc/ssh/ssh_host_") && !l.contains(char::is_whitespace))
        .collect();
    if !keep.iter().any(|k| !k.ends_with(".pub")) {
        return Err("the node has no SSH host key in /etc/ssh to keep: NixOS would make new ones, which edgectl refuses as a changed host key; check the node's sshd".into());
    }
    Ok(keep.iter().map(|k| format!("{k}\n")).collect())
}

const SWITCH: &str = node_script!("sh/install_switch.sh");
const SWITCH_STATUS: &str = node_script!("sh/install_switch_status.sh");
/// Where the node keeps a copy of its `hardware/<node>.toml` (it survives lustration).
const HARDWARE_COPY: &str = concat!(state_dir!(), "/hardware.toml");

const REBOOT: &str = include_str!("sh/reboot_detached.sh");

/// What a run does on one node, decided from its record alone, before anything connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resume {
    /// The first phase not done, reported as `resumed_from` (None: nothing left to do).
    pub(crate) from: Option<Step>,
    /// The phases this run works on, in order: each not done and not after `--until`. Nothing
    /// after facts runs on a node that has already rebooted into NixOS.
    pub(crate) todo: Vec<Step>,
    /// Whether the node goes on past facts: its system is built (and listed by a dry run), and
    /// it is opened and locked, even when every phase up to `--until` is done already.
    pub(crate) opens: bool,
}

/// Why a root with `free` bytes cannot take a closure of `closure` bytes, if it cannot.
pub(crate) fn short_of_room(free: u64, closure: u64) -> Option<String> {
    let need = closure + facts::ROOM_MARGIN;
    (free < need).then(|| {
        format!(
            "the system's closure takes {} MiB and {} MiB more should stay free on /, but phase 1 found {} MiB free; free space on the node (or use a node type with a larger boot disk), then install again",
            closure >> 20,
            facts::ROOM_MARGIN >> 20,
            free >> 20
        )
    })
}

/// Whether `record` copied (and maybe switched to) another system than `system`, the one the
/// topology builds now, before the node rebooted into it: then its copy and switch are stale.
pub(crate) fn stale_copy(record: &InstallState, system: &str) -> bool {
    record.has(Step::Copy)
        && !record.has(Step::Reboot)
        && record.system.as_deref().is_some_and(|s| s != system)
}

pub(crate) fn resume_from(record: &InstallState, until: Option<Step>) -> Resume {
    let opens = !record.has(Step::Reboot) && until != Some(Step::Facts);
    let todo = Step::ALL
        .into_iter()
        .filter(|s| !record.has(*s) && until.is_none_or(|u| *s <= u))
        .filter(|s| *s == Step::Facts || opens)
        .collect();
    Resume {
        from: Step::ALL.into_iter().find(|s| !record.has(*s)),
        todo,
        opens,
    }
}

/// How the controller reaches a node: a new connection, its host key checked against the pin.
type Connect = Arc<dyn Fn(SshTarget) -> Result<Box<dyn Host>, HostError> + Send + Sync>;

fn ssh() -> Connect {
    Arc::new(|t| crate::session::connect(t).map(|h| Box::new(h) as Box<dyn Host>))
}

pub fn install(
    run: Run,
    opts: &Options,
    io: &InstallOptions,
    tx: Sender,
) -> Result<Vec<InstallResult>, EngineError> {
    install_with(run, opts, io, tx, ssh())
}

fn install_with(
    run: Run,
    opts: &Options,
    io: &InstallOptions,
    tx: Sender,
    connect: Connect,
) -> Result<Vec<InstallResult>, EngineError> {
    let _lock = Lock::acquire(&run.state_dir)?;
    let mut i = Install::new(run, opts, io, tx, connect)?;
    i.check_records();
    i.facts()?;
    let ready = i.ready();
    if ready.is_empty() {
        return Ok(i.finish());
    }
    i.login_gate(&ready)?;
    let systems = i.build(&ready)?;
    i.forget_stale_copies(&systems);
    i.check_room(&systems);
    i.check_boot(&systems);
    if io.dry_run {
        i.dry_run(&ready, &systems);
        return Ok(i.finish());
    }
    // Phases 2 to 4 need a session with the node's lock held.
    let sessions = i.open(&ready, &systems);
    let heartbeat = Heartbeat::start(sessions.clone());
    i.nix(&sessions);
    i.copy(&sessions);
    let saved = i.switch_and_reboot(&sessions);
    drop(heartbeat);
    for s in &sessions {
        unlock(s);
    }
    saved?;
    Ok(i.finish())
}

/// One node in the run.
struct Node {
    /// What install recorded there, as it stands now.
    record: InstallState,
    resume: Resume,
    /// Why a phase failed there: later phases leave the node alone, and its result says this.
    failed: Option<String>,
    /// What a dry run would run there.
    commands: Vec<String>,
}

impl Node {
    fn wants(&self, s: Step) -> bool {
        self.failed.is_none() && self.resume.todo.contains(&s)
    }
}

/// One `edgectl install`: the run, its options, the controller's state, and every node.
struct Install<'a> {
    run: Run,
    opts: &'a Options,
    io: &'a InstallOptions,
    tx: Sender,
    rt: tokio::runtime::Runtime,
    /// Pinned host keys and installed systems, saved after facts and after the reboots.
    state: State,
    nodes: BTreeMap<String, Node>,
    worker: Worker,
}

impl<'a> Install<'a> {
    fn new(
        run: Run,
        opts: &'a Options,
        io: &'a InstallOptions,
        tx: Sender,
        connect: Connect,
    ) -> Result<Install<'a>, EngineError> {
        let state = State::load(&run.state_dir)?;
        let nodes = run
            .selected
            .iter()
            .map(|n| {
                let record = InstallState::load(&run.state_dir, n);
                let resume = resume_from(&record, io.until);
                let node = Node {
                    record,
                    resume,
                    failed: None,
                    commands: vec![],
                };
                (n.clone(), node)
            })
            .collect();
        let worker = Worker {
            tx: tx.clone(),
            state_dir: run.state_dir.clone(),
            recorded: io.facts_from.clone(),
            reboot: io.reboot_command.clone(),
            wait: REBOOT_WAIT,
            connect,
        };
        Ok(Install {
            rt: runtime(opts.parallel),
            run,
            opts,
            io,
            tx,
            state,
            nodes,
            worker,
        })
    }

    /// A node's work in a phase came back: its record, its failure, the key it answered with.
    fn absorb(&mut self, d: Done) {
        if let Some(k) = d.key {
            let e = self.state.nodes.entry(d.name.clone()).or_default();
            e.host_key.get_or_insert(k);
        }
        let n = self.nodes.get_mut(&d.name).expect("a selected node");
        n.record = d.record;
        if let Err(e) = d.result {
            n.failed = Some(e);
        }
    }

    fn target(&self, node: &str) -> SshTarget {
        let c = &self.run.loaded.cluster;
        target_for(c, node, &self.state, self.opts, &self.run.state_dir)
    }

    /// A record is trusted only while the node is still the one it describes: each node with
    /// one is asked who it is (one command), and a node that was reloaded, or is another
    /// experiment's node of the same name, starts again from phase 1 with a warning. Facts
    /// from `--facts-from` recordings describe another machine by design: not checked.
    fn check_records(&mut self) {
        if self.io.facts_from.is_some() {
            return;
        }
        let jobs: Vec<(String, SshTarget, NodeFacts, bool)> = self
            .nodes
            .iter()
            .filter_map(|(name, n)| {
                let f = n.record.facts.clone()?;
                Some((
                    name.clone(),
                    self.target(name),
                    f,
                    n.record.has(Step::Reboot),
                ))
            })
            .collect();
        let connect = self.worker.connect.clone();
        let found = parallel_map(
            &self.rt,
            self.opts.parallel,
            jobs,
            move |(name, target, f, installed)| {
                let why = connect(target).ok().and_then(|h| {
                    let o = h
                        .run(
                            &argv(["sh", "-c", facts::IDENTITY_PROBE, "edgectl-identity"]),
                            false,
                        )
                        .ok()
                        .filter(|o| o.ok())?;
                    facts::not_the_recorded_node(&f, &o.stdout, installed)
                });
                (name, why)
            },
        );
        for (name, why) in found {
            let Some(why) = why else { continue };
            emit(
                &self.tx,
                &name,
                Phase::Facts,
                Ev::Warning,
                format!(
                    "the install record no longer fits this node: {why}; starting again from phase 1"
                ),
            );
            self.start_over(&name, Step::Facts);
        }
    }

    /// Makes `name` redo `from` and every phase after it: what those recorded (the copied
    /// system; from facts on, everything) is forgotten, and saved at once, so an interrupted
    /// run does not trust it either.
    fn start_over(&mut self, name: &str, from: Step) {
        let n = self.nodes.get_mut(name).expect("a selected node");
        if from == Step::Facts {
            n.record = InstallState::default();
        } else {
            n.record.done.retain(|s| *s < from);
            if from <= Step::Copy {
                n.record.system = None;
            }
        }
        n.resume = resume_from(&n.record, self.io.until);
        let _ = n.record.save(&self.run.state_dir, name);
    }

    /// Phase 1 (read-only), on every node that has not recorded its facts; pins host keys.
    fn facts(&mut self) -> Result<(), EngineError> {
        let c = &self.run.loaded.cluster;
        let jobs: Vec<FactsJob> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.wants(Step::Facts))
            .map(|(name, n)| FactsJob {
                name: name.clone(),
                target: self.target(name),
                macs: c
                    .node(name)
                    .map(|x| x.interfaces.iter().map(|i| i.mac.to_string()).collect())
                    .unwrap_or_default(),
                record: n.record.clone(),
            })
            .collect();
        let w = self.worker.clone();
        for d in parallel_map(&self.rt, self.opts.parallel, jobs, move |j| w.facts(j)) {
            self.absorb(d);
        }
        self.state.save(&self.run.state_dir)?;
        self.keep_hardware_files()
    }

    /// Writes each node's facts to `hardware/<node>.toml` beside the topology, where the
    /// repository keeps them: a fresh clone then builds the same boot chain.
    fn keep_hardware_files(&self) -> Result<(), EngineError> {
        let dir = self.run.topology.parent().unwrap_or(Path::new("."));
        for (name, n) in &self.nodes {
            let Some(f) = &n.record.facts else { continue };
            let h = f.hardware();
            if edgectl_model::hardware::read(dir, name)
                .ok()
                .flatten()
                .as_ref()
                == Some(&h)
            {
                continue;
            }
            let path = edgectl_model::hardware::write(dir, name, &h).map_err(|e| {
                EngineError::Failed(format!(
                    "cannot write {}: {e}",
                    edgectl_model::hardware::path_for(dir, name).display()
                ))
            })?;
            emit(
                &self.tx,
                name,
                Phase::Facts,
                Ev::Progress,
                format!(
                    "machine facts written to {}: keep it in git with the topology",
                    path.display()
                ),
            );
        }
        Ok(())
    }

    /// Before anything is copied: will each built system boot its machine (see `boot_gate`)?
    /// A node whose system would not fails here, unchanged.
    fn check_boot(&mut self, systems: &BTreeMap<String, String>) {
        for (name, system) in systems {
            let n = &self.nodes[name];
            let Some(f) = n.record.facts.as_ref() else {
                continue;
            };
            if !n.wants(Step::Switch) {
                continue;
            }
            if let Err(why) = crate::boot_gate::check(f, Path::new(system)) {
                emit(&self.tx, name, Phase::Switch, Ev::Failed, why.clone());
                self.nodes.get_mut(name).expect("a selected node").failed = Some(why);
            }
        }
    }

    /// The nodes that go on past facts.
    fn ready(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.failed.is_none() && n.resume.opens)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Before any node is switched: NixOS must accept the key this controller logs in with,
    /// or the node is lost at its reboot. Refuses the whole run (nothing changed yet).
    fn login_gate(&self, ready: &[String]) -> Result<(), EngineError> {
        let switching = ready
            .iter()
            .any(|n| self.nodes[n].resume.todo.contains(&Step::Switch));
        if !switching {
            return Ok(());
        }
        let login = crate::login_key::login_keys(self.opts.identity.as_deref())
            .map_err(|e| EngineError::Failed(format!("cannot tell which key edgectl logs in with: {e}; the installed NixOS accepts only cluster.ssh_keys")))?;
        crate::login_key::check(&self.run.loaded.cluster.ssh_keys, &login)
            .map_err(EngineError::Failed)
    }

    /// A node whose recorded copy is another system than the topology builds now (it changed
    /// after `--until copy` or `--until switch`) copies and switches again: otherwise it would
    /// reboot into the old one.
    fn forget_stale_copies(&mut self, systems: &BTreeMap<String, String>) {
        for (name, system) in systems {
            let record = &self.nodes[name].record;
            if !stale_copy(record, system) {
                continue;
            }
            emit(
                &self.tx,
                name,
                Phase::Copy,
                Ev::Warning,
                format!(
                    "the topology changed since {} was copied: copying and switching to {system}",
                    record.system.as_deref().unwrap_or_default()
                ),
            );
            self.start_over(name, Step::Copy);
        }
    }

    /// Before anything is copied: `/` must hold the system's closure and [`facts::ROOM_MARGIN`]
    /// more (NIXOS_LUSTRATE keeps the old root on the same file system); a node short of room
    /// fails here, unchanged.
    fn check_room(&mut self, systems: &BTreeMap<String, String>) {
        let jobs: Vec<(String, String, u64)> = systems
            .iter()
            .filter_map(|(name, system)| {
                let n = &self.nodes[name];
                let free = n.record.facts.as_ref()?.free_root_bytes;
                n.wants(Step::Copy)
                    .then(|| (name.clone(), system.clone(), free))
            })
            .collect();
        // One `nix path-info` per node, side by side: each takes a moment to start.
        let short = parallel_map(
            &self.rt,
            self.opts.parallel,
            jobs,
            |(name, system, free)| {
                let bytes = crate::nixcmd::local_closure(&system)
                    .map(|c| c.iter().map(|p| p.nar_size).sum())
                    .ok();
                (name, bytes.and_then(|b| short_of_room(free, b)))
            },
        );
        for (name, why) in short {
            if let Some(why) = why {
                emit(&self.tx, &name, Phase::Copy, Ev::Failed, why.clone());
                self.nodes.get_mut(&name).expect("a selected node").failed = Some(why);
            }
        }
    }

    /// Builds every ready node's system, with the facts applied, in one evaluation.
    fn build(&self, ready: &[String]) -> Result<BTreeMap<String, String>, EngineError> {
        let mut build = self.run.on(ready.to_vec());
        build.merge_install_facts();
        Ok(prepare(build, self.opts, &self.tx, true)?.systems)
    }

    /// `--dry-run`: every command the later phases would run, per node; nothing runs.
    fn dry_run(&mut self, ready: &[String], systems: &BTreeMap<String, String>) {
        let ship = crate::nodenix::controller_nix(self.io.nix_from.as_deref()).ok();
        let reboot = reboot_argv(self.io.reboot_command.as_deref());
        for name in ready {
            let c = self.run.loaded.cluster.node(name);
            let login = (
                c.map(|x| x.user.as_str()).unwrap_or("root"),
                c.map(|x| x.host.as_str()).unwrap_or(""),
            );
            let n = self.nodes.get_mut(name).expect("a selected node");
            let f = n.record.facts.as_ref().expect("facts recorded");
            let chosen = self.io.nix_from.is_some();
            n.commands = planned((ship.as_deref(), chosen), login, &systems[name], f, &reboot);
        }
    }

    /// Connects to, locks and inspects every ready node.
    fn open(&mut self, ready: &[String], systems: &BTreeMap<String, String>) -> Vec<Arc<Session>> {
        let jobs: Vec<(String, SshTarget, String)> = ready
            .iter()
            .map(|n| (n.clone(), self.target(n), systems[n].clone()))
            .collect();
        let tx = self.tx.clone();
        let opened = parallel_map(&self.rt, self.opts.parallel, jobs, move |(name, t, sys)| {
            let timeout = Duration::from_secs(60);
            open_node(&name, t, &sys, crate::Goal::Boot, timeout, None, &tx)
        });
        let mut sessions = Vec::new();
        for o in opened {
            match o {
                Ok(s) => sessions.push(Arc::new(s)),
                Err((r, _)) => {
                    let n = self.nodes.get_mut(&r.node).expect("a selected node");
                    n.failed = Some(r.message);
                }
            }
        }
        sessions
    }

    /// The sessions of the nodes that still want any of `phases`, with what they want.
    fn jobs(&self, sessions: &[Arc<Session>], phases: &[Step]) -> Vec<NodeJob> {
        sessions
            .iter()
            .filter(|x| phases.iter().any(|p| self.nodes[&x.name].wants(*p)))
            .map(|x| {
                let n = &self.nodes[&x.name];
                NodeJob {
                    session: x.clone(),
                    record: n.record.clone(),
                    todo: n.resume.todo.clone(),
                }
            })
            .collect()
    }

    /// Phase 2, first half: a usable Nix on every node that lacks one.
    fn nix(&mut self, sessions: &[Arc<Session>]) {
        let ship = Arc::new(crate::nodenix::controller_nix(self.io.nix_from.as_deref()));
        let chosen = self.io.nix_from.is_some();
        let jobs = self.jobs(sessions, &[Step::Nix]);
        let w = self.worker.clone();
        for d in parallel_map(&self.rt, self.opts.parallel, jobs, move |j| {
            w.nix(j, &ship, chosen)
        }) {
            self.absorb(d);
        }
    }

    /// Phase 2, second half: the closures (fanned out when several nodes need theirs).
    fn copy(&mut self, sessions: &[Arc<Session>]) {
        let needing: Vec<Arc<Session>> = self
            .jobs(sessions, &[Step::Copy])
            .into_iter()
            .map(|j| j.session)
            .collect();
        if needing.is_empty() {
            return;
        }
        let got = crate::fanout::copy_closures(
            &self.rt,
            &needing,
            &self.run.loaded.cluster,
            &self.run.state_dir,
            self.opts.parallel,
            self.opts.fanout,
            &self.tx,
        );
        for s in &needing {
            let n = self.nodes.get_mut(&s.name).expect("a selected node");
            match got.get(&s.name) {
                Some(Err(e)) => n.failed = Some(e.to_string()),
                Some(Ok(_)) | None => {
                    n.record.done.push(Step::Copy);
                    n.record.system = Some(s.system.clone());
                    // A record lost here only means the copy is checked again next time.
                    let _ = n.record.save(&self.run.state_dir, &s.name);
                }
            }
        }
    }

    /// Phases 3 (switch) and 4 (reboot), one node after the other on each worker, so a node
    /// reboots as soon as it has switched; installed systems go into the state.
    fn switch_and_reboot(&mut self, sessions: &[Arc<Session>]) -> Result<(), EngineError> {
        let jobs = self.jobs(sessions, &[Step::Switch, Step::Reboot]);
        if jobs.is_empty() {
            return Ok(());
        }
        let w = self.worker.clone();
        let outs = parallel_map(&self.rt, self.opts.parallel, jobs, move |j| {
            w.switch_and_reboot(j)
        });
        for d in outs {
            let (name, ok) = (d.name.clone(), d.result.is_ok());
            self.absorb(d);
            let record = &self.nodes[&name].record;
            if ok && record.has(Step::Reboot) {
                let e = self.state.nodes.entry(name.clone()).or_default();
                e.system = record.system.clone();
                e.applied_at = Some(now());
                e.last_result = Some("installed".into());
            }
        }
        self.state.save(&self.run.state_dir)?;
        Ok(())
    }

    /// Every node's result, in name order.
    fn finish(self) -> Vec<InstallResult> {
        self.nodes
            .into_iter()
            .map(|(name, n)| InstallResult {
                node: name,
                resumed_from: n.resume.from,
                done: n.record.done,
                ok: n.failed.is_none(),
                message: n.failed.unwrap_or_default(),
                commands: n.commands,
            })
            .collect()
    }
}

/// A node's facts phase, as a worker thread needs it.
struct FactsJob {
    name: String,
    target: SshTarget,
    /// The node's experiment MACs, from the topology.
    macs: Vec<String>,
    record: InstallState,
}

/// A node's later phases, as a worker thread needs them.
struct NodeJob {
    session: Arc<Session>,
    record: InstallState,
    /// The phases the node still wants (`Resume::todo`).
    todo: Vec<Step>,
}

/// What a node's work on a worker thread brings back.
struct Done {
    name: String,
    record: InstallState,
    result: Result<(), String>,
    /// The host key the node answered with (facts only).
    key: Option<HostKey>,
}

/// How a reboot is waited for: a pause before the first knock, then a knock every `poll`,
/// for at most `limit` in all.
#[derive(Debug, Clone, Copy)]
struct RebootWait {
    settle: Duration,
    poll: Duration,
    limit: Duration,
    /// How long the detached switch may take (grub-install on a slow disk included).
    switch_limit: Duration,
}

const REBOOT_WAIT: RebootWait = RebootWait {
    settle: Duration::from_secs(3),
    poll: Duration::from_secs(2),
    limit: Duration::from_secs(900),
    switch_limit: Duration::from_secs(900),
};

/// What every node's work needs on a worker thread, cloned out of the run.
#[derive(Clone)]
struct Worker {
    tx: Sender,
    state_dir: PathBuf,
    /// `--facts-from`.
    recorded: Option<PathBuf>,
    /// `--reboot-command`.
    reboot: Option<Vec<String>>,
    wait: RebootWait,
    connect: Connect,
}

impl Worker {
    fn facts(&self, j: FactsJob) -> Done {
        let FactsJob {
            name,
            target,
            macs,
            mut record,
        } = j;
        let mut key = None;
        let result = step(&self.tx, &name, Phase::Facts, "reading the node", || {
            let h = (self.connect)(target).map_err(|e| e.to_string())?;
            key = h.host_key();
            let out = match &self.recorded {
                // Recorded facts still require the node to answer, to pin its host key.
                Some(dir) => {
                    drop(h);
                    read_recorded(dir, &name)?
                }
                None => read_live(h.as_ref())?,
            };
            let f = facts::node_facts(&out, &macs)?;
            let said = format!(
                "{} {}; GRUB -> {}; control {}",
                f.os_id, f.os_version, f.boot.grub_device, f.control_interface
            );
            record.facts = Some(f);
            record.done.push(Step::Facts);
            record
                .save(&self.state_dir, &name)
                .map_err(|e| e.to_string())?;
            Ok(((), said))
        });
        Done {
            name,
            record,
            result,
            key,
        }
    }

    fn nix(&self, j: NodeJob, ship: &Result<PathBuf, String>, chosen: bool) -> Done {
        let NodeJob {
            session: s,
            mut record,
            ..
        } = j;
        let result = step(&self.tx, &s.name, Phase::Nix, "checking for Nix", || {
            crate::nodenix::ensure(s.host.as_ref(), ship, chosen).map(|v| ((), v))
        });
        if result.is_ok() {
            record.done.push(Step::Nix);
            // A record lost here only means Nix is checked again next time.
            let _ = record.save(&self.state_dir, &s.name);
        }
        Done {
            name: s.name.clone(),
            record,
            result,
            key: None,
        }
    }

    fn switch_and_reboot(&self, j: NodeJob) -> Done {
        let NodeJob {
            session: s,
            mut record,
            todo,
        } = j;
        let mut result = Ok(());
        if todo.contains(&Step::Switch) {
            result = self.switch(&s, &mut record);
        }
        if result.is_ok() && todo.contains(&Step::Reboot) {
            result = self.reboot(&s, &mut record);
        }
        Done {
            name: s.name.clone(),
            record,
            result,
            key: None,
        }
    }

    /// Phase 3: keep the host keys through the switch, and make NixOS the boot default.
    fn switch(&self, s: &Session, record: &mut InstallState) -> Result<(), String> {
        let what = "NIXOS_LUSTRATE and switch-to-configuration boot";
        step(&self.tx, &s.name, Phase::Switch, what, || {
            let found = s
                .host
                .run(
                    &argv(["sh", "-c", LIST_HOST_KEYS, "edgectl-host-keys"]),
                    true,
                )
                .map_err(|e| e.to_string())?;
            let keep = lustrate_list(&found.stdout)?;
            s.host
                .upload("/etc/NIXOS_LUSTRATE", keep.as_bytes(), 0o644)
                .map_err(|e| e.to_string())?;
            if let Some(f) = &record.facts {
                let text = edgectl_model::hardware::render(&f.hardware(), &s.name);
                s.host
                    .upload(HARDWARE_COPY, text.as_bytes(), 0o644)
                    .map_err(|e| e.to_string())?;
            }
            let grub = record
                .facts
                .as_ref()
                .map(|f| f.boot.grub_device.clone())
                .unwrap_or_default();
            self.detached_switch(s, &grub)?;
            record.done.push(Step::Switch);
            record
                .save(&self.state_dir, &s.name)
                .map_err(|e| e.to_string())?;
            Ok(((), "boots NixOS next".into()))
        })
    }

    /// Starts the switch detached on the node and follows its status file until it ends; a
    /// dropped connection is opened again, and the switch goes on meanwhile.
    fn detached_switch(&self, s: &Session, grub: &str) -> Result<(), String> {
        let launch = switch_argv(&s.system, grub);
        let status = argv(["sh", "-c", SWITCH_STATUS, "edgectl-install-status"]);
        let end = Instant::now() + self.wait.switch_limit;
        let mut host: Option<Box<dyn Host>> = None;
        let mut started = false;
        let mut last_error = String::new();
        loop {
            let h: &dyn Host = host.as_deref().unwrap_or(s.host.as_ref());
            // Launching again is harmless: the script reports a run of this system already
            // under way (or done) instead of starting another.
            let step = if started { &status } else { &launch };
            match h.run(step, true) {
                Ok(o) if o.ok() => {
                    started = true;
                    let out = o.stdout.trim();
                    let (state, log) = out.split_once('\n').unwrap_or((out, ""));
                    match state.trim() {
                        "ok" => return Ok(()),
                        "running" => {}
                        "no-grub" => {
                            return Err(format!(
                                "switch-to-configuration ran, but the boot sector of {grub} does not hold GRUB afterwards: the node would not boot NixOS (nor Ubuntu, if grub-install got part way); do not reboot it, look at {}/install-switch/log on the node",
                                state_dir!()
                            ));
                        }
                        other if other.starts_with("failed") => {
                            return Err(format!(
                                "switch-to-configuration boot {other}: {}",
                                log.trim()
                            ));
                        }
                        other => last_error = format!("unexpected switch status {other:?}"),
                    }
                }
                Ok(o) => last_error = o.stderr.trim().to_string(),
                Err(e) => {
                    last_error = e.to_string();
                    host = s.host.fresh().ok();
                }
            }
            if Instant::now() > end {
                return Err(format!(
                    "the switch did not end within {} s ({last_error}); it may still be running on the node: `edgectl install` again follows it",
                    self.wait.switch_limit.as_secs()
                ));
            }
            std::thread::sleep(self.wait.poll.min(Duration::from_millis(500)));
        }
    }

    /// Phase 4: reboot, and check that NixOS came back with the same host key and the system.
    fn reboot(&self, s: &Session, record: &mut InstallState) -> Result<(), String> {
        step(&self.tx, &s.name, Phase::Reboot, "rebooting", || {
            let before = boot_id(s.host.as_ref());
            let _ = s.host.run(&reboot_argv(self.reboot.as_deref()), true);
            self.wait_for_nixos(s, &before)?;
            record.done.push(Step::Reboot);
            record
                .save(&self.state_dir, &s.name)
                .map_err(|e| e.to_string())?;
            Ok(((), "NixOS is up, same host key".into()))
        })
    }

    /// Waits until the node answers again (on a new boot id, for a real reboot), then checks
    /// it runs the installed system.
    fn wait_for_nixos(&self, s: &Session, boot_before: &str) -> Result<(), String> {
        // A real reboot changes the boot id; a custom reboot command (the test rig restarts sshd
        // instead) is done once the node answers again.
        let need_new_boot = self.reboot.is_none();
        let end = Instant::now() + self.wait.limit;
        std::thread::sleep(self.wait.settle);
        // What the last try saw, for the message when time runs out.
        let mut old_boot: bool;
        loop {
            match s.host.fresh() {
                Ok(h) if !need_new_boot || boot_id(h.as_ref()) != boot_before => {
                    let cur = running_system(h.as_ref());
                    if cur != s.system {
                        return Err(format!(
                            "after the reboot the node runs {cur:?}, not {}",
                            s.system
                        ));
                    }
                    return Ok(());
                }
                Ok(_) => old_boot = true,
                // NixOS is up (sshd answers with the pinned key) but refuses the login: no
                // amount of waiting helps, so say so now rather than after the limit.
                Err(HostError::Auth(m)) => {
                    return Err(format!(
                        "the node is up but refuses edgectl's login ({m}): the installed NixOS accepts only cluster.ssh_keys for the login user; log in through the portal's console, or reload the node and install again"
                    ));
                }
                Err(HostError::HostKeyChanged { expected, found }) => {
                    return Err(format!(
                        "the SSH host key changed across the reboot ({expected} -> {found}); NIXOS_LUSTRATE should have kept it: check /etc/ssh on the node"
                    ));
                }
                Err(_) => old_boot = false,
            }
            if Instant::now() > end {
                let secs = self.wait.limit.as_secs();
                let waited = if secs >= 120 {
                    format!("{} minutes", secs / 60)
                } else {
                    format!("{secs} s")
                };
                return Err(if old_boot {
                    format!(
                        "after {waited} the node still runs its old boot: the reboot did not happen (check the reboot command, or reboot it from the CloudLab portal)"
                    )
                } else {
                    format!(
                        "the node did not come back within {waited}; watch its serial console in the CloudLab portal, and reload it if it does not boot"
                    )
                });
            }
            std::thread::sleep(self.wait.poll);
        }
    }
}

/// The outputs of `facts::COMMANDS`, run on the node.
fn read_live(h: &dyn Host) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (name, cmd) in facts::COMMANDS {
        let o = h
            .run(&argv(cmd.iter().copied()), false)
            .map_err(|e| e.to_string())?;
        out.insert(name.to_string(), o.stdout);
    }
    Ok(out)
}

/// The outputs of `facts::COMMANDS`, as recorded under `dir/<node>/`.
fn read_recorded(dir: &Path, node: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (name, _) in facts::COMMANDS {
        let path = dir.join(node).join(name);
        if facts::ADDED_LATER.contains(name) && !path.exists() {
            out.insert(name.to_string(), String::new());
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("recorded fact {name}: {e}"))?;
        out.insert(name.to_string(), text);
    }
    Ok(out)
}

fn switch_argv(system: &str, grub: &str) -> Vec<String> {
    argv(["sh", "-c", SWITCH, "edgectl-install", system, grub])
}

/// The reboot, detached so the SSH session can end first (default `systemctl reboot`).
fn reboot_argv(command: Option<&[String]>) -> Vec<String> {
    let default = vec!["systemctl".to_string(), "reboot".to_string()];
    ["sh", "-c", REBOOT, "edgectl-reboot"]
        .into_iter()
        .map(String::from)
        .chain(command.map(<[String]>::to_vec).unwrap_or(default))
        .collect()
}

fn boot_id(h: &dyn Host) -> String {
    h.run(&argv(["cat", "/proc/sys/kernel/random/boot_id"]), false)
        .map(|o| o.stdout.trim().to_string())
        .unwrap_or_default()
}

/// The system the node runs (or, before its first NixOS boot, the one its profile names).
fn running_system(h: &dyn Host) -> String {
    h.run(&argv(["sh", "-c", "if [ -e /run/current-system ]; then readlink -f /run/current-system; else readlink -f /nix/var/nix/profiles/system; fi"]), false)
        .map(|o| o.stdout.trim().to_string())
        .unwrap_or_default()
}

fn show(a: &[String]) -> String {
    crate::quote::command(a).unwrap_or_default()
}

/// A dry run's commands for one node reached as `login` (user, host).
fn planned(
    (ship, chosen): (Option<&Path>, bool),
    (user, host): (&str, &str),
    system: &str,
    f: &NodeFacts,
    reboot: &[String],
) -> Vec<String> {
    let mut cmds = crate::nodenix::planned_commands(ship, chosen);
    cmds.extend([
        format!("nix copy --to ssh://{user}@{host} {system}"),
        "write /etc/NIXOS_LUSTRATE (keeps: the SSH host key files in /etc/ssh)".to_string(),
        format!("write {HARDWARE_COPY} (a copy of hardware/<node>.toml)"),
        format!(
            "detached, with its status in {}/install-switch: nix-env -p /nix/var/nix/profiles/system --set {system}; touch /etc/NIXOS; NIXOS_INSTALL_BOOTLOADER=1 {system}/bin/switch-to-configuration boot; check that the boot sector of {} holds GRUB",
            state_dir!(),
            f.boot.grub_device
        ),
        format!(
            "# GRUB goes to {} (first partition of {})",
            f.boot.grub_device, f.boot.disk
        ),
        show(reboot),
    ]);
    cmds
}

#[cfg(test)]
mod resumption {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::event::{Event, State as Ev};
    use crate::fake::{Call, FakeHost, ok};

    const SYS: &str = "/nix/store/aaaa-nixos-system-n1";

    fn record(done: &[Step]) -> InstallState {
        InstallState {
            done: done.to_vec(),
            ..Default::default()
        }
    }

    fn drain(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> Vec<(Phase, Ev, String)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| (e.phase, e.state, e.message))
            .collect()
    }

    // What a node's record alone decides.

    #[test]
    fn a_new_node_runs_every_phase() {
        let r = resume_from(&InstallState::default(), None);
        assert_eq!(r.from, Some(Step::Facts));
        assert_eq!(r.todo, Step::ALL);
        assert!(r.opens);
    }

    #[test]
    fn recorded_facts_resume_at_nix() {
        let r = resume_from(&record(&[Step::Facts]), None);
        assert_eq!(r.from, Some(Step::Nix));
        assert_eq!(r.todo, [Step::Nix, Step::Copy, Step::Switch, Step::Reboot]);
        assert!(r.opens);
    }

    #[test]
    fn until_stops_after_that_phase() {
        let r = resume_from(&record(&[Step::Facts]), Some(Step::Copy));
        assert_eq!(r.from, Some(Step::Nix));
        assert_eq!(r.todo, [Step::Nix, Step::Copy]);
        // --until facts reads the node and nothing more: no build, no lock.
        let r = resume_from(&InstallState::default(), Some(Step::Facts));
        assert_eq!(r.todo, [Step::Facts]);
        assert!(!r.opens);
        let r = resume_from(&record(&[Step::Facts]), Some(Step::Facts));
        assert_eq!((r.from, r.todo, r.opens), (Some(Step::Nix), vec![], false));
    }

    #[test]
    fn a_switched_node_resumes_at_the_reboot() {
        let r = resume_from(
            &record(&[Step::Facts, Step::Nix, Step::Copy, Step::Switch]),
            None,
        );
        assert_eq!((r.from, r.todo), (Some(Step::Reboot), vec![Step::Reboot]));
    }

    #[test]
    fn a_node_with_every_phase_done_has_nothing_left_to_do() {
        for until in [None, Some(Step::Switch), Some(Step::Facts)] {
            let r = resume_from(&record(&Step::ALL), until);
            assert_eq!(
                (r.from, r.todo, r.opens),
                (None, vec![], false),
                "{until:?}"
            );
        }
    }

    #[test]
    fn a_record_that_no_longer_fits_the_node_starts_over_at_facts() {
        // Installed, but the node answers as Ubuntu: reloaded from the portal.
        let l = lab(&Step::ALL);
        let h = ubuntu();
        h.on_name("edgectl-identity", |_| ok("m1\nuuid\nubuntu\n"));
        let (r, events) = l.install(Ok(h), until(Step::Facts));
        assert_eq!(r[0].resumed_from, Some(Step::Facts), "{r:?}");
        assert_eq!(r[0].done, [Step::Facts]);
        assert!(
            events.iter().any(|e| e.1 == Ev::Warning
                && e.2
                    .contains("runs \"ubuntu\" now (reloaded from the portal?)")),
            "{events:?}"
        );
        // Installed and still NixOS: nothing to do, nothing read again.
        let l = lab(&Step::ALL);
        let h = ubuntu();
        h.on_name("edgectl-identity", |_| ok("m2\nuuid\nnixos\n"));
        let (r, _) = l.install(Ok(h.clone()), until(Step::Facts));
        assert_eq!((r[0].resumed_from, r[0].done.len()), (None, 5));
        assert_eq!(h.scripts(), ["edgectl-identity"]);
    }

    #[test]
    fn a_node_is_the_recorded_one_while_its_machine_id_and_root_stay() {
        let out = read_recorded(layout().parent().unwrap(), "c220g5-ssd-boot").unwrap();
        let mut f = facts::node_facts(&out, &["90e2ba24d115".into()]).unwrap();
        f.machine_id = "m1".into();
        let uuid = "5f1c1a5e-1111-4c3b-9d2e-aaaaaaaaaaaa";
        let probe = |m: &str, u: &str| format!("{m}\n{u}\nubuntu\n");
        assert_eq!(
            facts::not_the_recorded_node(&f, &probe("m1", uuid), false),
            None
        );
        let e = facts::not_the_recorded_node(&f, &probe("m9", uuid), false).unwrap();
        assert!(
            e.contains("machine id is \"m9\", not the recorded \"m1\""),
            "{e}"
        );
        let e = facts::not_the_recorded_node(&f, &probe("m1", "other"), false).unwrap();
        assert!(e.contains("root file system is other"), "{e}");
        // A recording without a machine id checks the root alone.
        f.machine_id.clear();
        assert_eq!(
            facts::not_the_recorded_node(&f, &probe("m9", uuid), false),
            None
        );
    }

    #[test]
    fn lustrate_keeps_the_host_keys_the_node_has_and_refuses_none() {
        let found = "etc/ssh/ssh_host_ed25519_key\netc/ssh/ssh_host_ed25519_key.pub\n\
                     etc/ssh/ssh_host_rsa_key\nnot/a/key\netc/ssh/ssh_host_x key\n";
        assert_eq!(
            lustrate_list(found).unwrap(),
            "etc/ssh/ssh_host_ed25519_key\netc/ssh/ssh_host_ed25519_key.pub\netc/ssh/ssh_host_rsa_key\n"
        );
        let e = lustrate_list("etc/ssh/ssh_host_ed25519_key.pub\n").unwrap_err();
        assert!(e.contains("no SSH host key"), "{e}");
        assert!(lustrate_list("").is_err());
    }

    #[test]
    fn the_root_must_hold_the_closure_and_a_margin() {
        let gib = 1u64 << 30;
        assert_eq!(short_of_room(20 * gib, 12 * gib), None);
        let e = short_of_room(12 * gib, 12 * gib).unwrap();
        assert!(
            e.contains("takes 12288 MiB and 1024 MiB more") && e.contains("found 12288 MiB free"),
            "{e}"
        );
        assert_eq!(short_of_room(13 * gib, 12 * gib), None, "exactly enough");
    }

    #[test]
    fn a_copy_of_another_system_is_stale_until_the_node_has_rebooted() {
        let mut r = record(&[Step::Facts, Step::Nix, Step::Copy]);
        r.system = Some("/nix/store/old".into());
        assert!(stale_copy(&r, "/nix/store/new"));
        assert!(!stale_copy(&r, "/nix/store/old"));
        r.done.push(Step::Switch);
        assert!(stale_copy(&r, "/nix/store/new"), "switched, not rebooted");
        r.done.push(Step::Reboot);
        assert!(
            !stale_copy(&r, "/nix/store/new"),
            "installed: apply's business"
        );
        let r = record(&[Step::Facts]);
        assert!(!stale_copy(&r, "/nix/store/new"), "nothing copied yet");
    }

    #[test]
    fn a_node_done_up_to_until_is_still_built_and_opened() {
        // As before the phases were methods: a dry run lists its commands, and the node is
        // locked for a run that has nothing to do there.
        let r = resume_from(
            &record(&[Step::Facts, Step::Nix, Step::Copy]),
            Some(Step::Copy),
        );
        assert_eq!(
            (r.from, r.todo, r.opens),
            (Some(Step::Switch), vec![], true)
        );
    }

    // The run up to the build, on a real topology and a fake node.

    const TOPOLOGY: &str = r#"
[cluster]
name = "t"
nixpkgs = "github:NixOS/nixpkgs/nixos-25.11"
ssh_user = "root"
ssh_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVkZ2VjdGwgZXhhbXBsZTogcmVwbGFjZSBpdCBub3ch t@t"]

[defaults]
profile = "c220g5"

[[node]]
name = "n1"
host = "192.0.2.1"
lan = { address = "10.10.1.1/24", mac = "90e2ba24d115" }
"#;

    /// The c220g5 layout that `tests/facts.rs` checks, whose experiment MAC is n1's.
    fn layout() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/facts/c220g5-ssd-boot")
    }

    /// A node answering the facts commands as that layout.
    fn ubuntu() -> FakeHost {
        let h = FakeHost::new("n1");
        for (name, cmd) in facts::COMMANDS {
            let text = std::fs::read_to_string(layout().join(name)).unwrap();
            let want = argv(cmd.iter().copied());
            h.on(move |a| a == want.as_slice(), move |_| ok(&text));
        }
        h
    }

    struct Lab {
        _dir: tempfile::TempDir,
        run: Run,
        /// How many times the run connected.
        dialed: Arc<AtomicUsize>,
    }

    fn lab(done: &[Step]) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cluster.toml");
        std::fs::write(&file, TOPOLOGY).unwrap();
        let run = Run::load(&file, &Default::default(), Some("n1")).expect("topology loads");
        if !done.is_empty() {
            let mut r = record(done);
            if done.contains(&Step::Facts) {
                let out = read_recorded(layout().parent().unwrap(), "c220g5-ssd-boot");
                r.facts = Some(facts::node_facts(&out.unwrap(), &["90e2ba24d115".into()]).unwrap());
            }
            r.save(&run.state_dir, "n1").unwrap();
        }
        Lab {
            _dir: dir,
            run,
            dialed: Arc::default(),
        }
    }

    impl Lab {
        fn install(
            &self,
            h: Result<FakeHost, HostError>,
            io: InstallOptions,
        ) -> (Vec<InstallResult>, Vec<(Phase, Ev, String)>) {
            let dialed = self.dialed.clone();
            let connect: Connect = Arc::new(move |_| {
                dialed.fetch_add(1, Ordering::SeqCst);
                h.clone().map(|h| Box::new(h) as Box<dyn Host>)
            });
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let opts = Options::default();
            let r = install_with(self.run.clone(), &opts, &io, tx, connect).expect("install");
            (r, drain(rx))
        }
    }

    /// The only event of a run that built nothing: the recorded facts were written beside the
    /// topology (a record from before install wrote them there).
    fn assert_kept_hardware_file(l: &Lab, events: &[(Phase, Ev, String)]) {
        let dir = l.run.topology.parent().unwrap();
        let h = edgectl_model::hardware::read(dir, "n1")
            .unwrap()
            .expect("written");
        assert_eq!(h.root_disk_modules, ["sd_mod", "ahci"]);
        assert!(
            matches!(events, [(Phase::Facts, Ev::Progress, m)] if m.contains("hardware/n1.toml")),
            "{events:?}"
        );
    }

    fn until(u: Step) -> InstallOptions {
        InstallOptions {
            dry_run: false,
            facts_from: None,
            reboot_command: None,
            until: Some(u),
            nix_from: None,
        }
    }

    #[test]
    fn until_facts_reads_a_new_node_pins_its_key_and_goes_no_further() {
        let l = lab(&[]);
        let h = ubuntu();
        let (r, events) = l.install(Ok(h.clone()), until(Step::Facts));
        assert_eq!(r.len(), 1);
        assert!(r[0].ok, "{}", r[0].message);
        assert_eq!(r[0].resumed_from, Some(Step::Facts));
        assert_eq!(r[0].done, [Step::Facts]);
        // Only the read-only commands ran: no lock, no build, no switch.
        assert_eq!(h.calls().len(), facts::COMMANDS.len());
        assert!(
            h.calls()
                .iter()
                .all(|c| matches!(c, Call::Run { root: false, .. }))
        );
        assert_eq!(
            events,
            [
                (Phase::Facts, Ev::Started, "reading the node".into()),
                (
                    Phase::Facts,
                    Ev::Ok,
                    "ubuntu 22.04; GRUB -> /dev/disk/by-id/wwn-0x55cd2e414d9a1234-part1; control eno1".into()
                ),
                (
                    Phase::Facts,
                    Ev::Progress,
                    format!(
                        "machine facts written to {}: keep it in git with the topology",
                        l.run.topology.parent().unwrap().join("hardware/n1.toml").display()
                    )
                ),
            ]
        );
        let saved = InstallState::load(&l.run.state_dir, "n1");
        assert_eq!(saved.done, [Step::Facts]);
        assert_eq!(saved.facts.unwrap().control_interface, "eno1");
        let st = State::load(&l.run.state_dir).unwrap();
        assert_eq!(
            st.nodes["n1"].host_key,
            h.host_key(),
            "pinned at first contact"
        );
    }

    #[test]
    fn recorded_facts_still_need_the_node_to_answer() {
        let l = lab(&[]);
        let rec = tempfile::tempdir().unwrap();
        std::fs::create_dir(rec.path().join("n1")).unwrap();
        for e in std::fs::read_dir(layout()).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), rec.path().join("n1").join(e.file_name())).unwrap();
        }
        let io = InstallOptions {
            facts_from: Some(rec.path().to_path_buf()),
            ..until(Step::Facts)
        };
        // Unreachable: it fails, and its phase ends so.
        let down = HostError::Unreachable("no route to host".into());
        let (r, events) = l.install(Err(down), io.clone());
        assert!(!r[0].ok);
        assert_eq!(r[0].message, "unreachable: no route to host");
        assert_eq!(
            (r[0].resumed_from, r[0].done.clone()),
            (Some(Step::Facts), vec![])
        );
        assert_eq!(events.last().map(|e| e.1), Some(Ev::Failed));
        assert!(InstallState::load(&l.run.state_dir, "n1").done.is_empty());
        // Reachable: the facts come from the recording, the key from the node.
        let h = FakeHost::new("n1");
        let (r, _) = l.install(Ok(h.clone()), io);
        assert!(r[0].ok, "{}", r[0].message);
        assert_eq!(r[0].done, [Step::Facts]);
        assert!(h.calls().is_empty(), "nothing run: {:?}", h.calls());
        let st = State::load(&l.run.state_dir).unwrap();
        assert_eq!(st.nodes["n1"].host_key, h.host_key());
    }

    #[test]
    fn facts_that_refuse_the_node_are_its_failure() {
        let l = lab(&[]);
        let h = ubuntu();
        h.on(|a| a == ["cat", "/etc/os-release"], |_| ok("ID=nixos\n"));
        let (r, events) = l.install(Ok(h), until(Step::Facts));
        assert!(!r[0].ok);
        assert_eq!(r[0].message, "already NixOS, use `edgectl apply`");
        assert_eq!(
            events.last(),
            Some(&(Phase::Facts, Ev::Failed, r[0].message.clone()))
        );
    }

    #[test]
    fn recorded_facts_are_not_read_again() {
        let l = lab(&[Step::Facts]);
        let h = ubuntu();
        let (r, events) = l.install(Ok(h.clone()), until(Step::Facts));
        assert!(r[0].ok);
        assert_eq!(r[0].resumed_from, Some(Step::Nix));
        assert_eq!(r[0].done, [Step::Facts]);
        // Asked who it is (the record must still be its), and nothing else.
        assert_eq!(l.dialed.load(Ordering::SeqCst), 1);
        assert_eq!(h.calls().len(), 1, "{:?}", h.calls());
        assert_eq!(h.scripts(), ["edgectl-identity"]);
        assert_kept_hardware_file(&l, &events);
    }

    #[test]
    fn an_installed_node_is_left_alone() {
        let l = lab(&Step::ALL);
        let io = InstallOptions {
            until: None,
            ..until(Step::Facts)
        };
        let h = ubuntu();
        h.on_name("edgectl-identity", |_| ok("m\nu\nnixos\n"));
        let (r, events) = l.install(Ok(h.clone()), io);
        assert!(r[0].ok);
        assert_eq!(r[0].resumed_from, None, "nothing left to do");
        assert_eq!(r[0].done, Step::ALL);
        assert_eq!(l.dialed.load(Ordering::SeqCst), 1, "asked who it is, once");
        assert_eq!(h.scripts(), ["edgectl-identity"]);
        assert_kept_hardware_file(&l, &events);
    }

    // A node's later phases on a worker, over an open session.

    const FAST: RebootWait = RebootWait {
        settle: Duration::from_millis(1),
        poll: Duration::from_millis(1),
        limit: Duration::from_secs(5),
        switch_limit: Duration::from_secs(5),
    };

    /// A node that switches, "reboots" (the rig's way: `--reboot-command`) and comes back on
    /// `running`.
    fn node(running: &'static str) -> FakeHost {
        let h = FakeHost::new("n1");
        h.on_name("edgectl-host-keys", |_| {
            ok("etc/ssh/ssh_host_ed25519_key\netc/ssh/ssh_host_ed25519_key.pub\n")
        });
        h.on_name("edgectl-install", |_| ok("running\n"));
        h.on_name("edgectl-install-status", |_| ok("ok\n"));
        h.on_name("edgectl-reboot", |_| ok(""));
        h.on(
            |a| a[0] == "cat" && a[1].ends_with("boot_id"),
            |_| ok("b1\n"),
        );
        h.on(
            |a| a.len() == 3 && a[2].contains("/run/current-system"),
            move |_| ok(&format!("{running}\n")),
        );
        h
    }

    fn worker(dir: &Path) -> (Worker, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let w = Worker {
            tx,
            state_dir: dir.to_path_buf(),
            recorded: None,
            reboot: Some(vec!["true".into()]),
            wait: FAST,
            connect: Arc::new(|_| Err(HostError::Unreachable("sessions only".into()))),
        };
        (w, rx)
    }

    /// Runs phases 3 and 4 for a node with `done` recorded, up to `until`.
    fn later(h: &FakeHost, done: &[Step], until: Option<Step>) -> (Done, Vec<(Phase, Ev, String)>) {
        later_with(h, done, until, |_| {})
    }

    /// [`later`] with the worker changed by `adjust` first.
    fn later_with(
        h: &FakeHost,
        done: &[Step],
        until: Option<Step>,
        adjust: impl FnOnce(&mut Worker),
    ) -> (Done, Vec<(Phase, Ev, String)>) {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, rx) = worker(dir.path());
        adjust(&mut w);
        let mut rec = record(done);
        if done.contains(&Step::Facts) {
            let out = read_recorded(layout().parent().unwrap(), "c220g5-ssd-boot").unwrap();
            rec.facts = Some(facts::node_facts(&out, &["90e2ba24d115".into()]).unwrap());
        }
        let j = NodeJob {
            session: Arc::new(Session {
                name: "n1".into(),
                host: Box::new(h.clone()),
                key: h.host_key(),
                system: SYS.into(),
                current: None,
                generation: None,
                unchanged: false,
                lock_owner: "edgectl test".into(),
            }),
            todo: resume_from(&rec, until).todo,
            record: rec,
        };
        let d = w.switch_and_reboot(j);
        if d.result.is_ok() {
            let saved = InstallState::load(dir.path(), "n1");
            assert_eq!(saved.done, d.record.done, "what is done is recorded");
        }
        drop(w);
        (d, drain(rx))
    }

    const COPIED: [Step; 3] = [Step::Facts, Step::Nix, Step::Copy];

    #[test]
    fn a_copied_node_switches_reboots_and_comes_back_on_its_system() {
        let h = node(SYS);
        let (d, events) = later(&h, &COPIED, None);
        assert_eq!(d.result, Ok(()));
        assert_eq!(d.record.done, Step::ALL);
        assert_eq!(
            h.calls()[1],
            Call::Upload {
                path: "/etc/NIXOS_LUSTRATE".into(),
                mode: 0o644
            },
            "the host keys the node has, then the list"
        );
        assert_eq!(
            h.scripts(),
            [
                "edgectl-host-keys",
                "edgectl-install",
                "edgectl-install-status",
                "edgectl-reboot"
            ]
        );
        assert!(h.calls().contains(&Call::Fresh));
        let states: Vec<(Phase, Ev)> = events.iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(
            states,
            [
                (Phase::Switch, Ev::Started),
                (Phase::Switch, Ev::Ok),
                (Phase::Reboot, Ev::Started),
                (Phase::Reboot, Ev::Ok),
            ]
        );
    }

    #[test]
    fn after_the_reboot_a_refused_login_fails_at_once_and_an_old_boot_is_named() {
        let switched = [Step::Facts, Step::Nix, Step::Copy, Step::Switch];
        let h = node(SYS);
        h.fail_fresh(Some(HostError::Auth("publickey denied".into())));
        let t = Instant::now();
        let (d, _) = later(&h, &switched, None);
        let e = d.result.unwrap_err();
        assert!(
            e.contains("refuses edgectl's login (publickey denied)"),
            "{e}"
        );
        assert!(t.elapsed() < FAST.limit, "it did not wait out the limit");
        // A real reboot (no reboot command) that never happens: the boot id stays.
        let h = node(SYS);
        let fast = RebootWait {
            limit: Duration::from_millis(50),
            ..FAST
        };
        let (d, _) = later_with(&h, &switched, None, |w| {
            w.reboot = None;
            w.wait = fast;
        });
        let e = d.result.unwrap_err();
        assert!(
            e.starts_with("after 0 s the node still runs its old boot"),
            "{e}"
        );
        // Down throughout: it did not come back.
        let h = node(SYS);
        h.fail_fresh(Some(HostError::Unreachable("no route to host".into())));
        let (d, _) = later_with(&h, &switched, None, |w| w.wait = fast);
        let e = d.result.unwrap_err();
        assert!(
            e.starts_with("the node did not come back within 0 s"),
            "{e}"
        );
    }

    #[test]
    fn until_switch_does_not_reboot() {
        let h = node(SYS);
        let (d, _) = later(&h, &COPIED, Some(Step::Switch));
        assert_eq!(d.result, Ok(()));
        assert_eq!(d.record.done.last(), Some(&Step::Switch));
        assert_eq!(
            h.scripts(),
            [
                "edgectl-host-keys",
                "edgectl-install",
                "edgectl-install-status"
            ]
        );
        // The node keeps a copy of its machine facts, outside what lustration clears.
        assert!(
            h.calls()
                .iter()
                .any(|c| matches!(c, Call::Upload { path, .. } if path == HARDWARE_COPY))
        );
    }

    #[test]
    fn a_connection_lost_during_the_switch_is_opened_again_and_the_switch_followed() {
        let h = node(SYS);
        let asked = Arc::new(AtomicUsize::new(0));
        let n = asked.clone();
        h.on_name("edgectl-install-status", move |_| {
            match n.fetch_add(1, Ordering::SeqCst) {
                0 => Err(HostError::Unreachable("connection reset".into())),
                1 => ok("running\n"),
                _ => ok("ok\n"),
            }
        });
        let (d, _) = later(&h, &COPIED, Some(Step::Switch));
        assert_eq!(d.result, Ok(()));
        assert_eq!(asked.load(Ordering::SeqCst), 3);
        assert!(h.calls().contains(&Call::Fresh), "{:?}", h.calls());
        // Started once: the status was followed, never a second switch.
        assert_eq!(
            h.scripts()
                .iter()
                .filter(|s| *s == "edgectl-install")
                .count(),
            1
        );
    }

    #[test]
    fn a_boot_sector_without_grub_after_the_switch_fails_it_before_the_reboot() {
        let h = node(SYS);
        h.on_name("edgectl-install-status", |_| ok("no-grub\n"));
        let (d, _) = later(&h, &COPIED, None);
        let e = d.result.unwrap_err();
        assert!(
            e.contains(
                "boot sector of /dev/disk/by-id/wwn-0x55cd2e414d9a1234-part1 does not hold GRUB"
            ),
            "{e}"
        );
        assert_eq!(d.record.done, COPIED);
        assert!(!h.scripts().contains(&"edgectl-reboot".to_string()));
    }

    #[test]
    fn a_switched_node_only_reboots() {
        let h = node(SYS);
        let switched = [Step::Facts, Step::Nix, Step::Copy, Step::Switch];
        let (d, _) = later(&h, &switched, None);
        assert_eq!(d.result, Ok(()));
        assert_eq!(d.record.done, Step::ALL);
        assert!(!h.calls().iter().any(|c| matches!(c, Call::Upload { .. })));
        assert_eq!(h.scripts(), ["edgectl-reboot"]);
    }

    #[test]
    fn a_failed_switch_is_not_recorded_and_nothing_reboots() {
        let h = node(SYS);
        h.on_name("edgectl-install-status", |_| {
            ok("failed 1\ngrub-install: error\n")
        });
        let (d, events) = later(&h, &COPIED, None);
        assert_eq!(
            d.result,
            Err("switch-to-configuration boot failed 1: grub-install: error".into())
        );
        assert_eq!(d.record.done, COPIED);
        assert_eq!(
            h.scripts(),
            [
                "edgectl-host-keys",
                "edgectl-install",
                "edgectl-install-status"
            ]
        );
        assert_eq!(
            events.last().map(|e| (e.0, e.1)),
            Some((Phase::Switch, Ev::Failed))
        );
    }

    #[test]
    fn a_changed_host_key_after_the_reboot_fails_it() {
        let h = node(SYS);
        h.fail_fresh(Some(HostError::HostKeyChanged {
            expected: "SHA256:old".into(),
            found: "SHA256:new".into(),
        }));
        let (d, events) = later(&h, &COPIED, None);
        let e = d.result.unwrap_err();
        assert!(
            e.contains("host key changed across the reboot (SHA256:old -> SHA256:new)"),
            "{e}"
        );
        assert_eq!(
            d.record.done.last(),
            Some(&Step::Switch),
            "switched, not rebooted"
        );
        assert_eq!(events.last(), Some(&(Phase::Reboot, Ev::Failed, e)));
    }

    #[test]
    fn a_node_back_on_another_system_fails_the_reboot() {
        let h = node("/nix/store/bbbb-ubuntu-leftover");
        let (d, _) = later(&h, &COPIED, None);
        assert_eq!(
            d.result,
            Err(format!(
                "after the reboot the node runs \"/nix/store/bbbb-ubuntu-leftover\", not {SYS}"
            ))
        );
        assert!(!d.record.has(Step::Reboot));
    }

    #[test]
    fn a_dry_run_lists_every_later_command_in_order() {
        let out = read_recorded(layout().parent().unwrap(), "c220g5-ssd-boot").unwrap();
        let f = facts::node_facts(&out, &[]).unwrap();
        let reboot = reboot_argv(Some(&["true".to_string()]));
        let cmds = planned((None, false), ("root", "192.0.2.1"), SYS, &f, &reboot);
        let tail: Vec<&str> = cmds
            .iter()
            .rev()
            .take(6)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(tail[0], format!("nix copy --to ssh://root@192.0.2.1 {SYS}"));
        assert_eq!(
            tail[1],
            "write /etc/NIXOS_LUSTRATE (keeps: the SSH host key files in /etc/ssh)"
        );
        assert_eq!(
            tail[2],
            format!("write {HARDWARE_COPY} (a copy of hardware/<node>.toml)")
        );
        assert!(
            tail[3].starts_with("detached")
                && tail[3].contains(&format!("{SYS}/bin/switch-to-configuration boot")),
            "{}",
            tail[3]
        );
        assert_eq!(
            tail[4],
            "# GRUB goes to /dev/disk/by-id/wwn-0x55cd2e414d9a1234-part1 (first partition of /dev/disk/by-id/wwn-0x55cd2e414d9a1234)"
        );
        assert!(tail[5].ends_with("edgectl-reboot true"), "{}", tail[5]);
    }
}
