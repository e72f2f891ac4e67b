# NVIDIA driver, CUDA userspace and nixpkgs CUDA settings for headless PCIe GPUs.
{ config, lib, ... }:
let
  cfg = config.edge.gpu;
  edgeLib = import ./lib;
  driver = edgeLib.driverFor { arch = cfg.arch; };
  np = config.boot.kernelPackages.nvidiaPackages;
  # First branch this nixpkgs has: for pre-Turing cards this is
  # `np.legacy_580 or np.production` (legacy_580 appears after 25.11).
  driverPackage = lib.foldr (b: fallback: np.${b} or fallback)
    (throw "edge.gpu: none of the NVIDIA driver branches ${lib.concatStringsSep ", " driver.branches} exist in this nixpkgs")
    driver.branches;
in
{
  options.edge.gpu = {
    enable = lib.mkEnableOption "the NVIDIA driver and CUDA support";
    arch = lib.mkOption {
      type = lib.types.enum edgeLib.gpuArchs;
      description = "GPU architecture; chooses the driver branch and open vs closed kernel modules.";
    };
    count = lib.mkOption {
      type = lib.types.ints.unsigned;
      default = 0;
      description = "GPUs in the node (informational; Ray's --num-gpus comes from edge.ray.numGpus).";
    };
    cudaCapabilities = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "6.0" "6.1" ];
      description = "Cluster-wide CUDA capabilities for nixpkgs.config.cudaCapabilities; empty means those of edge.gpu.arch.";
    };
  };

  config = lib.mkIf cfg.enable {
    # videoDrivers, not datacenter.enable: the datacenter path adds
    # nvidia-fabricmanager, which only applies to NVSwitch systems and fails on PCIe cards.
    services.xserver.videoDrivers = [ "nvidia" ];
    # Creates /run/opengl-driver, where nixpkgs CUDA binaries find libcuda;
    # only X would turn it on otherwise.
    hardware.graphics.enable = true;

    hardware.nvidia = {
      package = driverPackage;
      # Must be explicit from driver 560 on (assertion); open modules need Turing+.
      open = driver.open;
      nvidiaPersistenced = true;
      nvidiaSettings = false;
    };

    # nvidia-smi lives in the driver's bin output.
    environment.systemPackages = [ (lib.getBin config.hardware.nvidia.package) ];

    nixpkgs.config = {
      allowUnfree = true;
      nvidia.acceptLicense = true;
      cudaSupport = true;
      cudaCapabilities = edgeLib.cudaCapabilitiesFor {
        arch = cfg.arch;
        capabilities = cfg.cudaCapabilities;
      };
    };
  };
}
