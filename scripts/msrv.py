#!/usr/bin/env python3
"""Fails when a locked dependency needs a newer Rust than the workspace's rust-version.

nixpkgs builds edgectl with its own rustc (nixos-25.11: 1.91), and clippy's incompatible_msrv
lint only sees our code: a `cargo update` that pulls in a crate needing a newer compiler would
otherwise pass here, on a newer toolchain, and fail on every user's `nix build`.
"""
import json
import subprocess
import sys


def version(s):
    parts = [int(p) for p in s.split(".")[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked"],
    check=True, capture_output=True, text=True).stdout)
members = set(meta["workspace_members"])
ours = {p["rust_version"] for p in meta["packages"] if p["id"] in members}
if len(ours) != 1 or None in ours:
    sys.exit(f"msrv: every workspace member must inherit one rust-version, found {sorted(map(str, ours))}")
msrv = ours.pop()
too_new = sorted(
    f'{p["name"]} {p["version"]} needs Rust {p["rust_version"]}'
    for p in meta["packages"]
    if p["id"] not in members and p.get("rust_version") and version(p["rust_version"]) > version(msrv))
if too_new:
    print(f"msrv: the workspace promises Rust {msrv} (what nixos-25.11 builds with), but:", file=sys.stderr)
    for line in too_new:
        print(f"  {line}", file=sys.stderr)
    sys.exit("msrv: pin these to an older version (cargo update -p NAME --precise VERSION)")
print(f"msrv: every locked crate builds with Rust {msrv}")
