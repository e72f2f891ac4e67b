#!/usr/bin/env bash
# Ray for the Ray test of `edgectl verify` (a real head and worker in two rig nodes, see
# cli/edgectl/tests/verify.rs): PyPI's `ray` wheel, pinned, in a virtualenv outside the clone
# (about 230 MB; the first install takes about 30 s, later runs find it).
#
#   scripts/ray-venv.sh          installs it unless it is there; prints the venv's `ray`
#   scripts/ray-venv.sh --path   prints the venv's `ray` when it is installed, else exits 1
#
# RAY_VENV names another place. Needs python3 with venv (Debian: python3-venv) and a Python
# that PyPI has a Ray 2.40.0 wheel for (CPython 3.9 to 3.12); elsewhere it fails, saying so.
set -euo pipefail
RAY_VERSION=2.40.0
venv="${RAY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/edgectl/ray-venv}"
ray="$venv/bin/ray"

installed() {
  [[ -x $ray ]] || return 1
  local d
  for d in "$venv"/lib/python3*/site-packages/ray-"$RAY_VERSION".dist-info; do
    [[ -d $d ]] && return 0
  done
  return 1
}

if [[ ${1:-} == --path ]]; then
  installed && echo "$ray"
  exit
fi
if installed; then
  echo "$ray"
  exit 0
fi
# A folder that is there but no virtualenv is someone else's: never cleared.
if [[ -e $venv && ! -f $venv/pyvenv.cfg ]] && [[ -n $(ls -A "$venv" 2>/dev/null) ]]; then
  echo "ray-venv: $venv exists and is not a virtualenv; set RAY_VENV to another place" >&2
  exit 1
fi
echo "ray-venv: installing ray==$RAY_VERSION into $venv with $(python3 --version 2>&1)" >&2
mkdir -p "$(dirname "$venv")"
python3 -m venv --clear "$venv"
if ! "$venv/bin/pip" install -q "ray==$RAY_VERSION" >&2; then
  echo "ray-venv: pip could not install ray==$RAY_VERSION for $(python3 --version 2>&1) (PyPI has wheels for CPython 3.9 to 3.12)" >&2
  exit 1
fi
installed || {
  echo "ray-venv: ray==$RAY_VERSION is not in $venv after pip install" >&2
  exit 1
}
echo "$ray"
