#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of the topology parser and validator, the
# CloudLab importer and the renderer.
#
#   scripts/fuzz.sh TARGET|all [SECONDS]     (targets: topology cloudlab render; default 600 s)
#
# Runs each target for SECONDS, one after another, at the lowest priority with one worker, and
# prints executions and findings per target. Stable Rust works: libFuzzer's flags are nightly-only,
# so RUSTC_BOOTSTRAP=1 lets stable accept them. No sanitizer: the fuzzed crates are safe Rust, and
# without ASan they run several times faster. Release builds keep debug assertions and overflow
# checks on (cargo-fuzz's default).
#
# Findings land in fuzz/artifacts/TARGET/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -s none TARGET fuzz/artifacts/TARGET/crash-...
# then add it as a regression test in the crate it belongs to. Exit status 1 when anything was found.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(topology cloudlab render)
target=${1:-}
secs=${2:-600}
if [[ -z $target ]]; then
  echo "usage: $0 TARGET|all [SECONDS]   (targets: ${TARGETS[*]})" >&2
  exit 2
fi
if [[ $target == all ]]; then
  set -- "${TARGETS[@]}"
else
  [[ " ${TARGETS[*]} " == *" $target "* ]] || { echo "unknown target $target (${TARGETS[*]})" >&2; exit 2; }
  set -- "$target"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  nice -n 19 cargo install cargo-fuzz --locked -j 1
fi
export RUSTC_BOOTSTRAP=1
# The other crates of the machine may be compiling: one build job, lowest priority.
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

mkdir -p fuzz/logs
summary=()
found_any=0
for t in "$@"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  extra=()
  # The crates' own test inputs are seeds too (read only; new inputs go to fuzz/corpus).
  case $t in
    topology) extra=(cli/model/tests/corpus examples) ;;
    cloudlab) extra=() ;;
  esac
  log="fuzz/logs/$t.log"
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  echo "== fuzz $t for ${secs}s (log: $log)"
  nice -n 19 cargo fuzz build -s none "$t"
  # fork=1 keeps one worker going after a crash, so one run collects every finding.
  set +e
  nice -n 19 cargo fuzz run -s none "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" "${extra[@]}" -- \
    -max_total_time="$secs" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
    -timeout=10 -rss_limit_mb=2048 -max_len=16384 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  after=$(find "fuzz/artifacts/$t" -type f | wc -l)
  new=$((after - before))
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  [[ $new -gt 0 ]] && found_any=1
  line="$t: ${secs}s, ${execs:-0} executions, coverage ${cov:-?}, corpus $corpus, new findings $new (artifacts total $after), rc $rc"
  echo "$line"
  summary+=("$line")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $found_any
