#!/usr/bin/env bash
# Sets up and runs edgectl on the bundled example: validates it and prints the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh >/dev/null
. scripts/env.sh
cargo build --quiet --release -p edgectl
./target/release/edgectl check examples/edge-lab.toml
