//! The Ray probe program the agent ships (`edgectl_agent::ray_probe::PROGRAM`), run by a real
//! Python without Ray: it always answers one JSON object on stdout, saying why it could not
//! probe; its helpers agree with the agent's (nearest-rank percentiles); nothing else reaches
//! stdout. The probe against a real Ray cluster is `ray_cluster_is_checked_or_skipped_with_a_reason`
//! in cli/edgectl/tests/verify.rs.

use std::path::PathBuf;
use std::process::{Command, Output};

use edgectl_agent::ray_probe::{PROGRAM, RayProbe, parse_answer};
use edgectl_testkit::{explain, require, tool};

fn python3() -> Option<PathBuf> {
    require("python3", tool("python3"))
}

/// The program under `python3 -S` (no site packages: no Ray, whatever this machine has).
fn run(py: &PathBuf, args: &[&str]) -> Output {
    Command::new(py)
        .args(["-S", "-c", PROGRAM])
        .args(args)
        .output()
        .unwrap()
}

fn answer(o: &Output) -> RayProbe {
    assert!(o.status.success(), "{}", explain(o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out.lines().count(),
        1,
        "one line on stdout:\n{}",
        explain(o)
    );
    parse_answer(&out).unwrap_or_else(|e| panic!("{e}\n{}", explain(o)))
}

#[test]
fn the_probe_answers_why_it_could_not_run() {
    let Some(py) = python3() else { return };
    for (args, why) in [
        (
            vec!["{\"address\": \"10.0.0.1:6379\", \"samples\": 5}"],
            "No module named 'ray'",
        ),
        (vec![], "No module named 'ray'"),
        (vec!["{not json"], "JSONDecodeError"),
        (vec!["[1, 2]"], "the argument is not a JSON object"),
    ] {
        let p = answer(&run(&py, &args));
        let e = p.error.as_deref().unwrap_or_default();
        assert!(e.contains(why), "{args:?}: {e}");
        assert!(p.nodes.is_empty() && p.scaling.is_none(), "{p:?}");
        assert!(p.python.is_some(), "{p:?}");
    }
}

/// The program's own functions, imported from a copy of it, with data given as argv.
const HELPERS: &str = r#"
import json, math, os, sys
sys.path.insert(0, sys.argv[1])
import probe_under_test as p
data = json.loads(sys.argv[2])
def expired():
    try:
        p.Deadline(-1.0).left(5.0)
    except TimeoutError as e:
        return p.describe(e)
out = {
    "deadline": [p.Deadline(100.0).left(5.0), p.Deadline(100.0).left(500.0) <= 100.0, expired()],
    "percentiles": [[p.percentile(sorted(v), q) for q in (50.0, 99.0)] for v in data["lists"]],
    "samples": [p.int_arg(a, "samples", 200, 1, 10000) for a in data["args"]],
    "scaling_s": [p.float_arg(a, "scaling_s", 3.0, 0.2, 60.0) for a in data["args"]],
    "finite": p.finite({"a": math.nan, "b": 1.5, "c": [math.inf, 2.0, -math.inf], "d": {"e": math.nan}}),
    "burn": [p.burn(0), p.burn(3)],
}
print(json.dumps(out))
"#;

#[test]
fn the_probes_helpers_agree_with_the_agents() {
    let Some(py) = python3() else { return };
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("probe_under_test.py"), PROGRAM).unwrap();
    let lists: Vec<Vec<f64>> = vec![
        (1..=100).map(f64::from).collect(),
        (1..=200).rev().map(|x| f64::from(x) / 7.0).collect(),
        vec![3.0],
        vec![5.0, 1.0],
        vec![],
    ];
    let data = serde_json::json!({
        "lists": lists,
        "args": [
            {"samples": 50, "scaling_s": 1.5},
            {"samples": "200; import os", "scaling_s": "3"},
            {"samples": true, "scaling_s": null},
            {"samples": 1e12, "scaling_s": -4},
            {"samples": 0.5, "scaling_s": 1e300},
            {},
        ],
    });
    let o = Command::new(&py)
        .args(["-S", "-c", HELPERS])
        .arg(d.path())
        .arg(data.to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", explain(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for (i, l) in lists.iter().enumerate() {
        let mut s = l.clone();
        s.sort_by(f64::total_cmp);
        let want = [
            edgectl_agent::proto::percentile(&s, 50.0),
            edgectl_agent::proto::percentile(&s, 99.0),
        ];
        let got: Vec<f64> = v["percentiles"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got, want, "list {i}");
    }
    // Only numbers are taken, and only within their bounds; anything else is the default.
    assert_eq!(
        v["samples"],
        serde_json::json!([50, 200, 200, 10000, 1, 200])
    );
    assert_eq!(
        v["scaling_s"],
        serde_json::json!([1.5, 3.0, 3.0, 0.2, 60.0, 3.0])
    );
    // What JSON cannot hold is left out, so the agent reads the answer.
    assert_eq!(
        v["finite"],
        serde_json::json!({"b": 1.5, "c": [2.0], "d": {}})
    );
    // Every wait is bounded by the time the probe has left, and none starts after it.
    assert_eq!(
        v["deadline"],
        serde_json::json!([5.0, true, "TimeoutError: the probe ran out of time"])
    );
    // The work unit is the generator it says it is: x = (x * 1103515245 + 12345) mod 2^32.
    let mut x: u64 = 1;
    for _ in 0..3 {
        x = (x * 1_103_515_245 + 12_345) & 0xFFFF_FFFF;
    }
    assert_eq!(v["burn"], serde_json::json!([1, x]));
}

/// Whatever Ray or a task prints, from Python or from C (file descriptor 1), goes to stderr:
/// stdout holds the answer alone.
#[test]
fn nothing_but_the_answer_reaches_stdout() {
    let Some(py) = python3() else { return };
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("probe_under_test.py"), PROGRAM).unwrap();
    let noisy = r#"
import os, sys
sys.path.insert(0, sys.argv[1])
import probe_under_test as p
def probe(args, out):
    print("from python")
    os.write(1, b"from C\n")
    out["ray_version"] = "9.9.9"
    raise RuntimeError("stopped\nhere")
p.probe = probe
sys.exit(p.main(["-c", "{}"]))
"#;
    let o = Command::new(&py)
        .args(["-S", "-c", noisy])
        .arg(d.path())
        .output()
        .unwrap();
    let p = answer(&o);
    assert_eq!(p.ray_version.as_deref(), Some("9.9.9"));
    assert_eq!(p.error.as_deref(), Some("RuntimeError: stopped here"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("from python") && err.contains("from C"),
        "{}",
        explain(&o)
    );
}
