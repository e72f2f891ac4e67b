# shellcheck shell=bash
# Sourced by the scripts: the Nix settings every test uses (no binary cache, no sandbox, flakes
# on), so Debian's Nix works offline without a daemon. See docs/TESTING.md.
export NIX_CONFIG=$'substituters =\nsandbox = false\nbuild-users-group =\nexperimental-features = nix-command flakes'
# shellcheck source=/dev/null
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
true
