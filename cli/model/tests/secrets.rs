//! `[[secret]]`: read, validated for shape (the source is read by plan and apply, not here),
//! resolved to nodes, and written back. Each error has a file in `tests/corpus/secret-*.toml`.

use edgectl_model::{Cluster, LoadOptions, SecretSource, SecretWhen, SourceFile, check_source};

const BASE: &str = r#"[cluster]
name = "c"
nixpkgs = "github:NixOS/nixpkgs/nixos-25.11"
ssh_user = "alice"

[defaults]
profile = "c220g5"

[[node]]
name = "head"
host = "n1.example.org"
tags = ["gpu"]

[[node]]
name = "worker1"
host = "n2.example.org"

[[node]]
name = "worker2"
host = "n3.example.org"
"#;

fn check(text: &str) -> Result<(Cluster, edgectl_model::TopologyFile), edgectl_model::Diagnostics> {
    let src = SourceFile::new("cluster.toml", text.to_string());
    // No file is read: a secret's source need not exist to be valid.
    check_source(
        src,
        std::path::Path::new("/nonexistent"),
        &LoadOptions::default(),
    )
}

#[test]
fn secrets_resolve_with_their_defaults_and_round_trip() {
    let text = format!(
        r#"{BASE}
[[secret]]
name = "ray-token"
file = "secrets/ray-token"
dest = "/run/keys/ray-token"

[[secret]]
name = "wg-key"
command = ["pass", "show", "wg/key"]
dest = "/var/lib/wireguard/private.key"
owner = "systemd-network"
group = "1000"
mode = "0440"
nodes = ["worker*", "@gpu"]
when = "after"
"#
    );
    let (c, f) = check(&text).expect("valid");
    assert_eq!(c.secrets.len(), 2);
    let a = &c.secrets[0];
    assert_eq!(a.source, SecretSource::File("secrets/ray-token".into()));
    assert_eq!(
        (a.owner.as_str(), a.group.as_str(), a.mode, a.when),
        ("root", "root", 0o400, SecretWhen::Before)
    );
    assert_eq!(
        a.nodes,
        ["head", "worker1", "worker2"],
        "default: every node"
    );
    let b = &c.secrets[1];
    assert_eq!(
        b.source,
        SecretSource::Command(vec!["pass".into(), "show".into(), "wg/key".into()])
    );
    assert_eq!(
        (b.owner.as_str(), b.group.as_str(), b.mode, b.when),
        ("systemd-network", "1000", 0o440, SecretWhen::After)
    );
    assert_eq!(b.nodes, ["head", "worker1", "worker2"], "topology order");
    let (c2, f2) = check(&f.to_toml().unwrap()).expect("still valid");
    assert_eq!(f2, f);
    assert_eq!(c2.secrets, c.secrets);
}

#[test]
fn the_same_destination_on_different_nodes_is_fine() {
    let text = format!(
        "{BASE}\n[[secret]]\nname = \"a\"\nfile = \"a\"\ndest = \"/etc/token\"\nnodes = [\"head\"]\n\n[[secret]]\nname = \"b\"\nfile = \"b\"\ndest = \"/etc/token\"\nnodes = [\"worker*\"]\n"
    );
    let (c, _) = check(&text).expect("valid");
    assert_eq!(c.secrets[1].nodes, ["worker1", "worker2"]);
}

#[test]
fn every_problem_is_reported_at_once_with_its_field_and_a_fix() {
    let text = format!(
        r#"{BASE}
[[secret]]
name = "a b"
dest = "/tmp/x"
owner = "Bob"
mode = "0999"
nodes = ["nobody"]
when = "later"
"#
    );
    let e = check(&text).unwrap_err();
    let fields: Vec<&str> = e.iter().filter_map(|d| d.field.as_deref()).collect();
    for f in [
        "secret[0].name",
        "secret[0]",
        "secret[0].dest",
        "secret[0].owner",
        "secret[0].mode",
        "secret[0].nodes[0]",
        "secret[0].when",
    ] {
        assert!(
            fields.contains(&f),
            "no problem reported at {f}: {fields:?}"
        );
    }
    for d in e.iter() {
        assert!(d.line > 0, "{d:?}");
        assert!(d.help.is_some(), "{d:?}");
    }
    let dest = e
        .iter()
        .find(|d| d.field.as_deref() == Some("secret[0].dest"))
        .unwrap();
    assert!(
        dest.message.contains("/run/keys/, /var/lib/, /etc/"),
        "{}",
        dest.message
    );
    let when = e
        .iter()
        .find(|d| d.field.as_deref() == Some("secret[0].when"))
        .unwrap();
    assert!(
        when.help.as_deref().unwrap().contains("\"after\""),
        "{:?}",
        when.help
    );
}

#[test]
fn secrets_never_reach_the_serialised_cluster() {
    let text = format!(
        "{BASE}\n[[secret]]\nname = \"ray-token\"\nfile = \"ray-token-file\"\ndest = \"/run/keys/ray-token\"\n"
    );
    let (c, _) = check(&text).expect("valid");
    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains("ray-token"), "{json}");
    assert!(!json.contains("secret"), "{json}");
}
