//! Importing the real CloudLab samples: every value asserted here was read from the XML.

mod common;

use common::*;
use edgectl_cloudlab::{ImportOptions, import_source};
use edgectl_model::net::Mac;
use edgectl_model::{Kind, SourceFile, TopologyFile};

struct Want {
    name: &'static str,
    host: &'static str,
    control_ip: &'static str,
    profile: &'static str,
    /// (network, address, MAC as in the manifest)
    lan: &'static [(&'static str, &'static str, &'static str)],
}

fn assert_nodes(file: &TopologyFile, want: &[Want]) {
    let names: Vec<&str> = file.nodes.iter().map(|n| n.name.as_str()).collect();
    let want_names: Vec<&str> = want.iter().map(|w| w.name).collect();
    assert_eq!(names, want_names);
    for (n, w) in file.nodes.iter().zip(want) {
        assert_eq!(n.host, w.host, "{}", w.name);
        assert_eq!(n.control_ip.as_deref(), Some(w.control_ip), "{}", w.name);
        assert_eq!(n.profile.as_deref(), Some(w.profile), "{}", w.name);
        assert_eq!(n.lan.len(), w.lan.len(), "{}", w.name);
        for (l, (net, addr, mac)) in n.lan.iter().zip(w.lan) {
            assert_eq!(l.network.as_deref(), Some(*net), "{}", w.name);
            assert_eq!(l.address, *addr, "{}", w.name);
            assert_eq!(
                Mac::parse(&l.mac).unwrap(),
                Mac::parse(mac).unwrap(),
                "{}",
                w.name
            );
        }
    }
}

#[test]
fn wisconsin_c220g1_lan() {
    let Some(dir) = fixtures() else { return };
    let imp = import_ok(
        &dir.join("manifest_wisc-c220g1-lan_bucket-xv-cephcluster.xml"),
        Some("hxlim"),
    );
    assert!(
        imp.manifest,
        "type=\"request\" on a portal manifest must not fool the importer"
    );
    assert!(imp.unknown_profiles.is_empty());
    let f = &imp.file;
    assert_eq!(f.cluster.name, "Balancer");
    assert_eq!(f.cluster.ssh_user, "hxlim");
    assert_eq!(f.cluster.site.as_deref(), Some("wisc"));
    assert_eq!(f.cluster.expires, None);
    assert_eq!(f.cluster.nixpkgs, "github:NixOS/nixpkgs/nixos-25.11");
    let net = &f.networks["link-0"];
    assert_eq!((net.subnet.as_str(), net.vlan), ("10.10.1.0/24", None));
    // Addresses are not in client_id order (server-5 has .1), and server-1's port is eth2.
    assert_nodes(
        f,
        &[
            Want {
                name: "server-4",
                host: "c220g1-030621.wisc.cloudlab.us",
                control_ip: "128.105.145.194",
                profile: "c220g1",
                lan: &[("link-0", "10.10.1.2/24", "90e2ba24d115")],
            },
            Want {
                name: "server-5",
                host: "c220g1-030627.wisc.cloudlab.us",
                control_ip: "128.105.145.200",
                profile: "c220g1",
                lan: &[("link-0", "10.10.1.1/24", "90e2ba949c7d")],
            },
            Want {
                name: "server-1",
                host: "c220g1-030807.wisc.cloudlab.us",
                control_ip: "128.105.145.210",
                profile: "c220g1",
                lan: &[("link-0", "10.10.1.3/24", "90e2ba814914")],
            },
            Want {
                name: "server-2",
                host: "c220g1-030605.wisc.cloudlab.us",
                control_ip: "128.105.145.178",
                profile: "c220g1",
                lan: &[("link-0", "10.10.1.5/24", "90e2ba84d83d")],
            },
            Want {
                name: "server-3",
                host: "c220g1-030615.wisc.cloudlab.us",
                control_ip: "128.105.145.188",
                profile: "c220g1",
                lan: &[("link-0", "10.10.1.4/24", "90e2baae6d35")],
            },
        ],
    );
    assert_eq!(f.nodes[0].roles, vec!["ray-head", "zenoh-router"]);
    assert!(f.nodes[1..].iter().all(|n| n.roles == vec!["ray-worker"]));
    assert!(
        f.nodes.iter().all(|n| n.features.is_empty()),
        "no c220g1 has a GPU, so no +cuda"
    );
    let (cluster, _) = check_imported(&imp);
    assert_eq!(cluster.nodes.len(), 5);
    assert_eq!(
        cluster.ray_head().map(|n| n.name.as_str()),
        Some("server-4")
    );
    assert_eq!(
        cluster.node("server-1").unwrap().interfaces[0]
            .mac
            .to_string(),
        "90:e2:ba:81:49:14"
    );
    // Comments say where values came from.
    assert!(imp.toml.contains("# from <node client_id=\"server-4\"> sliver urn:publicid:IDN+wisc.cloudlab.us+sliver+929425"), "{}", imp.toml);
    assert!(
        imp.toml
            .contains("experiment DNS name server-4.Balancer.dstore-PG0.wisc.cloudlab.us")
    );
    assert!(imp.toml.contains("Emulab port eth2"));
}

#[test]
fn wisconsin_with_another_member() {
    let Some(dir) = fixtures() else { return };
    let imp = import_ok(
        &dir.join("manifest_wisc-c220g1-lan_bucket-xv-cephcluster.xml"),
        Some("kyleshu"),
    );
    assert_eq!(imp.file.cluster.ssh_user, "kyleshu");
    check_imported(&imp);
}

#[test]
fn wisconsin_needs_a_user() {
    let Some(dir) = fixtures() else { return };
    let d = import_path(
        &dir.join("manifest_wisc-c220g1-lan_bucket-xv-cephcluster.xml"),
        None,
    )
    .unwrap_err();
    assert_eq!(d.len(), 1);
    let x = &d.0[0];
    assert_eq!(x.kind, Kind::AmbiguousUser);
    assert_eq!(x.line, 9, "the first <login>");
    for u in [
        "kyleshu", "zhurd", "gjghfd", "Naiqian", "liufy", "Tzechinh", "pkuscc", "liuhy",
        "BucketXv", "hxlim",
    ] {
        assert!(x.message.contains(u), "{u} missing from {}", x.message);
    }
    let d = import_path(
        &dir.join("manifest_wisc-c220g1-lan_bucket-xv-cephcluster.xml"),
        Some("mallory"),
    )
    .unwrap_err();
    assert_eq!(d.len(), 5, "every node says it has no login for mallory");
    assert!(d.iter().all(|x| x.kind == Kind::UnknownUser));
    assert_eq!(d.0[0].line, 2);
}

#[test]
fn utah_c6525_link() {
    let Some(dir) = fixtures() else { return };
    let imp = import_ok(
        &dir.join("manifest_utah-c6525-100g-link_sebastianingino-CS244-oncache.xml"),
        None,
    );
    let f = &imp.file;
    assert_eq!(
        f.cluster.ssh_user, "ingino",
        "the only login user is taken without --user"
    );
    assert_eq!(f.cluster.name, "ingino-259075");
    assert_eq!(f.cluster.site.as_deref(), Some("utah"));
    // c6525-100g is a built-in profile: the import needs no stub and check passes as is.
    assert!(
        imp.unknown_profiles.is_empty(),
        "{:?}",
        imp.unknown_profiles
    );
    assert!(
        !imp.notes
            .iter()
            .any(|n| n.contains("not a built-in profile"))
    );
    let net = &f.networks["link-1"];
    assert_eq!(
        (net.subnet.as_str(), net.vlan),
        ("10.10.1.0/24", None),
        "vlantag without emulab:vlan_tagging is untagged on the node"
    );
    assert_nodes(
        f,
        &[
            Want {
                name: "node0",
                host: "amd269.utah.cloudlab.us",
                control_ip: "128.110.219.180",
                profile: "c6525-100g",
                lan: &[("link-1", "10.10.1.1/24", "0c42a18b3178")],
            },
            Want {
                name: "node1",
                host: "amd280.utah.cloudlab.us",
                control_ip: "128.110.219.191",
                profile: "c6525-100g",
                lan: &[("link-1", "10.10.1.2/24", "0c42a1639e3c")],
            },
        ],
    );
    check_imported(&imp);
}

#[test]
fn utah_two_lans() {
    let Some(dir) = fixtures() else { return };
    let imp = import_ok(
        &dir.join("manifest_utah-c6525-100g-2lans_sun12rise-dRAID.xml"),
        Some("sunrise"),
    );
    let f = &imp.file;
    assert_eq!(f.cluster.name, "test05");
    assert_eq!(f.networks.len(), 2);
    assert_eq!(
        (
            f.networks["link1"].subnet.as_str(),
            f.networks["link1"].vlan
        ),
        ("192.168.1.0/24", None)
    );
    assert_eq!(
        (
            f.networks["link2"].subnet.as_str(),
            f.networks["link2"].vlan
        ),
        ("192.168.2.0/24", None)
    );
    assert_nodes(
        f,
        &[
            Want {
                name: "node0",
                host: "amd265.utah.cloudlab.us",
                control_ip: "128.110.219.176",
                profile: "c6525-100g",
                lan: &[
                    ("link1", "192.168.1.1/24", "043f72acca37"),
                    ("link2", "192.168.2.1/24", "0c42a18cdbcc"),
                ],
            },
            Want {
                name: "node1",
                host: "amd252.utah.cloudlab.us",
                control_ip: "128.110.219.163",
                profile: "c6525-100g",
                lan: &[
                    ("link1", "192.168.1.2/24", "043f72accdef"),
                    ("link2", "192.168.2.2/24", "0c42a18b3120"),
                ],
            },
            Want {
                name: "node2",
                host: "amd272.utah.cloudlab.us",
                control_ip: "128.110.219.183",
                profile: "c6525-100g",
                lan: &[
                    ("link1", "192.168.1.3/24", "043f72acca07"),
                    ("link2", "192.168.2.3/24", "0c42a18b3188"),
                ],
            },
            Want {
                name: "node3",
                host: "amd277.utah.cloudlab.us",
                control_ip: "128.110.219.188",
                profile: "c6525-100g",
                lan: &[
                    ("link1", "192.168.1.4/24", "043f72acca8f"),
                    ("link2", "192.168.2.4/24", "0c42a18cdc0c"),
                ],
            },
        ],
    );
    let (cluster, _) = check_imported(&imp);
    assert_eq!(cluster.node("node3").unwrap().interfaces.len(), 2);
}

#[test]
fn geni_am_manifest_with_expiry_and_generic_type() {
    let Some(dir) = fixtures() else { return };
    let imp = import_ok(
        &dir.join("manifest_utah-m510-geniam-expires_tcmitchell-geni-pisces-Vagrant2md.xml"),
        None,
    );
    assert!(imp.manifest);
    let f = &imp.file;
    assert_eq!(f.cluster.expires.as_deref(), Some("2017-03-24T21:08:27Z"));
    assert_eq!(f.cluster.ssh_user, "tmitchel");
    assert_eq!(f.cluster.site.as_deref(), Some("utah"));
    // `<hardware_type name="pc"/>` is generic: the type is the vnode's.
    assert_nodes(
        f,
        &[Want {
            name: "node-0",
            host: "ms1041.utah.cloudlab.us",
            control_ip: "128.110.153.194",
            profile: "m510",
            lan: &[],
        }],
    );
    assert!(imp.toml.contains("from <emulab:vnode hardware_type>"));
    assert!(f.networks.is_empty());
    // No experiment name in a GENI AM manifest: the file name, cut to a valid cluster name.
    assert!(
        f.cluster.name.starts_with("manifest_utah-m510"),
        "{}",
        f.cluster.name
    );
    assert!(f.cluster.name.len() <= 63);
    check_imported(&imp);
}

#[test]
fn request_rspec_skips_vms_and_keeps_the_pc() {
    let Some(dir) = fixtures() else { return };
    let path = dir.join("request_emulab-xen-rawpc-2links_tcmitchell-geni-pisces.xml");
    let d = import_path(&path, None).unwrap_err();
    assert_eq!(
        d.0[0].kind,
        Kind::UnknownUser,
        "a request names no login user"
    );
    let imp = import_ok(&path, Some("alice"));
    assert!(!imp.manifest);
    let f = &imp.file;
    assert_eq!(f.nodes.len(), 1);
    let n = &f.nodes[0];
    assert_eq!(n.name, "middle");
    assert_eq!(n.profile.as_deref(), Some("pc"));
    assert_eq!(n.host, "middle", "a placeholder host");
    assert!(n.control_ip.is_none() && n.lan.is_empty());
    assert!(
        imp.notes
            .iter()
            .any(|x| x.contains("vm1") && x.contains("emulab-xen"))
    );
    assert!(imp.notes.iter().any(|x| x.contains("vm2")));
    assert!(
        imp.notes
            .iter()
            .any(|x| x.contains("link-0") && x.contains("not imported"))
    );
    assert_eq!(imp.unknown_profiles, vec!["pc".to_string()]);
    check_imported(&imp);
}

#[test]
fn portal_api_json_map_over_two_sites() {
    let Some(dir) = fixtures() else { return };
    let wisc =
        std::fs::read_to_string(dir.join("manifest_wisc-c220g1-lan_bucket-xv-cephcluster.xml"))
            .unwrap();
    // The same person on both sites (the samples come from different people).
    let utah = std::fs::read_to_string(
        dir.join("manifest_utah-c6525-100g-link_sebastianingino-CS244-oncache.xml"),
    )
    .unwrap()
    .replace("username=\"ingino\"", "username=\"hxlim\"")
    // Both samples use the portal's default 10.10.1.0/24, and one topology cannot hold two
    // LANs with the same subnet (see portal_api_json_overlapping_lans).
    .replace("10.10.1.", "10.10.2.");
    let json = serde_json::json!({
        "urn:publicid:IDN+wisc.cloudlab.us+authority+cm": wisc,
        "urn:publicid:IDN+utah.cloudlab.us+authority+cm": utah,
    });
    let src = SourceFile::new(
        "manifests.json",
        serde_json::to_string_pretty(&json).unwrap(),
    );
    let imp = import_source(
        &src,
        &ImportOptions {
            user: Some("hxlim".into()),
            name: Some("two-sites".into()),
        },
    )
    .unwrap_or_else(|d| panic!("{}", d.render(false, 5)));
    let f = &imp.file;
    assert_eq!(f.cluster.name, "two-sites");
    assert_eq!(f.cluster.site, None, "two sites: none is the cluster's");
    assert_eq!(f.nodes.len(), 7);
    let node0 = f.nodes.iter().find(|n| n.name == "node0").unwrap();
    assert_eq!(node0.tags, vec!["utah"]);
    assert_eq!(node0.host, "amd269.utah.cloudlab.us");
    let s4 = f.nodes.iter().find(|n| n.name == "server-4").unwrap();
    assert_eq!(s4.tags, vec!["wisc"]);
    assert_eq!(
        f.networks.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["link-0", "link-1"]
    );
    assert_eq!(
        f.nodes
            .iter()
            .filter(|n| n.roles.iter().any(|r| r == "ray-head"))
            .count(),
        1
    );
    check_imported(&imp);
}

#[test]
fn portal_api_json_errors_point_into_the_manifest() {
    let xml = std::fs::read_to_string(corpus("bad-address.xml")).unwrap();
    let json = serde_json::json!({ "urn:publicid:IDN+wisc.cloudlab.us+authority+cm": xml });
    let src = SourceFile::new("m.json", json.to_string());
    let d = import_source(&src, &ImportOptions::default()).unwrap_err();
    assert_eq!(d.0[0].kind, Kind::InvalidAddress);
    assert_eq!(d.0[0].line, 18);
    assert_eq!(
        d.0[0].file,
        "m.json[urn:publicid:IDN+wisc.cloudlab.us+authority+cm]"
    );
}

#[test]
fn namespaces_not_prefixes_and_any_element_order() {
    let imp = import_ok(&data("shuffled_prefixes.xml"), None);
    let f = &imp.file;
    assert_eq!(f.cluster.ssh_user, "carol");
    assert_eq!(f.cluster.site.as_deref(), Some("clemson"));
    assert_eq!(f.networks["lan0"].subnet, "10.0.0.0/25");
    let b = &f.nodes[0];
    assert_eq!(
        (b.name.as_str(), b.host.as_str(), b.port),
        ("b", "clnode002.clemson.cloudlab.us", Some(2222))
    );
    assert_eq!(
        b.profile.as_deref(),
        Some("r650"),
        "the emulab-namespace vnode, not the decoy with an `emulab` prefix"
    );
    assert_eq!(b.lan[0].address, "10.0.0.2/25");
    assert_eq!(
        Mac::parse(&b.lan[0].mac).unwrap().to_string(),
        "aa:bb:cc:dd:ee:02"
    );
    let a = &f.nodes[1];
    assert_eq!(
        (a.name.as_str(), a.profile.as_deref(), a.port),
        ("a", Some("c220g5"), None)
    );
    check_imported(&imp);
}

#[test]
fn synthetic_manifest_passes_check_without_stubs() {
    let imp = import_ok(&data("good.xml"), None);
    assert!(imp.unknown_profiles.is_empty());
    let (c, _) = check_imported(&imp);
    assert_eq!(
        c.nodes.iter().map(|n| n.host.as_str()).collect::<Vec<_>>(),
        vec!["c220g5-11.wisc.cloudlab.us", "c220g5-12.wisc.cloudlab.us"]
    );
    assert_eq!(c.networks[0].vlan, None, "no vlantag, no vlan");
}

#[test]
fn odd_client_ids_become_host_names() {
    let xml = std::fs::read_to_string(data("good.xml"))
        .unwrap()
        .replace("client_id=\"n1\"", "client_id=\"Node.One\"")
        .replace("client_id=\"n2\"", "client_id=\"Node/One\"");
    let imp = import_source(&SourceFile::new("odd.xml", xml), &ImportOptions::default())
        .unwrap_or_else(|d| panic!("{}", d.render(false, 5)));
    let names: Vec<&str> = imp.file.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, vec!["Node-One", "Node-One-2"]);
    assert_eq!(
        imp.notes
            .iter()
            .filter(|n| n.contains("not a valid NixOS host name"))
            .count(),
        2
    );
    check_imported(&imp);
}

#[test]
fn hostile_strings_stay_inside_toml_strings() {
    let xml = std::fs::read_to_string(data("good.xml")).unwrap().replace(
        "username=\"alice\"",
        "username=\"a&quot;\nx = 1&#10;[evil]\"",
    );
    let src = SourceFile::new("hostile.xml", xml);
    // The user name is not a valid Linux user name, so check refuses the import; what matters
    // is that it got that far without the name breaking the TOML.
    let d = import_source(&src, &ImportOptions::default()).unwrap_err();
    assert!(
        d.iter().all(|x| x.kind == Kind::InvalidValue),
        "{}",
        d.render(false, 5)
    );
    assert!(
        d.iter()
            .any(|x| x.field.as_deref() == Some("cluster.ssh_user"))
    );
}

#[test]
fn portal_api_json_overlapping_lans() {
    let Some(dir) = fixtures() else { return };
    let wisc =
        std::fs::read_to_string(dir.join("manifest_wisc-c220g1-lan_bucket-xv-cephcluster.xml"))
            .unwrap();
    let utah = std::fs::read_to_string(
        dir.join("manifest_utah-c6525-100g-link_sebastianingino-CS244-oncache.xml"),
    )
    .unwrap()
    .replace("username=\"ingino\"", "username=\"hxlim\"");
    let json = serde_json::json!({ "urn:publicid:IDN+wisc.cloudlab.us+authority+cm": wisc, "urn:publicid:IDN+utah.cloudlab.us+authority+cm": utah });
    let src = SourceFile::new("manifests.json", json.to_string());
    let d = import_source(
        &src,
        &ImportOptions {
            user: Some("hxlim".into()),
            name: None,
        },
    )
    .unwrap_err();
    assert_eq!(d.0[0].kind, Kind::InvalidValue);
    assert!(
        d.0[0].message.contains("overlaps"),
        "{}",
        d.render(false, 3)
    );
}
