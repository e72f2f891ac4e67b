# Identity and access every node gets: hostname, the login user, sshd, Nix.
{ config, lib, ... }:
let
  cfg = config.edge;
  edgeLib = import ./lib;
in
{
  config = {
    system.stateVersion = cfg.cluster.stateVersion;
    networking.hostName = cfg.node.name;

    users.users.${cfg.access.user} = {
      isNormalUser = true;
      extraGroups = [ "wheel" ];
      openssh.authorizedKeys.keys = cfg.access.sshKeys;
    };

    # edgectl deploys as this user with `sudo` over a non-interactive SSH session.
    security.sudo.wheelNeedsPassword = false;

    services.openssh = {
      enable = true;
      # NixOS's defaults, spelled out: lib/ports.nix's firewallFor (what the test rig's
      # --nixos nodes open) counts on them.
      ports = [ edgeLib.ports.ssh ];
      openFirewall = true;
      settings = {
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
        PermitRootLogin = "no";
      };
    };

    nix.settings = {
      # Closures copied by the deploying user must be accepted without signatures.
      trusted-users = [ "root" "@wheel" ];
      experimental-features = [ "nix-command" "flakes" ];
    };
  };
}
