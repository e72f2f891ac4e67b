# For each block device, the kernel modules of the drivers between it and the bus, nearest
# first (`sda sd_mod ahci`): what the initrd needs to find a root file system on it.
for b in /sys/block/*; do
  [ -e "$b/device" ] || continue
  printf '%s' "${b##*/}"
  p=$(readlink -f "$b/device")
  while [ -n "$p" ] && [ "$p" != /sys ] && [ "$p" != / ]; do
    if [ -e "$p/driver" ]; then
      d=$(readlink -f "$p/driver")
      # A driver's module link names its module (sd -> sd_mod), built in or not.
      if [ -e "$d/module" ]; then m=$(readlink -f "$d/module"); else m=$d; fi
      printf ' %s' "${m##*/}"
    fi
    p=${p%/*}
  done
  echo
done
