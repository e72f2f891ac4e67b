//! `cargo bench -p edgectl --bench fanout`: a 64 MiB closure to 1, 4 and 8 rig nodes, with
//! fan-out and with `--fanout off`, while the controller's link is limited to 100 Mbit/s
//! (`tc tbf` on the rig bridge's controller side; node-to-node traffic is not limited). Prints
//! wall times, ratios and the bytes the controller sent (bridge interface counters).
//! Aims: with fan-out, 8 nodes take at most 1.5x the time of 1 node and the controller sends at
//! most 1.2x the closure; at 8 nodes fan-out is at least 4x faster than per-node copying.
//! `FANOUT_BENCH=tree` instead compares the tree (`--parallel 4`: at most 4 peers under each
//! node) with one seed serving every peer (`--parallel 16`) at 2, 4, 8 and 16 nodes
//! (`FANOUT_NODES=2,4,8` for others). `FANOUT_BENCH=auto` puts `--fanout auto` beside `on`
//! and `off` at 1, 4 and 8 nodes. `FANOUT_LINK=unthrottled` leaves the controller's link as
//! it is (the rig's bridge, where one machine's CPU is the limit).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 64;

/// (busy, total) jiffies of all CPUs, from /proc/stat: how loaded the machine was during a push
/// (the rig's nodes share its CPUs, so a CPU-bound push cannot go faster here).
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn run(n: usize, fanout: bool, fixture: &Path) -> (Duration, u64, f64) {
    run_with(n, if fanout { "on" } else { "off" }, 8, fixture)
}

fn run_with(n: usize, mode: &str, parallel: usize, fixture: &Path) -> (Duration, u64, f64) {
    let p = push(n, mode, parallel, fixture);
    (p.took, p.sent, p.busy)
}

/// One timed push to fresh nodes.
struct Push {
    took: Duration,
    /// Bytes the controller sent.
    sent: u64,
    /// The whole machine's CPU busy share.
    busy: f64,
    /// CPU time of what the first node (the seed) ran over SSH.
    seed_cpu: Option<Duration>,
}

fn push(n: usize, mode: &str, parallel: usize, fixture: &Path) -> Push {
    let rig = edgectl_rig::Rig::up(n).expect("rig");
    let dir = tempfile::tempdir().unwrap();
    let topo = dir.path().join("cluster.toml");
    std::fs::write(&topo, edgectl_rig::topology_toml(&rig, &["wasm"], 60)).unwrap();
    if std::env::var("FANOUT_LINK").as_deref() != Ok("unthrottled") {
        rig.throttle_controller("100mbit").expect("throttle");
    }
    let cmd = |goal: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_edgectl"));
        c.args(["apply", "--goal", goal, "--fanout", mode])
            .arg(&topo)
            .args(["--identity", rig.key.to_str().unwrap()])
            .args(["--parallel", &parallel.to_string()])
            .args([
                "--override-input",
                "nixpkgs",
                &format!("path:{}", fixture.display()),
            ])
            .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG);
        c
    };
    // Build first (not timed): the bench measures distribution, not evaluation.
    assert!(cmd("build").output().unwrap().status.success());
    let before = rig.controller_tx_bytes();
    let seed0 = rig.sshd_cpu(0);
    let cpu0 = cpu_jiffies();
    let t = Instant::now();
    let o = cmd("push").output().unwrap();
    let d = t.elapsed();
    let cpu1 = cpu_jiffies();
    let busy = (cpu1.0 - cpu0.0) as f64 / (cpu1.1 - cpu0.1).max(1) as f64;
    assert!(
        o.status.success(),
        "push to {n} nodes: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Push {
        took: d,
        sent: rig.controller_tx_bytes() - before,
        busy,
        seed_cpu: rig.sshd_cpu(0).zip(seed0).map(|(b, a)| b.saturating_sub(a)),
    }
}

fn main() {
    if let Err(why) = edgectl_rig::available() {
        println!("fanout bench skipped: {why}");
        return;
    }
    let fixture = tempfile::tempdir().unwrap();
    std::fs::copy(
        edgectl_rig::fixture_nixpkgs().join("flake.nix"),
        fixture.path().join("flake.nix"),
    )
    .unwrap();
    std::fs::write(fixture.path().join("payload-mib"), MIB.to_string()).unwrap();
    let closure = (MIB << 20) as f64;
    if std::env::var("FANOUT_BENCH").as_deref() == Ok("tree") {
        tree(fixture.path(), closure);
        return;
    }
    if std::env::var("FANOUT_BENCH").as_deref() == Ok("auto") {
        auto(fixture.path());
        return;
    }
    if std::env::var("FANOUT_BENCH").as_deref() == Ok("relay") {
        relay_cpu(fixture.path());
        return;
    }
    let mut rows = Vec::new();
    for n in [1usize, 4, 8] {
        let on = run(n, true, fixture.path());
        let off = run(n, false, fixture.path());
        rows.push((n, on, off));
    }
    let s = |d: Duration| d.as_secs_f64();
    println!("64 MiB closure, controller link 100 Mbit/s (tbf), nodes on one unshaped bridge\n");
    println!(
        "{:>5}  {:>11}  {:>9}  {:>12}  {:>9}  {:>11}  {:>12}  {:>8}",
        "nodes",
        "fan-out (s)",
        "x 1 node",
        "sent/closure",
        "CPU busy",
        "per-node (s)",
        "sent/closure",
        "speedup"
    );
    let t1 = s(rows[0].1.0);
    for (n, (ton, bon, busy), (toff, boff, _)) in &rows {
        println!(
            "{n:>5}  {:>11.2}  {:>9.2}  {:>12.2}  {:>8.0}%  {:>11.2}  {:>12.2}  {:>8.2}",
            s(*ton),
            s(*ton) / t1,
            *bon as f64 / closure,
            busy * 100.0,
            s(*toff),
            *boff as f64 / closure,
            s(*toff) / s(*ton)
        );
    }
    let (_, (t8, b8, _), (off8, _, _)) = rows[2];
    println!();
    println!(
        "aim 8 nodes <= 1.5x 1 node:        {:.2}x {}",
        s(t8) / t1,
        if s(t8) / t1 <= 1.5 { "met" } else { "NOT met" }
    );
    println!(
        "aim controller sends <= 1.2x:      {:.2}x {}",
        b8 as f64 / closure,
        if b8 as f64 / closure <= 1.2 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "aim fan-out >= 4x faster at 8:     {:.2}x {}",
        s(off8) / s(t8),
        if s(off8) / s(t8) >= 4.0 {
            "met"
        } else {
            "NOT met"
        }
    );
}

/// The tree against one seed serving every peer, at growing node counts.
fn tree(fixture: &Path, closure: f64) {
    let nodes: Vec<usize> = std::env::var("FANOUT_NODES")
        .unwrap_or_else(|_| "2,4,8,16".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    println!(
        "64 MiB closure, controller link 100 Mbit/s (tbf); tree: --parallel 4, star: --parallel 16\n"
    );
    println!(
        "{:>5}  {:>9}  {:>8}  {:>12}  {:>8}  {:>9}  {:>8}  {:>12}",
        "nodes",
        "tree (s)",
        "x first",
        "sent/closure",
        "CPU busy",
        "star (s)",
        "x first",
        "sent/closure"
    );
    let mut first: Option<(f64, f64)> = None;
    for n in nodes {
        let (tt, tb, tbusy) = run_with(n, "on", 4, fixture);
        let (st, sb, _) = run_with(n, "on", 16, fixture);
        let (tt, st) = (tt.as_secs_f64(), st.as_secs_f64());
        let (t0, s0) = *first.get_or_insert((tt, st));
        println!(
            "{n:>5}  {tt:>9.2}  {:>8.2}  {:>12.2}  {:>7.0}%  {st:>9.2}  {:>8.2}  {:>12.2}",
            tt / t0,
            tb as f64 / closure,
            tbusy * 100.0,
            st / s0,
            sb as f64 / closure
        );
    }
}

/// `--fanout auto` beside the two fixed modes: its time over the better one's.
fn auto(fixture: &Path) {
    let link = std::env::var("FANOUT_LINK").unwrap_or_else(|_| "100 Mbit/s (tbf)".into());
    println!("64 MiB closure, controller link: {link}\n");
    println!(
        "{:>5}  {:>8}  {:>8}  {:>8}  {:>18}",
        "nodes", "auto (s)", "on (s)", "off (s)", "auto / better"
    );
    for n in [1usize, 4, 8] {
        let a = run_with(n, "auto", 8, fixture).0.as_secs_f64();
        let on = run_with(n, "on", 8, fixture).0.as_secs_f64();
        let off = run_with(n, "off", 8, fixture).0.as_secs_f64();
        let ratio = a / on.min(off);
        println!(
            "{n:>5}  {a:>8.2}  {on:>8.2}  {off:>8.2}  {ratio:>8.2} {}",
            if ratio <= 1.1 {
                "(aim 1.1: met)"
            } else {
                "(aim 1.1: NOT met)"
            }
        );
    }
}

/// What relaying costs the seed: its CPU (everything it ran over SSH: its own import and the
/// relay) at 2, 4 and 8 nodes with fan-out, three runs each (the median); the growth per
/// added peer, over the MiB each peer received, is the relay's CPU per MiB relayed.
fn relay_cpu(fixture: &Path) {
    let link = std::env::var("FANOUT_LINK").unwrap_or_else(|_| "100 Mbit/s (tbf)".into());
    println!("64 MiB closure, --fanout on, controller link: {link}\n");
    println!(
        "{:>5}  {:>6}  {:>14}  {:>8}",
        "nodes", "peers", "seed CPU (s)", "push (s)"
    );
    let mut rows = Vec::new();
    for n in [2usize, 4, 8] {
        let mut runs: Vec<(f64, f64)> = (0..3)
            .map(|_| {
                let p = push(n, "on", 8, fixture);
                let cpu = p.seed_cpu.expect("the seed's sshd CPU").as_secs_f64();
                (cpu, p.took.as_secs_f64())
            })
            .collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (cpu, took) = runs[1];
        println!(
            "{n:>5}  {:>6}  {cpu:>6.2} [{:.2}-{:.2}]  {took:>8.2}",
            n - 1,
            runs[0].0,
            runs[2].0
        );
        rows.push((n - 1, cpu));
    }
    let (k0, c0) = rows[0];
    let (k1, c1) = rows[rows.len() - 1];
    let per_peer = (c1 - c0) / (k1 - k0) as f64;
    println!(
        "\nrelay CPU per peer: {per_peer:.3} s, per MiB relayed: {:.2} ms (the seed's own import and the upload: {:.2} s)",
        per_peer / MIB as f64 * 1e3,
        c0 - per_peer * k0 as f64
    );
}
