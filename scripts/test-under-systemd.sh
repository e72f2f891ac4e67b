#!/usr/bin/env bash
# Runs the test suite (.ci/run, i.e. scripts/test.sh as CI runs it) inside a Debian bookworm
# container whose PID 1 is systemd, to show that the suite gives the same result on a machine
# booted with systemd as on one without (a CI container or VM often has some other PID 1).
#
# Why: the end-to-end tests build a "rig" of network namespaces on the machine that runs them
# (cli/rig/src/lib.rs). An agent on a rig node must see the node, not the host: when nodes
# shared the host's /run, an agent on a systemd host found the host's /run/systemd/system and
# the tests failed there only. A `systemd-nspawn --boot` container is such a host.
#
# Usage: scripts/test-under-systemd.sh [COMMAND [ARG...]]
#   Without a command it runs .ci/run. A command (e.g. `cargo test -p edgectl-rig`) runs instead,
#   in the repository root, with the same environment: a quick check of the rig.
# Environment:
#   EDGECTL_SYSTEMD_ROOT   the cached root file system (default /var/tmp/edgectl-systemd-root),
#                          built once with debootstrap and reused; delete it to rebuild.
#   EDGECTL_DEBIAN_MIRROR  the Debian mirror (default: the one this machine's apt uses).
#   EDGECTL_SYSTEMD_DISK   the size of the container's root file system (default 24G, sparse).
#   EDGECTL_REQUIRE, EDGECTL_TEST_TIMEOUT  passed through when set (.ci/run defaults the first).
# Exit status: the command's (2 or 1 when the container cannot be made or booted). The
# container is powered off in every case; a run leaves behind only, in /var/tmp, test.sh's full
# log and, when it failed, the container's console.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd -P)
SHARED=$(dirname "$REPO")/shared # where the tests look for ../shared (maybe a symlink)
ROOT=${EDGECTL_SYSTEMD_ROOT:-/var/tmp/edgectl-systemd-root}
SUITE=bookworm
MACHINE=edgectl-systemd-$$

[[ $(id -u) -eq 0 ]] || { echo "test-under-systemd: needs root (debootstrap, systemd-nspawn)" >&2; exit 2; }

t0=$SECONDS
stage_start=$SECONDS
STAGE=
stage() { # prints how long the previous stage took, then names the next one
  [[ -z $STAGE ]] || echo "== [systemd] ${STAGE}: $((SECONDS - stage_start)) s"
  STAGE=$1
  stage_start=$SECONDS
  [[ -z $STAGE ]] || echo "== [systemd] $STAGE"
}

missing_pkgs() { # prints those of the given Debian packages not installed on this machine
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

# --- 1. host tools ----------------------------------------------------------------------------
stage "host packages"
# systemd-nspawn (systemd-container) boots the container; debootstrap builds its root; mkfs.ext4
# (e2fsprogs) makes its disk. nsenter (util-linux) reaches into it: machined runs only where
# PID 1 is systemd, so neither `machinectl shell` nor `systemd-run --machine` can.
mapfile -t need < <(missing_pkgs systemd-container debootstrap util-linux e2fsprogs)
if [[ ${#need[@]} -gt 0 ]]; then
  echo "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- 2. the container's root file system (cached) ---------------------------------------------
stage "root file system ($ROOT)"
# What scripts/setup.sh installs (read from its PKGS, so the two cannot drift apart), what the
# tests call that a minbase system lacks (losetup is in mount, ps and kill in procps), and
# systemd itself. zlib1g-dev: target/ is shared with this machine, where libz-sys found the
# system zlib through pkg-config and so links -lz; without it every test binary that links
# libz-sys fails to link.
mapfile -t PKGS < <(sed -n '/^PKGS=(/,/)/{s/^PKGS=(//;s/).*//;p}' scripts/setup.sh | tr -s ' \t' '\n' | grep .)
[[ ${#PKGS[@]} -gt 0 ]] || { echo "no PKGS=(...) found in scripts/setup.sh" >&2; exit 2; }
for p in mount procps systemd systemd-sysv dbus zlib1g-dev; do
  [[ " ${PKGS[*]} " == *" $p "* ]] || PKGS+=("$p")
done
# The mirror and suites this machine's apt already uses: the only Debian servers known to be
# reachable. The security and updates suites too, so the container has the host's versions.
# shellcheck disable=SC2016 # $(...) is apt's format syntax, not the shell's
mapfile -t repos < <(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(ORIGIN)' \
  'Identifier: Packages' 2>/dev/null | awk -v s="$SUITE" '$3 ~ /^Debian/ && $2 ~ "^" s {print $1, $2}' | sort -u)
MIRROR=${EDGECTL_DEBIAN_MIRROR:-}
if [[ -z $MIRROR ]]; then
  for r in "${repos[@]}"; do [[ ${r#* } == "$SUITE" ]] && MIRROR=${r%% *}; done
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian/}
marker=$ROOT/.edgectl-systemd-root
want="${PKGS[*]}"

# Nothing here needs machined (nspawn registers with it by default): --register=no. Where PID 1
# is not systemd there is also no one to make nspawn a scope unit: --keep-unit, and then no
# device cgroup either. Where it is (untried: this was written on a machine without), the scope
# nspawn asks for allows only a few standard devices, and the install tests make loop devices
# and partitions on them.
register=(--register=no)
devices=()
if [[ -d /run/systemd/system ]]; then
  devices=(--property="DeviceAllow=/dev/loop-control rw" --property="DeviceAllow=block-loop rwm"
           --property="DeviceAllow=block-blkext rwm")
else
  register+=(--keep-unit)
fi

# Runs a command in a (not booted) root through nspawn, so /proc, /dev and DNS are there.
in_root() {
  systemd-nspawn --quiet "${register[@]}" --directory="$1" \
    --setenv=DEBIAN_FRONTEND=noninteractive "${@:2}"
}

if [[ ! -f $marker ]]; then
  # Built aside and renamed when complete, so an interrupted build is never taken for a root.
  tmp=$ROOT.tmp
  rm -rf "$tmp"
  mkdir -p "$(dirname "$ROOT")"
  # debootstrap makes only a bootable base: its resolver ignores virtual packages (nix-bin needs
  # perl-dbdabi-94, which only libdbi-perl provides), so apt installs the rest inside.
  echo "debootstrap $SUITE from $MIRROR"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus "$SUITE" "$tmp" "$MIRROR" \
    >"$tmp.log" 2>&1 || { tail -30 "$tmp.log"; echo "debootstrap failed; log in $tmp.log" >&2; exit 1; }
  {
    for r in "${repos[@]}"; do echo "deb ${r%% *} ${r#* } main"; done
    [[ ${#repos[@]} -gt 0 ]] || echo "deb $MIRROR $SUITE main"
  } >"$tmp/etc/apt/sources.list"
  echo edgectl-systemd >"$tmp/etc/hostname"
  echo "apt-get install ${PKGS[*]}"
  in_root "$tmp" sh -c 'apt-get update -qq && apt-get -y -qq upgrade >/dev/null &&
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null && apt-get clean' sh "${PKGS[@]}" \
    >>"$tmp.log" 2>&1 || { tail -30 "$tmp.log"; echo "apt-get failed; log in $tmp.log" >&2; exit 1; }
  rm -f "$tmp.log"
  mv "$tmp" "$ROOT"
  echo "$want" >"$marker"
elif [[ $(cat "$marker") != "$want" ]]; then
  # The list changed since the root was built: install what is new, keep the rest.
  echo "apt-get install ${PKGS[*]}"
  in_root "$ROOT" sh -c 'apt-get update -qq &&
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null && apt-get clean' sh "${PKGS[@]}"
  echo "$want" >"$marker"
fi

# Two units of our own make the container a machine where it differs from one. They are written
# on every run (only when changed, as another run may be copying the root), so a change here
# needs no rebuild of the root.
put() { # put FILE MODE: FILE's content from stdin
  cat >"$1.new"
  chmod "$2" "$1.new"
  if cmp -s "$1.new" "$1"; then rm "$1.new"; else mv "$1.new" "$1"; fi
}
# The device nodes. nspawn gives the container a small private /dev (a tmpfs), where no block
# device appears: there is no devtmpfs (the kernel has just one, shared with this machine and
# whatever test runs use it) and no udev (/sys is read-only). On a machine the kernel makes
# /dev/loopN and /dev/loopNpM as losetup and partx ask for them, and the install tests rely on
# that. This service stands in for devtmpfs: it keeps a node for every block device in
# /sys/class/block, within 50 ms (losetup retries its open for half a second, the tests wait
# two seconds).
put "$ROOT/usr/local/sbin/edgectl-devnodes" 0755 <<'EOF'
#!/bin/bash
# Keeps /dev's block device nodes in step with /sys/class/block, as devtmpfs would
# (scripts/test-under-systemd.sh in the edgectl repository writes this).
declare -A made=()
exec 3<> <(:) # a pipe no one writes to: `read -t` on it sleeps without forking a sleep
while :; do
  declare -A seen=()
  for s in /sys/class/block/*; do
    n=${s##*/}
    [[ $n == *'!'* ]] && continue
    { read -r mm <"$s/dev"; } 2>/dev/null || continue
    seen[$n]=1
    if [[ ${made[$n]:-} != "$mm" ]]; then
      rm -f "/dev/$n"
      mknod -m 0660 "/dev/$n" b "${mm%%:*}" "${mm##*:}" && chgrp disk "/dev/$n" && made[$n]=$mm
    fi
  done
  for n in "${!made[@]}"; do
    [[ -n ${seen[$n]:-} ]] || { rm -f "/dev/$n"; unset "made[$n]"; }
  done
  unset seen
  read -r -t 0.05 -u 3 || true
done
EOF
put "$ROOT/etc/systemd/system/edgectl-devnodes.service" 0644 <<'EOF'
[Unit]
Description=Block device nodes in /dev, as devtmpfs makes them
DefaultDependencies=no
Before=sysinit.target

[Service]
ExecStart=/usr/local/sbin/edgectl-devnodes

[Install]
WantedBy=sysinit.target
EOF
# The boot id. nspawn gives the container one of its own by bind-mounting a file over
# /proc/sys/kernel/random/boot_id, and then deletes that file. Nothing can be mounted on a
# deleted file (mount(2) says ENOENT), yet each rig node mounts its own boot id there (a
# simulated reboot changes it), as it can on any machine. So the container's boot id moves to a
# file that stays.
put "$ROOT/etc/systemd/system/edgectl-boot-id.service" 0644 <<'EOF'
[Unit]
Description=The container's boot id in a file that can be mounted over
DefaultDependencies=no
Before=sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -euc 'f=/proc/sys/kernel/random/boot_id; cat $f >/run/edgectl-boot-id; \
  chmod 0444 /run/edgectl-boot-id; umount $f; mount --bind /run/edgectl-boot-id $f'

[Install]
WantedBy=sysinit.target
EOF
mkdir -p "$ROOT/etc/systemd/system/sysinit.target.wants"
for u in edgectl-devnodes edgectl-boot-id; do
  ln -sf "../$u.service" "$ROOT/etc/systemd/system/sysinit.target.wants/"
done

# --- 3. boot ----------------------------------------------------------------------------------
stage "boot"
# Each run boots a fresh copy of the cached root (a clean /nix, /var and /tmp, as CI starts from a
# clean machine; runs may overlap), made as an ext4 file system of its own: on a machine, / is a
# whole file system on a block device, and the install tests read which (findmnt, lsblk). A
# copied directory would be a bind mount of part of this machine's disk, which no machine has.
run=$(mktemp -d /var/tmp/edgectl-systemd-run.XXXXXX)
truncate -s "${EDGECTL_SYSTEMD_DISK:-24G}" "$run/root.img"
mkfs.ext4 -q -F -L edgectl-root -d "$ROOT" "$run/root.img"
mkdir "$run/root"
boot_log=$run/console.log

binds=(--bind="$REPO")
[[ -d $SHARED ]] && binds+=(--bind="$(cd "$SHARED" && pwd -P):$SHARED")
for d in "$HOME/.cargo" "$HOME/.rustup"; do
  # This machine's toolchain and crate cache at the same paths: nothing is downloaded, and as
  # target/ is the repository's own, the builds already made here are reused.
  [[ -d $d ]] && binds+=(--bind="$(cd "$d" && pwd -P):/root/${d##*/}")
done
# Loop devices are made through /dev/loop-control; their nodes come from edgectl-devnodes.
[[ -e /dev/loop-control ]] && binds+=(--bind=/dev/loop-control)
# nspawn would put a tmpfs on /tmp; Debian 12 (and this machine) keep /tmp on the root disk.
binds+=(--bind="$run/root/tmp:/tmp")

nspawn_pid=
leader=
poweroff() {
  if [[ -n $nspawn_pid ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
    # SIGRTMIN+4 asks systemd for a clean poweroff; nspawn exits when the container has.
    [[ -n $leader ]] && kill -s RTMIN+4 "$leader" 2>/dev/null
    for _ in $(seq 120); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$nspawn_pid" 2>/dev/null; then
      # Killing the container's PID 1 kills everything in it.
      echo "the container did not power off in 120 s; killing it"
      kill -9 "${leader:-$nspawn_pid}" 2>/dev/null || true
    fi
  fi
  [[ -z $nspawn_pid ]] || wait "$nspawn_pid" 2>/dev/null || true
  nspawn_pid=
  # The image was mounted only in nspawn's own mount namespace, gone with it (and its loop
  # device detached, as mount -o loop sets autoclear): removing the files is all that is left.
  if [[ -n ${run:-} ]]; then
    if [[ ${rc:-1} -ne 0 && -s $boot_log ]]; then
      cp "$boot_log" "/var/tmp/edgectl-systemd-console-$$.log"
      echo "the container's console: /var/tmp/edgectl-systemd-console-$$.log"
    fi
    rm -rf "$run"
    run=
  fi
}
trap poweroff EXIT
trap 'exit 130' INT TERM

# The image is mounted in a mount namespace of its own, so this machine never sees it, and it
# goes away with the container whatever happens to this script. --capability=all: the rig makes
# network namespaces, bind mounts, bridges, iptables rules and loop devices. --private-network:
# the rig's bridges and links stay out of this machine's network namespace, where other runs
# make theirs (with the same names, as pids inside the container are small).
# shellcheck disable=SC2016 # the inner sh expands them
unshare --mount --propagation private -- sh -c 'mount -o loop "$1" "$2" && shift 2 && exec "$@"' \
  sh "$run/root.img" "$run/root" \
  systemd-nspawn --boot --directory="$run/root" --machine="$MACHINE" "${register[@]}" "${devices[@]}" \
  --capability=all --private-network --console=read-only "${binds[@]}" >"$boot_log" 2>&1 </dev/null &
nspawn_pid=$!

# The container's PID 1 is nspawn's child (nspawn is its subreaper); wait until it is systemd.
for _ in $(seq 600); do
  kill -0 "$nspawn_pid" 2>/dev/null || { cat "$boot_log"; echo "systemd-nspawn exited" >&2; exit 1; }
  for c in $(pgrep -P "$nspawn_pid" || true); do
    [[ $(cat "/proc/$c/comm" 2>/dev/null) == systemd ]] && leader=$c
  done
  [[ -n $leader ]] && break
  sleep 0.1
done
[[ -n $leader ]] || { cat "$boot_log"; echo "no systemd in the container" >&2; exit 1; }

# Runs a command inside the container: in its namespaces and root, with an empty environment.
inside() {
  nsenter --target "$leader" --mount --uts --ipc --net --pid --cgroup --root --wd -- \
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
# systemctl reaches systemd through its private socket, which appears early in boot; then
# `--wait` returns once boot has finished (running, or degraded if some unit failed).
inside timeout 60 sh -c 'until [ -S /run/systemd/private ]; do sleep 0.2; done' ||
  { cat "$boot_log"; echo "systemd in the container did not start" >&2; exit 1; }
state=$(inside timeout 180 systemctl is-system-running --wait 2>&1) || true
pid1=$(inside ps -p 1 -o comm=)
echo "container PID 1: $pid1; systemctl is-system-running: $state; / is $(inside findmnt -n -o SOURCE,FSTYPE /)"
[[ $state == running ]] || inside systemctl --failed --no-pager --plain --no-legend || true
[[ $pid1 == systemd ]] || { cat "$boot_log"; echo "PID 1 in the container is not systemd" >&2; exit 1; }

# --- 4. the tests -----------------------------------------------------------------------------
stage "tests"
cmd=("$@")
[[ ${#cmd[@]} -gt 0 ]] || cmd=("$REPO/.ci/run")
env=(--setenv=CI=true --setenv=LANG=C.UTF-8
     --setenv=PATH="/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
for v in EDGECTL_REQUIRE EDGECTL_TEST_TIMEOUT; do
  [[ -z ${!v:-} ]] || env+=(--setenv="$v=${!v}")
done
# A transient service of the container's systemd, as any job on a systemd host is. --uid sets
# HOME, USER and LOGNAME as a login would. The limits are this shell's (a service's own default
# is a soft limit of 1024 open files), so the run differs from one here only in PID 1.
rc=0
inside systemd-run --quiet --wait --pipe --collect --unit="edgectl-tests-$$" --uid=root \
  --working-directory="$REPO" "${env[@]}" \
  -p LimitNOFILE="$(ulimit -Sn):$(ulimit -Hn)" -p TasksMax=infinity \
  /usr/bin/env "${cmd[@]}" </dev/null || rc=$?
# test.sh keeps its full log in the container's /tmp, which goes with the container: copy it out.
saved=/var/tmp/edgectl-systemd-test-$$.log
inside sh -c 'cat /tmp/edgectl-test.*.log 2>/dev/null' >"$saved" || true
if [[ -s $saved ]]; then echo "the full test log: $saved"; else rm -f "$saved"; fi

stage "power off"
poweroff
stage ""
echo "== [systemd] total: $((SECONDS - t0)) s; exit status $rc"
exit "$rc"
