//! Users' WASI modules in their sandbox process, as the agent runs them: this test binary is
//! also the sandbox program (`--run-wasi`, what `edgectl agent --run-wasi` runs), so every run
//! below crosses a real process boundary, drops root where the tests run as root, and is
//! stopped by what stops it on a node. `harness = false`: `main` dispatches.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgectl_agent::proto::WasiOutcome;
use edgectl_agent::wasm::{self, MEMORY_LIMIT, NOBODY, Runner};

fn runner() -> Runner {
    Runner {
        program: std::env::current_exe().unwrap(),
        args: vec!["--run-wasi".into()],
    }
}

fn run(wat: &str, timeout: Duration) -> WasiOutcome {
    wasm::run_wasi(&runner(), "t", wat.as_bytes(), &[], timeout)
}

/// Sandbox processes of this test still running: (pid, /proc/PID/status).
fn sandboxes() -> Vec<(u32, String)> {
    let me = std::process::id().to_string();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .map(str::trim);
        if ppid == Some(me.as_str()) && String::from_utf8_lossy(&cmdline).contains("--run-wasi") {
            v.push((pid, status));
        }
    }
    v
}

fn field<'a>(status: &'a str, name: &str) -> Vec<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

/// Looks for /proc/1/environ, /proc/self/environ and /proc/kcore through every descriptor a
/// module might have been given as a directory (a preopened / or /proc), and prints whatever it
/// reads (exit 0: it got in). Exit 1: nothing could be opened. (Root itself may be refused
/// /proc/1/environ in a container; its own environ is there to read for any process that has
/// /proc, so the test fails wherever /proc is preopened.)
const ENVIRON_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "/proc/1/environ")
  (data (i32.const 120) "proc/1/environ")
  (data (i32.const 140) "1/environ")
  (data (i32.const 160) "self/environ")
  (data (i32.const 180) "proc/self/environ")
  (data (i32.const 200) "kcore")
  (func $try (param $fd i32) (param $path i32) (param $len i32)
    (if (i32.eqz (call $open (local.get $fd) (i32.const 0) (local.get $path) (local.get $len)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 8)))
      (then
        (i32.store (i32.const 16) (i32.const 1024))
        (i32.store (i32.const 20) (i32.const 4096))
        (drop (call $read (i32.load (i32.const 8)) (i32.const 16) (i32.const 1) (i32.const 24)))
        (i32.store (i32.const 20) (i32.load (i32.const 24)))
        (drop (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
        (call $exit (i32.const 0)))))
  (func (export "_start") (local $fd i32)
    (local.set $fd (i32.const 0))
    (block $done (loop $next
      (call $try (local.get $fd) (i32.const 100) (i32.const 15))
      (call $try (local.get $fd) (i32.const 120) (i32.const 14))
      (call $try (local.get $fd) (i32.const 140) (i32.const 9))
      (call $try (local.get $fd) (i32.const 160) (i32.const 12))
      (call $try (local.get $fd) (i32.const 180) (i32.const 17))
      (call $try (local.get $fd) (i32.const 200) (i32.const 5))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $fd) (i32.const 64)))))
    (call $exit (i32.const 1))))"#;

/// Sleeps an hour in `poll_oneoff` (a clock subscription): a host call, where epoch
/// interruption cannot reach it.
const POLL_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i64.store (i32.const 0) (i64.const 1))
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (i64.store (i32.const 32) (i64.const 0))
    (i32.store16 (i32.const 40) (i32.const 0))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"#;

/// Reads stdin and exits with the number of bytes read (WASI's errno + 1000 if the read fails).
const STDIN_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $e i32)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1024))
    (local.set $e (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (local.get $e) (then (call $exit (i32.add (local.get $e) (i32.const 1000)))))
    (call $exit (i32.load (i32.const 8)))))"#;

fn no_host_secrets() {
    let o = run(ENVIRON_WAT, Duration::from_secs(10));
    assert_eq!((o.exit_code, o.error.as_deref()), (1, None), "{o:?}");
    assert_eq!(o.stdout, "", "the module read an environment");
}

fn unprivileged_and_stopped_in_a_blocking_host_call() {
    let timeout = Duration::from_secs(3);
    let t0 = Instant::now();
    let run = std::thread::spawn(move || run(POLL_WAT, timeout));
    // While the module sleeps, its process is there to look at: once it has confined itself
    // (no new privileges is the last of that, after the identity change), not while it is
    // still reading its job as the agent's child.
    let mut seen = None;
    while seen.is_none() && t0.elapsed() < timeout {
        seen = sandboxes()
            .into_iter()
            .find(|(_, status)| field(status, "NoNewPrivs:") == ["1"]);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (pid, status) = seen.expect("no confined sandbox process seen while the module ran");
    // Where the agent is root (as these tests are on the rig), the module is not.
    let root = unsafe { libc::geteuid() } == 0;
    let want = if root {
        NOBODY.to_string()
    } else {
        unsafe { libc::geteuid() }.to_string()
    };
    for f in ["Uid:", "Gid:"] {
        let ids = field(&status, f);
        assert_eq!(ids.len(), 4, "pid {pid}: {status}");
        assert!(ids.iter().all(|id| *id == want), "pid {pid} {f} {ids:?}");
    }
    if root {
        assert_eq!(field(&status, "Groups:"), Vec::<&str>::new(), "{status}");
        assert_eq!(field(&status, "CapEff:"), ["0000000000000000"], "{status}");
    }

    let o = run.join().unwrap();
    let e = o.error.as_deref().unwrap_or("");
    assert!(
        e.contains("timed out after 3000 ms") && e.contains("host call"),
        "{o:?}"
    );
    assert!(
        t0.elapsed() < timeout + Duration::from_secs(3),
        "{:?}",
        t0.elapsed()
    );
    assert!(sandboxes().is_empty(), "a sandbox process outlived its run");
}

fn endless_loop_is_interrupted() {
    let t0 = Instant::now();
    let o = run(
        r#"(module (func (export "_start") (loop $l (br $l))))"#,
        Duration::from_millis(500),
    );
    assert_eq!(o.error.as_deref(), Some("timed out after 500 ms"), "{o:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

fn stdin_is_empty() {
    let o = run(STDIN_WAT, Duration::from_secs(10));
    // Not the sandbox process's own stdin (the job), and never a wait: end of file at once.
    assert_eq!((o.exit_code, o.error.as_deref()), (0, None), "{o:?}");
}

fn four_gib_is_refused() {
    let o = run(
        r#"(module (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const 65535)) (i32.const -1)) (then unreachable))))"#,
        Duration::from_secs(10),
    );
    let e = o.error.as_deref().unwrap_or("");
    let limit = format!("the limit is {} MiB", MEMORY_LIMIT >> 20);
    assert!(
        e.contains("memory limit exceeded") && e.contains("4096 MiB") && e.contains(&limit),
        "{o:?}"
    );
}

fn a_broken_sandbox_is_an_error() {
    let missing = Runner {
        program: PathBuf::from("/nonexistent/edgectl"),
        args: vec![],
    };
    let o = wasm::run_wasi(&missing, "t", b"(module)", &[], Duration::from_secs(1));
    assert!(
        o.error.as_deref().unwrap_or("").contains("cannot start"),
        "{o:?}"
    );
    let silent = Runner {
        program: PathBuf::from("true"),
        args: vec![],
    };
    let o = wasm::run_wasi(&silent, "t", b"(module)", &[], Duration::from_secs(1));
    assert!(
        o.error
            .as_deref()
            .unwrap_or("")
            .contains("without a result"),
        "{o:?}"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--run-wasi") {
        std::process::exit(wasm::runner_main());
    }
    let tests: &[(&str, fn())] = &[
        ("no_host_secrets", no_host_secrets),
        (
            "unprivileged_and_stopped_in_a_blocking_host_call",
            unprivileged_and_stopped_in_a_blocking_host_call,
        ),
        ("endless_loop_is_interrupted", endless_loop_is_interrupted),
        ("stdin_is_empty", stdin_is_empty),
        ("four_gib_is_refused", four_gib_is_refused),
        ("a_broken_sandbox_is_an_error", a_broken_sandbox_is_an_error),
    ];
    if args.iter().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    // Filters and `--skip` as libtest takes them (substrings of the name); other flags are
    // ignored.
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--skip" {
            skips.extend(it.next());
        } else if !a.starts_with('-') {
            filters.push(a);
        }
    }
    let mut ran = 0;
    for (name, f) in tests {
        if (!filters.is_empty() && !filters.iter().any(|p| name.contains(p.as_str())))
            || skips.iter().any(|p| name.contains(p.as_str()))
        {
            continue;
        }
        eprintln!("test {name} ...");
        f();
        eprintln!("test {name} ... ok");
        ran += 1;
    }
    eprintln!("test result: ok. {ran} passed");
}
