//! `edgectl-rig up N` | `edgectl-rig reap` | `edgectl-rig check`: the test rig by hand.

use std::io::Write;
use std::process::ExitCode;

use edgectl_rig::{Rig, available, reap};

const USAGE: &str = "usage: edgectl-rig up N [--nixos]    bring up N nodes, print their JSON description, keep them until SIGINT/SIGTERM/SIGHUP\n       \
                     \x20                                (--nixos: nodes that look like NixOS where edgectl's paths differ: os-release, systemd-run)\n       \
                     edgectl-rig reap    remove rigs left behind by processes that died\n       \
                     edgectl-rig check   say whether this machine can run a rig";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["up", n, rest @ ..] if rest.is_empty() || rest == ["--nixos"] => {
            let Ok(n) = n.parse::<usize>() else {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            };
            up(n, !rest.is_empty())
        }
        ["reap"] => {
            for r in reap() {
                println!("removed {r}");
            }
            ExitCode::SUCCESS
        }
        ["check"] => match available() {
            Ok(()) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("edgectl-rig: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn up(n: usize, nixos: bool) -> ExitCode {
    // Block the signals before anything is created, so none can kill us between `up` and
    // `sigwait` without a teardown. std resets the mask in the children it spawns.
    let set = unsafe {
        // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let opts = edgectl_rig::RigOptions {
        private_etc: nixos,
        nixos,
    };
    let rig = match Rig::up_with(n, opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgectl-rig: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&rig.describe()).unwrap()
    );
    let _ = out.flush();
    drop(out);
    eprintln!(
        "edgectl-rig: {n} node(s) up; ssh -F {} n1; SIGINT/SIGTERM tears down",
        rig.ssh_config.display()
    );
    let mut sig = 0;
    // SAFETY: `set` is initialised and the signals are blocked in this thread.
    unsafe { libc::sigwait(&set, &mut sig) };
    eprintln!("edgectl-rig: signal {sig}, tearing down");
    rig.down();
    ExitCode::SUCCESS
}
