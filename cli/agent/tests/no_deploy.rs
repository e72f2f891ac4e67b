//! The node daemon does not depend on deploy: `edgectl-agent` reaches no `edgectl-deploy`
//! through its dependencies (normal, build or target-specific), directly or through another
//! path crate. The controller side that needs deploy is `cli/verify` (`edgectl-verify`).
//! Read from the manifests, so it needs neither cargo nor the network.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const FORBIDDEN: &str = "edgectl-deploy";

fn manifest(dir: &Path) -> toml::Table {
    let p = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The dependency tables that end up in the crate's build: `[dependencies]`,
/// `[build-dependencies]` and their `[target.'cfg(..)'.*]` forms; not dev-dependencies.
fn dep_tables(m: &toml::Table) -> Vec<&toml::Table> {
    let mut scopes = vec![m];
    if let Some(targets) = m.get("target").and_then(|v| v.as_table()) {
        scopes.extend(targets.values().filter_map(|v| v.as_table()));
    }
    scopes
        .into_iter()
        .flat_map(|t| {
            ["dependencies", "build-dependencies", "build_dependencies"]
                .into_iter()
                .filter_map(move |k| t.get(k).and_then(|v| v.as_table()))
        })
        .collect()
}

/// Every package `dir`'s crate pulls in from this repository (by package name), following
/// path dependencies, whether spelled out or inherited from the workspace.
fn local_deps(root: &Path, dir: &Path, seen: &mut BTreeSet<String>) {
    let ws = manifest(root);
    let ws_deps = ws
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(|v| v.as_table())
        .cloned()
        .unwrap_or_default();
    let m = manifest(dir);
    for deps in dep_tables(&m) {
        for (key, spec) in deps {
            let inherited = spec.get("workspace").and_then(|v| v.as_bool()) == Some(true);
            let (spec, base) = if inherited {
                (ws_deps.get(key).unwrap_or(spec), root)
            } else {
                (spec, dir)
            };
            let name = spec
                .get("package")
                .and_then(|v| v.as_str())
                .unwrap_or(key)
                .to_string();
            let path = spec.get("path").and_then(|v| v.as_str());
            if !seen.insert(name.clone()) {
                continue;
            }
            if let Some(p) = path {
                local_deps(root, &base.join(p), seen);
            }
        }
    }
}

#[test]
fn the_node_agent_does_not_depend_on_deploy() {
    let agent = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = agent.join("../..");
    let mut seen = BTreeSet::new();
    local_deps(&root, &agent, &mut seen);
    // The walk works: it sees the agent's own dependencies.
    assert!(seen.contains("quinn"), "{seen:?}");
    assert!(
        !seen.contains(FORBIDDEN),
        "edgectl-agent (the node daemon) depends on {FORBIDDEN}: {seen:?}; controller code that \
         needs deploy belongs in cli/verify (edgectl-verify)"
    );
}
