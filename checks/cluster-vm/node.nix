# A node VM of checks/cluster-vm.nix as it boots, before `edgectl apply`: imported beside
# self.nixosModules.default and the node's generated host file (./hosts/<node>.nix, which sets
# the edge.* options as `edgectl generate` does for ./cluster.toml). `clusterVm` comes from
# checks/cluster-vm.nix (node.specialArgs).
{
  config,
  lib,
  clusterVm,
  ...
}: let
  name = config.edge.node.name;
  lan = clusterVm.lanOf name;
  number = config.virtualisation.test.nodeNumber;
  # The driver's MAC for this machine's NIC on VLAN 1: qemuNicMac 1 number in
  # nixos/lib/qemu-common.nix ("52:54:00:12:<vlan>:<number>", two hex digits each).
  mac = "52:54:00:12:01:${lib.fixedWidthString 2 "0" (lib.toLower (lib.toHexString number))}";
  bare = m: lib.toLower (lib.replaceStrings [":" "-"] ["" ""] m);
in {
  # As in the flakes edgectl generates (and this repository's flake.nix).
  edge.agent.package = clusterVm.edgectl;

  # The test base leaves switch-to-configuration out of test VMs; apply's rollback runs the
  # previous system's (this one's) if the new one fails.
  system.switch.enable = true;

  # No testbed here: miniond would look for a boss node that is not there.
  edge.cloudlab.testbedAgent.enable = false;

  # As in ./deployed.nix: no firmware for hardware a VM does not have.
  hardware.enableRedistributableFirmware = false;

  virtualisation = {
    cores = 2;
    memorySize = 3072;
    # One NIC on VLAN 1, which the driver names lan0 (by its MAC, in the initrd) instead of
    # eth1: the name the topology's network has and modules/cloudlab.nix gives it. No address
    # from the driver: the host file's edge.cloudlab.interfaces sets the topology's.
    interfaces.lan0 = {
      vlan = 1;
      assignIP = false;
    };
  };

  assertions = [
    {
      assertion = lan.network == "lan0" && bare lan.mac == bare mac && lan.address == "192.168.1.${toString number}/24";
      message = "checks/cluster-vm/cluster.toml: node ${name} must be on network lan0 with address 192.168.1.${toString number}/24 and MAC ${mac} (the test driver's for machine ${toString number} on VLAN 1), not ${lan.address} and ${lan.mac}";
    }
  ];
}
