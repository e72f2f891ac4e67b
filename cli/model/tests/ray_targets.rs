//! `[targets]` for the Ray probe of `edgectl verify`: `ray_actor_p99_ms` (milliseconds) and
//! `ray_scaling_min` (a fraction of linear scaling), read, refused when out of range, and
//! written back.

use edgectl_model::{Kind, LoadOptions, SourceFile, check_source};

const BASE: &str = r#"[cluster]
name = "c"
nixpkgs = "github:NixOS/nixpkgs/nixos-25.11"
ssh_user = "alice"

[[node]]
name = "n1"
host = "n1.example.org"
profile = "c220g5"
roles = ["ray-head"]
lan = { address = "10.10.1.1/24", mac = "02aabbcc0001" }
"#;

fn check(text: &str) -> Result<edgectl_model::TopologyFile, edgectl_model::Diagnostics> {
    let src = SourceFile::new("cluster.toml", text.to_string());
    check_source(src, std::path::Path::new("."), &LoadOptions::default()).map(|(_, f)| f)
}

#[test]
fn ray_targets_are_read_and_round_trip() {
    let f = check(&format!(
        "{BASE}\n[targets]\nray_actor_p99_ms = 5\nray_scaling_min = 0.8\n"
    ))
    .expect("valid");
    assert_eq!(f.targets.ray_actor_p99_ms, Some(5.0));
    assert_eq!(f.targets.ray_scaling_min, Some(0.8));
    let again = check(&f.to_toml().unwrap()).expect("still valid");
    assert_eq!(again, f);
    // 1 is linear scaling itself: allowed, and an integer is a number too.
    let f = check(&format!("{BASE}\n[targets]\nray_scaling_min = 1\n")).expect("valid");
    assert_eq!(f.targets.ray_scaling_min, Some(1.0));
    // Neither is required.
    let f = check(BASE).expect("valid");
    assert_eq!(
        (f.targets.ray_actor_p99_ms, f.targets.ray_scaling_min),
        (None, None)
    );
}

#[test]
fn ray_targets_out_of_range_say_what_to_write() {
    for (line, words) in [
        ("ray_scaling_min = 80", "at most 1"),
        ("ray_scaling_min = 0.0", "more than 0"),
        ("ray_scaling_min = -0.5", "more than 0"),
        ("ray_scaling_min = nan", "fraction"),
        ("ray_scaling_min = \"0.8\"", "must be a number, found"),
        ("ray_actor_p99_ms = 0", "positive number of milliseconds"),
        ("ray_actor_p99_ms = inf", "positive number of milliseconds"),
        ("ray_actor_p99_ms = true", "must be a number, found"),
    ] {
        let d = check(&format!("{BASE}\n[targets]\n{line}\n")).expect_err(line);
        let t = d
            .iter()
            .find(|d| d.kind == Kind::InvalidTarget)
            .unwrap_or_else(|| panic!("{line}: no invalid-target among {d:?}"));
        assert!(t.message.contains(words), "{line}: {}", t.message);
        assert!(
            t.help.as_deref().is_some_and(|h| h.contains("e.g.")),
            "{line}: {t:?}"
        );
        let key = line.split(' ').next().unwrap();
        assert_eq!(
            t.field.as_deref(),
            Some(format!("targets.{key}").as_str()),
            "{t:?}"
        );
    }
    // A misspelt key is named, with the right one offered.
    let d = check(&format!("{BASE}\n[targets]\nray_scaling_mn = 0.8\n")).unwrap_err();
    let u = d
        .iter()
        .find(|d| d.kind == Kind::UnknownKey)
        .expect("unknown key");
    assert!(
        u.help.as_deref().unwrap_or("").contains("ray_scaling_min"),
        "{u:?}"
    );
}
