//! `cargo bench -p edgectl --bench deploy`: `apply` (first deploy) and no-op `plan` wall times on
//! 1, 2, 4 and 8 rig nodes in one run, with ratios to 1 node, and how long an `apply` whose
//! activation fails on one of 2 nodes takes to report it. Aims: a no-op plan on 8 nodes within
//! 1.3x of 1 node (the performance issue's), with the controller's CPU and the nodes' sshd CPU
//! beside it; a failed activation reported well within the confirm timeout (the tests check
//! that it is detected from the node's status, not how fast). Needs root (network namespaces);
//! otherwise it says why and exits.

use std::process::Command;
use std::time::{Duration, Instant};

/// CPU seconds (user + system) that this process's waited-for children have used so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given; RUSAGE_CHILDREN is a valid target.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Runs edgectl; returns its wall time, exit code and the CPU it and its children (Nix) used,
/// which is the controller's share: the rig's sshd work is not in it.
fn edgectl(
    topology: &std::path::Path,
    key: &std::path::Path,
    args: &[&str],
) -> (Duration, i32, f64) {
    let cpu = children_cpu();
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
    (
        t.elapsed(),
        o.status.code().unwrap_or(-1),
        children_cpu() - cpu,
    )
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
        // Warm the evaluation cache the same way for every size.
        let _ = edgectl(&topo, &rig.key, &["apply", "--goal", "build"]);
        let (apply, rc, _) = edgectl(&topo, &rig.key, &["apply"]);
        assert_eq!(rc, 0, "apply on {n} nodes");
        let mut plan = (Duration::MAX, 0.0, 0.0);
        let sshd = || -> f64 {
            (0..n)
                .filter_map(|i| rig.sshd_cpu(i))
                .map(|d| d.as_secs_f64())
                .sum()
        };
        for _ in 0..3 {
            let before = sshd();
            let (d, rc, cpu) = edgectl(&topo, &rig.key, &["plan"]);
            assert_eq!(rc, 0, "no-op plan on {n} nodes");
            if d < plan.0 {
                plan = (d, cpu, sshd() - before);
            }
        }
        rows.push((n, apply, plan));
    }
    let s = |d: Duration| d.as_secs_f64();
    println!(
        "{:>5}  {:>9}  {:>7}  {:>13}  {:>7}  {:>15}  {:>7}  {:>15}",
        "nodes",
        "apply (s)",
        "x 1",
        "no-op plan (s)",
        "x 1",
        "plan CPU (s)",
        "x 1",
        "nodes' sshd (s)"
    );
    let (a1, p1, c1) = (s(rows[0].1), s(rows[0].2.0), rows[0].2.1);
    for (n, a, (p, c, sshd)) in &rows {
        println!(
            "{n:>5}  {:>9.2}  {:>7.2}  {:>13.2}  {:>7.2}  {:>15.3}  {:>7.2}  {sshd:>15.3}",
            s(*a),
            s(*a) / a1,
            s(*p),
            s(*p) / p1,
            c,
            c / c1
        );
    }
    let r8 = s(rows[3].2.0) / p1;
    println!(
        "aim: no-op plan on 8 nodes within 1.3x of 1 node: {:.2}x, {}",
        r8,
        if r8 <= 1.3 { "met" } else { "NOT met" }
    );
    println!(
        "the controller's own CPU for it (edgectl and Nix): {:.2}x; the rest of the wall time is \
         the nodes' sshd, which shares this machine's cores on the rig",
        rows[3].2.1 / c1
    );
    println!(
        "the nodes' sshd CPU for it (the sessions and what they ran): {:.3} s at 8 nodes, {:.3} s at 1",
        rows[3].2.2, rows[0].2.2
    );
    failed_activation();
}

/// A second apply whose activation fails on n2 (the fixture's `fail` behaviour): the time until
/// apply reports it, against the topology's confirm timeout.
fn failed_activation() {
    const CONFIRM_TIMEOUT_S: u64 = 30;
    let rig = edgectl_rig::Rig::up(2).expect("rig");
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    let write = |features: &[&str]| {
        std::fs::write(
            &topo,
            edgectl_rig::topology_toml(&rig, features, CONFIRM_TIMEOUT_S),
        )
        .unwrap()
    };
    write(&["wasm"]);
    let (_, rc, _) = edgectl(&topo, &rig.key, &["apply", "--fanout", "off"]);
    assert_eq!(rc, 0, "first apply");
    write(&["agent"]);
    // Build first (not timed): the row is about detecting the failure.
    let _ = edgectl(&topo, &rig.key, &["apply", "--goal", "build"]);
    let state = rig.node(1).nix_dir.join("var/edgectl-test");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("behaviour"), "fail").unwrap();
    let (d, rc, _) = edgectl(&topo, &rig.key, &["apply", "--fanout", "off"]);
    assert_eq!(rc, 3, "apply reports the failed node");
    println!(
        "failed activation on 1 of 2 nodes: apply reported it in {:.2} s (confirm timeout {CONFIRM_TIMEOUT_S} s): {}",
        d.as_secs_f64(),
        if d.as_secs() < CONFIRM_TIMEOUT_S / 2 {
            "well within"
        } else {
            "NOT well within"
        }
    );
}
