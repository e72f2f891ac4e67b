//! A node opened for a run: connected with its pinned host key, locked against other applies
//! (with a heartbeat, and a takeover of a lock whose holder is provably dead), any activation
//! still in flight there waited for or decided, and unlocked at the end.

use std::sync::Arc;
use std::time::Duration;

use crate::activate::{self, Goal};
use crate::event::{Phase, Sender, State as Ev, emit};
use crate::host::{Host, HostError, HostKey, SshHost, SshTarget, argv, write_known_hosts};
use crate::report::{NodeOutcome, NodeResult, result};

/// Connects and makes the node's key known to OpenSSH too (for `nix copy`).
pub(crate) fn connect(t: SshTarget) -> Result<SshHost, HostError> {
    let h = SshHost::connect(t.clone())?;
    if let Some(k) = h.host_key() {
        let _ = write_known_hosts(&t.known_hosts, &[(t.host.clone(), t.port, k)]);
    }
    Ok(h)
}

/// Why a node could not be opened for a run.
#[derive(Debug)]
pub enum SessionError {
    /// Connecting, or a command on the node, failed.
    Host(HostError),
    /// Another apply holds the node's lock (`holder` is what it wrote there).
    Locked { holder: String },
    /// An activation from an earlier run is still deciding.
    InFlight { pending: String },
    /// The node's current system is no longer the one the plan saw.
    Changed,
}

impl SessionError {
    /// How the node's result reads: a node that did not answer is unreachable; one that
    /// answered and refused (or whose key changed) failed.
    pub fn outcome(&self) -> NodeOutcome {
        match self {
            SessionError::Host(HostError::HostKeyChanged { .. }) => NodeOutcome::Failed,
            SessionError::Host(_) => NodeOutcome::Unreachable,
            _ => NodeOutcome::Failed,
        }
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Host(e) => e.fmt(f),
            SessionError::Locked { holder } => write!(
                f,
                "node is locked by another apply ({holder}); let it finish, or if that controller is gone, run again: a lock without a heartbeat for {LOCK_STALE_MIN} min is taken over"
            ),
            SessionError::InFlight { pending } => write!(
                f,
                "an earlier activation ({pending}) is still undecided; it ends within its confirm timeout: run again after that"
            ),
            SessionError::Changed => {
                f.write_str("the node changed since the plan was made; run `edgectl plan` again")
            }
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SessionError::Host(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HostError> for SessionError {
    fn from(e: HostError) -> Self {
        SessionError::Host(e)
    }
}

/// A node opened for deployment: connected, locked, inspected.
pub struct Session {
    pub name: String,
    pub host: Box<dyn Host>,
    pub key: Option<HostKey>,
    pub system: String,
    pub current: Option<String>,
    pub generation: Option<u64>,
    /// Already on the target (goal switch): nothing to copy or activate.
    pub unchanged: bool,
    /// What this run wrote into the node's lock (see [`lock_owner`]).
    pub lock_owner: String,
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
            return Err((refused(name, system, e.into(), None), None));
        }
    };
    open_host(
        name,
        Box::new(h),
        system,
        goal,
        timeout,
        expected_current,
        tx,
    )
}

/// [`open_node`] on a host already connected: lock, wait for or decide an activation still
/// in flight, read the current system.
pub(crate) fn open_host(
    name: &str,
    h: Box<dyn Host>,
    system: &str,
    goal: Goal,
    timeout: Duration,
    expected_current: Option<Option<String>>,
    tx: &Sender,
) -> Result<Session, (NodeResult, Option<HostKey>)> {
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
                    refused(name, system, SessionError::Locked { holder }, None),
                    key,
                ));
            }
            Err(e) => return Err((refused(name, system, e.into(), None), key)),
        }
    }
    let fail = |e: SessionError, generation: Option<u64>| {
        let _ = h.run(
            &argv(["sh", "-c", NODE_UNLOCK, "edgectl-unlock", &owner]),
            true,
        );
        Err((refused(name, system, e, generation), key.clone()))
    };
    if let Err(e) = wait_for_in_flight(h.as_ref(), timeout + Duration::from_secs(30), name, tx) {
        return fail(e, None);
    }
    let (cur, generation) = match activate::current(h.as_ref()) {
        Ok(c) => c,
        Err(e) => return fail(e.into(), None),
    };
    if let Some(exp) = expected_current
        && exp != cur
    {
        return fail(SessionError::Changed, generation);
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

/// The result of a node that could not be opened.
fn refused(name: &str, system: &str, e: SessionError, generation: Option<u64>) -> NodeResult {
    result(name, system, e.outcome(), e.to_string(), generation)
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

/// How often a run refreshes its node locks, and after how many minutes without a refresh a
/// lock counts as abandoned (a controller that lost its network or was killed elsewhere).
const LOCK_HEARTBEAT: Duration = Duration::from_secs(30);

pub(crate) const LOCK_STALE_MIN: u64 = 5;

/// Takes the node lock: `sh -c NODE_LOCK edgectl-lock OWNER STALE_MIN [DEAD_OWNER]`. A free lock
/// is taken; a held one only when its owner is DEAD_OWNER (proven dead by the caller) or it has
/// not been refreshed for STALE_MIN minutes, and then as a compare-and-swap under a mutex of its
/// own, so two controllers that both judged the holder dead cannot both win. Prints the owner
/// it took over from, or the holder and exit 1.
const NODE_LOCK: &str = node_script!("sh/lock_take.sh");

/// Prints the holder of the node lock if one is held and alive (refreshed within STALE_MIN).
pub(crate) const LOCK_HELD: &str = node_script!("sh/lock_holder.sh");

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
const NODE_HEARTBEAT: &str = node_script!("sh/lock_heartbeat.sh");

/// Frees the lock if it is still OWNER's (`$1`); exit 1 otherwise.
pub(crate) const NODE_UNLOCK: &str = node_script!("sh/lock_release.sh");

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
) -> Result<(), SessionError> {
    let end = std::time::Instant::now() + limit;
    let mut told = false;
    let script = activate::resolve_script();
    loop {
        let o = h.run(&argv(["sh", "-c", &script, "edgectl-resolve"]), true)?;
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
            return Err(SessionError::InFlight { pending });
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
    use std::path::Path;

    #[test]
    fn a_refusal_says_whether_the_node_answered_and_what_to_do() {
        let cases = [
            (
                SessionError::Host(HostError::Unreachable("timed out".into())),
                NodeOutcome::Unreachable,
            ),
            (
                SessionError::Host(HostError::HostKeyChanged {
                    expected: "a".into(),
                    found: "b".into(),
                }),
                NodeOutcome::Failed,
            ),
            (
                SessionError::Locked {
                    holder: "alice@laptop pid 7".into(),
                },
                NodeOutcome::Failed,
            ),
            (
                SessionError::InFlight {
                    pending: "t1".into(),
                },
                NodeOutcome::Failed,
            ),
            (SessionError::Changed, NodeOutcome::Failed),
        ];
        for (e, outcome) in cases {
            assert_eq!(e.outcome(), outcome, "{e}");
        }
        let locked = SessionError::Locked {
            holder: "alice@laptop pid 7".into(),
        }
        .to_string();
        assert!(locked.starts_with("node is locked by another apply (alice@laptop pid 7)"));
        assert!(locked.contains(&format!("{LOCK_STALE_MIN} min is taken over")));
        let r = refused("n1", "/nix/store/x", SessionError::Changed, Some(3));
        assert_eq!(
            (r.result, r.message.as_str(), r.generation),
            (
                NodeOutcome::Failed,
                "the node changed since the plan was made; run `edgectl plan` again",
                Some(3)
            )
        );
    }

    /// Runs a lock script against a node state folder at `d` instead of the node's.
    fn lock_script(script: &str, d: &Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script.replace(crate::activate::STATE_DIR, d.to_str().unwrap()))
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
}

/// What the controller decides while opening a node, against scripted nodes: lock taken,
/// refused or taken over, an earlier activation waited for, a node that changed since the plan.
#[cfg(test)]
mod decisions {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::event::Event;
    use crate::fake::{FakeHost, exit, ok};

    const NEW: &str = "/nix/store/new-system";
    const OLD: &str = "/nix/store/old-system";

    /// A node on OLD (generation 7) whose lock is free and with nothing in flight.
    fn node() -> FakeHost {
        let h = FakeHost::new("n1");
        h.on_name("edgectl-lock", |_| ok(""));
        h.on_name("edgectl-unlock", |_| ok(""));
        h.on_name("edgectl-resolve", |_| ok(""));
        h.on_name("edgectl-current", |_| {
            ok(&format!("{OLD}\nsystem-7-link\n"))
        });
        h
    }

    type Opened = Result<Session, (NodeResult, Option<HostKey>)>;

    fn open(h: &FakeHost, goal: Goal, expected: Option<Option<String>>) -> (Opened, Vec<Event>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let r = open_host(
            "n1",
            Box::new(h.clone()),
            NEW,
            goal,
            Duration::from_secs(5),
            expected,
            &tx,
        );
        drop(tx);
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (r, events)
    }

    #[test]
    fn a_free_node_is_locked_read_and_left_locked_for_the_run() {
        let h = node();
        let (r, _) = open(&h, Goal::Switch, None);
        let Ok(s) = r else { panic!("not opened") };
        assert_eq!(s.current.as_deref(), Some(OLD));
        assert_eq!(s.generation, Some(7));
        assert!(!s.unchanged);
        assert_eq!(
            h.scripts(),
            ["edgectl-lock", "edgectl-resolve", "edgectl-current"]
        );
        assert!(s.lock_owner.starts_with("edgectl user="));
    }

    #[test]
    fn a_node_already_on_the_system_is_unchanged_only_for_switch() {
        let h = node();
        h.on_name("edgectl-current", |_| {
            ok(&format!("{NEW}\nsystem-8-link\n"))
        });
        assert!(open(&h, Goal::Switch, None).0.ok().unwrap().unchanged);
        assert!(!open(&h, Goal::Boot, None).0.ok().unwrap().unchanged);
    }

    #[test]
    fn a_lock_held_by_a_live_apply_is_refused_and_named() {
        let h = node();
        let holder = "edgectl user=bob host=laptop machine=elsewhere pid=1 start=1 run=x";
        h.on_name("edgectl-lock", move |_| {
            Ok(crate::host::Output {
                status: 1,
                stdout: format!("{holder}\n"),
                stderr: String::new(),
            })
        });
        let (r, _) = open(&h, Goal::Switch, None);
        let (res, key) = r.err().expect("refused");
        assert_eq!(res.result, NodeOutcome::Failed);
        assert!(
            res.message.contains("locked by another apply"),
            "{}",
            res.message
        );
        assert!(res.message.contains("user=bob"), "{}", res.message);
        assert!(key.is_some(), "the host key is still recorded");
        // One attempt, no takeover, and nothing of ours to unlock.
        assert_eq!(h.scripts(), ["edgectl-lock"]);
    }

    #[test]
    fn a_lock_whose_holder_died_here_is_taken_over_once() {
        let h = node();
        // A holder on this machine whose process is gone.
        let dead = format!(
            "edgectl user=root host=here machine={} pid=4294967 start=1 run=y",
            machine_id()
        );
        let tries: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let t = tries.clone();
        let d = dead.clone();
        h.on_name("edgectl-lock", move |args| {
            t.lock().unwrap().push(args.to_vec());
            if args[2] == d {
                ok(&format!("took over from: {d}\n"))
            } else {
                exit(1, "").map(|mut o| {
                    o.stdout = format!("{d}\n");
                    o
                })
            }
        });
        let (r, events) = open(&h, Goal::Switch, None);
        assert!(r.is_ok());
        let tries = tries.lock().unwrap();
        assert_eq!(tries.len(), 2, "{tries:?}");
        assert_eq!(tries[0][2], "", "first without stealing");
        assert_eq!(tries[1][2], dead, "then naming the dead holder");
        assert!(
            events
                .iter()
                .any(|e| e.state == Ev::Warning && e.message.contains("took over")),
            "{events:?}"
        );
    }

    #[test]
    fn a_node_changed_since_the_plan_fails_and_is_unlocked() {
        let h = node();
        let (r, _) = open(
            &h,
            Goal::Switch,
            Some(Some("/nix/store/what-the-plan-saw".into())),
        );
        let (res, _) = r.err().expect("refused");
        assert_eq!(res.result, NodeOutcome::Failed);
        assert!(
            res.message.contains("run `edgectl plan` again"),
            "{}",
            res.message
        );
        assert_eq!(
            h.scripts().last().map(String::as_str),
            Some("edgectl-unlock")
        );
    }

    #[test]
    fn an_earlier_activation_still_running_is_waited_for() {
        let h = node();
        let n: Arc<Mutex<u32>> = Arc::default();
        let c = n.clone();
        h.on_name("edgectl-resolve", move |_| {
            let mut g = c.lock().unwrap();
            *g += 1;
            ok(if *g < 3 {
                "pending tok1\n"
            } else {
                "resolved tok1 rolled-back\n"
            })
        });
        let (r, events) = open(&h, Goal::Switch, None);
        assert!(r.is_ok());
        assert_eq!(*n.lock().unwrap(), 3);
        assert!(
            events
                .iter()
                .any(|e| e.message.contains("waiting for an earlier activation"))
        );
        assert!(events.iter().any(|e| e.message.contains("is now decided")));
    }

    #[test]
    fn a_node_that_stops_answering_while_locked_is_unreachable_and_unlocked() {
        let h = node();
        h.on_name("edgectl-current", |_| {
            Err(HostError::Unreachable("connection reset".into()))
        });
        let (r, _) = open(&h, Goal::Switch, None);
        let (res, _) = r.err().expect("refused");
        assert_eq!(res.result, NodeOutcome::Unreachable);
        assert_eq!(
            h.scripts().last().map(String::as_str),
            Some("edgectl-unlock")
        );
    }
}
