//! The topology parser and validator: any text gives a cluster or diagnostics, never a panic,
//! and every diagnostic renders with its source excerpt.
#![no_main]

use std::path::Path;

use edgectl_model::{LoadOptions, SourceFile, check_source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let src = SourceFile::new("fuzz.toml", text);
    // A base that does not exist, so a fuzzed relative `profile_dir` reads nothing from disk.
    match check_source(
        src,
        Path::new("/nonexistent/edgectl-fuzz"),
        &LoadOptions::default(),
    ) {
        Ok((cluster, _)) => assert!(!cluster.nodes.is_empty()),
        Err(d) => {
            assert!(!d.is_empty(), "an error with no diagnostic");
            let _ = d.render(false, 20);
        }
    }
});
