# A way back to Ubuntu when the installed NixOS fails in stage 1 (no root found, a wrong
# driver): a GRUB entry, picked on the portal's serial console, that boots Ubuntu's kernel and
# initramfs from /boot (lustration leaves /boot in place) with cloudlab/way-back.sh as init.
{ config, lib, pkgs, ... }:
let
  cfg = config.edge.cloudlab;
  wayBack = pkgs.writeScript "edgectl-way-back" ''
    #!${pkgs.bash}/bin/bash
    export PATH=${lib.makeBinPath [ pkgs.coreutils ]}
    ${builtins.readFile ./cloudlab/way-back.sh}
  '';
  uuid =
    if cfg.rootDevice != null && lib.hasPrefix "/dev/disk/by-uuid/" cfg.rootDevice
    then lib.removePrefix "/dev/disk/by-uuid/" cfg.rootDevice
    else null;
  rootArg = if uuid != null then "UUID=${uuid}" else toString cfg.rootDevice;
in
{
  options.edge.cloudlab.wayBack = lib.mkOption {
    type = lib.types.bool;
    default = true;
    description = "A GRUB entry that brings Ubuntu back (see modules/cloudlab/way-back.sh).";
  };

  config = lib.mkIf (cfg.enable && cfg.wayBack && cfg.rootDevice != null) {
    boot.loader.grub.extraEntries = ''
      menuentry "Ubuntu from before the NixOS install (edgectl way back)" {
        ${lib.optionalString (uuid != null) "search --no-floppy --fs-uuid --set=root ${uuid}"}
        linux /boot/vmlinuz root=${rootArg} rw init=${wayBack} console=tty0 console=ttyS0,115200n8
        initrd /boot/initrd.img
      }
    '';
    # The portal's console is authenticated (only the experiment's members reach it), and
    # without a password nobody could log in there to repair a node that lost its network.
    services.getty.autologinUser = lib.mkDefault "root";
  };
}
