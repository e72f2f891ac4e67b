//! `[[check]]`: user WASI checks for `edgectl verify`, read, validated and written back.

use edgectl_model::{LoadOptions, SourceFile, check_source};

const BASE: &str = r#"[cluster]
name = "c"
nixpkgs = "github:NixOS/nixpkgs/nixos-25.11"
ssh_user = "alice"

[[node]]
name = "n1"
host = "n1.example.org"
profile = "c220g5"
lan = { address = "10.10.1.1/24", mac = "02aabbcc0001" }
"#;

fn check(
    text: &str,
    base: &std::path::Path,
) -> Result<edgectl_model::TopologyFile, edgectl_model::Diagnostics> {
    let src = SourceFile::new("cluster.toml", text.to_string());
    check_source(src, base, &LoadOptions::default()).map(|(_, f)| f)
}

#[test]
fn checks_are_read_and_round_trip() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("checks")).unwrap();
    std::fs::write(d.path().join("checks/proc.wasm"), b"\0asm").unwrap();
    let text = format!(
        "{BASE}\n[[check]]\nname = \"proc\"\nwasm = \"checks/proc.wasm\"\nargs = [\"--min-cpus\", \"4\"]\n"
    );
    let f = check(&text, d.path()).expect("valid");
    assert_eq!(f.checks.len(), 1);
    assert_eq!(f.checks[0].name, "proc");
    assert_eq!(f.checks[0].args, ["--min-cpus", "4"]);
    let again = check(&f.to_toml().unwrap(), d.path()).expect("still valid");
    assert_eq!(again, f);
}

#[test]
fn missing_module_unknown_key_and_duplicates_are_reported() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.wasm"), b"\0asm").unwrap();
    let text = format!(
        "{BASE}\n[[check]]\nname = \"a\"\nwasm = \"a.wasm\"\n\n[[check]]\nname = \"a\"\nwasm = \"missing.wasm\"\nagrs = []\n"
    );
    let e = check(&text, d.path()).unwrap_err();
    let all = format!("{:?}", e.0);
    assert!(all.contains("missing.wasm"), "{all}");
    assert!(all.contains("duplicate check name"), "{all}");
    assert!(all.contains("agrs"), "{all}");
    let io =
        e.0.iter()
            .find(|d| d.message.contains("not found"))
            .unwrap();
    assert_eq!(io.field.as_deref(), Some("check[1].wasm"));
    assert!(io.line > 0);
}

#[test]
fn a_time_limit_is_read_and_bounded() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.wasm"), b"\0asm").unwrap();
    let with = |t: &str| {
        check(
            &format!("{BASE}\n[[check]]\nname = \"a\"\nwasm = \"a.wasm\"\ntimeout_s = {t}\n"),
            d.path(),
        )
    };
    let f = with("2.5").expect("valid");
    assert_eq!(f.checks[0].timeout_s, Some(2.5));
    let again = check(&f.to_toml().unwrap(), d.path()).expect("still valid");
    assert_eq!(again, f);
    assert_eq!(with("5").expect("valid").checks[0].timeout_s, Some(5.0));
    for bad in ["0", "-1", "601", "nan"] {
        let e = with(bad).unwrap_err();
        let d =
            e.0.iter()
                .find(|d| d.field.as_deref() == Some("check[0].timeout_s"))
                .unwrap_or_else(|| panic!("timeout_s = {bad}: {:?}", e.0));
        assert!(d.message.contains("at most 600"), "{}", d.message);
    }
    let e = with("\"30\"").unwrap_err();
    assert!(format!("{:?}", e.0).contains("timeout_s"), "{:?}", e.0);
}
