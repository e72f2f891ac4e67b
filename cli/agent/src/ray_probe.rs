//! Ray beyond a head count: the agent on the Ray head runs `ray_probe.py` (shipped inside this
//! binary) with the Python of the node's Ray installation. The program places one actor on every
//! alive node and times calls to it (p50/p99 per node), and runs one batch of CPU-bound tasks on
//! the head alone and spread over every node (speedup against the ideal); see the program's
//! docstring. Its arguments go to it as one JSON argv entry, never as code.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::facts::which;

/// The probe program, run as `python -c PROGRAM ARGS_JSON`.
pub const PROGRAM: &str = include_str!("ray_probe.py");
/// How long the program may run before it is killed (`timeout`); the controller waits longer.
pub const TIME_LIMIT: Duration = Duration::from_secs(240);

/// What the probe found. `error` says why it stopped early; what it measured before stays.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RayProbe {
    #[serde(default)]
    pub ray_version: Option<String>,
    /// The interpreter that ran it.
    #[serde(default)]
    pub python: Option<String>,
    /// The Ray node id of the head (where the driver ran).
    #[serde(default)]
    pub head: Option<String>,
    /// Every alive Ray node, the head first, with its actor's round trips.
    #[serde(default)]
    pub nodes: Vec<ActorStat>,
    #[serde(default)]
    pub scaling: Option<Scaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One node's actor: `samples` timed calls from the driver on the head.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ActorStat {
    pub node_id: String,
    /// The address the node registered with Ray (`NodeManagerAddress`).
    pub address: String,
    #[serde(default)]
    pub hostname: String,
    /// Its Ray CPU resource.
    #[serde(default)]
    pub cpus: f64,
    #[serde(default)]
    pub samples: u32,
    #[serde(default)]
    pub p50_ms: f64,
    #[serde(default)]
    pub p99_ms: f64,
    #[serde(default)]
    pub max_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The same batch of tasks on the head alone and on every node with CPUs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Scaling {
    #[serde(default)]
    pub tasks: u32,
    #[serde(default)]
    pub task_ms: f64,
    /// Nodes that ran tasks (those with a Ray CPU).
    #[serde(default)]
    pub nodes: u32,
    #[serde(default)]
    pub head_cpus: u32,
    /// All those nodes' CPUs.
    #[serde(default)]
    pub cpus: u32,
    #[serde(default)]
    pub one_node_s: f64,
    #[serde(default)]
    pub all_nodes_s: f64,
    /// `one_node_s / all_nodes_s`.
    #[serde(default)]
    pub speedup: f64,
    /// `cpus / head_cpus`: the speedup of perfect scaling (the node count when nodes are alike).
    #[serde(default)]
    pub ideal: f64,
    /// `speedup / ideal`.
    #[serde(default)]
    pub efficiency: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The interpreter named by a script's `#!` line: the path, or for `#!/usr/bin/env NAME` the
/// name (to find on PATH). `None` when the text has no such line.
pub fn shebang(text: &[u8]) -> Option<PathBuf> {
    let first = text.strip_prefix(b"#!")?.split(|b| *b == b'\n').next()?;
    let line = String::from_utf8_lossy(first);
    let mut words = line.split_whitespace();
    let interp = words.next()?;
    if Path::new(interp).file_name().is_some_and(|n| n == "env") {
        // `env -S python3 -u` and `env python3`: the first word that is no option.
        return words.find(|w| !w.starts_with('-')).map(PathBuf::from);
    }
    Some(PathBuf::from(interp))
}

fn is_python(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("python"))
}

/// Where the Python of the Ray installation whose `ray` script is `ray` may be, most likely
/// first: the interpreter of its `#!` line (a virtualenv's or pip's script), `python3` beside
/// it (a Nix Python environment, whose `ray` is a shell wrapper), then `path_python3` (the
/// `python3` on PATH). Without duplicates.
pub fn python_candidates(ray: &Path, path_python3: Option<PathBuf>) -> Vec<PathBuf> {
    let real = std::fs::canonicalize(ray).unwrap_or_else(|_| ray.to_path_buf());
    let mut v: Vec<PathBuf> = Vec::new();
    let head = std::fs::File::open(&real).ok().and_then(|f| {
        let mut buf = Vec::with_capacity(512);
        std::io::Read::read_to_end(&mut std::io::Read::take(f, 512), &mut buf).ok()?;
        shebang(&buf)
    });
    if let Some(i) = head.filter(|i| is_python(i)) {
        if i.is_absolute() {
            v.push(i);
        } else if let Some(found) = which(&i.to_string_lossy()) {
            v.push(found);
        }
    }
    for dir in [real.parent(), ray.parent()].into_iter().flatten() {
        v.push(dir.join("python3"));
    }
    v.extend(path_python3);
    let mut out: Vec<PathBuf> = Vec::new();
    for p in v {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The first of `candidates` that is a file and can import `ray`.
fn python_with_ray(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| {
        p.is_file()
            && Command::new("timeout")
                .args(["--kill-after=5", "60"])
                .arg(p)
                .args([
                    "-c",
                    "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('ray') else 3)",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    })
    .cloned()
}

fn failed(error: String) -> RayProbe {
    RayProbe {
        error: Some(error),
        ..Default::default()
    }
}

/// Reads the program's answer: the last line of its stdout that is a JSON object.
pub fn parse_answer(stdout: &str) -> Result<RayProbe, String> {
    let line = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('{'))
        .ok_or("no JSON object on its stdout")?;
    serde_json::from_str(line).map_err(|e| format!("its answer is not the expected JSON: {e}"))
}

/// Runs the probe against the cluster at `address` (the head's GCS; `None`: what Ray finds by
/// itself), `samples` actor calls per node, a scaling batch of about `scaling_s` seconds on the
/// head alone. Every failure is an answer with `error` set.
pub fn run(address: Option<&str>, samples: u32, scaling_s: f64) -> RayProbe {
    let Some(ray) = which("ray") else {
        return failed("ray is not on PATH".into());
    };
    let candidates = python_candidates(&ray, which("python3"));
    let Some(python) = python_with_ray(&candidates) else {
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        return failed(format!(
            "no Python that can import ray beside {} (tried {})",
            ray.display(),
            tried.join(", ")
        ));
    };
    let args = serde_json::json!({
        "address": address,
        "samples": samples,
        "scaling_s": scaling_s,
        // Every wait of the program ends by then: it answers before `timeout` kills it.
        "budget_s": TIME_LIMIT.as_secs().saturating_sub(40),
    })
    .to_string();
    let out = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(TIME_LIMIT.as_secs().to_string())
        .arg(&python)
        .arg("-c")
        .arg(PROGRAM)
        .arg(args)
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .stdin(Stdio::null())
        .output();
    let o = match out {
        Ok(o) => o,
        Err(e) => return failed(format!("cannot run {}: {e}", python.display())),
    };
    let stdout = String::from_utf8_lossy(&o.stdout);
    let mut probe = match parse_answer(&stdout) {
        Ok(p) => p,
        Err(why) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            let tail: String = {
                let t = stderr.trim();
                let cut = t.len().saturating_sub(800);
                let start = (cut..=t.len())
                    .find(|i| t.is_char_boundary(*i))
                    .unwrap_or(t.len());
                t[start..].to_string()
            };
            let status = if o.status.code() == Some(124) {
                format!("killed after {} s", TIME_LIMIT.as_secs())
            } else {
                o.status.to_string()
            };
            return failed(format!(
                "the Ray probe ({}) gave {why} ({status}): {}",
                python.display(),
                tail.replace('\n', " | ")
            ));
        }
    };
    if probe.python.is_none() {
        probe.python = Some(python.display().to_string());
    }
    probe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebang_lines() {
        assert_eq!(
            shebang(b"#!/root/.cache/edgectl/ray-venv/bin/python3\n# -*- coding: utf-8 -*-\n"),
            Some(PathBuf::from("/root/.cache/edgectl/ray-venv/bin/python3"))
        );
        assert_eq!(
            shebang(b"#! /usr/bin/python3.11 -I\nimport x"),
            Some(PathBuf::from("/usr/bin/python3.11"))
        );
        assert_eq!(
            shebang(b"#!/usr/bin/env python3\n"),
            Some(PathBuf::from("python3"))
        );
        assert_eq!(
            shebang(b"#!/usr/bin/env -S python3 -u\n"),
            Some(PathBuf::from("python3"))
        );
        assert_eq!(shebang(b"#!/usr/bin/env\n"), None);
        assert_eq!(shebang(b"\x7fELF\x02\x01"), None);
        assert_eq!(shebang(b""), None);
        assert_eq!(shebang(b"#!"), None);
        assert_eq!(
            shebang(b"#!\xff\xfe\n"),
            Some(PathBuf::from("\u{fffd}\u{fffd}"))
        );
    }

    #[test]
    fn candidates_follow_the_script_then_its_directory() {
        let d = tempfile::tempdir().unwrap();
        let venv = d.path().join("venv/bin");
        std::fs::create_dir_all(&venv).unwrap();
        let py = venv.join("python3");
        std::fs::write(
            venv.join("ray"),
            format!("#!{}\nimport ray\n", py.display()),
        )
        .unwrap();
        // A profile that links the script in, as `nix profile` or a symlink farm does.
        let profile = d.path().join("profile/bin");
        std::fs::create_dir_all(&profile).unwrap();
        std::os::unix::fs::symlink(venv.join("ray"), profile.join("ray")).unwrap();
        let got = python_candidates(&profile.join("ray"), Some("/usr/bin/python3".into()));
        // The `#!` interpreter, the script's own directory (the same, here), the link's, PATH's.
        let mut want = vec![py.clone()];
        let beside = std::fs::canonicalize(&venv).unwrap().join("python3");
        if beside != py {
            want.push(beside);
        }
        want.extend([profile.join("python3"), PathBuf::from("/usr/bin/python3")]);
        assert_eq!(got, want);
        // A shell wrapper (a Nix Python environment's `ray`): the Python beside it.
        let env = d.path().join("env/bin");
        std::fs::create_dir_all(&env).unwrap();
        std::fs::write(env.join("ray"), "#!/bin/sh\nexec /elsewhere/ray \"$@\"\n").unwrap();
        let env = std::fs::canonicalize(&env).unwrap();
        assert_eq!(
            python_candidates(&env.join("ray"), None),
            vec![env.join("python3")]
        );
    }

    #[test]
    fn answers_are_read_from_the_last_json_line() {
        let text = r#"some noise
{"ray_version": "2.40.0", "python": "/v/bin/python3", "head": "aa", "nodes": [{"node_id": "aa", "address": "10.0.0.1", "hostname": "n1", "cpus": 1.0, "samples": 200, "p50_ms": 1.6, "p99_ms": 5.1, "max_ms": 6.2}, {"node_id": "bb", "address": "10.0.0.2", "hostname": "n2", "cpus": 1.0, "error": "GetTimeoutError: timed out"}], "scaling": {"tasks": 4, "task_ms": 750.0, "nodes": 2, "head_cpus": 1, "cpus": 2, "one_node_s": 1.98, "all_nodes_s": 1.14, "speedup": 1.73, "ideal": 2.0, "efficiency": 0.87}, "error": null}
"#;
        let p = parse_answer(text).unwrap();
        assert_eq!(p.ray_version.as_deref(), Some("2.40.0"));
        assert_eq!(p.nodes.len(), 2);
        assert_eq!((p.nodes[0].samples, p.nodes[0].p99_ms), (200, 5.1));
        assert_eq!(p.nodes[1].samples, 0);
        assert!(p.nodes[1].error.as_deref().unwrap().contains("timed out"));
        assert_eq!(p.scaling.as_ref().unwrap().efficiency, 0.87);
        assert_eq!(p.error, None);
        assert!(parse_answer("Traceback (most recent call last):\n").is_err());
        assert!(parse_answer("{\"nodes\": 3}\n").is_err());
        assert!(parse_answer("").is_err());
        // What an agent sends is what a controller reads.
        let back: RayProbe = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
