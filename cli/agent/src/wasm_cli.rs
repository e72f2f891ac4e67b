//! Cold starts of the node's own Wasm runtimes: a small WASI module ([`MODULE_WAT`], written
//! as a binary module into a fresh private directory) run by the `wasmtime` and `wasmedge`
//! programs that modules/wasm.nix installs with the `wasm` feature, `runs` times each, each run
//! a new process timed from its start to its exit. A run counts only when it printed the
//! module's line and exited 0. The programs are found as the facts find tools (PATH, then
//! NixOS's and Nix's profiles) and run as argv, never through a shell:
//! `wasmtime run MODULE` and `wasmedge MODULE`.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proto::percentile;

/// The runtimes measured, in this order.
pub const RUNTIMES: &[&str] = &["wasmtime", "wasmedge"];
/// Runs per runtime that `verify` asks for.
pub const DEFAULT_RUNS: u32 = 5;
/// The most runs per runtime a request gets, whatever it asks.
pub const MAX_RUNS: u32 = 50;
/// How long one run may take before it is killed (and fails).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Prints [`EXPECTED_STDOUT`] through WASI's `fd_write` and exits 0 through `proc_exit`.
pub const MODULE_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "edgectl cold start\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 19))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 0))))"#;
pub const EXPECTED_STDOUT: &str = "edgectl cold start\n";

/// What a node's runtimes did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WasmCli {
    /// The node runs NixOS (`ID=nixos` in /etc/os-release), where modules/wasm.nix installs
    /// both runtimes with the `wasm` feature: a missing one is a fault there, and elsewhere
    /// (a rig node, another distribution) only not installed.
    pub nixos: bool,
    pub runtimes: Vec<CliColdStart>,
}

/// One runtime's cold starts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CliColdStart {
    pub runtime: String,
    /// Where the program is; `None`: not installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The first line of its `--version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Runs that printed the module's line and exited 0; the times are theirs.
    pub runs: u32,
    pub p50_ms: f64,
    pub max_ms: f64,
    /// Why a run failed (measuring stops at the first failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The arguments that run `module` with `runtime`'s program.
pub fn run_args(runtime: &str, module: &Path) -> Vec<String> {
    let m = module.display().to_string();
    match runtime {
        "wasmtime" => vec!["run".into(), m],
        _ => vec![m],
    }
}

/// Each of [`RUNTIMES`] found on this node, `runs` times (1 to [`MAX_RUNS`]).
pub fn measure(runs: u32) -> WasmCli {
    let found: Vec<(&str, Option<PathBuf>)> = RUNTIMES
        .iter()
        .map(|r| (*r, crate::facts::which(r)))
        .collect();
    WasmCli {
        nixos: on_nixos(),
        runtimes: measure_programs(&found, runs),
    }
}

/// [`measure`] with the programs given (`None`: not installed).
pub fn measure_programs(programs: &[(&str, Option<PathBuf>)], runs: u32) -> Vec<CliColdStart> {
    let runs = runs.clamp(1, MAX_RUNS);
    let module = ProbeModule::write();
    programs
        .iter()
        .map(|(runtime, program)| {
            let mut c = CliColdStart {
                runtime: runtime.to_string(),
                ..Default::default()
            };
            let Some(program) = program else {
                return c;
            };
            c.path = Some(program.display().to_string());
            match &module {
                Ok(m) => measure_one(&mut c, program, m, runs),
                Err(e) => c.error = Some(e.clone()),
            }
            c
        })
        .collect()
}

fn measure_one(c: &mut CliColdStart, program: &Path, m: &ProbeModule, runs: u32) {
    let args = run_args(&c.runtime, &m.file);
    let mut times = Vec::new();
    for _ in 0..runs {
        match run(program, &args, &m.dir, RUN_TIMEOUT) {
            Ok(r) if r.status.success() && r.stdout == EXPECTED_STDOUT.as_bytes() => {
                times.push(r.ms)
            }
            Ok(r) => {
                c.error = Some(describe_failure(&c.runtime, &r));
                break;
            }
            Err(e) => {
                c.error = Some(e);
                break;
            }
        }
    }
    times.sort_by(f64::total_cmp);
    c.runs = times.len() as u32;
    c.p50_ms = percentile(&times, 50.0);
    c.max_ms = times.last().copied().unwrap_or(0.0);
    // After the timed runs, so the first of them is the program's first start here.
    if let Ok(r) = run(
        program,
        &["--version".to_string()],
        &m.dir,
        Duration::from_secs(10),
    ) && r.status.success()
    {
        let v = String::from_utf8_lossy(&r.stdout);
        c.version = v
            .lines()
            .next()
            .map(|l| l.trim().chars().take(80).collect())
            .filter(|l: &String| !l.is_empty());
    }
}

/// Why a run that ended does not count.
fn describe_failure(runtime: &str, r: &Ran) -> String {
    if r.killed {
        return format!(
            "`{runtime}` still ran after {} s and was killed",
            RUN_TIMEOUT.as_secs()
        );
    }
    let tail = |b: &[u8]| {
        let s = String::from_utf8_lossy(b);
        let s = s.trim();
        let start = s.char_indices().rev().nth(199).map_or(0, |(i, _)| i);
        s[start..].replace('\n', " | ")
    };
    if !r.status.success() {
        let err = tail(&r.stderr);
        return format!(
            "`{runtime}` failed ({}){}",
            r.status,
            if err.is_empty() {
                String::new()
            } else {
                format!(": {err}")
            }
        );
    }
    format!(
        "`{runtime}` exited 0 but printed {:?}, not the module's line {:?}",
        tail(&r.stdout),
        EXPECTED_STDOUT.trim()
    )
}

/// Whether `/etc/os-release` says NixOS.
fn on_nixos() -> bool {
    std::fs::read_to_string("/etc/os-release").is_ok_and(|t| {
        t.lines().any(|l| {
            l.trim()
                .strip_prefix("ID=")
                .is_some_and(|v| v.trim_matches(['"', '\'']) == "nixos")
        })
    })
}

/// The probe module as a binary file in a directory of its own (mode 0700), removed on drop.
struct ProbeModule {
    dir: PathBuf,
    file: PathBuf,
}

impl ProbeModule {
    fn write() -> Result<ProbeModule, String> {
        use std::os::unix::fs::DirBuilderExt;
        static N: AtomicU32 = AtomicU32::new(0);
        let bytes = wat::parse_str(MODULE_WAT).map_err(|e| format!("probe module: {e}"))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "edgectl-wasm-cli-{}-{nanos:x}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // `create`, not `create_all`: a name someone else made first is an error, not theirs.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let m = ProbeModule {
            file: dir.join("probe.wasm"),
            dir,
        };
        std::fs::write(&m.file, bytes).map_err(|e| format!("{}: {e}", m.file.display()))?;
        Ok(m)
    }
}

impl Drop for ProbeModule {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One run of a program: how long from its start to its exit, and what it did.
struct Ran {
    ms: f64,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// It ran past its time limit and was killed.
    killed: bool,
}

/// Runs `program` with `args` in `dir`, killed after `timeout` (see [`facts::run_bounded`],
/// whose clock stops at the program's exit).
fn run(program: &Path, args: &[String], dir: &Path, timeout: Duration) -> Result<Ran, String> {
    let r = crate::facts::run_bounded(program, args, Some(dir), timeout)?;
    Ok(Ran {
        ms: r.took.as_secs_f64() * 1000.0,
        status: r.output.status,
        stdout: r.output.stdout,
        stderr: r.output.stderr,
        killed: r.killed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn the_probe_is_a_wasi_command_that_prints_its_line() {
        let bytes = wat::parse_str(MODULE_WAT).unwrap();
        assert_eq!(&bytes[..4], b"\0asm");
        // Wasmtime's WASI runs it as a runtime's CLI would: the line, then exit 0.
        use wasmtime::{Engine, Linker, Module, Store};
        use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
        let engine = Engine::default();
        let module = Module::new(&engine, &bytes).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s| s).unwrap();
        let out = MemoryOutputPipe::new(1024);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stdout(out.clone())
            .build_p1();
        let mut store = Store::new(&engine, wasi);
        let inst = linker.instantiate(&mut store, &module).unwrap();
        let start = inst.get_typed_func::<(), ()>(&mut store, "_start").unwrap();
        let e = start.call(&mut store, ()).unwrap_err();
        let exit = e.downcast_ref::<wasmtime_wasi::I32Exit>().map(|x| x.0);
        assert_eq!(exit, Some(0), "{e:#}");
        assert_eq!(out.contents().as_ref(), EXPECTED_STDOUT.as_bytes());
    }

    #[test]
    fn runtimes_run_as_argv_and_only_a_clean_run_counts() {
        let d = tempfile::tempdir().unwrap();
        // A stand-in CLI that prints what the module prints when given a `.wasm` file that
        // exists, and its arguments otherwise: the real runtimes are tested on the rig.
        let good = script(
            d.path(),
            "good",
            r#"for a; do case $a in *.wasm) [ -f "$a" ] && printf 'edgectl cold start\n' && exit 0;; esac; done; echo "args: $*"; exit 3"#,
        );
        let silent = script(d.path(), "silent", "exit 0");
        let failing = script(d.path(), "failing", "echo broken >&2; exit 2");
        let r = measure_programs(
            &[
                ("wasmtime", Some(good.clone())),
                ("wasmedge", Some(good)),
                ("silent", Some(silent)),
                ("failing", Some(failing)),
                ("absent", None),
            ],
            3,
        );
        for c in &r[..2] {
            assert_eq!((c.runs, c.error.as_deref()), (3, None), "{c:?}");
            assert!(c.p50_ms > 0.0 && c.max_ms >= c.p50_ms, "{c:?}");
        }
        assert_eq!(r[2].runs, 0);
        assert!(
            r[2].error
                .as_deref()
                .unwrap()
                .contains("not the module's line"),
            "{:?}",
            r[2]
        );
        assert!(
            r[3].error.as_deref().unwrap().contains("broken"),
            "{:?}",
            r[3]
        );
        assert_eq!(
            (r[4].path.as_deref(), r[4].runs, r[4].error.as_deref()),
            (None, 0, None)
        );
    }

    #[test]
    fn wasmtime_is_told_to_run_and_wasmedge_is_given_the_module() {
        let m = Path::new("/tmp/x/probe.wasm");
        assert_eq!(run_args("wasmtime", m), ["run", "/tmp/x/probe.wasm"]);
        assert_eq!(run_args("wasmedge", m), ["/tmp/x/probe.wasm"]);
    }

    #[test]
    fn a_run_past_its_limit_is_killed() {
        let d = tempfile::tempdir().unwrap();
        let slow = script(d.path(), "slow", "exec sleep 30");
        let r = run(&slow, &[], d.path(), Duration::from_millis(300)).unwrap();
        assert!(r.killed && !r.status.success());
    }
}
