//! The node-side shell programs (src/sh/*.sh, loaded with `include_str!`): each parses with
//! `sh -n` (dash on Debian, the `sh` a node's `sh -c` runs), passes shellcheck as POSIX sh, and
//! is loaded by the crate (no orphan). Values reach them only as "$1".."$N", never in the text.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `src/sh/*.sh`, sorted.
fn scripts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(src().join("sh"))
        .expect("src/sh")
        .map(|e| e.expect("src/sh entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no scripts in src/sh");
    v
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn every_script_parses_with_sh_n() {
    for p in scripts() {
        let o = Command::new("sh")
            .arg("-n")
            .arg(&p)
            .output()
            .expect("sh runs");
        assert!(
            o.status.success(),
            "sh -n {}: {}",
            name(&p),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

fn shellcheck(what: &str, args: &[&str], stdin: Option<&str>) {
    let mut c = Command::new("shellcheck");
    c.args(["-s", "sh", "-f", "gcc"]).args(args);
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("shellcheck runs");
    if let Some(text) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "shellcheck {what}:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn every_script_passes_shellcheck() {
    let found = edgectl_testkit::tool("shellcheck")
        .map_err(|e| format!("{e} (Debian: apt-get install shellcheck; scripts/setup.sh does)"));
    if edgectl_testkit::require("shellcheck", found).is_none() {
        return;
    }
    for p in scripts() {
        shellcheck(&name(&p), &[p.to_str().unwrap()], None);
    }
    // The scripts assembled from pieces, as the node receives them: a function library and
    // the body that sets what it reads check each other here.
    shellcheck(
        "activate_script()",
        &["-"],
        Some(&edgectl_deploy::activate::activate_script()),
    );
    shellcheck(
        "resolve_script()",
        &["-"],
        Some(&edgectl_deploy::activate::resolve_script()),
    );
}

/// Every .rs file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The crate's Rust source, every file of it, end to end.
fn crate_text() -> String {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

#[test]
fn every_script_is_loaded_by_the_crate() {
    let text = crate_text();
    let orphans: Vec<String> = scripts()
        .iter()
        .map(|p| name(p))
        .filter(|n| {
            !text.contains(&format!("include_str!(\"sh/{n}\")"))
                && !text.contains(&format!("node_script!(\"sh/{n}\")"))
                && !text.contains(&format!("node_ssh_script!(\"sh/{n}\")"))
        })
        .collect();
    assert!(
        orphans.is_empty(),
        "src/sh scripts neither include_str! nor node_script! loads: {orphans:?}"
    );
}

/// A script that names the state folder through `EDGECTL_STATE` gets it only from
/// `node_script!`; loaded with `include_str!`, the variable would be empty and its paths would
/// land under `/run`, `/lock`. No script spells the folder itself.
#[test]
fn state_folder_comes_from_node_script() {
    let text = crate_text();
    for p in scripts() {
        let body = std::fs::read_to_string(&p).unwrap();
        let n = name(&p);
        assert!(
            !body.contains("/nix/var/edgectl"),
            "{n} spells the state folder; use \"$EDGECTL_STATE\""
        );
        if body.contains("EDGECTL_STATE") {
            assert!(
                !text.contains(&format!("include_str!(\"sh/{n}\")")),
                "{n} reads EDGECTL_STATE but is loaded with include_str!; use node_script!"
            );
        }
        // Likewise the cluster key's SSH options, which only `node_ssh_script!` sets.
        if body.contains("EDGECTL_SSH") {
            assert!(
                text.contains(&format!("node_ssh_script!(\"sh/{n}\")")),
                "{n} reads EDGECTL_SSH; load it with node_ssh_script!"
            );
        }
    }
}
