#!/usr/bin/env bash
# Runs the Ray part of `edgectl verify` against a real Ray head and worker in two rig nodes:
# installs Ray 2.40.0 into a virtualenv outside the clone (about 70 MB), then runs the test.
# Needs root (the rig), python3 with venv, and the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${RAY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/edgectl/ray-venv}"
if [ ! -x "$venv/bin/ray" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "ray==2.40.0"
fi
EDGECTL_TEST_RAY="$venv/bin/ray" cargo test -p edgectl --test verify ray_cluster -- --nocapture
