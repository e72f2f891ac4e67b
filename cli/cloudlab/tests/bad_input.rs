//! Bad input: a clear problem with its kind and line, never a panic, never a partial result.

mod common;

use common::*;
use edgectl_cloudlab::{ImportOptions, import_file, import_source};
use edgectl_model::{Kind, SourceFile};

/// Imports a file from tests/data and returns the first problem's (kind, line).
fn first_problem(name: &str, user: Option<&str>) -> (Kind, usize, String) {
    let d = import_path(&corpus(name), user).expect_err(name);
    let x = &d.0[0];
    // Every problem renders with its source excerpt, like the rest of edgectl.
    let shown = d.render(false, 10);
    assert!(shown.contains(&format!("edgectl::{}", x.kind)), "{shown}");
    (x.kind, x.line, x.message.clone())
}

#[test]
fn truncated_xml() {
    let (k, line, msg) = first_problem("truncated.xml", None);
    assert_eq!((k, line), (Kind::Syntax, 12), "{msg}");
    assert!(msg.contains("XML syntax error"));
}

#[test]
fn wrong_root_element() {
    let (k, line, msg) = first_problem("wrong-root.xml", None);
    assert_eq!((k, line), (Kind::NotRspec, 3));
    assert!(msg.contains("<experiment>"), "{msg}");
}

#[test]
fn wrong_namespace() {
    let d = import_path(&corpus("wrong-namespace.xml"), None).unwrap_err();
    assert_eq!((d.0[0].kind, d.0[0].line), (Kind::NotRspec, 3));
    assert!(
        d.0[0]
            .help
            .as_deref()
            .unwrap_or_default()
            .contains("ProtoGENI v2")
    );
}

#[test]
fn duplicate_client_id() {
    let d = import_path(&corpus("duplicate-client-id.xml"), None).unwrap_err();
    assert_eq!(
        d.len(),
        1,
        "no follow-on errors for the duplicate's interfaces: {}",
        d.render(false, 5)
    );
    assert_eq!((d.0[0].kind, d.0[0].line), (Kind::DuplicateName, 14));
    assert!(d.0[0].message.contains("line 3"), "{}", d.0[0].message);
}

#[test]
fn interface_without_mac_in_a_manifest() {
    let (k, line, msg) = first_problem("no-mac.xml", None);
    assert_eq!((k, line), (Kind::MissingField, 17));
    assert!(msg.contains("if2") && msg.contains("mac_address"), "{msg}");
}

#[test]
fn link_names_an_unknown_interface() {
    let d = import_path(&corpus("unknown-interface.xml"), None).unwrap_err();
    assert_eq!((d.0[0].kind, d.0[0].line), (Kind::UnknownInterface, 27));
    assert!(d.0[0].message.contains("if9"));
    assert!(
        d.0[0].help.as_deref().unwrap_or_default().contains("if1")
            || d.0[0].help.as_deref().unwrap_or_default().contains("if2"),
        "a suggestion"
    );
}

#[test]
fn address_that_does_not_parse() {
    let (k, line, msg) = first_problem("bad-address.xml", None);
    assert_eq!((k, line), (Kind::InvalidAddress, 18));
    assert!(msg.contains("10.10.1.300"), "{msg}");
}

#[test]
fn netmask_that_is_not_a_mask() {
    let (k, line, msg) = first_problem("bad-netmask.xml", None);
    assert_eq!((k, line), (Kind::InvalidAddress, 18));
    assert!(msg.contains("255.0.255.0"), "{msg}");
}

#[test]
fn mac_that_does_not_parse() {
    let (k, line, _) = first_problem("bad-mac.xml", None);
    assert_eq!((k, line), (Kind::InvalidMac, 17));
}

#[test]
fn link_members_on_different_subnets() {
    let (k, line, _) = first_problem("mixed-subnets.xml", None);
    assert_eq!((k, line), (Kind::InvalidAddress, 17));
}

#[test]
fn empty_experiment() {
    let (k, line, msg) = first_problem("empty-experiment.xml", None);
    assert_eq!((k, line), (Kind::NoNodes, 2));
    assert!(msg.contains("1 other node skipped"), "{msg}");
}

#[test]
fn several_users_and_no_choice() {
    let (k, line, msg) = first_problem("two-users.xml", None);
    assert_eq!((k, line), (Kind::AmbiguousUser, 11));
    assert!(msg.contains("alice, bob"), "{msg}");
    let (k, line, _) = first_problem("two-users.xml", Some("alice"));
    assert_eq!(
        (k, line),
        (Kind::UnknownUser, 14),
        "bob's node has no login for alice"
    );
}

#[test]
fn dtd_entities_are_refused() {
    let (k, line, _) = first_problem("entities.xml", None);
    assert_eq!((k, line), (Kind::Syntax, 3));
}

#[test]
fn empty_and_whitespace_files() {
    for text in ["", "  \n\t\n"] {
        let d =
            import_source(&SourceFile::new("e.xml", text), &ImportOptions::default()).unwrap_err();
        assert_eq!(d.0[0].kind, Kind::Empty);
    }
}

#[test]
fn binary_and_non_utf8_files() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("m.xml");
    std::fs::write(&bin, b"<rspec>\n\0\0").unwrap();
    let d = import_file(&bin, &ImportOptions::default()).unwrap_err();
    assert_eq!((d.0[0].kind, d.0[0].line), (Kind::Binary, 2));
    std::fs::write(&bin, b"<rspec>\n\xff</rspec>").unwrap();
    let d = import_file(&bin, &ImportOptions::default()).unwrap_err();
    assert_eq!((d.0[0].kind, d.0[0].line), (Kind::NotUtf8, 2));
    let d = import_file(dir.path(), &ImportOptions::default()).unwrap_err();
    assert_eq!(d.0[0].kind, Kind::IsDirectory);
}

#[test]
fn json_syntax_and_shape() {
    let d = import_source(
        &SourceFile::new("m.json", "{\n  \"urn:a\": \"<rspec/>\",\n  oops\n}"),
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert_eq!((d.0[0].kind, d.0[0].line), (Kind::Syntax, 3));
    let d = import_source(
        &SourceFile::new("m.json", "{\n  \"urn:a\": 42\n}"),
        &ImportOptions::default(),
    )
    .unwrap_err();
    assert_eq!((d.0[0].kind, d.0[0].line), (Kind::NotRspec, 2));
    let d = import_source(&SourceFile::new("m.json", "{}"), &ImportOptions::default()).unwrap_err();
    assert_eq!(d.0[0].kind, Kind::NoNodes);
}

#[test]
fn nothing_is_written_on_error() {
    // The library returns text only on success; the CLI writes only what it returns. Here the
    // write itself: an existing file is replaced whole, and a failed write leaves no temp file.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cluster.toml");
    std::fs::write(&out, "old").unwrap();
    edgectl_cloudlab::write_atomic(&out, "new").unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
    let missing = dir.path().join("no-such-dir").join("cluster.toml");
    assert!(edgectl_cloudlab::write_atomic(&missing, "x").is_err());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

/// Every prefix and many single-byte corruptions of every sample either import or fail with
/// diagnostics; none panics.
#[test]
fn never_panics() {
    let mut texts: Vec<String> = std::fs::read_dir(data(""))
        .unwrap()
        .chain(std::fs::read_dir(corpus("")).unwrap())
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    if let Some(dir) = fixtures() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "xml") {
                texts.push(std::fs::read_to_string(p).unwrap());
            }
        }
    }
    let mut seed: u64 = 0x5eed;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    let junk = ['<', '>', '"', '/', '=', '&', ' ', 'x', '1', ':', '.'];
    let opts = ImportOptions {
        user: Some("alice".into()),
        name: None,
    };
    for t in &texts {
        let step = (t.len() / 60).max(1);
        for cut in (0..t.len()).step_by(step) {
            if t.is_char_boundary(cut) {
                let _ = import_source(&SourceFile::new("cut.xml", &t[..cut]), &opts);
            }
        }
        for _ in 0..60 {
            let mut b: Vec<char> = t.chars().collect();
            let i = next() % b.len().max(1);
            if !b.is_empty() {
                b[i] = junk[next() % junk.len()];
            }
            let s: String = b.into_iter().collect();
            let _ = import_source(&SourceFile::new("flip.xml", s.as_str()), &opts);
            let _ = import_source(
                &SourceFile::new("flip.xml", s.as_str()),
                &ImportOptions::default(),
            );
        }
    }
}
