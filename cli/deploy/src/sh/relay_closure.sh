set -u
stall=$1; shift
mkdir -p "$EDGECTL_STATE" || exit 1
d=$(mktemp -d "$EDGECTL_STATE/relay.XXXXXXXX") || exit 1
trap 'rm -rf "$d"' EXIT
: > "$d/stream"
# A background job's stdin is /dev/null unless it is handed over explicitly.
exec 3<&0
cat <&3 > "$d/stream" &
w=$!
exec 3<&-
# `-s 0.1`: tail checks that the writer lives once per interval (1 s by default), so every
# import would end up to a second after the stream did.
tail -s 0.1 -c +1 --pid="$w" -f "$d/stream" | nix-store --import > /dev/null 2> "$d/seed.err" &
seed=$!
n=0
while [ $# -ge 3 ]; do
  n=$((n+1))
  mkfifo "$d/$n.fifo" || exit 1
  tail -s 0.1 -c +1 --pid="$w" -f "$d/stream" > "$d/$n.fifo" &
  echo $! > "$d/$n.tail"
  ssh -p "$2" -i "$EDGECTL_STATE/cluster_key" -o IdentitiesOnly=yes \
    -o UserKnownHostsFile="$EDGECTL_STATE/known_hosts" -o StrictHostKeyChecking=yes \
    -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=6 \
    -o Ciphers=aes128-gcm@openssh.com,chacha20-poly1305@openssh.com \
    -- "$1" "$3" < "$d/$n.fifo" > "$d/$n.out" 2> "$d/$n.err" &
  echo $! > "$d/$n.ssh"
  shift 3
done
peers=$n
# The watchdog: a peer makes progress when its reader reads (rchar grows); it may sit idle
# only while the stream itself does. Otherwise, after STALL seconds, it is dropped.
(
  while :; do
    sleep 1
    size=$(wc -c < "$d/stream"); now=$(date +%s); busy=0
    kill -0 "$w" 2>/dev/null && writing=1 || writing=0
    i=0
    while [ "$i" -lt "$peers" ]; do
      i=$((i+1))
      sp=$(cat "$d/$i.ssh"); tp=$(cat "$d/$i.tail")
      kill -0 "$sp" 2>/dev/null || continue
      busy=1
      r=$(awk '/^rchar/ {print $2}' "/proc/$tp/io" 2>/dev/null)
      [ -n "$r" ] || continue
      if [ "$r" != "$(cat "$d/$i.r" 2>/dev/null)" ] || { [ "$writing" = 1 ] && [ "$size" = "$(cat "$d/$i.s" 2>/dev/null)" ]; }; then
        echo "$r" > "$d/$i.r"; echo "$now" > "$d/$i.t"
      elif [ $((now - $(cat "$d/$i.t" 2>/dev/null || echo "$now"))) -ge "$stall" ]; then
        echo "dropped: it read nothing for ${stall} s while the stream had data for it" >> "$d/$i.err"
        : > "$d/$i.dropped"
        kill "$sp" "$tp" 2>/dev/null
      fi
      echo "$size" > "$d/$i.s"
    done
    [ "$busy" = 1 ] || [ "$writing" = 1 ] || exit 0
  done
) &
dog=$!
wait "$w"
wait "$seed"; rc=$?
i=0
while [ "$i" -lt "$peers" ]; do
  i=$((i+1)); wait "$(cat "$d/$i.ssh")"; s=$?
  # Not SSH's 255 (which says the seed could not log in): the peer is reachable.
  [ -e "$d/$i.dropped" ] && s=dropped
  printf 'peer %s %s %s %s\n' "$i" "$s" "$(grep -c . "$d/$i.out")" "$(tr '\n' ' ' < "$d/$i.err")"
done
kill "$dog" 2>/dev/null
[ "$rc" = 0 ] || cat "$d/seed.err" >&2
exit "$rc"
