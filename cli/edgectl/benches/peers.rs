//! `scripts/bench-peers.sh` (which installs deploy-rs first) runs this: edgectl against a real
//! peer, serokell's deploy-rs 1.0.0, on the same rig nodes, with the same store paths.
//!
//! For each controller link (100 Mbit/s `tc tbf` on the rig bridge's controller side, and
//! unthrottled), each node count and each repetition, every variant gets a fresh rig (empty node
//! stores, new host keys): edgectl with its default (`--fanout auto`), with `--fanout on` and
//! with `--fanout off`, and
//! `deploy .` (deploy-rs with its defaults: magic rollback and auto rollback on). The build is
//! done first and not timed (both tools deploy what the controller built); then the first
//! deploy is timed, the nodes are checked, and a no-op redeploy is timed. Reported per cell:
//! median wall time [min-max], the bytes the controller sent (bridge counters, SSH included)
//! over the closure, and the controller's CPU seconds (the tool and its children).
//!
//! Environment: `DEPLOY_RS_BIN` (folder with deploy-rs's `deploy` and `activate`; required),
//! `PEER_REPS` (3), `PEER_NODES` (1,4,8), `PEER_LINKS` (100mbit,none), `PEER_MIB` (64).
//! The method follows ../shared/docs/PEER-BENCH-DEPLOY-RS.md; see the README's table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use edgectl_rig::Rig;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// CPU seconds (user + system) of this process's waited-for children, from /proc/self/stat:
/// the tool under test and every process it waited for (its `nix copy`, `ssh`), not the
/// nodes' sshd (children of the rig's sshd, not of the tool).
fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): cutime and cstime are the
    // 16th and 17th fields of the line, the 14th and 15th after it.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = 100.0; // USER_HZ on Linux
    (f.get(12).copied().unwrap_or(0) + f.get(13).copied().unwrap_or(0)) as f64 / ticks
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    /// The default, `--fanout auto`.
    Edgectl,
    EdgectlOn,
    EdgectlOff,
    DeployRs,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Edgectl => "edgectl (auto)",
            Tool::EdgectlOn => "edgectl --fanout on",
            Tool::EdgectlOff => "edgectl --fanout off",
            Tool::DeployRs => "deploy-rs",
        }
    }
}

/// One timed command: wall seconds, controller bytes, controller CPU seconds.
#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: f64,
    bytes: u64,
    cpu: f64,
}

fn timed(rig: &Rig, mut c: Command, what: &str) -> Sample {
    let (b0, c0) = (rig.controller_tx_bytes(), children_cpu());
    let t = Instant::now();
    let o = c.output().expect("the tool runs");
    let secs = t.elapsed().as_secs_f64();
    let (b1, c1) = (rig.controller_tx_bytes(), children_cpu());
    must(&o, what);
    Sample {
        secs,
        bytes: b1 - b0,
        cpu: c1 - c0,
    }
}

fn must(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn throttle(rig: &Rig, link: &str) {
    if link != "none" {
        rig.throttle_controller(link).expect("throttle");
    }
}

/// Every node activated its own system exactly once and holds the payload (the fixture's
/// switch-to-configuration records under the node's private /nix).
fn check_nodes(rig: &Rig) {
    for n in &rig.nodes {
        let state = n.nix_dir.join("var/edgectl-test");
        let current = std::fs::read_to_string(state.join("current")).unwrap_or_default();
        assert!(
            current.contains(&format!("nixos-system-{}-", n.name)),
            "{}: runs {current:?}",
            n.name
        );
        let log = std::fs::read_to_string(state.join("activations")).unwrap_or_default();
        // edgectl activates with `test` and makes a confirmed generation the boot default
        // afterwards; deploy-rs runs `switch`: either way, one activation.
        let activations = log
            .lines()
            .filter(|l| l.starts_with("switch ") || l.starts_with("test "))
            .count();
        assert_eq!(activations, 1, "{}: activations:\n{log}", n.name);
    }
}

struct Setup {
    fixture: tempfile::TempDir,
    standin: tempfile::TempDir,
    wrapper: tempfile::TempDir,
}

/// deploy-rs's flake needs nixpkgs for `lib.activate.nixos`; offline, a stand-in builds a
/// profile of the same shape (see PEER-BENCH-DEPLOY-RS.md, appendix B) around the real
/// crates.io `activate` binary.
const STANDIN: &str = r#"{
  outputs = { self }: let
    system = "x86_64-linux";
    drv = args: builtins.derivation ({ inherit system; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; } // args);
    pkg = drv { name = "deploy-rs-1.0.0"; src = ./activate;
      args = [ "-c" "mkdir -p $out/bin && cp $src $out/bin/activate && chmod 555 $out/bin/activate" ]; };
    writeExe = name: dest: text: drv { inherit name dest text;
      args = [ "-c" "mkdir -p $out && printf '%s' \"$text\" > $out/$dest && chmod 555 $out/$dest" ]; };
    custom = base: activate: let
      activatePath = writeExe "${base.name}-activate-path" "deploy-rs-activate" ''
        #!/bin/bash
        set -euo pipefail
        if [[ "''${DRY_ACTIVATE:-}" == "1" ]]; then $PROFILE/bin/switch-to-configuration dry-activate
        elif [[ "''${BOOT:-}" == "1" ]]; then $PROFILE/bin/switch-to-configuration boot
        else ${activate}
        fi
      '';
      activateRs = writeExe "${base.name}-activate-rs" "activate-rs" ''
        #!/bin/bash
        exec ${pkg}/bin/activate "$@"
      '';
    in drv { name = "activatable-${base.name}"; paths = [ base activatePath activateRs ];
      args = [ "-c" ''set -e; mkdir -p $out; for p in $paths; do for f in "$p"/*; do ln -s "$f" "$out/$(basename "$f")"; done; done'' ]; };
  in {
    packages.${system}.default = pkg;
    lib.${system}.activate = {
      inherit custom;
      nixos = base: custom base.config.system.build.toplevel ''
        cd /tmp
        $PROFILE/bin/switch-to-configuration switch
      '';
    };
  };
}
"#;

/// deploy-rs 1.0.0 always passes `nix build --print-out-paths`, which Debian's Nix 2.8 lacks:
/// this `nix`, first on deploy-rs's PATH only, asks for `--json` instead and prints the same.
const NIX_WRAPPER: &str = r#"#!/bin/bash
if [ "$1" = build ]; then
  args=(); pop=0
  for a in "$@"; do
    if [ "$a" = --print-out-paths ]; then pop=1; else args+=("$a"); fi
  done
  if [ "$pop" = 1 ]; then
    out=$(@NIX@ "${args[@]}" --json) || exit $?
    printf '%s' "$out" | python3 -c 'import json,sys
for r in json.load(sys.stdin):
    for p in r["outputs"].values(): print(p)'
    exit 0
  fi
fi
exec @NIX@ "$@"
"#;

fn setup(deploy_rs: &Path, mib: u64) -> Setup {
    let fixture = tempfile::tempdir().unwrap();
    std::fs::copy(
        edgectl_rig::fixture_nixpkgs().join("flake.nix"),
        fixture.path().join("flake.nix"),
    )
    .unwrap();
    std::fs::write(fixture.path().join("payload-mib"), mib.to_string()).unwrap();
    let standin = tempfile::tempdir().unwrap();
    std::fs::write(standin.path().join("flake.nix"), STANDIN).unwrap();
    std::fs::copy(deploy_rs.join("activate"), standin.path().join("activate")).unwrap();
    let wrapper = tempfile::tempdir().unwrap();
    let nix = edgectl_rig::tool("nix").expect("nix on PATH");
    let w = wrapper.path().join("nix");
    std::fs::write(&w, NIX_WRAPPER.replace("@NIX@", &nix.display().to_string())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    Setup {
        fixture,
        standin,
        wrapper,
    }
}

fn edgectl(topo: &Path, rig: &Rig, s: &Setup, goal: &str, fanout: Option<&str>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgectl"));
    c.args(["apply", "--goal", goal])
        .arg(topo)
        .args(["--identity", rig.key.to_str().unwrap()])
        .args([
            "--override-input",
            "nixpkgs",
            &format!("path:{}", s.fixture.path().display()),
        ])
        .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG);
    if let Some(mode) = fanout {
        c.args(["--fanout", mode]);
    }
    c
}

/// Writes the deploy-rs flake for `rig` in `dir` (its `cluster` input is `edgectl generate` of
/// the same topology, so both tools deploy the same store paths) and builds its profiles.
fn deploy_rs_flake(dir: &Path, topo: &Path, rig: &Rig, s: &Setup) {
    let cluster = dir.join("cluster");
    let o = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .arg("generate")
        .arg(topo)
        .arg("--out")
        .arg(&cluster)
        .output()
        .unwrap();
    must(&o, "edgectl generate");
    let key = rig.key.display();
    let mut nodes = String::new();
    for n in &rig.nodes {
        nodes.push_str(&format!(
            "      {:?} = node {:?} {:?} \"{}\";\n",
            n.name,
            n.name,
            n.ip.to_string(),
            n.port
        ));
    }
    let flake = format!(
        r#"{{
  inputs.nixpkgs.url = "path:{fixture}";
  inputs.cluster.url = "path:{cluster}";
  inputs.cluster.inputs.nixpkgs.follows = "nixpkgs";
  inputs.deploy-rs.url = "path:{standin}";
  outputs = {{ self, nixpkgs, cluster, deploy-rs }}: let
    node = name: ip: port: {{
      hostname = ip; sshUser = "root"; user = "root";
      sshOpts = [ "-p" port "-i" "{key}" "-o" "StrictHostKeyChecking=no" "-o" "UserKnownHostsFile=/dev/null" ];
      profiles.system.path = deploy-rs.lib.x86_64-linux.activate.nixos cluster.nixosConfigurations.${{name}};
    }};
  in {{
    deploy.confirmTimeout = 30;
    deploy.nodes = {{
{nodes}    }};
  }};
}}
"#,
        fixture = s.fixture.path().display(),
        cluster = cluster.display(),
        standin = s.standin.path().display(),
    );
    let flake_dir = dir.join("deploy");
    std::fs::create_dir_all(&flake_dir).unwrap();
    std::fs::write(flake_dir.join("flake.nix"), flake).unwrap();
    let nix = |args: &[&str]| {
        let o = Command::new("nix")
            .args(args)
            .current_dir(&flake_dir)
            .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG)
            .output()
            .unwrap();
        must(&o, &format!("nix {}", args.join(" ")));
    };
    nix(&["flake", "lock"]);
    let attrs: Vec<String> = rig
        .nodes
        .iter()
        .map(|n| format!(".#deploy.nodes.{}.profiles.system.path", n.name))
        .collect();
    let mut a = vec!["build", "--no-link"];
    a.extend(attrs.iter().map(String::as_str));
    nix(&a);
}

fn deploy_rs(dir: &Path, s: &Setup, bin: &Path) -> Command {
    let mut c = Command::new(bin.join("deploy"));
    c.arg(".")
        .current_dir(dir.join("deploy"))
        .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG)
        .env(
            "PATH",
            format!(
                "{}:{}",
                s.wrapper.path().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    c
}

/// One fresh rig: the first deploy and a no-op redeploy.
fn run(tool: Tool, n: usize, link: &str, s: &Setup, bin: &Path) -> (Sample, Sample) {
    let rig = Rig::up(n).expect("rig");
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    std::fs::write(&topo, edgectl_rig::topology_toml(&rig, &["wasm"], 30)).unwrap();
    throttle(&rig, link);
    let what = format!("{} to {n} node(s), link {link}", tool.label());
    let (first, again) = match tool {
        Tool::Edgectl | Tool::EdgectlOn | Tool::EdgectlOff => {
            let mode = match tool {
                Tool::EdgectlOn => Some("on"),
                Tool::EdgectlOff => Some("off"),
                _ => None,
            };
            must(
                &edgectl(&topo, &rig, s, "build", mode).output().unwrap(),
                "edgectl apply --goal build",
            );
            let first = timed(&rig, edgectl(&topo, &rig, s, "switch", mode), &what);
            check_nodes(&rig);
            let again = timed(&rig, edgectl(&topo, &rig, s, "switch", mode), &what);
            (first, again)
        }
        Tool::DeployRs => {
            deploy_rs_flake(dir.path(), &topo, &rig, s);
            let first = timed(&rig, deploy_rs(dir.path(), s, bin), &what);
            check_nodes(&rig);
            let again = timed(&rig, deploy_rs(dir.path(), s, bin), &what);
            (first, again)
        }
    };
    eprintln!(
        "  {what}: {:.2} s, {:.1} MB, cpu {:.2} s; no-op {:.2} s",
        first.secs,
        first.bytes as f64 / 1e6,
        first.cpu,
        again.secs
    );
    (first, again)
}

fn spread(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    if let Err(why) = edgectl_rig::available() {
        println!("peers bench skipped: {why}");
        return;
    }
    let Some(bin) = std::env::var_os("DEPLOY_RS_BIN").map(PathBuf::from) else {
        println!(
            "peers bench skipped: DEPLOY_RS_BIN is not set (scripts/bench-peers.sh installs deploy-rs and sets it)"
        );
        return;
    };
    let reps: usize = env_or("PEER_REPS", "3").parse().expect("PEER_REPS");
    let nodes: Vec<usize> = env_or("PEER_NODES", "1,4,8")
        .split(',')
        .map(|x| x.trim().parse().expect("PEER_NODES"))
        .collect();
    let links: Vec<String> = env_or("PEER_LINKS", "100mbit,none")
        .split(',')
        .map(|x| x.trim().to_string())
        .collect();
    let mib: u64 = env_or("PEER_MIB", "64").parse().expect("PEER_MIB");
    let s = setup(&bin, mib);
    let closure = (mib << 20) as f64;
    let tools = [
        Tool::Edgectl,
        Tool::EdgectlOn,
        Tool::EdgectlOff,
        Tool::DeployRs,
    ];
    // (link, n, tool) -> samples
    let mut got: BTreeMap<(String, usize, Tool), Vec<(Sample, Sample)>> = BTreeMap::new();
    for link in &links {
        for rep in 0..reps {
            for &n in &nodes {
                // Alternate which tool goes first, so neither always meets a warmer machine.
                let mut order = tools.to_vec();
                if rep % 2 == 1 {
                    order.reverse();
                }
                for tool in order {
                    let r = run(tool, n, link, &s, &bin);
                    got.entry((link.clone(), n, tool)).or_default().push(r);
                }
            }
        }
    }
    println!(
        "\n{mib} MiB payload; fresh rig per run; median [min-max] of {reps} run(s); bytes: what the controller sent / the payload; cpu: the tool's own CPU seconds (with its children)"
    );
    for link in &links {
        println!(
            "\ncontroller link: {}",
            if link == "none" {
                "unthrottled"
            } else {
                link.as_str()
            }
        );
        println!(
            "| nodes | tool | deploy (s) | bytes | cpu (s) | no-op redeploy (s) | deploy-rs / this |"
        );
        println!("|---:|---|---:|---:|---:|---:|---:|");
        for &n in &nodes {
            let peer = got
                .get(&(link.clone(), n, Tool::DeployRs))
                .map(|v| spread(&v.iter().map(|x| x.0.secs).collect::<Vec<_>>()).0);
            for tool in tools {
                let Some(v) = got.get(&(link.clone(), n, tool)) else {
                    continue;
                };
                let (m, lo, hi) = spread(&v.iter().map(|x| x.0.secs).collect::<Vec<_>>());
                let b = spread(&v.iter().map(|x| x.0.bytes as f64).collect::<Vec<_>>()).0;
                let c = spread(&v.iter().map(|x| x.0.cpu).collect::<Vec<_>>()).0;
                let (nm, nlo, nhi) = spread(&v.iter().map(|x| x.1.secs).collect::<Vec<_>>());
                println!(
                    "| {n} | {} | {m:.2} [{lo:.2}-{hi:.2}] | {:.2}x | {c:.2} | {nm:.2} [{nlo:.2}-{nhi:.2}] | {} |",
                    tool.label(),
                    b / closure,
                    peer.map(|p| format!("{:.2}", p / m)).unwrap_or_default()
                );
            }
        }
    }
    let aim = |link: &str| {
        let med = |n: usize, t: Tool| {
            got.get(&(link.to_string(), n, t))
                .map(|v| spread(&v.iter().map(|x| x.0.secs).collect::<Vec<_>>()).0)
        };
        let (lo, hi) = (nodes[0], *nodes.last().unwrap());
        if let (Some(e_hi), Some(d_hi), Some(e_lo), Some(d_lo)) = (
            med(hi, Tool::Edgectl),
            med(hi, Tool::DeployRs),
            med(lo, Tool::Edgectl),
            med(lo, Tool::DeployRs),
        ) {
            println!();
            // The slow-link aims: there the controller's link, not the CPU, is the limit.
            if link != "none" {
                println!(
                    "[{link}] aim edgectl >= 4x faster than deploy-rs at {hi} nodes: {:.2}x {}",
                    d_hi / e_hi,
                    if d_hi / e_hi >= 4.0 { "met" } else { "NOT met" }
                );
                println!(
                    "[{link}] aim edgectl at {hi} nodes within 1.2x of {lo} node(s): {:.2}x {}",
                    e_hi / e_lo,
                    if e_hi / e_lo <= 1.2 { "met" } else { "NOT met" }
                );
            }
            println!(
                "[{link}] aim edgectl never slower at {lo} node(s): {:.2}x {}",
                d_lo / e_lo,
                if d_lo / e_lo >= 1.0 { "met" } else { "NOT met" }
            );
        }
        for &n in &nodes {
            let fixed = [Tool::EdgectlOn, Tool::EdgectlOff]
                .into_iter()
                .filter_map(|t| med(n, t))
                .reduce(f64::min);
            if let (Some(auto), Some(better)) = (med(n, Tool::Edgectl), fixed) {
                println!(
                    "[{link}] aim auto within 1.1x of the better fixed mode at {n} node(s): {:.2}x {}",
                    auto / better,
                    if auto / better <= 1.1 {
                        "met"
                    } else {
                        "NOT met"
                    }
                );
            }
        }
    };
    for link in &links {
        aim(link);
    }
}
