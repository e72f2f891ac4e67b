# The controller VM of checks/cluster-vm.nix: edgectl, the test's SSH key (installed by the test
# script), and in its store everything `edgectl apply` needs without a network. `clusterVm` comes
# from checks/cluster-vm.nix (node.specialArgs).
{
  lib,
  pkgs,
  clusterVm,
  ...
}: {
  environment.systemPackages = [clusterVm.edgectl pkgs.netcat];

  # apply and plan run `nix build` on the generated flake. The systems it evaluates to are
  # already here (built on the host, registered in this VM's Nix database), so nothing is
  # built and nothing is fetched; the stand-in nixpkgs carries the nixpkgs source and edgectl's
  # closure the flake source it names as the generated flake's `edgectl` input.
  virtualisation.additionalPaths = lib.attrValues clusterVm.deployed ++ [clusterVm.standInNixpkgs clusterVm.source];

  nix.settings = {
    experimental-features = ["nix-command" "flakes"];
    # No network: fail at once instead of waiting on caches, mirrors or the flake registry.
    substituters = lib.mkForce [];
    hashed-mirrors = null;
    connect-timeout = 1;
    flake-registry = "";
  };

  virtualisation = {
    cores = 2;
    # Evaluating two NixOS systems, and the writable store's upper layer is in RAM.
    memorySize = 6144;
  };
}
