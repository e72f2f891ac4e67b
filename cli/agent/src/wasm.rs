//! Wasm inside the agent: a built-in module whose cold start is timed, and users' WASI modules
//! run in a sandbox (no sockets, /proc and /sys read-only, nothing else of the host).

use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, Linker, Module, Store};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::proto::{ColdStart, WasiOutcome};

/// Sums 1..=n in a loop: enough work that the first call is a real call, no imports.
const PROBE_WAT: &str = r#"(module
  (func (export "sum") (param $n i64) (result i64) (local $acc i64)
    (block $done (loop $next
      (br_if $done (i64.eqz (local.get $n)))
      (local.set $acc (i64.add (local.get $acc) (local.get $n)))
      (local.set $n (i64.sub (local.get $n) (i64.const 1)))
      (br $next)))
    (local.get $acc)))"#;

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

/// The host directories a user's module sees, each at the same path in the guest, read-only.
const PREOPENS: [&str; 2] = ["/proc", "/sys"];

/// Runs a WASI preview-1 command (`_start`) with `args`, capturing its output. The module sees
/// only /proc and /sys, read-only, and gets no network; it is stopped after `timeout`.
pub fn run_wasi(name: &str, module: &[u8], args: &[String], timeout: Duration) -> WasiOutcome {
    let preopens: Vec<(&std::path::Path, &str, FsPerms)> = PREOPENS
        .iter()
        .map(|d| (std::path::Path::new(*d), *d, FsPerms::ReadOnly))
        .filter(|(host, _, _)| host.is_dir())
        .collect();
    run_wasi_with(name, module, args, timeout, &preopens)
}

/// [`run_wasi`] with the preopened directories given: `(host path, guest path, permissions)`,
/// the first at guest fd 3. Tests use it to preopen a directory that is writable on the host.
fn run_wasi_with(
    name: &str,
    module: &[u8],
    args: &[String],
    timeout: Duration,
    preopens: &[(&std::path::Path, &str, FsPerms)],
) -> WasiOutcome {
    let t0 = Instant::now();
    let out = MemoryOutputPipe::new(1 << 20);
    let err = MemoryOutputPipe::new(1 << 20);
    let res = (|| -> wasmtime::Result<i32> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(true);
        let engine = Engine::new(&cfg)?;
        let module = Module::new(&engine, module)?;
        let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
        p1::add_to_linker_sync(&mut linker, |t| t)?;
        let mut b = WasiCtxBuilder::new();
        let argv: Vec<String> = std::iter::once(name.to_string())
            .chain(args.iter().cloned())
            .collect();
        b.args(&argv).stdout(out.clone()).stderr(err.clone());
        for (host, guest, perms) in preopens {
            b.preopened_dir(host, guest, *perms)?;
        }
        let mut store = Store::new(&engine, b.build_p1());
        store.set_epoch_deadline(1);
        let eng = engine.clone();
        // The watchdog outlives a quick module harmlessly: bumping an idle engine's epoch is a no-op.
        std::thread::spawn(move || {
            std::thread::sleep(timeout);
            eng.increment_epoch();
        });
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
    let text = |p: &MemoryOutputPipe| String::from_utf8_lossy(&p.contents()).into_owned();
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

    /// Creates `made-by-guest` (O_CREAT, write rights) in the first preopen (fd 3) and exits
    /// with `path_open`'s errno: 0 when the file was created.
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
        let o = run_wasi("hello", HELLO_WAT.as_bytes(), &[], Duration::from_secs(10));
        assert_eq!(o.error, None, "{o:?}");
        assert_eq!(o.stdout, "hello from wasi\n");
        assert_eq!(o.exit_code, 3, "{o:?}");
    }

    #[test]
    fn a_module_sees_exactly_proc_and_sys() {
        let o = run_wasi(
            "preopens",
            PREOPENS_WAT.as_bytes(),
            &[],
            Duration::from_secs(10),
        );
        assert_eq!((o.exit_code, o.error.as_deref()), (0, None), "{o:?}");
        let want: Vec<&str> = PREOPENS
            .into_iter()
            .filter(|d| std::path::Path::new(d).is_dir())
            .collect();
        assert_eq!(o.stdout.lines().collect::<Vec<_>>(), want, "{o:?}");
    }

    #[test]
    fn a_read_only_preopen_refuses_writes_to_a_writable_host_directory() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("made-by-guest");
        let run = |perms| {
            run_wasi_with(
                "create",
                CREATE_WAT.as_bytes(),
                &[],
                Duration::from_secs(10),
                &[(dir.path(), "/data", perms)],
            )
        };
        // The control: the same module, given the directory writable, creates the file, so the
        // refusal below is the sandbox's doing and not the host's or the module's.
        let o = run(FsPerms::ReadWrite);
        assert_eq!((o.exit_code, o.error.as_deref()), (0, None), "{o:?}");
        assert!(
            made.is_file(),
            "the writable control did not create {made:?}"
        );
        std::fs::remove_file(&made).unwrap();

        let o = run(FsPerms::ReadOnly);
        assert_eq!(o.error, None, "{o:?}");
        assert_ne!(
            o.exit_code, 0,
            "path_open(O_CREAT) succeeded in a read-only preopen"
        );
        assert!(
            !made.exists(),
            "the guest created {made:?} through a read-only preopen"
        );
    }

    #[test]
    fn endless_module_is_stopped() {
        let o = run_wasi(
            "spin",
            br#"(module (func (export "_start") (loop $l (br $l))))"#,
            &[],
            Duration::from_millis(200),
        );
        assert!(
            o.error.as_deref().unwrap_or("").contains("timed out"),
            "{o:?}"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let o = run_wasi("bad", b"not wasm", &[], Duration::from_secs(1));
        assert!(o.error.is_some());
    }
}
