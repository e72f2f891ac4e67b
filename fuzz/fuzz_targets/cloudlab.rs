//! The CloudLab importer (manifest and request RSpec, or a portal JSON map of manifests): any
//! text gives a topology that checks, or diagnostics, never a panic.
#![no_main]

use std::path::Path;

use edgectl_cloudlab::{ImportOptions, import_source};
use edgectl_model::{LoadOptions, SourceFile, check_source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the options, so both the default and the `--user` paths are covered.
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let opts = ImportOptions {
        user: (first & 1 == 1).then(|| "alice".to_string()),
        name: (first & 2 == 2).then(|| "fuzzed".to_string()),
    };
    let src = SourceFile::new("fuzz.xml", text);
    match import_source(&src, &opts) {
        Ok(imported) => {
            // The importer promises output `check` accepts, apart from hardware it has no
            // profile for.
            if imported.unknown_profiles.is_empty() {
                let back = SourceFile::new("imported.toml", imported.toml.as_str());
                if let Err(d) =
                    check_source(back, Path::new("/nonexistent"), &LoadOptions::default())
                {
                    panic!(
                        "import gave a topology that does not check:\n{}\n{}",
                        imported.toml,
                        d.render(false, 5)
                    );
                }
            }
        }
        Err(d) => {
            assert!(!d.is_empty(), "an error with no diagnostic");
            let _ = d.render(false, 20);
        }
    }
});
