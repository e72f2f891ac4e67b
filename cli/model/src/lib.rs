//! The edgectl topology model: one TOML file describing a bare-metal cluster, its hardware
//! profiles, and the checks that make it safe to generate NixOS configurations from.

// Errors here are diagnostics for people, built once per bad file: their size does not matter,
// and `Err(())` in profile resolution means "already reported".
#![allow(clippy::result_large_err, clippy::result_unit_err)]

pub mod diag;
pub mod hardware;
pub mod load;
pub mod net;
pub mod profile;
pub mod read;
pub mod select;
pub mod source;
pub mod sshkey;
pub mod synth;
pub mod topology;
pub mod validate;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use diag::{Diagnostic, Diagnostics, Kind};
pub use profile::{Profile, ProfileSet};
pub use source::SourceFile;
pub use topology::TopologyFile;
pub use validate::{
    Cluster, Feature, Interface, Network, Node, Role, Secret, SecretSource, SecretWhen,
};

#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    /// Extra profile directories (e.g. from `--profiles`), applied after `cluster.profile_dir`.
    pub profile_dirs: Vec<PathBuf>,
}

/// A topology that passed every check.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub cluster: Cluster,
    pub file: TopologyFile,
    pub path: PathBuf,
    pub source: Arc<SourceFile>,
}

/// Reads, parses and validates a topology file, reporting every problem at once.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded, Diagnostics> {
    let src = load::read_source(path).map_err(|d| Diagnostics(vec![d]))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let (cluster, file) = check_source(src.clone(), &base, opts)?;
    Ok(Loaded {
        cluster,
        file,
        path: path.to_path_buf(),
        source: src,
    })
}

/// Parses and validates text as if read from `name` in directory `base`.
pub fn check_source(
    src: Arc<SourceFile>,
    base: &Path,
    opts: &LoadOptions,
) -> Result<(Cluster, TopologyFile), Diagnostics> {
    let mut r = read::Reader::new(src.clone());
    let Some(doc) = load::parse_toml(&mut r, &src.text) else {
        return Err(r.diags);
    };
    let file = topology::read_document(&mut r, doc);

    let (mut profiles, builtin_diags) = ProfileSet::builtin();
    let mut diags = builtin_diags;
    if let Some(f) = &file
        && let Some(dir) = &f.cluster.profile_dir
    {
        let d = profiles.add_dir(&base.join(dir));
        for mut x in d.0 {
            if x.kind == Kind::Io
                && let Some(span) = r.spans.get("cluster.profile_dir")
            {
                x = Diagnostic::at(Kind::Io, &src, span, x.message).field("cluster.profile_dir").value(format!("{dir:?}")).help(
                            "`profile_dir` is relative to the topology file; point it at a directory of *.toml profiles",
                        );
            }
            diags.push(x);
        }
    }
    for dir in &opts.profile_dirs {
        diags.extend(profiles.add_dir(dir));
    }
    if let Some(f) = &file {
        for (name, spec) in &f.profiles {
            let path = format!("profile.{name}");
            profiles.add_declared(
                name,
                profile::Declared {
                    spec: spec.clone(),
                    origin: src.name.clone(),
                    source: src.clone(),
                    span: r.spans.get(&path).unwrap_or(0..0),
                    extends_span: r.spans.get(&format!("{path}.extends")),
                    path,
                },
            );
        }
        // Resolve every declared profile so that errors in unused ones are reported too.
        let names: Vec<String> = profiles.names().map(String::from).collect();
        for n in names {
            let _ = profiles.resolve(&n, &mut r.diags);
        }
    }
    let mut cluster = file
        .as_ref()
        .and_then(|f| validate::validate(f, &mut r, &mut profiles));
    if let Some(c) = &mut cluster {
        merge_hardware(c, base, &mut diags);
    }
    if let Some(f) = &file {
        check_user_checks(f, &mut r, &src, base);
    }
    diags.extend(r.diags);
    diags.sort();
    match (cluster, file) {
        (Some(c), Some(f)) if diags.is_empty() => Ok((c, f)),
        _ => {
            if diags.is_empty() {
                // validate() returned None without reporting: never expected, but never silent.
                diags.push(Diagnostic::file(
                    Kind::InvalidValue,
                    &src.name,
                    "topology is invalid",
                ));
            }
            Err(diags)
        }
    }
}

/// Each node's `hardware/<node>.toml`, where there is one, replaces what the topology says
/// about its machine: it is what `edgectl install` read on the node itself.
fn merge_hardware(c: &mut Cluster, base: &Path, diags: &mut Diagnostics) {
    // One listing, not a look per node: `check` reads topologies of 10,000 nodes.
    let present = hardware::recorded(base);
    for n in c.nodes.iter_mut().filter(|n| present.contains(&n.name)) {
        match hardware::read(base, &n.name) {
            Ok(Some(h)) => h.apply(n),
            Ok(None) => {}
            Err(d) => diags.extend(d),
        }
    }
}

/// `[[check]]` modules must exist now, not when `verify` is half-way through a cluster.
fn check_user_checks(f: &TopologyFile, r: &mut read::Reader, src: &Arc<SourceFile>, base: &Path) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in f.checks.iter().enumerate() {
        let span = |key: &str| r.spans.get(&format!("check[{i}].{key}")).unwrap_or(0..0);
        if !c.name.is_empty() && !seen.insert(c.name.as_str()) {
            let d = Diagnostic::at(
                Kind::DuplicateName,
                src,
                span("name"),
                format!("duplicate check name `{}`", c.name),
            )
            .field(format!("check[{i}].name"))
            .help("give every [[check]] its own name");
            r.diags.push(d);
        }
        if c.wasm.is_empty() {
            continue;
        }
        let p = base.join(&c.wasm);
        if !p.is_file() {
            let d = Diagnostic::at(Kind::Io, src, span("wasm"), format!("check module `{}` not found", p.display()))
                .field(format!("check[{i}].wasm"))
                .value(format!("{:?}", c.wasm))
                .help("`wasm` is relative to the topology file; point it at a WASI module (.wasm, or .wat text)");
            r.diags.push(d);
        }
    }
}
