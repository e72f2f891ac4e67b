#!/usr/bin/env bash
# Installs what edgectl's build and tests need on Debian/Ubuntu: system packages (as root or
# through sudo) and a Rust toolchain when there is none. Safe to run again: it only installs
# what is missing.
set -euo pipefail

PKGS=(build-essential pkg-config libssl-dev ca-certificates curl git python3 python3-venv
      nix-bin openssh-server openssh-client iproute2 iptables netcat-openbsd bc
      util-linux mount e2fsprogs procps tcsh sudo shellcheck
      qemu-system-x86 chromium)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] || {
    echo "setup: installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
  }
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
cargo --version

# Ray (PyPI's wheel, in a virtualenv outside the clone) for the Ray test of `edgectl verify`;
# where this Python has no wheel for it, that test is skipped, visibly.
"$(dirname "$0")/ray-venv.sh" >/dev/null ||
  echo "setup: Ray is not installed (see above): the Ray test of verify will be skipped"
