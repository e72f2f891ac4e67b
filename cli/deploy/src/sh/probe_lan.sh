# `--fanout auto`'s LAN probe, on the seed:
#   sh -c PROBE edgectl-probe DEST PORT BYTES STREAMS DEADLINE
# Sends BYTES random bytes to DEST's `edgectl-probe` (the cluster key's forced command discards
# them with dd) over STREAMS connections at once, the way the relay feeds its peers, and prints
# "cores N" (what this node can spread its streams over) and then "bps N": the bytes of all
# streams over the slowest stream's time as the peer's dd measured it, from its start to the
# end of its input. Timing the logins with the data (or subtracting an empty login's time)
# lets the handshakes' variance swamp a small probe on a fast LAN.
# A probe still running after DEADLINE seconds (a LAN too slow to matter, or a node too busy
# to say) is stopped and prints "late" instead: it would only take CPU from the copies.
dest=$1 port=$2 bytes=$3 streams=$4 deadline=$5
case $bytes$streams in '' | *[!0-9]*) echo "edgectl-probe: bad size $bytes or streams $streams" >&2; exit 2 ;; esac
case $deadline in '' | *[!0-9.]*) echo "edgectl-probe: bad deadline $deadline" >&2; exit 2 ;; esac
# nproc counts the CPUs this process may run on (a cgroup or affinity may allow fewer).
echo "cores $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)"
mkdir -p "$EDGECTL_STATE" || exit 1
d=$(mktemp -d "$EDGECTL_STATE/probe.XXXXXXXX") || exit 1
trap 'rm -rf "$d"' EXIT
f=$d/data
head -c "$bytes" /dev/urandom > "$f" || exit 1
# EDGECTL_SSH: the cluster key's options, words to split.
# shellcheck disable=SC2086
send() { exec ssh -p "$port" $EDGECTL_SSH -- "$dest" edgectl-probe; }
i=0 pids=
while [ "$i" -lt "$streams" ]; do
  i=$((i+1)); send < "$f" 2> "$d/$i.err" & pids="$pids $!"
done
# Its output goes nowhere: a sleep left holding this command's output would hold its channel.
# shellcheck disable=SC2086 # $pids is a list of numbers, split on purpose
( sleep "$deadline" && : > "$d/late" && kill $pids ) < /dev/null > /dev/null 2>&1 &
dog=$!
failed=
for p in $pids; do wait "$p" || failed=1; done
kill "$dog" 2>/dev/null
[ -e "$d/late" ] && { echo late; exit 0; }
[ -z "$failed" ] || { cat "$d"/*.err >&2; exit 1; }
# GNU dd's last line: "N bytes (...) copied, T s, R MB/s".
took=$(sed -n 's/.* copied, \([0-9.e+-]*\) s,.*/\1/p' "$d"/*.err | sort -g | tail -n 1)
[ -n "$took" ] || { echo "edgectl-probe: the peer's dd reported no time" >&2; cat "$d"/*.err >&2; exit 1; }
awk -v b="$bytes" -v n="$streams" -v t="$took" 'BEGIN { if (t < 0.0001) t = 0.0001; printf "bps %d\n", b * n / t }'
