//! Activation with confirmation (deploy-rs's "magic rollback", with its races closed):
//! - one node-side process runs the switch and then decides: it is started detached from the
//!   SSH session (systemd-run where systemd runs the node, otherwise setsid), so a dropped
//!   connection cannot kill it half-way, and with an explicit PATH, because NixOS's transient
//!   units get none but systemd's own tools;
//! - `switch` activates with `switch-to-configuration test` first: the new generation becomes
//!   the profile's and the boot default only once confirmed, so a node that crashes or reboots
//!   before that comes back on its confirmed generation;
//! - the confirm clock starts when the switch has finished, so a slow switch is never rolled
//!   back while it runs;
//! - confirmation arrives over a brand-new SSH connection;
//! - confirmation and the deadline race for one `mkdir`, so exactly one of "confirmed" and
//!   "rolled back" wins, never both; a failed switch rolls back at once; a rollback that fails
//!   is reported as failed, with its error;
//! - every run records its boot id and pid, so a later apply can tell an activation whose
//!   process died (killed, or the node rebooted) from one still running, and decide it.
//!
//! All state lives under [`STATE_DIR`] on the node (root-only, survives reboots).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::host::{Host, HostError, argv};

pub const STATE_DIR: &str = state_dir!();
pub const PROFILE: &str = "/nix/var/nix/profiles/system";

/// Shell functions shared by [`ACTIVATE`] and [`RESOLVE`]; they expect `run`, `new`, `prev`,
/// `goal` and `log` set.
const FUNCTIONS: &str = include_str!("sh/activation_functions.sh");

/// Runs on the node as root: `sh -c ACTIVATE edgectl-activate NEW GOAL TIMEOUT TOKEN`.
const ACTIVATE_BODY: &str = node_script!("sh/activate.sh");

/// Starts ACTIVATE detached: `sh -c LAUNCH edgectl-launch ACTIVATE NEW GOAL TIMEOUT TOKEN`.
/// systemd-run where systemd runs this node (its /run says so), so the activation is a unit
/// of its own that survives the SSH session; setsid elsewhere. The launcher's and the unit's
/// own output go to the run's launch.log.
pub const LAUNCH: &str = node_script!("sh/launch_activation.sh");

/// Confirms, if the deadline has not already decided to roll back. Exit 0: confirmed (the
/// node then makes it the boot default); 2: too late.
pub const CONFIRM: &str = node_script!("sh/confirm_activation.sh");

/// Exit 0 while the run's activation process lives: same boot, and its pid still an
/// edgectl-activate (not a pid reused by something else).
const LIVE: &str = node_script!("sh/activation_alive.sh");

/// Claims a run that has not begun, so it never will. Exit 0: claimed (nothing changed).
const ABANDON: &str = node_script!("sh/abandon_activation.sh");

/// What a later apply runs first: every undecided activation is reported `pending TOKEN`
/// while its process lives (same boot id, its pid still an edgectl-activate), or decided now
/// and reported `resolved TOKEN STATUS`: after a reboot the node runs its boot default, which
/// only confirmed generations become, so the profile goes back to it where a commit was cut
/// short; in the same boot, an activation whose process was killed is rolled back, and a
/// confirmed one whose commit was cut short is committed.
const RESOLVE_BODY: &str = node_script!("sh/resolve_in_flight.sh");

/// What [`resolve_script`] starts with: a PATH that finds the tools of a NixOS or another Linux.
const RESOLVE_PATH: &str = include_str!("sh/resolve_in_flight_path.sh");

/// The activation script: [`FUNCTIONS`] then its body.
pub fn activate_script() -> String {
    format!("{FUNCTIONS}{ACTIVATE_BODY}")
}

/// The in-flight resolver: [`RESOLVE_PATH`], [`FUNCTIONS`], then its body.
pub fn resolve_script() -> String {
    format!("{RESOLVE_PATH}{FUNCTIONS}{RESOLVE_BODY}")
}

/// `apply --goal`: how far to go, named as `switch-to-configuration` names its verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Goal {
    /// Build the systems; touch no node.
    Build,
    /// Build and copy the closures; activate nothing.
    Push,
    /// Activate now and make it the boot default, once the node confirms.
    Switch,
    /// Make it the boot default only.
    Boot,
    /// Activate now, not for the next boot.
    Test,
    /// Print what activation would do.
    DryActivate,
}

impl Goal {
    /// The `switch-to-configuration` verb, for goals that activate.
    pub fn verb(self) -> Option<&'static str> {
        match self {
            Goal::Switch => Some("switch"),
            Goal::Boot => Some("boot"),
            Goal::Test => Some("test"),
            Goal::DryActivate => Some("dry-activate"),
            Goal::Build | Goal::Push => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "detail")]
pub enum Outcome {
    /// Activated and confirmed (or, for boot/dry-activate, done).
    Confirmed,
    /// The activation command failed; the node went back at once.
    Failed(String),
    /// Not confirmed in time; the node went back by itself.
    RolledBack(String),
    /// Never heard back; the node's watcher reverts it after the timeout.
    Unknown(String),
}

pub fn token() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{t:x}-{}", std::process::id())
}

fn status_of(h: &dyn Host, token: &str) -> Result<String, HostError> {
    let o = h.run(
        &argv([
            "sh",
            "-c",
            "cat \"$1\" 2>/dev/null || true",
            "edgectl-status",
            &format!("{STATE_DIR}/run/{token}/status"),
        ]),
        true,
    )?;
    Ok(o.stdout.trim().to_string())
}

/// How long an activation may take to write its first status before it counts as not started.
pub const START_GRACE: Duration = Duration::from_secs(20);
/// How long a switch may run before the controller stops waiting for it (the node still
/// decides it; the next apply resolves it).
pub const SWITCH_LIMIT: Duration = Duration::from_secs(3600);
/// How long making a confirmed generation the boot default may take.
const COMMIT_LIMIT: Duration = Duration::from_secs(600);

/// The protocol's clocks, one value in production; unit tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub start_grace: Duration,
    pub switch_limit: Duration,
    pub commit_limit: Duration,
    /// How much longer than the confirm timeout a switching node may stay out of reach (the
    /// node rolls back by itself by then).
    pub reach_grace: Duration,
    /// Between two reads of the run's status.
    pub poll: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            start_grace: START_GRACE,
            switch_limit: SWITCH_LIMIT,
            commit_limit: COMMIT_LIMIT,
            reach_grace: Duration::from_secs(15),
            poll: Duration::from_millis(100),
        }
    }
}

/// Why the controller could not follow an activation to its end. The node decides by itself
/// either way (it rolls back unless confirmed), so each message says how to learn the result.
#[derive(Debug)]
pub enum ActivateError {
    /// A step of the protocol could not be run on the node.
    Host(HostError),
    /// The node did not answer for longer than it may (`secs`); `last` is the last failure.
    OutOfReach { secs: u64, last: HostError },
    /// The run's status was still not final after `secs`.
    Undecided { secs: u64 },
}

impl std::fmt::Display for ActivateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActivateError::Host(e) => write!(
                f,
                "{e}; once the node answers, `edgectl apply` (or `edgectl status`) reports how the activation ended"
            ),
            ActivateError::OutOfReach { secs, last } => write!(
                f,
                "the node stayed out of reach for {secs} s ({last}); check its console or network, then run `edgectl status` to see which generation it runs"
            ),
            ActivateError::Undecided { secs } => write!(
                f,
                "still undecided after {secs} s; the node finishes by itself, and `edgectl status` shows the outcome"
            ),
        }
    }
}

impl std::error::Error for ActivateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ActivateError::Host(e) | ActivateError::OutOfReach { last: e, .. } => Some(e),
            ActivateError::Undecided { .. } => None,
        }
    }
}

impl From<HostError> for ActivateError {
    fn from(e: HostError) -> Self {
        ActivateError::Host(e)
    }
}

/// Polls the run's status until `done` says it is final, over `h` or, once that breaks, fresh
/// connections; `lost` is how long the node may stay out of reach.
fn wait_status(
    h: &dyn Host,
    token: &str,
    (limit, lost, poll): (Duration, Duration, Duration),
    done: &dyn Fn(&str) -> bool,
) -> Result<String, ActivateError> {
    let end = Instant::now() + limit;
    let mut fresh: Option<Box<dyn Host>> = None;
    let mut out_of_reach: Option<Instant> = None;
    let mut polls = 0u32;
    loop {
        let on: &dyn Host = fresh.as_deref().unwrap_or(h);
        match status_of(on, token) {
            Ok(s) => {
                out_of_reach = None;
                if done(&s) {
                    return Ok(s);
                }
                // Every 20 polls (2 s): is the process that decides this run still there? If it
                // died (killed, or the node rebooted) nothing would ever decide it: do so now.
                polls += 1;
                if !s.is_empty() && polls.is_multiple_of(20) && !alive(on, token) {
                    let _ = on.run(
                        &argv(["sh", "-c", &resolve_script(), "edgectl-resolve"]),
                        true,
                    );
                    let s = status_of(on, token).unwrap_or(s);
                    if !matches!(
                        s.as_str(),
                        "started" | "switching" | "activated" | "rolling-back" | "committing"
                    ) {
                        return Ok(s);
                    }
                }
            }
            Err(e) => {
                let since = *out_of_reach.get_or_insert_with(Instant::now);
                if since.elapsed() > lost {
                    return Err(ActivateError::OutOfReach {
                        secs: since.elapsed().as_secs(),
                        last: e,
                    });
                }
                fresh = h.fresh().ok();
            }
        }
        if Instant::now() > end {
            return Err(ActivateError::Undecided {
                secs: limit.as_secs(),
            });
        }
        std::thread::sleep(poll);
    }
}

fn alive(h: &dyn Host, token: &str) -> bool {
    // Unreachable counts as alive: only a node that answers can say its process is gone.
    h.run(&argv(["sh", "-c", LIVE, "edgectl-live", token]), true)
        .map(|o| o.ok())
        .unwrap_or(true)
}

/// The outcome a final status stands for.
fn outcome_of(h: &dyn Host, token: &str, s: &str) -> Outcome {
    if s == "done" {
        return Outcome::Confirmed;
    }
    let log = || tail_log(h, token);
    if let Some(r) = s.strip_prefix("rollback-failed ") {
        return Outcome::Failed(format!(
            "the rollback failed too (exit {r}); the node may run neither generation cleanly: {}",
            log()
        ));
    }
    if let Some(rc) = s.strip_prefix("commit-failed ") {
        return Outcome::Failed(format!(
            "confirmed, but making it the boot default failed (exit {rc}); it runs now, and a reboot returns to the previous generation: {}",
            log()
        ));
    }
    if s.starts_with("failed") {
        return Outcome::Failed(format!("activation {s}; rolled back: {}", log()));
    }
    if s.starts_with("interrupted by a reboot") {
        return Outcome::RolledBack(format!("the node rebooted during the activation: {s}"));
    }
    if s.starts_with("abandoned") {
        return Outcome::Failed(format!("the activation process died: {s}"));
    }
    if s.starts_with("rolled-back") {
        if s.contains("process died") {
            return Outcome::RolledBack(format!("the activation process died, so it was {s}"));
        }
        return Outcome::RolledBack(
            "not confirmed in time; the node went back to its previous generation by itself".into(),
        );
    }
    Outcome::Unknown(format!("activation ended as `{s}`"))
}

/// Why an activation did not start: the launcher's output and the unit's journal.
fn not_started(h: &dyn Host, token: &str) -> String {
    let script = node_script!("sh/why_not_started.sh");
    h.run(&argv(["sh", "-c", script, "edgectl-why", token]), true)
        .map(|o| o.stdout.trim().replace('\n', " | "))
        .unwrap_or_else(|e| e.to_string())
}

/// Runs the whole protocol against one node.
pub fn activate(
    h: &dyn Host,
    system: &str,
    goal: Goal,
    confirm_timeout: Duration,
    on_state: &dyn Fn(&str),
) -> Result<Outcome, ActivateError> {
    activate_with(
        h,
        system,
        goal,
        confirm_timeout,
        on_state,
        &Timing::default(),
    )
}

/// [`activate`] on the given clocks.
pub fn activate_with(
    h: &dyn Host,
    system: &str,
    goal: Goal,
    confirm_timeout: Duration,
    on_state: &dyn Fn(&str),
    t: &Timing,
) -> Result<Outcome, ActivateError> {
    let verb = goal.verb().expect("an activating goal");
    let token = token();
    let secs = confirm_timeout.as_secs().max(1).to_string();
    let script = activate_script();
    let launch = argv([
        "sh",
        "-c",
        LAUNCH,
        "edgectl-launch",
        &script,
        system,
        verb,
        &secs,
        &token,
    ]);
    let o = h.run(&launch, true)?;
    if !o.ok() {
        return Ok(Outcome::Failed(format!(
            "could not start activation: {}",
            o.stderr.trim()
        )));
    }
    on_state("activating");
    // Started at all? A missing status after the grace period is taken over, so it never starts
    // later, and reported with what the launcher and the journal say.
    let began = wait_status(h, &token, (t.start_grace, t.start_grace, t.poll), &|s| {
        !s.is_empty()
    });
    if began.is_err() {
        let claimed = h
            .run(
                &argv(["sh", "-c", ABANDON, "edgectl-abandon", &token]),
                true,
            )
            .map(|o| o.ok())
            .unwrap_or(false);
        if claimed {
            return Ok(Outcome::Failed(format!(
                "activation did not start within {} s; the node was not changed: {}",
                t.start_grace.as_secs(),
                not_started(h, &token)
            )));
        }
    }
    // The switch may take as long as it takes; the node's clock starts once it is done.
    let settled = |s: &str| !matches!(s, "" | "started" | "switching");
    let s = match wait_status(
        h,
        &token,
        (t.switch_limit, confirm_timeout + t.reach_grace, t.poll),
        &settled,
    ) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Outcome::Unknown(format!(
                "{e}; the node decides by itself (rolls back unless confirmed) and the next apply reports it"
            )));
        }
    };
    if s != "activated" {
        let s = if s == "rolling-back" {
            wait_status(h, &token, (t.commit_limit, t.commit_limit, t.poll), &|s| {
                s != "rolling-back"
            })
            .unwrap_or(s)
        } else {
            s
        };
        return Ok(outcome_of(h, &token, &s));
    }
    on_state("confirming");
    // A brand-new connection proves the new configuration still lets us in.
    let c = match h.fresh() {
        Ok(c) => c,
        Err(e) => {
            return Ok(Outcome::Unknown(format!(
                "activated, but a new SSH connection failed ({e}); the node goes back by itself within {}s",
                confirm_timeout.as_secs()
            )));
        }
    };
    let o = c.run(
        &argv(["sh", "-c", CONFIRM, "edgectl-confirm", &token]),
        true,
    )?;
    if o.ok() {
        on_state("committing");
    }
    // Either way the node now finishes on its own: committing, or going back.
    let last = wait_status(
        c.as_ref(),
        &token,
        (t.commit_limit, t.commit_limit, t.poll),
        &|s| !matches!(s, "activated" | "committing" | "rolling-back"),
    );
    Ok(match last {
        Ok(s) => outcome_of(c.as_ref(), &token, &s),
        Err(e) if o.ok() => Outcome::Unknown(format!("confirmed, but {e}")),
        Err(e) => Outcome::Unknown(format!("confirmation came too late, and {e}")),
    })
}

fn tail_log(h: &dyn Host, token: &str) -> String {
    h.run(
        &argv(["tail", "-n", "5", &format!("{STATE_DIR}/run/{token}/log")]),
        true,
    )
    .map(|o| o.stdout.trim().replace('\n', " | "))
    .unwrap_or_default()
}

/// The node's current system and generation, from its system profile.
pub fn current(h: &dyn Host) -> Result<(Option<String>, Option<u64>), HostError> {
    let o = h.run(
        &argv([
            "sh",
            "-c",
            "readlink -f \"$1\" || true; readlink \"$1\" || true",
            "edgectl-current",
            PROFILE,
        ]),
        true,
    )?;
    Ok(parse_current(&o.stdout))
}

/// The system (first line: the profile resolved) and generation (second line: its link) of
/// what `readlink -f PROFILE; readlink PROFILE` printed.
pub fn parse_current(text: &str) -> (Option<String>, Option<u64>) {
    let mut lines = text.lines();
    let path = lines
        .next()
        .map(str::trim)
        .filter(|s| s.starts_with("/nix/store/"))
        .map(String::from);
    let generation = lines.next().and_then(|l| {
        l.trim()
            .strip_prefix("system-")
            .and_then(|r| r.strip_suffix("-link"))
            .and_then(|n| n.parse().ok())
    });
    (path, generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resolver against run folders under `d` instead of the node's /nix.
    fn resolve_in(d: &std::path::Path) -> std::process::Output {
        let script = resolve_script()
            .replace(STATE_DIR, &d.join("edgectl").display().to_string())
            .replace(PROFILE, &d.join("profile").display().to_string());
        std::process::Command::new("sh")
            .args(["-c", &script, "edgectl-resolve"])
            .output()
            .unwrap()
    }

    fn run_dir(d: &std::path::Path, token: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let run = d.join("edgectl/run").join(token);
        std::fs::create_dir_all(&run).unwrap();
        for (f, text) in files {
            std::fs::write(run.join(f), format!("{text}\n")).unwrap();
        }
        run
    }

    /// A confirmed `test` activation whose process died while committing is done: `test` never
    /// touches the profile or the boot default, so nothing is committed for it.
    #[test]
    fn a_dead_confirmed_test_activation_commits_nothing() {
        let t = tempfile::tempdir().unwrap();
        let here = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let run = run_dir(
            t.path(),
            "t1",
            &[
                ("status", "committing"),
                ("goal", "test"),
                ("new", "/nix/store/00000000000000000000000000000000-new"),
                ("prev", ""),
                ("pid", "999999999"),
                ("boot", here.trim()),
                ("confirmed", ""),
            ],
        );
        let o = resolve_in(t.path());
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "resolved t1 done"
        );
        assert_eq!(
            std::fs::read_to_string(run.join("status")).unwrap().trim(),
            "done"
        );
        assert!(
            !t.path().join("profile").exists(),
            "a test activation set the profile"
        );
    }

    /// Runs whose process lives are left alone; a run that never began is only marked.
    #[test]
    fn live_runs_wait_and_unstarted_ones_are_abandoned() {
        let t = tempfile::tempdir().unwrap();
        let here = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let mut live = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true", "edgectl-activate"])
            .spawn()
            .unwrap();
        run_dir(
            t.path(),
            "live",
            &[
                ("status", "activated"),
                ("goal", "switch"),
                ("pid", &live.id().to_string()),
                ("boot", here.trim()),
            ],
        );
        run_dir(
            t.path(),
            "dead",
            &[
                ("status", "started"),
                ("goal", "switch"),
                ("pid", "999999999"),
                ("boot", here.trim()),
            ],
        );
        let o = resolve_in(t.path());
        let _ = live.kill();
        let _ = live.wait();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("pending live"), "{out}");
        assert!(
            out.contains("resolved dead abandoned before any change"),
            "{out}"
        );
    }
}

/// The controller's side of the protocol against a scripted node: what it concludes from
/// each sequence of statuses, and what it asks of the node on the way.
#[cfg(test)]
mod protocol {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::fake::{Call, FakeHost, exit, ok};

    const FAST: Timing = Timing {
        start_grace: Duration::from_millis(100),
        switch_limit: Duration::from_secs(5),
        commit_limit: Duration::from_secs(5),
        reach_grace: Duration::from_millis(50),
        poll: Duration::from_millis(1),
    };

    /// A node whose run status goes through `statuses` (one per read, then stays on the last)
    /// until the controller confirms, after which it reads `after_confirm`.
    fn node(statuses: &[&str], after_confirm: &str) -> FakeHost {
        let h = FakeHost::new("n1");
        let seq: Arc<Mutex<(Vec<String>, bool)>> = Arc::new(Mutex::new((
            statuses.iter().rev().map(|s| s.to_string()).collect(),
            false,
        )));
        let after = after_confirm.to_string();
        h.on_name("edgectl-launch", |_| ok(""));
        h.on_name("edgectl-live", |_| ok(""));
        h.on(
            |a| a[0] == "tail",
            |_| ok("the last lines of the run's log"),
        );
        let s = seq.clone();
        h.on_name("edgectl-status", move |_| {
            let mut g = s.lock().unwrap();
            if g.1 {
                return ok(&after);
            }
            let cur = if g.0.len() > 1 {
                g.0.pop()
            } else {
                g.0.last().cloned()
            };
            ok(&cur.unwrap_or_default())
        });
        let s = seq.clone();
        h.on_name("edgectl-confirm", move |_| {
            s.lock().unwrap().1 = true;
            ok("")
        });
        h
    }

    fn run(h: &FakeHost) -> Outcome {
        activate_with(
            h,
            "/nix/store/new-system",
            Goal::Switch,
            Duration::from_secs(2),
            &|_| {},
            &FAST,
        )
        .unwrap()
    }

    #[test]
    fn confirmed_over_a_new_connection_once_activated() {
        let h = node(&["started", "switching", "activated"], "done");
        assert_eq!(run(&h), Outcome::Confirmed);
        let calls = h.calls();
        let fresh = calls.iter().position(|c| *c == Call::Fresh).unwrap();
        let confirm = calls
            .iter()
            .position(|c| c.script_name() == Some("edgectl-confirm"))
            .unwrap();
        assert!(fresh < confirm, "confirmation rides a new connection");
        let launch = &calls[0];
        let Call::Run { argv, root } = launch else {
            panic!("{launch:?}")
        };
        assert!(root);
        assert_eq!(&argv[5..8], ["/nix/store/new-system", "switch", "2"]);
    }

    #[test]
    fn a_node_lost_mid_switch_is_unknown_and_says_how_to_find_out() {
        let h = node(&["switching"], "done");
        h.on_name("edgectl-status", |_| {
            Err(HostError::Unreachable("connection reset".into()))
        });
        h.fail_fresh(Some(HostError::Unreachable("no route to host".into())));
        match run(&h) {
            Outcome::Unknown(m) => {
                assert!(m.starts_with("the node stayed out of reach for 2 s"), "{m}");
                assert!(m.contains("connection reset"), "{m}");
                assert!(m.contains("`edgectl status`"), "{m}");
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_launcher_that_fails_is_a_failure_and_nothing_is_awaited() {
        let h = node(&["started"], "done");
        h.on_name("edgectl-launch", |_| {
            exit(1, "sudo: a password is required")
        });
        match run(&h) {
            Outcome::Failed(m) => assert!(m.contains("a password is required"), "{m}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(h.scripts(), ["edgectl-launch"]);
    }

    #[test]
    fn a_run_that_never_starts_is_claimed_and_reported_with_why() {
        let h = node(&[""], "done");
        h.on_name("edgectl-abandon", |_| ok(""));
        h.on_name("edgectl-why", |_| ok("Failed to start: no such unit"));
        match run(&h) {
            Outcome::Failed(m) => {
                assert!(m.contains("did not start"), "{m}");
                assert!(m.contains("no such unit"), "{m}");
            }
            o => panic!("{o:?}"),
        }
        assert!(!h.scripts().contains(&"edgectl-confirm".to_string()));
    }

    #[test]
    fn a_run_that_starts_late_is_followed_when_it_cannot_be_claimed() {
        // The claim loses the race: the activation began after all, and is followed to its end.
        let h = node(&["", "", "", "started", "activated"], "done");
        h.on_name("edgectl-abandon", |_| exit(1, ""));
        let statuses = Arc::new(Mutex::new(0u32));
        let n = statuses.clone();
        h.on_name("edgectl-status", move |_| {
            let mut g = n.lock().unwrap();
            *g += 1;
            // Empty until the start grace is over, then it runs.
            ok(if *g < 200 { "" } else { "activated" })
        });
        h.on_name("edgectl-confirm", |_| ok(""));
        let o = run(&h);
        assert!(
            matches!(o, Outcome::Confirmed | Outcome::Unknown(_)),
            "{o:?}"
        );
        assert!(h.scripts().contains(&"edgectl-abandon".to_string()));
    }

    #[test]
    fn no_new_connection_after_activation_means_the_node_decides() {
        let h = node(&["started", "activated"], "done");
        h.fail_fresh(Some(HostError::Unreachable("connection refused".into())));
        match run(&h) {
            Outcome::Unknown(m) => assert!(m.contains("goes back by itself"), "{m}"),
            o => panic!("{o:?}"),
        }
        assert!(!h.scripts().contains(&"edgectl-confirm".to_string()));
    }

    #[test]
    fn a_late_confirmation_ends_rolled_back() {
        let h = node(&["started", "activated"], "rolled-back");
        h.on_name("edgectl-confirm", |_| exit(2, "too late"));
        // The node's deadline won: its status moves on without our confirmation.
        let seen = Arc::new(Mutex::new(false));
        let s = seen.clone();
        h.on_name("edgectl-status", move |_| {
            let mut g = s.lock().unwrap();
            let first = !*g;
            *g = true;
            ok(if first { "activated" } else { "rolled-back" })
        });
        match run(&h) {
            Outcome::RolledBack(m) => assert!(m.contains("not confirmed in time"), "{m}"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn final_statuses_map_to_outcomes() {
        for (status, want) in [
            ("failed 3", "Failed"),
            ("rollback-failed 4", "Failed"),
            ("rolled-back (activation process died)", "RolledBack"),
            ("interrupted by a reboot", "RolledBack"),
            ("abandoned", "Failed"),
            ("something new", "Unknown"),
        ] {
            let h = node(&["started", status], "done");
            let got = run(&h);
            let name = match &got {
                Outcome::Confirmed => "Confirmed",
                Outcome::Failed(_) => "Failed",
                Outcome::RolledBack(_) => "RolledBack",
                Outcome::Unknown(_) => "Unknown",
            };
            assert_eq!(name, want, "{status}: {got:?}");
        }
    }

    #[test]
    fn a_dead_activation_process_is_resolved_not_awaited() {
        // Stuck in "switching" with its process gone: the controller runs the resolver, which
        // decides the run, instead of waiting out the switch limit.
        let h = node(&["started", "switching"], "done");
        h.on_name("edgectl-live", |_| exit(1, ""));
        let resolved = Arc::new(Mutex::new(false));
        let r = resolved.clone();
        h.on_name("edgectl-resolve", move |_| {
            *r.lock().unwrap() = true;
            ok("resolved x rolled-back (activation process died)")
        });
        let r = resolved.clone();
        h.on_name("edgectl-status", move |_| {
            ok(if *r.lock().unwrap() {
                "rolled-back (activation process died)"
            } else {
                "switching"
            })
        });
        match run(&h) {
            Outcome::RolledBack(m) => assert!(m.contains("process died"), "{m}"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_node_out_of_reach_too_long_is_unknown() {
        let h = node(&["started"], "done");
        let n = Arc::new(Mutex::new(0u32));
        let c = n.clone();
        h.on_name("edgectl-status", move |_| {
            let mut g = c.lock().unwrap();
            *g += 1;
            if *g < 3 {
                ok("switching")
            } else {
                Err(HostError::Unreachable("no route to host".into()))
            }
        });
        h.fail_fresh(Some(HostError::Unreachable("no route to host".into())));
        let t = Timing {
            switch_limit: Duration::from_secs(60),
            ..FAST
        };
        let o = activate_with(
            &h,
            "/nix/store/new-system",
            Goal::Switch,
            Duration::from_secs(0),
            &|_| {},
            &Timing {
                poll: Duration::from_millis(20),
                ..t
            },
        );
        match o.unwrap() {
            Outcome::Unknown(m) => assert!(m.contains("out of reach"), "{m}"),
            o => panic!("{o:?}"),
        }
    }
}
