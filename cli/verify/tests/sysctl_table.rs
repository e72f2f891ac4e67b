//! The sysctl values `edgectl verify` expects on a `net-tuning` node are the ones the NixOS
//! modules set: `modules/lib/sysctl.nix`, evaluated by real Nix, against
//! [`expected_sysctls`] for NIC speeds on both sides of the 10G/40G tier boundary.

use std::collections::BTreeMap;

use edgectl_verify::checks::expected_sysctls;

/// Keys the modules set that verify deliberately does not compare: set-and-forget tuning whose
/// value the agent has no row for. A key added to the Nix table fails this test until it is
/// either checked by `expected_sysctls` or listed here.
const NOT_CHECKED: &[&str] = &["net.core.netdev_max_backlog", "net.ipv4.tcp_mtu_probing"];

/// `sysctlFor { nicGbps = gbps; }` from modules/lib, as `sysctl -n` would print each value.
fn nix_sysctls(gbps: u32) -> BTreeMap<String, String> {
    let expr = format!("lib.sysctlFor {{ nicGbps = {gbps}; }}");
    let v: serde_json::Value =
        serde_json::from_str(&edgectl_testkit::eval_modules_lib(&expr)).unwrap();
    v.as_object()
        .unwrap_or_else(|| panic!("{expr} is not an attribute set: {v}"))
        .iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                other => panic!("{k} = {other}: neither a string nor a number"),
            };
            (k.clone(), text)
        })
        .collect()
}

#[test]
fn verify_expects_what_the_nix_modules_set() {
    if edgectl_testkit::nix().is_none() {
        return;
    }
    let mut tiers = BTreeMap::new();
    for gbps in [1, 10, 11, 25, 40, 100] {
        let nix = nix_sysctls(gbps);
        let rust: BTreeMap<String, String> = expected_sysctls(gbps)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        for (k, want) in &rust {
            assert_eq!(
                nix.get(k),
                Some(want),
                "{gbps} Gb/s: verify expects {k} = {want:?}, the modules set {:?}",
                nix.get(k)
            );
        }
        let unchecked: Vec<&str> = nix
            .keys()
            .map(String::as_str)
            .filter(|k| !rust.contains_key(*k))
            .collect();
        assert_eq!(
            unchecked, NOT_CHECKED,
            "{gbps} Gb/s: keys verify does not check"
        );
        tiers.insert(gbps, rust["net.core.rmem_max"].clone());
    }
    // Both rows were exercised, and the boundary sits where both sides put it (10 in the 10G row).
    assert_eq!(tiers[&10], "134217728");
    assert_eq!(tiers[&11], "268435456");
}
