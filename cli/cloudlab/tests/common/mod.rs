#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgectl_cloudlab::{ImportOptions, Imported, import_source};
use edgectl_model::{
    Cluster, Diagnostics, Kind, LoadOptions, SourceFile, TopologyFile, check_source,
};

/// The shared CloudLab samples (a sibling of the repository checkout), or `None` with a reason.
pub fn fixtures() -> Option<PathBuf> {
    edgectl_testkit::shared(env!("CARGO_MANIFEST_DIR"), "fixtures/cloudlab")
}

pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// Bad RSpecs, each with its expected problem in a header comment (see tests/corpus.rs).
pub fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name)
}

pub fn source(path: &Path) -> Arc<SourceFile> {
    edgectl_model::load::read_source(path).unwrap_or_else(|d| panic!("{}", d.message))
}

pub fn import_path(path: &Path, user: Option<&str>) -> Result<Imported, Diagnostics> {
    import_source(
        &source(path),
        &ImportOptions {
            user: user.map(String::from),
            name: None,
        },
    )
}

pub fn import_ok(path: &Path, user: Option<&str>) -> Imported {
    import_path(path, user)
        .unwrap_or_else(|d| panic!("{} failed:\n{}", path.display(), d.render(false, 10)))
}

/// Checks the imported text like `edgectl check`. Types edgectl has no profile for are given
/// test-only stub profiles (clearly not hardware data); without them the only problems
/// allowed are exactly those unknown profiles.
pub fn check_imported(imp: &Imported) -> (Cluster, TopologyFile) {
    let src = SourceFile::new("imported.toml", imp.toml.clone());
    match check_source(src.clone(), Path::new("."), &LoadOptions::default()) {
        Ok(r) => {
            assert!(
                imp.unknown_profiles.is_empty(),
                "check passed although {:?} were reported unknown",
                imp.unknown_profiles
            );
            return r;
        }
        Err(d) => {
            assert!(
                !imp.unknown_profiles.is_empty(),
                "check failed:\n{}\n{}",
                d.render(false, 10),
                imp.toml
            );
            for x in d.iter() {
                assert_eq!(
                    x.kind,
                    Kind::UnknownProfile,
                    "unexpected problem:\n{}",
                    d.render(false, 10)
                );
                let v = x.value.clone().unwrap_or_default();
                assert!(
                    imp.unknown_profiles.iter().any(|u| v == format!("{u:?}")),
                    "{v} was not reported unknown"
                );
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    for ty in &imp.unknown_profiles {
        let stub = "description = \"TEST STUB, not hardware data\"\n[cpu]\nmodel = \"stub\"\nsockets = 1\ncores = 1\nthreads = 1\n[memory]\ngib = 1\n";
        std::fs::write(dir.path().join(format!("{ty}.toml")), stub).unwrap();
    }
    let opts = LoadOptions {
        profile_dirs: vec![dir.path().to_path_buf()],
    };
    check_source(src, Path::new("."), &opts).unwrap_or_else(|d| {
        panic!(
            "check failed with stub profiles:\n{}\n{}",
            d.render(false, 10),
            imp.toml
        )
    })
}
