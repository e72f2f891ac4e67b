# shellcheck shell=sh
# Not a script by itself: activation_functions.sh comes first (prof and the functions status,
# go_back and commit are its).
set -u
new=$1; goal=$2; timeout=$3; token=$4
# Under NixOS's systemd-run PATH holds only systemd's own tools: name every place the tools
# of a NixOS or another Linux system live.
PATH=/run/current-system/sw/bin:$new/sw/bin:/run/wrappers/bin:/nix/var/nix/profiles/default/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}
export PATH
run=$EDGECTL_STATE/run/$token
mkdir -p "$run" || exit 1
# The controller takes this first when the activation did not start in time, so a late start
# cannot change a node that was reported unchanged.
mkdir "$run/began" 2>/dev/null || exit 0
log=$run/log
cat /proc/sys/kernel/random/boot_id > "$run/boot" 2>/dev/null
printf '%s\n' "$$" > "$run/pid"
printf '%s\n' "$new" > "$run/new"
printf '%s\n' "$goal" > "$run/goal"
# shellcheck disable=SC2154 # prof: set by activation_functions.sh
prev=$(readlink -f "$prof" 2>/dev/null || true)
printf '%s\n' "$prev" > "$run/prev"
status started
case "$goal" in
  dry-activate)
    if "$new/bin/switch-to-configuration" dry-activate >> "$log" 2>&1; then status "done"; else status "failed $?"; fi
    exit 0 ;;
  boot)
    if nix-env -p "$prof" --set "$new" >> "$log" 2>&1 && "$new/bin/switch-to-configuration" boot >> "$log" 2>&1; then status "done"; else status "failed $?"; fi
    exit 0 ;;
esac
status switching
"$new/bin/switch-to-configuration" test >> "$log" 2>&1
rc=$?
if [ "$rc" -ne 0 ]; then
  mkdir "$run/decided" 2>/dev/null
  go_back "failed $rc"
  exit 0
fi
# The confirm clock starts now that the switch has finished. Naps of 0.1 s (GNU coreutils and
# busybox take fractions) notice the confirmation at once, not up to a second later, which
# every wave of an apply would wait; a sleep without fractions naps whole seconds.
status activated
if sleep 0.1 2>/dev/null; then nap=0.1 per_s=10; else nap=1 per_s=1; fi
i=0
while [ "$i" -lt $((timeout * per_s)) ] && [ ! -e "$run/confirmed" ]; do sleep "$nap"; i=$((i + 1)); done
if mkdir "$run/decided" 2>/dev/null; then
  go_back rolled-back
  exit 0
fi
# The confirmation took the decision, perhaps in the last second: wait for its mark.
while [ ! -e "$run/confirmed" ]; do sleep "$nap"; done
status committing
if commit; then status "done"; else status "commit-failed $?"; fi
