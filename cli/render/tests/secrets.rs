//! `[[secret]]`s reach the nodes over SSH only: nothing of them (name, source, destination)
//! is in the generated flake, its `topology.json` or its host files, so none of it can end up
//! in the Nix store, and adding or changing a secret renders byte-identical files.

use std::path::Path;

use edgectl_model::{LoadOptions, load};
use edgectl_render::render;

#[test]
fn secrets_are_not_rendered() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let example = repo.join("examples/edge-lab.toml");
    let plain = load(&example, &LoadOptions::default()).expect("example is valid");
    let d = tempfile::tempdir().unwrap();
    let with = d.path().join("edge-lab.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    std::fs::write(
        &with,
        format!(
            "{text}\n[[secret]]\nname = \"canary-name\"\ncommand = [\"echo\", \"canary-command\"]\ndest = \"/run/keys/canary-dest\"\nowner = \"canaryowner\"\n\n[[secret]]\nname = \"canary2\"\nfile = \"canary-file\"\ndest = \"/var/lib/canary/dest2\"\nwhen = \"after\"\n"
        ),
    )
    .unwrap();
    let loaded = load(&with, &LoadOptions::default()).expect("valid with secrets");
    assert_eq!(loaded.cluster.secrets.len(), 2);
    let files = render(&loaded.cluster).unwrap();
    assert!(files.contains_key("topology.json"));
    for (path, body) in &files {
        for canary in ["canary", "/run/keys"] {
            assert!(
                !body.contains(canary),
                "{path} mentions `{canary}`:\n{body}"
            );
        }
    }
    assert_eq!(
        files,
        render(&plain.cluster).unwrap(),
        "secrets change nothing that is rendered"
    );
}
