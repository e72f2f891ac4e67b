//! `edgectl lab` end to end: local nodes come up behind a detached holder, the topology it
//! writes drives plan, apply and verify with no other flag, `lab down` removes everything, and
//! a lab whose holder was killed is removed by the next `down`.

use std::path::Path;
use std::process::Command;

mod common;
use common::edgectl;

use edgectl_testkit::explain;

/// The network namespaces of the lab whose holder is `pid` (rig names carry the pid in hex).
fn namespaces_of(pid: u32) -> Vec<String> {
    let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let tag = format!("edgerig-{pid:x}x");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&tag))
        .map(String::from)
        .collect()
}

fn holder_pid(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("lab.pid"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_lab_runs_the_main_job_and_leaves_nothing_behind() {
    if !edgectl_rig::ready() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("lab");
    let d = dir.to_str().unwrap();

    let o = edgectl(&["lab", "up", "0", "--dir", d]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));

    let o = edgectl(&["lab", "up", "2", "--dir", d]);
    assert!(o.status.success(), "{}", explain(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("not NixOS"));
    let pid = holder_pid(&dir);
    assert_eq!(namespaces_of(pid).len(), 2);
    // One lab per directory.
    let o = edgectl(&["lab", "up", "2", "--dir", d]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already up"));

    // The topology alone is enough: no --identity, no --override-input.
    let topo = dir.join("cluster.toml");
    let topo = topo.to_str().unwrap();
    let o = edgectl(&["check", topo]);
    assert!(o.status.success(), "{}", explain(&o));
    assert_eq!(edgectl(&["plan", topo]).status.code(), Some(2));
    let o = edgectl(&["apply", topo]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    assert_eq!(edgectl(&["plan", topo]).status.code(), Some(0));
    let report = dir.join("report");
    let o = edgectl(&[
        "verify",
        topo,
        "--json",
        "--report",
        report.to_str().unwrap(),
    ]);
    // Stand-in systems fail the configuration checks (no sysctls set); the run itself works.
    assert!(matches!(o.status.code(), Some(0 | 4)), "{}", explain(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for n in v["nodes"].as_array().unwrap() {
        assert_ne!(n["agent"], "unreachable", "{n}");
    }
    assert_eq!(v["quic"].as_array().unwrap().len(), 2);
    assert!(report.join("index.html").exists());

    let o = edgectl(&["lab", "down", "--dir", d]);
    assert!(o.status.success(), "{}", explain(&o));
    assert!(namespaces_of(pid).is_empty(), "{:?}", namespaces_of(pid));
    assert!(!dir.join("lab.pid").exists());

    // A holder killed outright leaves its nodes; the next `down` removes them.
    let o = edgectl(&["lab", "up", "1", "--dir", d]);
    assert!(o.status.success(), "{}", explain(&o));
    let pid = holder_pid(&dir);
    assert_eq!(namespaces_of(pid).len(), 1);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(namespaces_of(pid).len(), 1, "SIGKILL leaves the nodes");
    let o = edgectl(&["lab", "down", "--dir", d]);
    assert!(o.status.success(), "{}", explain(&o));
    assert!(namespaces_of(pid).is_empty(), "{:?}", namespaces_of(pid));
}
