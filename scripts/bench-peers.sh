#!/usr/bin/env bash
# edgectl against a real peer on the rig: installs serokell's deploy-rs 1.0.0 from crates.io
# into a cache folder (never into the repository), then runs `cargo bench --bench peers`, which
# deploys the same closures to fresh rig nodes with both tools and prints the README's table.
# Needs root (the rig) and about 20 minutes on 2 cores with the defaults (the 100 Mbit/s link is
# most of it; PEER_LINKS=none alone took 5 minutes).
# Knobs (environment): PEER_REPS (3), PEER_NODES (1,4,8), PEER_LINKS (100mbit,none), PEER_MIB (64).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
cache=${EDGECTL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgectl}/deploy-rs-1.0.0
if [ ! -x "$cache/bin/deploy" ] || [ ! -x "$cache/bin/activate" ]; then
  echo "== cargo install deploy-rs 1.0.0 into $cache"
  cargo install deploy-rs --version 1.0.0 --locked --root "$cache"
fi
"$cache/bin/deploy" --version
DEPLOY_RS_BIN="$cache/bin" exec cargo bench -p edgectl --bench peers
