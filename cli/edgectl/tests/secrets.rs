//! `[[secret]]` end to end on the rig: `apply` writes a file's and a command's secret with
//! their owner, group and mode on the nodes they go to (one before activation, one after),
//! `plan --json` shows their digests and never their content, the content is in no node's
//! /nix/store nor in the controller's `.edgectl/`, and a missing source makes `apply` (and
//! `plan`) exit 1 having changed nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgectl_rig::Rig;

struct Lab {
    rig: Rig,
    dir: tempfile::TempDir,
}

impl Lab {
    fn topology(&self) -> PathBuf {
        self.dir.path().join("cluster.toml")
    }

    /// The rig's cluster with `features`, and two secrets: a file's for every node (before
    /// activation, nobody:nogroup 0440), and a command's for n2 only (after, root 0400).
    fn write_topology(&self, features: &[&str]) {
        let mut t = edgectl_rig::topology_toml(&self.rig, features, 6);
        t.push_str(
            r#"
[[secret]]
name = "api-token"
file = "secrets/api-token"
dest = "/run/keys/api-token"
owner = "nobody"
group = "nogroup"
mode = "0440"

[[secret]]
name = "db-password"
command = ["sh", "-c", "echo command-secret-$((1000 + 337))"]
dest = "/var/lib/app/db-password"
nodes = ["n2"]
when = "after"
"#,
        );
        std::fs::write(self.topology(), t).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_edgectl"))
            .args(args)
            .arg(self.topology())
            .args(["--identity", self.rig.key.to_str().unwrap()])
            .args([
                "--override-input",
                "nixpkgs",
                &format!("path:{}", edgectl_rig::fixture_nixpkgs().display()),
            ])
            .args(["--connect-timeout", "3"])
            .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG)
            .output()
            .unwrap()
    }

    /// `stat` of a path inside node i: "USER GROUP MODE", or None when it is not there.
    fn stat(&self, i: usize, path: &str) -> Option<String> {
        let o = self.rig.exec_in(i, &["stat", "-c", "%U %G %a", path]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    fn cat(&self, i: usize, path: &str) -> String {
        let o = self.rig.exec_in(i, &["cat", path]);
        assert!(o.status.success(), "{}", explain(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn current(&self, i: usize) -> String {
        let o = self
            .rig
            .exec_in(i, &["readlink", "-f", "/nix/var/nix/profiles/system"]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sha256(bytes: &[u8]) -> String {
    edgectl_deploy::secrets::sha256_hex(bytes)
}

/// Whether any file under `dir` holds `needle` (`grep -r`, which does not follow links).
fn found_under(dir: &Path, needle: &str) -> bool {
    let o = Command::new("grep")
        .args(["-r", "-l", "-F", "--", needle])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        o.status.code() != Some(2),
        "grep {}: {}",
        dir.display(),
        explain(&o)
    );
    o.status.success()
}

/// The plan's secrets of `node` as (name, sha256, change).
fn planned(plan: &serde_json::Value, node: &str) -> Vec<(String, String, String)> {
    let n = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .unwrap_or_else(|| panic!("no {node} in {plan}"));
    n["secrets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap().to_string(),
                        s["sha256"].as_str().unwrap().to_string(),
                        s["change"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn secrets_are_written_with_their_owner_and_mode_shown_by_digest_and_kept_out_of_every_store() {
    if !edgectl_rig::ready() {
        return;
    }
    let l = Lab {
        rig: Rig::up(2).expect("rig comes up"),
        dir: tempfile::tempdir().unwrap(),
    };
    let file_secret = format!(
        "file-secret-{}-{:?}\n",
        std::process::id(),
        std::time::SystemTime::now()
    );
    let cmd_secret = "command-secret-1337\n";
    std::fs::create_dir(l.dir.path().join("secrets")).unwrap();
    std::fs::write(l.dir.path().join("secrets/api-token"), &file_secret).unwrap();
    l.write_topology(&["wasm", "agent"]);

    // The plan: by name and digest, to be written, never the content.
    let o = l.run(&["plan", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", explain(&o));
    let out = text(&o);
    assert!(
        !out.contains(file_secret.trim()) && !out.contains(cmd_secret.trim()),
        "{out}"
    );
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (fd, cd) = (
        sha256(file_secret.as_bytes()),
        sha256(cmd_secret.as_bytes()),
    );
    assert_eq!(
        planned(&plan, "n1"),
        [("api-token".into(), fd.clone(), "new".into())]
    );
    assert_eq!(
        planned(&plan, "n2"),
        [
            ("api-token".into(), fd.clone(), "new".into()),
            ("db-password".into(), cd.clone(), "new".into())
        ]
    );

    let o = l.run(&["apply", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let out = text(&o);
    assert!(
        !out.contains(file_secret.trim()) && !out.contains(cmd_secret.trim()),
        "{out}"
    );
    for i in 0..2 {
        assert_eq!(l.cat(i, "/run/keys/api-token"), file_secret, "n{}", i + 1);
        assert_eq!(
            l.stat(i, "/run/keys/api-token").as_deref(),
            Some("nobody nogroup 440")
        );
        assert_eq!(
            l.stat(i, "/run/keys/api-token.edgectl-secret"),
            None,
            "no temporary file left"
        );
    }
    assert_eq!(l.cat(1, "/var/lib/app/db-password"), cmd_secret);
    assert_eq!(
        l.stat(1, "/var/lib/app/db-password").as_deref(),
        Some("root root 400")
    );
    assert_eq!(l.stat(1, "/var/lib/app").as_deref(), Some("root root 755"));
    // n2's /var is its own (the rig's node directory), and n1 has no such secret.
    assert_eq!(
        std::fs::read_to_string(l.rig.node(1).dir.join("var/lib/app/db-password")).unwrap(),
        cmd_secret
    );
    assert_eq!(l.stat(0, "/var/lib/app/db-password"), None);

    // Nowhere in a store or in what the controller keeps (the rendered flake, the state).
    for s in [file_secret.trim(), cmd_secret.trim()] {
        for i in 0..2 {
            assert!(
                !found_under(&l.rig.node(i).nix_dir.join("store"), s),
                "n{}'s /nix/store holds a secret",
                i + 1
            );
        }
        let kept = l.dir.path().join(".edgectl");
        assert!(kept.join("flake/topology.json").is_file());
        assert!(!found_under(&kept, s), "{} holds a secret", kept.display());
    }

    // Converged: nothing to change, each secret held as planned.
    let o = l.run(&["plan", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        planned(&plan, "n2"),
        [
            ("api-token".into(), fd.clone(), "unchanged".into()),
            ("db-password".into(), cd, "unchanged".into())
        ]
    );

    // A missing source: plan and apply say which secret and file, and change nothing, though
    // the topology now asks for another system.
    let systems = [l.current(0), l.current(1)];
    let state = std::fs::read(l.dir.path().join(".edgectl/state.json")).unwrap();
    std::fs::remove_file(l.dir.path().join("secrets/api-token")).unwrap();
    l.write_topology(&["wasm"]);
    for cmd in ["plan", "apply"] {
        let o = l.run(&[cmd]);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {}", explain(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("secret `api-token`: cannot read its file")
                && err.contains("secrets/api-token"),
            "{cmd}: {err}"
        );
    }
    assert_eq!(
        [l.current(0), l.current(1)],
        systems,
        "no node was switched"
    );
    assert_eq!(l.cat(0, "/run/keys/api-token"), file_secret);
    assert_eq!(
        std::fs::read(l.dir.path().join(".edgectl/state.json")).unwrap(),
        state,
        "nothing recorded"
    );
    for i in 0..2 {
        assert_eq!(
            l.stat(i, &format!("{}/lock", edgectl_deploy::activate::STATE_DIR)),
            None,
            "no node was locked"
        );
    }

    // A destination outside the allowed places is refused before anything runs.
    std::fs::write(l.dir.path().join("secrets/api-token"), &file_secret).unwrap();
    let t = std::fs::read_to_string(l.topology()).unwrap();
    std::fs::write(
        l.topology(),
        t.replace("\"/run/keys/api-token\"", "\"/root/.ssh/authorized_keys\""),
    )
    .unwrap();
    let o = l.run(&["apply"]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    assert!(
        text(&o).contains("secret destination must be under"),
        "{}",
        explain(&o)
    );
    assert_eq!(
        [l.current(0), l.current(1)],
        systems,
        "no node was switched"
    );
}
