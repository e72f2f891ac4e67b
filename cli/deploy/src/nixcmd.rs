//! The controller's Nix: one evaluation and build for every selected host, and closure facts
//! from Nix's own JSON (`nix path-info --json`), as the project decided over hand parsers.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// Why a call of the controller's Nix gave no answer edgectl can use.
#[derive(Debug)]
pub enum NixError {
    /// `nix` could not be started at all.
    Missing(std::io::Error),
    /// `nix build` failed; `stderr` is Nix's own account (evaluation or build errors).
    Build { stderr: String },
    /// `nix path-info` failed for `path`.
    PathInfo { path: String, stderr: String },
    /// Nix printed something edgectl does not understand.
    Output { what: &'static str, detail: String },
}

impl std::fmt::Display for NixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NixError::Missing(e) => write!(
                f,
                "cannot run nix: {e}; install Nix >= 2.18 and put `nix` on PATH (scripts/setup.sh does)"
            ),
            NixError::Build { stderr } => write!(
                f,
                "nix build failed; fix what Nix reports below (`edgectl generate` writes the flake to read), then run again:\n{stderr}"
            ),
            NixError::PathInfo { path, stderr } => write!(
                f,
                "nix path-info {path} failed ({stderr}); build it first, or check that this machine's store holds it"
            ),
            NixError::Output { what, detail } => write!(
                f,
                "{what} printed what edgectl does not understand ({detail}); check `nix --version` (>= 2.18 is supported)"
            ),
        }
    }
}

impl std::error::Error for NixError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NixError::Missing(e) => Some(e),
            _ => None,
        }
    }
}

/// Flags for every nix call: flakes on, and any `--override-input` the user gave.
#[derive(Debug, Clone, Default)]
pub struct NixArgs {
    pub overrides: Vec<(String, String)>,
}

impl NixArgs {
    fn apply(&self, c: &mut Command) {
        c.args(["--extra-experimental-features", "nix-command flakes"]);
        for (i, r) in &self.overrides {
            c.args(["--override-input", i, r]);
        }
    }
}

/// Builds `nixosConfigurations.<node>.config.system.build.toplevel` for every node in one
/// `nix build` (one evaluation); returns node -> store path.
pub fn build_toplevels(
    flake: &Path,
    nodes: &[String],
    args: &NixArgs,
) -> Result<BTreeMap<String, String>, NixError> {
    if nodes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let url = format!("path:{}", flake.display());
    let mut c = Command::new("nix");
    c.args(["build", "--no-link", "--json", "--no-write-lock-file"]);
    args.apply(&mut c);
    for n in nodes {
        c.arg(format!(
            "{url}#nixosConfigurations.\"{n}\".config.system.build.toplevel"
        ));
    }
    let o = c.output().map_err(NixError::Missing)?;
    if !o.status.success() {
        return Err(NixError::Build {
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    let odd = |detail: String| NixError::Output {
        what: "nix build --json",
        detail,
    };
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).map_err(|e| odd(e.to_string()))?;
    let arr = v.as_array().ok_or_else(|| odd("not a list".into()))?;
    if arr.len() != nodes.len() {
        return Err(odd(format!(
            "{} results for {} hosts",
            arr.len(),
            nodes.len()
        )));
    }
    let mut out = BTreeMap::new();
    for (n, r) in nodes.iter().zip(arr) {
        let p = r["outputs"]["out"]
            .as_str()
            .ok_or_else(|| odd(format!("no output for {n}")))?;
        out.insert(n.clone(), p.to_string());
    }
    Ok(out)
}

/// A node's system as a derivation to build (`--build-on nodes`): the `.drv` (in this machine's
/// store once evaluated) and the output path it will produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instantiated {
    pub drv: String,
    pub out: String,
}

/// The `--apply` function for [`instantiate_toplevels`]: the selected configurations' toplevel
/// derivation and output paths, by node. Only those are forced; the names are Nix strings.
pub fn instantiate_expr(nodes: &[String]) -> Result<String, NixError> {
    let names = nodes
        .iter()
        .map(|n| edgectl_render::nix::string(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NixError::Output {
            what: "a node name",
            detail: format!("a NUL in {:?}", e.0),
        })?;
    Ok(format!(
        "cs: builtins.listToAttrs (map (n: let t = cs.${{n}}.config.system.build.toplevel; in {{ name = n; value = {{ drv = t.drvPath; out = t.outPath; }}; }}) [ {} ])",
        names.join(" ")
    ))
}

/// Reads what `nix eval --json` printed for [`instantiate_expr`]: every node must be there.
pub fn parse_instantiated(
    json: &[u8],
    nodes: &[String],
) -> Result<BTreeMap<String, Instantiated>, NixError> {
    let odd = |detail: String| NixError::Output {
        what: "nix eval --json",
        detail,
    };
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| odd(e.to_string()))?;
    let mut out = BTreeMap::new();
    for n in nodes {
        let path = |k: &str| {
            v[n][k]
                .as_str()
                .filter(|p| p.starts_with('/'))
                .map(String::from)
                .ok_or_else(|| odd(format!("no {k} path for {n}")))
        };
        out.insert(
            n.clone(),
            Instantiated {
                drv: path("drv")?,
                out: path("out")?,
            },
        );
    }
    Ok(out)
}

/// Evaluates every node's toplevel in one `nix eval`, building nothing: the derivations land in
/// this machine's store and the nodes build them (`--build-on nodes`).
pub fn instantiate_toplevels(
    flake: &Path,
    nodes: &[String],
    args: &NixArgs,
) -> Result<BTreeMap<String, Instantiated>, NixError> {
    if nodes.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut c = Command::new("nix");
    c.args(["eval", "--json", "--no-write-lock-file"]);
    args.apply(&mut c);
    c.arg(format!("path:{}#nixosConfigurations", flake.display()))
        .arg("--apply")
        .arg(instantiate_expr(nodes)?);
    let o = c.output().map_err(NixError::Missing)?;
    if !o.status.success() {
        return Err(NixError::Build {
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    parse_instantiated(&o.stdout, nodes)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathInfo {
    pub path: String,
    pub nar_size: u64,
}

/// Parses `nix path-info -r --json` (Nix 2.8 to 2.18 give a list, newer ones an object).
pub fn parse_path_info(json: &str) -> Result<Vec<PathInfo>, NixError> {
    let odd = |detail: String| NixError::Output {
        what: "nix path-info --json",
        detail,
    };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| odd(e.to_string()))?;
    let mut out = Vec::new();
    match v {
        serde_json::Value::Array(a) => {
            for x in a {
                if let Some(p) = x["path"].as_str() {
                    out.push(PathInfo {
                        path: p.into(),
                        nar_size: x["narSize"].as_u64().unwrap_or(0),
                    });
                }
            }
        }
        serde_json::Value::Object(o) => {
            for (p, x) in o {
                out.push(PathInfo {
                    path: p,
                    nar_size: x["narSize"].as_u64().unwrap_or(0),
                });
            }
        }
        _ => return Err(odd("neither a list nor an object".into())),
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The closure of a path in this machine's store, with NAR sizes.
pub fn local_closure(path: &str) -> Result<Vec<PathInfo>, NixError> {
    let mut c = Command::new("nix");
    c.args(["path-info", "-r", "--json"]);
    NixArgs::default().apply(&mut c);
    let o = c.arg(path).output().map_err(NixError::Missing)?;
    if !o.status.success() {
        return Err(NixError::PathInfo {
            path: path.into(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    parse_path_info(&String::from_utf8_lossy(&o.stdout))
}

/// "/nix/store/<hash>-hello-2.12" -> ("hello", "2.12"); the version is the first dash-separated
/// part that starts with a digit, as `nix store diff-closures` does.
pub fn name_version(path: &str) -> (String, String) {
    let base = path.rsplit('/').next().unwrap_or(path);
    let name = base.split_once('-').map(|(_, r)| r).unwrap_or(base);
    let parts: Vec<&str> = name.split('-').collect();
    match parts
        .iter()
        .position(|p| p.starts_with(|c: char| c.is_ascii_digit()))
    {
        Some(i) if i > 0 => (parts[..i].join("-"), parts[i..].join("-")),
        _ => (name.to_string(), String::new()),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClosureDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// package: old version -> new version
    pub changed: Vec<(String, String, String)>,
    pub paths_added: usize,
    pub paths_removed: usize,
    pub size_delta: i64,
}

pub fn diff_closures(old: &[PathInfo], new: &[PathInfo]) -> ClosureDiff {
    use std::collections::{BTreeMap, BTreeSet};
    let group = |v: &[PathInfo]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in v {
            let (n, ver) = name_version(&p.path);
            m.entry(n).or_default().insert(ver);
        }
        m
    };
    let (a, b) = (group(old), group(new));
    let old_paths: BTreeSet<&str> = old.iter().map(|p| p.path.as_str()).collect();
    let new_paths: BTreeSet<&str> = new.iter().map(|p| p.path.as_str()).collect();
    let mut d = ClosureDiff {
        paths_added: new_paths.difference(&old_paths).count(),
        paths_removed: old_paths.difference(&new_paths).count(),
        size_delta: new.iter().map(|p| p.nar_size as i64).sum::<i64>()
            - old.iter().map(|p| p.nar_size as i64).sum::<i64>(),
        ..Default::default()
    };
    for (name, vers) in &b {
        match a.get(name) {
            None => d.added.push(name.clone()),
            Some(ov) if ov != vers => {
                let j = |s: &BTreeSet<String>| {
                    s.iter()
                        .filter(|v| !v.is_empty())
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(",")
                };
                d.changed.push((name.clone(), j(ov), j(vers)));
            }
            _ => {}
        }
    }
    for name in a.keys() {
        if !b.contains_key(name) {
            d.removed.push(name.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instantiation_forces_only_the_selected_nodes_by_escaped_name() {
        let e = instantiate_expr(&["n1".into(), "a\"b${x}".into()]).unwrap();
        assert!(e.ends_with(r#"[ "n1" "a\"b\${x}" ])"#), "{e}");
        let json = br#"{"n1":{"drv":"/nix/store/a-n1.drv","out":"/nix/store/b-n1"}}"#;
        let got = parse_instantiated(json, &["n1".into()]).unwrap();
        assert_eq!(
            got["n1"],
            Instantiated {
                drv: "/nix/store/a-n1.drv".into(),
                out: "/nix/store/b-n1".into()
            }
        );
        let e = parse_instantiated(json, &["n1".into(), "n2".into()]).unwrap_err();
        assert!(e.to_string().contains("no drv path for n2"), "{e}");
    }

    #[test]
    fn odd_path_info_is_an_error_that_names_the_command() {
        let e = parse_path_info("42").unwrap_err();
        assert!(matches!(
            e,
            NixError::Output {
                what: "nix path-info --json",
                ..
            }
        ));
        assert!(e.to_string().contains("nix --version"), "{e}");
        assert!(parse_path_info("{not json").is_err());
    }

    fn pi(p: &str, s: u64) -> PathInfo {
        PathInfo {
            path: format!("/nix/store/{p}"),
            nar_size: s,
        }
    }

    #[test]
    fn names_and_versions() {
        assert_eq!(
            name_version("/nix/store/abc-hello-2.12.1"),
            ("hello".into(), "2.12.1".into())
        );
        assert_eq!(
            name_version("/nix/store/abc-nixos-system-head-25.11.20251201"),
            ("nixos-system-head".into(), "25.11.20251201".into())
        );
        assert_eq!(
            name_version("/nix/store/abc-etc"),
            ("etc".into(), String::new())
        );
    }

    #[test]
    fn closure_diff() {
        let old = vec![
            pi("a-hello-2.10", 100),
            pi("b-etc", 10),
            pi("c-zenoh-1.0", 50),
        ];
        let new = vec![
            pi("d-hello-2.12", 120),
            pi("e-etc", 10),
            pi("f-ray-2.40", 500),
        ];
        let d = diff_closures(&old, &new);
        assert_eq!(d.added, vec!["ray"]);
        assert_eq!(d.removed, vec!["zenoh"]);
        assert_eq!(
            d.changed,
            vec![("hello".into(), "2.10".into(), "2.12".into())]
        );
        assert_eq!((d.paths_added, d.paths_removed, d.size_delta), (3, 3, 470));
    }

    #[test]
    fn path_info_shapes() {
        let old =
            r#"[{"path":"/nix/store/x-a","narSize":5},{"path":"/nix/store/y-b","narSize":7}]"#;
        let new = r#"{"/nix/store/x-a":{"narSize":5},"/nix/store/y-b":{"narSize":7}}"#;
        assert_eq!(parse_path_info(old).unwrap(), parse_path_info(new).unwrap());
    }
}
