{
  description = "edgectl: one TOML file to a tuned, verified NixOS cluster";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = {
    self,
    nixpkgs,
  }: let
    system = "x86_64-linux";
    lib = nixpkgs.lib;
    pkgs = nixpkgs.legacyPackages.${system};
    # hosts/ holds the configurations generated from examples/edge-lab.toml (kept current by a test).
    hostNames = map (lib.removeSuffix ".nix") (builtins.filter (lib.hasSuffix ".nix") (builtins.attrNames (builtins.readDir ./hosts)));
    host = extra: name:
      lib.nixosSystem {
        inherit system;
        # The node agent is this flake's own build, as in the flakes edgectl generates.
        modules = [self.nixosModules.default {edge.agent.package = self.packages.${system}.edgectl;} (./hosts + "/${name}.nix")] ++ extra;
      };
    # The example's nodes were never installed, so their boot disk and root device are unknown
    # and the modules refuse them (as they should); the checks evaluate them with stand-in
    # stable names instead.
    exampleBoot = {
      edge.cloudlab.bootDisk = "/dev/disk/by-id/edgectl-example-boot-disk";
      edge.cloudlab.rootDevice = "/dev/disk/by-uuid/00000000-0000-4000-8000-000000000000";
    };
  in {
    # The controller and the node agent are one binary; nodes run it as edgectl-agent.service
    # (edge.agent.package), so the generated flakes take this flake as their `edgectl` input.
    packages.${system} = rec {
      default = edgectl;
      edgectl = pkgs.rustPlatform.buildRustPackage {
        pname = "edgectl";
        version = "0.1.0";
        # A fixed name, so the source has one store path whichever way the flake was fetched
        # (the cluster-vm check rebuilds systems inside a VM from a path: copy).
        src = builtins.path {
          path = ./.;
          name = "edgectl-src";
        };
        cargoLock.lockFile = ./Cargo.lock;
        cargoBuildFlags = ["-p" "edgectl"];
        nativeBuildInputs = [pkgs.pkg-config];
        buildInputs = [pkgs.openssl];
        # The test suite needs root, network namespaces and sshd; CI runs it (scripts/test.sh).
        doCheck = false;
        # Generated flakes take the source this binary was built from as their `edgectl` input
        # unless the topology names another (cluster.edgectl_flake).
        EDGECTL_FLAKE_REF = "path:${self}";
        meta.mainProgram = "edgectl";
      };
    };

    nixosModules.default = import ./modules;

    nixosConfigurations = lib.genAttrs hostNames (host []);

    # `nix flake check` builds every example host's system and runs the pure-function tests.
    checks.${system} =
      lib.listToAttrs (map (name: lib.nameValuePair "host-${name}" (host [exampleBoot] name).config.system.build.toplevel) hostNames)
      // {
        lib-tests = import ./checks/lib-tests-drv.nix {inherit pkgs;};
        # NixOS VM test (needs KVM): a controller VM runs edgectl apply and verify on two nodes.
        cluster-vm = import ./checks/cluster-vm.nix {inherit self nixpkgs pkgs;};
      };
  };
}
