//! `edgectl lab`: a cluster of local nodes on this machine, so plan, apply and verify can be
//! tried without renting machines. The nodes are the test rig's (network namespaces, each with
//! its own sshd, /nix, /var and /run) and run the test fixture's stand-in systems, not NixOS;
//! the deploy mechanics, the agent, its checks and the report are the real ones.
//!
//! `lab up` starts a detached `edgectl lab serve`, which holds the nodes until `lab down`
//! signals it; a lab whose holder died is removed by the next `up` or `down`.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Ctx;
use crate::exit;

#[derive(clap::Subcommand, Debug)]
pub enum LabCmd {
    /// Bring up local nodes and write DIR/cluster.toml for them (needs root).
    Up {
        /// How many nodes (1-16).
        #[arg(default_value_t = 3)]
        nodes: usize,
        /// Nodes that look like NixOS where edgectl's paths differ (os-release, systemd-run,
        /// a default-deny firewall, no FHS loader).
        #[arg(long)]
        nixos: bool,
        /// Where the topology, the login key's link and the lab's log go.
        #[arg(long, default_value = "lab")]
        dir: PathBuf,
    },
    /// Remove the lab in DIR, and any lab whose holder died.
    Down {
        #[arg(long, default_value = "lab")]
        dir: PathBuf,
    },
    /// Holds the nodes until SIGTERM (started by `lab up`).
    #[command(hide = true)]
    Serve {
        nodes: usize,
        #[arg(long)]
        nixos: bool,
        #[arg(long)]
        dir: PathBuf,
    },
}

const READY: &str = "ready";
const PID: &str = "lab.pid";
const LOG: &str = "lab.log";
/// What the lab's nodes are provisioned with: enough for every kind of check to run.
const FEATURES: &[&str] = &["agent", "net-tuning", "wasm"];

pub fn run(_ctx: &Ctx, c: LabCmd) -> u8 {
    let r = match c {
        LabCmd::Up { nodes, nixos, dir } => up(nodes, nixos, &dir),
        LabCmd::Down { dir } => down(&dir),
        LabCmd::Serve { nodes, nixos, dir } => serve(nodes, nixos, &dir),
    };
    match r {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            exit::ERROR
        }
    }
}

/// The pid in DIR/lab.pid, when that process still runs (same start time).
fn holder(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join(PID)).ok()?;
    let mut w = text.split_whitespace();
    let pid: u32 = w.next()?.parse().ok()?;
    let start: u64 = w.next()?.parse().ok()?;
    (edgectl_agent::server::proc_start_time(pid) == Some(start)).then_some(pid)
}

fn up(nodes: usize, nixos: bool, dir: &Path) -> Result<(), String> {
    if !(1..=16).contains(&nodes) {
        return Err(format!(
            "a lab has 1 to 16 nodes, not {nodes}; e.g. `edgectl lab up 3`"
        ));
    }
    edgectl_rig::available().map_err(|e| format!("`edgectl lab` cannot run here: {e}"))?;
    if let Some(pid) = holder(dir) {
        return Err(format!(
            "a lab is already up in {} (held by pid {pid}); `edgectl lab down --dir {}` first",
            dir.display(),
            dir.display()
        ));
    }
    for r in edgectl_rig::reap() {
        eprintln!("removed a lab left behind: {r}");
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join(READY));
    let log = std::fs::File::create(dir.join(LOG))
        .map_err(|e| format!("{}: {e}", dir.join(LOG).display()))?;
    let me = std::env::current_exe().map_err(|e| format!("cannot find edgectl itself: {e}"))?;
    let mut cmd = Command::new(me);
    cmd.args(["lab", "serve", &nodes.to_string(), "--dir"])
        .arg(dir)
        .args(nixos.then_some("--nixos"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the holder leaves our session so that it outlives
    // this command and a terminal's hangup.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the lab: {e}"))?;
    let end = Instant::now() + Duration::from_secs(180);
    eprintln!("bringing up {nodes} local node(s)...");
    loop {
        if dir.join(READY).exists() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the lab did not come up ({status}): {}",
                tail(&dir.join(LOG))
            ));
        }
        if Instant::now() > end {
            let _ = child.kill();
            return Err(format!(
                "the lab did not come up within 180 s: {}",
                tail(&dir.join(LOG))
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let topology = dir.join("cluster.toml");
    println!(
        "lab up: {nodes} local node(s){} in {}; they run the test fixture's stand-in systems, not NixOS.\n\
         export NIX_CONFIG=$'{}'\n\
         edgectl plan {t}\nedgectl apply {t}\nedgectl verify {t} --report {}\nedgectl lab down --dir {}",
        if nixos { " shaped like NixOS" } else { "" },
        dir.display(),
        edgectl_rig::NIX_CONFIG.replace('\n', "\\n"),
        dir.join("report").display(),
        dir.display(),
        t = topology.display(),
    );
    Ok(())
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn down(dir: &Path) -> Result<(), String> {
    match holder(dir) {
        Some(pid) => {
            // SAFETY: kill has no memory-safety preconditions; pid was checked to be the holder.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(60);
            // The process, not its file: the file goes before the teardown ends.
            let start = edgectl_agent::server::proc_start_time(pid);
            while start.is_some() && edgectl_agent::server::proc_start_time(pid) == start {
                if Instant::now() > end {
                    return Err(format!(
                        "the lab's holder (pid {pid}) did not stop within 60 s; `kill -9 {pid}` and run `edgectl lab down` again"
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            println!("lab down: {}", dir.display());
        }
        None => println!("no lab is up in {}", dir.display()),
    }
    for r in edgectl_rig::reap() {
        println!("removed a lab left behind: {r}");
    }
    for f in [READY, PID] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    Ok(())
}

fn serve(nodes: usize, nixos: bool, dir: &Path) -> Result<(), String> {
    // Before anything exists (see Signals).
    let set = edgectl_rig::Signals::block();
    let rig = edgectl_rig::Rig::up_with(
        nodes,
        edgectl_rig::RigOptions {
            private_etc: nixos,
            nixos,
        },
    )?;
    let written = (|| -> Result<(), String> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let fixture = edgectl_rig::agent_fixture(&dir.join("edgectl-flake"), &me)?;
        let key = dir.join("id_ed25519");
        let _ = std::fs::remove_file(&key);
        std::os::unix::fs::symlink(&rig.key, &key)
            .map_err(|e| format!("{}: {e}", key.display()))?;
        let topology = edgectl_rig::lab_topology_toml(&rig, FEATURES, &fixture, "id_ed25519");
        let header = "# Written by `edgectl lab up`: local nodes on this machine that run the test\n\
                      # fixture's stand-in systems, not NixOS. `edgectl lab down` removes them.\n";
        write_new(&dir.join("cluster.toml"), &format!("{header}{topology}"))?;
        write_new(
            &dir.join("lab.json"),
            &serde_json::to_string_pretty(&rig.describe()).unwrap_or_default(),
        )?;
        let pid = std::process::id();
        let start = edgectl_agent::server::proc_start_time(pid).unwrap_or(0);
        write_new(&dir.join(PID), &format!("{pid} {start}\n"))?;
        write_new(&dir.join(READY), "")
    })();
    if let Err(e) = written {
        rig.down();
        return Err(e);
    }
    eprintln!("lab: {nodes} node(s) up; waiting for SIGTERM");
    let sig = set.wait();
    eprintln!("lab: signal {sig}, tearing down");
    let _ = std::fs::remove_file(dir.join(READY));
    rig.down();
    let _ = std::fs::remove_file(dir.join(PID));
    Ok(())
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_new(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
