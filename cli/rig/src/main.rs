//! `edgectl-rig up N` | `edgectl-rig reap` | `edgectl-rig check`: the test rig by hand.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use edgectl_rig::{Rig, available, reap};

const USAGE: &str = "usage: edgectl-rig up N [--nixos] [--lab DIR]   bring up N nodes, print their JSON description, keep them until SIGINT/SIGTERM/SIGHUP\n       \
                     \x20                                (--nixos: nodes that look like NixOS where edgectl's paths differ: os-release, systemd-run,\n       \
                     \x20                                 a default-deny firewall, no FHS loader)\n       \
                     \x20                                (--lab DIR: also write DIR/cluster.toml for these nodes, whose systems run the agent\n       \
                     \x20                                 built beside this binary, and print the plan/apply/verify commands)\n       \
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
        ["up", n, rest @ ..] => {
            let Ok(n) = n.parse::<usize>() else {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            };
            let (mut nixos, mut lab) = (false, None);
            let mut rest = rest.iter();
            while let Some(a) = rest.next() {
                match (*a, rest.as_slice().first()) {
                    ("--nixos", _) => nixos = true,
                    ("--lab", Some(dir)) => {
                        lab = Some(PathBuf::from(dir));
                        rest.next();
                    }
                    _ => {
                        eprintln!("{USAGE}");
                        return ExitCode::from(2);
                    }
                }
            }
            up(n, nixos, lab)
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

/// Writes `dir/cluster.toml` for the rig (features `agent` and `net-tuning`), with the
/// `edgectl` binary beside this one as the nodes' agent, and says how to drive it.
fn write_lab(rig: &Rig, dir: &Path) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let edgectl = me.with_file_name("edgectl");
    if !edgectl.is_file() {
        return Err(format!(
            "{} is missing: build it first (cargo build -p edgectl)",
            edgectl.display()
        ));
    }
    let fixture = edgectl_rig::agent_fixture(&dir.join("edgectl-flake"), &edgectl)?;
    // The rig's key, under a name that does not change from one rig to the next.
    let key = dir.join("id_ed25519");
    let _ = std::fs::remove_file(&key);
    std::os::unix::fs::symlink(&rig.key, &key).map_err(|e| format!("{}: {e}", key.display()))?;
    let topology = dir.join("cluster.toml");
    std::fs::write(
        &topology,
        edgectl_rig::topology_toml_with(rig, &["agent", "net-tuning"], 30, &fixture),
    )
    .map_err(|e| format!("{}: {e}", topology.display()))?;
    let args = format!(
        "{} --identity {} --override-input nixpkgs path:{}",
        topology.display(),
        key.display(),
        edgectl_rig::fixture_nixpkgs().display()
    );
    eprintln!(
        "edgectl-rig: wrote {}; the nodes' systems are the test fixture's stand-ins, not NixOS. Try:\n  \
         export NIX_CONFIG=$'{nix}'\n  \
         {e} plan {args}\n  {e} apply {args}\n  {e} verify {} --identity {} --json",
        topology.display(),
        topology.display(),
        key.display(),
        e = edgectl.display(),
        nix = edgectl_rig::NIX_CONFIG.replace('\n', "\\n"),
    );
    Ok(())
}

fn up(n: usize, nixos: bool, lab: Option<PathBuf>) -> ExitCode {
    // Before anything exists (see Signals).
    let set = edgectl_rig::Signals::block();
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
    if let Some(dir) = &lab
        && let Err(e) = std::fs::create_dir_all(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))
            .and_then(|()| write_lab(&rig, dir))
    {
        eprintln!("edgectl-rig: {e}");
        rig.down();
        return ExitCode::FAILURE;
    }
    let sig = set.wait();
    eprintln!("edgectl-rig: signal {sig}, tearing down");
    rig.down();
    ExitCode::SUCCESS
}
