# The testbed's own agent on a NixOS node: CloudLab (Emulab) expects a booted node to report
# its boot states (TBSETUP, then ISUP) through tmcd, or its state machine times the node out in
# BOOTING and power-cycles it; and Ubuntu's testbed client, which created the portal's accounts,
# keys, /proj and /share mounts and /etc/hosts names, is gone after lustration.
# miniond (mars-research/miniond, AGPL-3.0, Rust) does exactly these parts: tmcc state reports,
# autouser (the portal's users, uids and SSH keys), automount (NFS through systemd units) and
# autohost (hostname and /etc/hosts). Built here from a pinned commit with nixpkgs' Rust.
{ config, lib, pkgs, ... }:
let
  cfg = config.edge.cloudlab.testbedAgent;
  # miniond 0.1.0 at its last commit (2022-09-25); the hash is of `git archive` of that commit.
  src = pkgs.fetchFromGitHub {
    owner = "mars-research";
    repo = "miniond";
    rev = "1cf92176880c1913eb1f89dcd514aeabb5d3f2cb";
    hash = "sha256-jb4LLmXQjxrPS0WO16wrE5IpWHAlxgtJNQpAi6Pb0uw=";
  };
  miniond = pkgs.rustPlatform.buildRustPackage {
    pname = "miniond";
    version = "0.1.0-unstable-2022-09-25";
    inherit src;
    cargoLock.lockFile = "${src}/Cargo.lock";
    meta.license = lib.licenses.agpl3Only;
  };
  unitDir = "/run/systemd-miniond/system";
  settings = {
    # The portal's users (with the uids they have on every testbed node) and their keys; the
    # admin group gives them sudo as the Ubuntu image did.
    autouser = { enable = cfg.accounts; admin-group = "wheel"; };
    automount = { enable = cfg.mounts; backend = "systemd"; };
    autohost.enable = true;
    tmcc.report-shutdown = true;
    systemd.unit-dir = unitDir;
  };
  configFile = (pkgs.formats.toml { }).generate "miniond.toml" settings;
in
{
  options.edge.cloudlab.testbedAgent = {
    enable = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Run the testbed agent (miniond): boot state reports to the portal, the portal's accounts and mounts.";
    };
    package = lib.mkOption {
      type = lib.types.package;
      default = miniond;
      defaultText = lib.literalExpression "miniond built from mars-research/miniond 1cf9217";
      description = "The miniond package.";
    };
    accounts = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Create the portal's users and install their SSH keys (miniond autouser).";
    };
    mounts = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Mount the portal's NFS shares (/proj, /share) through systemd units (miniond automount).";
    };
  };

  config = lib.mkIf (config.edge.cloudlab.enable && cfg.enable) {
    systemd.services.edgectl-testbed-agent = {
      description = "Emulab/CloudLab testbed agent (miniond)";
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      wantedBy = [ "multi-user.target" ];
      # useradd/usermod for autouser, systemctl for the mount units it writes.
      path = [ pkgs.shadow config.systemd.package ];
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/miniond -f ${configFile}";
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "on-failure";
        RestartSec = 5;
        TimeoutStopSec = 10;
      };
    };
    # The mount units miniond writes at run time.
    boot.extraSystemdUnitPaths = [ unitDir ];
    boot.supportedFilesystems = [ "nfs" ];
    # autohost adds the experiment's names to /etc/hosts: a copy, not a link into the store.
    environment.etc.hosts.mode = "0644";
    # autouser creates users at run time.
    users.mutableUsers = lib.mkDefault true;
  };
}
