//! `cargo bench -p edgectl --bench verify`: wall time of a full `edgectl verify` (agents
//! uploaded and started, facts, checks, QUIC + Zenoh matrix, agents stopped) on 3 and 6 rig
//! nodes, with 3 ms of NFQUEUE delay on the last node, and the measured QUIC p50 of the delayed
//! pairs against the others (the difference should be the 3 ms injected). Aim: the matrix within
//! 5 s on 6 nodes. Needs root; otherwise it says why and exits.

use std::process::Command;
use std::time::Instant;

const DELAY_MS: f64 = 3.0;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn main() {
    if let Err(why) = edgectl_rig::available() {
        println!("verify bench skipped: {why}");
        return;
    }
    println!(
        "nodes  verify_s  matrix_s  first_run  quic_p50_delayed_ms  quic_p50_other_ms  extra_ms(injected {DELAY_MS})  zenoh_p50_delayed_ms  zenoh_p50_other_ms"
    );
    for n in [3usize, 6] {
        let rig = edgectl_rig::Rig::up(n).expect("rig");
        let dir = tempfile::tempdir().unwrap();
        let topo = dir.path().join("cluster.toml");
        std::fs::write(&topo, edgectl_rig::topology_toml(&rig, &["agent"], 30)).unwrap();
        let last = format!("n{n}");
        let imp = rig.impair(n - 1, DELAY_MS, 0.0, 120.0).expect("nfdelay");
        let run = || {
            let t = Instant::now();
            let o = Command::new(env!("CARGO_BIN_EXE_edgectl"))
                .arg("verify")
                .arg(&topo)
                .args(["--identity", rig.key.to_str().unwrap()])
                .args(["--json"])
                .output()
                .expect("edgectl runs");
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
                panic!("no JSON ({e}): {}", String::from_utf8_lossy(&o.stderr))
            });
            (t.elapsed().as_secs_f64(), v)
        };
        // The first run uploads the binary to every node; the second finds it there.
        let (first, _) = run();
        let (secs, v) = run();
        let split = |k: &str| {
            let s = v[k].as_array().cloned().unwrap_or_default();
            let (d, o): (Vec<_>, Vec<_>) = s
                .iter()
                .partition(|s| s["from"] == *last || s["to"] == *last);
            let p = |x: Vec<&serde_json::Value>| {
                median(
                    x.iter()
                        .map(|s| s["p50_ms"].as_f64().unwrap_or(0.0))
                        .collect(),
                )
            };
            (p(d), p(o))
        };
        let (qd, qo) = split("quic");
        let (zd, zo) = split("zenoh");
        println!(
            "{n:>5}  {secs:>8.2}  {:>8.2}  {first:>9.2}  {qd:>19.2}  {qo:>17.2}  {:>27.2}  {zd:>20.2}  {zo:>18.2}",
            v["timings"]["matrix_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            qd - qo
        );
        drop(imp);
    }
}
