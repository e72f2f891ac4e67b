//! Shell injection through the topology. A value such as `; rm -rf /`, `$(...)` or backticks in
//! any field that could reach a command edgectl runs (locally, or over SSH as root) must either
//! be refused by validation (exit 1, naming the field) or reach its destination only quoted:
//! through `quote::command` for the remote shell, or through the one Nix escaping function.
//! Every payload here would create a marker file if a shell ever ran it.
//!
//! (Agent keys on nodes, mode 0600 and outside the Nix store, belong to `cli/agent`, which is
//! being written separately; they are not checked here.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use edgectl_deploy::host::{UPLOAD, argv, remote_command};
use edgectl_deploy::quote;

fn edgectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(args)
        .output()
        .expect("runs")
}

/// Payloads that run `touch MARKER` under any shell that interprets them.
fn payloads(marker: &Path) -> Vec<String> {
    let m = marker.display();
    vec![
        format!("; touch {m}"),
        format!("x; rm -rf /; touch {m}"),
        format!("$(touch {m})"),
        format!("`touch {m}`"),
        format!("' ; touch {m}; '"),
        format!("\"; touch {m}; \""),
        format!("a\ntouch {m}"),
        format!("x && touch {m}"),
        format!("x | touch {m}"),
        format!("-oProxyCommand=touch {m}"),
        format!("${{builtins.toFile \"x\" \"y\"}} $(touch {m})"),
        format!("'' + x + '' `touch {m}`"),
    ]
}

fn toml(s: &str) -> String {
    // A JSON string literal is a valid TOML basic string.
    serde_json::to_string(s).unwrap()
}

const BASE: &str = r#"[cluster]
name = @CLUSTER_NAME@
nixpkgs = @NIXPKGS@
ssh_user = @SSH_USER@
ssh_keys = [@SSH_KEY@]
state_version = @STATE_VERSION@
site = @SITE@
expires = @EXPIRES@

[defaults]
profile = @DEFAULT_PROFILE@
features = ["net-tuning", "zenoh", "ray"]

[network.@NETWORK@]
subnet = "10.10.1.0/24"

[profile.@PROFILE_NAME@]
extends = "c220g5"
description = @PROFILE_DESCRIPTION@

[[node]]
name = @NODE_NAME@
host = @HOST@
user = @USER@
profile = @NODE_PROFILE@
roles = [@ROLE@, "zenoh-router"]
features = [@FEATURE@]
tags = [@TAG@]
control_ip = @CONTROL_IP@
lan = { network = @LAN_NETWORK@, address = @ADDRESS@, mac = @MAC@ }

[[node]]
name = "w1"
host = "10.0.0.2"
profile = "custom"
roles = ["ray-worker"]
lan = { address = "10.10.1.2/24", mac = "90e2ba000002" }
"#;

/// A valid topology, with the placeholders set to the given TOML values (defaults otherwise).
fn topology(set: &[(&str, String)]) -> String {
    let defaults: &[(&str, &str)] = &[
        ("CLUSTER_NAME", "\"t\""),
        ("NIXPKGS", "\"github:NixOS/nixpkgs/nixos-25.11\""),
        ("SSH_USER", "\"alice\""),
        (
            "SSH_KEY",
            "\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVkZ2VjdGwgdGVzdCBrZXksIG5vdCBhIHJlYWwgb25l alice@laptop\"",
        ),
        ("STATE_VERSION", "\"25.11\""),
        ("SITE", "\"wisc\""),
        ("EXPIRES", "\"2031-01-01T00:00:00Z\""),
        ("DEFAULT_PROFILE", "\"c220g5\""),
        ("NETWORK", "lan0"),
        ("PROFILE_NAME", "custom"),
        ("PROFILE_DESCRIPTION", "\"a c220g5\""),
        ("NODE_NAME", "\"head\""),
        ("HOST", "\"10.0.0.1\""),
        ("USER", "\"alice\""),
        ("NODE_PROFILE", "\"custom\""),
        ("ROLE", "\"ray-head\""),
        ("FEATURE", "\"+wasm\""),
        ("TAG", "\"gpu\""),
        ("CONTROL_IP", "\"155.98.36.1\""),
        ("LAN_NETWORK", "\"lan0\""),
        ("ADDRESS", "\"10.10.1.1/24\""),
        ("MAC", "\"90e2ba000001\""),
    ];
    let mut t = BASE.to_string();
    for (k, v) in defaults {
        let v = set
            .iter()
            .find(|(n, _)| n == k)
            .map_or(*v, |(_, v)| v.as_str());
        t = t.replace(&format!("@{k}@"), v);
    }
    t
}

#[test]
fn the_base_topology_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.toml");
    std::fs::write(&f, topology(&[])).unwrap();
    let o = edgectl(&["check", f.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Fields that name things edgectl passes to commands (SSH targets and users, flake refs and
/// attributes, file names, selectors) are validated to narrow alphabets: every payload is
/// refused, with the field named, and neither `check` nor `generate` runs anything.
#[test]
fn injection_in_a_command_reaching_field_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let f = dir.path().join("t.toml");
    // (placeholder, field reported, how to wrap the payload in TOML)
    type Wrap = fn(&str) -> String;
    let fields: &[(&str, &str, Wrap)] = &[
        ("CLUSTER_NAME", "cluster.name", toml),
        ("NIXPKGS", "cluster.nixpkgs", |s| {
            toml(&format!("github:NixOS/nixpkgs/nixos-25.11{s}"))
        }),
        ("SSH_USER", "cluster.ssh_user", toml),
        ("STATE_VERSION", "cluster.state_version", toml),
        ("DEFAULT_PROFILE", "defaults.profile", toml),
        ("NETWORK", "network.", toml),
        ("NODE_NAME", "node[0].name", toml),
        ("HOST", "node[0].host", toml),
        ("USER", "node[0].user", toml),
        ("NODE_PROFILE", "node[0].profile", toml),
        ("ROLE", "node[0].roles[0]", toml),
        ("FEATURE", "node[0].features[0]", toml),
        ("TAG", "node[0].tags[0]", toml),
        ("CONTROL_IP", "node[0].control_ip", toml),
        ("LAN_NETWORK", "node[0].lan[0].network", toml),
        ("ADDRESS", "node[0].lan[0].address", toml),
        ("MAC", "node[0].lan[0].mac", toml),
    ];
    let out = dir.path().join("out");
    let mut failures = Vec::new();
    for (placeholder, field, wrap) in fields {
        for p in payloads(&marker) {
            std::fs::write(&f, topology(&[(placeholder, wrap(&p))])).unwrap();
            let o = edgectl(&["check", "--json", f.to_str().unwrap()]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let named = v["diagnostics"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["field"].as_str().is_some_and(|x| x.starts_with(field)));
            if o.status.code() != Some(1) || !named {
                failures.push(format!(
                    "{placeholder} = {p:?}: exit {:?}, field {field} not named: {}",
                    o.status.code(),
                    String::from_utf8_lossy(&o.stdout)
                ));
            }
        }
        let p = &payloads(&marker)[2];
        std::fs::write(&f, topology(&[(placeholder, wrap(p))])).unwrap();
        let o = edgectl(&["generate", f.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        if o.status.code() != Some(1) || out.exists() {
            failures.push(format!(
                "generate with {placeholder} = {p:?} did not refuse"
            ));
        }
    }
    assert!(!marker.exists(), "a payload ran");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A CloudLab manifest is input too: a login host name or user name with a payload fails the
/// import (exit 1) and nothing is written.
#[test]
fn injection_through_an_imported_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let out = dir.path().join("cluster.toml");
    let f = dir.path().join("m.xml");
    std::fs::write(&f, manifest("c220g5-1.wisc.cloudlab.us", "alice")).unwrap();
    let o = edgectl(&[
        "import",
        "cloudlab",
        f.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::remove_file(&out).unwrap();
    for p in payloads(&marker) {
        let attr = p
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('"', "&quot;")
            .replace('\n', "&#10;");
        for (host, user) in [
            (attr.as_str(), "alice"),
            ("c220g5-1.wisc.cloudlab.us", &attr),
        ] {
            std::fs::write(&f, manifest(host, user)).unwrap();
            let o = edgectl(&[
                "import",
                "cloudlab",
                f.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{p:?}: {err}");
            assert!(
                err.contains("host") || err.contains("user"),
                "{p:?}: the error names neither host nor user:\n{err}"
            );
            assert!(!out.exists(), "{p:?}: wrote a topology");
        }
    }
    assert!(!marker.exists(), "a payload ran");
}

fn manifest(hostname: &str, user: &str) -> String {
    format!(
        r#"<rspec xmlns="http://www.geni.net/resources/rspec/3" type="manifest">
  <node client_id="n1" component_manager_id="urn:publicid:IDN+wisc.cloudlab.us+authority+cm" sliver_id="urn:publicid:IDN+wisc.cloudlab.us+sliver+1">
    <sliver_type name="raw-pc"/>
    <hardware_type name="c220g5"/>
    <services>
      <login authentication="ssh-keys" hostname="{hostname}" port="22" username="{user}"/>
    </services>
  </node>
</rspec>
"#
    )
}

fn nix_eval(dir: &Path, expr: &str) -> serde_json::Value {
    let o = Command::new("nix-instantiate")
        .env(
            "NIX_CONFIG",
            "substituters =\nsandbox = false\nbuild-users-group =",
        )
        .args(["--eval", "--strict", "--json", "--expr", expr])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "nix failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Free-text fields (an SSH key's comment, the site, the expiry, profile names and descriptions)
/// are accepted, so they must come out only as escaped literals: every generated .nix file
/// parses, Nix evaluates each key back to exactly itself, and topology.json holds the exact
/// values.
#[test]
fn free_text_reaches_generated_files_only_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let ps = payloads(&marker);
    // Keys may not hold a newline; everything else passes as the key's comment.
    let keys: Vec<String> = ps
        .iter()
        .filter(|p| !p.contains('\n'))
        .map(|p| format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVkZ2VjdGwgdGVzdCBrZXksIG5vdCBhIHJlYWwgb25l {p}"))
        .collect();
    let key_list = keys.iter().map(|k| toml(k)).collect::<Vec<_>>().join(", ");
    let f = dir.path().join("t.toml");
    std::fs::write(
        &f,
        topology(&[
            ("SSH_KEY", key_list),
            ("SITE", toml(&ps[2])),
            ("EXPIRES", toml(&ps[3])),
            ("PROFILE_NAME", toml(&ps[4])),
            ("NODE_PROFILE", toml(&ps[4])),
            ("PROFILE_DESCRIPTION", toml(&ps[10])),
        ]),
    )
    .unwrap();
    // The second node uses the profile by name too.
    let text = std::fs::read_to_string(&f).unwrap().replace(
        "profile = \"custom\"",
        &format!("profile = {}", toml(&ps[4])),
    );
    std::fs::write(&f, &text).unwrap();

    let out = dir.path().join("deploy");
    let o = edgectl(&["generate", f.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for e in walk(&out) {
        if e.extension().is_some_and(|x| x == "nix") {
            let src = std::fs::read_to_string(&e).unwrap();
            edgectl_render::check_parses(&e.display().to_string(), &src)
                .unwrap_or_else(|err| panic!("{err}"));
        }
    }
    let host = std::fs::read_to_string(out.join("hosts/head.nix")).unwrap();
    for k in &keys {
        assert!(
            host.contains(&edgectl_render::nix::string(k).unwrap()),
            "{k:?} is not one escaped literal in hosts/head.nix"
        );
    }
    let topo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("topology.json")).unwrap()).unwrap();
    assert_eq!(topo["ssh_keys"], serde_json::json!(keys));
    assert_eq!(topo["site"], ps[2].as_str());
    assert_eq!(topo["expires"], ps[3].as_str());
    assert_eq!(topo["nodes"][0]["profile"]["name"], ps[4].as_str());
    if edgectl_testkit::nix().is_some() {
        let v = nix_eval(
            &out,
            "(import ./hosts/head.nix {}).edge.access.sshKeys ++ [ (builtins.fromJSON (builtins.readFile ./topology.json)).site ]",
        );
        let mut want = keys.clone();
        want.push(ps[2].clone());
        assert_eq!(v, serde_json::json!(want));
    }

    // The export quotes the topology's path in a comment: a file name with a newline must not
    // end the comment and add code.
    let sneaky = dir
        .path()
        .join("t\nimport os; os.system('touch pwned')\n.toml");
    std::fs::copy(&f, &sneaky).unwrap();
    let py = dir.path().join("profile.py");
    let o = edgectl(&[
        "export",
        "cloudlab-profile",
        sneaky.to_str().unwrap(),
        "-o",
        py.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Compiled, never run: the modules it imports are geni-lib's and nothing else.
    let check = r#"
import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
print(" ".join(a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names))
"#;
    let python = Command::new("python3")
        .args(["-c", check, py.to_str().unwrap()])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"));
    if let Some(o) = edgectl_testkit::require("python3", python) {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "geni.portal geni.rspec.pg"
        );
    }
    assert!(!marker.exists(), "a payload ran");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Every command the deploy sends over SSH is argv quoted by `remote_command`: run through a
/// real `sh -c`, each payload arrives as one argument, byte for byte, and runs nothing.
#[test]
fn remote_commands_pass_payloads_as_data() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    for p in payloads(&marker) {
        let a = argv(["printf", "%s", p.as_str()]);
        // As root no sudo is prepended, so the line runs here unchanged.
        let line = remote_command("root", &a, true).unwrap();
        let o = Command::new("sh").arg("-c").arg(&line).output().unwrap();
        assert!(o.status.success(), "{line}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), p, "{line}");
        // As another user the same quoted line follows `sudo -n --`, never a shell of its own.
        assert_eq!(
            remote_command("alice", &a, true).unwrap(),
            format!("sudo -n -- {line}")
        );
        // A payload as the login user changes nothing in the line either.
        assert_eq!(remote_command(&p, &a, false).unwrap(), line);
        assert_eq!(quote::command(&a).unwrap(), line);
    }
    assert!(
        remote_command("root", &argv(["echo", "a\0b"]), true).is_none(),
        "a NUL cannot be quoted, so such a command is refused"
    );
    assert!(!marker.exists(), "a payload ran");
}

/// What goes over the wire runs the same under every login shell a node may give its user
/// (CloudLab offers tcsh): each payload, and a multi-line script, arrive unchanged.
#[test]
fn wire_commands_run_the_same_under_any_login_shell() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let mut shells = vec!["sh".to_string(), "bash".to_string()];
    if let Some(t) = edgectl_testkit::require("tcsh", edgectl_testkit::tool("tcsh")) {
        shells.push(t.display().to_string());
    }
    let script = "set -u\nx='two\nlines'\nprintf '%s|%s' \"$x\" \"$1\"\n";
    for p in payloads(&marker).iter().chain([&"!$ !! !-1".to_string()]) {
        for a in [
            argv(["printf", "%s", p.as_str()]),
            argv(["sh", "-c", script, "edgectl-test", p.as_str()]),
        ] {
            let want = if a[0] == "printf" {
                p.clone()
            } else {
                format!("two\nlines|{p}")
            };
            let line = edgectl_deploy::host::wire_command("root", &a, true).unwrap();
            assert!(
                line.is_ascii() && !line.contains('\n') && !line.contains('!'),
                "{line}"
            );
            for sh in &shells {
                let o = Command::new(sh).arg("-c").arg(&line).output().unwrap();
                assert!(
                    o.status.success(),
                    "{sh}: {line}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                assert_eq!(String::from_utf8_lossy(&o.stdout), want, "{sh}: {p:?}");
            }
        }
    }
    assert!(!marker.exists(), "a payload ran");
}

/// Uploads (keys, activation scripts) run a fixed script with the path as `$1`: a hostile path
/// is one file name, and the payload in it never runs.
#[test]
fn upload_paths_are_data() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    for (i, p) in payloads(&marker).iter().enumerate() {
        let name = p.replace('/', "_");
        let path = dir.path().join(format!("{i}")).join(&name);
        let path = path.to_str().unwrap();
        let a = argv(["sh", "-c", UPLOAD, "edgectl-upload", path, "600"]);
        let line = remote_command("root", &a, true).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&line)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"secret").unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success(), "{line}");
        assert_eq!(std::fs::read(path).unwrap(), b"secret", "{p:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{p:?}");
        }
    }
    assert!(!marker.exists(), "a payload ran");
}
