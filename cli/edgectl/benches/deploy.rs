//! `cargo bench -p edgectl --bench deploy`: `apply` (first deploy) and no-op `plan` wall times on
//! 1, 2, 4 and 8 rig nodes in one run, with ratios to 1 node. Aim: a no-op plan on 8 nodes
//! within 2x of 1 node. Needs root (network namespaces); otherwise it says why and exits.

use std::process::Command;
use std::time::{Duration, Instant};

fn edgectl(topology: &std::path::Path, key: &std::path::Path, args: &[&str]) -> (Duration, i32) {
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(args)
        .arg(topology)
        .args(["--identity", key.to_str().unwrap()])
        .args([
            "--override-input",
            "nixpkgs",
            &format!("path:{}", edgectl_rig::fixture_nixpkgs().display()),
        ])
        .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG)
        .output()
        .expect("edgectl runs");
    (t.elapsed(), o.status.code().unwrap_or(-1))
}

fn main() {
    if let Err(why) = edgectl_rig::available() {
        println!("deploy bench skipped: {why}");
        return;
    }
    let mut rows = Vec::new();
    for n in [1usize, 2, 4, 8] {
        let rig = edgectl_rig::Rig::up(n).expect("rig");
        let dir = tempfile::tempdir().unwrap();
        let topo = dir.path().join("cluster.toml");
        std::fs::write(&topo, edgectl_rig::topology_toml(&rig, &["wasm"], 30)).unwrap();
        // The rig's sshd reads one key file per rig, not ~/.ssh: let the cluster key in, as a
        // node's own authorized_keys would, so apply fans out as on a real cluster.
        let state = dir.path().join(".edgectl");
        std::fs::create_dir_all(&state).unwrap();
        assert!(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(state.join("cluster_key"))
                .status()
                .unwrap()
                .success()
        );
        rig.authorize(&std::fs::read_to_string(state.join("cluster_key.pub")).unwrap())
            .unwrap();
        // Warm the evaluation cache the same way for every size.
        let _ = edgectl(&topo, &rig.key, &["apply", "--goal", "build"]);
        let (apply, rc) = edgectl(&topo, &rig.key, &["apply"]);
        assert_eq!(rc, 0, "apply on {n} nodes");
        let mut plan = Duration::MAX;
        for _ in 0..3 {
            let (d, rc) = edgectl(&topo, &rig.key, &["plan"]);
            assert_eq!(rc, 0, "no-op plan on {n} nodes");
            plan = plan.min(d);
        }
        rows.push((n, apply, plan));
    }
    let s = |d: Duration| d.as_secs_f64();
    println!(
        "{:>5}  {:>9}  {:>7}  {:>13}  {:>7}",
        "nodes", "apply (s)", "x 1", "no-op plan (s)", "x 1"
    );
    let (a1, p1) = (s(rows[0].1), s(rows[0].2));
    for (n, a, p) in &rows {
        println!(
            "{n:>5}  {:>9.2}  {:>7.2}  {:>13.2}  {:>7.2}",
            s(*a),
            s(*a) / a1,
            s(*p),
            s(*p) / p1
        );
    }
    let r8 = s(rows[3].2) / p1;
    println!(
        "aim: no-op plan on 8 nodes within 2x of 1 node: {:.2}x, {}",
        r8,
        if r8 <= 2.0 { "met" } else { "NOT met" }
    );
}
