# The edgectl node agent. With package = null no unit runs it, but its state directory and its
# ports exist, because `edgectl verify` may start an agent there for its run.
{ config, lib, ... }:
let
  cfg = config.edge.agent;
  edgeLib = import ./lib;
  stateDirectory = edgeLib.stateDirectoryFor cfg.stateDir;
  # Forces the validation above: a bad stateDir fails evaluation instead of
  # becoming a tmpfiles rule that chmods a shared directory to 0700.
  stateDir = builtins.seq stateDirectory cfg.stateDir;
  # What the agent opens (lib/ports.nix; firewallFor, which the test rig loads, uses the same).
  firewall = edgeLib.nixosFirewallFor (edgeLib.firewallParts.agent cfg);
in
{
  options.edge.agent = {
    enable = lib.mkEnableOption "the edgectl agent";
    port = lib.mkOption {
      type = lib.types.port;
      default = edgeLib.ports.agent;
      description = "UDP port the agent listens on (QUIC with mutual TLS), opened on every interface.";
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
      # On every interface: the controller reaches the agent over the control network, from
      # off the experiment LAN, and peers reach the probe listener over the LAN. QUIC is UDP;
      # mutual TLS is the guard. The probe port (TCP) listens only while a verify runs.
      networking.firewall = {
        inherit (firewall) allowedUDPPorts allowedTCPPorts allowedTCPPortRanges interfaces;
      };
    }
    (lib.mkIf (cfg.package != null) {
      systemd.services.edgectl-agent = {
        description = "edgectl node agent";
        wantedBy = [ "multi-user.target" ];
        wants = [ "network-online.target" ];
        after = [ "network-online.target" ];
        # A NixOS unit's PATH holds only what `path` names: without the system profile the
        # agent would find none of the tools it reports on (ray, nvidia-smi, wasmtime, ops).
        path = [ "/run/current-system/sw" ];
        serviceConfig = {
          ExecStart = "${lib.getExe' cfg.package "edgectl"} agent ${lib.escapeShellArgs (edgeLib.agentArgsFor { port = cfg.port; inherit stateDir; })}";
          Restart = "on-failure";
          RestartSec = 5;
          # Root: the agent reads root-owned 0600 keys and inspects hardware.
          StateDirectoryMode = "0700";
          # Hardened, within what it must do: read hardware and sysctls, open /dev/kvm and the
          # GPUs (so no PrivateDevices), JIT-compile Wasm (so no MemoryDenyWriteExecute), and
          # drop each WASI sandbox process to nobody and kill it when late (SETUID, SETGID,
          # KILL). Nothing but its state directory is writable.
          CapabilityBoundingSet = [ "CAP_SETUID" "CAP_SETGID" "CAP_KILL" "CAP_DAC_READ_SEARCH" ];
          NoNewPrivileges = true;
          ProtectSystem = "strict";
          ReadWritePaths = [ "-${stateDir}" ];
          ProtectHome = "read-only";
          PrivateTmp = true;
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          RestrictSUIDSGID = true;
          RestrictRealtime = true;
          RestrictNamespaces = true;
          LockPersonality = true;
          SystemCallArchitectures = "native";
          RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
          UMask = "0077";
        } // lib.optionalAttrs (stateDirectory != null) {
          StateDirectory = stateDirectory;
        };
      };
    })
  ]);
}
