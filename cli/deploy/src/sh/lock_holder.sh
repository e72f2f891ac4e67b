l=$EDGECTL_STATE/lock
[ -f "$l/owner" ] || exit 0
[ -n "$(find "$l/heartbeat" "$l" -maxdepth 0 -mmin -"$1" 2>/dev/null)" ] && cat "$l/owner"
exit 0
