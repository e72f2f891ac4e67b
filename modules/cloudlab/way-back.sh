# The way back to Ubuntu after a NixOS install that does not boot. GRUB's "way back" entry
# boots Ubuntu's own kernel and initramfs (still in /boot, which lustration leaves in place)
# with this script as init: Ubuntu's initramfs mounts the root (it has the drivers), then this
# moves NixOS's top level aside and Ubuntu's tree back out of /old-root, and starts Ubuntu.
# EDGECTL_WAY_BACK_ROOT runs it on a copy of a tree (tests); empty: the real root.
set -u
root=${EDGECTL_WAY_BACK_ROOT:-}
say() { echo "edgectl way back: $*"; }
aside=$root/nixos.edgectl-way-back
if [ -d "$root/old-root" ]; then
  say "moving NixOS aside to /${aside##*/} and Ubuntu back from /old-root"
  mkdir -p "$aside"
  # Lustration moved every top-level entry but /nix and /boot into /old-root.
  for d in "$root"/* "$root"/.[!.]*; do
    [ -e "$d" ] || [ -L "$d" ] || continue
    case ${d##*/} in nix | boot | old-root | "${aside##*/}") continue ;; esac
    mv "$d" "$aside/" || say "could not move $d aside"
  done
  for d in "$root"/old-root/* "$root"/old-root/.[!.]*; do
    [ -e "$d" ] || [ -L "$d" ] || continue
    case ${d##*/} in nix | boot) continue ;; esac
    mv "$d" "$root/" || say "could not move $d back"
  done
  rmdir "$root/old-root" 2>/dev/null || mv "$root/old-root" "$aside/old-root.rest"
else
  say "no /old-root: NixOS never got as far as lustration, Ubuntu's tree is in place"
fi
# Without these Ubuntu is no longer marked for NixOS's next boot.
rm -f "$root/etc/NIXOS" "$root/etc/NIXOS_LUSTRATE"
sync
say "done; GRUB still starts NixOS by default: in Ubuntu, run grub-install and update-grub, or reload the node from the portal"
if [ -z "$root" ]; then
  exec /sbin/init "$@"
fi
