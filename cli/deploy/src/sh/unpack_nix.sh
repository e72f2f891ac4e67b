set -e
p=$1
# shellcheck disable=SC2174 # -m is meant for these three; parents get the umask, as before
mkdir -p -m 0755 /nix/store /nix/var/nix /usr/local/bin
tar -C / -xf -
"$p/bin/nix-store" --load-db < "$EDGECTL_STATE/nix.reginfo"
for f in "$p"/bin/*; do ln -sfn "$f" /usr/local/bin/; done
