# The edgectl node agent. Its binary is packaged later: with package = null
# only the state directory (and nothing listening) exists.
{ config, lib, ... }:
let
  cfg = config.edge.agent;
  edgeLib = import ./lib;
  stateDirectory = edgeLib.stateDirectoryFor cfg.stateDir;
  # Forces the validation above: a bad stateDir fails evaluation instead of
  # becoming a tmpfiles rule that chmods a shared directory to 0700.
  stateDir = builtins.seq stateDirectory cfg.stateDir;
in
{
  options.edge.agent = {
    enable = lib.mkEnableOption "the edgectl agent";
    port = lib.mkOption {
      type = lib.types.port;
      default = 7443;
      description = "TCP port the agent listens on, opened on every interface.";
    };
    package = lib.mkOption {
      type = lib.types.nullOr lib.types.package;
      default = null;
      description = "The edgectl package (its `edgectl agent` subcommand is the agent); null declares no unit.";
    };
    stateDir = lib.mkOption {
      type = lib.types.str;
      default = "/var/lib/edgectl-agent";
      description = "Where edgectl uploads the node's keys (mode 0600, never in the Nix store).";
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      # Exists before the agent does, so edgectl can upload keys on the first
      # deploy; root-only because it holds private keys.
      systemd.tmpfiles.rules = [ "d ${stateDir} 0700 root root -" ];
    }
    (lib.mkIf (cfg.package != null) {
      systemd.services.edgectl-agent = {
        description = "edgectl node agent";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        serviceConfig = {
          ExecStart = "${lib.getExe' cfg.package "edgectl"} agent ${lib.escapeShellArgs (edgeLib.agentArgsFor { port = cfg.port; inherit stateDir; })}";
          Restart = "on-failure";
          RestartSec = 5;
          # Root: the agent reads root-owned 0600 keys and inspects hardware.
          StateDirectoryMode = "0700";
        } // lib.optionalAttrs (stateDirectory != null) {
          StateDirectory = stateDirectory;
        };
      };
      # The controller reaches the agent over the control network, from off
      # the experiment LAN, so the port cannot be limited to experiment interfaces.
      networking.firewall.allowedTCPPorts = [ cfg.port ];
    })
  ]);
}
