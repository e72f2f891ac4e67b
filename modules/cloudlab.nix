# Booting and networking a CloudLab (Emulab) bare-metal node.
# Sources: CLOUDLAB-FACTS.md section 4; mars-research/miniond nixos/emulab.nix.
{ config, lib, ... }:
let
  cfg = config.edge.cloudlab;
  edgeLib = import ./lib;
  plan = edgeLib.interfacesPlanFor cfg.interfaces;

  interfaceType = lib.types.submodule {
    options = {
      name = lib.mkOption {
        type = lib.types.str;
        description = "Interface name to give the NIC (or the VLAN device); 1-15 characters, not ethN.";
      };
      mac = lib.mkOption {
        type = lib.types.str;
        example = "3c:fd:fe:00:00:01";
        description = "Permanent MAC address of the NIC.";
      };
      address = lib.mkOption {
        type = lib.types.str;
        description = "Static IPv4 address, without prefix.";
      };
      prefixLength = lib.mkOption {
        type = lib.types.int;
        description = "IPv4 prefix length.";
      };
      vlan = lib.mkOption {
        type = lib.types.nullOr lib.types.int;
        default = null;
        description = "802.1Q tag when the link is VLAN-tagged; the address then goes on a VLAN device called `name`.";
      };
    };
  };
in
{
  options.edge.cloudlab = {
    enable = lib.mkEnableOption "CloudLab boot chain and experiment networking";
    bootDisk = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "Whole boot disk by a stable name; GRUB is installed into its first partition. No default: a guess boots once and never again.";
    };
    rootDevice = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "Device of the ext4 root file system, by a stable name (no default, as above).";
    };
    grubDevice = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "Partition 1 of the boot disk by its own stable name, as install read it; null: derived from bootDisk (`-part1`).";
    };
    rootFsType = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "ext4";
      description = "File system of rootDevice, as install read it (no default, as above).";
    };
    rootDiskModules = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "sd_mod" "ahci" ];
      description = "Kernel modules of the drivers between the root disk and the bus, as install read them: the initrd carries each.";
    };
    loginGroup = lib.mkOption {
      type = lib.types.nullOr (lib.types.submodule {
        options = {
          name = lib.mkOption { type = lib.types.str; description = "Group name from before NixOS."; };
          gid = lib.mkOption { type = lib.types.ints.positive; description = "Its number."; };
        };
      });
      default = null;
      description = "The login user's primary group from before NixOS (CloudLab's project group), kept with its gid.";
    };
    loginUid = lib.mkOption {
      type = lib.types.nullOr lib.types.ints.positive;
      default = null;
      description = "The login user's uid from before NixOS (CloudLab gives each user one, 20001 and up), so the files it owns stay its own; null: NixOS picks one.";
    };
    serialConsole = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Kernel and GRUB on ttyS0 at 115200 8N1 (the portal's console).";
    };
    interfaces = lib.mkOption {
      type = lib.types.listOf interfaceType;
      default = [ ];
      description = "Experiment-LAN interfaces, matched by MAC, with static addresses.";
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      # A hand-written flake cannot slip past what `edgectl plan` refuses.
      assertions = [
        {
          assertion = cfg.bootDisk != null && cfg.rootDevice != null && cfg.rootFsType != null;
          message = "edge.cloudlab.bootDisk, rootDevice and rootFsType are unknown for this node: record them with `edgectl install FILE --on NODE --until facts` (it writes hardware/NODE.toml beside the topology; keep that file in git), or set boot_disk/root_device/root_fs in the topology.";
        }
      ];
      # NIXOS_LUSTRATE is carried out by the scripted stage 1 only (nixpkgs issue 357878): with
      # systemd in stage 1 the first boot keeps Ubuntu's /etc beside NixOS's. `install` refuses
      # a system built with it on.
      boot.initrd.systemd.enable = lib.mkDefault false;
      boot.loader.grub = {
        enable = true;
        # Emulab's MFS chain-loads partition 1's boot sector, not the MBR.
        # Unknown is refused by the assertion above; these only keep evaluation to it.
        device =
          if cfg.grubDevice != null then cfg.grubDevice
          else if cfg.bootDisk != null then edgeLib.grubDeviceFor cfg.bootDisk
          else "nodev";
        # grub-install refuses a partition (blocklists) without --force.
        forceInstall = true;
      };

      fileSystems."/" = {
        device = if cfg.rootDevice != null then cfg.rootDevice else "/dev/disk/by-label/edgectl-unknown-root";
        fsType = if cfg.rootFsType != null then cfg.rootFsType else "ext4";
      };

      # No hardware-configuration.nix is generated, so the initrd must carry
      # the disk controllers CloudLab's types use (SATA/AHCI, NVMe, Dell PERC
      # and LSI HBAs) or the root file system is never found.
      # rootDiskModules adds what install found under this node's root disk.
      boot.initrd.availableKernelModules = [ "ahci" "ata_piix" "nvme" "sd_mod" "megaraid_sas" "mpt3sas" ] ++ cfg.rootDiskModules;

      # What `edgectl install` checks in the built system before it changes the node: the
      # initrd's modules, the stage 1 kind, where GRUB goes and which root it mounts.
      system.extraSystemBuilderCmds = ''
        mkdir -p $out/edgectl
        printf '%s\n' ${lib.escapeShellArgs (config.boot.initrd.availableKernelModules ++ config.boot.initrd.kernelModules)} > $out/edgectl/initrd-modules
        echo ${if config.boot.initrd.systemd.enable then "systemd" else "scripted"} > $out/edgectl/stage1
        printf '%s\n' ${lib.escapeShellArgs config.boot.loader.grub.devices} > $out/edgectl/grub-devices
        printf '%s\n' ${lib.escapeShellArg config.fileSystems."/".device} > $out/edgectl/root-device
      '';
      # Microcode and NIC firmware (e.g. Broadcom bnx2x) come from here.
      hardware.enableRedistributableFirmware = lib.mkDefault true;

      # The control network is how edgectl (and the portal) reach the node: it
      # stays on DHCP, and only experiment interfaces are made static.
      networking.useDHCP = true;

      # .link files are applied by udev whether or not networkd is on; 10- sorts
      # before 99-default.link, so the MAC-based name wins over the predictable one.
      # PermanentMACAddress does not match VLAN devices, which inherit the MAC.
      systemd.network.links = lib.mapAttrs' (name: mac:
        lib.nameValuePair "10-${name}" {
          matchConfig.PermanentMACAddress = mac;
          linkConfig.Name = name;
        }) plan.links;

      networking.interfaces =
        lib.mapAttrs (_: a: {
          useDHCP = false;
          ipv4.addresses = [ { address = a.address; prefixLength = a.prefixLength; } ];
        }) plan.addresses
        # A NIC that only carries VLANs: brought up, kept away from dhcpcd.
        // lib.genAttrs plan.trunks (_: { useDHCP = false; });

      networking.vlans = plan.vlans;
    }

    # The portal's user keeps its uid, so its files from before NixOS (and /proj's, whose
    # owner numbers come from the portal) stay its own; root keeps 0.
    (lib.mkIf (cfg.loginUid != null && config.edge.access.user != "root") {
      users.users.${config.edge.access.user}.uid = cfg.loginUid;
    })
    (lib.mkIf (cfg.loginGroup != null && config.edge.access.user != "root") {
      users.groups.${cfg.loginGroup.name}.gid = cfg.loginGroup.gid;
      users.users.${config.edge.access.user}.group = cfg.loginGroup.name;
    })

    (lib.mkIf cfg.serialConsole {
      # The last console= is /dev/console, so boot messages and emergency
      # shells land on serial; tty0 keeps the VGA/iDRAC console too.
      boot.kernelParams = [ "console=tty0" "console=ttyS0,115200n8" ];
      boot.loader.grub.extraConfig = ''
        serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1
        terminal_input --append serial
        terminal_output --append serial
      '';
    })
  ]);
}
