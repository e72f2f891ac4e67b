//! `cargo bench -p edgectl-model`: how long `check` (parse + validate) takes on generated
//! 1,000- and 10,000-node topologies, and how it grows. Aims, in release mode: under 100 ms at
//! 1,000 nodes, and at most 11 times as long at 10,000 (10.0 is linear). The slack is for
//! memory, not work: the instructions executed grow linearly (callgrind), but a 10,000-node
//! document tree no longer fits in the CPU caches, so each node costs a little more to parse
//! and walk.
//!
//! Each size keeps its best run. The sizes take turns, with as many runs each, so that other
//! work on the machine slows both alike: best of 10 small runs against best of 3 large ones,
//! taken one size after the other, swung the ratio between 7 and 22 on a busy machine.

use std::path::Path;
use std::time::{Duration, Instant};

use edgectl_model::{LoadOptions, SourceFile, check_source, synth};

const ROUNDS: usize = 20;

fn time_check(n: usize, text: &str) -> Duration {
    let src = SourceFile::new(format!("synthetic-{n}.toml"), text);
    let t = Instant::now();
    let r = check_source(src, Path::new("."), &LoadOptions::default());
    let d = t.elapsed();
    assert!(r.is_ok(), "synthetic topology must be valid");
    d
}

fn main() {
    let (text1k, text10k) = (synth::cluster_toml(1_000), synth::cluster_toml(10_000));
    let (mut t1k, mut t10k) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        t1k = t1k.min(time_check(1_000, &text1k));
        t10k = t10k.min(time_check(10_000, &text10k));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ratio = ms(t10k) / ms(t1k);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!("check 1,000 nodes:  {:8.2} ms (best of {ROUNDS})", ms(t1k));
    println!("check 10,000 nodes: {:8.2} ms (best of {ROUNDS})", ms(t10k));
    println!("ratio 10k/1k:       {ratio:8.2} (10.0 = linear)");
    println!("aim 1k < 100 ms:    {}", met(ms(t1k) < 100.0));
    println!("aim 10k/1k <= 11x:  {}", met(ratio <= 11.0));
}
