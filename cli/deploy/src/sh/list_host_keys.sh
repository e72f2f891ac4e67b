# The SSH host key files this node has, relative to /, one per line: what /etc/NIXOS_LUSTRATE
# keeps (the boot copies each listed file back from /old-root, and a missing one fails that step).
for f in /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub; do
  [ -f "$f" ] && printf '%s\n' "${f#/}"
done
true
