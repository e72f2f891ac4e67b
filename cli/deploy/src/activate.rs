//! Activation with confirmation (deploy-rs's "magic rollback", with its races closed):
//! - the node-side watcher is armed BEFORE the new generation is switched;
//! - activation runs detached from the SSH session (systemd-run when we share PID 1's mount
//!   namespace, otherwise setsid), so a dropped connection cannot kill it half-way;
//! - confirmation arrives over a brand-new SSH connection;
//! - confirmation and the watcher's timeout race for one `mkdir`, so exactly one of
//!   "confirmed" and "rolled back" wins, never both;
//! - a failed activation rolls back at once.
//!
//! All state lives under /nix/var/edgectl on the node (root-only, survives reboots, and is
//! private to each node of the test rig, where /run and /tmp are shared).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::host::{Host, HostError, argv};

pub const STATE_DIR: &str = "/nix/var/edgectl";
pub const PROFILE: &str = "/nix/var/nix/profiles/system";

/// Runs on the node as root: `sh -c ACTIVATE edgectl-activate NEW GOAL TIMEOUT TOKEN`.
pub const ACTIVATE: &str = r#"set -u
new=$1; goal=$2; timeout=$3; token=$4
run=/nix/var/edgectl/run/$token
prof=/nix/var/nix/profiles/system
mkdir -p "$run" || exit 1
log=$run/log
status() { printf '%s\n' "$1" > "$run/status.tmp" && mv "$run/status.tmp" "$run/status"; }
prev=$(readlink -f "$prof" 2>/dev/null || true)
printf '%s\n' "$prev" > "$run/prev"
rollback() {
  if [ -n "$prev" ] && [ -e "$prev/bin/switch-to-configuration" ]; then
    nix-env -p "$prof" --set "$prev" >> "$log" 2>&1
    "$prev/bin/switch-to-configuration" switch >> "$log" 2>&1
  else
    rm -f "$prof"
  fi
}
status started
if [ "$goal" = dry-activate ]; then
  if "$new/bin/switch-to-configuration" dry-activate >> "$log" 2>&1; then status done; else status "failed $?"; fi
  exit 0
fi
watcher=
if [ "$goal" = switch ] || [ "$goal" = test ]; then
  (
    i=0
    while [ "$i" -lt "$timeout" ]; do
      [ -e "$run/confirmed" ] && exit 0
      sleep 1; i=$((i + 1))
    done
    if mkdir "$run/decided" 2>/dev/null; then
      status rolling-back
      rollback
      status rolled-back
    fi
  ) </dev/null >/dev/null 2>&1 &
  watcher=$!
  printf '%s\n' "$watcher" > "$run/watcher"
fi
if [ "$goal" = switch ] || [ "$goal" = boot ]; then
  if ! nix-env -p "$prof" --set "$new" >> "$log" 2>&1; then
    mkdir "$run/decided" 2>/dev/null; [ -n "$watcher" ] && kill "$watcher" 2>/dev/null
    status "failed profile"; exit 0
  fi
fi
"$new/bin/switch-to-configuration" "$goal" >> "$log" 2>&1
rc=$?
if [ "$rc" -ne 0 ]; then
  if mkdir "$run/decided" 2>/dev/null; then
    [ -n "$watcher" ] && kill "$watcher" 2>/dev/null
    rollback
    status "failed $rc"
  fi
  exit 0
fi
if [ -z "$watcher" ]; then status done; exit 0; fi
status activated
wait "$watcher"
"#;

/// Starts ACTIVATE detached: `sh -c LAUNCH edgectl-launch ACTIVATE NEW GOAL TIMEOUT TOKEN`.
pub const LAUNCH: &str = r#"s=$1; shift
if [ "$(readlink /proc/1/ns/mnt 2>/dev/null)" = "$(readlink /proc/self/ns/mnt)" ] && [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
  exec systemd-run --quiet --collect --unit="edgectl-activate-$4" /bin/sh -c "$s" edgectl-activate "$@"
fi
setsid -f /bin/sh -c "$s" edgectl-activate "$@" </dev/null >/dev/null 2>&1
"#;

/// Confirms, if the watcher has not already decided to roll back. Exit 0: confirmed.
pub const CONFIRM: &str = r#"run=/nix/var/edgectl/run/$1
[ -d "$run" ] || exit 3
mkdir "$run/decided" 2>/dev/null || exit 2
touch "$run/confirmed"
printf 'confirmed\n' > "$run/status.tmp" && mv "$run/status.tmp" "$run/status"
"#;

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
        &argv(["cat", &format!("{STATE_DIR}/run/{token}/status")]),
        true,
    )?;
    Ok(o.stdout.trim().to_string())
}

/// Runs the whole protocol against one node. `reconnect` opens a brand-new connection.
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
    let launch = argv([
        "sh",
        "-c",
        LAUNCH,
        "edgectl-launch",
        ACTIVATE,
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
    // Poll over the existing session; if it breaks, keep trying fresh connections until the
    // node's own deadline (plus slack) has passed.
    let deadline = Instant::now() + confirm_timeout + Duration::from_secs(15);
    let mut fresh: Option<Box<dyn Host>> = None;
    let mut last_err = String::new();
    loop {
        let st = match fresh.as_deref() {
            Some(f) => status_of(f, &token),
            None => status_of(h, &token),
        };
        match st {
            Ok(s) if s == "activated" => break,
            Ok(s) if s == "done" => return Ok(Outcome::Confirmed),
            Ok(s) if s.starts_with("failed") => {
                return Ok(Outcome::Failed(format!(
                    "activation {s}; rolled back: {}",
                    tail_log(fresh.as_deref().unwrap_or(h), &token)
                )));
            }
            Ok(s) if s.starts_with("rolled-back") || s == "rolling-back" => {
                return Ok(Outcome::RolledBack(
                    "not confirmed in time; the node reverted by itself".into(),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                last_err = e.to_string();
                fresh = h.fresh().ok();
            }
        }
        if Instant::now() > deadline {
            return Ok(Outcome::Unknown(format!(
                "no answer within the confirm timeout ({last_err}); the node reverts to its previous generation by itself"
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    on_state("confirming");
    // A brand-new connection proves the new configuration still lets us in.
    let c = match h.fresh() {
        Ok(c) => c,
        Err(e) => {
            return Ok(Outcome::Unknown(format!(
                "activated, but a new SSH connection failed ({e}); the node reverts by itself within {}s",
                confirm_timeout.as_secs()
            )));
        }
    };
    let o = c.run(
        &argv(["sh", "-c", CONFIRM, "edgectl-confirm", &token]),
        true,
    )?;
    if o.ok() {
        Ok(Outcome::Confirmed)
    } else {
        Ok(Outcome::RolledBack(
            "confirmation came too late; the node reverted by itself".into(),
        ))
    }
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
    let mut lines = o.stdout.lines();
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
    Ok((path, generation))
}
