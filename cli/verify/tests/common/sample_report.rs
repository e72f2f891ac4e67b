// A realistic report for the report's tests, included (`include!`) by the crate's unit tests
// (`measured.rs`) and by `tests/report_browser.rs`; the includer brings `Report`, `NodeReport`,
// `Check`, `Verdict`, `PairStat`, `checks`, `percentile` and `round_trips` into scope.
//
// Four nodes: two plain ones, one whose name is hostile markup, and one whose agent did not
// answer (so its measurements are missing). QUIC round trips carry their samples (one pair
// fails the 2 ms target, one has no answer at all); the Zenoh ones come as an older agent
// sends them, p50 and p99 alone; one router list. Per-node checks with numeric targets in the
// forms the checks write them, passing and failing, and one without a measurement.

/// The hostile node's name: markup, quotes and an ampersand.
pub const HOSTILE: &str = "gpu\"&'<script>alert(1)</script>";
pub const TARGET_P99_MS: f64 = 2.0;

/// `n` round trips around `base_ms` from a fixed generator, with a tail of `tail` slow ones.
fn round_trip_samples(seed: u64, n: usize, base_ms: f64, tail: usize) -> Vec<f64> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut v: Vec<f64> = (0..n)
        .map(|i| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            let slow = if i < tail { 2.5 } else { 1.0 };
            base_ms * slow * (0.8 + 0.5 * u)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn measured_pair(from: &str, to: &str, seed: u64, base_ms: f64, tail: usize) -> PairStat {
    let v = round_trip_samples(seed, 100, base_ms, tail);
    let mut s = PairStat::new(from, to);
    s.samples = v.len() as u32;
    s.p50_ms = percentile(&v, 50.0);
    s.p99_ms = percentile(&v, 99.0);
    s.rtt_ms = round_trips(&v);
    s
}

fn summary_pair(from: &str, to: &str, p50: f64, p99: f64) -> PairStat {
    let mut s = PairStat::new(from, to);
    (s.samples, s.p50_ms, s.p99_ms) = (100, p50, p99);
    s
}

fn sample_check(
    node: &str,
    category: &str,
    name: &str,
    expected: &str,
    actual: &str,
    verdict: Verdict,
) -> Check {
    Check {
        node: node.into(),
        category: category.into(),
        name: name.into(),
        expected: expected.into(),
        actual: actual.into(),
        verdict,
        reason: None,
    }
}

pub fn sample_report() -> Report {
    let live = ["edge-1", "edge-2", HOSTILE];
    let mut nodes: Vec<NodeReport> = live
        .iter()
        .enumerate()
        .map(|(i, n)| NodeReport {
            name: n.to_string(),
            agent: "started".into(),
            address: Some(format!("10.0.0.{}", i + 1)),
            ..Default::default()
        })
        .collect();
    nodes.push(NodeReport {
        name: "edge-4".into(),
        agent: "unreachable".into(),
        error: Some("ssh 10.0.0.4:22: connection refused <again>".into()),
        ..Default::default()
    });
    let mut quic = Vec::new();
    let mut zenoh = Vec::new();
    let mut seed = 1;
    for a in live {
        for b in live {
            if a == b {
                continue;
            }
            seed += 1;
            if (a, b) == (HOSTILE, "edge-1") {
                let mut s = PairStat::new(a, b);
                s.error = Some("no answer within 5 s <timeout>".into());
                quic.push(s);
            } else if (a, b) == ("edge-2", HOSTILE) {
                // Slow all along: its p99 is above the target.
                quic.push(measured_pair(a, b, seed, 1.9, 3));
            } else {
                quic.push(measured_pair(a, b, seed, 0.3 + 0.05 * seed as f64, 2));
            }
            zenoh.push(summary_pair(
                a,
                b,
                0.4,
                if b == HOSTILE { 2.6 } else { 0.9 },
            ));
        }
    }
    let t = Some(TARGET_P99_MS);
    let mut cs: Vec<Check> = vec![
        sample_check(
            "edge-4",
            "agent",
            "agent reachable",
            "answers over QUIC with mutual TLS",
            "ssh 10.0.0.4:22: connection refused <again>",
            Verdict::Fail,
        ),
        sample_check(
            "edge-1",
            "hardware",
            "cpu model",
            "intel xeon silver 4114",
            "intel xeon silver 4114",
            Verdict::Pass,
        ),
        sample_check(
            "edge-1",
            "runtime",
            "wasm cold start",
            "<= 25 ms",
            "3.21 ms (compile 12.0 ms)",
            Verdict::Pass,
        ),
        sample_check(
            "edge-2",
            "runtime",
            "wasm cold start",
            "<= 25 ms",
            "31.70 ms (compile 14.2 ms)",
            Verdict::Fail,
        ),
        sample_check(
            HOSTILE,
            "runtime",
            "wasm cold start",
            "runs",
            "timed out <script>alert(2)</script>",
            Verdict::Fail,
        ),
        sample_check(
            "edge-1",
            "runtime",
            "unikernel boot",
            "p50 <= 50 ms (launch to first serial output, under KVM)",
            "p50 42.0 ms, max 90.0 ms (5 boots, qemu microvm)",
            Verdict::Pass,
        ),
        sample_check(
            "edge-2",
            "runtime",
            "unikernel boot",
            "p50 <= 50 ms (launch to first serial output, under KVM)",
            "p50 61.5 ms, max 70.2 ms (5 boots, qemu microvm)",
            Verdict::Fail,
        ),
        sample_check(
            "edge-1",
            "ray",
            "ray scaling",
            "efficiency >= 0.8 (speedup over the ideal)",
            "efficiency 0.62: speedup 1.24 of ideal 2.00 (8 tasks of 500 ms)",
            Verdict::Fail,
        ),
        sample_check(
            HOSTILE,
            "user",
            "<img src=x onerror=alert(3)>",
            "exit 0",
            "exit 0",
            Verdict::Pass,
        ),
        Check {
            reason: Some("ray is not installed on edge-2".into()),
            ..sample_check("edge-2", "ray", "ray gpus", "1", "-", Verdict::Skip)
        },
    ];
    cs.extend(quic.iter().map(|s| checks::latency("quic", s, t)));
    cs.extend(zenoh.iter().map(|s| checks::latency("zenoh", s, t)));
    let via: Vec<PairStat> = [("edge-1", "edge-2"), ("edge-2", "edge-1")]
        .iter()
        .enumerate()
        .map(|(k, (a, b))| measured_pair(a, b, 90 + k as u64, 0.8, 1))
        .collect();
    cs.extend(
        via.iter()
            .map(|s| checks::latency("zenoh via edge-1", s, t)),
    );
    let routers = serde_json::from_value(serde_json::json!([{
        "router": "edge-1",
        "endpoint": "tcp/10.0.0.1:7447",
        "pairs": via,
    }]))
    .expect("router pairs read");
    let (mut pass, mut fail, mut skip) = (0, 0, 0);
    for c in &cs {
        match c.verdict {
            Verdict::Pass => pass += 1,
            Verdict::Fail => fail += 1,
            Verdict::Skip => skip += 1,
        }
    }
    let mut r = Report {
        cluster: "lab <&> \"one\"".into(),
        topology: "/tmp/<lab>/cluster.toml".into(),
        ok: false,
        latency_p99_ms: t,
        nodes,
        checks: cs,
        quic,
        zenoh,
        zenoh_routers: routers,
        ..Default::default()
    };
    (r.summary.pass, r.summary.fail, r.summary.skip) = (pass, fail, skip);
    r
}
