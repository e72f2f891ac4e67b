//! `cargo bench -p edgectl-model`: how long `check` (parse + validate) takes on generated
//! 1,000- and 10,000-node topologies, and how it grows. Aim: under 100 ms at 1,000 nodes in
//! release mode, growing linearly.

use std::path::Path;
use std::time::{Duration, Instant};

use edgectl_model::{LoadOptions, SourceFile, check_source, synth};

fn time_check(n: usize) -> Duration {
    let text = synth::cluster_toml(n);
    let mut best = Duration::MAX;
    let runs = if n >= 10_000 { 3 } else { 10 };
    for _ in 0..runs {
        let src = SourceFile::new(format!("synthetic-{n}.toml"), text.as_str());
        let t = Instant::now();
        let r = check_source(src, Path::new("."), &LoadOptions::default());
        let d = t.elapsed();
        assert!(r.is_ok(), "synthetic topology must be valid");
        best = best.min(d);
    }
    best
}

fn main() {
    let t1k = time_check(1_000);
    let t10k = time_check(10_000);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("check 1,000 nodes:  {:8.2} ms (best of 10)", ms(t1k));
    println!("check 10,000 nodes: {:8.2} ms (best of 3)", ms(t10k));
    println!(
        "ratio 10k/1k:       {:8.2} (10.0 = linear)",
        ms(t10k) / ms(t1k)
    );
    println!(
        "aim 1k < 100 ms:    {}",
        if ms(t1k) < 100.0 { "met" } else { "NOT met" }
    );
}
