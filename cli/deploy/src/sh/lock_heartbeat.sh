l=$EDGECTL_STATE/lock
[ "$(cat "$l/owner" 2>/dev/null)" = "$1" ] && touch "$l/heartbeat"
