//! The decisions in modules/lib (driver branch, sysctls, KVM module, GRUB device, Zenoh and Ray
//! settings) evaluated by real Nix against the expected values in checks/lib-tests.nix.

use std::path::Path;
use std::process::Command;

#[test]
fn pure_functions_evaluate_to_expected_values() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if edgectl_testkit::nix().is_none() {
        return;
    }
    let o = Command::new("nix-instantiate")
        .env(
            "NIX_CONFIG",
            "substituters =\nsandbox = false\nbuild-users-group =",
        )
        .args(["--eval", "--strict", "--json"])
        .arg(repo.join("checks/lib-tests.nix"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let failures = v["failures"].as_array().expect("failures list");
    assert!(failures.is_empty(), "lib tests failed: {failures:#?}");
    assert!(v["passed"].as_u64().unwrap() >= 30, "too few cases: {v}");
}
