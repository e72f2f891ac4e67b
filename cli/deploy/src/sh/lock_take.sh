d=$EDGECTL_STATE; l=$d/lock; me=$1; stale=$2; dead=$3
mkdir -p "$d" || exit 1
take() { printf '%s\n' "$me" > "$l/owner.tmp" && mv "$l/owner.tmp" "$l/owner" && touch "$l/heartbeat"; }
if mkdir "$l" 2>/dev/null; then take; exit $?; fi
m=$d/lock-takeover
if mkdir "$m" 2>/dev/null || { [ -n "$(find "$m" -maxdepth 0 -mmin +1 2>/dev/null)" ] && rm -rf "$m" && mkdir "$m" 2>/dev/null; }; then
  cur=$(cat "$l/owner" 2>/dev/null)
  rc=1
  if [ -n "$dead" ] && [ "$cur" = "$dead" ]; then
    take && rc=0
  elif [ -z "$(find "$l/heartbeat" "$l" -maxdepth 0 -mmin -"$stale" 2>/dev/null)" ]; then
    take && rc=0
  fi
  rmdir "$m"
  if [ "$rc" = 0 ]; then echo "took over from: $cur"; exit 0; fi
fi
cat "$l/owner" 2>/dev/null; exit 1
