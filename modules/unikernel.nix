# KVM, qemu and NanoVMs `ops` for unikernel experiments.
{ config, lib, pkgs, ... }:
let
  cfg = config.edge.unikernel;
  edgeLib = import ./lib;
  kvmModule = edgeLib.kvmModuleFor { cpuVendor = config.edge.node.cpuVendor; };
in
{
  options.edge.unikernel.enable = lib.mkEnableOption "KVM, qemu and ops";

  config = lib.mkIf cfg.enable {
    boot.kernelModules = lib.optional (kvmModule != null) kvmModule;
    # qemu_kvm is qemu for the host architecture only, much smaller than qemu.
    # ops fetches Nanos kernels into ~/.ops at run time (not packaged).
    environment.systemPackages = [ pkgs.qemu_kvm pkgs.ops ];
    # /dev/kvm is root:kvm 0660.
    users.users.${config.edge.access.user}.extraGroups = [ "kvm" ];
  };
}
