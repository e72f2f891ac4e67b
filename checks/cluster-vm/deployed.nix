# Added by ./nixos-system.nix to every system `edgectl apply` deploys in checks/cluster-vm.nix:
# what a NixOS test VM must keep once it has switched to such a system, and a marker that shows
# the switch happened. The node VMs boot a system of their own (the test driver's, with the same
# host file); apply switches them to one built from the generated flake, which knows nothing of
# VMs.
{
  lib,
  modulesPath,
  ...
}: {
  imports = [
    # What every test VM has: qemu-vm.nix (its file systems: the disk image, the host's store
    # over 9p), test-instrumentation.nix (the driver's backdoor shell; without it the driver
    # loses the node at the switch), no NixOS manual, fixed version strings.
    (modulesPath + "/../lib/testing/nixos-test-base.nix")
  ];

  # The test base leaves switch-to-configuration out; apply runs it.
  system.switch.enable = true;

  # modules/cloudlab.nix installs GRUB (into the VM's disk: qemu-vm.nix overrides the device),
  # which apply's commit step (switch-to-configuration boot) would run on a disk image without
  # a partition table. The VM boots its kernel directly, so no loader: `boot` only warns.
  boot.loader.grub.enable = lib.mkForce false;

  # No testbed here: miniond would look for a boss node that is not there.
  edge.cloudlab.testbedAgent.enable = false;

  # Firmware for real NICs and CPUs (modules/cloudlab.nix turns it on by default) is of no use
  # in a VM; leaving it out spares the test a large download.
  hardware.enableRedistributableFirmware = false;

  # Absent from the system the node booted: present only once apply has switched it.
  environment.etc."edgectl-cluster-vm".text = "activated by edgectl apply (checks/cluster-vm.nix)\n";
}
