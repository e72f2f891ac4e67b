# shellcheck shell=sh
# Not a script by itself: activation_functions.sh comes first (prof and the functions status,
# go_back and commit are its).
here=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)
for run in "$EDGECTL_STATE"/run/*; do
  [ -f "$run/status" ] || continue
  s=$(cat "$run/status")
  case "$s" in started|switching|activated|rolling-back|committing) ;; *) continue ;; esac
  token=${run##*/}; log=$run/log
  new=$(cat "$run/new" 2>/dev/null); prev=$(cat "$run/prev" 2>/dev/null)
  # shellcheck disable=SC2034 # goal: read by commit, in activation_functions.sh
  goal=$(cat "$run/goal" 2>/dev/null); pid=$(cat "$run/pid" 2>/dev/null); boot=$(cat "$run/boot" 2>/dev/null)
  if [ "$boot" = "$here" ] && [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q edgectl-activate; then
    echo "pending $token"; continue
  fi
  mkdir "$run/decided" 2>/dev/null
  # A switch the dead process started may still run (setsid and systemd both make the
  # activation a process group of its own): stop what of it still works on that generation.
  if [ "$boot" = "$here" ] && [ -n "$pid" ] && [ -n "$new" ]; then
    for p in $(pgrep -g "$pid" 2>/dev/null); do
      tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -qF "$new" && kill -KILL "$p" 2>/dev/null
    done
  fi
  if [ "$boot" != "$here" ]; then
    if [ "$s" = committing ] && [ -n "$prev" ]; then
      # shellcheck disable=SC2154 # prof: set by activation_functions.sh
      nix-env -p "$prof" --set "$prev" >> "$log" 2>&1 && "$prev/bin/switch-to-configuration" boot >> "$log" 2>&1
    fi
    status "interrupted by a reboot during $s; the node runs its confirmed generation"
  else
    if [ "$s" = started ]; then
      status "abandoned before any change"
    elif [ -e "$run/confirmed" ]; then
      if commit; then status "done"; else status "commit-failed $?"; fi
    else
      go_back "rolled-back after its process died"
    fi
  fi
  echo "resolved $token $(cat "$run/status")"
done
# Keep the last 50 runs' logs.
# shellcheck disable=SC2012 # ls -t is the portable sort by age; the names are our run tokens
ls -1dt "$EDGECTL_STATE"/run/* 2>/dev/null | tail -n +51 | while read -r old; do rm -rf "$old"; done
