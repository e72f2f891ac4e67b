#!/usr/bin/env bash
# Evaluates checks/lib-tests.nix with plain Nix (no nixpkgs needed) and fails
# when any case fails.
set -euo pipefail
cd "$(dirname "$0")/.."

export NIX_CONFIG=$'substituters =\nsandbox = false\nbuild-users-group =\nexperimental-features = nix-command flakes'

for f in modules/*.nix modules/lib/*.nix checks/lib-tests.nix; do
  nix-instantiate --parse "$f" >/dev/null
done

out=$(nix-instantiate --eval --strict --json checks/lib-tests.nix)

if command -v jq >/dev/null; then
  jq -r '.failures[] | "FAIL " + .' <<<"$out"
  jq -r '"lib-tests: \(.passed)/\(.total) passed"' <<<"$out"
  jq -e '.failures == []' <<<"$out" >/dev/null
else
  python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
for f in r["failures"]:
    print("FAIL", f)
print(f'lib-tests: {r["passed"]}/{r["total"]} passed')
sys.exit(1 if r["failures"] else 0)
PY
fi
