# lib.nixosSystem for the systems `edgectl apply` deploys in checks/cluster-vm.nix. One function,
# used twice, so the two evaluations agree to the store path:
# - on the host, by checks/cluster-vm.nix, to build those systems ahead of the test and put them
#   in the controller VM's store;
# - in the controller VM, by the generated flake (`nixpkgs.lib.nixosSystem`), through the
#   stand-in nixpkgs that the test passes to `edgectl apply --override-input nixpkgs`; the VM has
#   no network and builds nothing, so it must arrive at exactly those store paths.
# Unlike nixpkgs' own lib.nixosSystem it leaves out the flake's metadata (lastModified, rev): a
# `path:` copy of nixpkgs in the VM has none, and the host's github one does. The caller's
# modules come first, in their order, then ./deployed.nix.
{nixpkgs}: args:
import "${nixpkgs}/nixos/lib/eval-config.nix" (
  builtins.removeAttrs args ["modules"]
  // {
    lib = import "${nixpkgs}/lib";
    modules = args.modules ++ [./deployed.nix];
  }
)
