# BBR + fq and socket buffers sized by NIC speed (values: lib/sysctl.nix).
{ config, lib, ... }:
let
  cfg = config.edge.netTuning;
  edgeLib = import ./lib;
in
{
  options.edge.netTuning = {
    enable = lib.mkEnableOption "TCP tuning for high-bandwidth experiment links";
    nicGbps = lib.mkOption {
      type = lib.types.ints.positive;
      default = 10;
      description = "Speed of the fastest experiment NIC in Gbit/s; <=10 uses the 10G row, above 10 the 40G row.";
    };
  };

  config = lib.mkIf cfg.enable {
    # Loaded up front so systemd-sysctl never applies "bbr" before the module exists.
    boot.kernelModules = [ "tcp_bbr" ];
    boot.kernel.sysctl = edgeLib.sysctlFor { nicGbps = cfg.nicGbps; };
  };
}
