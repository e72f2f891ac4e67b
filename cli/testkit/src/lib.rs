//! Every test that needs something outside the repository (root and namespaces for the rig, Nix,
//! `../shared`, a Python, ...) asks for it through [`require`], so a missing prerequisite is
//! never a silent pass:
//!
//! - When `EDGECTL_REQUIRE` names the prerequisite (a comma-separated list, or `all`), its
//!   absence fails the test. CI sets it to everything CI provides, so a broken CI machine
//!   cannot turn end-to-end tests into no-ops.
//! - Otherwise the test is skipped, and the skip is recorded: a line on stderr and, when
//!   `EDGECTL_SKIP_LOG` names a file, a line there (`scripts/test.sh` sets it and prints the
//!   skips with their reasons and counts them apart from the passes).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The prerequisite names tests use, so `EDGECTL_REQUIRE` has a fixed vocabulary.
pub const KNOWN: &[&str] = &[
    "rig",
    "nix",
    "shared",
    "python3",
    "genilib",
    "ray",
    "mkfifo",
    "loop",
    "tcsh",
    "sudo",
    "shellcheck",
    "chromium",
    "kvm",
    "qemu",
    "wasmtime-cli",
    "wasmedge-cli",
];

/// `Some(value)` when the prerequisite `what` is present; `None` (a recorded skip) when it is
/// absent and not required; a panic naming it when it is absent and `EDGECTL_REQUIRE` says it
/// must be here.
pub fn require<T>(what: &str, found: Result<T, String>) -> Option<T> {
    let why = match found {
        Ok(v) => return Some(v),
        Err(why) => why,
    };
    debug_assert!(KNOWN.contains(&what), "unknown prerequisite {what:?}");
    let list = std::env::var("EDGECTL_REQUIRE").unwrap_or_default();
    if required(&list, what) {
        panic!(
            "prerequisite `{what}` is missing: {why}\n(EDGECTL_REQUIRE={list} says this machine provides it)"
        );
    }
    let test = test_name();
    eprintln!("skipping {test}: {what}: {why}");
    if let Some(log) = std::env::var_os("EDGECTL_SKIP_LOG") {
        // One line per skip; O_APPEND keeps lines of parallel tests whole.
        let line = format!("{test}\t{what}\t{}\n", why.replace(['\n', '\t'], " "));
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
    None
}

/// Whether `what` is in the comma-separated `list` (or the list is `all`).
pub fn required(list: &str, what: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|w| w == what || w == "all")
}

/// `binary::test` of the running test: libtest names each test's thread after the test.
fn test_name() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // Test binaries are named `<target>-<16 hex digits>`.
    let bin = match exe.rsplit_once('-') {
        Some((b, h)) if h.len() == 16 && h.bytes().all(|c| c.is_ascii_hexdigit()) => b,
        _ => exe.as_str(),
    };
    let thread = std::thread::current();
    format!("{bin}::{}", thread.name().unwrap_or("?"))
}

/// A program on PATH (or in sbin), or why not.
pub fn tool(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} is not installed"))
}

/// Nix's CLI (Debian: nix-bin), for tests that evaluate or build.
pub fn nix() -> Option<PathBuf> {
    require(
        "nix",
        tool("nix-instantiate")
            .and_then(|_| tool("nix"))
            .map_err(|e| format!("{e} (Debian: apt-get install nix-bin; scripts/setup.sh does)")),
    )
}

/// Evaluates `expr` strictly with real Nix, with `lib` bound to the repository's
/// `modules/lib`, and returns Nix's JSON text; panics with Nix's error. Check [`nix`] first.
pub fn eval_modules_lib(expr: &str) -> String {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../modules/lib")
        .canonicalize()
        .expect("modules/lib");
    let full = format!("let lib = import {}; in {expr}", lib.display());
    let o = std::process::Command::new("nix-instantiate")
        .env(
            "NIX_CONFIG",
            "substituters =\nsandbox = false\nbuild-users-group =",
        )
        .args(["--eval", "--strict", "--json", "--expr", &full])
        .output()
        .expect("nix-instantiate runs");
    assert!(
        o.status.success(),
        "{expr}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `shared/` folder beside the repository checkout (docs, data, CloudLab fixtures).
pub fn shared(manifest_dir: &str, sub: &str) -> Option<PathBuf> {
    let root = Path::new(manifest_dir).join("../../../shared");
    let p = root.join(sub);
    let found = if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: shared/ is expected beside the repository checkout",
            p.display()
        ))
    };
    require("shared", found)
}

/// A finished command's exit status and both outputs, for an assertion's message.
pub fn explain(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_prerequisite_is_required_and_others_are_not() {
        assert!(required("rig,nix", "nix"));
        assert!(required(" rig , nix ", "rig"));
        assert!(required("all", "shared"));
        assert!(!required("rig,nix", "shared"));
        assert!(!required("", "rig"));
        assert!(!required("rigs", "rig"));
    }

    #[test]
    fn a_present_prerequisite_passes_its_value_through() {
        assert_eq!(require("nix", Ok::<_, String>(7)), Some(7));
    }
}
