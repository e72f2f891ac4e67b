# Written by edgectl: the only thing its cluster key may run on this node.
if [ "$(id -u)" = 0 ]; then s=; else s="sudo -n"; fi
case "$SSH_ORIGINAL_COMMAND" in
  *"--serve --write"*) exec $s nix-store --serve --write ;;
  *"--import"*) exec $s nix-store --import ;;
  # `--fanout auto`'s LAN probe: bytes to throw away, as fast as the link takes them; dd says
  # on stderr how long they took to arrive, which no login is part of.
  "edgectl-probe") exec env LC_ALL=C dd of=/dev/null bs=65536 ;;
  # An inner node of the fan-out tree: import the stream and relay it on to its subtree, with
  # the relay edgectl put beside the cluster key (it checks every argument).
  "edgectl-relay "*)
    set -f
    # shellcheck disable=SC2086 # split into the relay's words on purpose
    set -- $SSH_ORIGINAL_COMMAND
    shift
    exec $s sh "$EDGECTL_STATE/relay.sh" "$@" ;;
esac
echo "edgectl cluster key: only Nix store copies are allowed here" >&2
exit 1
