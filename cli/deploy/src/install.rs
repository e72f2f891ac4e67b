//! `edgectl install`: Ubuntu (CloudLab's images) to NixOS, as resumable phases per node, each
//! checked before the next, following the NixOS manual's "Installing from another Linux
//! distribution" (system profile, /etc/NIXOS, /etc/NIXOS_LUSTRATE, `switch-to-configuration
//! boot`). Completed phases are recorded in `.edgectl/install/<node>.json`, so an install killed
//! at any point resumes from the phase that had not completed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::event::{Phase, Sender, State as Ev, emit};
use crate::facts::{self};
use crate::host::{Host, HostError, HostKey, SshHost, argv};
pub use crate::install_state::{InstallState, Step};
use crate::pool::{parallel_map, runtime};
use crate::run::{EngineError, Options, Run, prepare, target_for};
use crate::session::{Session, open_node, unlock};
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

/// Files NIXOS_LUSTRATE keeps: the SSH host keys, so the node's identity (and the fingerprint
/// edgectl pinned) survive the switch.
pub const LUSTRATE: &str = "etc/ssh/ssh_host_ed25519_key\netc/ssh/ssh_host_ed25519_key.pub\netc/ssh/ssh_host_rsa_key\netc/ssh/ssh_host_rsa_key.pub\netc/ssh/ssh_host_ecdsa_key\netc/ssh/ssh_host_ecdsa_key.pub\n";

const SWITCH: &str = include_str!("sh/install_switch.sh");

const REBOOT: &str = include_str!("sh/reboot_detached.sh");

fn show(a: &[String]) -> String {
    crate::quote::command(a).unwrap_or_default()
}

fn gather(
    h: Option<&SshHost>,
    recorded: Option<&Path>,
    node: &str,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (name, cmd) in facts::COMMANDS {
        let text = match (recorded, h) {
            (Some(dir), _) => std::fs::read_to_string(dir.join(node).join(name))
                .map_err(|e| format!("recorded fact {name}: {e}"))?,
            (None, Some(h)) => {
                let o = h
                    .run(&argv(cmd.iter().copied()), false)
                    .map_err(|e| e.to_string())?;
                o.stdout
            }
            (None, None) => unreachable!("a live gather needs a connection"),
        };
        out.insert(name.to_string(), text);
    }
    Ok(out)
}

pub fn install(
    run: Run,
    opts: &Options,
    io: &InstallOptions,
    tx: Sender,
) -> Result<Vec<InstallResult>, EngineError> {
    let state_dir = run.state_dir.clone();
    let _lock = Lock::acquire(&state_dir)?;
    let selected = run.selected.clone();
    let c = &run.loaded.cluster;
    let mut st = State::load(&state_dir)?;
    let rt = runtime(opts.parallel);
    let mut results: BTreeMap<String, InstallResult> = BTreeMap::new();
    let stop = |s: Step| io.until.is_some_and(|u| s > u);

    // Phase 1: facts (read-only), for every node that has not recorded them.
    let jobs: Vec<(String, crate::host::SshTarget, Vec<String>, InstallState)> = selected
        .iter()
        .map(|n| {
            let macs = c
                .node(n)
                .map(|x| x.interfaces.iter().map(|i| i.mac.to_string()).collect())
                .unwrap_or_default();
            (
                n.clone(),
                target_for(c, n, &st, opts, &state_dir),
                macs,
                InstallState::load(&state_dir, n),
            )
        })
        .collect();
    let (recorded, tx1, dir1) = (io.facts_from.clone(), tx.clone(), state_dir.clone());
    let facts_out = parallel_map(&rt, opts.parallel, jobs, move |(name, t, macs, mut is)| {
        let resumed = Step::ALL.into_iter().find(|s| !is.has(*s));
        let mut key: Option<HostKey> = None;
        if !is.has(Step::Facts) {
            emit(&tx1, &name, Phase::Facts, Ev::Started, "reading the node");
            let h = if recorded.is_some() {
                None
            } else {
                match crate::session::connect(t.clone()) {
                    Ok(h) => Some(h),
                    Err(e) => return (name, is, resumed, Err(e.to_string()), None),
                }
            };
            if recorded.is_some() {
                // Recorded facts still require the node to answer, to pin its host key.
                match crate::session::connect(t) {
                    Ok(h2) => key = h2.host_key(),
                    Err(e) => return (name, is, resumed, Err(e.to_string()), None),
                }
            } else {
                key = h.as_ref().and_then(|h| h.host_key());
            }
            let f = gather(h.as_ref(), recorded.as_deref(), &name)
                .and_then(|out| facts::node_facts(&out, &macs));
            match f {
                Ok(f) => {
                    emit(
                        &tx1,
                        &name,
                        Phase::Facts,
                        Ev::Ok,
                        format!(
                            "{} {}; GRUB -> {}; control {}",
                            f.os_id, f.os_version, f.boot.grub_device, f.control_interface
                        ),
                    );
                    is.facts = Some(f);
                    is.done.push(Step::Facts);
                    if let Err(e) = is.save(&dir1, &name) {
                        return (name, is, resumed, Err(e), key);
                    }
                }
                Err(e) => {
                    emit(&tx1, &name, Phase::Facts, Ev::Failed, e.clone());
                    return (name, is, resumed, Err(e), key);
                }
            }
        }
        (name, is, resumed, Ok(()), key)
    });
    let mut states: BTreeMap<String, InstallState> = BTreeMap::new();
    for (name, is, resumed, r, key) in facts_out {
        if let Some(k) = key {
            let e = st.nodes.entry(name.clone()).or_default();
            e.host_key.get_or_insert(k);
        }
        let ok = r.is_ok();
        results.insert(
            name.clone(),
            InstallResult {
                node: name.clone(),
                resumed_from: resumed,
                done: is.done.clone(),
                ok,
                message: r.err().unwrap_or_default(),
                commands: vec![],
            },
        );
        if ok {
            states.insert(name, is);
        }
    }
    st.save(&state_dir)?;
    let ready: Vec<String> = states
        .iter()
        .filter(|(_, s)| !s.has(Step::Reboot))
        .map(|(n, _)| n.clone())
        .collect();
    if ready.is_empty() || stop(Step::Nix) {
        return Ok(finish(results, &states));
    }

    // Build every system (with the facts applied) in one evaluation.
    let mut build = run.on(ready.clone());
    build.merge_install_facts();
    let p = prepare(build, opts, &tx, true)?;

    if io.dry_run {
        for n in &ready {
            let sys = &p.systems[n];
            let f = states[n].facts.as_ref().expect("facts recorded");
            let reboot = io
                .reboot_command
                .clone()
                .unwrap_or_else(|| vec!["systemctl".into(), "reboot".into()]);
            let ship = crate::nodenix::controller_nix(io.nix_from.as_deref()).ok();
            let mut cmds = crate::nodenix::planned_commands(ship.as_deref());
            cmds.extend([
                format!(
                    "nix copy --to ssh://{}@{} {sys}",
                    c.node(n).map(|x| x.user.as_str()).unwrap_or("root"),
                    c.node(n).map(|x| x.host.as_str()).unwrap_or("")
                ),
                format!(
                    "write /etc/NIXOS_LUSTRATE (keeps: {})",
                    LUSTRATE.trim().replace('\n', ", ")
                ),
                show(&argv(["sh", "-c", SWITCH, "edgectl-install", sys])),
                format!(
                    "# GRUB goes to {} (first partition of {})",
                    f.boot.grub_device, f.boot.disk
                ),
                show(&argv(
                    ["sh", "-c", REBOOT, "edgectl-reboot"]
                        .into_iter()
                        .map(String::from)
                        .chain(reboot),
                )),
            ]);
            if let Some(r) = results.get_mut(n) {
                r.commands = cmds;
            }
        }
        return Ok(finish(results, &states));
    }

    // Phases 2 to 4 need a session with the node's lock held.
    let sess_jobs: Vec<(String, crate::host::SshTarget, String)> = ready
        .iter()
        .map(|n| {
            (
                n.clone(),
                target_for(c, n, &st, opts, &state_dir),
                p.systems[n].clone(),
            )
        })
        .collect();
    let (tx2, goal) = (tx.clone(), crate::Goal::Boot);
    let opened = parallel_map(&rt, opts.parallel, sess_jobs, move |(name, t, sys)| {
        open_node(&name, t, &sys, goal, Duration::from_secs(60), None, &tx2)
    });
    let mut sessions: Vec<Arc<Session>> = Vec::new();
    for o in opened {
        match o {
            Ok(s) => sessions.push(Arc::new(s)),
            Err((r, _)) => {
                if let Some(x) = results.get_mut(&r.node) {
                    x.ok = false;
                    x.message = r.message;
                }
            }
        }
    }

    let heartbeat = crate::session::Heartbeat::start(sessions.clone());

    // Phase 2: Nix on the node, then the closure (fanned out when several nodes need it).
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let ship = Arc::new(crate::nodenix::controller_nix(io.nix_from.as_deref()));
    let lacking_nix: Vec<Arc<Session>> = sessions
        .iter()
        .filter(|s| !states[&s.name].has(Step::Nix))
        .cloned()
        .collect();
    let got = parallel_map(&rt, opts.parallel, lacking_nix, {
        let tx = tx.clone();
        move |s: Arc<Session>| {
            emit(&tx, &s.name, Phase::Nix, Ev::Started, "checking for Nix");
            let r = crate::nodenix::ensure(s.host.as_ref(), &ship);
            match &r {
                Ok(v) => emit(&tx, &s.name, Phase::Nix, Ev::Ok, v.clone()),
                Err(e) => emit(&tx, &s.name, Phase::Nix, Ev::Failed, e.clone()),
            }
            (s.name.clone(), r)
        }
    });
    for (name, r) in got {
        match r {
            Ok(_) => {
                let is = states.get_mut(&name).expect("state");
                is.done.push(Step::Nix);
                let _ = is.save(&state_dir, &name);
            }
            Err(e) => {
                failed.insert(name, e);
            }
        }
    }
    if !stop(Step::Copy) {
        let needing: Vec<Arc<Session>> = sessions
            .iter()
            .filter(|s| !failed.contains_key(&s.name) && !states[&s.name].has(Step::Copy))
            .cloned()
            .collect();
        let got = crate::fanout::copy_closures(
            &rt,
            &needing,
            c,
            &state_dir,
            opts.parallel,
            opts.fanout,
            &tx,
        );
        for s in &needing {
            match got.get(&s.name) {
                Some(Err(e)) => {
                    failed.insert(s.name.clone(), e.clone());
                }
                Some(Ok(_)) | None => {
                    let is = states.get_mut(&s.name).expect("state");
                    is.done.push(Step::Copy);
                    is.system = Some(s.system.clone());
                    let _ = is.save(&state_dir, &s.name);
                }
            }
        }
    }

    // Phase 3 (switch) and 4 (reboot) per node.
    if !stop(Step::Switch) {
        let jobs: Vec<(Arc<Session>, InstallState)> = sessions
            .iter()
            .filter(|s| !failed.contains_key(&s.name))
            .map(|s| (s.clone(), states[&s.name].clone()))
            .collect();
        let (tx4, dir4, reboot, until) = (
            tx.clone(),
            state_dir.clone(),
            io.reboot_command.clone(),
            io.until,
        );
        let outs = parallel_map(&rt, opts.parallel, jobs, move |(s, mut is)| {
            let r = switch_and_reboot(&s, &mut is, &dir4, reboot.as_deref(), until, &tx4);
            (s.name.clone(), is, r)
        });
        for (name, is, r) in outs {
            if let Err(e) = r {
                failed.insert(name.clone(), e);
            } else if is.has(Step::Reboot) {
                let e = st.nodes.entry(name.clone()).or_default();
                e.system = is.system.clone();
                e.applied_at = Some(now());
                e.last_result = Some("installed".into());
            }
            states.insert(name, is);
        }
        st.save(&state_dir)?;
    }
    drop(heartbeat);
    for s in &sessions {
        unlock(s);
    }
    for (n, e) in failed {
        if let Some(r) = results.get_mut(&n) {
            r.ok = false;
            r.message = e;
        }
    }
    Ok(finish(results, &states))
}

fn finish(
    mut results: BTreeMap<String, InstallResult>,
    states: &BTreeMap<String, InstallState>,
) -> Vec<InstallResult> {
    for (n, r) in results.iter_mut() {
        if let Some(s) = states.get(n) {
            r.done = s.done.clone();
        }
    }
    results.into_values().collect()
}

fn switch_and_reboot(
    s: &Session,
    is: &mut InstallState,
    dir: &Path,
    reboot: Option<&[String]>,
    until: Option<crate::install::Step>,
    tx: &Sender,
) -> Result<(), String> {
    let name = s.name.as_str();
    if !is.has(Step::Switch) {
        emit(
            tx,
            name,
            Phase::Switch,
            Ev::Started,
            "NIXOS_LUSTRATE and switch-to-configuration boot",
        );
        s.host
            .upload("/etc/NIXOS_LUSTRATE", LUSTRATE.as_bytes(), 0o644)
            .map_err(|e| e.to_string())?;
        let o = s
            .host
            .run(
                &argv(["sh", "-c", SWITCH, "edgectl-install", &s.system]),
                true,
            )
            .map_err(|e| e.to_string())?;
        if !o.ok() {
            let e = format!("switch-to-configuration boot failed: {}", o.stderr.trim());
            emit(tx, name, Phase::Switch, Ev::Failed, e.clone());
            return Err(e);
        }
        emit(tx, name, Phase::Switch, Ev::Ok, "boots NixOS next");
        is.done.push(Step::Switch);
        is.save(dir, name)?;
    }
    if until.is_some_and(|u| u < Step::Reboot) || is.has(Step::Reboot) {
        return Ok(());
    }
    emit(tx, name, Phase::Reboot, Ev::Started, "rebooting");
    let boot_id = |h: &dyn Host| {
        h.run(&argv(["cat", "/proc/sys/kernel/random/boot_id"]), false)
            .map(|o| o.stdout.trim().to_string())
            .unwrap_or_default()
    };
    let before = boot_id(s.host.as_ref());
    let default = vec!["systemctl".to_string(), "reboot".to_string()];
    let cmd = reboot.map(<[String]>::to_vec).unwrap_or(default);
    let a: Vec<String> = ["sh", "-c", REBOOT, "edgectl-reboot"]
        .into_iter()
        .map(String::from)
        .chain(cmd)
        .collect();
    let _ = s.host.run(&a, true);
    // A real reboot changes the boot id; a custom reboot command (the test rig restarts sshd
    // instead) is done once the node answers again.
    let need_new_boot = reboot.is_none();
    let end = Instant::now() + Duration::from_secs(900);
    std::thread::sleep(Duration::from_secs(3));
    loop {
        match s.host.fresh() {
            Ok(h) => {
                if !need_new_boot || boot_id(h.as_ref()) != before {
                    let cur = h
                        .run(&argv(["sh", "-c", "if [ -e /run/current-system ]; then readlink -f /run/current-system; else readlink -f /nix/var/nix/profiles/system; fi"]), false)
                        .map(|o| o.stdout.trim().to_string())
                        .unwrap_or_default();
                    if cur != s.system {
                        let e = format!("after the reboot the node runs {cur:?}, not {}", s.system);
                        emit(tx, name, Phase::Reboot, Ev::Failed, e.clone());
                        return Err(e);
                    }
                    emit(
                        tx,
                        name,
                        Phase::Reboot,
                        Ev::Ok,
                        "NixOS is up, same host key",
                    );
                    is.done.push(Step::Reboot);
                    is.save(dir, name)?;
                    return Ok(());
                }
            }
            Err(HostError::HostKeyChanged { expected, found }) => {
                let e = format!(
                    "the SSH host key changed across the reboot ({expected} -> {found}); NIXOS_LUSTRATE should have kept it: check /etc/ssh on the node"
                );
                emit(tx, name, Phase::Reboot, Ev::Failed, e.clone());
                return Err(e);
            }
            Err(_) => {}
        }
        if Instant::now() > end {
            return Err("the node did not come back within 15 minutes; recover it from the CloudLab portal (reload) if it does not boot".into());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
