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

/// Runs a WASI preview-1 command (`_start`) with `args`, capturing its output. The module sees
/// only /proc and /sys, read-only, and gets no network; it is stopped after `timeout`.
pub fn run_wasi(name: &str, module: &[u8], args: &[String], timeout: Duration) -> WasiOutcome {
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
        for d in ["/proc", "/sys"] {
            if std::path::Path::new(d).is_dir() {
                b.preopened_dir(d, d, FsPerms::ReadOnly)?;
            }
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

    /// Prints its first argument, then tries to create a file under /proc/sys (must fail in the
    /// read-only view) and exits with 3 when that was refused.
    pub const HELLO_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasi\n")
  (data (i32.const 64) "kernel/x")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    ;; fd 4 is the second preopen (/sys); O_CREAT with write rights
    (if (i32.eqz (call $open (i32.const 4) (i32.const 0) (i32.const 64) (i32.const 8) (i32.const 1) (i64.const 64) (i64.const 64) (i32.const 0) (i32.const 96)))
      (then (call $exit (i32.const 0))))
    (call $exit (i32.const 3))))"#;

    #[test]
    fn probe_runs_and_is_timed() {
        let c = cold_start().unwrap();
        assert_eq!(c.result, 500500);
        assert!(c.cold_start_ms >= 0.0);
    }

    #[test]
    fn wasi_module_output_and_exit_status() {
        let o = run_wasi("hello", HELLO_WAT.as_bytes(), &[], Duration::from_secs(10));
        assert_eq!(o.error, None, "{o:?}");
        assert_eq!(o.stdout, "hello from wasi\n");
        assert_eq!(
            o.exit_code, 3,
            "creating a file in the read-only /sys view must fail"
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
