//! Random valid topologies survive serialise-then-parse unchanged, and stay valid.

use std::path::Path;

use edgectl_model::topology::{
    ClusterSpec, DefaultsSpec, LanSpec, NodeSpec, TargetsSpec, TopologyFile,
};
use edgectl_model::{LoadOptions, SourceFile, check_source};
use proptest::prelude::*;

const PROFILES: &[&str] = &[
    "c220g5",
    "c220g1",
    "c220g2",
    "c240g5",
    "c4130",
    "d7525",
    "c6525-100g",
    "m510",
];
const FEATURES: &[&str] = &["net-tuning", "wasm", "unikernel", "zenoh", "ray", "agent"];

fn node(
    i: usize,
    profile: &'static str,
    extra: Vec<String>,
    tags: Vec<String>,
    vlan: Option<u16>,
    port: Option<u16>,
    short_mac: bool,
) -> NodeSpec {
    let roles = if i == 0 {
        vec!["ray-head".to_string(), "zenoh-router".to_string()]
    } else {
        vec!["ray-worker".to_string()]
    };
    let mac = if short_mac {
        format!("02aa{:08x}", i)
    } else {
        format!("02:bb:00:00:{:02x}:{:02x}", i / 256, i % 256)
    };
    NodeSpec {
        name: format!("node-{i}"),
        host: format!("n{i}.lab.example.org"),
        port,
        user: None,
        profile: Some(profile.to_string()),
        roles,
        features: extra,
        tags,
        control_ip: Some(format!("128.105.0.{}", i + 1)),
        lan: vec![LanSpec {
            network: None,
            address: format!("10.10.1.{}/24", i + 1),
            mac,
            vlan,
        }],
        boot_disk: i
            .is_multiple_of(2)
            .then(|| format!("/dev/disk/by-id/wwn-0x{i:016x}")),
        root_device: i
            .is_multiple_of(2)
            .then(|| format!("/dev/disk/by-uuid/{i:08x}-0000-4000-8000-000000000000")),
        root_fs: i.is_multiple_of(2).then(|| "ext4".to_string()),
        login_uid: i.is_multiple_of(3).then_some(20001 + i as u32),
    }
}

fn topology() -> impl Strategy<Value = TopologyFile> {
    (
        1usize..8,
        prop::sample::subsequence(FEATURES, 0..FEATURES.len()),
        prop::collection::vec(
            (
                0usize..PROFILES.len(),
                any::<bool>(),
                prop::option::of(1u16..4094),
                prop::option::of(1u16..65535),
                any::<bool>(),
            ),
            8,
        ),
        "[ -~]{0,24}",
        prop::option::of(0.01f64..1000.0),
        prop::option::of(1u64..10_000),
        prop::option::of(5u64..3600),
    )
        .prop_map(|(n, feats, per_node, comment, p99, boot, confirm)| {
            let nodes = (0..n)
                .map(|i| {
                    let (pi, tag, vlan, port, short) = per_node[i];
                    let profile = PROFILES[pi];
                    let gpu = matches!(profile, "c240g5" | "c4130" | "d7525");
                    let extra = if gpu {
                        vec!["+cuda".to_string()]
                    } else {
                        vec![]
                    };
                    let tags = if tag {
                        vec!["t1".to_string(), format!("rack-{}", i % 3)]
                    } else {
                        vec![]
                    };
                    node(i, profile, extra, tags, vlan, port, short)
                })
                .collect();
            TopologyFile {
                cluster: ClusterSpec {
                    name: "prop-lab".into(),
                    nixpkgs: "github:NixOS/nixpkgs/nixos-25.11".into(),
                    edgectl_flake: None,
                    ssh_user: "alice".into(),
                    ssh_identity: None,
                    confirm_timeout_s: confirm,
                    profile_dir: None,
                    state_version: None,
                    site: Some("wisc".into()),
                    expires: None,
                    ssh_keys: vec![format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVkZ2VjdGwgdGVzdCBrZXksIG5vdCBhIHJlYWwgb25l {comment}x")],
                },
                defaults: DefaultsSpec {
                    profile: None,
                    features: Some(feats.iter().map(|s| s.to_string()).collect()),
                    port: None,
                },
                networks: Default::default(),
                profiles: Default::default(),
                nodes,
                targets: TargetsSpec {
                    latency_p99_ms: p99,
                    wasm_cold_start_ms: None,
                    unikernel_boot_ms: boot.map(|b| b as f64 / 7.0),
                    ray_actor_p99_ms: p99.map(|p| p * 3.0),
                    // A fraction in (0, 1]: 1/10_000 .. 1.
                    ray_scaling_min: boot.map(|b| b as f64 / 10_000.0),
                },
                checks: Vec::new(),
                secrets: Vec::new(),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn serialise_then_parse_is_identity(t in topology()) {
        let text = t.to_toml().expect("serialises");
        let src = SourceFile::new("generated.toml", text.clone());
        let parsed = check_source(src, Path::new("."), &LoadOptions::default());
        let (cluster, file) = match parsed {
            Ok(x) => x,
            Err(d) => return Err(TestCaseError::fail(format!("{}\n{text}", d.render(false, 5)))),
        };
        prop_assert_eq!(&file, &t, "{}", text);
        prop_assert_eq!(cluster.nodes.len(), t.nodes.len());
        // And once more from the re-serialised form: a fixed point.
        prop_assert_eq!(file.to_toml().unwrap(), text);
    }
}
