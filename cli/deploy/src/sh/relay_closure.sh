set -u
# sh -c RELAY edgectl-relay STALL ENTRY...: ENTRY is DEPTH,USER@ADDRESS,PORT, the peers in
# preorder; the DEPTH 1 entries are this node's own peers, and the deeper entries after each
# are that peer's subtree, which it relays on in turn (the cluster key's forced command runs
# this script there, as `edgectl-relay STALL` and the subtree one level up).
stall=$1; shift
case $stall in '' | *[!0-9]*) echo "edgectl-relay: bad stall $stall" >&2; exit 2 ;; esac
mkdir -p "$EDGECTL_STATE" || exit 1
d=$(mktemp -d "$EDGECTL_STATE/relay.XXXXXXXX") || exit 1
trap 'rm -rf "$d"' EXIT
n=0
for e in "$@"; do
  case $e in
    *[!0-9A-Za-z.,@:_-]* | [!0-9]*) echo "edgectl-relay: bad peer entry $e" >&2; exit 2 ;;
  esac
  depth=${e%%,*} rest=${e#*,}
  if [ "$depth" = 1 ]; then
    n=$((n+1)); printf '%s\n' "$rest" > "$d/$n.dest"; : > "$d/$n.sub"
  elif [ "$n" -gt 0 ]; then
    printf ' %s,%s' "$((depth - 1))" "$rest" >> "$d/$n.sub"
  else
    echo "edgectl-relay: entry $e comes before any peer of depth 1" >&2; exit 2
  fi
done
peers=$n
: > "$d/stream"
# A background job's stdin is /dev/null unless it is handed over explicitly.
exec 3<&0
cat <&3 > "$d/stream" &
w=$!
exec 3<&-
# `-s 0.1`: tail checks that the writer lives once per interval (1 s by default), so every
# import would end up to a second after the stream did.
tail -s 0.1 -c +1 --pid="$w" -f "$d/stream" | nix-store --import > "$d/own.out" 2> "$d/own.err" &
own=$!
i=0
while [ "$i" -lt "$peers" ]; do
  i=$((i+1))
  dest=$(cat "$d/$i.dest"); port=${dest##*,}; dest=${dest%,*}
  # A peer with a subtree relays it on; a leaf only imports.
  if [ -s "$d/$i.sub" ]; then cmd="edgectl-relay $stall$(cat "$d/$i.sub")"; else cmd="nix-store --import"; fi
  mkfifo "$d/$i.fifo" || exit 1
  tail -s 0.1 -c +1 --pid="$w" -f "$d/stream" > "$d/$i.fifo" &
  echo $! > "$d/$i.tail"
  # EDGECTL_SSH: the cluster key's options, words to split.
  # shellcheck disable=SC2086
  ssh -p "$port" $EDGECTL_SSH -- "$dest" "$cmd" < "$d/$i.fifo" > "$d/$i.out" 2> "$d/$i.err" &
  echo $! > "$d/$i.ssh"
done
# The watchdog: a peer makes progress when its reader reads (rchar grows); it may sit idle
# only while the stream itself does. Otherwise, after STALL seconds, it is dropped (and with
# it its subtree, which is then copied another way). Shell builtins for each peer: it wakes
# every second for every peer, and a process for each read (cat, awk) cost about 1 ms of CPU
# per MiB relayed, an eighth of the relay's own, on the rig where every node shares the CPUs. Its
# output goes nowhere (what it says goes to files): its `sleep`, left running when it is
# killed, would otherwise hold this command's output open, and the relay's end with it, for up
# to a second.
(
  # io PID KEY: sets v to KEY's count in /proc/PID/io, or to nothing when PID is gone.
  io() {
    v=
    while read -r k x; do
      if [ "$k" = "$2:" ]; then v=$x; return 0; fi
    done 2>/dev/null < "/proc/$1/io"
  }
  i=0
  while [ "$i" -lt "$peers" ]; do
    i=$((i+1))
    read -r sp < "$d/$i.ssh"; read -r tp < "$d/$i.tail"
    eval "sp_$i=\$sp tp_$i=\$tp r_$i= s_$i= t_$i=0"
  done
  tick=0 last_r='' last_s='' last_t=0
  while :; do
    sleep 1
    tick=$((tick+1)) busy=0
    # The stream's size (one process a second; the writer's wchar read the same way slowed the
    # upload by 0.3 s in 9, for reasons not found).
    size=$(wc -c < "$d/stream")
    kill -0 "$w" 2>/dev/null && writing=1 || writing=0
    i=0
    while [ "$i" -lt "$peers" ]; do
      i=$((i+1))
      eval "sp=\$sp_$i tp=\$tp_$i last_r=\$r_$i last_s=\$s_$i last_t=\$t_$i"
      kill -0 "$sp" 2>/dev/null || continue
      busy=1
      io "$tp" rchar; r=$v
      [ -n "$r" ] || continue
      if [ "$r" != "$last_r" ] || { [ "$writing" = 1 ] && [ "$size" = "$last_s" ]; }; then
        eval "r_$i=\$r t_$i=\$tick"
      elif [ $((tick - last_t)) -ge "$stall" ]; then
        echo "dropped: it read nothing for ${stall} s while the stream had data for it" >> "$d/$i.err"
        : > "$d/$i.dropped"
        kill "$sp" "$tp" 2>/dev/null
      fi
      eval "s_$i=\$size"
    done
    [ "$busy" = 1 ] || [ "$writing" = 1 ] || exit 0
  done
) < /dev/null > /dev/null 2>&1 &
dog=$!
wait "$w"
wait "$own"; rc=$?
# What this node imported itself, for the node that relayed the stream to it.
echo "imported $(grep -c . "$d/own.out")"
i=0
while [ "$i" -lt "$peers" ]; do
  i=$((i+1)); wait "$(cat "$d/$i.ssh")"; s=$?
  # Not SSH's 255 (which says this node could not log in): the peer is reachable.
  [ -e "$d/$i.dropped" ] && s=dropped
  # A relaying peer says what it imported; a leaf's import prints one path per line.
  paths=$(sed -n 's/^imported //p' "$d/$i.out")
  [ -n "$paths" ] || paths=$(grep -c . "$d/$i.out")
  printf 'peer %s %s %s %s\n' "$i" "$s" "$paths" "$(tr '\n' ' ' < "$d/$i.err")"
  # Its subtree's words, numbered under it (peer 2 of peer 1 is peer 1.2).
  sed -n "s/^peer /peer $i./p" "$d/$i.out"
done
kill "$dog" 2>/dev/null
[ "$rc" = 0 ] || cat "$d/own.err" >&2
exit "$rc"
