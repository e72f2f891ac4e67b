//! Wasm inside the agent: a built-in module whose cold start is timed, and users' WASI modules,
//! each run in a sandbox of its own:
//!
//! - its own process, `edgectl agent --run-wasi` (the agent's binary, through /proc/self/exe),
//!   which reads the job on stdin and, where the agent runs as root, drops to nobody (uid and gid
//!   65534, no supplementary groups, no new privileges, not dumpable) before it even compiles
//!   the module;
//! - no host files or directories at all (no preopens: /proc and /sys hold secrets such as
//!   /proc/1/environ, /proc/kcore and /proc/kmsg, and no check needs them), no network, no
//!   environment, an empty stdin;
//! - at most [`MEMORY_LIMIT`] of linear memory (one memory, a handful of tables);
//! - the time limit, enforced twice: epoch interruption stops Wasm code at the deadline, and a
//!   module blocked in a host call (`poll_oneoff` with a long timeout) is ended with its process
//!   [`HOST_CALL_GRACE`] later; the agent kills a sandbox process that is still there
//!   [`PROCESS_GRACE`] after the limit (one stuck compiling, say).

use std::ffi::OsString;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::{Config, Engine, Linker, Module, ResourceLimiter, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::proto::{ColdStart, MAX_REQUEST, WasiOutcome};

/// Sums 1..=n in a loop: enough work that the first call is a real call, no imports.
const PROBE_WAT: &str = r#"(module
  (func (export "sum") (param $n i64) (result i64) (local $acc i64)
    (block $done (loop $next
      (br_if $done (i64.eqz (local.get $n)))
      (local.set $acc (i64.add (local.get $acc) (local.get $n)))
      (local.set $n (i64.sub (local.get $n) (i64.const 1)))
      (br $next)))
    (local.get $acc)))"#;

/// The most linear memory a user's module may have.
pub const MEMORY_LIMIT: usize = 256 << 20;
/// The identity a sandbox process takes where the agent runs as root: nobody and nogroup.
pub const NOBODY: u32 = 65534;
/// How long after its time limit a module blocked in a host call gets before its process ends.
pub const HOST_CALL_GRACE: Duration = Duration::from_millis(500);
/// How long after the time limit the agent waits for a sandbox process (which also has to
/// start and compile the module) before it kills it.
pub const PROCESS_GRACE: Duration = Duration::from_secs(60);
/// The longest time limit a module gets, whatever the request says.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Output kept of each of a module's stdout and stderr.
const OUTPUT_LIMIT: usize = 1 << 20;
/// Elements a table may grow to (a pointer each).
const TABLE_ELEMENTS: usize = 1 << 20;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn cold_start() -> Result<ColdStart, String> {
    let engine = Engine::default();
    let t0 = Instant::now();
    let module = Module::new(&engine, PROBE_WAT).map_err(|e| e.to_string())?;
    let compiled = t0.elapsed();
    let t1 = Instant::now();
    let mut store = Store::new(&engine, ());
    let inst = wasmtime::Instance::new(&mut store, &module, &[]).map_err(|e| e.to_string())?;
    let f = inst
        .get_typed_func::<i64, i64>(&mut store, "sum")
        .map_err(|e| e.to_string())?;
    let result = f.call(&mut store, 1000).map_err(|e| e.to_string())?;
    Ok(ColdStart {
        compile_ms: ms(compiled),
        cold_start_ms: ms(t1.elapsed()),
        result,
    })
}

/// The program (and its first arguments) that runs one WASI job in a sandbox process: it reads
/// the job on stdin and prints a [`WasiOutcome`] as JSON (see [`runner_main`]).
#[derive(Debug, Clone)]
pub struct Runner {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl Runner {
    /// This very executable as `edgectl agent --run-wasi`; /proc/self/exe still runs when
    /// `verify` has replaced the file on disk since the agent started.
    pub fn edgectl() -> Runner {
        Runner {
            program: PathBuf::from("/proc/self/exe"),
            args: vec!["agent".into(), "--run-wasi".into()],
        }
    }
}

/// What the agent sends a sandbox process: this as one JSON line, then the module's bytes.
#[derive(Serialize, Deserialize)]
struct Job {
    name: String,
    args: Vec<String>,
    timeout_ms: u64,
}

/// Runs a WASI preview-1 command (`_start`) with `args` in a sandbox process started through
/// `runner`, capturing its output; a module still running after `timeout` is stopped, and
/// every way a run can go wrong is an outcome with an `error`, never a hang or a panic.
pub fn run_wasi(
    runner: &Runner,
    name: &str,
    module: &[u8],
    args: &[String],
    timeout: Duration,
) -> WasiOutcome {
    let t0 = Instant::now();
    let timeout = timeout.min(MAX_TIMEOUT);
    let failed = |error: String| WasiOutcome {
        exit_code: -1,
        stdout: String::new(),
        stderr: String::new(),
        error: Some(error),
        elapsed_ms: ms(t0.elapsed()),
    };
    let spawned = Command::new(&runner.program)
        .args(&runner.args)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return failed(format!(
                "cannot start the sandbox process {}: {e}",
                runner.program.display()
            ));
        }
    };
    let job = Job {
        name: name.to_string(),
        args: args.to_vec(),
        timeout_ms: timeout.as_millis() as u64,
    };
    let mut input = serde_json::to_vec(&job).unwrap_or_default();
    input.push(b'\n');
    input.extend_from_slice(module);
    // Written and read by threads of their own, so that a process that stops reading or
    // writes a lot cannot block this one past the deadline.
    let writer = child.stdin.take().map(|mut w| {
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        })
    });
    let reader = |r: Option<Box<dyn Read + Send>>, cap: usize| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = (&mut r).take(cap as u64).read_to_end(&mut v);
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            }
            v
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
        8 * OUTPUT_LIMIT,
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
        64 << 10,
    );
    let deadline = t0 + timeout + PROCESS_GRACE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let Some(status) = status else {
        return failed(format!(
            "timed out after {} ms (the sandbox process was killed {} s later)",
            timeout.as_millis(),
            PROCESS_GRACE.as_secs()
        ));
    };
    match serde_json::from_slice::<WasiOutcome>(&stdout) {
        Ok(mut o) => {
            o.elapsed_ms = ms(t0.elapsed());
            o
        }
        Err(_) => {
            let why = String::from_utf8_lossy(&stderr);
            let why = why.trim();
            failed(format!(
                "the sandbox process ended ({status}) without a result{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            ))
        }
    }
}

/// `edgectl agent --run-wasi`: reads a job (a JSON line, then the module) on stdin, gives up
/// root and what else it can, runs the module and prints its [`WasiOutcome`] as JSON on
/// stdout. Call it before any other thread starts: the identity change is the process's.
pub fn runner_main() -> i32 {
    let t0 = Instant::now();
    let report = |o: &WasiOutcome| {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, o);
        let _ = out.flush();
    };
    let fail = |error: String| {
        report(&WasiOutcome {
            exit_code: -1,
            stdout: String::new(),
            stderr: String::new(),
            error: Some(error),
            elapsed_ms: ms(t0.elapsed()),
        });
        1
    };
    let mut input = std::io::stdin().lock();
    let mut line = Vec::new();
    if let Err(e) = (&mut input).take(1 << 20).read_until(b'\n', &mut line) {
        return fail(format!("reading the job: {e}"));
    }
    let job: Job = match serde_json::from_slice(&line) {
        Ok(j) => j,
        Err(e) => return fail(format!("bad job: {e}")),
    };
    let mut module = Vec::new();
    if let Err(e) = input.take(MAX_REQUEST as u64 + 1).read_to_end(&mut module) {
        return fail(format!("reading the module: {e}"));
    }
    if module.len() > MAX_REQUEST {
        return fail(format!("module larger than {} MiB", MAX_REQUEST >> 20));
    }
    // Fail closed: a module never runs with more than it should.
    if let Err(e) = confine() {
        return fail(format!("cannot confine the sandbox process: {e}"));
    }
    let o = execute(
        &job.name,
        &module,
        &job.args,
        Duration::from_millis(job.timeout_ms).min(MAX_TIMEOUT),
        Watchdog::EndProcess,
    );
    report(&o);
    0
}

/// Gives up root (for nobody, with no supplementary groups) where the process has it, and the
/// means of getting anything back: no new privileges, not dumpable (no ptrace, no core); and
/// ends with the agent (the parent-death signal, set after the identity
/// change, which clears it).
fn confine() -> Result<(), String> {
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain system calls on this process's own credentials and limits, made before
    // any other thread exists.
    unsafe {
        if libc::geteuid() == 0 {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(os("setgroups"));
            }
            if libc::setgid(NOBODY) != 0 {
                return Err(os("setgid"));
            }
            if libc::setuid(NOBODY) != 0 {
                return Err(os("setuid"));
            }
            if libc::setuid(0) == 0 || libc::geteuid() != NOBODY || libc::getegid() != NOBODY {
                return Err("root could be regained after setuid".into());
            }
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(os("PR_SET_NO_NEW_PRIVS"));
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(os("PR_SET_DUMPABLE"));
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(os("PR_SET_PDEATHSIG"));
        }
        // (No RLIMIT_FSIZE: wasmtime sizes memfd-backed memory images with ftruncate.)
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            return Err(os("RLIMIT_CORE"));
        }
    }
    Ok(())
}

/// What stops a module at its time limit besides epoch interruption, which only stops Wasm code.
#[derive(Clone, Copy, PartialEq)]
enum Watchdog {
    /// Nothing more (in-process tests, whose modules make no blocking host calls).
    #[cfg_attr(not(test), allow(dead_code))]
    EpochOnly,
    /// A module still in a host call [`HOST_CALL_GRACE`] after the limit: print the outcome
    /// and end the (sandbox) process.
    EndProcess,
}

struct Sandbox {
    wasi: WasiP1Ctx,
    cap: MemoryCap,
}

/// [`MEMORY_LIMIT`] for the one linear memory, bounded tables, one instance; remembers the
/// largest size it refused, for the outcome's reason.
struct MemoryCap {
    refused: Option<usize>,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MEMORY_LIMIT {
            self.refused = Some(self.refused.unwrap_or(0).max(desired));
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}

/// Compiles and runs the module in this process: no preopens, no environment, empty stdin,
/// stdout and stderr captured, [`MemoryCap`], epoch interruption at `timeout` (plus what
/// `watchdog` says).
fn execute(
    name: &str,
    module: &[u8],
    args: &[String],
    timeout: Duration,
    watchdog: Watchdog,
) -> WasiOutcome {
    let t0 = Instant::now();
    let out = MemoryOutputPipe::new(OUTPUT_LIMIT);
    let err = MemoryOutputPipe::new(OUTPUT_LIMIT);
    let text = |p: &MemoryOutputPipe| String::from_utf8_lossy(&p.contents()).into_owned();
    // Whoever sets this first reports: the run, or the watchdog of a run blocked in a host call.
    let reported = Arc::new(Mutex::new(false));
    let mut refused = None;
    let res = (|| -> wasmtime::Result<i32> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(true);
        let engine = Engine::new(&cfg)?;
        let module = Module::new(&engine, module)?;
        let mut linker: Linker<Sandbox> = Linker::new(&engine);
        p1::add_to_linker_sync(&mut linker, |s| &mut s.wasi)?;
        let argv: Vec<String> = std::iter::once(name.to_string())
            .chain(args.iter().cloned())
            .collect();
        let mut b = WasiCtxBuilder::new();
        b.args(&argv).stdout(out.clone()).stderr(err.clone());
        let mut store = Store::new(
            &engine,
            Sandbox {
                wasi: b.build_p1(),
                cap: MemoryCap { refused: None },
            },
        );
        store.limiter(|s| &mut s.cap);
        // From here on the clock runs: a module's start function counts too.
        store.set_epoch_deadline(1);
        let (eng, reported, out, err) =
            (engine.clone(), reported.clone(), out.clone(), err.clone());
        // A thread that outlives a quick module harmlessly: bumping an idle engine's epoch is
        // a no-op, and a finished run has already reported.
        std::thread::spawn(move || {
            std::thread::sleep(timeout);
            eng.increment_epoch();
            if watchdog != Watchdog::EndProcess {
                return;
            }
            std::thread::sleep(HOST_CALL_GRACE);
            let mut done = reported.lock().unwrap_or_else(|p| p.into_inner());
            if *done {
                return;
            }
            *done = true;
            let o = WasiOutcome {
                exit_code: -1,
                stdout: text(&out),
                stderr: text(&err),
                error: Some(format!(
                    "timed out after {} ms (blocked in a host call; its process was ended)",
                    timeout.as_millis()
                )),
                elapsed_ms: ms(t0.elapsed()),
            };
            let mut stdout = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut stdout, &o);
            let _ = stdout.flush();
            // SAFETY: ends the process at once, with the lock held so that the run, should it
            // finish now, never reports a second time.
            unsafe { libc::_exit(0) };
        });
        let r = (|| {
            let inst = linker.instantiate(&mut store, &module)?;
            let start = inst.get_typed_func::<(), ()>(&mut store, "_start")?;
            match start.call(&mut store, ()) {
                Ok(()) => Ok(0),
                Err(e) => match e.downcast_ref::<I32Exit>() {
                    Some(x) => Ok(x.0),
                    None => Err(e),
                },
            }
        })();
        refused = store.data().cap.refused;
        r
    })();
    // Claim the report; if the watchdog has, this blocks until it ends the process.
    *reported.lock().unwrap_or_else(|p| p.into_inner()) = true;
    let (exit_code, error) = match res {
        Ok(c) => (c, None),
        Err(e) => {
            let msg = if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
                format!("timed out after {} ms", timeout.as_millis())
            } else {
                format!("{e:#}")
            };
            (-1, Some(msg))
        }
    };
    // A module that failed after being refused memory failed for that: say so.
    let error = match refused {
        Some(asked) if exit_code != 0 || error.is_some() => Some(format!(
            "memory limit exceeded: the module asked for {} MiB of linear memory, the limit is {} MiB{}",
            asked.div_ceil(1 << 20),
            MEMORY_LIMIT >> 20,
            error.map(|e| format!(" ({e})")).unwrap_or_default()
        )),
        _ => error,
    };
    WasiOutcome {
        exit_code,
        stdout: text(&out),
        stderr: text(&err),
        error,
        elapsed_ms: ms(t0.elapsed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(wat: &str, timeout: Duration) -> WasiOutcome {
        execute("t", wat.as_bytes(), &[], timeout, Watchdog::EpochOnly)
    }

    /// Prints a greeting and exits with 3 through WASI's `proc_exit`.
    pub const HELLO_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasi\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 3))))"#;

    /// Creates `made-by-guest` (O_CREAT, write rights) in what would be the first preopen
    /// (fd 3) and exits with `path_open`'s errno: 0 when the file was created.
    const CREATE_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "made-by-guest")
  (func (export "_start")
    (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 13)
      (i32.const 1) (i64.const 64) (i64.const 64) (i32.const 0) (i32.const 96)))))"#;

    /// Prints the guest path of every preopen (fd 3, 4, ... until `fd_prestat_get` fails), one a
    /// line.
    const PREOPENS_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $fd i32) (local $len i32)
    (local.set $fd (i32.const 3))
    (block $done (loop $next
      (br_if $done (call $prestat (local.get $fd) (i32.const 32)))
      (local.set $len (i32.load (i32.const 36)))
      (drop (call $name (local.get $fd) (i32.const 256) (local.get $len)))
      (i32.store8 (i32.add (i32.const 256) (local.get $len)) (i32.const 10))
      (i32.store (i32.const 0) (i32.const 256))
      (i32.store (i32.const 4) (i32.add (local.get $len) (i32.const 1)))
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br $next)))))"#;

    /// Grows its memory by PAGES 64 KiB pages and traps when `memory.grow` says no.
    fn grow_wat(pages: u32) -> String {
        format!(
            r#"(module
  (memory (export "memory") 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const {pages})) (i32.const -1)) (then unreachable))))"#
        )
    }

    #[test]
    fn probe_runs_and_is_timed() {
        let c = cold_start().unwrap();
        // The timed part ran the module: its answer is sum(1..=1000).
        assert_eq!(c.result, 500500);
        // Both phases were measured (a clock that was never read, or read backwards, is not).
        for (what, v) in [("compile", c.compile_ms), ("cold start", c.cold_start_ms)] {
            assert!(v.is_finite() && v > 0.0, "{what}: {v} ms");
        }
    }

    #[test]
    fn wasi_module_output_and_exit_status() {
        let o = run(HELLO_WAT, Duration::from_secs(10));
        assert_eq!(o.error, None, "{o:?}");
        assert_eq!(o.stdout, "hello from wasi\n");
        assert_eq!(o.exit_code, 3, "{o:?}");
    }

    #[test]
    fn a_module_sees_no_host_directory() {
        let o = run(PREOPENS_WAT, Duration::from_secs(10));
        assert_eq!((o.exit_code, o.error.as_deref()), (0, None), "{o:?}");
        assert_eq!(o.stdout, "", "the module was given host directories");
        // Nothing to open a file in: fd 3 is no directory (errno 8, EBADF).
        let o = run(CREATE_WAT, Duration::from_secs(10));
        assert_eq!((o.exit_code, o.error.as_deref()), (8, None), "{o:?}");
    }

    #[test]
    fn memory_is_capped() {
        // The control: 200 MiB in all is within the limit, so the refusal below is the cap's.
        let o = run(&grow_wat(3199), Duration::from_secs(10));
        assert_eq!((o.exit_code, o.error.as_deref()), (0, None), "{o:?}");
        // 4 GiB in all is a valid wasm32 memory, which wasmtime would grant without the cap.
        let o = run(&grow_wat(65535), Duration::from_secs(10));
        let e = o.error.as_deref().unwrap_or("");
        assert!(
            e.contains("memory limit exceeded") && e.contains("4096 MiB") && e.contains("256 MiB"),
            "{o:?}"
        );
        // So is asking for it up front, as the memory's initial size.
        let o = run(
            r#"(module (memory 65536) (func (export "_start")))"#,
            Duration::from_secs(10),
        );
        let e = o.error.as_deref().unwrap_or("");
        assert!(e.contains("memory limit exceeded"), "{o:?}");
    }

    #[test]
    fn endless_module_is_stopped() {
        let t0 = Instant::now();
        let o = run(
            r#"(module (func (export "_start") (loop $l (br $l))))"#,
            Duration::from_millis(200),
        );
        assert_eq!(o.error.as_deref(), Some("timed out after 200 ms"), "{o:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        // A start function runs on the clock as well.
        let o = run(
            r#"(module (func $s (loop $l (br $l))) (start $s) (func (export "_start")))"#,
            Duration::from_millis(200),
        );
        assert_eq!(o.error.as_deref(), Some("timed out after 200 ms"), "{o:?}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let o = run("not wasm", Duration::from_secs(1));
        assert!(o.error.is_some());
    }
}
