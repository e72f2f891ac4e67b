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
    lab_with(n, edgectl_rig::RigOptions::default())
}

fn lab_with(n: usize, opts: edgectl_rig::RigOptions) -> Option<Lab> {
    if !edgectl_rig::ready() {
        return None;
    }
    let rig = Rig::up_with(n, opts).expect("rig comes up");
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
        c.args(args);
        // These tests are about fan-out's mechanics on the rig's fast bridge, where `auto`
        // (the default) would copy directly: they ask for fan-out unless they choose.
        if args.first() == Some(&"apply") && !args.contains(&"--fanout") {
            c.args(["--fanout", "on"]);
        }
        c.arg(self.topology())
            .args(["--identity", self.rig.key.to_str().unwrap()])
            .args([
                "--override-input",
                "nixpkgs",
                &format!("path:{}", self.fixture.display()),
            ])
            .args(["--connect-timeout", "3"])
            .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG);
        c
    }

    /// edgectl's own SSH session to node i, as root with the rig's key.
    fn session(&self, i: usize) -> edgectl_deploy::host::SshHost {
        let n = self.rig.node(i);
        edgectl_deploy::host::SshHost::connect(edgectl_deploy::host::SshTarget {
            node: n.name.clone(),
            host: n.ip.to_string(),
            port: n.port,
            user: "root".into(),
            identity: Some(self.rig.key.clone()),
            connect_timeout: Duration::from_secs(5),
            pinned: None,
            known_hosts: self.dir.path().join("known_hosts"),
        })
        .expect("connects")
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

use edgectl_testkit::explain;

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

/// The `copy` phase's `ok` event for `node`.
fn copy_ok<'a>(evs: &'a [serde_json::Value], node: &str) -> &'a serde_json::Value {
    evs.iter()
        .find(|e| e["node"] == node && e["phase"] == "copy" && e["state"] == "ok")
        .unwrap_or_else(|| panic!("no copy ok event for {node}: {evs:?}"))
}

/// When the store path named `*-<name>` finished arriving on node i: its change time, set
/// when Nix canonicalised it as the last step of importing it, read from the node's /nix.
fn imported_at(l: &Lab, i: usize, name: &str) -> std::time::SystemTime {
    use std::os::unix::fs::MetadataExt;
    let store = l.rig.node(i).nix_dir.join("store");
    let suffix = format!("-{name}");
    let entry = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(&suffix))
        .unwrap_or_else(|| panic!("node {i} has no *{suffix} in {}", store.display()));
    let m = std::fs::symlink_metadata(&entry).unwrap();
    std::time::UNIX_EPOCH + Duration::new(m.ctime() as u64, m.ctime_nsec() as u32)
}

#[test]
fn fanout_copies_once_from_the_controller_then_over_the_lan() {
    let Some(mut l) = lab(3) else { return };
    // A shared payload big enough that the stream takes a while; the fixture puts a tiny
    // marker path before it in every export stream.
    l.with_payload(32);
    // The controller's link is slower than the cluster LAN, the case fan-out is for: 100 Mbit/s
    // on the controller's side of the bridge (node-to-node traffic is bridged past it), so the
    // upload takes seconds whatever this machine's disks and CPUs do, and the peers must get
    // the stream during it.
    l.rig.throttle_controller("100mbit").expect("throttle");
    // No help from the test: the nodes take the cluster key into their own authorized_keys,
    // as real ones do.
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let evs = events(&o);
    assert_eq!(
        copied_from(&evs, "n1").as_deref(),
        Some("seed holds every closure"),
        "{evs:?}"
    );
    assert!(
        !evs.iter().any(|e| e["state"] == "warning"),
        "no fallback: {evs:?}"
    );
    assert_eq!(
        closure_from(&o),
        vec![
            ("n1".into(), "seed".into(), None),
            ("n2".into(), "seed-stream".into(), Some("n1".into())),
            ("n3".into(), "seed-stream".into(), Some("n1".into())),
        ]
    );
    let systems: Vec<String> = (0..3)
        .map(|i| l.current(i).expect("node has a system"))
        .collect();
    for (i, n) in [(1, "n2"), (2, "n3")] {
        // What the relay says: the peer's own import took the whole stream through the seed's
        // tee, not a copy made afterwards.
        let e = copy_ok(&evs, n);
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.starts_with("streamed from n1 during the upload: "),
            "{n}: {e}"
        );
        assert!(
            e["bytes"].as_u64().unwrap() >= 32 << 20,
            "{n} took the payload from the stream: {e}"
        );
        // What the node says: it holds every host's system, which only the stream (the union of
        // all closures) carries; a copy of its own system would not.
        for s in &systems {
            let v = l.rig.exec_in(i, &["nix-store", "--check-validity", s]);
            assert!(
                v.status.success(),
                "{n} lacks {s}: the stream did not reach it"
            );
        }
        // And when: the peer had imported the stream's first path (the marker) before the
        // seed had finished importing the payload that follows it. A copy made after the
        // seed's import could not.
        let peer_first = imported_at(&l, i, "edge-payload-marker");
        let seed_payload = imported_at(&l, 0, "edge-payload-32mib");
        assert!(
            peer_first < seed_payload,
            "{n} imported its first path at {peer_first:?}, after the seed had the payload ({seed_payload:?})"
        );
    }
    for (i, s) in systems.iter().enumerate() {
        assert_eq!(s, &l.target(i), "node {i}");
    }
    // The cluster key was on the nodes only while closures travelled: off the seed, and out of
    // every peer's authorized_keys, once the apply is done.
    let public = std::fs::read_to_string(l.dir.path().join(".edgectl/cluster_key.pub")).unwrap();
    let public = public.trim();
    assert!(
        !l.rig
            .node(0)
            .nix_dir
            .join("var/edgectl/cluster_key")
            .exists()
    );
    for i in 1..3 {
        let keys = l.rig.node(i).dir.join("home/.ssh/authorized_keys");
        let text = std::fs::read_to_string(&keys).unwrap_or_default();
        assert!(!text.contains(public), "node {i}: {text}");
    }
    // While it is in, it may run nothing but store copies.
    let o = l.rig.ssh(
        1,
        &edgectl_deploy::host::wire_command(
            "root",
            &edgectl_deploy::host::argv([
                "sh",
                "-c",
                edgectl_deploy::fanout::AUTHORIZE,
                "x",
                public,
                edgectl_deploy::fanout::SERVE,
            ]),
            false,
        )
        .unwrap(),
    );
    assert!(o.status.success(), "{}", explain(&o));
    let o = Command::new("ssh")
        .args(["-F", l.rig.ssh_config.to_str().unwrap(), "-i"])
        .arg(l.dir.path().join(".edgectl/cluster_key"))
        .args(["n2", "id"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("only Nix store copies"),
        "{}",
        explain(&o)
    );
    // --fanout off: every node from the controller, and nothing of another host's new system.
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
    let n3 = l.current(2).unwrap();
    let v = l.rig.exec_in(1, &["nix-store", "--check-validity", &n3]);
    assert!(!v.status.success(), "n2 holds n3's system without fan-out");
    assert!(
        closure_from(&o)
            .iter()
            .all(|(_, from, _)| from == "controller")
    );
}

/// `(node, closure.from, closure.seed)` of each node in apply's report.
fn closure_from(o: &Output) -> Vec<(String, String, Option<String>)> {
    last_json(o)["report"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["closure"]["from"].as_str().unwrap_or("-").to_string(),
                n["closure"]["seed"].as_str().map(String::from),
            )
        })
        .collect()
}

/// Whether this machine's store holds `path`.
fn in_local_store(path: &str) -> bool {
    Command::new("nix-store")
        .args(["--check-validity", path])
        .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// `--build-on nodes`: the controller evaluates and sends each node its derivations only; the
/// node builds its own system (the fixture's builders, no cache) and activates it as usual. The
/// systems never land in the controller's store, and the payload never crosses its link.
/// `--fanout auto` (the default) measures the controller's link to the first node and that
/// node's to a peer over the LAN, and fans out when that is predicted well ahead of direct
/// copies: behind 100 Mbit/s it must; on the rig's unthrottled bridge (one machine's CPU behind
/// every link) it is near a tie, and what it did must match what it predicted. The report says
/// which and why.
#[test]
fn fanout_auto_fans_out_behind_a_slow_link_and_follows_its_prediction() {
    let Some(mut l) = lab(3) else { return };
    l.with_payload(8);
    let o = l.run(&["apply", "--json", "--fanout", "auto"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let nodes = last_json(&o)["report"]["nodes"].clone();
    let why = nodes[0]["closure"]["auto"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // What it measured and chose, for whoever reads the test's output.
    eprintln!("unthrottled: --fanout auto: {why}");
    // A LAN probe that ran past its deadline (the LAN could not make fan-out pay) predicts
    // nothing and copies directly.
    let late = why.contains("'s LAN probe (") && why.contains("deadline, so fan-out cannot pay");
    let ratio: f64 = if late {
        f64::INFINITY
    } else {
        assert!(why.contains("peer(s) at once"), "{why}");
        why.split("predicted at ")
            .nth(1)
            .and_then(|r| r.split('x').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no prediction in {why:?}"))
    };
    assert!(why.contains("controller to n1 "), "{why}");
    // A fast link: the direct copies began before the LAN was measured, not after.
    let evs = events(&o);
    let at = |f: &dyn Fn(&str) -> bool| {
        evs.iter()
            .position(|e| e["message"].as_str().is_some_and(f))
    };
    let began = at(&|m| m.starts_with("from controller"));
    let chose = at(&|m| m.starts_with("--fanout auto: "));
    assert!(began.is_some() && began < chose, "{evs:?}");
    let from: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["closure"]["from"].as_str().unwrap())
        .collect();
    if ratio <= edgectl_deploy::fanout::AUTO_MARGIN {
        // Fanned out after all: the copies still running were stopped and those nodes served
        // over the LAN; a node whose copy had ended keeps it.
        assert!(
            why.contains("direct copies begun while the LAN was measured"),
            "{why}"
        );
        assert!(
            from.iter()
                .all(|f| ["controller", "seed", "seed-stream", "seed-copy"].contains(f)),
            "{from:?}"
        );
        let stopped = evs
            .iter()
            .filter(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("copy from the controller stopped"))
            })
            .count();
        assert_eq!(
            from.iter().filter(|f| **f != "controller").count() > 0,
            stopped > 0,
            "{from:?} {evs:?}"
        );
    } else {
        assert!(from.iter().all(|f| *f == "controller"), "{from:?} {why}");
    }
    for n in nodes.as_array().unwrap() {
        assert_eq!(n["closure"]["auto"], why.as_str(), "{n}");
    }
    // A new system for every node, now behind a slow controller link: fan-out, clearly.
    l.write_topology(&["agent"]);
    l.rig.throttle_controller("100mbit").expect("throttle");
    let o = l.run(&["apply", "--json", "--fanout", "auto"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let evs = events(&o);
    assert!(
        evs.iter().any(|e| e["message"].as_str().is_some_and(
            |m| m.starts_with("--fanout auto: ") && m.ends_with("uploaded once and fanned out")
        )),
        "{evs:?}"
    );
    let from: Vec<(String, String, Option<String>)> = closure_from(&o);
    assert_eq!(from[0].1, "seed", "{from:?}");
    assert!(
        from[1..].iter().all(|(_, f, _)| f == "seed-stream"),
        "{from:?}"
    );
}

/// With more peers than `--parallel`, fan-out is a tree: the seed streams to `--parallel`
/// peers, and the first of them relay the stream on to peers of their own as it arrives (the
/// cluster key's forced command runs the relay there). Five nodes, `--parallel 2`: n2 and n3
/// from the seed n1, n4 and n5 from n2; the controller sends the closure once.
#[test]
fn fanout_is_a_tree_when_there_are_more_peers_than_parallel() {
    let Some(mut l) = lab(5) else { return };
    l.with_payload(16);
    let before = l.rig.controller_tx_bytes();
    let o = l.run(&["apply", "--json", "--parallel", "2"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let sent = l.rig.controller_tx_bytes().saturating_sub(before);
    let evs = events(&o);
    assert!(
        !evs.iter().any(|e| e["state"] == "warning"),
        "no fallback: {evs:?}"
    );
    for (n, parent) in [("n2", "n1"), ("n3", "n1"), ("n4", "n2"), ("n5", "n2")] {
        let e = copy_ok(&evs, n);
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.starts_with(&format!("streamed from {parent} during the upload: ")),
            "{n}: {e}"
        );
        assert!(e["bytes"].as_u64().unwrap() >= 16 << 20, "{n}: {e}");
    }
    for i in 0..5 {
        assert_eq!(
            l.current(i).as_deref(),
            Some(l.target(i).as_str()),
            "node {i}"
        );
    }
    // Once over the controller's link (16 MiB of payload, plus the small paths and SSH).
    assert!(sent < 24 << 20, "the controller sent {sent} bytes");
    // The inner node held the key and the relay only while the stream travelled.
    for f in ["cluster_key", "known_hosts", "relay.sh"] {
        assert!(
            !l.rig.node(1).nix_dir.join("var/edgectl").join(f).exists(),
            "{f} left on n2"
        );
    }
}

#[test]
fn build_on_nodes_sends_derivations_and_each_node_builds_its_own_system() {
    let Some(mut l) = lab(2) else { return };
    l.with_payload(16);
    // What the nodes will build, evaluated only; gone from this store if an earlier run of
    // this machine built the same systems here.
    let o = l.run(&["apply", "--goal", "build", "--build-on", "nodes", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let systems: Vec<String> = last_json(&o)["report"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["system"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(systems.len(), 2);
    for s in &systems {
        let _ = Command::new("nix-store")
            .args(["--delete", s])
            .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG)
            .output();
        assert!(!in_local_store(s), "{s} is still in this machine's store");
    }
    let o = l.run(&["plan", "--build-on", "nodes"]);
    assert_eq!(code(&o), 2, "changes to make: {}", explain(&o));
    let before = l.rig.controller_tx_bytes();
    let o = l.run(&["apply", "--build-on", "nodes", "--json"]);
    let sent = l.rig.controller_tx_bytes() - before;
    assert_eq!(code(&o), 0, "{}", explain(&o));
    assert_eq!(
        closure_from(&o),
        vec![
            ("n1".into(), "built-on-node".into(), None),
            ("n2".into(), "built-on-node".into(), None),
        ]
    );
    for (i, s) in systems.iter().enumerate() {
        assert_eq!(l.current(i).as_deref(), Some(s.as_str()), "node {i}");
        assert!(!in_local_store(s), "{s} was built on the controller");
    }
    // Two nodes' derivations and the SSH sessions around them, not 2 x 16 MiB of closure.
    assert!(
        sent < 4 << 20,
        "the controller sent {sent} bytes for 2 nodes; the payload alone is 16 MiB"
    );
    let o = l.run(&["plan", "--build-on", "nodes"]);
    assert_eq!(code(&o), 0, "nothing left to do: {}", explain(&o));
}

/// A peer the seed cannot log in to (its authorized_keys cannot take the cluster key) still
/// gets its system, from the controller, and the user is told: a warning event, and the
/// report's `closure` says `controller-fallback` with the reason. With `--fanout require` the
/// same peer fails instead, keeps its old system, and nothing is copied to it.
#[test]
fn a_fanout_fallback_is_reported_and_can_be_refused() {
    let Some(l) = lab(3) else { return };
    let keys = l.rig.node(2).dir.join("home/.ssh/authorized_keys");
    std::fs::create_dir_all(&keys).unwrap();

    let o = l.run(&["apply", "--json", "--fanout", "require"]);
    assert_eq!(code(&o), 3, "{}", explain(&o));
    let nodes = last_json(&o)["report"]["nodes"].clone();
    assert_eq!(nodes[2]["result"], "failed", "{nodes}");
    let msg = nodes[2]["message"].as_str().unwrap();
    assert!(msg.contains("fan-out is required"), "{msg}");
    assert!(
        msg.contains("authorized_keys"),
        "the reason is named: {msg}"
    );
    assert_eq!(l.current(2), None, "n3 got nothing");
    assert_eq!(
        results(&o)[..2],
        [
            ("n1".into(), "confirmed".into()),
            ("n2".into(), "confirmed".into())
        ]
    );

    // n1 and n2 are done; one more node that lacks its system makes fan-out run again.
    l.write_topology(&["agent"]);
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let evs = events(&o);
    let warned: Vec<_> = evs.iter().filter(|e| e["state"] == "warning").collect();
    assert_eq!(warned.len(), 1, "{evs:?}");
    assert_eq!(warned[0]["node"], "n3");
    let n3 = &last_json(&o)["report"]["nodes"][2];
    assert_eq!(n3["closure"]["from"], "controller-fallback", "{n3}");
    assert!(
        n3["closure"]["fallback_reason"]
            .as_str()
            .unwrap()
            .contains("authorized_keys"),
        "{n3}"
    );
    assert_eq!(l.current(2).as_deref(), Some(l.target(2).as_str()));
    // The terminal view says it too.
    l.write_topology(&["wasm"]);
    let o = l.run(&["apply"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: n3 got its closure from this machine, not over the cluster LAN"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("controller (FALLBACK)"));
}

/// Three nodes fan out a 48 MiB closure; node `victim` (0: the seed) loses sshd and its
/// sessions once a copy over the LAN has started. Apply must report it (exit 3) and bring the
/// other two to their systems anyway; a rerun once it is back converges it too.
fn a_node_dies_mid_fanout(victim: usize) {
    a_node_dies_mid_fanout_of(3, victim, &[]);
}

/// [`a_node_dies_mid_fanout`] with `nodes` nodes and `extra` apply arguments.
fn a_node_dies_mid_fanout_of(nodes: usize, victim: usize, extra: &[&str]) {
    let Some(mut l) = lab(nodes) else { return };
    l.with_payload(48);
    let mut args = vec!["apply"];
    args.extend_from_slice(extra);
    let mut child = l.spawn_json(&args);
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
    for i in (0..nodes).filter(|&i| i != victim) {
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

/// An inner node of the tree dies while it relays: the peers under it get their closures
/// another way (from the seed after the upload), and only the dead node fails.
#[test]
fn fanout_survives_an_inner_node_of_the_tree_dying_mid_relay() {
    a_node_dies_mid_fanout_of(5, 1, &["--parallel", "2"]);
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
        // Activated for this boot first; the boot default only after the confirmation.
        let acts =
            std::fs::read_to_string(l.rig.node(i).nix_dir.join("var/edgectl-test/activations"))
                .unwrap();
        let goals: Vec<&str> = acts
            .lines()
            .filter(|a| a.contains(f.as_str()))
            .filter_map(|a| a.split(' ').next())
            .collect();
        assert_eq!(goals, ["test", "boot"], "node {i} activations: {acts}");
        let boot = l.rig.node(i).nix_dir.join("var/edgectl-test/boot");
        assert_eq!(std::fs::read_to_string(boot).unwrap().trim(), f);
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
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 3, "{}", explain(&o));
    assert!(
        results(&o).contains(&("n2".into(), "failed".into())),
        "{:?}",
        results(&o)
    );
    // The failure was read from the node's status file, which the activation script wrote
    // when switch-to-configuration exited 1, with the switch's own error from the node's log:
    // not a confirm timeout (that would be "rolled-back", "not confirmed in time").
    let v = last_json(&o);
    let n2 = v["report"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "n2")
        .unwrap();
    let msg = n2["message"].as_str().unwrap();
    assert!(
        msg.starts_with("activation failed 1; rolled back: ")
            && msg.contains("failed (test behaviour 'fail')"),
        "{n2}"
    );
    let runs = std::fs::read_dir(l.rig.node(1).nix_dir.join("var/edgectl/run")).unwrap();
    let statuses: Vec<String> = runs
        .map(|r| std::fs::read_to_string(r.unwrap().path().join("status")).unwrap_or_default())
        .map(|s| s.trim().to_string())
        .collect();
    assert!(
        statuses.iter().any(|s| s == "failed 1"),
        "n2's activation runs: {statuses:?}"
    );
    assert!(
        !statuses.iter().any(|s| s.starts_with("rolled")),
        "n2's watcher never had to roll back: {statuses:?}"
    );
    // On the node: the failed switch, then at once the switch back to the old generation.
    let acts = std::fs::read_to_string(l.rig.node(1).nix_dir.join("var/edgectl-test/activations"))
        .unwrap();
    let tail: Vec<&str> = acts.lines().rev().take(2).collect();
    assert!(
        tail[1].ends_with(" FAILED") && tail[0].starts_with(&format!("test {before} ")),
        "n2 activations: {acts}"
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

/// One run of the fixture's switch-to-configuration on a node, from the `timeline` it keeps
/// under the node's /nix: start and end in nanoseconds since the epoch.
#[derive(Debug)]
struct Run {
    node: usize,
    system: String,
    start: u128,
    end: u128,
}

impl Lab {
    /// Every activation node i ran, in order (the `boot` step that makes a confirmed
    /// generation the boot default changes nothing that runs, so it is left out).
    fn runs(&self, i: usize) -> Vec<Run> {
        let path = self.rig.node(i).nix_dir.join("var/edgectl-test/timeline");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let ns = |t: &str| -> u128 {
            let (s, n) = t.split_once('.').unwrap_or_else(|| panic!("time {t:?}"));
            assert_eq!(n.len(), 9, "date +%N gives nanoseconds: {t:?}");
            s.parse::<u128>().unwrap() * 1_000_000_000 + n.parse::<u128>().unwrap()
        };
        let mut runs = Vec::new();
        let mut open: Option<(String, u128)> = None;
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [kind, goal, system, t] = f[..] else {
                panic!("node {i}: timeline line {line:?}")
            };
            if goal == "boot" {
                continue;
            }
            match (kind, open.take()) {
                ("start", None) => open = Some((system.to_string(), ns(t))),
                ("end", Some((started, start))) if started == system => runs.push(Run {
                    node: i,
                    system: started,
                    start,
                    end: ns(t),
                }),
                _ => panic!("node {i}: timeline out of order at {line:?}:\n{text}"),
            }
        }
        assert!(
            open.is_none(),
            "node {i}: an activation never ended:\n{text}"
        );
        runs
    }

    /// Forgets the activations recorded so far on every node.
    fn clear_timelines(&self) {
        for n in &self.rig.nodes {
            let _ = std::fs::remove_file(n.nix_dir.join("var/edgectl-test/timeline"));
        }
    }
}

/// The most runs in progress at one instant.
fn max_overlap(runs: &[Run]) -> usize {
    // Ends sort before starts at the same instant: touching runs do not overlap.
    let mut edges: Vec<(u128, i32)> = runs
        .iter()
        .flat_map(|r| [(r.start, 1), (r.end, -1)])
        .collect();
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

#[test]
fn apply_activates_at_most_parallel_nodes_at_once() {
    let Some(l) = lab(4) else { return };
    // n1 (the Zenoh router) activates first and alone; n2..n4 are one wave of three.
    let barrier = |dir: &str, n: usize| {
        let d = l.dir.path().join(dir);
        for i in 1..4 {
            l.behaviour(i, &format!("barrier {} {n}", d.display()));
        }
    };
    // Applies with `--parallel`, every node confirmed; the workers' activations.
    let apply = |parallel: &str| -> Vec<Run> {
        let o = l.run(&["apply", "--json", "--fanout", "off", "--parallel", parallel]);
        assert_eq!(code(&o), 0, "{}", explain(&o));
        assert!(
            results(&o).iter().all(|(_, r)| r == "confirmed"),
            "{:?}",
            results(&o)
        );
        let runs: Vec<Run> = (1..4).flat_map(|i| l.runs(i)).collect();
        assert_eq!(runs.len(), 3, "one activation per worker: {runs:?}");
        runs
    };

    // --parallel 2: two workers must be inside switch-to-configuration together to pass their
    // barrier, and the third may only start once one of them has finished.
    barrier("two", 2);
    let runs = apply("2");
    assert_eq!(max_overlap(&runs), 2, "--parallel 2: {runs:?}");

    // --parallel 8: all three workers at once, or their barrier (three) fails them.
    l.write_topology(&["agent"]);
    l.clear_timelines();
    barrier("three", 3);
    let runs = apply("8");
    assert_eq!(max_overlap(&runs), 3, "--parallel 8: {runs:?}");
}

/// `roles = ROLES` for node `name` in a topology written by `edgectl_rig::topology_toml`.
fn set_roles(toml: &str, name: &str, roles: &str) -> String {
    let at = toml
        .find(&format!("name = {name:?}\n"))
        .unwrap_or_else(|| panic!("no node {name}"));
    let r = at + toml[at..].find("roles = ").unwrap();
    let eol = r + toml[r..].find('\n').unwrap();
    format!("{}roles = {roles}{}", &toml[..r], &toml[eol..])
}

#[test]
fn routers_and_the_ray_head_activate_before_the_workers() {
    let Some(l) = lab(4) else { return };
    // n1 routes Zenoh (topology_toml), n3 is the Ray head, n2 and n4 are Ray workers: the head
    // is not first in the file, so file order cannot pass for wave order.
    let mut t = edgectl_rig::topology_toml(&l.rig, &["agent"], 6);
    t = set_roles(&t, "n2", r#"["ray-worker"]"#);
    t = set_roles(&t, "n3", r#"["ray-head"]"#);
    t = set_roles(&t, "n4", r#"["ray-worker"]"#);
    std::fs::write(l.topology(), t).unwrap();
    // The first wave takes a while: workers that did not wait for it would start meanwhile
    // (the default --parallel admits all four at once).
    l.behaviour(0, "slow 2");
    l.behaviour(2, "slow 2");
    let o = l.run(&["apply", "--json", "--fanout", "off"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let runs: Vec<Run> = (0..4).flat_map(|i| l.runs(i)).collect();
    assert_eq!(runs.len(), 4, "one activation per node: {runs:?}");
    for r in &runs {
        assert_eq!(
            Some(r.system.as_str()),
            l.current(r.node).as_deref(),
            "{r:?}"
        );
    }
    let first_done = runs
        .iter()
        .filter(|r| r.node == 0 || r.node == 2)
        .map(|r| r.end)
        .max()
        .unwrap();
    let workers_began = runs
        .iter()
        .filter(|r| r.node == 1 || r.node == 3)
        .map(|r| r.start)
        .min()
        .unwrap();
    assert!(
        first_done < workers_began,
        "a worker started activating before the router and the head were done: {runs:?}"
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
        .args([
            "apply",
            plan.to_str().unwrap(),
            "--identity",
            l.rig.key.to_str().unwrap(),
        ])
        .args([
            "--override-input",
            "nixpkgs",
            &format!("path:{}", edgectl_rig::fixture_nixpkgs().display()),
        ])
        .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG)
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

/// A command that prints nothing for longer than any keepalive or read timeout edgectl might
/// set (grub-install, `apt-get -qq`, `nix path-info` on a big closure) still finishes and
/// returns its output over edgectl's own SSH session.
#[test]
fn a_command_silent_for_thirty_seconds_finishes() {
    let Some(l) = lab(1) else { return };
    let h = l.session(0);
    let argv = edgectl_deploy::host::argv(["sh", "-c", "sleep 30; echo finished"]);
    let o = edgectl_deploy::host::Host::run(&h, &argv, false)
        .expect("a silent command is not a dead node");
    assert_eq!((o.status, o.stdout.trim()), (0, "finished"), "{}", o.stderr);
}

/// A node's OpenSSH children (`nix copy`, the probes, the seed's upload) share one
/// connection that lives as long as edgectl's session to the node: the same client port for
/// each, none left behind afterwards, and a child still runs when that connection is gone.
#[test]
fn a_nodes_ssh_children_share_one_connection_and_outlive_it() {
    use edgectl_deploy::host::{Host, argv};
    let Some(l) = lab(1) else { return };
    let n = l.rig.node(0);
    let h = l.session(0);
    edgectl_deploy::host::write_known_hosts(
        &l.dir.path().join("known_hosts"),
        &[(n.ip.to_string(), n.port, h.host_key().unwrap())],
    )
    .unwrap();
    let client = |h: &dyn Host| {
        let o = h
            .run_piped(
                &argv(["sh", "-c", "echo $SSH_CONNECTION"]),
                false,
                Stdio::null(),
            )
            .unwrap();
        assert_eq!(o.status, 0, "{}", o.stderr);
        o.stdout.split_whitespace().nth(1).unwrap().to_string()
    };
    let first = client(&h);
    assert_eq!(
        client(&h),
        first,
        "a second child through the same connection"
    );
    let own = h
        .run(&argv(["sh", "-c", "echo $SSH_CONNECTION"]), false)
        .unwrap();
    assert_ne!(own.stdout.split_whitespace().nth(1), Some(first.as_str()));
    let ours = format!("edgectl-ssh.{}.", std::process::id());
    let masters = || {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&ours))
            .count()
    };
    assert_eq!(masters(), 1);
    // The shared connection dies (as with a node's sshd restarting): children connect anew.
    let killed = Command::new("pkill")
        .args(["-f", &format!("ControlPath=.*{ours}")])
        .status()
        .unwrap();
    assert!(killed.success(), "the master runs with its ControlPath");
    std::thread::sleep(Duration::from_millis(200));
    assert_ne!(
        client(&h),
        first,
        "a child of a dead master connects on its own"
    );
    drop(h);
    assert_eq!(
        masters(),
        0,
        "the master's private directory goes with the session"
    );
}

/// A command whose output is not UTF-8 ran: its output comes back (lossily), the node is not
/// "unreachable".
#[test]
fn output_that_is_not_utf8_is_output_not_an_unreachable_node() {
    let Some(l) = lab(1) else { return };
    let h = l.session(0);
    let argv = edgectl_deploy::host::argv([
        "sh",
        "-c",
        r"printf 'a\377\376b'; printf '\377err' >&2; exit 3",
    ]);
    let o = edgectl_deploy::host::Host::run(&h, &argv, false)
        .unwrap_or_else(|e| panic!("invalid UTF-8 made the node {e}"));
    assert_eq!(o.status, 3);
    assert_eq!(o.stdout, "a\u{FFFD}\u{FFFD}b");
    assert_eq!(o.stderr, "\u{FFFD}err");
    // The session is as good as before.
    let o = edgectl_deploy::host::Host::run(&h, &edgectl_deploy::host::argv(["echo", "ok"]), false)
        .unwrap();
    assert_eq!(o.stdout, "ok\n");
}

/// CloudLab lets a user pick tcsh as login shell, and SSH hands every command to it: plan,
/// apply (lock, copy, the multi-line activation and confirm scripts) and a second plan must
/// all work through it, ending on the new generation.
#[test]
fn a_tcsh_login_shell_runs_every_remote_command() {
    if !edgectl_rig::ready() {
        return;
    }
    let Some(tcsh) = edgectl_testkit::require("tcsh", edgectl_testkit::tool("tcsh")) else {
        return;
    };
    let rig = Rig::up_with(
        2,
        edgectl_rig::RigOptions {
            private_etc: true,
            ..Default::default()
        },
    )
    .expect("rig");
    for n in &rig.nodes {
        let passwd = n.etc_root.as_ref().unwrap().join("passwd");
        let text = std::fs::read_to_string(&passwd).unwrap();
        let text: String = text
            .lines()
            .map(|l| match l.strip_prefix("root:") {
                Some(rest) => {
                    let mut f: Vec<&str> = rest.split(':').collect();
                    *f.last_mut().unwrap() = tcsh.to_str().unwrap();
                    format!("root:{}\n", f.join(":"))
                }
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&passwd, text).unwrap();
    }
    let l = Lab {
        rig,
        dir: tempfile::tempdir().unwrap(),
        fixture: edgectl_rig::fixture_nixpkgs(),
    };
    l.write_topology(&["wasm", "agent"]);
    // The node's sshd now logs root in with tcsh: a quoted newline is an error there.
    let o = l.rig.ssh(0, "echo $shell");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        tcsh.to_str().unwrap()
    );
    assert_eq!(code(&l.run(&["plan", "--json"])), 2);
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    assert_eq!(
        results(&o),
        vec![
            ("n1".into(), "confirmed".into()),
            ("n2".into(), "confirmed".into())
        ]
    );
    for i in 0..2 {
        assert_eq!(l.current(i), Some(l.target(i)), "node {i}");
    }
    assert_eq!(code(&l.run(&["plan", "--json"])), 0);
    // `--fanout auto` probes the links through the same shell: the controller's with a
    // command over OpenSSH, the LAN with the probe script on the first node and the cluster
    // key's forced command on the second. Whatever it chose, it must have measured both.
    l.write_topology(&["agent"]);
    apply_auto_measures_both_links(&l, "tcsh");
}

/// Applies a new system with `--fanout auto` and checks that it measured both links (the
/// controller's, then the first node's to the second over the LAN, whatever it chose) and
/// that every node runs the new system.
fn apply_auto_measures_both_links(l: &Lab, through: &str) {
    let o = l.run(&["apply", "--json", "--fanout", "auto"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let why = last_json(&o)["report"]["nodes"][0]["closure"]["auto"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    eprintln!("through {through}: --fanout auto: {why}");
    assert!(
        why.starts_with("controller to n1 ")
            && (why.contains("peer(s) at once") || why.contains("deadline")),
        "{why}"
    );
    for i in 0..l.rig.nodes.len() {
        assert_eq!(l.current(i), Some(l.target(i)), "node {i}");
    }
}

/// The node's run folders, by the status each ended on.
fn run_statuses(l: &Lab, i: usize) -> Vec<String> {
    std::fs::read_dir(l.rig.node(i).nix_dir.join("var/edgectl/run"))
        .map(|rd| {
            rd.flatten()
                .map(|r| std::fs::read_to_string(r.path().join("status")).unwrap_or_default())
                .map(|s| s.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until some run on node i has `status`; returns its folder.
fn wait_run_status(l: &Lab, i: usize, status: &str, limit: Duration) -> PathBuf {
    let end = Instant::now() + limit;
    loop {
        if let Ok(rd) = std::fs::read_dir(l.rig.node(i).nix_dir.join("var/edgectl/run")) {
            for r in rd.flatten() {
                let s = std::fs::read_to_string(r.path().join("status")).unwrap_or_default();
                if s.trim() == status {
                    return r.path();
                }
            }
        }
        assert!(
            Instant::now() < end,
            "no run reached {status:?}: {:?}",
            run_statuses(l, i)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the run `token` on node i has `status`.
fn wait_token_status(l: &Lab, i: usize, token: &str, status: &str, limit: Duration) {
    let f = l
        .rig
        .node(i)
        .nix_dir
        .join("var/edgectl/run")
        .join(token)
        .join("status");
    let end = Instant::now() + limit;
    loop {
        let s = std::fs::read_to_string(&f).unwrap_or_default();
        if s.trim() == status {
            return;
        }
        assert!(Instant::now() < end, "{token} is {s:?}, not {status:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fixture's runtime and boot-default markers on node i.
fn runtime_and_boot(l: &Lab, i: usize) -> (String, String) {
    let f = |n: &str| {
        std::fs::read_to_string(l.rig.node(i).nix_dir.join("var/edgectl-test").join(n))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    (f("current"), f("boot"))
}

/// The confirm clock starts when the switch has finished: a switch slower than the whole
/// confirm timeout (6 s) is confirmed, not rolled back while it runs.
#[test]
fn an_activation_slower_than_the_confirm_timeout_is_confirmed() {
    let Some(l) = lab(1) else { return };
    l.behaviour(0, "slow 9");
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    assert_eq!(results(&o), vec![("n1".into(), "confirmed".into())]);
    let target = l.target(0);
    assert_eq!(l.current(0).as_deref(), Some(target.as_str()));
    assert_eq!(runtime_and_boot(&l, 0), (target.clone(), target));
}

/// The activation protocol itself on a node, with the controller's part played by the test: a
/// confirmation one second before the deadline makes the new generation the profile's and the
/// boot default; one second after it comes too late, and the node is back on its previous
/// generation, at runtime, in its profile and in its boot default.
#[test]
fn a_confirmation_one_second_before_or_after_the_deadline() {
    let Some(l) = lab(1) else { return };
    assert_eq!(code(&l.run(&["apply", "--json"])), 0);
    let before = l.current(0).unwrap();
    l.write_topology(&["agent"]);
    let o = l.run(&["apply", "--goal", "push", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let new = l.target(0);
    assert_ne!(new, before);
    let ssh = |argv: Vec<String>| {
        let line = edgectl_deploy::host::wire_command("root", &argv, true).unwrap();
        l.rig.ssh(0, &line)
    };
    const DEADLINE: u64 = 3;
    for (token, at, confirmed) in [
        ("t-before", DEADLINE - 1, true),
        ("t-after", DEADLINE + 1, false),
    ] {
        let o = ssh(edgectl_deploy::host::argv([
            "sh".to_string(),
            "-c".into(),
            edgectl_deploy::activate::LAUNCH.into(),
            "edgectl-launch".into(),
            edgectl_deploy::activate::activate_script(),
            new.clone(),
            "switch".into(),
            DEADLINE.to_string(),
            token.into(),
        ]));
        assert!(o.status.success(), "{}", explain(&o));
        wait_token_status(&l, 0, token, "activated", Duration::from_secs(20));
        let activated = Instant::now();
        // Nothing is the boot default yet.
        assert_eq!(runtime_and_boot(&l, 0), (new.clone(), before.clone()));
        std::thread::sleep(Duration::from_secs(at).saturating_sub(activated.elapsed()));
        let o = ssh(edgectl_deploy::host::argv([
            "sh",
            "-c",
            edgectl_deploy::activate::CONFIRM,
            "edgectl-confirm",
            token,
        ]));
        let end = if confirmed { "done" } else { "rolled-back" };
        assert_eq!(
            o.status.code(),
            Some(if confirmed { 0 } else { 2 }),
            "{token}"
        );
        wait_token_status(&l, 0, token, end, Duration::from_secs(20));
        let on = if confirmed { &new } else { &before };
        assert_eq!(l.current(0).as_deref(), Some(on.as_str()), "{token}");
        assert_eq!(runtime_and_boot(&l, 0), (on.clone(), on.clone()), "{token}");
        if confirmed {
            // Back to `before` for the second case, the way edgectl would.
            l.write_topology(&["wasm", "agent"]);
            assert_eq!(code(&l.run(&["apply", "--json"])), 0);
            assert_eq!(l.current(0).as_deref(), Some(before.as_str()));
        }
    }
}

/// A switch that fails, and a rollback that fails too: reported as failed with both, never as
/// "rolled back".
#[test]
fn a_rollback_that_fails_is_reported_as_failed() {
    let Some(l) = lab(1) else { return };
    assert_eq!(code(&l.run(&["apply", "--json"])), 0);
    l.write_topology(&["agent"]);
    l.behaviour(0, "fail-all");
    let o = l.run(&["apply", "--json"]);
    std::fs::remove_file(l.rig.node(0).nix_dir.join("var/edgectl-test/behaviour")).unwrap();
    assert_eq!(code(&o), 3, "{}", explain(&o));
    let n = &last_json(&o)["report"]["nodes"][0];
    assert_eq!(n["result"], "failed", "{n}");
    let msg = n["message"].as_str().unwrap();
    assert!(msg.contains("the rollback failed too"), "{msg}");
    assert!(
        run_statuses(&l, 0)
            .iter()
            .any(|s| s == "rollback-failed 1 after failed 1")
    );
}

/// The process that decides an activation is killed mid-switch (and with it the controller):
/// the running apply notices, rolls the node back and says so; a later apply finds nothing
/// undecided and converges.
#[test]
fn a_killed_activation_is_decided_not_waited_for() {
    let Some(l) = lab(2) else { return };
    assert_eq!(code(&l.run(&["apply", "--json"])), 0);
    let before = l.current(1).unwrap();
    l.write_topology(&["agent"]);
    l.behaviour(1, "slow 6");
    let child = l.spawn_json(&["apply"]);
    let run = wait_run_status(&l, 1, "switching", Duration::from_secs(60));
    let pid: i32 = std::fs::read_to_string(run.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) of the activation's shell, a process of ours in the rig.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
    let n2 = &last_json(&o)["report"]["nodes"][1];
    assert_eq!(n2["result"], "rolled-back", "{n2}");
    assert!(
        n2["message"].as_str().unwrap().contains("process died"),
        "{n2}"
    );
    assert_eq!(l.current(1).as_deref(), Some(before.as_str()));
    assert_eq!(runtime_and_boot(&l, 1), (before.clone(), before));

    // Now the controller dies too, mid-switch, and then the activation: the next apply
    // decides the orphan at once (no wait for any timeout) and converges.
    l.behaviour(1, "slow 6");
    let mut child = l.spawn_json(&["apply"]);
    let run = wait_run_status(&l, 1, "switching", Duration::from_secs(60));
    child.kill().unwrap();
    let _ = child.wait();
    let pid: i32 = std::fs::read_to_string(run.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // The node lock of the killed controller is taken over (same host, dead pid).
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let decided = events(&o).into_iter().any(|e| {
        e["node"] == "n2"
            && e["state"] == "warning"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("rolled-back after its process died")
    });
    assert!(
        decided,
        "the orphan was decided and reported: {}",
        explain(&o)
    );
    for i in 0..2 {
        assert_eq!(
            l.current(i).as_deref(),
            Some(l.target(i).as_str()),
            "node {i}"
        );
    }
}

/// A node reboots in the middle of an activation (every process killed, /run cleared, a new
/// boot id, sshd back after 2 s): it comes back on its confirmed generation, apply says so, and
/// a second apply converges.
#[test]
fn a_reboot_mid_activation_lands_on_the_confirmed_generation() {
    let Some(l) = lab(2) else { return };
    assert_eq!(code(&l.run(&["apply", "--json"])), 0);
    let before = l.current(1).unwrap();
    let boot0 = l.rig.boot_id(1);
    l.write_topology(&["agent"]);
    l.behaviour(1, "slow 5");
    let child = l.spawn_json(&["apply"]);
    wait_run_status(&l, 1, "switching", Duration::from_secs(60));
    l.rig.reboot(1, Duration::from_secs(2));
    assert_ne!(l.rig.boot_id(1), boot0);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
    let n2 = &last_json(&o)["report"]["nodes"][1];
    assert_eq!(n2["result"], "rolled-back", "{n2}");
    assert!(n2["message"].as_str().unwrap().contains("rebooted"), "{n2}");
    assert_eq!(l.current(1).as_deref(), Some(before.as_str()));
    assert_eq!(runtime_and_boot(&l, 1), (before.clone(), before));
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    for i in 0..2 {
        assert_eq!(
            l.current(i).as_deref(),
            Some(l.target(i).as_str()),
            "node {i}"
        );
    }
}

fn nixos() -> edgectl_rig::RigOptions {
    edgectl_rig::RigOptions {
        nixos: true,
        ..Default::default()
    }
}

/// On a NixOS node edgectl activates through systemd-run, whose transient units get a PATH of
/// systemd's own tools only (nixpkgs issues 261691, 262169; the rig's `--nixos` nodes model
/// it): the activation must still run, be confirmed, and end on the new generation.
#[test]
fn apply_on_nixos_nodes_activates_through_systemd_run() {
    let Some(l) = lab_with(2, nixos()) else {
        return;
    };
    // The model first: the node says it is NixOS, and a transient unit finds no mkdir.
    let os = l.rig.ssh(0, ". /etc/os-release; echo $ID");
    assert_eq!(String::from_utf8_lossy(&os.stdout).trim(), "nixos");
    let o = l.rig.ssh(
        0,
        "systemd-run --quiet --unit=probe /bin/sh -c 'command -v mkdir nix-env; echo end'; sleep 1; journalctl -u probe",
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "end",
        "{}",
        explain(&o)
    );

    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    assert_eq!(
        results(&o),
        vec![
            ("n1".into(), "confirmed".into()),
            ("n2".into(), "confirmed".into())
        ]
    );
    for i in 0..2 {
        let target = l.target(i);
        assert_eq!(l.current(i).as_deref(), Some(target.as_str()), "node {i}");
        assert_eq!(
            runtime_and_boot(&l, i),
            (target.clone(), target),
            "node {i}"
        );
        let launchers: Vec<String> =
            std::fs::read_dir(l.rig.node(i).nix_dir.join("var/edgectl/run"))
                .unwrap()
                .flatten()
                .map(|r| std::fs::read_to_string(r.path().join("launcher")).unwrap_or_default())
                .collect();
        assert!(
            !launchers.is_empty() && launchers.iter().all(|x| x.trim() == "systemd-run"),
            "node {i}: {launchers:?}"
        );
    }
    assert_eq!(code(&l.run(&["plan", "--json"])), 0);
}

/// A unit that never starts is reported as such, with what the journal says, after a short
/// grace; the node is not changed, and the activation can never start late.
#[test]
fn an_activation_that_does_not_start_is_reported_with_the_journal() {
    let Some(l) = lab_with(1, nixos()) else {
        return;
    };
    let o = l.rig.exec_in(
        0,
        &[
            "sh",
            "-c",
            "echo 'simulated: unit start refused' > /run/edgerig-systemd/refuse",
        ],
    );
    assert!(o.status.success());
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 3, "{}", explain(&o));
    let n = &last_json(&o)["report"]["nodes"][0];
    assert_eq!(n["result"], "failed", "{n}");
    let msg = n["message"].as_str().unwrap();
    assert!(
        msg.contains("activation did not start") && msg.contains("the node was not changed"),
        "{msg}"
    );
    assert!(
        msg.contains("simulated: unit start refused"),
        "the journal is quoted: {msg}"
    );
    assert_eq!(l.current(0), None);
    assert_eq!(runtime_and_boot(&l, 0), (String::new(), String::new()));
}

/// A peer that is alive but stops reading (its import takes 1 MB, then hangs without reading
/// on) holds up neither the seed nor the other peer: the relay's watchdog drops it after
/// `STALL`, the others finish from the stream, and the stalled one gets its copy from the seed
/// afterwards (`nix-store --serve`, which works there).
#[test]
fn a_stalled_fanout_peer_is_dropped_and_served_later() {
    let Some(mut l) = lab(3) else { return };
    l.with_payload(32);
    let wrapper = "#!/bin/bash\ncase \" $* \" in *\" --import \"*) head -c 1000000 > /dev/null; exec sleep 100000 ;; esac\nexec -a nix-store /usr/bin/nix \"$@\"\n";
    let o = l.rig.exec_in(
        2,
        &[
            "sh",
            "-c",
            "mount -t tmpfs edgerig-stall /usr/local/bin && printf '%s' \"$1\" > /usr/local/bin/nix-store && chmod 755 /usr/local/bin/nix-store",
            "x",
            wrapper,
        ],
    );
    assert!(o.status.success(), "{}", explain(&o));
    let t0 = Instant::now();
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    let evs = events(&o);
    let n3: Vec<String> = evs
        .iter()
        .filter(|e| e["node"] == "n3" && e["phase"] == "copy")
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        n3.iter()
            .any(|m| m.contains("dropped: it read nothing for 20 s")),
        "{n3:?}"
    );
    assert_eq!(
        copied_from(&evs, "n3").as_deref(),
        Some("copied from n1 after the upload"),
        "{n3:?}"
    );
    assert!(
        copy_ok(&evs, "n2")["message"]
            .as_str()
            .unwrap()
            .starts_with("streamed from n1 during the upload"),
        "the stalled peer held n2 up: {evs:?}"
    );
    for i in 0..3 {
        assert_eq!(
            l.current(i).as_deref(),
            Some(l.target(i).as_str()),
            "node {i}"
        );
    }
    eprintln!("apply with a stalled peer took {:?}", t0.elapsed());
}

/// CloudLab logs users in as themselves and they reach root through `sudo -n`: plan, apply
/// (lock, copies over the LAN with the cluster key under that user, activation, confirmation)
/// and a second plan must all work that way, and every node ends on its new generation.
#[test]
fn a_non_root_login_reaches_root_through_sudo() {
    if !edgectl_rig::ready() {
        return;
    }
    let found =
        edgectl_testkit::tool("sudo").map_err(|e| format!("{e} (Debian: apt-get install sudo)"));
    if edgectl_testkit::require("sudo", found).is_none() {
        return;
    }
    let rig = Rig::up_with(
        3,
        edgectl_rig::RigOptions {
            private_etc: true,
            ..Default::default()
        },
    )
    .expect("rig");
    rig.add_sudo_user("alice").unwrap();
    let l = Lab {
        rig,
        dir: tempfile::tempdir().unwrap(),
        fixture: edgectl_rig::fixture_nixpkgs(),
    };
    l.write_topology(&["wasm", "agent"]);
    let t = std::fs::read_to_string(l.topology())
        .unwrap()
        .replace("ssh_user = \"root\"", "ssh_user = \"alice\"");
    std::fs::write(l.topology(), t).unwrap();
    let o = Command::new("ssh")
        .args(["-F", l.rig.ssh_config.to_str().unwrap(), "alice@n1"])
        .arg("id -un; sudo -n id -un")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "alice\nroot\n",
        "{}",
        explain(&o)
    );
    assert_eq!(code(&l.run(&["plan", "--json"])), 2);
    // `--parallel 1` makes the fan-out a chain, n1 to n2 to n3: n2 relays as an inner node of
    // the tree, its relay started by the cluster key's forced command through `sudo -n`.
    let o = l.run(&["apply", "--json", "--parallel", "1"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    assert_eq!(
        closure_from(&o),
        vec![
            ("n1".into(), "seed".into(), None),
            ("n2".into(), "seed-stream".into(), Some("n1".into())),
            ("n3".into(), "seed-stream".into(), Some("n1".into())),
        ]
    );
    let evs = events(&o);
    let m = copy_ok(&evs, "n3")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(m.starts_with("streamed from n2 during the upload"), "{m}");
    for i in 0..3 {
        assert_eq!(
            l.current(i).as_deref(),
            Some(l.target(i).as_str()),
            "node {i}"
        );
    }
    assert_eq!(code(&l.run(&["plan", "--json"])), 0);
    // `--fanout auto`'s probes under that user: the LAN probe runs on n1 as root through
    // `sudo -n` with the cluster key, into the forced command of alice's key on n2.
    l.write_topology(&["agent"]);
    let t = std::fs::read_to_string(l.topology())
        .unwrap()
        .replace("ssh_user = \"root\"", "ssh_user = \"alice\"");
    std::fs::write(l.topology(), t).unwrap();
    apply_auto_measures_both_links(&l, "sudo");
}

/// `plan` during an apply says so (a warning naming the apply's holder); a lock nobody has
/// refreshed for minutes is no apply, and plan says nothing.
#[test]
fn plan_during_an_apply_says_so() {
    let Some(l) = lab(1) else { return };
    l.rig.hold_apply_lock(
        0,
        "edgectl user=bob host=elsewhere machine=0 pid=1 start=1 run=r",
    );
    let o = l.run(&["plan", "--json"]);
    assert_eq!(code(&o), 2, "{}", explain(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        plan["nodes"][0]["apply_in_progress"]
            .as_str()
            .is_some_and(|h| h.contains("host=elsewhere")),
        "{plan}"
    );
    // The terminal view warns.
    let o = l.run(&["plan"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("an apply is running on this node"),
        "{}",
        explain(&o)
    );
    l.rig.age_apply_lock(0, 10);
    let o = l.run(&["plan", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(plan["nodes"][0]["apply_in_progress"].is_null(), "{plan}");
}

/// The path a new user takes on NixOS nodes: plan, apply, plan, verify. The applied systems run
/// the agent as their service (the fixture starts it on activation, as systemd starts
/// edgectl-agent.service), so `verify` uploads nothing: on these nodes an uploaded generic binary
/// could not run (their /var is noexec, as NixOS has no FHS loader) and their firewall opens
/// only what the configuration opens.
#[test]
fn nixos_nodes_plan_apply_plan_verify_through_the_agent_service() {
    let Some(l) = lab_with(3, nixos()) else {
        return;
    };
    let fx = edgectl_rig::agent_fixture(
        &l.dir.path().join("edgectl-flake"),
        std::path::Path::new(env!("CARGO_BIN_EXE_edgectl")),
    )
    .unwrap();
    std::fs::write(
        l.topology(),
        edgectl_rig::topology_toml_with(&l.rig, &["agent"], 6, &fx),
    )
    .unwrap();

    let o = l.run(&["plan", "--json"]);
    assert_eq!(code(&o), 2, "{}", explain(&o));
    let o = l.run(&["apply", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));
    for i in 0..3 {
        let target = l.target(i);
        assert_eq!(l.current(i).as_deref(), Some(target.as_str()), "node {i}");
    }
    let o = l.run(&["plan", "--json"]);
    assert_eq!(code(&o), 0, "{}", explain(&o));

    let o = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .arg("verify")
        .arg(l.topology())
        .args(["--identity", l.rig.key.to_str().unwrap()])
        .args(["--connect-timeout", "5", "--samples", "20", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", explain(&o)));
    for n in v["nodes"].as_array().unwrap() {
        assert_eq!(n["agent"], "service", "{n}\n{}", explain(&o));
    }
    // Every ordered pair, over both transports.
    for m in ["quic", "zenoh"] {
        let pairs = v[m].as_array().unwrap();
        assert_eq!(pairs.len(), 6, "{m}: {pairs:?}");
        assert!(
            pairs
                .iter()
                .all(|p| p["samples"].as_u64() > Some(0) && p["error"].is_null()),
            "{m}: {pairs:?}"
        );
    }
    for i in 0..3 {
        let up = l.rig.node(i).dir.join("var/lib/edgectl-agent/edgectl");
        assert!(!up.exists(), "node {i}: verify uploaded {}", up.display());
    }
}
