#!/usr/bin/env bash
# Opt-in: installs the wasmtime CLI from crates.io (wasmtime-cli 43.0.2, the version of the
# wasmtime edgectl's agent embeds, with the features `wasmtime run` needs) into the cache outside
# the clone, then runs the rig verify test, whose nodes get it and run `verify`'s
# "wasm cold start (wasmtime CLI)" check with it. Not part of scripts/setup.sh: the compile takes
# longer than CI can spare on 2 cores (see README, "The runtimes' own cold start").
# Needs root (the rig) and the crates.io registry.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
version=43.0.2
root="${XDG_CACHE_HOME:-$HOME/.cache}/edgectl/wasmtime-cli-$version"
if [ ! -x "$root/bin/wasmtime" ]; then
    echo "wasmtime-cli.sh: building wasmtime-cli $version into $root (many minutes on 2 cores)"
    cargo install wasmtime-cli --version "$version" --locked --no-default-features \
        --features run,cranelift,wat,parallel-compilation,cache --root "$root"
fi
"$root/bin/wasmtime" --version
EDGECTL_TEST_WASMTIME="$root/bin/wasmtime" EDGECTL_REQUIRE="${EDGECTL_REQUIRE:+$EDGECTL_REQUIRE,}wasmtime-cli" \
    cargo test -p edgectl --test verify verify_uploads_agents_checks_and_reports -- --nocapture
