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
    host = name:
      lib.nixosSystem {
        inherit system;
        modules = [self.nixosModules.default (./hosts + "/${name}.nix")];
      };
  in {
    packages.${system}.default = pkgs.rustPlatform.buildRustPackage {
      pname = "edgectl";
      version = "0.1.0";
      src = ./.;
      cargoLock.lockFile = ./Cargo.lock;
      nativeBuildInputs = [pkgs.pkg-config];
      buildInputs = [pkgs.openssl];
      # The test suite needs root, network namespaces and sshd; CI runs it (scripts/test.sh).
      doCheck = false;
      meta.mainProgram = "edgectl";
    };

    nixosModules.default = import ./modules;

    nixosConfigurations = lib.genAttrs hostNames host;

    # `nix flake check` builds every example host's system and runs the pure-function tests.
    checks.${system} =
      lib.mapAttrs' (name: cfg: lib.nameValuePair "host-${name}" cfg.config.system.build.toplevel) self.nixosConfigurations
      // {
        lib-tests = import ./checks/lib-tests-drv.nix {inherit pkgs;};
      };
  };
}
