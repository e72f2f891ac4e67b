//! Export to a geni-lib profile / request RSpec, and back through the importer.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use edgectl_cloudlab::{ImportOptions, Plan, import_source, plan, profile_py, request_rspec};
use edgectl_model::{Cluster, LoadOptions, SourceFile, TopologyFile, load};

fn example() -> (Cluster, TopologyFile) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge-lab.toml");
    let l = load(&p, &LoadOptions::default()).unwrap_or_else(|d| panic!("{}", d.render(false, 5)));
    (l.cluster, l.file)
}

/// What a round trip must keep: node -> (type), network -> subnet, node -> [(network, address)].
type Shape = (
    BTreeMap<String, String>,
    BTreeMap<String, String>,
    BTreeMap<String, Vec<(String, String)>>,
);

fn shape_of_plan(p: &Plan, cluster: &Cluster) -> Shape {
    let types = p
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.hardware_type.clone()))
        .collect();
    let nets = cluster
        .networks
        .iter()
        .map(|n| (n.name.clone(), n.subnet.to_string()))
        .collect();
    let mut lans: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for l in &p.lans {
        for (i, j) in &l.members {
            let n = &p.nodes[*i];
            let f = &n.ifaces[*j];
            lans.entry(n.name.clone())
                .or_default()
                .push((l.name.clone(), format!("{}/{}", f.addr, f.prefix)));
        }
    }
    for v in lans.values_mut() {
        v.sort();
    }
    (types, nets, lans)
}

fn shape_of_file(f: &TopologyFile) -> Shape {
    let types = f
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.profile.clone().unwrap_or_default()))
        .collect();
    let nets = f
        .networks
        .iter()
        .map(|(k, v)| (k.clone(), v.subnet.clone()))
        .collect();
    let mut lans: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for n in &f.nodes {
        for l in &n.lan {
            lans.entry(n.name.clone())
                .or_default()
                .push((l.network.clone().unwrap_or_default(), l.address.clone()));
        }
    }
    for v in lans.values_mut() {
        v.sort();
    }
    (types, nets, lans)
}

fn reimport(text: &str, name: &str) -> TopologyFile {
    let imp = import_source(
        &SourceFile::new(name, text),
        &ImportOptions {
            user: Some("alice".into()),
            name: None,
        },
    )
    .unwrap_or_else(|d| panic!("{}\n{text}", d.render(false, 5)));
    assert!(!imp.manifest, "a request RSpec");
    check_imported(&imp);
    imp.file
}

#[test]
fn example_plan() {
    let (c, f) = example();
    let p = plan(&c, &f);
    let types: Vec<(&str, &str)> = p
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.hardware_type.as_str()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("head", "c240g5"),
            ("worker1", "c220g5"),
            ("worker2", "c220g5"),
            ("worker3", "c220g5")
        ]
    );
    assert!(p.nodes.iter().all(|n| n.component_manager_id.as_deref()
        == Some("urn:publicid:IDN+wisc.cloudlab.us+authority+cm")));
    assert_eq!(p.lans.len(), 1);
    assert_eq!(p.lans[0].members.len(), 4);
}

#[test]
fn request_rspec_round_trip() {
    let (c, f) = example();
    let p = plan(&c, &f);
    let xml = request_rspec(&p);
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let root = doc.root_element();
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.geni.net/resources/rspec/3")
    );
    assert_eq!(root.attribute("type"), Some("request"));
    assert!(xml.contains("urn:publicid:IDN+emulab.net+image+emulab-ops//UBUNTU22-64-STD"));
    let back = reimport(&xml, "request.xml");
    assert_eq!(shape_of_file(&back), shape_of_plan(&p, &c));
    assert_eq!(
        back.cluster.site.as_deref(),
        Some("wisc"),
        "the pinned site comes back"
    );
    assert_eq!(back.networks["lan0"].subnet, "10.10.1.0/24");
    // And once more: the re-imported topology exports to the same request.
    let (c2, f2) = edgectl_model::check_source(
        SourceFile::new("x.toml", back_toml(&xml)),
        Path::new("."),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(request_rspec(&plan(&c2, &f2)), xml);
}

fn back_toml(xml: &str) -> String {
    import_source(
        &SourceFile::new("r.xml", xml),
        &ImportOptions {
            user: Some("alice".into()),
            name: None,
        },
    )
    .unwrap()
    .toml
}

#[test]
fn manifest_to_request_to_topology() {
    let Some(dir) = fixtures() else { return };
    let imp = import_ok(
        &dir.join("manifest_utah-c6525-100g-2lans_sun12rise-dRAID.xml"),
        Some("sunrise"),
    );
    let (c, f) = check_imported(&imp);
    let p = plan(&c, &f);
    assert!(p.nodes.iter().all(|n| n.hardware_type == "c6525-100g"));
    assert!(p.nodes.iter().all(|n| n.component_manager_id.as_deref()
        == Some("urn:publicid:IDN+utah.cloudlab.us+authority+cm")));
    let back = reimport(&request_rspec(&p), "r.xml");
    assert_eq!(shape_of_file(&back), shape_of_file(&imp.file));
}

#[test]
fn extended_profiles_request_their_base_type() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge-lab.toml")).unwrap().replace(
        "[network.lan0]",
        "[profile.c220g5-p4]\nextends = \"c220g5\"\n\n[profile.c220g5-p4-big]\nextends = \"c220g5-p4\"\nmemory = { gib = 384 }\n\n[network.lan0]",
    );
    let text = text.replacen(
        "name = \"worker1\"",
        "name = \"worker1\"\nprofile = \"c220g5-p4-big\"",
        1,
    );
    let (c, f) = edgectl_model::check_source(
        SourceFile::new("x.toml", text),
        Path::new("."),
        &LoadOptions::default(),
    )
    .unwrap_or_else(|d| panic!("{}", d.render(false, 5)));
    let p = plan(&c, &f);
    assert_eq!(p.nodes[1].hardware_type, "c220g5");
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("c220g5-p4-big") && n.contains("c220g5"))
    );
}

fn python() -> Option<String> {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let found = match Command::new(&py).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(py.clone()),
        _ => Err(format!("no {py} to compile profile.py with")),
    };
    edgectl_testkit::require("python3", found)
}

#[test]
fn profile_py_compiles() {
    let Some(py) = python() else { return };
    let (c, f) = example();
    // A source name with a newline must not escape its comment line.
    let text = profile_py(&plan(&c, &f), "edge-lab.toml\nimport os; os.system('x')");
    assert!(!text.lines().any(|l| l.starts_with("import os")), "{text}");
    assert!(text.contains("request.RawPC(\"head\")"));
    assert!(text.contains("node_0.hardware_type = \"c240g5\""));
    assert!(text.contains("pg.IPv4Address(\"10.10.1.1\", \"255.255.255.0\")"));
    assert!(
        text.contains("component_manager_id = \"urn:publicid:IDN+wisc.cloudlab.us+authority+cm\"")
    );
    assert!(text.contains("request.LAN(\"lan0\")"));
    assert!(text.is_ascii());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("profile.py");
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(&py)
        .args(["-m", "py_compile"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Python that can import geni-lib: $GENILIB_PYTHON, else python3, else python2 (geni-lib
/// 0.9.9.4, the release on PyPI, is Python 2 code).
fn genilib_python() -> Option<String> {
    let candidates: Vec<String> = match std::env::var("GENILIB_PYTHON") {
        Ok(p) => vec![p],
        Err(_) => vec!["python3".into(), "python2".into()],
    };
    for py in &candidates {
        let probe = Command::new(py)
            .args(["-c", "import geni.portal, geni.rspec.pg"])
            .output();
        if probe.is_ok_and(|o| o.status.success()) {
            return Some(py.clone());
        }
    }
    edgectl_testkit::require(
        "genilib",
        Err(format!(
            "geni-lib does not import in {candidates:?} (PyPI's geni-lib 0.9.9.4 is Python 2 code; set GENILIB_PYTHON)"
        )),
    )
}

#[test]
fn geni_lib_runs_the_profile_and_its_rspec_round_trips() {
    let Some(py) = genilib_python() else { return };
    let (c, f) = example();
    let p = plan(&c, &f);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("profile.py");
    std::fs::write(&file, profile_py(&p, "edge-lab.toml")).unwrap();
    let out = Command::new(&py)
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = String::from_utf8(out.stdout).unwrap();
    let back = reimport(&xml, "geni-lib.xml");
    assert_eq!(shape_of_file(&back), shape_of_plan(&p, &c));
    assert_eq!(back.cluster.site.as_deref(), Some("wisc"));
}
