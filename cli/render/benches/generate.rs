//! `cargo bench -p edgectl-render`: time to render the flake for 100 and 1,000 nodes (parse,
//! validate excluded). Aim: 1,000 nodes under 1 s in release, growing linearly.

use std::path::Path;
use std::time::{Duration, Instant};

use edgectl_model::{LoadOptions, SourceFile, check_source, synth};

fn time(n: usize) -> Duration {
    let src = SourceFile::new("synthetic.toml", synth::cluster_toml(n));
    let (cluster, _) = check_source(src, Path::new("."), &LoadOptions::default()).expect("valid");
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let files = edgectl_render::render(&cluster).expect("renders");
        best = best.min(t.elapsed());
        assert!(files.len() > n);
    }
    best
}

fn main() {
    let a = time(100);
    let b = time(1_000);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("generate 100 nodes:   {:9.2} ms (best of 3)", ms(a));
    println!("generate 1,000 nodes: {:9.2} ms (best of 3)", ms(b));
    println!(
        "ratio 1000/100:       {:9.2} (10.0 = linear)",
        ms(b) / ms(a)
    );
    println!(
        "aim 1k < 1 s:         {}",
        if ms(b) < 1000.0 { "met" } else { "NOT met" }
    );
}
