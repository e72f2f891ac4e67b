//! The renderer: any valid topology gives Nix that parses, and every string value, whatever it
//! holds, is a Nix string literal that reads back as exactly that string.
//!
//! Two inputs: topology text (rendered when it validates), or strings from the fuzzer placed in
//! every free-text field of the example cluster, past validation on purpose, as the escaping
//! property test does. Evaluating with nix-instantiate is too slow here; the literal is decoded
//! with rnix instead, and `cli/render/tests/escaping.rs` evaluates with real Nix.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use edgectl_model::{Cluster, LoadOptions, SourceFile, check_source};
use edgectl_render::{RenderError, check_parses, nix, render};
use libfuzzer_sys::fuzz_target;
use rnix::ast::{self, InterpolPart};

fn example() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let src = SourceFile::new(
            "edge-lab.toml",
            include_str!("../../examples/edge-lab.toml"),
        );
        check_source(src, Path::new("/nonexistent"), &LoadOptions::default())
            .expect("the example validates")
            .0
    })
}

/// What a Nix string literal evaluates to, read with rnix; `None` when it is not one plain string.
fn decode(lit: &str) -> Option<String> {
    let root = rnix::Root::parse(lit);
    if !root.errors().is_empty() {
        return None;
    }
    let ast::Expr::Str(s) = root.tree().expr()? else {
        return None;
    };
    let mut out = String::new();
    for part in s.normalized_parts() {
        match part {
            InterpolPart::Literal(t) => out.push_str(&t),
            InterpolPart::Interpolation(_) => return None,
        }
    }
    Some(out)
}

fn strings_of(c: &Cluster) -> Vec<&str> {
    let mut v: Vec<&str> = vec![&c.name, &c.nixpkgs, &c.ssh_user, &c.state_version];
    v.extend(c.site.as_deref());
    v.extend(c.expires.as_deref());
    v.extend(c.ssh_keys.iter().map(String::as_str));
    v.extend(c.networks.iter().map(|n| n.name.as_str()));
    for n in &c.nodes {
        v.extend([n.name.as_str(), &n.host, &n.user]);
        v.extend(n.tags.iter().map(String::as_str));
        v.extend(n.interfaces.iter().map(|i| i.network.as_str()));
    }
    v
}

fn any_nul(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(any_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || any_nul(v)),
        _ => false,
    }
}

fn check(c: &Cluster) {
    for s in strings_of(c) {
        match nix::string(s) {
            Ok(lit) => assert_eq!(decode(&lit).as_deref(), Some(s), "literal {lit}"),
            Err(_) => assert!(s.contains('\0')),
        }
        // Attribute names are Nix too (node names become `nixosConfigurations.<name>`).
        if let Ok(a) = nix::attr_name(s) {
            let set = format!("{{ {a} = 1; }}");
            assert!(check_parses("attr.nix", &set).is_ok(), "{set}");
        }
    }
    // Every string counts: topology.json carries them all into the flake.
    let has_nul = any_nul(&serde_json::to_value(c).unwrap());
    match render(c) {
        Ok(files) => {
            assert!(!has_nul, "a NUL reached the output");
            for (name, text) in &files {
                if name.ends_with(".nix")
                    && let Err(e) = check_parses(name, text)
                {
                    panic!("{e}\n{text}");
                }
            }
        }
        Err(RenderError::Unrepresentable(_)) => assert!(has_nul),
        Err(RenderError::NoLogin) => assert!(c.ssh_keys.is_empty()),
        Err(e) => panic!("{e}"),
    }
}

#[derive(Arbitrary, Debug)]
struct Fields {
    name: String,
    nixpkgs: String,
    ssh_user: String,
    state_version: String,
    site: Option<String>,
    expires: Option<String>,
    ssh_keys: Vec<String>,
    network: String,
    node_name: String,
    host: String,
    user: String,
    tags: Vec<String>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else {
            return;
        };
        let src = SourceFile::new("fuzz.toml", text);
        if let Ok((c, _)) = check_source(src, Path::new("/nonexistent"), &LoadOptions::default()) {
            check(&c);
        }
        return;
    }
    let Ok(f) = Fields::arbitrary_take_rest(Unstructured::new(rest)) else {
        return;
    };
    let mut c = example().clone();
    c.name = f.name;
    c.nixpkgs = f.nixpkgs;
    c.ssh_user = f.ssh_user;
    c.state_version = f.state_version;
    c.site = f.site;
    c.expires = f.expires;
    c.ssh_keys = f.ssh_keys;
    c.networks[0].name = f.network.clone();
    for n in &mut c.nodes {
        for i in &mut n.interfaces {
            i.network = f.network.clone();
        }
    }
    let n = &mut c.nodes[0];
    n.name = f.node_name;
    n.host = f.host;
    n.user = f.user;
    n.tags = f.tags;
    check(&c);
});
