//! The node's own Wasm runtimes: the agent runs a small WASI module with the `wasmtime` and
//! `wasmedge` programs that modules/wasm.nix installs (see the agent's `wasm_cli`), a few times
//! each, and every runtime's cold start (process start to exit; p50 judged, max shown) is a
//! check against `wasm_cold_start_ms`, with the embedded measurement beside it as a baseline.
//! A runtime that is missing fails on NixOS, where the module installs it with the `wasm`
//! feature, and is skipped with the reason elsewhere (a test rig, another distribution).

use edgectl_agent::client;
use edgectl_agent::proto::{ColdStart, Request, Response};
use edgectl_agent::wasm_cli::{
    CliColdStart, DEFAULT_RUNS, MAX_RUNS, RUN_TIMEOUT, RUNTIMES, WasmCli,
};
use edgectl_model::Node;
use quinn::Connection;

use crate::checks::{Check, Verdict};

/// The check's name for `runtime`.
pub fn check_name(runtime: &str) -> String {
    format!("wasm cold start ({runtime} CLI)")
}

/// Asks the agent on `conn` to run the module with its runtimes.
pub async fn ask(conn: &Connection) -> Result<WasmCli, String> {
    // Every run of both runtimes may take its whole limit, then `--version`.
    let wait = RUN_TIMEOUT * (2 * MAX_RUNS.min(DEFAULT_RUNS) + 2);
    let req = Request::WasmCliColdStart { runs: DEFAULT_RUNS };
    match client::request(conn, &req, wait).await? {
        Response::WasmCli(w) => Ok(w),
        Response::Error { message } => Err(message),
        o => Err(format!("unexpected answer {o:?}")),
    }
}

/// One check per runtime of node `n`, from what its agent answered.
pub fn checks(
    n: &Node,
    answer: Result<&WasmCli, &str>,
    embedded: Option<&ColdStart>,
    target_ms: Option<f64>,
) -> Vec<Check> {
    let expected = match target_ms {
        Some(t) => format!("p50 <= {t} ms"),
        None => "runs (no wasm_cold_start_ms target)".to_string(),
    };
    let base = embedded
        .map(|c| format!("; embedded wasmtime {:.2} ms", c.cold_start_ms))
        .unwrap_or_default();
    RUNTIMES
        .iter()
        .map(|rt| {
            let mut c = Check {
                node: n.name.clone(),
                category: "runtime".into(),
                name: check_name(rt),
                expected: expected.clone(),
                actual: String::new(),
                verdict: Verdict::Fail,
                reason: None,
            };
            let w = match answer {
                Ok(w) => w,
                Err(e) => {
                    c.actual = e.to_string();
                    return c;
                }
            };
            let Some(r) = w.runtimes.iter().find(|r| r.runtime == *rt) else {
                c.actual = format!("the agent did not measure {rt}");
                return c;
            };
            judge(c, r, w.nixos, &base, target_ms)
        })
        .collect()
}

fn judge(mut c: Check, r: &CliColdStart, nixos: bool, base: &str, target_ms: Option<f64>) -> Check {
    let rt = r.runtime.as_str();
    if r.path.is_none() {
        if nixos {
            c.actual = format!("{rt} not found on PATH or in the system profile");
            c.reason = Some(format!(
                "modules/wasm.nix installs {rt} with the wasm feature: apply the configuration"
            ));
        } else {
            c.actual = "-".into();
            c.verdict = Verdict::Skip;
            c.reason = Some(format!(
                "{rt} is not installed on {}, which is not NixOS (modules/wasm.nix installs it there)",
                c.node
            ));
        }
        return c;
    }
    let version = r
        .version
        .as_deref()
        .map(|v| format!(" ({v})"))
        .unwrap_or_default();
    if let Some(e) = &r.error {
        c.actual = format!("{e}{version}");
        return c;
    }
    c.actual = format!(
        "p50 {:.1} ms, max {:.1} ms over {} runs{version}{base}",
        r.p50_ms, r.max_ms, r.runs
    );
    let ok = r.runs > 0 && target_ms.is_none_or(|t| r.p50_ms <= t);
    c.verdict = if ok { Verdict::Pass } else { Verdict::Fail };
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn node() -> Node {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge-lab.toml");
        edgectl_model::load(&p, &Default::default())
            .expect("the example loads")
            .cluster
            .nodes
            .remove(0)
    }

    fn ran(rt: &str, p50: f64) -> CliColdStart {
        CliColdStart {
            runtime: rt.into(),
            path: Some(format!("/run/current-system/sw/bin/{rt}")),
            version: Some(format!("{rt} 1.0")),
            runs: 5,
            p50_ms: p50,
            max_ms: p50 * 2.0,
            error: None,
        }
    }

    fn absent(rt: &str) -> CliColdStart {
        CliColdStart {
            runtime: rt.into(),
            ..Default::default()
        }
    }

    fn verdicts(cs: &[Check]) -> Vec<(&str, Verdict)> {
        cs.iter().map(|c| (c.name.as_str(), c.verdict)).collect()
    }

    #[test]
    fn each_runtime_is_judged_on_its_p50_with_the_embedded_baseline() {
        let n = node();
        let w = WasmCli {
            nixos: true,
            runtimes: vec![ran("wasmtime", 12.0), ran("wasmedge", 31.0)],
        };
        let base = ColdStart {
            compile_ms: 3.0,
            cold_start_ms: 0.25,
            result: 500500,
        };
        let cs = checks(&n, Ok(&w), Some(&base), Some(20.0));
        assert_eq!(
            verdicts(&cs),
            [
                ("wasm cold start (wasmtime CLI)", Verdict::Pass),
                ("wasm cold start (wasmedge CLI)", Verdict::Fail)
            ]
        );
        assert_eq!(cs[0].expected, "p50 <= 20 ms");
        assert_eq!(
            cs[0].actual,
            "p50 12.0 ms, max 24.0 ms over 5 runs (wasmtime 1.0); embedded wasmtime 0.25 ms"
        );
        // Without a target, a clean run passes and says there was none.
        let cs = checks(&n, Ok(&w), None, None);
        assert!(cs.iter().all(|c| c.verdict == Verdict::Pass));
        assert_eq!(cs[1].expected, "runs (no wasm_cold_start_ms target)");
    }

    #[test]
    fn a_missing_runtime_fails_on_nixos_and_is_skipped_elsewhere_never_passed() {
        let n = node();
        let mut w = WasmCli {
            nixos: true,
            runtimes: vec![ran("wasmtime", 1.0), absent("wasmedge")],
        };
        let cs = checks(&n, Ok(&w), None, Some(20.0));
        assert_eq!(cs[1].verdict, Verdict::Fail);
        assert!(cs[1].actual.contains("wasmedge not found"), "{:?}", cs[1]);
        assert!(
            cs[1]
                .reason
                .as_deref()
                .unwrap()
                .contains("modules/wasm.nix")
        );
        w.nixos = false;
        let cs = checks(&n, Ok(&w), None, Some(20.0));
        assert_eq!(cs[1].verdict, Verdict::Skip);
        let why = cs[1].reason.as_deref().unwrap();
        assert!(why.contains("wasmedge is not installed") && why.contains("not NixOS"));
    }

    #[test]
    fn a_failed_run_or_request_fails_every_runtime_it_concerns() {
        let n = node();
        let mut broken = ran("wasmtime", 1.0);
        broken.runs = 0;
        broken.error = Some("`wasmtime` failed (exit status: 1): bad magic".into());
        let w = WasmCli {
            nixos: false,
            runtimes: vec![broken],
        };
        let cs = checks(&n, Ok(&w), None, None);
        assert_eq!(
            verdicts(&cs),
            [
                ("wasm cold start (wasmtime CLI)", Verdict::Fail),
                ("wasm cold start (wasmedge CLI)", Verdict::Fail)
            ]
        );
        assert!(cs[0].actual.contains("bad magic"), "{:?}", cs[0]);
        assert!(cs[1].actual.contains("did not measure"), "{:?}", cs[1]);
        let cs = checks(&n, Err("timed out"), None, None);
        assert!(
            cs.iter()
                .all(|c| c.verdict == Verdict::Fail && c.actual == "timed out")
        );
    }
}
