//! The rig itself: nodes, private /nix, deploy of the fixture system, faults, teardown.
//! Every test skips with a printed reason where the rig cannot run (not root, tools missing).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use edgectl_rig::{NIX_CONFIG, Rig, build_fixture_toplevel, reap, tool};
use serde_json::Value;

fn skip() -> bool {
    !edgectl_rig::ready()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn netns_names() -> String {
    text(
        &Command::new(tool("ip").unwrap())
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
}

fn link_exists(name: &str) -> bool {
    Command::new(tool("ip").unwrap())
        .args(["link", "show", name])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// A flake as `edgectl generate` writes it: from the real binary when it has been built,
/// otherwise a hand-written one of the same shape (flake.nix calling nixosSystem with
/// `[ self.nixosModules.default ./hosts/<node>.nix ]`).
fn generated_flake(dir: &Path) -> (PathBuf, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = std::env::var_os("EDGECTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/debug/edgectl"));
    let out = dir.join("gen");
    if bin.is_file() {
        let o = Command::new(&bin)
            .arg("generate")
            .arg(root.join("examples/edge-lab.toml"))
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        ok(&o, "edgectl generate");
        return (out, "worker1".into());
    }
    eprintln!(
        "note: {} not built; using a hand-written flake of the generated shape",
        bin.display()
    );
    fs::create_dir_all(out.join("hosts")).unwrap();
    fs::write(
        out.join("flake.nix"),
        r#"{
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
  outputs = { self, nixpkgs }: let
    system = "x86_64-linux";
    host = file: nixpkgs.lib.nixosSystem { inherit system; modules = [self.nixosModules.default file]; };
  in {
    # Deliberately missing: the fixture must never evaluate it.
    nixosModules.default = import ./modules;
    nixosConfigurations.worker1 = host (./hosts + "/worker1.nix");
  };
}
"#,
    )
    .unwrap();
    fs::write(
        out.join("hosts/worker1.nix"),
        "{...}: {\n  edge.node = {\n    name = \"worker1\";\n    roles = [];\n  };\n}\n",
    )
    .unwrap();
    (out, "worker1".into())
}

/// ssh to node i trusting only `known` as its host key.
fn ssh_pinned(rig: &Rig, i: usize, known: &str) -> Output {
    let kh = rig.dir.join(format!("pinned-{i}"));
    fs::write(&kh, format!("{} {known}\n", rig.node(i).ip)).unwrap();
    rig.ssh_command()
        .args(["-o", "StrictHostKeyChecking=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", kh.display()))
        .args([&rig.node(i).ip.to_string(), "true"])
        .output()
        .unwrap()
}

#[test]
fn three_nodes_deploy_and_faults() {
    if skip() {
        return;
    }
    let t = Instant::now();
    let rig = Rig::up(3).expect("rig up");
    eprintln!("up(3): {:?}", t.elapsed());

    for i in 0..3 {
        let name = &rig.node(i).name;
        assert_eq!(ok(&rig.ssh(i, "hostname"), "ssh"), *name);
        // The node's Nix settings arrive through sshd's SetEnv.
        let conf = ok(&rig.ssh(i, "nix show-config"), "nix show-config");
        assert!(
            conf.contains("experimental-features = flakes nix-command"),
            "{conf}"
        );
        assert!(conf.lines().any(|l| l.trim() == "substituters ="), "{conf}");
    }

    // /nix is private per node.
    ok(&rig.ssh(0, "echo n1 > /nix/rig-probe"), "write probe");
    assert!(!rig.ssh(1, "test -e /nix/rig-probe").status.success());
    assert!(rig.node(0).nix_dir.join("rig-probe").is_file());
    assert!(!Path::new("/nix/rig-probe").exists());
    assert_eq!(
        ok(&rig.exec_in(0, &["cat", "/nix/rig-probe"]), "exec_in"),
        "n1"
    );
    assert_eq!(ok(&rig.exec_in(1, &["hostname"]), "exec_in"), "n2");

    // Build the fixture system of a generated host, copy it to n1 and activate it.
    let tmp = tempfile::tempdir().unwrap();
    let (flake, host) = generated_flake(tmp.path());
    let t = Instant::now();
    let top = build_fixture_toplevel(&flake, &host).expect("build");
    eprintln!("build: {:?}", t.elapsed());
    let t = Instant::now();
    ok(&rig.nix_copy_to(0, &[&top]), "nix copy");
    eprintln!("nix copy: {:?}", t.elapsed());
    assert!(
        !rig.ssh(1, &format!("test -e {top}")).status.success(),
        "closure leaked to n2"
    );
    let closure = ok(&rig.ssh(0, &format!("nix-store -qR {top}")), "closure");
    assert!(closure.lines().count() >= 2, "{closure}");
    let t = Instant::now();
    ok(
        &rig.ssh(0, &format!("{top}/bin/switch-to-configuration switch")),
        "switch",
    );
    eprintln!("activation: {:?}", t.elapsed());
    let state = rig.node(0).nix_dir.join("var/edgectl-test");
    let acts = fs::read_to_string(state.join("activations")).unwrap();
    let line: Vec<&str> = acts.lines().last().unwrap().split(' ').collect();
    assert_eq!(line[..2], ["switch", top.as_str()], "{acts}");
    assert!(line[2].parse::<u64>().is_ok(), "{acts}");
    assert_eq!(
        fs::read_to_string(state.join("current")).unwrap().trim(),
        top
    );
    let edge: Value =
        serde_json::from_str(&ok(&rig.ssh(0, &format!("cat {top}/edge.json")), "json")).unwrap();
    assert_eq!(edge["edge"]["node"]["name"], "worker1");

    // Behaviour `fail`: exit 1, recorded with a FAILED marker, `current` unchanged.
    ok(
        &rig.ssh(0, "echo fail > /nix/var/edgectl-test/behaviour"),
        "set behaviour",
    );
    let o = rig.ssh(0, &format!("{top}/bin/switch-to-configuration test"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let acts = fs::read_to_string(state.join("activations")).unwrap();
    assert!(acts.lines().last().unwrap().ends_with(" FAILED"), "{acts}");

    // Behaviour `cut-network`: the activation succeeds, then the node is cut off. It is run
    // through exec_in so the test does not wait for ssh to notice the dead connection.
    fs::write(state.join("behaviour"), "cut-network\n").unwrap();
    let o = rig.exec_in(
        0,
        &[&format!("{top}/bin/switch-to-configuration"), "switch"],
    );
    ok(&o, "cut-network switch");
    assert!(!rig.reachable(0, Duration::from_millis(300)));
    assert!(
        !state.join("behaviour").exists(),
        "a behaviour applies to one activation"
    );
    ok(
        &rig.exec_in(0, &["ip", "link", "set", "eth0", "up"]),
        "eth0 up",
    );
    assert!(rig.wait_reachable(0, Duration::from_secs(5)));
    ok(&rig.ssh(0, "true"), "ssh after eth0 up");

    // Partition from the root namespace side.
    rig.link_down(1);
    assert!(!rig.reachable(1, Duration::from_millis(300)));
    rig.link_up(1);
    assert!(rig.wait_reachable(1, Duration::from_secs(5)));
    // Node-to-node traffic goes over the bridge.
    let cfg = rig.ssh_config.display().to_string();
    assert_eq!(
        ok(
            &rig.exec_in(0, &["ssh", "-F", &cfg, "n2", "hostname"]),
            "ssh n1 -> n2"
        ),
        "n2"
    );

    // sshd restarts keep the host key; set_host_key replaces it.
    let key = rig.node(2).host_key_pub.clone();
    ok(&ssh_pinned(&rig, 2, &key), "pinned ssh");
    rig.kill_sshd(2);
    assert!(!rig.reachable(2, Duration::from_millis(300)));
    assert_eq!(
        ok(&rig.exec_in(2, &["hostname"]), "exec_in without sshd"),
        "n3"
    );
    rig.start_sshd(2);
    ok(&ssh_pinned(&rig, 2, &key), "pinned ssh after restart");
    rig.set_host_key(2);
    let new = rig.host_key(2);
    assert_ne!(new, key);
    assert_eq!(ssh_pinned(&rig, 2, &key).status.code(), Some(255));
    ok(&ssh_pinned(&rig, 2, &new), "ssh with the new key");

    // A process left running in a node dies with the rig.
    ok(
        &rig.ssh(1, "nohup sleep 600 >/dev/null 2>&1 &"),
        "background job",
    );
    let namespaces: Vec<String> = rig.nodes.iter().map(|n| n.ns.clone()).collect();
    let (bridge, dir) = (rig.bridge.clone(), rig.dir.clone());
    let t = Instant::now();
    drop(rig);
    eprintln!("down(3): {:?}", t.elapsed());
    let left = netns_names();
    for ns in &namespaces {
        assert!(!left.contains(ns.as_str()), "{ns} still in {left}");
    }
    assert!(!link_exists(&bridge));
    assert!(!dir.exists());
}

#[test]
fn concurrent_rigs_are_separate() {
    if skip() {
        return;
    }
    let rigs: Vec<Rig> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|_| s.spawn(|| Rig::up(1))).collect();
        hs.into_iter()
            .map(|h| h.join().unwrap().expect("rig up"))
            .collect()
    });
    assert_ne!(rigs[0].subnet, rigs[1].subnet);
    assert_ne!(rigs[0].bridge, rigs[1].bridge);
    for r in &rigs {
        assert!(r.bridge.len() <= 15 && r.node(0).veth.len() <= 15);
        assert_eq!(ok(&r.ssh(0, "hostname"), "ssh"), "n1");
        ok(&r.ssh(0, "echo x > /nix/mine"), "write");
    }
    assert_ne!(rigs[0].node(0).nix_dir, rigs[1].node(0).nix_dir);
    let names: Vec<String> = rigs.iter().map(|r| r.node(0).ns.clone()).collect();
    for r in rigs {
        r.down();
    }
    let left = netns_names();
    assert!(names.iter().all(|n| !left.contains(n.as_str())), "{left}");
}

/// Starts `edgectl-rig up N` and reads the JSON it prints.
fn spawn_binary(n: usize) -> (Child, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgectl-rig"))
        .args(["up", &n.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut json = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        json += &line;
        if line == "}" {
            break;
        }
    }
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json:?}"));
    (child, v)
}

fn ssh_json(v: &Value, node: usize) -> Output {
    Command::new(tool("ssh").unwrap())
        .arg("-F")
        .arg(v["ssh_config"].as_str().unwrap())
        .arg(v["nodes"][node]["ip"].as_str().unwrap())
        .arg("hostname")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn binary_tears_down_on_sigterm() {
    if skip() {
        return;
    }
    let (mut child, v) = spawn_binary(2);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(v["nodes"][1]["port"], 22);
    assert!(
        v["nodes"][0]["host_key_pub"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 ")
    );
    assert_eq!(ok(&ssh_json(&v, 1), "ssh"), "n2");
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let left = netns_names();
    assert!(
        !left.contains(v["nodes"][0]["ns"].as_str().unwrap()),
        "{left}"
    );
    assert!(!Path::new(v["dir"].as_str().unwrap()).exists());
}

#[test]
fn reap_removes_rig_of_killed_process() {
    if skip() {
        return;
    }
    let (mut child, v) = spawn_binary(1);
    assert_eq!(ok(&ssh_json(&v, 0), "ssh"), "n1");
    child.kill().unwrap();
    child.wait().unwrap();
    let ns = v["nodes"][0]["ns"].as_str().unwrap();
    // Another test's `up` may reap it first (so no check that it is still there); what
    // matters is that it is gone afterwards.
    let removed = reap();
    eprintln!("reaped: {removed:?}");
    assert!(!netns_names().contains(ns));
    assert!(!link_exists(v["bridge"].as_str().unwrap()));
    assert!(!Path::new(v["dir"].as_str().unwrap()).exists());
}

/// The fixture alone (needs only nix): edge.json, the switch script, two paths, the payload.
#[test]
fn fixture_builds_with_payload() {
    if edgectl_testkit::nix().is_none() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        // Debian's nix-bin runs without a daemon: only root can write /nix/store.
        Err("building the fixture needs root (Debian's nix-bin has no daemon)".to_string())
    };
    if edgectl_testkit::require("nix", root).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::write(
        d.join("flake.nix"),
        r#"{
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
  outputs = { self, nixpkgs }: {
    nixosConfigurations.big = nixpkgs.lib.nixosSystem {
      system = "x86_64-linux";
      modules = [ (throw "must not be evaluated") ({...}: { edge.node.name = "big"; edge.test.payloadMiB = 1; }) ];
    };
  };
}
"#,
    )
    .unwrap();
    let top = build_fixture_toplevel(d, "big").expect("build");
    assert!(top.ends_with("-nixos-system-big-test-fixture"), "{top}");
    let json: Value =
        serde_json::from_str(&fs::read_to_string(format!("{top}/edge.json")).unwrap()).unwrap();
    assert_eq!(json["edge"]["test"]["payloadMiB"], 1);
    let payload = fs::metadata(format!("{top}/etc/payload")).unwrap();
    assert_eq!(payload.len(), 1 << 20);
    let q = Command::new(tool("nix-store").unwrap())
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["-qR", &top])
        .output()
        .unwrap();
    // The system, its etc, the payload that every node's closure shares, and the marker the
    // payload refers to (first in any export stream).
    let paths = ok(&q, "nix-store -qR");
    assert_eq!(paths.lines().count(), 4, "{paths}");
    for name in ["-edge-payload-1mib", "-edge-payload-marker"] {
        assert!(paths.lines().any(|p| p.ends_with(name)), "{name}: {paths}");
    }
    // An unknown goal is refused without touching any state.
    let o = Command::new(format!("{top}/bin/switch-to-configuration"))
        .arg("bogus")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}
