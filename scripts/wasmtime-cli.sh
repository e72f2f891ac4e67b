#!/usr/bin/env bash
# The wasmtime CLI for the rig's verify test (its nodes get it, and `verify`'s "wasm cold start
# (wasmtime CLI)" check runs it): crates.io's wasmtime-cli 43.0.2, the version of the wasmtime
# edgectl's agent embeds, built with only what `wasmtime run` needs, into a cache outside the
# clone (about 17 MB; the build takes 10 to 15 minutes on 2 cores, later runs find it).
#
#   scripts/wasmtime-cli.sh          builds it unless it is there; prints the binary's path
#   scripts/wasmtime-cli.sh --path   prints the path when it is built, else exits 1
#
# WASMTIME_CLI_ROOT names another place. Needs cargo and the crates.io registry.
set -euo pipefail
version=43.0.2
root="${WASMTIME_CLI_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/edgectl/wasmtime-cli-$version}"
bin="$root/bin/wasmtime"

installed() {
  [[ -x $bin ]] && [[ $("$bin" --version 2>/dev/null) == "wasmtime $version"* ]]
}

if [[ ${1:-} == --path ]]; then
  installed && echo "$bin"
  exit
fi
if installed; then
  echo "$bin"
  exit 0
fi
echo "wasmtime-cli: building wasmtime-cli $version into $root (10 to 15 minutes on 2 cores)" >&2
# The build directory is thrown away; a release build without LTO and with more codegen units
# takes half the time, and a CLI that compiles one small module per run does not need them.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=true \
  cargo install wasmtime-cli --version "$version" --locked --quiet --no-default-features \
  --features run,cranelift,wat --root "$root" --target-dir "$build" >&2
installed || { echo "wasmtime-cli: $bin does not run as wasmtime $version" >&2; exit 1; }
echo "$bin"
