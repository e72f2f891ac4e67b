#!/usr/bin/env bash
# Regenerates hosts/ from examples/edge-lab.toml, and checks/cluster-vm/hosts/ from the VM test's
# topology checks/cluster-vm/cluster.toml (tests fail while they differ).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# update TOPOLOGY DIR: DIR becomes the hosts/ that `edgectl generate TOPOLOGY` writes.
update() {
  rm -rf "$tmp/out"
  cargo run -q -p edgectl -- generate "$1" -o "$tmp/out"
  rm -rf "$2.new" && cp -r "$tmp/out/hosts" "$2.new" && rm -rf "$2" && mv "$2.new" "$2"
  echo "$2/ updated: $(cd "$2" && printf "%s " *)"
}
update examples/edge-lab.toml hosts
update checks/cluster-vm/cluster.toml checks/cluster-vm/hosts
