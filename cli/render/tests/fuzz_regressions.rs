//! Findings of the `render` fuzz target (fuzz/), each kept as a test.

use std::path::Path;

use edgectl_model::{LoadOptions, SourceFile, check_source, load};
use edgectl_render::{RenderError, render};

fn example() -> edgectl_model::Cluster {
    load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge-lab.toml"),
        &LoadOptions::default(),
    )
    .unwrap()
    .cluster
}

/// A NUL in a value that never passes the Nix escaper (host, tags, site, expires) went into
/// topology.json, which the flake reads with builtins.fromJSON; Nix strings end at a NUL, so
/// `"wisc\0evil"` evaluated to `"wisc"`. Now any NUL anywhere refuses the render.
#[test]
fn a_nul_outside_the_nix_files_is_refused() {
    type Set = fn(&mut edgectl_model::Cluster);
    let cases: &[(&str, Set)] = &[
        ("host", |c| c.nodes[0].host = "h\0; rm -rf /".into()),
        ("tag", |c| c.nodes[0].tags = vec!["gpu\0".into()]),
        ("site", |c| c.site = Some("wisc\0evil".into())),
        ("expires", |c| c.expires = Some("\0".into())),
    ];
    for (what, set) in cases {
        let mut c = example();
        set(&mut c);
        match render(&c) {
            Err(RenderError::Unrepresentable(v)) => assert!(v.contains("\\0"), "{what}: {v}"),
            other => panic!("{what}: {:?}", other.map(|f| f.len())),
        }
    }
    assert!(render(&example()).is_ok());
}

/// The same through the front door: TOML's `\u0000` escape passes `check` in free-text fields,
/// and `generate` must say why it cannot write them.
#[test]
fn a_toml_escaped_nul_in_free_text_is_refused_by_generate() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge-lab.toml"),
    )
    .unwrap()
    .replace("site = \"wisc\"", "site = \"wisc\\u0000evil\"");
    assert!(text.contains("\\u0000"));
    let (c, _) = check_source(
        SourceFile::new("t.toml", text),
        Path::new("."),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(c.site.as_deref(), Some("wisc\0evil"));
    let e = render(&c).unwrap_err();
    assert!(matches!(e, RenderError::Unrepresentable(_)), "{e}");
    assert!(e.to_string().contains("NUL"), "{e}");
}
