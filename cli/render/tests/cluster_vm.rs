//! checks/cluster-vm.nix, the NixOS VM test in which a controller VM runs `edgectl apply` and
//! `edgectl verify` against two node VMs. It needs KVM and nixpkgs, so it cannot run here; these
//! check what can be checked without them: its Nix files parse, flake.nix runs it as a check,
//! its topology is valid, its host files are what `edgectl generate` writes for that topology
//! (the test builds the nodes' systems from them ahead of time and apply must arrive at the
//! same ones), and the options its NixOS modules set exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use edgectl_model::{LoadOptions, load};
use edgectl_render::options::{OptionTree, module_paths};
use edgectl_render::{MODULES, check_parses, render};
use rnix::ast;
use rowan::ast::AstNode;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const DIR: &str = "checks/cluster-vm";

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// checks/cluster-vm.nix and every .nix file under checks/cluster-vm/, relative to the repo.
fn nix_files() -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                walk(&p, &format!("{rel}/{name}"), out);
            } else if name.ends_with(".nix") {
                out.push(format!("{rel}/{name}"));
            }
        }
    }
    let mut out = vec![format!("{DIR}.nix")];
    walk(&repo().join(DIR), DIR, &mut out);
    out
}

#[test]
fn its_nix_files_and_the_flake_parse() {
    let files = nix_files();
    for rel in files.iter().map(String::as_str).chain(["flake.nix"]) {
        if let Err(e) = check_parses(rel, &read(rel)) {
            panic!("{e}");
        }
    }
    for want in [
        "checks/cluster-vm.nix",
        "checks/cluster-vm/nixos-system.nix",
        "checks/cluster-vm/deployed.nix",
        "checks/cluster-vm/node.nix",
        "checks/cluster-vm/controller.nix",
        "checks/cluster-vm/hosts/head.nix",
    ] {
        assert!(files.iter().any(|f| f == want), "{want} is missing");
    }
}

#[test]
fn real_nix_parses_its_files_and_reads_its_topology() {
    let Some(_) = edgectl_testkit::nix() else {
        return;
    };
    let nix = || {
        let mut c = Command::new("nix-instantiate");
        c.env("NIX_CONFIG", "substituters =\nbuild-users-group =");
        c
    };
    for rel in nix_files() {
        let o = nix()
            .arg("--parse")
            .arg(repo().join(&rel))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{rel}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // checks/cluster-vm.nix reads the topology with builtins.fromTOML, not with our parser.
    let toml = repo().join(DIR).join("cluster.toml");
    let expr = format!(
        "map (n: [n.name n.lan.address n.lan.mac]) (builtins.fromTOML (builtins.readFile {})).node",
        toml.display()
    );
    let o = nix()
        .args(["--eval", "--strict", "--json", "--expr", &expr])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let nodes: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        nodes,
        serde_json::json!([
            ["head", "192.168.1.2/24", "525400120102"],
            ["worker1", "192.168.1.3/24", "525400120103"]
        ])
    );
}

#[test]
fn flake_runs_it_as_checks_cluster_vm() {
    let src = read("flake.nix");
    let root = rnix::Root::parse(&src);
    assert!(root.errors().is_empty(), "flake.nix: {:?}", root.errors());
    // `cluster-vm = import ./checks/cluster-vm.nix {...};` somewhere inside `checks.${system} = ...`.
    let found = root
        .syntax()
        .descendants()
        .filter_map(ast::AttrpathValue::cast)
        .filter(|kv| {
            kv.attrpath()
                .is_some_and(|p| p.syntax().text() == "cluster-vm")
        })
        .filter(|kv| {
            kv.value().is_some_and(|v| {
                v.syntax()
                    .text()
                    .to_string()
                    .contains("./checks/cluster-vm.nix")
            })
        })
        .any(|kv| {
            kv.syntax()
                .ancestors()
                .skip(1)
                .filter_map(ast::AttrpathValue::cast)
                .any(|outer| {
                    outer
                        .attrpath()
                        .is_some_and(|p| p.syntax().text().to_string().starts_with("checks."))
                })
        });
    assert!(
        found,
        "flake.nix has no `cluster-vm = import ./checks/cluster-vm.nix ...` under checks.${{system}}"
    );
}

#[test]
fn its_topology_is_valid_and_its_hosts_are_current() {
    let cluster = load(
        &repo().join(DIR).join("cluster.toml"),
        &LoadOptions::default(),
    )
    .unwrap_or_else(|d| panic!("{DIR}/cluster.toml is refused by `edgectl check`: {d:?}"))
    .cluster;
    let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    // The test script and node.nix know them by these names (cluster-vm.nix asserts it too).
    assert_eq!(names, ["head", "worker1"]);
    let files = render(&cluster).unwrap();
    let generated: BTreeSet<String> = files
        .keys()
        .filter_map(|k| k.strip_prefix("hosts/").map(String::from))
        .collect();
    let committed: BTreeSet<String> = std::fs::read_dir(repo().join(DIR).join("hosts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let hint = "run scripts/update-hosts.sh";
    assert_eq!(generated, committed, "{DIR}/hosts is stale: {hint}");
    for name in &generated {
        assert_eq!(
            files[&format!("hosts/{name}")],
            read(&format!("{DIR}/hosts/{name}")),
            "{DIR}/hosts/{name} is stale: {hint}"
        );
    }
}

#[test]
fn the_options_its_modules_set_exist() {
    let Some(tsv) = edgectl_testkit::shared(env!("CARGO_MANIFEST_DIR"), "data/nixos-options.tsv")
    else {
        return;
    };
    let mut nixos = OptionTree::from_tsv(&std::fs::read_to_string(tsv).unwrap());
    for line in read("checks/nixos-options-supplement.tsv")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (name, ty) = line.split_once('\t').unwrap_or((line, ""));
        nixos.insert(&name.split('.').map(String::from).collect::<Vec<_>>(), ty);
    }
    let mut edge = OptionTree::default();
    for (rel, text) in MODULES
        .iter()
        .filter(|(rel, _)| !rel.starts_with("lib/") && rel.ends_with(".nix"))
    {
        let (_, decls) = module_paths(text).unwrap_or_else(|e| panic!("modules/{rel}: {e}"));
        for d in decls {
            edge.insert(&d.path, "declared");
        }
    }
    let mut unknown = Vec::new();
    let mut n = 0;
    for rel in ["deployed.nix", "node.nix", "controller.nix"] {
        let rel = format!("{DIR}/{rel}");
        let (sets, _) = module_paths(&read(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        for s in sets {
            n += 1;
            let ok = if s.path[0] == "edge" {
                edge.allows(&s.path)
            } else {
                nixos.allows(&s.path)
            };
            if !ok {
                unknown.push(format!("{rel}:{}: {}", s.line, s.dotted()));
            }
        }
    }
    assert!(n >= 10, "the walker found only {n} paths");
    assert!(
        unknown.is_empty(),
        "option paths that do not exist in NixOS:\n{}",
        unknown.join("\n")
    );
}
