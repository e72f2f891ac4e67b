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
//! All state lives under /nix/var/edgectl on the node (root-only, survives reboots).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::host::{Host, HostError, argv};

pub const STATE_DIR: &str = "/nix/var/edgectl";
pub const PROFILE: &str = "/nix/var/nix/profiles/system";

/// Shell functions shared by [`ACTIVATE`] and [`RESOLVE`]; they expect `run`, `new`, `prev`,
/// `goal` and `log` set.
const FUNCTIONS: &str = r#"prof=/nix/var/nix/profiles/system
status() { printf '%s\n' "$1" > "$run/status.tmp" && mv "$run/status.tmp" "$run/status"; }
# Back to the previous generation's runtime. Its profile and boot default were never changed
# (that happens only once confirmed), so a reboot lands there too.
rollback() {
  if [ -z "$prev" ] || [ ! -e "$prev/bin/switch-to-configuration" ]; then
    echo "no previous generation to return to" >> "$log"; return 0
  fi
  "$prev/bin/switch-to-configuration" test >> "$log" 2>&1
}
# $1: the status to end on once back, e.g. "failed 3" or "rolled-back".
go_back() {
  status rolling-back
  if rollback; then status "$1"; else status "rollback-failed $? after $1"; fi
}
# The confirmed generation becomes the profile's and the boot default.
commit() {
  [ "$goal" = switch ] || return 0
  nix-env -p "$prof" --set "$new" >> "$log" 2>&1 && "$new/bin/switch-to-configuration" boot >> "$log" 2>&1
}
"#;

/// Runs on the node as root: `sh -c ACTIVATE edgectl-activate NEW GOAL TIMEOUT TOKEN`.
const ACTIVATE_BODY: &str = r#"set -u
new=$1; goal=$2; timeout=$3; token=$4
# Under NixOS's systemd-run PATH holds only systemd's own tools: name every place the tools
# of a NixOS or another Linux system live.
PATH=/run/current-system/sw/bin:$new/sw/bin:/run/wrappers/bin:/nix/var/nix/profiles/default/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}
export PATH
run=/nix/var/edgectl/run/$token
mkdir -p "$run" || exit 1
# The controller takes this first when the activation did not start in time, so a late start
# cannot change a node that was reported unchanged.
mkdir "$run/began" 2>/dev/null || exit 0
log=$run/log
cat /proc/sys/kernel/random/boot_id > "$run/boot" 2>/dev/null
printf '%s\n' "$$" > "$run/pid"
printf '%s\n' "$new" > "$run/new"
printf '%s\n' "$goal" > "$run/goal"
prev=$(readlink -f "$prof" 2>/dev/null || true)
printf '%s\n' "$prev" > "$run/prev"
status started
case "$goal" in
  dry-activate)
    if "$new/bin/switch-to-configuration" dry-activate >> "$log" 2>&1; then status done; else status "failed $?"; fi
    exit 0 ;;
  boot)
    if nix-env -p "$prof" --set "$new" >> "$log" 2>&1 && "$new/bin/switch-to-configuration" boot >> "$log" 2>&1; then status done; else status "failed $?"; fi
    exit 0 ;;
esac
status switching
"$new/bin/switch-to-configuration" test >> "$log" 2>&1
rc=$?
if [ "$rc" -ne 0 ]; then
  mkdir "$run/decided" 2>/dev/null
  go_back "failed $rc"
  exit 0
fi
# The confirm clock starts now that the switch has finished.
status activated
i=0
while [ "$i" -lt "$timeout" ] && [ ! -e "$run/confirmed" ]; do sleep 1; i=$((i + 1)); done
if mkdir "$run/decided" 2>/dev/null; then
  go_back rolled-back
  exit 0
fi
# The confirmation took the decision, perhaps in the last second: wait for its mark.
while [ ! -e "$run/confirmed" ]; do sleep 1; done
status committing
if commit; then status done; else status "commit-failed $?"; fi
"#;

/// Starts ACTIVATE detached: `sh -c LAUNCH edgectl-launch ACTIVATE NEW GOAL TIMEOUT TOKEN`.
/// systemd-run where systemd runs this node (its /run says so), so the activation is a unit
/// of its own that survives the SSH session; setsid elsewhere. The launcher's and the unit's
/// own output go to the run's launch.log.
pub const LAUNCH: &str = r#"s=$1; shift
run=/nix/var/edgectl/run/$4
mkdir -p "$run" || exit 1
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
  printf 'systemd-run\n' > "$run/launcher"
  exec systemd-run --quiet --collect --unit="edgectl-activate-$4" \
    --property=StandardOutput="append:$run/launch.log" --property=StandardError="append:$run/launch.log" \
    /bin/sh -c "$s" edgectl-activate "$@"
fi
printf 'setsid\n' > "$run/launcher"
setsid -f /bin/sh -c "$s" edgectl-activate "$@" </dev/null >>"$run/launch.log" 2>&1
"#;

/// Confirms, if the deadline has not already decided to roll back. Exit 0: confirmed (the
/// node then makes it the boot default); 2: too late.
pub const CONFIRM: &str = r#"run=/nix/var/edgectl/run/$1
[ -d "$run" ] || exit 3
mkdir "$run/decided" 2>/dev/null || exit 2
touch "$run/confirmed"
"#;

/// Exit 0 while the run's activation process lives: same boot, and its pid still an
/// edgectl-activate (not a pid reused by something else).
const LIVE: &str = r#"run=/nix/var/edgectl/run/$1
pid=$(cat "$run/pid" 2>/dev/null); boot=$(cat "$run/boot" 2>/dev/null)
[ -n "$pid" ] && [ "$boot" = "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)" ] &&
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q edgectl-activate
"#;

/// Claims a run that has not begun, so it never will. Exit 0: claimed (nothing changed).
const ABANDON: &str = r#"mkdir "/nix/var/edgectl/run/$1/began" 2>/dev/null"#;

/// What a later apply runs first: every undecided activation is reported `pending TOKEN`
/// while its process lives (same boot id, its pid still an edgectl-activate), or decided now
/// and reported `resolved TOKEN STATUS`: after a reboot the node runs its boot default, which
/// only confirmed generations become, so the profile goes back to it where a commit was cut
/// short; in the same boot, an activation whose process was killed is rolled back, and a
/// confirmed one whose commit was cut short is committed.
const RESOLVE_BODY: &str = r#"here=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)
for run in /nix/var/edgectl/run/*; do
  [ -f "$run/status" ] || continue
  s=$(cat "$run/status")
  case "$s" in started|switching|activated|rolling-back|committing) ;; *) continue ;; esac
  token=${run##*/}; log=$run/log
  new=$(cat "$run/new" 2>/dev/null); prev=$(cat "$run/prev" 2>/dev/null)
  goal=$(cat "$run/goal" 2>/dev/null); pid=$(cat "$run/pid" 2>/dev/null); boot=$(cat "$run/boot" 2>/dev/null)
  if [ "$boot" = "$here" ] && [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q edgectl-activate; then
    echo "pending $token"; continue
  fi
  mkdir "$run/decided" 2>/dev/null
  # A switch the dead process started may still run (setsid and systemd both make the
  # activation a process group of its own): stop what of it still works on that generation.
  if [ "$boot" = "$here" ] && [ -n "$pid" ] && [ -n "$new" ]; then
    for p in $(pgrep -g "$pid" 2>/dev/null); do
      tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF "$new" && kill -KILL "$p" 2>/dev/null
    done
  fi
  if [ "$boot" != "$here" ]; then
    if [ "$s" = committing ] && [ -n "$prev" ]; then
      nix-env -p "$prof" --set "$prev" >> "$log" 2>&1 && "$prev/bin/switch-to-configuration" boot >> "$log" 2>&1
    fi
    status "interrupted by a reboot during $s; the node runs its confirmed generation"
  else
    if [ "$s" = started ]; then
      status "abandoned before any change"
    elif [ -e "$run/confirmed" ]; then
      if commit; then status done; else status "commit-failed $?"; fi
    else
      go_back "rolled-back after its process died"
    fi
  fi
  echo "resolved $token $(cat "$run/status")"
done
# Keep the last 50 runs' logs.
ls -1dt /nix/var/edgectl/run/* 2>/dev/null | tail -n +51 | while read -r old; do rm -rf "$old"; done
"#;

/// The activation script: [`FUNCTIONS`] then its body.
pub fn activate_script() -> String {
    format!("{FUNCTIONS}{ACTIVATE_BODY}")
}

/// The in-flight resolver: [`FUNCTIONS`] then its body.
pub fn resolve_script() -> String {
    format!(
        "PATH=/run/current-system/sw/bin:/run/wrappers/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${{PATH:+:$PATH}}\n{FUNCTIONS}{RESOLVE_BODY}"
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Goal {
    Build,
    Push,
    Switch,
    Boot,
    Test,
    DryActivate,
}

impl Goal {
    pub fn parse(s: &str) -> Option<Goal> {
        Some(match s {
            "build" => Goal::Build,
            "push" => Goal::Push,
            "switch" => Goal::Switch,
            "boot" => Goal::Boot,
            "test" => Goal::Test,
            "dry-activate" => Goal::DryActivate,
            _ => return None,
        })
    }
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

/// Polls the run's status until `done` says it is final, over `h` or, once that breaks, fresh
/// connections; `lost` is how long the node may stay out of reach.
fn wait_status(
    h: &dyn Host,
    token: &str,
    limit: Duration,
    lost: Duration,
    done: &dyn Fn(&str) -> bool,
) -> Result<String, String> {
    let end = Instant::now() + limit;
    let mut fresh: Option<Box<dyn Host>> = None;
    let mut out_of_reach: Option<(Instant, String)> = None;
    let mut polls = 0u32;
    loop {
        let on: &dyn Host = fresh.as_deref().unwrap_or(h);
        match status_of(on, token) {
            Ok(s) => {
                out_of_reach = None;
                if done(&s) {
                    return Ok(s);
                }
                // Every 2 s: is the process that decides this run still there? If it died
                // (killed, or the node rebooted) nothing would ever decide it: do so now.
                polls += 1;
                if !s.is_empty() && polls.is_multiple_of(8) && !alive(on, token) {
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
                let since = out_of_reach.get_or_insert((Instant::now(), String::new()));
                since.1 = e.to_string();
                if since.0.elapsed() > lost {
                    return Err(format!("the node stayed out of reach ({})", since.1));
                }
                fresh = h.fresh().ok();
            }
        }
        if Instant::now() > end {
            return Err(format!("still undecided after {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(250));
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
    let script = r#"run=/nix/var/edgectl/run/$1
l=$(cat "$run/launcher" 2>/dev/null)
echo "launched with ${l:-?}"
tail -n 20 "$run/launch.log" 2>/dev/null
if [ "$l" = systemd-run ]; then journalctl -u "edgectl-activate-$1" -n 20 --no-pager 2>&1; fi"#;
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
) -> Result<Outcome, HostError> {
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
    let began = wait_status(h, &token, START_GRACE, START_GRACE, &|s| !s.is_empty());
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
                START_GRACE.as_secs(),
                not_started(h, &token)
            )));
        }
    }
    // The switch may take as long as it takes; the node's clock starts once it is done.
    let settled = |s: &str| !matches!(s, "" | "started" | "switching");
    let s = match wait_status(
        h,
        &token,
        SWITCH_LIMIT,
        confirm_timeout + Duration::from_secs(15),
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
            wait_status(h, &token, COMMIT_LIMIT, COMMIT_LIMIT, &|s| {
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
    let last = wait_status(c.as_ref(), &token, COMMIT_LIMIT, COMMIT_LIMIT, &|s| {
        !matches!(s, "activated" | "committing" | "rolling-back")
    });
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
            .replace("/nix/var/edgectl", &d.join("edgectl").display().to_string())
            .replace(
                "/nix/var/nix/profiles/system",
                &d.join("profile").display().to_string(),
            );
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
