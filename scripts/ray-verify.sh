#!/usr/bin/env bash
# Runs the Ray part of `edgectl verify` against a real Ray head and worker in two rig nodes:
# installs Ray 2.40.0 into a virtualenv outside the clone (scripts/ray-venv.sh), then runs the test.
# Needs root (the rig), python3 with venv, and the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
ray=$(./scripts/ray-venv.sh)
EDGECTL_TEST_RAY="$ray" cargo test -p edgectl --test verify ray_cluster -- --nocapture
