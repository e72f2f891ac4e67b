run=$EDGECTL_STATE/run/$1
l=$(cat "$run/launcher" 2>/dev/null)
echo "launched with ${l:-?}"
tail -n 20 "$run/launch.log" 2>/dev/null
if [ "$l" = systemd-run ]; then journalctl -u "edgectl-activate-$1" -n 20 --no-pager 2>&1; fi
