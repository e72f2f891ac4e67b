# Ray head/worker as systemd units (nixpkgs has no Ray module).
# Arguments and ports: lib/ray.nix (rayArgsFor, rayFirewallFor).
{ config, lib, pkgs, ... }:
let
  cfg = config.edge.ray;
  edgeLib = import ./lib;

  # The dashboard's own deps are optional in nixpkgs' ray; without them
  # `ray start` still runs but serves no dashboard.
  # Pinned: nixpkgs' ray is a wheel per CPython version and refuses newer ones
  # (`pythonAtLeast "3.14"`), which `python3` is moving to; 3.13 has a wheel (ray 2.49).
  rayEnv = pkgs.python313.withPackages (ps: [ ps.ray ] ++ (ps.ray.optional-dependencies.default or [ ]));
  address = edgeLib.rayAddressFor { headAddress = cfg.headAddress; port = cfg.port; };

  args = edgeLib.rayArgsFor {
    role = cfg.role;
    headAddress = cfg.headAddress;
    port = cfg.port;
    numGpus = cfg.numGpus;
    numCpus = cfg.numCpus;
  };

  # rayFirewallFor of the role on each of cfg.interfaces (lib/ports.nix; firewallFor, which
  # the test rig loads, uses the same).
  firewall = edgeLib.nixosFirewallFor (edgeLib.firewallParts.ray cfg);

  # Ray's session (the raylet's and object store's sockets among it) lives in the state
  # directory, not in the unit's private /tmp (DynamicUser implies PrivateTmp): there a driver
  # outside the unit, such as `edgectl verify`'s Ray probe run by the agent as root, reaches
  # the raylet. Set on the head only; Ray gives every worker the head's temp dir.
  tempDir = "/var/lib/ray/tmp";

  unit = role: {
    description = "Ray ${role} node";
    wantedBy = [ "multi-user.target" ];
    # Both: `after` alone does not pull network-online.target in (and warns).
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    environment = {
      HOME = "/var/lib/ray";
    } // lib.optionalAttrs config.edge.gpu.enable {
      # Lets Ray's NVML probe and CUDA workers find libcuda/libnvidia-ml.
      LD_LIBRARY_PATH = "/run/opengl-driver/lib";
    };
    serviceConfig = {
      ExecStart = "${rayEnv}/bin/ray ${lib.escapeShellArgs (args ++ lib.optional (role == "head") "--temp-dir=${tempDir}")}";
      # A worker whose head is not up yet exits; retry rather than give up.
      Restart = "on-failure";
      RestartSec = 10;
      # Ray runs user code: no root. /dev/nvidia* are 0666, /dev/shm is world-writable.
      DynamicUser = true;
      StateDirectory = "ray";
      LimitNOFILE = 65536;
    };
  };
in
{
  options.edge.ray = {
    enable = lib.mkEnableOption "Ray (installed; a unit when edge.ray.role is set)";
    role = lib.mkOption {
      type = lib.types.nullOr (lib.types.enum [ "head" "worker" ]);
      default = null;
      description = "null: Ray is installed but no unit runs.";
    };
    headAddress = lib.mkOption {
      type = lib.types.str;
      default = "";
      description = "The head's experiment-LAN IPv4. Workers join it; the head advertises it (--node-ip-address).";
    };
    port = lib.mkOption {
      type = lib.types.port;
      default = edgeLib.ports.rayGcs;
      description = "GCS port on the head.";
    };
    numGpus = lib.mkOption {
      type = lib.types.ints.unsigned;
      default = 0;
      description = "Passed as --num-gpus.";
    };
    numCpus = lib.mkOption {
      type = lib.types.nullOr lib.types.ints.positive;
      default = null;
      description = "Passed as --num-cpus when set; null lets Ray count the CPUs.";
    };
    interfaces = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "Experiment interfaces on which Ray's ports are opened; the control network stays closed.";
    };
  };

  config = lib.mkIf cfg.enable {
    environment.systemPackages = [ rayEnv ];
    # The login user's `ray status` and `ray.init(address="auto")` find the cluster through
    # this: the units run with DynamicUser, whose PrivateTmp hides /tmp/ray from logins.
    environment.sessionVariables = lib.optionalAttrs (address != null) { RAY_ADDRESS = address; };

    systemd.services.ray-head = lib.mkIf (cfg.role == "head") (unit "head");
    systemd.services.ray-worker = lib.mkIf (cfg.role == "worker") (unit "worker");

    networking.firewall = {
      inherit (firewall) allowedTCPPorts allowedUDPPorts allowedTCPPortRanges interfaces;
    };
  };
}
