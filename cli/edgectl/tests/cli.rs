//! The `edgectl` binary end to end: exit codes, output formats, and bad input of every shape.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn edgectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(args)
        .output()
        .expect("runs")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Bad input must fail with exit 1, say what is wrong, and never panic.
fn assert_clean_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr:\n{err}");
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
}

#[test]
fn check_example_prints_table() {
    let ex = repo().join("examples/edge-lab.toml");
    let o = edgectl(&["check", ex.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for want in [
        "NODE",
        "head",
        "worker3",
        "c240g5",
        "Tesla P100",
        "ray-head",
        "cuda",
    ] {
        assert!(out.contains(want), "missing {want} in:\n{out}");
    }
}

#[test]
fn check_json_is_machine_readable() {
    let ex = repo().join("examples/p4-lab.toml");
    let o = edgectl(&["check", "--json", ex.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["ok"], true);
    let nodes = v["cluster"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[0]["profile"]["gpus"][0]["compute_capability"], "6.1");
    assert_eq!(nodes[0]["profile"]["extends"][0], "c220g5");
}

#[test]
fn invalid_topology_json_lists_every_problem() {
    let f = repo().join("cli/model/tests/multi-error.toml");
    let o = edgectl(&["check", "--json", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let d = v["diagnostics"].as_array().unwrap();
    assert!(d.len() >= 6);
    for x in d {
        assert!(
            x["line"].as_u64().unwrap() > 0
                && x["file"].as_str().unwrap().ends_with("multi-error.toml")
        );
        assert!(x["kind"].is_string() && x["message"].is_string() && x["help"].is_string());
    }
}

#[test]
fn invalid_topology_renders_like_rustc() {
    let f = repo().join("cli/model/tests/multi-error.toml");
    let o = edgectl(&["--color", "never", "check", f.to_str().unwrap()]);
    let err = stderr(&o);
    assert_clean_error(&o, "multi-error.toml:16:9");
    assert!(err.contains("did you mean `address`?"), "{err}");
    assert!(err.contains("problems found"), "{err}");
}

#[test]
fn bad_files_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);

    std::fs::write(p("empty.toml"), "").unwrap();
    assert_clean_error(
        &edgectl(&["check", p("empty.toml").to_str().unwrap()]),
        "file is empty",
    );

    std::fs::write(p("binary.toml"), b"\x7fELF\x02\x01\x01\x00\x00\x00garbage").unwrap();
    assert_clean_error(
        &edgectl(&["check", p("binary.toml").to_str().unwrap()]),
        "NUL byte",
    );

    std::fs::write(p("latin1.toml"), b"[cluster]\nname = \"caf\xe9\"\n").unwrap();
    assert_clean_error(
        &edgectl(&["check", p("latin1.toml").to_str().unwrap()]),
        "not valid UTF-8",
    );

    let big = "# padding\n".repeat(5 * 1024 * 1024);
    std::fs::write(p("big.toml"), big).unwrap();
    assert_clean_error(
        &edgectl(&["check", p("big.toml").to_str().unwrap()]),
        "the limit is",
    );

    std::fs::write(
        p("deep.toml"),
        format!("x = {}1{}\n", "[".repeat(100_000), "]".repeat(100_000)),
    )
    .unwrap();
    assert_clean_error(
        &edgectl(&["check", p("deep.toml").to_str().unwrap()]),
        "nested",
    );

    std::fs::write(
        p("deeptable.toml"),
        format!("x = {}1{}\n", "{a=".repeat(10_000), "}".repeat(10_000)),
    )
    .unwrap();
    assert_clean_error(
        &edgectl(&["check", p("deeptable.toml").to_str().unwrap()]),
        "nested",
    );

    std::fs::write(
        p("deepdots.toml"),
        format!("[{}]\nx = 1\n", vec!["a"; 50_000].join(".")),
    )
    .unwrap();
    let o = edgectl(&["check", p("deepdots.toml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!stderr(&o).contains("panicked"));

    assert_clean_error(
        &edgectl(&["check", dir.path().to_str().unwrap()]),
        "directory",
    );
    assert_clean_error(
        &edgectl(&["check", p("missing.toml").to_str().unwrap()]),
        "cannot read file",
    );

    let fifo = p("fifo.toml");
    let made = match Command::new("mkfifo").arg(&fifo).status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("mkfifo failed ({s})")),
        Err(e) => Err(format!("cannot run mkfifo: {e}")),
    };
    if edgectl_testkit::require("mkfifo", made).is_some() {
        assert_clean_error(
            &edgectl(&["check", fifo.to_str().unwrap()]),
            "not a regular file",
        );
    }
}

#[test]
fn ten_thousand_nodes_check() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("big-cluster.toml");
    std::fs::write(&f, edgectl_model::synth::cluster_toml(10_000)).unwrap();
    let o = edgectl(&["check", "--json", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["cluster"]["nodes"].as_array().unwrap().len(), 10_000);

    // The same file with every MAC duplicated: 9,999 errors, reported, not drawn one by one.
    let dup = edgectl_model::synth::cluster_toml(10_000)
        .replace("mac = \"02", "mac = \"03")
        .lines()
        .map(|l| {
            if l.starts_with("lan = ") {
                "lan = { address = \"10.10.0.1/16\", mac = \"020000000000\" }".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&f, dup).unwrap();
    let o = edgectl(&["--color", "never", "check", f.to_str().unwrap()]);
    assert_clean_error(&o, "problems found");
    assert!(
        stderr(&o).lines().count() < 60_000,
        "each extra problem takes one line"
    );
}

#[test]
fn help_documents_exit_codes_and_completions_work() {
    let o = edgectl(&["--help"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Exit codes") && out.contains("4  `verify`"),
        "{out}"
    );
    let o = edgectl(&["check", "--help"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Exit codes"));
    for shell in ["bash", "zsh", "fish"] {
        let o = edgectl(&["completions", shell]);
        assert_eq!(o.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&o.stdout).contains("edgectl"));
    }
}

#[test]
fn profiles_lists_builtins_and_user_dirs() {
    let o = edgectl(&["profiles", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for n in [
        "c220g5",
        "c240g5",
        "c220g1",
        "c220g2",
        "c4130",
        "d7525",
        "c6525-100g",
        "m510",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let dir = repo().join("examples/profiles");
    let o = edgectl(&[
        "profiles",
        "c220g5-p4",
        "--json",
        "--profiles",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["gpus"][0]["model"], "Tesla P4");
    assert_eq!(
        v["cpu"]["model"],
        "Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz"
    );
}

/// A node whose boot disk and root device nobody has recorded would be built with a guess and
/// never boot again: plan and apply refuse before building or connecting, name the nodes and
/// say how to learn the facts; with them in the topology, that refusal is gone.
#[test]
fn plan_and_apply_refuse_nodes_whose_boot_disk_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("lab.toml");
    std::fs::copy(repo().join("examples/edge-lab.toml"), &f).unwrap();
    for cmd in ["plan", "apply"] {
        let o = edgectl(&[cmd, f.to_str().unwrap(), "--on", "head,worker1"]);
        assert_clean_error(
            &o,
            "the boot disk and root device of head, worker1 are unknown",
        );
        assert!(
            stderr(&o).contains("--on head,worker1 --until facts"),
            "{}",
            stderr(&o)
        );
        assert!(
            !dir.path().join(".edgectl/flake").exists(),
            "{cmd} rendered or built before refusing"
        );
    }
    // The disk and root without the file system are not enough either.
    let text = std::fs::read_to_string(&f).unwrap().replacen(
        "name = \"head\"",
        "name = \"head\"\nboot_disk = \"/dev/disk/by-id/wwn-0x5000c500a1b2c3d4\"\nroot_device = \"/dev/disk/by-uuid/0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9\"",
        1,
    );
    std::fs::write(&f, &text).unwrap();
    let o = edgectl(&["plan", f.to_str().unwrap(), "--on", "head"]);
    assert_clean_error(&o, "the boot disk and root device of head are unknown");
    // The three facts in the topology lift the refusal (the next step then needs Nix and the
    // node); so does a hardware/<node>.toml beside it.
    std::fs::write(
        &f,
        text.replacen("root_device = ", "root_fs = \"ext4\"\nroot_device = ", 1),
    )
    .unwrap();
    let o = edgectl(&["plan", f.to_str().unwrap(), "--on", "head"]);
    assert!(!stderr(&o).contains("are unknown"), "{}", stderr(&o));
    std::fs::create_dir(dir.path().join("hardware")).unwrap();
    std::fs::write(
        dir.path().join("hardware/worker1.toml"),
        "boot_disk = \"/dev/disk/by-id/wwn-1\"\ngrub_device = \"/dev/disk/by-id/wwn-1-part1\"\n\
         root_device = \"/dev/disk/by-uuid/u1\"\nroot_fs = \"ext4\"\nboot_mode = \"bios\"\n",
    )
    .unwrap();
    let o = edgectl(&["plan", f.to_str().unwrap(), "--on", "worker1"]);
    assert!(!stderr(&o).contains("are unknown"), "{}", stderr(&o));
    // A bad hardware file is a diagnostic that names it.
    std::fs::write(dir.path().join("hardware/worker1.toml"), "boot_disk = 3\n").unwrap();
    let o = edgectl(&["check", f.to_str().unwrap()]);
    assert_clean_error(&o, "worker1.toml");
    std::fs::remove_file(dir.path().join("hardware/worker1.toml")).unwrap();
    // A value that is no device path is a topology error with the field named.
    let text = std::fs::read_to_string(&f).unwrap().replacen(
        "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4",
        "sda; reboot",
        1,
    );
    std::fs::write(&f, text).unwrap();
    let o = edgectl(&["check", f.to_str().unwrap()]);
    assert_clean_error(&o, "boot_disk");
}

/// `login_uid` (CloudLab's per-user uid, which install records) reaches the generated host as
/// `edge.cloudlab.loginUid`, which the module turns into the login user's uid; root's is 0
/// and not allowed.
#[test]
fn login_uid_reaches_the_generated_host() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cluster.toml");
    let text = std::fs::read_to_string(repo().join("examples/edge-lab.toml"))
        .unwrap()
        .replacen("name = \"head\"", "name = \"head\"\nlogin_uid = 20001", 1);
    std::fs::write(&f, &text).unwrap();
    let out = dir.path().join("flake");
    let o = edgectl(&[
        "generate",
        f.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The machine facts go to hosts/<node>-hardware.nix, which the host file imports.
    let head = std::fs::read_to_string(out.join("hosts/head-hardware.nix")).unwrap();
    assert!(head.contains("loginUid = 20001;"), "{head}");
    let host = std::fs::read_to_string(out.join("hosts/head.nix")).unwrap();
    assert!(host.contains("/head-hardware.nix"), "{host}");
    assert!(!out.join("hosts/worker1-hardware.nix").exists());
    std::fs::write(&f, text.replacen("login_uid = 20001", "login_uid = 0", 1)).unwrap();
    let o = edgectl(&["check", f.to_str().unwrap()]);
    assert_clean_error(&o, "login_uid");
}

/// `edgectl agent --gpu-check PROFILE` (what scripts/gpu-check.sh runs) through a stand-in
/// nvidia-smi that answers with the agent's recordings: all pass on the right profile, exit 4
/// on the wrong one, exit 1 without a GPU.
#[test]
fn agent_gpu_check_judges_this_machines_gpus() {
    let fixtures = repo().join("cli/agent/tests/fixtures/nvidia-smi");
    let machines = repo().join("cli/verify/tests/facts/machines");
    let d = tempfile::tempdir().unwrap();
    let smi = d.path().join("nvidia-smi");
    let install = |recording: &str, machine: &str| {
        let body = format!(
            "#!/bin/sh\ncase \"$1\" in\n\
             -q) cat '{f}/{recording}.xml' ;;\n\
             --query-gpu=index,name,compute_cap,memory.total) cat '{f}/{recording}.query.csv' ;;\n\
             --query-gpu=name,memory.total,driver_version,compute_cap) cat '{m}/{machine}/nvidia-smi.csv' ;;\n\
             *) echo 'No devices were found'; exit 6 ;;\nesac\n",
            f = fixtures.display(),
            m = machines.display()
        );
        std::fs::write(&smi, body).unwrap();
        std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    };
    let path = format!(
        "{}:{}",
        d.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |profile: &str| {
        Command::new(env!("CARGO_BIN_EXE_edgectl"))
            .args(["agent", "--gpu-check", profile])
            .env("PATH", &path)
            .output()
            .unwrap()
    };
    install("c4130-v100x4", "c4130");
    let o = run("c4130");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    for want in [
        "00000000:86:00.0",
        "580.119.02",
        "gpu Tesla V100-SXM2-16GB pcie width",
        "6 passed, 0 failed, 0 skipped",
    ] {
        assert!(out.contains(want), "missing {want} in:\n{out}");
    }
    install("c240g5-p100", "c240g5");
    let o = run("c4130");
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 passed, 1 failed, 5 skipped"));
    let o = run("c240g5");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // No GPU: nvidia-smi there but failing.
    std::fs::write(&smi, "#!/bin/sh\necho 'No devices were found'; exit 6\n").unwrap();
    assert_clean_error(&run("c4130"), "no NVIDIA GPU on this machine");
    install("c4130-v100x4", "c4130");
    assert_clean_error(&run("no-such-profile"), "unknown profile `no-such-profile`");
}
