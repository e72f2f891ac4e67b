# shellcheck shell=sh
# Not a script by itself: a function library that activate.sh and resolve_in_flight.sh are
# appended to. They set run, new, prev, goal and log before calling these functions; checked
# alone, this file cannot show that, hence the SC2154 directives below.
prof=/nix/var/nix/profiles/system
# shellcheck disable=SC2154 # run: set by the script appended to this one
status() { printf '%s\n' "$1" > "$run/status.tmp" && mv "$run/status.tmp" "$run/status"; }
# Back to the previous generation's runtime. Its profile and boot default were never changed
# (that happens only once confirmed), so a reboot lands there too.
# shellcheck disable=SC2154 # log: set by the script appended to this one
rollback() {
  if [ -z "$prev" ] || [ ! -e "$prev/bin/switch-to-configuration" ]; then
    echo "no previous generation to return to" >> "$log"; return 0
  fi
  "$prev/bin/switch-to-configuration" test >> "$log" 2>&1
}
# $1: the status to end on once back, e.g. "failed 3" or "rolled-back".
go_back() {
  status rolling-back
  if rollback; then status "$1"; else status "rollback-failed $? after $1"; fi
}
# The confirmed generation becomes the profile's and the boot default.
# shellcheck disable=SC2154 # goal, new: set by the script appended to this one
commit() {
  [ "$goal" = switch ] || return 0
  nix-env -p "$prof" --set "$new" >> "$log" 2>&1 && "$new/bin/switch-to-configuration" boot >> "$log" 2>&1
}
