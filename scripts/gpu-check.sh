#!/usr/bin/env bash
# Runs `edgectl verify`'s GPU checks for real, on this machine: its NVIDIA GPUs' facts
# (`nvidia-smi --query-gpu`, `nvidia-smi -q -x` and the CUDA device query) against a hardware
# profile, with the verdicts verify would give. Needs an NVIDIA GPU and its driver (nvidia-smi).
#
#   scripts/gpu-check.sh PROFILE [--profiles DIR]   # a profile name: c240g5, c4130, d7525, ...
#   scripts/gpu-check.sh path/to/NAME.toml          # a profile file (it may extend a built-in)
#
# The edgectl it runs is $EDGECTL, else `edgectl` on PATH when it has `agent --gpu-check`, else
# one built from this checkout (`cargo build --release -p edgectl`, which needs Rust).
# Exit status: 0 every check passes, 4 a check failed, 1 no GPU (or another error), 2 usage.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

usage() {
    echo "usage: $0 PROFILE|FILE.toml [--profiles DIR]..." >&2
    exit 2
}
[ $# -ge 1 ] || usage
case "$1" in
    -h | --help)
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    -*) usage ;;
esac
profile=$1
shift

# No GPU, no checks: say so plainly rather than fail every check.
if ! smi=$(command -v nvidia-smi); then
    echo "gpu-check: no NVIDIA GPU here: nvidia-smi is not installed (or not on PATH)" >&2
    exit 1
fi
list=$(timeout 60 "$smi" -L 2>&1) || true
if ! grep -q '^GPU [0-9]' <<<"$list"; then
    echo "gpu-check: no NVIDIA GPU here: \`nvidia-smi -L\` lists none${list:+: $list}" >&2
    exit 1
fi

has_gpu_check() {
    "$1" agent --help 2>/dev/null | grep -q -- '--gpu-check'
}
if [ -n "${EDGECTL:-}" ]; then
    bin=$EDGECTL
elif bin=$(command -v edgectl) && has_gpu_check "$bin"; then
    :
else
    if ! command -v cargo >/dev/null && [ ! -f "$HOME/.cargo/env" ]; then
        echo "gpu-check: no edgectl with \`agent --gpu-check\` on PATH and no cargo to build one;" \
            "set EDGECTL=/path/to/edgectl" >&2
        exit 1
    fi
    echo "gpu-check: building edgectl from $root (cargo build --release -p edgectl)" >&2
    # shellcheck source=scripts/env.sh
    . "$root/scripts/env.sh"
    (cd "$root" && cargo build --release --quiet -p edgectl)
    bin=$root/target/release/edgectl
fi
if ! has_gpu_check "$bin"; then
    echo "gpu-check: $bin has no \`agent --gpu-check\` (an older edgectl?)" >&2
    exit 1
fi

rc=0
"$bin" --color never agent --gpu-check "$profile" "$@" || rc=$?
case $rc in
    0) echo "gpu-check: every GPU check passes against $profile" ;;
    4) echo "gpu-check: some GPU checks FAILED against $profile (see the table above)" >&2 ;;
esac
exit "$rc"
