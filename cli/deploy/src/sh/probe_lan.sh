# `--fanout auto`'s LAN probe, on the seed: sh -c PROBE edgectl-probe DEST PORT BYTES STREAMS.
# Sends BYTES random bytes to DEST's `edgectl-probe` (the cluster key's forced command discards
# them) over STREAMS connections at once, the way the relay feeds its peers, and prints
# "bps N": the bytes of all streams a second, less an empty connection's time.
dest=$1 port=$2 bytes=$3 streams=$4
case $bytes$streams in '' | *[!0-9]*) echo "edgectl-probe: bad size $bytes or streams $streams" >&2; exit 2 ;; esac
mkdir -p "$EDGECTL_STATE" || exit 1
f=$(mktemp "$EDGECTL_STATE/probe.XXXXXXXX") || exit 1
trap 'rm -f "$f"' EXIT
head -c "$bytes" /dev/urandom > "$f" || exit 1
send() {
  ssh -p "$port" -i "$EDGECTL_STATE/cluster_key" -o IdentitiesOnly=yes \
    -o UserKnownHostsFile="$EDGECTL_STATE/known_hosts" -o StrictHostKeyChecking=yes \
    -o BatchMode=yes -o ConnectTimeout=10 \
    -o Ciphers=aes128-gcm@openssh.com,chacha20-poly1305@openssh.com -o KexAlgorithms=curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,diffie-hellman-group14-sha256 \
    -- "$dest" edgectl-probe
}
t0=$(date +%s%N)
send < /dev/null || exit 1
t1=$(date +%s%N)
i=0 pids=
while [ "$i" -lt "$streams" ]; do
  i=$((i+1)); send < "$f" & pids="$pids $!"
done
for p in $pids; do wait "$p" || exit 1; done
t2=$(date +%s%N)
took=$(( (t2 - t1) - (t1 - t0) ))
[ "$took" -gt 100000 ] || took=100000
echo "bps $(( bytes * streams * 1000000000 / took ))"
