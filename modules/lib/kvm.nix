# KVM kernel module by CPU vendor. Pure: builtins only.
{
  # kvmModuleFor { cpuVendor = "intel"; } -> "kvm-intel"; "amd" -> "kvm-amd";
  # "other" -> null (no module: qemu falls back to TCG, slow but working).
  # Any other string throws, so a typo in the renderer cannot silently
  # disable hardware virtualisation.
  kvmModuleFor = { cpuVendor }:
    if cpuVendor == "intel" then "kvm-intel"
    else if cpuVendor == "amd" then "kvm-amd"
    else if cpuVendor == "other" then null
    else throw "edge lib kvmModuleFor: unknown cpuVendor ${builtins.toJSON cpuVendor}; expected \"intel\", \"amd\" or \"other\"";
}
