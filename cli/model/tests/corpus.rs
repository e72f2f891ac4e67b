//! Every file in `tests/corpus/` is an invalid topology. Its first line says which kind of
//! problem it has (`# expect: KIND`) and a `# <- KIND` comment marks the line where the problem
//! must be reported. Valid files (every example in the repository) must pass.

use std::path::{Path, PathBuf};

use edgectl_model::{Kind, LoadOptions, load};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

#[test]
fn every_invalid_topology_reports_its_kind_on_its_line() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 80,
        "the corpus must hold at least 80 files, has {}",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        // Lossy: the corpus holds files that are not UTF-8 on purpose, with ASCII headers.
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        let kind_name = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("{}: no `# expect:` header", f.display()));
        let kind = Kind::from_name(kind_name)
            .unwrap_or_else(|| panic!("{}: unknown kind {kind_name}", f.display()));
        let marker = format!("# <- {kind_name}");
        let line = text
            .lines()
            .position(|l| l.contains(&marker))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{}: no `{marker}` marker", f.display()));
        match load(f, &LoadOptions::default()) {
            Ok(_) => failures.push(format!(
                "{}: accepted, expected {kind_name} on line {line}",
                f.display()
            )),
            Err(diags) => {
                if !diags.iter().any(|d| d.kind == kind && d.line == line) {
                    let got: Vec<String> = diags
                        .iter()
                        .map(|d| format!("{}@{}", d.kind, d.line))
                        .collect();
                    failures.push(format!(
                        "{}: expected {kind_name}@{line}, got {}",
                        f.display(),
                        got.join(", ")
                    ));
                }
                for d in diags.iter() {
                    assert!(
                        !d.message.is_empty() && d.help.is_some(),
                        "{}: diagnostic without message or fix: {d:?}",
                        f.display()
                    );
                    assert!(
                        d.file.ends_with(".toml"),
                        "{}: diagnostic names no file",
                        f.display()
                    );
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn every_example_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for e in std::fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            if let Err(d) = load(&p, &LoadOptions::default()) {
                panic!("{} fails check:\n{}", p.display(), d.render(false, 20));
            }
            n += 1;
        }
    }
    assert!(n >= 2, "expected at least two examples, found {n}");
}

#[test]
fn all_problems_are_reported_at_once() {
    let f = corpus_dir().join("../multi-error.toml");
    let diags = load(&f, &LoadOptions::default()).unwrap_err();
    let kinds: Vec<Kind> = diags.iter().map(|d| d.kind).collect();
    for k in [
        Kind::UnknownKey,
        Kind::InvalidHostname,
        Kind::InvalidMac,
        Kind::UnknownProfile,
        Kind::InvalidTarget,
        Kind::DuplicateHost,
    ] {
        assert!(kinds.contains(&k), "missing {k} among {kinds:?}");
    }
    assert!(diags.len() >= 6);
    let unknown = diags
        .iter()
        .find(|d| d.kind == Kind::UnknownKey && d.field.as_deref() == Some("node[0].lan[0].adress"))
        .expect("lan key typo");
    assert!(
        unknown.help.as_deref().unwrap().contains("`address`"),
        "did-you-mean: {:?}",
        unknown.help
    );
}
