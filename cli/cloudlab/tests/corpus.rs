//! Every file in `tests/corpus/` is a bad RSpec. An XML comment `<!-- expect: KIND -->` (with
//! `user=NAME` when the import picks a CloudLab user) says which problem it has, and a
//! `<!-- <- KIND -->` comment marks the line of the XML where it must be reported.

mod common;

use std::path::PathBuf;

use common::*;
use edgectl_model::Kind;

fn header(text: &str) -> Option<(&str, Option<&str>)> {
    let rest = &text[text.find("<!-- expect: ")? + "<!-- expect: ".len()..];
    let rest = &rest[..rest.find("-->")?];
    let mut words = rest.split_whitespace();
    let kind = words.next()?;
    let user = words.find_map(|w| w.strip_prefix("user="));
    Some((kind, user))
}

#[test]
fn every_bad_rspec_reports_its_kind_on_its_line() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 25,
        "the XML corpus must hold at least 25 files, has {}",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        let (kind_name, user) =
            header(&text).unwrap_or_else(|| panic!("{}: no `<!-- expect: KIND -->`", f.display()));
        let kind = Kind::from_name(kind_name)
            .unwrap_or_else(|| panic!("{}: unknown kind {kind_name}", f.display()));
        let marker = format!("<!-- <- {kind_name} -->");
        let line = text
            .lines()
            .position(|l| l.contains(&marker))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{}: no `{marker}` marker", f.display()));
        let shown = f.display().to_string();
        match import_path(f, user) {
            Ok(_) => failures.push(format!("{shown}: imported, expected {kind_name}@{line}")),
            Err(diags) => {
                // The location must be in the XML itself, not in the topology made from it.
                if !diags
                    .iter()
                    .any(|d| d.kind == kind && d.line == line && d.file == shown)
                {
                    let got: Vec<String> = diags
                        .iter()
                        .map(|d| format!("{}@{}:{}", d.kind, d.file, d.line))
                        .collect();
                    failures.push(format!(
                        "{shown}: expected {kind_name}@{line}, got {}",
                        got.join(", ")
                    ));
                }
                for d in diags
                    .iter()
                    .filter(|d| d.message.is_empty() || d.help.is_none())
                {
                    failures.push(format!(
                        "{shown}: {}@{} has no message or no fix: {}",
                        d.kind, d.line, d.message
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
