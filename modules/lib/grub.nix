# Where GRUB goes on an Emulab/CloudLab node. Pure: builtins only.
#
# Emulab PXE-boots its MFS, then chain-loads the boot sector of the boot
# disk's FIRST PARTITION, never the disk's MBR (mars-research/miniond README
# and nixos/emulab.nix; CLOUDLAB-FACTS.md section 4). So GRUB is installed
# into partition 1 (with forceInstall, since grub-install refuses partitions).
let
  fail = disk: why: throw "edge lib grubDeviceFor: ${builtins.toJSON disk}: ${why}";
  isPartitionLink = d: builtins.match ".*-part[0-9]+" d != null;
in
{
  # grubDeviceFor "/dev/sda" -> "/dev/sda1"
  # grubDeviceFor "/dev/nvme0n1" -> "/dev/nvme0n1p1" (kernel inserts "p" after a trailing digit)
  # grubDeviceFor "/dev/disk/by-id/X" -> "/dev/disk/by-id/X-part1" (udev's naming)
  # A partition, a filesystem link (by-uuid/by-label) or a non-/dev path throws:
  # appending "1" to those gives a path that does not exist, found only at boot.
  grubDeviceFor = disk:
    if !(builtins.isString disk) then fail disk "bootDisk must be a string"
    else if builtins.match "/dev/disk/by-(id|path|diskseq)/[^/]+" disk != null then
      (if isPartitionLink disk then fail disk "this is a partition; give the whole disk"
       else disk + "-part1")
    else if builtins.match "/dev/disk/.*" disk != null then
      fail disk "only /dev/disk/by-id, by-path or by-diskseq name a whole disk"
    else if builtins.match "/dev/(sd|vd|xvd|hd)[a-z]+" disk != null then disk + "1"
    else if builtins.match "/dev/(sd|vd|xvd|hd)[a-z]+[0-9]+" disk != null then
      fail disk "this is a partition; give the whole disk (e.g. /dev/sda)"
    else if builtins.match "/dev/(nvme[0-9]+n[0-9]+|mmcblk[0-9]+|loop[0-9]+|md[0-9]+)" disk != null then disk + "p1"
    else if builtins.match "/dev/(nvme[0-9]+n[0-9]+|mmcblk[0-9]+|loop[0-9]+|md[0-9]+)p[0-9]+" disk != null then
      fail disk "this is a partition; give the whole disk (e.g. /dev/nvme0n1)"
    else fail disk "not a recognised whole-disk path (/dev/sdX, /dev/nvmeXnY, /dev/disk/by-id/...)";
}
