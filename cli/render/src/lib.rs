//! Renders a validated cluster into a self-contained NixOS flake: `flake.nix`, thin
//! `hosts/<node>.nix`, `topology.json` and a copy of our `modules/`.

pub mod host;
pub mod nix;
pub mod options;
pub mod write;

use std::collections::{BTreeMap, HashMap};

use edgectl_model::Cluster;
use serde_json::{Value, json};

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

#[derive(Debug)]
pub enum RenderError {
    /// A value Nix cannot hold (a NUL character), with where it came from.
    Unrepresentable(String),
    Template(String),
    /// `cluster.ssh_keys` is empty, so nobody could log in after the switch.
    NoLogin,
    /// Our own output failed to parse: a bug in a template, never the user's fault.
    Parse {
        file: String,
        message: String,
    },
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Unrepresentable(v) => write!(
                f,
                "value {v} contains a NUL character, which Nix strings cannot hold"
            ),
            RenderError::Template(m) => write!(f, "template error: {m}"),
            RenderError::NoLogin => write!(
                f,
                "cluster.ssh_keys is empty: after the switch nobody could log in; add your public key (the line in ~/.ssh/id_ed25519.pub) to ssh_keys in [cluster]"
            ),
            RenderError::Parse { file, message } => write!(
                f,
                "generated {file} does not parse ({message}); this is a bug in edgectl"
            ),
        }
    }
}

impl std::error::Error for RenderError {}

/// Files of the generated flake, by relative path, in a stable order.
pub type Files = BTreeMap<String, String>;

/// Marks a directory as written by `edgectl generate`, so it may be replaced without `--force`.
pub const MARKER: &str = ".edgectl-generated";

fn tera() -> Result<tera::Tera, RenderError> {
    let mut t = tera::Tera::default();
    t.autoescape_on(vec![]);
    for (name, text) in TEMPLATES {
        t.add_raw_template(name, text)
            .map_err(|e| RenderError::Template(format!("{name}: {e:?}")))?;
    }
    t.register_filter("nix", |v: &Value, _: &HashMap<String, Value>| {
        nix::literal(v)
            .map(Value::String)
            .map_err(|e| tera::Error::msg(format!("NUL in {}", e.0)))
    });
    t.register_filter("attr", |v: &Value, _: &HashMap<String, Value>| {
        let s = v
            .as_str()
            .ok_or_else(|| tera::Error::msg("attr filter needs a string"))?;
        nix::attr_name(s)
            .map(Value::String)
            .map_err(|e| tera::Error::msg(format!("NUL in {}", e.0)))
    });
    // Comments end at a newline, so anything but plain printable text is replaced.
    t.register_filter("comment", |v: &Value, _: &HashMap<String, Value>| {
        let s = v.as_str().unwrap_or_default();
        Ok(Value::String(
            s.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect(),
        ))
    });
    Ok(t)
}

fn render_one(t: &tera::Tera, name: &str, ctx: &Value) -> Result<String, RenderError> {
    let ctx =
        tera::Context::from_value(ctx.clone()).map_err(|e| RenderError::Template(e.to_string()))?;
    t.render(name, &ctx).map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        if msg.contains("NUL in") {
            RenderError::Unrepresentable(msg)
        } else {
            RenderError::Template(msg)
        }
    })
}

/// Formats Nix source with alejandra and checks it parses with rnix.
pub fn format_nix(file: &str, src: String) -> Result<String, RenderError> {
    let (status, out) = alejandra::format::in_memory(file.to_string(), src);
    if let alejandra::format::Status::Error(message) = status {
        return Err(RenderError::Parse {
            file: file.into(),
            message,
        });
    }
    check_parses(file, &out)?;
    Ok(out)
}

pub fn check_parses(file: &str, src: &str) -> Result<(), RenderError> {
    let parsed = rnix::Root::parse(src);
    if let Some(e) = parsed.errors().first() {
        return Err(RenderError::Parse {
            file: file.into(),
            message: e.to_string(),
        });
    }
    Ok(())
}

pub fn host_file(c: &Cluster, n: &edgectl_model::Node) -> Result<String, RenderError> {
    let t = tera()?;
    let name = format!("hosts/{}.nix", n.name);
    format_nix(
        &name,
        render_one(&t, "host.nix.tera", &json!({ "ctx": host::context(c, n) }))?,
    )
}

/// The first string (value or key) in `v` holding a NUL.
fn first_nul(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => s.contains('\0').then_some(s.as_str()),
        Value::Array(a) => a.iter().find_map(first_nul),
        Value::Object(o) => o.iter().find_map(|(k, v)| {
            k.contains('\0')
                .then_some(k.as_str())
                .or_else(|| first_nul(v))
        }),
        _ => None,
    }
}

/// The `edgectl` input a generated flake gets when the topology names none: the source this
/// binary was built from. A Nix build says which (`EDGECTL_FLAKE_REF`, set by our flake.nix);
/// a cargo build points at its checkout, through git when it is one, so that Nix copies the
/// tracked files and not `target/`.
pub fn default_edgectl_flake() -> String {
    if let Some(r) = option_env!("EDGECTL_FLAKE_REF") {
        return r.to_string();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap_or(std::path::Path::new("/"));
    if root.join(".git").exists() {
        format!("git+file://{}", root.display())
    } else {
        format!("path:{}", root.display())
    }
}

/// Every file of the generated flake.
pub fn render(c: &Cluster) -> Result<Files, RenderError> {
    if c.ssh_keys.is_empty() {
        // Under NixOS the testbed's account agent no longer installs keys: without ours, the
        // first switch would lock everyone out of every node.
        return Err(RenderError::NoLogin);
    }
    // The flake reads topology.json with builtins.fromJSON, and a Nix string ends at a NUL:
    // a NUL in any value (a TOML "\u0000" passes as free text) would silently cut it short.
    let whole = serde_json::to_value(c).map_err(|e| RenderError::Template(e.to_string()))?;
    if let Some(s) = first_nul(&whole) {
        return Err(RenderError::Unrepresentable(format!("{s:?}")));
    }
    let t = tera()?;
    let mut files = Files::new();
    for n in &c.nodes {
        let name = format!("hosts/{}.nix", n.name);
        let text = render_one(&t, "host.nix.tera", &json!({ "ctx": host::context(c, n) }))?;
        files.insert(name.clone(), format_nix(&name, text)?);
        if let Some(hw) = host::hardware(n) {
            let name = format!("hosts/{}", host::hardware_file_name(n));
            let text = render_one(&t, "hardware.nix.tera", &json!({ "hw": hw }))?;
            files.insert(name.clone(), format_nix(&name, text)?);
        }
    }
    let nodes: Vec<Value> = c
        .nodes
        .iter()
        .map(|n| json!({ "name": n.name, "file": format!("/{}.nix", n.name) }))
        .collect();
    let flake = render_one(
        &t,
        "flake.nix.tera",
        &json!({ "cluster": { "name": c.name, "nixpkgs": c.nixpkgs, "edgectl": c.edgectl_flake.clone().unwrap_or_else(default_edgectl_flake) }, "description": format!("NixOS cluster {} (generated by edgectl)", c.name), "nodes": nodes }),
    )?;
    files.insert("flake.nix".into(), format_nix("flake.nix", flake)?);
    let mut topo =
        serde_json::to_string_pretty(c).map_err(|e| RenderError::Template(e.to_string()))?;
    topo.push('\n');
    files.insert("topology.json".into(), topo);
    for (rel, text) in MODULES {
        files.insert(format!("modules/{rel}"), text.to_string());
    }
    files.insert(
        MARKER.into(),
        format!(
            "generated by edgectl {} for cluster {}\n",
            env!("CARGO_PKG_VERSION"),
            c.name.replace(['\n', '\r'], "?")
        ),
    );
    Ok(files)
}
