#!/usr/bin/env bash
# The one command that sets up and runs every test: formatting, lints, the fuzz targets' build,
# and unit, property, corpus and end-to-end tests. `.ci/run` calls exactly this.
#
# The verdict is cargo's exit status, never the log's text. Tests that lack a prerequisite (the
# rig, Nix, ../shared, ...) are skipped visibly: each skip is recorded with its reason, listed at
# the end, and counted apart from the passes. With EDGECTL_REQUIRE (CI sets it) a missing
# prerequisite fails its test instead. EDGECTL_TEST_TIMEOUT (seconds, default 3300) bounds the run.
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$self")/.."

if [[ -z ${EDGECTL_TEST_TIMED:-} ]]; then
  export EDGECTL_TEST_TIMED=1
  rc=0
  timeout --kill-after=30 "${EDGECTL_TEST_TIMEOUT:-3300}" "$self" "$@" || rc=$?
  [[ $rc -eq 124 ]] && echo "tests FAILED: the run passed EDGECTL_TEST_TIMEOUT=${EDGECTL_TEST_TIMEOUT:-3300} s"
  exit "$rc"
fi

./scripts/setup.sh
# shellcheck source=scripts/env.sh
. scripts/env.sh
# An inherited CARGO_TERM_COLOR=always would wrap `error:` in escape codes.
export CARGO_TERM_COLOR=never

log=$(mktemp -t edgectl-test.XXXXXX.log)
EDGECTL_SKIP_LOG=$(mktemp -t edgectl-skips.XXXXXX.tsv)
export EDGECTL_SKIP_LOG

echo "== shellcheck of the project's own scripts"
shellcheck -x scripts/*.sh .ci/run
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== rust-version of every locked crate"
python3 scripts/msrv.py
echo "== cargo clippy (incompatible_msrv included)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== fuzz targets build"
# Their own workspace (so the main one never builds libFuzzer); built here so they cannot rot.
cargo build --quiet --locked --manifest-path fuzz/Cargo.toml --bins
# The Ray test of verify runs against real Ray where scripts/setup.sh installed it.
if [[ -z ${EDGECTL_TEST_RAY:-} ]] && ray=$(./scripts/ray-venv.sh --path); then
  export EDGECTL_TEST_RAY="$ray"
fi
# The rig's verify test gives its nodes the wasmtime CLI, built from crates.io here (not in
# scripts/setup.sh, which the README's main job runs too: it is 10 to 15 minutes the first time).
if [[ -z ${EDGECTL_TEST_WASMTIME:-} ]]; then
  echo "== the wasmtime CLI for the rig (scripts/wasmtime-cli.sh)"
  if wasmtime=$(./scripts/wasmtime-cli.sh); then
    export EDGECTL_TEST_WASMTIME="$wasmtime"
  else
    echo "the wasmtime CLI did not build (see above): verify's wasmtime CLI check will be a skip"
  fi
fi
echo "== cargo test (log: $log)"
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" |
  grep --line-buffered -E "^(test result|     Running|   Doc-tests|error|failures:|---- )|panicked|FAILED|SIGSEGV|SIGABRT|SIGKILL|signal:"
status=${PIPESTATUS[0]}
set -e

sum() { grep -E "^test result:" "$log" | grep -oE "[0-9]+ $1" | awk '{s+=$1} END {print s+0}'; }
passed=$(sum passed)
failed=$(sum failed)
ignored=$(sum ignored)
skipped=$(wc -l <"$EDGECTL_SKIP_LOG")
binaries=$(grep -cE "^ +(Running|Doc-tests) " "$log" || true)
results=$(grep -cE "^test result:" "$log" || true)

echo "== skipped tests ($skipped)"
if [[ $skipped -gt 0 ]]; then
  sort "$EDGECTL_SKIP_LOG" | awk -F'\t' '{printf "  %s: %s: %s\n", $1, $2, $3}'
fi

verdict=ok
if [[ $status -ne 0 ]]; then
  echo "cargo test exited $status"
  verdict=FAILED
fi
if [[ $binaries -ne $results ]]; then
  # A binary killed by a signal prints no result line of its own.
  echo "$binaries test binaries ran but only $results reported a result"
  verdict=FAILED
fi
if [[ $ignored -gt 0 ]]; then
  echo "$ignored tests are #[ignore]d: nothing may be ignored to get green"
  verdict=FAILED
fi
if [[ $verdict != ok ]]; then
  [[ $failed -gt 0 ]] || failed=1
  grep -A40 -E "^failures:|^---- " "$log" | head -200 || true
  echo "tests FAILED; full log in $log"
fi
# Skipped tests returned early, so libtest counted them among the passes.
echo "$((passed - skipped)) passed, $failed failed, $skipped skipped"
[[ $verdict == ok ]]
