//! What several end-to-end test files share: running this edgectl with the rig's Nix settings.

use std::process::{Command, Output};

/// Runs edgectl with `args` and the `NIX_CONFIG` the rig's stand-in systems need.
pub fn edgectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(args)
        .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG)
        .output()
        .unwrap()
}
