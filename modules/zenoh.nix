# zenohd router/peer through nixpkgs' services.zenohd (2025+; absent from the
# 24.11 option dump). Config: lib/zenoh.nix.
{ config, lib, ... }:
let
  cfg = config.edge.zenoh;
  edgeLib = import ./lib;
  # zenohPortsFor of the listen endpoints on each of cfg.interfaces (lib/ports.nix;
  # firewallFor, which the test rig loads, uses the same).
  firewall = edgeLib.nixosFirewallFor (edgeLib.firewallParts.zenoh cfg);
in
{
  options.edge.zenoh = {
    enable = lib.mkEnableOption "the zenohd daemon";
    router = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Run zenohd in router mode; otherwise peer mode.";
    };
    listen = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = edgeLib.defaultZenohListen;
      description = "zenoh listen endpoints.";
    };
    connect = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "tcp/10.10.1.1:7447" ];
      description = "zenoh endpoints to connect to (routers from the topology).";
    };
    interfaces = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "Experiment interfaces on which 7447 (and listen ports) are opened, TCP and UDP.";
    };
  };

  config = lib.mkIf cfg.enable {
    services.zenohd = {
      enable = true;
      settings = edgeLib.zenohConfigFor {
        router = cfg.router;
        listen = cfg.listen;
        connect = cfg.connect;
      };
      # The first version of the module gave these no default, so evaluation
      # failed unless they were set.
      backends = [ ];
      extraOptions = [ ];
    };

    # The zenohd module does not open the firewall itself.
    networking.firewall = {
      inherit (firewall) allowedTCPPorts allowedUDPPorts allowedTCPPortRanges interfaces;
    };
  };
}
