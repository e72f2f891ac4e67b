# NVIDIA driver choice from the GPU architecture. Pure: builtins only.
#
# Returns the nvidiaPackages attribute NAMES to try, in order; the gpu module
# takes the first one its nixpkgs has (`np.legacy_580 or np.production`), so
# the same flake works on 25.11 (no legacy_580 yet, production = 580) and on
# 2026 unstable (production = 595, which ignores pre-Turing GPUs).
# Sources: NIXOS-FACTS.md section 1; nixos-hardware PR #1843 (Pascal -> legacy_580).
let
  archs = [ "kepler" "maxwell" "pascal" "volta" "turing" "ampere" "ada" "hopper" "blackwell" ];

  table = {
    # 580 no longer drives Kepler (470 was Kepler's last branch), so 580 would
    # boot a node whose GPU the driver ignores. 470 is best effort: it may not
    # build against the newest kernels.
    kepler = { branches = [ "legacy_470" ]; open = false; };
    # 590+ dropped Maxwell, Pascal and Volta; 580 is their LTSB (until Aug 2028).
    maxwell = { branches = [ "legacy_580" "production" ]; open = false; };
    pascal = { branches = [ "legacy_580" "production" ]; open = false; };
    volta = { branches = [ "legacy_580" "production" ]; open = false; };
    # Open modules need the GSP (Turing+); NVIDIA requires them on Blackwell.
    turing = { branches = [ "stable" ]; open = true; };
    ampere = { branches = [ "stable" ]; open = true; };
    ada = { branches = [ "stable" ]; open = true; };
    hopper = { branches = [ "stable" ]; open = true; };
    blackwell = { branches = [ "stable" ]; open = true; };
  };

  # nixpkgs' cuda.nix drops pre-Volta capabilities from its default list
  # (6.1 is off the default from CUDA 12.4), so an empty list on a Pascal
  # fleet would silently build kernels the P4 cannot run.
  capabilityTable = {
    kepler = [ "3.5" "3.7" ];
    maxwell = [ "5.0" "5.2" ];
    pascal = [ "6.0" "6.1" ];
    volta = [ "7.0" ];
    turing = [ "7.5" ];
    ampere = [ "8.0" "8.6" ];
    ada = [ "8.9" ];
    hopper = [ "9.0" ];
    blackwell = [ "10.0" "12.0" ];
  };

  checkArch = fn: arch:
    if builtins.isString arch && builtins.hasAttr arch table then arch
    else throw "edge lib ${fn}: unknown GPU architecture ${builtins.toJSON arch}; expected one of: ${builtins.concatStringsSep ", " archs}";
in
{
  gpuArchs = archs;

  # driverFor { arch = "pascal"; } -> { branches = [ "legacy_580" "production" ]; open = false; legacy = true; }
  # An unknown arch throws: guessing a branch would produce a node that boots
  # without a working GPU, which is worse than a failed evaluation.
  driverFor = { arch }:
    let a = checkArch "driverFor" arch; e = table.${a};
    in e // { legacy = !e.open; };

  # cudaCapabilitiesFor { arch; capabilities ? [ ]; } -> the explicit list when
  # non-empty, else the architecture's own capabilities.
  cudaCapabilitiesFor = { arch, capabilities ? [ ] }:
    if capabilities != [ ] then
      (if builtins.all (c: builtins.isString c && builtins.match "[0-9]+\\.[0-9]+" c != null) capabilities
       then capabilities
       else throw "edge lib cudaCapabilitiesFor: capabilities must be strings like \"6.1\", got ${builtins.toJSON capabilities}")
    else capabilityTable.${checkArch "cudaCapabilitiesFor" arch};
}
