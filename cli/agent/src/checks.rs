//! What `GET /checks` answers over HTTP/3 (see [`crate::http3`]): the checks a node can make of
//! itself. `edgectl verify` judges a node's facts against its profile and the topology, which
//! an agent does not have; these checks need neither, so they say whether something works, not
//! whether it is what the topology asks for. In this order:
//!
//! - `facts`: /proc names a CPU (threads > 0) and memory (MemTotal > 0);
//! - `gpu`: skip without `nvidia-smi` on PATH; pass when it lists GPUs; fail when it fails,
//!   hangs past [`facts::PROBE_TIMEOUT`] or lists none;
//! - `kvm`: skip without `/dev/kvm`; pass when the agent can open it read-write; fail when not;
//! - `unit NAME` for each of [`facts::UNITS`]: pass when `systemctl is-active` says active;
//!   fail when it says failed, or did not answer in time; skip otherwise (inactive: the unit
//!   is not meant for this node, as far as the agent can tell; unknown: no systemd);
//! - `wasm cold start`: the agent's built-in module (the one `verify` times) compiles and
//!   runs in wasmtime and returns the right sum; the time is in `detail`, not judged;
//! - `ray status`: `ray status` (default address) succeeds; skip without `ray` on PATH, or when
//!   systemd says neither ray-head nor ray-worker is active (a node that runs no Ray).

use serde::{Deserialize, Serialize};

use crate::facts::{self, Facts};
use crate::proto::{ColdStart, RayFacts};
use crate::{ray, wasm};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalCheck {
    pub name: String,
    pub verdict: Verdict,
    /// What was found on a pass; why, on a fail or a skip.
    pub detail: String,
}

/// The body of `GET /checks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalChecks {
    pub hostname: String,
    /// No check failed (skips do not count).
    pub ok: bool,
    pub checks: Vec<LocalCheck>,
}

/// `sum(1000)` of the built-in module.
const COLD_START_SUM: i64 = 500_500;

fn check(name: &str, verdict: Verdict, detail: impl Into<String>) -> LocalCheck {
    LocalCheck {
        name: name.to_string(),
        verdict,
        detail: detail.into(),
    }
}

/// Whether `ray status` is worth running here: systemd knows both Ray units and neither is
/// active means a node without Ray (where it would only fail, after up to a minute).
pub fn ray_expected(f: &Facts) -> bool {
    let state = |u: &str| f.units.get(u).map(String::as_str);
    let known_inactive =
        |u| state(u).is_some_and(|s| s != "active" && s != "unknown" && s != "timed out");
    !(known_inactive("ray-head") && known_inactive("ray-worker"))
}

/// The checks from facts, the built-in module's cold start and `ray status` (`None`: not run,
/// for the reason [`judge`] then gives).
pub fn judge(f: &Facts, cold: Result<&ColdStart, &str>, ray: Option<&RayFacts>) -> Vec<LocalCheck> {
    use Verdict::*;
    let mut v = Vec::new();
    v.push(if f.cpu.threads > 0 && f.memory_bytes > 0 {
        check(
            "facts",
            Pass,
            format!(
                "{} threads, {:.1} GiB",
                f.cpu.threads,
                f.memory_bytes as f64 / f64::from(1u32 << 30)
            ),
        )
    } else {
        check(
            "facts",
            Fail,
            "/proc/cpuinfo or /proc/meminfo named no CPU or memory",
        )
    });
    v.push(if !f.tools.contains_key("nvidia-smi") {
        check("gpu", Skip, "nvidia-smi is not on PATH")
    } else if let Some(note) = &f.gpu_note {
        check("gpu", Fail, note.clone())
    } else if f.gpus.is_empty() {
        check("gpu", Fail, "nvidia-smi lists no GPU")
    } else {
        let models: Vec<&str> = f.gpus.iter().map(|g| g.model.as_str()).collect();
        check("gpu", Pass, models.join(", "))
    });
    v.push(match (f.kvm_present, f.kvm_usable) {
        (false, _) => check("kvm", Skip, "no /dev/kvm"),
        (true, true) => check("kvm", Pass, "/dev/kvm opens read-write"),
        (true, false) => check(
            "kvm",
            Fail,
            "/dev/kvm is there but the agent cannot open it read-write",
        ),
    });
    for (unit, state) in &f.units {
        let name = format!("unit {unit}");
        v.push(match state.as_str() {
            "active" => check(&name, Pass, "active"),
            "failed" => check(&name, Fail, "failed"),
            "timed out" => check(&name, Fail, "systemctl is-active did not answer in time"),
            "unknown" => check(&name, Skip, "unknown (no systemd)"),
            other => check(&name, Skip, format!("{other} (not started on this node)")),
        });
    }
    v.push(match cold {
        Ok(c) if c.result == COLD_START_SUM => check(
            "wasm cold start",
            Pass,
            format!("{:.2} ms (compile {:.1} ms)", c.cold_start_ms, c.compile_ms),
        ),
        Ok(c) => check(
            "wasm cold start",
            Fail,
            format!(
                "the built-in module returned {}, not {COLD_START_SUM}",
                c.result
            ),
        ),
        Err(e) => check("wasm cold start", Fail, e),
    });
    v.push(match ray {
        _ if !f.tools.contains_key("ray") => check("ray status", Skip, "ray is not on PATH"),
        None => check(
            "ray status",
            Skip,
            "neither ray-head nor ray-worker is active",
        ),
        Some(r) if !r.present => check("ray status", Skip, r.output.clone()),
        Some(r) if r.ok => check(
            "ray status",
            Pass,
            format!("{} nodes alive, {} GPUs", r.alive_nodes, r.gpus),
        ),
        Some(r) => check(
            "ray status",
            Fail,
            r.output
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("failed")
                .trim(),
        ),
    });
    v
}

/// Gathers facts and runs the checks: blocking (probes, wasmtime, `ray status`), a few hundred
/// milliseconds on a node without Ray.
pub fn run() -> LocalChecks {
    let f = facts::gather();
    let cold = wasm::cold_start();
    let ray = (f.tools.contains_key("ray") && ray_expected(&f)).then(|| ray::status(None));
    let checks = judge(&f, cold.as_ref().map_err(String::as_str), ray.as_ref());
    LocalChecks {
        hostname: f.hostname,
        ok: checks.iter().all(|c| c.verdict != Verdict::Fail),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::GpuFact;

    fn verdicts(v: &[LocalCheck]) -> Vec<(&str, Verdict)> {
        v.iter().map(|c| (c.name.as_str(), c.verdict)).collect()
    }

    #[test]
    fn a_node_judged_without_its_topology() {
        let mut f = Facts::default();
        f.cpu.threads = 8;
        f.memory_bytes = 16 << 30;
        f.units = [
            ("edgectl-agent", "active"),
            ("ray-head", "inactive"),
            ("ray-worker", "failed"),
            ("zenohd", "unknown"),
        ]
        .iter()
        .map(|(u, s)| (u.to_string(), s.to_string()))
        .collect();
        let cold = ColdStart {
            compile_ms: 3.0,
            cold_start_ms: 0.2,
            result: COLD_START_SUM,
        };
        let v = judge(&f, Ok(&cold), None);
        assert_eq!(
            verdicts(&v),
            vec![
                ("facts", Verdict::Pass),
                ("gpu", Verdict::Skip),
                ("kvm", Verdict::Skip),
                ("unit edgectl-agent", Verdict::Pass),
                ("unit ray-head", Verdict::Skip),
                ("unit ray-worker", Verdict::Fail),
                ("unit zenohd", Verdict::Skip),
                ("wasm cold start", Verdict::Pass),
                ("ray status", Verdict::Skip),
            ]
        );
        assert_eq!(v[0].detail, "8 threads, 16.0 GiB");

        // nvidia-smi there: its failure fails; its GPUs pass. KVM that cannot be opened fails.
        f.tools
            .insert("nvidia-smi".into(), "/bin/nvidia-smi".into());
        f.gpu_note = Some("nvidia-smi did not answer within 15 s".into());
        f.kvm_present = true;
        let v = judge(&f, Err("no wasmtime"), None);
        assert_eq!(v[1].verdict, Verdict::Fail);
        assert!(v[1].detail.contains("did not answer"));
        assert_eq!(v[2].verdict, Verdict::Fail);
        assert_eq!(
            (v[7].verdict, v[7].detail.as_str()),
            (Verdict::Fail, "no wasmtime")
        );
        f.gpu_note = None;
        f.gpus = vec![GpuFact {
            model: "Tesla P100-PCIE-12GB".into(),
            memory_mib: 12288,
            driver_version: "535.183.01".into(),
            compute_capability: "6.0".into(),
        }];
        let v = judge(&f, Ok(&cold), None);
        assert_eq!(
            (v[1].verdict, v[1].detail.as_str()),
            (Verdict::Pass, "Tesla P100-PCIE-12GB")
        );
    }

    #[test]
    fn ray_status_is_judged_only_where_ray_runs() {
        let mut f = Facts::default();
        f.tools.insert("ray".into(), "/bin/ray".into());
        let units = |head: &str, worker: &str| {
            [("ray-head", head), ("ray-worker", worker)]
                .iter()
                .map(|(u, s)| (u.to_string(), s.to_string()))
                .collect()
        };
        f.units = units("inactive", "inactive");
        assert!(!ray_expected(&f));
        f.units = units("inactive", "failed");
        assert!(!ray_expected(&f), "a failed unit fails its own check");
        f.units = units("active", "inactive");
        assert!(ray_expected(&f));
        f.units = units("unknown", "unknown");
        assert!(ray_expected(&f), "without systemd Ray may run by hand");
        let cold = Err("-");
        let r = RayFacts {
            present: true,
            ok: false,
            alive_nodes: 0,
            gpus: 0.0,
            output: "ConnectionError: Could not find any running Ray instance.\n".into(),
        };
        let last = judge(&f, cold, Some(&r)).pop().unwrap();
        assert_eq!(
            (last.verdict, last.detail.as_str()),
            (
                Verdict::Fail,
                "ConnectionError: Could not find any running Ray instance."
            )
        );
        let r = RayFacts {
            ok: true,
            alive_nodes: 2,
            gpus: 1.0,
            ..r
        };
        let last = judge(&f, cold, Some(&r)).pop().unwrap();
        assert_eq!(
            (last.verdict, last.detail.as_str()),
            (Verdict::Pass, "2 nodes alive, 1 GPUs")
        );
        f.tools.clear();
        assert_eq!(
            judge(&f, cold, Some(&r)).pop().unwrap().verdict,
            Verdict::Skip
        );
    }
}
