#!/usr/bin/env bash
# The one command that sets up and runs every test: formatting, lints, unit, property,
# corpus and end-to-end tests. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace 2>&1 | tee /tmp/edgectl-test.log | grep -E "^(test result|running|error|failures:|---- )|panicked|FAILED" || true
if grep -qE "^test result: FAILED|^error(\[|:)" /tmp/edgectl-test.log || ! grep -q "^test result:" /tmp/edgectl-test.log; then
  echo "tests FAILED; full log in /tmp/edgectl-test.log"
  grep -B5 -A30 "^failures:" /tmp/edgectl-test.log | head -200 || true
  exit 1
fi
passed=$(grep -E "^test result:" /tmp/edgectl-test.log | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/' | awk '{p+=$1; f+=$2} END {print p" "f}')
echo "$(echo "$passed" | cut -d' ' -f1) passed, $(echo "$passed" | cut -d' ' -f2) failed"
