# Phase 3 of install, detached from the SSH channel (a dropped connection during grub-install
# would leave partition 1's boot sector and core.img out of step): makes SYSTEM the system
# profile and NixOS's boot default, then checks that GRUB_DEVICE's boot sector holds GRUB.
# Prints the state in $EDGECTL_STATE/install-switch/status: running, ok, failed RC or no-grub.
# Run again for the same system, it reports that run's state instead of starting another.
sys=$1 grub=$2
st=$EDGECTL_STATE/install-switch
mkdir -p "$st" || exit 1
if [ -f "$st/status" ] && [ "$(cat "$st/system" 2>/dev/null)" = "$sys" ]; then
  case $(cat "$st/status") in running | ok) cat "$st/status"; exit 0 ;; esac
fi
rm -f "$st/status" "$st/log"
printf '%s\n' "$sys" > "$st/system"
echo running > "$st/status"
# shellcheck disable=SC2016 # expanded by the inner shell
setsid -f /bin/sh -c '
  sys=$1 grub=$2 st=$3
  {
    nix-env -p /nix/var/nix/profiles/system --set "$sys" &&
      touch /etc/NIXOS &&
      NIXOS_INSTALL_BOOTLOADER=1 "$sys/bin/switch-to-configuration" boot
  } > "$st/log" 2>&1
  rc=$?
  if [ "$rc" != 0 ]; then
    echo "failed $rc" > "$st/status.new"
  elif dd if="$grub" bs=512 count=1 2>/dev/null | grep -aq GRUB; then
    echo ok > "$st/status.new"
  else
    echo no-grub > "$st/status.new"
  fi
  mv "$st/status.new" "$st/status"
' edgectl-install-switch "$sys" "$grub" "$st" < /dev/null > /dev/null 2>&1
echo running
