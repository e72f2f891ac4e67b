//! plan and apply end to end on the multi-host rig: real sshd in network namespaces, a real
//! Nix store per node, the test nixpkgs fixture, and the faults the deploy engine must survive.
//! Each test prints why and returns early when the rig's prerequisites are absent.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use edgectl_rig::Rig;

struct Lab {
    rig: Rig,
    dir: tempfile::TempDir,
    /// The test nixpkgs; a copy when a test needs a payload in every closure.
    fixture: PathBuf,
}

fn lab(n: usize) -> Option<Lab> {
    if let Err(why) = edgectl_rig::available() {
        eprintln!("skipping: {why}");
        return None;
    }
    let rig = Rig::up(n).expect("rig comes up");
    let dir = tempfile::tempdir().unwrap();
    let l = Lab {
        rig,
        dir,
        fixture: edgectl_rig::fixture_nixpkgs(),
    };
    l.write_topology(&["wasm", "agent"]);
    Some(l)
}

impl Lab {
    fn topology(&self) -> PathBuf {
        self.dir.path().join("cluster.toml")
    }

    /// A cluster of the rig's nodes; `features` changes what gets built.
    fn write_topology(&self, features: &[&str]) {
        std::fs::write(
            self.topology(),
            edgectl_rig::topology_toml(&self.rig, features, 6),
        )
        .unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_edgectl"));
        c.args(args)
            .arg(self.topology())
            .args(["--identity", self.rig.key.to_str().unwrap()])
            .args(["--override-input", "nixpkgs", &format!("path:{}", self.fixture.display())])
            .args(["--connect-timeout", "3"])
            .env("NIX_CONFIG", "substituters =\nsandbox = false\nbuild-users-group =\nexperimental-features = nix-command flakes");
        c
    }

    /// Creates edgectl's cluster key up front and lets it into every node, as the nodes'
    /// configuration would, so the seed can copy to its peers.
    fn authorize_cluster_key(&self) {
        self.rig
            .trust_cluster_key(&self.dir.path().join(".edgectl"))
            .unwrap();
    }

    /// Uses a copy of the fixture whose every closure carries a shared `mib` MiB payload.
    fn with_payload(&mut self, mib: u32) {
        let f = self.dir.path().join("fixture");
        std::fs::create_dir_all(&f).unwrap();
        std::fs::copy(
            edgectl_rig::fixture_nixpkgs().join("flake.nix"),
            f.join("flake.nix"),
        )
        .unwrap();
        std::fs::write(f.join("payload-mib"), mib.to_string()).unwrap();
        self.fixture = f;
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn spawn_json(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The node's system profile target, read inside the node.
    fn current(&self, i: usize) -> Option<String> {
        let o = self
            .rig
            .exec_in(i, &["readlink", "-f", "/nix/var/nix/profiles/system"]);
        let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
        s.starts_with("/nix/store/").then_some(s)
    }

    fn behaviour(&self, i: usize, what: &str) {
        let d = self.rig.node(i).nix_dir.join("var/edgectl-test");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("behaviour"), what).unwrap();
    }

    /// What `nix build` makes of node i's host now (the system apply should install).
    fn target(&self, i: usize) -> String {
        let o = self.run(&[
            "apply",
            "--goal",
            "build",
            "--json",
            "--on",
            &self.rig.node(i).name,
        ]);
        let v = last_json(&o);
        v["report"]["nodes"][0]["system"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn last_json(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON in output; stderr:\n{}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn results(o: &Output) -> Vec<(String, String)> {
    last_json(o)["report"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Reads `--json` events until one matches, so a fault can be injected at that moment.
fn wait_for_event(
    child: &mut Child,
    pred: impl Fn(&serde_json::Value) -> bool,
    limit: Duration,
) -> bool {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the match so the child never writes into a closed pipe.
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && pred(&v)
        {
            return true;
        }
    }
    false
}

/// Kills every sshd process (sessions included) inside node i's network namespace.
fn kill_sessions(rig: &Rig, i: usize) {
    let o = Command::new("ip")
        .args(["netns", "pids", &rig.node(i).ns])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sshd" {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

fn events(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("phase").is_some())
        .collect()
}

fn copied_from(evs: &[serde_json::Value], node: &str) -> Option<String> {
    evs.iter()
        .find(|e| e["node"] == node && e["phase"] == "copy" && e["state"] == "ok")
        .and_then(|e| e["message"].as_str().map(String::from))
}

#[test]
fn fanout_copies_once_from_the_controller_then_over_the_lan() {
    let Some(l) = lab(3) else { return };
    l.authorize_cluster_key();
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let evs = events(&o);
    assert_eq!(
        copied_from(&evs, "n1").as_deref(),
        Some("seed holds every closure"),
        "{evs:?}"
    );
    assert_eq!(
        copied_from(&evs, "n2").as_deref(),
        Some("copied from n1"),
        "{evs:?}"
    );
    assert_eq!(
        copied_from(&evs, "n3").as_deref(),
        Some("copied from n1"),
        "{evs:?}"
    );
    // The peers' copies start before the seed has everything: the LAN copy overlaps the upload.
    let at = |f: &dyn Fn(&serde_json::Value) -> bool| evs.iter().position(f).unwrap();
    let seed_done = at(&|e| e["node"] == "n1" && e["phase"] == "copy" && e["state"] == "ok");
    for n in ["n2", "n3"] {
        let started = at(&|e| e["node"] == n && e["phase"] == "copy" && e["state"] == "started");
        assert!(
            started < seed_done,
            "{n} started after the seed finished: {evs:?}"
        );
    }
    for i in 0..3 {
        assert_eq!(
            l.current(i).as_deref(),
            Some(l.target(i).as_str()),
            "node {i}"
        );
    }
    // The seed's key is a secret: root-only on the node, never in the store.
    let o = l
        .rig
        .exec_in(0, &["stat", "-c", "%a %U", "/nix/var/edgectl/cluster_key"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "600 root");
    // --fanout off: every node from the controller.
    l.write_topology(&["agent"]);
    let o = l.run(&["apply", "--json", "--fanout", "off"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let evs = events(&o);
    for n in ["n1", "n2", "n3"] {
        assert_eq!(
            copied_from(&evs, n).as_deref(),
            Some("copied from controller"),
            "{n}: {evs:?}"
        );
    }
}

/// Three nodes fan out a 48 MiB closure; node `victim` (0: the seed) loses sshd and its
/// sessions once a copy over the LAN has started. Apply must report it (exit 3) and bring the
/// other two to their systems anyway; a rerun once it is back converges it too.
fn a_node_dies_mid_fanout(victim: usize) {
    let Some(mut l) = lab(3) else { return };
    l.authorize_cluster_key();
    l.with_payload(48);
    let mut child = l.spawn_json(&["apply"]);
    // The seed dies at the first peer's start; a peer at its own.
    let watched = (victim > 0).then(|| format!("n{}", victim + 1));
    let hit = wait_for_event(
        &mut child,
        |e| {
            watched.as_ref().is_none_or(|n| e["node"] == n.as_str())
                && e["phase"] == "copy"
                && e["state"] == "started"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("over the LAN"))
        },
        Duration::from_secs(120),
    );
    assert!(hit, "saw a copy over the LAN start");
    l.rig.kill_sshd(victim);
    kill_sessions(&l.rig, victim);
    assert_eq!(
        child.wait().unwrap().code(),
        Some(3),
        "node {victim} failed, so apply reports it"
    );
    for i in (0..3).filter(|&i| i != victim) {
        assert_eq!(
            l.current(i).as_deref(),
            Some(l.target(i).as_str()),
            "node {i} converged although node {victim} died"
        );
    }
    l.rig.start_sshd(victim);
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    assert_eq!(
        l.current(victim).as_deref(),
        Some(l.target(victim).as_str())
    );
}

#[test]
fn fanout_survives_the_seed_dying_mid_transfer() {
    a_node_dies_mid_fanout(0);
}

#[test]
fn fanout_survives_a_peer_dying_mid_relay() {
    // The relay keeps feeding the seed and the other peer.
    a_node_dies_mid_fanout(2);
}

#[test]
fn apply_converges_then_plan_shows_changes_and_no_op() {
    let Some(l) = lab(3) else { return };
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    assert!(
        results(&o).iter().all(|(_, r)| r == "confirmed"),
        "{:?}",
        results(&o)
    );
    let first: Vec<String> = (0..3)
        .map(|i| l.current(i).expect("node has a system"))
        .collect();
    for (i, f) in first.iter().enumerate() {
        let acts =
            std::fs::read_to_string(l.rig.node(i).nix_dir.join("var/edgectl-test/activations"))
                .unwrap();
        assert!(
            acts.contains(&format!("switch {f}")),
            "node {i} activations: {acts}"
        );
    }
    // State records each node's system and pinned host key.
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(l.dir.path().join(".edgectl/state.json")).unwrap())
            .unwrap();
    assert_eq!(st["nodes"]["n1"]["system"], first[0].as_str());
    assert!(
        st["nodes"]["n1"]["host_key"]
            .as_str()
            .unwrap()
            .starts_with("SHA256:")
    );

    // Nothing changed: plan exits 0 and says unchanged everywhere.
    let o = l.run(&["plan", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));

    // A feature change: plan exits 2 with option-level changes and a closure diff.
    l.write_topology(&["agent"]);
    let o = l.run(&["plan", "--json"]);
    assert_eq!(code(&o), 2, "{}", explain(&o));
    let v: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
    let n1 = &v["nodes"][0];
    assert_eq!(n1["change"], "changed");
    assert!(
        n1["option_changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["option"] == "edge.wasm.enable" && c["old"] == true && c["new"] == false),
        "{n1}"
    );
    assert!(n1["closure"]["paths_added"].as_u64().unwrap() >= 1, "{n1}");

    // Only the selected node changes.
    let o = l.run(&["apply", "--json", "--on", "n2"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    assert_eq!(l.current(0).as_deref(), Some(first[0].as_str()));
    assert_ne!(l.current(1).as_deref(), Some(first[1].as_str()));
}

#[test]
fn a_node_down_before_apply_fails_alone() {
    let Some(l) = lab(3) else { return };
    l.rig.kill_sshd(2);
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 3, "{}", explain(&o));
    let r = results(&o);
    assert!(
        r.contains(&("n1".into(), "confirmed".into()))
            && r.contains(&("n2".into(), "confirmed".into())),
        "{r:?}"
    );
    assert!(r.contains(&("n3".into(), "unreachable".into())), "{r:?}");
    assert!(l.current(0).is_some() && l.current(1).is_some());
    l.rig.start_sshd(2);
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    assert!(l.current(2).is_some());
}

#[test]
fn a_failing_activation_rolls_back_at_once() {
    let Some(l) = lab(2) else { return };
    assert_eq!(code(&l.run(&["apply"])), 0);
    let before = l.current(1).unwrap();
    l.write_topology(&["agent"]);
    l.behaviour(1, "fail");
    let t0 = Instant::now();
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 3, "{}", explain(&o));
    assert!(
        results(&o).contains(&("n2".into(), "failed".into())),
        "{:?}",
        results(&o)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "a failed activation must not wait for the confirm timeout"
    );
    assert_eq!(
        l.current(1).as_deref(),
        Some(before.as_str()),
        "n2 is back on its previous generation"
    );
    assert_ne!(l.current(0), None);
}

#[test]
fn an_activation_that_cuts_the_network_reverts_by_itself() {
    let Some(l) = lab(2) else { return };
    assert_eq!(code(&l.run(&["apply"])), 0);
    let before = l.current(1).unwrap();
    l.write_topology(&["agent"]);
    l.behaviour(1, "cut-network");
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 3, "{}", explain(&o));
    let r = results(&o);
    assert!(
        r.iter()
            .any(|(n, res)| n == "n2" && (res == "rolled-back" || res == "unknown")),
        "{r:?}"
    );
    assert!(
        l.rig.wait_reachable(1, Duration::from_secs(20)),
        "n2 is reachable again after reverting"
    );
    assert_eq!(
        l.current(1).as_deref(),
        Some(before.as_str()),
        "n2 is on its old generation"
    );
}

#[test]
fn sshd_killed_during_copy_then_rerun_converges() {
    let Some(l) = lab(2) else { return };
    let mut child = l.spawn_json(&["apply"]);
    let hit = wait_for_event(
        &mut child,
        |e| e["node"] == "n2" && e["phase"] == "copy" && e["state"] == "started",
        Duration::from_secs(60),
    );
    assert!(hit, "saw n2 start copying");
    // Kill the listener and every session, as a crashing sshd would.
    l.rig.kill_sshd(1);
    kill_sessions(&l.rig, 1);
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(3), "apply reports the failed node");
    l.rig.start_sshd(1);
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let want = l.target(1);
    assert_eq!(l.current(1).as_deref(), Some(want.as_str()));
}

#[test]
fn controller_killed_mid_apply_then_rerun_converges() {
    let Some(l) = lab(2) else { return };
    assert_eq!(code(&l.run(&["apply"])), 0);
    let before = l.current(1).unwrap();
    l.write_topology(&["agent"]);
    l.behaviour(1, "slow 2");
    let mut child = l.spawn_json(&["apply"]);
    let hit = wait_for_event(
        &mut child,
        |e| e["node"] == "n2" && e["phase"] == "activate" && e["state"] == "started",
        Duration::from_secs(60),
    );
    assert!(hit, "saw n2 start activating");
    child.kill().unwrap(); // SIGKILL: no cleanup, no confirmation
    let _ = child.wait();
    // Unconfirmed, n2 reverts by itself once the confirm timeout (6 s) passes.
    let end = Instant::now() + Duration::from_secs(25);
    while Instant::now() < end && l.current(1).as_deref() != Some(before.as_str()) {
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        l.current(1).as_deref(),
        Some(before.as_str()),
        "no half state: n2 went back"
    );
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    for i in 0..2 {
        let want = l.target(i);
        assert_eq!(
            l.current(i).as_deref(),
            Some(want.as_str()),
            "node {i} converged"
        );
    }
}

#[test]
fn concurrent_applies_one_is_refused() {
    let Some(l) = lab(1) else { return };
    l.behaviour(0, "slow 3");
    let mut first = l.spawn_json(&["apply"]);
    assert!(wait_for_event(
        &mut first,
        |e| e["phase"] == "connect",
        Duration::from_secs(60)
    ));
    let second = l.run(&["apply", "--json"]);
    assert_eq!(code(&second), 1, "{}", explain(&second));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("another `edgectl apply`"),
        "{}",
        explain(&second)
    );
    assert_eq!(first.wait().unwrap().code(), Some(0));
    assert!(l.current(0).is_some());
}

#[test]
fn a_changed_host_key_stops_the_deploy() {
    let Some(l) = lab(1) else { return };
    assert_eq!(code(&l.run(&["apply"])), 0);
    let before = l.current(0).unwrap();
    l.rig.set_host_key(0);
    l.write_topology(&["agent"]);
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 3, "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("host key changed"),
        "{}",
        explain(&o)
    );
    assert_eq!(l.current(0).as_deref(), Some(before.as_str()));
}

#[test]
fn a_saved_plan_is_refused_when_the_cluster_changed() {
    let Some(l) = lab(1) else { return };
    let plan = l.dir.path().join("plan.json");
    let o = l.run(&["plan", "--out", plan.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", explain(&o));
    l.write_topology(&["agent"]);
    let o = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(["apply", plan.to_str().unwrap(), "--identity", l.rig.key.to_str().unwrap()])
        .args(["--override-input", "nixpkgs", &format!("path:{}", edgectl_rig::fixture_nixpkgs().display())])
        .env("NIX_CONFIG", "substituters =\nsandbox = false\nbuild-users-group =\nexperimental-features = nix-command flakes")
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("changed since this plan"),
        "{}",
        explain(&o)
    );
    assert!(l.current(0).is_none(), "nothing was applied");
}
