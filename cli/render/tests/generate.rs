//! The generated flake: golden hosts, determinism, atomic writes, parsing by rnix and by real
//! Nix, option paths that exist in NixOS, and exact escaping of arbitrary strings.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use edgectl_model::{Cluster, LoadOptions, load};
use edgectl_render::options::{OptionTree, module_paths};
use edgectl_render::write::{WriteError, write_dir};
use edgectl_render::{MARKER, MODULES, render};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example() -> Cluster {
    load(
        &repo().join("examples/edge-lab.toml"),
        &LoadOptions::default(),
    )
    .expect("example is valid")
    .cluster
}

fn nix_cmd() -> Command {
    let mut c = Command::new("nix-instantiate");
    c.env("NIX_CONFIG", "substituters =\nsandbox = false\nbuild-users-group =\nexperimental-features = nix-command flakes");
    c
}

#[test]
fn committed_hosts_match_what_generate_writes_now() {
    let files = render(&example()).unwrap();
    let generated: BTreeSet<String> = files
        .keys()
        .filter_map(|k| k.strip_prefix("hosts/").map(String::from))
        .collect();
    let committed: BTreeSet<String> = std::fs::read_dir(repo().join("hosts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        generated, committed,
        "hosts/ is stale: run scripts/update-hosts.sh"
    );
    for name in &generated {
        let now = &files[&format!("hosts/{name}")];
        let then = std::fs::read_to_string(repo().join("hosts").join(name)).unwrap();
        assert_eq!(
            now, &then,
            "hosts/{name} is stale: run scripts/update-hosts.sh"
        );
    }
}

#[test]
fn output_is_deterministic_and_rewrites_are_noops() {
    let c = example();
    let a = render(&c).unwrap();
    let b = render(&c).unwrap();
    assert_eq!(a, b);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("deploy");
    assert!(
        write_dir(&out, &a, false).unwrap(),
        "first write changes the directory"
    );
    assert!(
        !write_dir(&out, &b, false).unwrap(),
        "an identical rewrite changes nothing"
    );
    for (rel, text) in &a {
        assert_eq!(&std::fs::read_to_string(out.join(rel)).unwrap(), text);
    }
    assert!(out.join(MARKER).exists());
    // No temporary directories are left beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "deploy")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn refuses_foreign_directories_and_fails_without_touching_them() {
    let files = render(&example()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mine = dir.path().join("precious");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep me").unwrap();
    match write_dir(&mine, &files, false) {
        Err(WriteError::NotOurs(_)) => {}
        other => panic!("expected NotOurs, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(mine.join("notes.txt")).unwrap(),
        "keep me"
    );
    assert!(!mine.join("flake.nix").exists());

    // A target whose parent is a file cannot be written: an error, and nothing appears.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    assert!(write_dir(&blocker.join("out"), &files, false).is_err());
    assert_eq!(std::fs::read_to_string(&blocker).unwrap(), "x");

    // --force replaces a foreign directory whole.
    assert!(write_dir(&mine, &files, true).unwrap());
    assert!(mine.join("flake.nix").exists() && !mine.join("notes.txt").exists());
}

#[test]
fn every_generated_nix_file_parses_with_real_nix() {
    if edgectl_testkit::nix().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("deploy");
    write_dir(&out, &render(&example()).unwrap(), false).unwrap();
    let mut n = 0;
    for rel in render(&example())
        .unwrap()
        .keys()
        .filter(|k| k.ends_with(".nix"))
    {
        let o = nix_cmd()
            .arg("--parse")
            .arg(out.join(rel))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{rel}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        n += 1;
    }
    for rel in ["flake.nix", "checks/lib-tests-drv.nix"] {
        let o = nix_cmd()
            .arg("--parse")
            .arg(repo().join(rel))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{rel}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(n >= 5, "parsed {n} files");
}

fn option_tree() -> Option<OptionTree> {
    let tsv = edgectl_testkit::shared(env!("CARGO_MANIFEST_DIR"), "data/nixos-options.tsv")?;
    let text = std::fs::read_to_string(&tsv).unwrap();
    let mut tree = OptionTree::from_tsv(&text);
    let supplement =
        std::fs::read_to_string(repo().join("checks/nixos-options-supplement.tsv")).unwrap();
    for line in supplement
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (name, ty) = line.split_once('\t').unwrap_or((line, ""));
        tree.insert(&name.split('.').map(String::from).collect::<Vec<_>>(), ty);
    }
    Some(tree)
}

#[test]
fn every_option_set_by_modules_and_hosts_exists() {
    let Some(nixos) = option_tree() else { return };
    // Our own options, as the modules declare them.
    let mut edge = OptionTree::default();
    let mut sets = Vec::new();
    for (rel, text) in MODULES
        .iter()
        .filter(|(rel, _)| !rel.starts_with("lib/") && rel.ends_with(".nix"))
    {
        let (s, decls) = module_paths(text).unwrap_or_else(|e| panic!("modules/{rel}: {e}"));
        for d in decls {
            edge.insert(&d.path, "declared");
        }
        sets.extend(s.into_iter().map(|s| (format!("modules/{rel}"), s)));
    }
    for (rel, text) in render(&example())
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("hosts/"))
    {
        let (s, _) = module_paths(text).unwrap();
        assert!(
            s.iter().all(|p| p.path[0] == "edge"),
            "{rel} sets something other than edge.*"
        );
        sets.extend(s.into_iter().map(|s| (rel.clone(), s)));
    }
    let mut unknown = Vec::new();
    for (file, s) in &sets {
        let ok = if s.path[0] == "edge" {
            edge.allows(&s.path)
        } else {
            nixos.allows(&s.path)
        };
        if !ok {
            unknown.push(format!("{file}:{}: {}", s.line, s.dotted()));
        }
    }
    assert!(
        sets.len() > 20,
        "the walker found only {} paths",
        sets.len()
    );
    assert!(
        unknown.is_empty(),
        "option paths that do not exist in NixOS:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn a_typo_in_an_option_path_is_caught() {
    let Some(nixos) = option_tree() else { return };
    let (sets, _) =
        module_paths("{ lib, ... }: { config = lib.mkIf true { hardware.nvidia.opn = false; }; }")
            .unwrap();
    assert!(!nixos.allows(&sets[0].path));
    let (sets, _) =
        module_paths("{ lib, ... }: { config = lib.mkIf true { hardware.nvidia.open = false; }; }")
            .unwrap();
    assert!(nixos.allows(&sets[0].path));
}

#[test]
fn no_ssh_keys_is_refused() {
    let mut c = example();
    c.ssh_keys.clear();
    assert!(render(&c).unwrap_err().to_string().contains("ssh_keys"));
}

#[test]
fn nul_in_a_value_is_an_error_not_a_broken_file() {
    let mut c = example();
    c.nodes[0].user = "ali\0ce".into();
    let e = render(&c).unwrap_err();
    assert!(e.to_string().contains("NUL"), "{e}");
}

/// The nodes' agent is edgectl's own package: the generated flake takes edgectl as an input
/// (the topology's `edgectl_flake`, else the source this binary was built from) and sets
/// `edge.agent.package` from it, before the host file so the host file stays last.
#[test]
fn the_agent_package_comes_from_the_edgectl_input() {
    let mut c = example();
    let flake = &render(&c).unwrap()["flake.nix"];
    let default = edgectl_render::default_edgectl_flake();
    assert!(
        default.starts_with("git+file:///") || default.starts_with("path:/"),
        "{default}"
    );
    assert!(flake.contains(&format!("url = {default:?};")), "{flake}");
    assert!(flake.contains(r#"inputs.nixpkgs.follows = "nixpkgs";"#));
    let pkg = flake
        .find("{edge.agent.package = edgectl.packages.${system}.edgectl;}")
        .expect("the agent package is set");
    assert!(pkg < flake.find("file\n").unwrap(), "{flake}");

    c.edgectl_flake = Some("github:example/edgectl/v1".into());
    let flake = &render(&c).unwrap()["flake.nix"];
    assert!(
        flake.contains(r#"url = "github:example/edgectl/v1";"#),
        "{flake}"
    );
}
