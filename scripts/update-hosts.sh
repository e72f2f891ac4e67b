#!/usr/bin/env bash
# Regenerates hosts/ from examples/edge-lab.toml (a test fails while they differ).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo run -q -p edgectl -- generate examples/edge-lab.toml -o "$tmp/out"
rm -rf hosts.new && cp -r "$tmp/out/hosts" hosts.new && rm -rf hosts && mv hosts.new hosts
echo "hosts/ updated: $(ls hosts | tr '\n' ' ')"
