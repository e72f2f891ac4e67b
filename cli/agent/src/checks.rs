//! Facts against expectations: the node's hardware profile, the topology's features and roles,
//! and the targets. Every check carries both values, so a failure explains itself.

use edgectl_model::{Cluster, Feature, Node, Role};
use serde::{Deserialize, Serialize};

use crate::facts::Facts;
use crate::proto::{ColdStart, PairStat, RayFacts, WasiOutcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub node: String,
    /// hardware, config, runtime, ray, network, user
    pub category: String,
    pub name: String,
    pub expected: String,
    pub actual: String,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn check(
    node: &str,
    category: &str,
    name: &str,
    expected: impl Into<String>,
    actual: impl Into<String>,
    ok: bool,
) -> Check {
    Check {
        node: node.to_string(),
        category: category.to_string(),
        name: name.to_string(),
        expected: expected.into(),
        actual: actual.into(),
        verdict: if ok { Verdict::Pass } else { Verdict::Fail },
        reason: None,
    }
}

fn skip(
    node: &str,
    category: &str,
    name: &str,
    expected: impl Into<String>,
    reason: impl Into<String>,
) -> Check {
    Check {
        node: node.to_string(),
        category: category.to_string(),
        name: name.to_string(),
        expected: expected.into(),
        actual: "-".into(),
        verdict: Verdict::Skip,
        reason: Some(reason.into()),
    }
}

/// "Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz" and "Intel Xeon Silver 4114" are the same CPU.
pub fn normalize_model(s: &str) -> String {
    let s = s.split(" @ ").next().unwrap_or(s);
    let s = s
        .replace("(R)", " ")
        .replace("(r)", " ")
        .replace("(TM)", " ")
        .replace("(tm)", " ");
    s.split_whitespace()
        .filter(|w| !["cpu", "processor"].contains(&w.to_lowercase().as_str()))
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn same_model(expected: &str, actual: &str) -> bool {
    let (e, a) = (normalize_model(expected), normalize_model(actual));
    !e.is_empty() && (a.contains(&e) || e.contains(&a) && !a.is_empty())
}

const GIB: f64 = (1u64 << 30) as f64;

pub fn hardware(node: &Node, f: &Facts) -> Vec<Check> {
    let n = node.name.as_str();
    let p = &node.profile;
    let h = "hardware";
    let mut v = vec![
        check(
            n,
            h,
            "cpu model",
            &p.cpu.model,
            &f.cpu.model,
            same_model(&p.cpu.model, &f.cpu.model),
        ),
        check(
            n,
            h,
            "cpu sockets",
            p.cpu.sockets.to_string(),
            f.cpu.sockets.to_string(),
            p.cpu.sockets == f.cpu.sockets,
        ),
        check(
            n,
            h,
            "cpu cores",
            p.cpu.cores.to_string(),
            f.cpu.cores.to_string(),
            p.cpu.cores == f.cpu.cores,
        ),
        check(
            n,
            h,
            "cpu threads",
            p.cpu.threads.to_string(),
            f.cpu.threads.to_string(),
            p.cpu.threads == f.cpu.threads,
        ),
    ];
    let want = f64::from(p.memory_gib);
    let got = f.memory_bytes as f64 / GIB;
    v.push(check(
        n,
        h,
        "memory",
        format!("{want} GiB ±5%"),
        format!("{got:.1} GiB"),
        want > 0.0 && ((got - want) / want).abs() <= 0.05,
    ));
    for d in &p.disks {
        let kind = format!("{:?}", d.kind).to_lowercase();
        let want_b = d.size_gb as f64 * 1e9;
        let found: Vec<String> = f
            .disks
            .iter()
            .filter(|x| {
                x.rotational == d.kind.rotational()
                    && ((x.size_bytes as f64 - want_b) / want_b).abs() <= 0.10
            })
            .map(|x| format!("{} {:.0} GB", x.name, x.size_bytes as f64 / 1e9))
            .collect();
        let all: Vec<String> = f
            .disks
            .iter()
            .map(|x| {
                format!(
                    "{} {:.0} GB {}",
                    x.name,
                    x.size_bytes as f64 / 1e9,
                    if x.rotational {
                        "rotational"
                    } else {
                        "non-rotational"
                    }
                )
            })
            .collect();
        v.push(check(
            n,
            h,
            &format!("disk {} GB {kind}", d.size_gb),
            format!(
                "{}x {} GB {}",
                d.count,
                d.size_gb,
                if d.kind.rotational() {
                    "rotational"
                } else {
                    "non-rotational"
                }
            ),
            found_or_none(&found, &all, "no disks"),
            found.len() as u32 >= d.count,
        ));
    }
    for nic in &p.nics {
        let found: Vec<String> = f
            .nics
            .iter()
            .filter(|x| {
                x.physical
                    && x.speed_mbps
                        .is_some_and(|s| s >= u64::from(nic.speed_gbps) * 1000)
            })
            .filter(|x| {
                nic.driver
                    .as_ref()
                    .is_none_or(|d| x.driver.as_ref() == Some(d))
            })
            .map(|x| {
                format!(
                    "{} {} Mb/s {}",
                    x.name,
                    x.speed_mbps.unwrap_or(0),
                    x.driver.as_deref().unwrap_or("?")
                )
            })
            .collect();
        let phys: Vec<String> = f
            .nics
            .iter()
            .filter(|x| x.physical)
            .map(|x| {
                format!(
                    "{} {} {}",
                    x.name,
                    x.speed_mbps
                        .map(|s| format!("{s} Mb/s"))
                        .unwrap_or("speed unknown".into()),
                    x.driver.as_deref().unwrap_or("?")
                )
            })
            .collect();
        v.push(check(
            n,
            h,
            &format!("nic {} Gb/s", nic.speed_gbps),
            format!(
                "{}x >= {} Gb/s{}",
                nic.ports,
                nic.speed_gbps,
                nic.driver
                    .as_ref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
            found_or_none(&found, &phys, "no physical NICs"),
            found.len() as u32 >= nic.ports,
        ));
    }
    for g in &p.gpus {
        let matching: Vec<_> = f
            .gpus
            .iter()
            .filter(|x| same_model(&g.model, &x.model))
            .collect();
        let actual = if f.gpus.is_empty() {
            format!(
                "none{}",
                f.gpu_note
                    .as_ref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            )
        } else {
            f.gpus
                .iter()
                .map(|x| {
                    format!(
                        "{} {} MiB cc {} driver {}",
                        x.model, x.memory_mib, x.compute_capability, x.driver_version
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ok = matching.len() as u32 >= g.count
            && matching.iter().all(|x| {
                x.compute_capability == g.compute_capability
                    && ((x.memory_mib as f64 / 1024.0 - f64::from(g.memory_gib))
                        / f64::from(g.memory_gib).max(1.0))
                    .abs()
                        <= 0.10
            });
        v.push(check(
            n,
            h,
            &format!("gpu {}", g.model),
            format!(
                "{}x {} {} GiB cc {}",
                g.count, g.model, g.memory_gib, g.compute_capability
            ),
            actual,
            ok,
        ));
    }
    v
}

/// The sysctl values `modules/lib/sysctl.nix` sets for a NIC speed.
pub fn expected_sysctls(nic_gbps: u32) -> Vec<(&'static str, String)> {
    let (max, cap) = if nic_gbps <= 10 {
        (134217728u64, 67108864u64)
    } else {
        (268435456, 134217728)
    };
    vec![
        ("net.ipv4.tcp_congestion_control", "bbr".into()),
        ("net.core.default_qdisc", "fq".into()),
        ("net.core.rmem_max", max.to_string()),
        ("net.core.wmem_max", max.to_string()),
        ("net.ipv4.tcp_rmem", format!("4096 87380 {cap}")),
        ("net.ipv4.tcp_wmem", format!("4096 65536 {cap}")),
    ]
}

pub fn config(node: &Node, f: &Facts) -> Vec<Check> {
    let n = node.name.as_str();
    let c = "config";
    let mut v = Vec::new();
    if node.has(Feature::NetTuning) {
        for (k, want) in expected_sysctls(node.profile.experiment_nic_gbps().unwrap_or(10)) {
            let got = f.sysctl.get(k).cloned().unwrap_or_else(|| "absent".into());
            v.push(check(
                n,
                c,
                &format!("sysctl {k}"),
                &want,
                &got,
                got == want,
            ));
        }
    }
    if node.has(Feature::Unikernel) {
        v.push(check(
            n,
            c,
            "kvm usable",
            "/dev/kvm opens read-write",
            if f.kvm_usable {
                "usable"
            } else if f.kvm_present {
                "present, not usable"
            } else {
                "absent"
            },
            f.kvm_usable,
        ));
        v.push(tool(n, "runtime", "ops", f));
    }
    let mut units = Vec::new();
    if node.is(Role::ZenohRouter) {
        units.push("zenohd");
    }
    if node.is(Role::RayHead) {
        units.push("ray-head");
    }
    if node.is(Role::RayWorker) {
        units.push("ray-worker");
    }
    if node.has(Feature::Agent) {
        units.push("edgectl-agent");
    }
    for u in units {
        let state = f.units.get(u).map(String::as_str).unwrap_or("unknown");
        if state == "unknown" {
            v.push(skip(
                n,
                c,
                &format!("service {u}"),
                "active",
                "no systemd on this node (state unknown)",
            ));
        } else {
            v.push(check(
                n,
                c,
                &format!("service {u}"),
                "active",
                state,
                state == "active",
            ));
        }
    }
    v
}

fn tool(n: &str, category: &str, t: &str, f: &Facts) -> Check {
    let got = f.tools.get(t);
    check(
        n,
        category,
        &format!("{t} on PATH"),
        "present",
        got.cloned().unwrap_or_else(|| "not found".into()),
        got.is_some(),
    )
}

pub fn wasm(
    node: &Node,
    f: &Facts,
    cold: Result<&ColdStart, &str>,
    target_ms: Option<f64>,
) -> Vec<Check> {
    let n = node.name.as_str();
    let mut v = vec![
        tool(n, "runtime", "wasmtime", f),
        tool(n, "runtime", "wasmedge", f),
    ];
    v.push(match cold {
        Ok(c) => {
            let actual = format!("{:.2} ms (compile {:.1} ms)", c.cold_start_ms, c.compile_ms);
            match target_ms {
                Some(t) => check(
                    n,
                    "runtime",
                    "wasm cold start",
                    format!("<= {t} ms"),
                    actual,
                    c.result == 500500 && c.cold_start_ms <= t,
                ),
                None => check(
                    n,
                    "runtime",
                    "wasm cold start",
                    "runs (no wasm_cold_start_ms target)",
                    actual,
                    c.result == 500500,
                ),
            }
        }
        Err(e) => check(n, "runtime", "wasm cold start", "runs", e, false),
    });
    v
}

pub fn ray(cluster: &Cluster, head: &Node, r: Result<&RayFacts, &str>) -> Vec<Check> {
    let n = head.name.as_str();
    let ray_nodes: Vec<&Node> = cluster
        .nodes
        .iter()
        .filter(|x| x.has(Feature::Ray))
        .collect();
    let want_nodes = ray_nodes.len();
    let want_gpus: u32 = ray_nodes.iter().map(|x| x.profile.gpu_count()).sum();
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            return vec![check(
                n,
                "ray",
                "ray nodes alive",
                want_nodes.to_string(),
                e,
                false,
            )];
        }
    };
    if !r.present {
        return vec![
            skip(
                n,
                "ray",
                "ray nodes alive",
                want_nodes.to_string(),
                format!("ray is not installed on {n}"),
            ),
            skip(
                n,
                "ray",
                "ray gpus",
                want_gpus.to_string(),
                format!("ray is not installed on {n}"),
            ),
        ];
    }
    let first = r.output.lines().last().unwrap_or("").to_string();
    vec![
        check(
            n,
            "ray",
            "ray nodes alive",
            want_nodes.to_string(),
            if r.ok {
                r.alive_nodes.to_string()
            } else {
                format!("`ray status` failed: {first}")
            },
            r.ok && r.alive_nodes as usize == want_nodes,
        ),
        check(
            n,
            "ray",
            "ray gpus",
            want_gpus.to_string(),
            format!("{}", r.gpus),
            r.ok && (r.gpus - f64::from(want_gpus)).abs() < 0.5,
        ),
    ]
}

pub fn latency(kind: &str, s: &PairStat, target_ms: Option<f64>) -> Check {
    let name = format!("latency {} -> {} ({kind})", s.from, s.to);
    let node = s.from.as_str();
    if let Some(e) = &s.error {
        return check(
            node,
            "network",
            &name,
            "round trips answered",
            e.clone(),
            false,
        );
    }
    let actual = format!(
        "p50 {:.2} ms, p99 {:.2} ms ({} samples, {} lost)",
        s.p50_ms, s.p99_ms, s.samples, s.lost
    );
    match target_ms {
        Some(t) => check(
            node,
            "network",
            &name,
            format!("p99 <= {t} ms"),
            actual,
            s.samples > 0 && s.p99_ms <= t,
        ),
        None => check(
            node,
            "network",
            &name,
            "answered (no latency_p99_ms target)",
            actual,
            s.samples > 0,
        ),
    }
}

pub fn user(node: &str, name: &str, o: Result<&WasiOutcome, &str>) -> Check {
    let cname = format!("wasi {name}");
    match o {
        Ok(o) => {
            let out = o
                .stdout
                .trim()
                .lines()
                .last()
                .unwrap_or("")
                .chars()
                .take(120)
                .collect::<String>();
            let actual = match &o.error {
                Some(e) => e.clone(),
                None if out.is_empty() => format!("exit {}", o.exit_code),
                None => format!("exit {}: {out}", o.exit_code),
            };
            check(
                node,
                "user",
                &cname,
                "exit 0",
                actual,
                o.error.is_none() && o.exit_code == 0,
            )
        }
        Err(e) => check(node, "user", &cname, "exit 0", e, false),
    }
}

/// What matched, or what there was instead ("none (sda 480 GB ssd, ...)").
fn found_or_none(found: &[String], all: &[String], nothing: &str) -> String {
    if !found.is_empty() {
        found.join(", ")
    } else if all.is_empty() {
        format!("none ({nothing})")
    } else {
        format!("none ({})", all.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_models_compare_loosely_but_not_wrongly() {
        assert!(same_model(
            "Intel Xeon Silver 4114",
            "Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz"
        ));
        assert!(same_model(
            "AMD EPYC 7302",
            "AMD EPYC 7302 16-Core Processor"
        ));
        assert!(!same_model(
            "Intel Xeon Silver 4114",
            "AMD EPYC 7302 16-Core Processor"
        ));
        assert!(!same_model(
            "Intel Xeon Silver 4114",
            "Intel(R) Xeon(R) Gold 6142 CPU @ 2.60GHz"
        ));
    }

    #[test]
    fn sysctl_rows_follow_the_nix_table() {
        let ten = expected_sysctls(10);
        assert!(ten.contains(&("net.core.rmem_max", "134217728".into())));
        let forty = expected_sysctls(25);
        assert!(forty.contains(&("net.ipv4.tcp_wmem", "4096 65536 134217728".into())));
    }

    #[test]
    fn latency_verdicts() {
        let s = PairStat {
            from: "a".into(),
            to: "b".into(),
            samples: 100,
            lost: 0,
            p50_ms: 3.1,
            p99_ms: 3.6,
            error: None,
        };
        assert_eq!(latency("quic", &s, Some(2.0)).verdict, Verdict::Fail);
        assert_eq!(latency("quic", &s, Some(5.0)).verdict, Verdict::Pass);
        assert_eq!(latency("quic", &s, None).verdict, Verdict::Pass);
    }
}
