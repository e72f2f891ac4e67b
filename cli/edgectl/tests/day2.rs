//! The day-2 commands end to end on a local lab: `exec` on every node with per-node output and
//! an exit code that says whether any failed, `status` that sees a node changed behind
//! edgectl's back, `rollback` through the confirm protocol, and `ssh` with the pinned host key.

use std::io::Write;
use std::process::{Command, Stdio};

mod common;
use common::edgectl;

use edgectl_testkit::explain;

struct Lab(String);

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = edgectl(&["lab", "down", "--dir", &self.0]);
    }
}

#[test]
fn exec_status_and_ssh_on_a_lab() {
    if !edgectl_rig::ready() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("lab").display().to_string();
    let o = edgectl(&["lab", "up", "2", "--dir", &dir]);
    assert!(o.status.success(), "{}", explain(&o));
    let _lab = Lab(dir.clone());
    let topo = format!("{dir}/cluster.toml");

    // exec: argv as given (the `$1` reaches sh as an argument, not as our shell text).
    let o = edgectl(&[
        "exec",
        &topo,
        "--",
        "sh",
        "-c",
        "echo \"got $1\"",
        "sh",
        "a b;c",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("[n1] got a b;c") && out.contains("[n2] got a b;c"),
        "{out}"
    );
    let o = edgectl(&["exec", &topo, "--on", "n2", "--", "false"]);
    assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[n2] exit 1"));
    let o = edgectl(&["exec", &topo, "--on", "nope", "--", "true"]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    let o = edgectl(&["exec", &topo, "--json", "--", "true"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2, "{v}");

    // status: nothing recorded, then the applied systems, then drift.
    let status = || {
        let o = edgectl(&["status", &topo, "--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    assert!(status()["nodes"][0]["recorded"].is_null());
    let o = edgectl(&["apply", &topo]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let v = status();
    let n1 = &v["nodes"][0];
    assert_eq!(n1["live"], n1["recorded"], "{v}");
    assert_eq!(n1["drifted"], false);
    assert_eq!(n1["last_result"], "confirmed");
    // The last verify's verdict per node.
    assert!(n1["last_verify"].is_null(), "{v}");
    let o = edgectl(&["verify", &topo, "--json", "--samples", "5"]);
    assert!(matches!(o.status.code(), Some(0 | 4)), "{}", explain(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let v = status();
    for (i, node) in ["n1", "n2"].iter().enumerate() {
        let fails = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["node"] == *node && c["verdict"] == "fail")
            .count();
        let lv = &v["nodes"][i]["last_verify"];
        assert_eq!(lv["fail"], fails, "{node}: {v}");
        assert!(lv["pass"].as_u64() > Some(0), "{node}: {v}");
    }
    // Someone points n1's system profile elsewhere by hand.
    let o = edgectl(&[
        "exec",
        &topo,
        "--on",
        "n1",
        "--root",
        "--",
        "sh",
        "-c",
        "nix-env -p /nix/var/nix/profiles/system --set \"$(readlink -f \"$(readlink -f /nix/var/nix/profiles/system)/etc\")\"",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let v = status();
    assert_eq!(v["nodes"][0]["drifted"], true, "{v}");
    assert_eq!(v["nodes"][0]["live_generation"], 2, "{v}");
    assert_eq!(v["nodes"][1]["drifted"], false, "{v}");

    // rollback: n1 back to the generation before (the applied system), confirmed as apply
    // confirms; then nothing recorded differs from what runs.
    let o = edgectl(&["rollback", &topo]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "--on is required: {}",
        explain(&o)
    );
    let o = edgectl(&["rollback", &topo, "--on", "n1", "--to", "99"]);
    assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no generation 99"),
        "{}",
        explain(&o)
    );
    let o = edgectl(&["rollback", &topo, "--on", "n1", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let v = status();
    let n1 = &v["nodes"][0];
    assert_eq!(n1["drifted"], false, "{v}");
    assert_eq!(
        n1["live_generation"], 3,
        "a new generation of the old system: {v}"
    );
    assert_eq!(n1["live"], n1["recorded"], "{v}");

    // ssh: the pinned key only, and the remote shell's exit status comes back.
    let o = edgectl(&["ssh", &topo, "n1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let cmd: Vec<&str> = v["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(cmd.contains(&"StrictHostKeyChecking=yes"), "{cmd:?}");
    assert!(
        cmd.iter().any(|a| a.starts_with("UserKnownHostsFile=")),
        "{cmd:?}"
    );
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(["ssh", &topo, "n1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(b"echo logged-in; exit 7\n")
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", explain(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("logged-in"));
    let o = edgectl(&["ssh", &topo, "nx"]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("its nodes are n1, n2"));
}
