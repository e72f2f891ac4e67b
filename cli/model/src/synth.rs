//! Synthetic topologies of any size, for benchmarks and scale tests.

use std::fmt::Write as _;

/// A valid topology with `n` nodes: one GPU head, the rest workers, spread over /16 LANs of
/// up to 60,000 hosts each.
pub fn cluster_toml(n: usize) -> String {
    let mut s = String::with_capacity(300 * n + 512);
    s.push_str(
        "[cluster]\nname = \"synthetic\"\nnixpkgs = \"github:NixOS/nixpkgs/nixos-25.11\"\nssh_user = \"alice\"\nssh_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVkZ2VjdGwgdGVzdCBrZXksIG5vdCBhIHJlYWwgb25l bench@edgectl\"]\n\n\
         [defaults]\nprofile = \"c220g5\"\nfeatures = [\"net-tuning\", \"wasm\", \"zenoh\", \"ray\", \"agent\"]\n\n",
    );
    for i in 0..n {
        let (roles, profile, feats) = if i == 0 {
            (
                "[\"ray-head\", \"zenoh-router\"]",
                "c240g5",
                "features = [\"+cuda\"]\n",
            )
        } else {
            ("[\"ray-worker\"]", "c220g5", "")
        };
        let lan = i / 60_000;
        let host = i % 60_000 + 1;
        let _ = write!(
            s,
            "[[node]]\nname = \"node{i}\"\nhost = \"node{i}.lab.example.org\"\nprofile = \"{profile}\"\nroles = {roles}\n{feats}\
             tags = [\"rack{}\"]\nlan = {{ address = \"10.{}.{}.{}/16\", mac = \"02{:010x}\" }}\n\n",
            i % 16,
            lan + 10,
            host / 256,
            host % 256,
            i
        );
    }
    s.push_str("[targets]\nlatency_p99_ms = 5.0\n");
    s
}
