# TCP tuning by NIC speed. Pure: builtins only.
# Source: ESnet fasterdata "Linux Host Tuning" (10G row) and the perfSONAR
# Toolkit tuning page (40G row), as tabulated in NIXOS-FACTS.md section 2.
let
  common = {
    # BBR paces best over fq; newer kernels pace internally, fq is still advised.
    "net.core.default_qdisc" = "fq";
    "net.ipv4.tcp_congestion_control" = "bbr";
    # 1 = probe only after an ICMP black hole is seen; safe with jumbo frames.
    "net.ipv4.tcp_mtu_probing" = 1;
    "net.core.netdev_max_backlog" = 250000;
  };

  row10 = {
    "net.core.rmem_max" = 134217728;
    "net.core.wmem_max" = 134217728;
    "net.ipv4.tcp_rmem" = "4096 87380 67108864";
    "net.ipv4.tcp_wmem" = "4096 65536 67108864";
  };

  row40 = {
    "net.core.rmem_max" = 268435456;
    "net.core.wmem_max" = 268435456;
    "net.ipv4.tcp_rmem" = "4096 87380 134217728";
    "net.ipv4.tcp_wmem" = "4096 65536 134217728";
  };
in
{
  # tier name, exposed so tests and the README can say which row applies.
  # Speeds strictly between 10 and 40 (25G NICs) take the 40G row: the
  # bandwidth-delay product outgrows the 10G row's 64 MB autotuning cap, and
  # these are maxima, so a larger cap costs memory only when a flow uses it.
  sysctlTierFor = { nicGbps }:
    if !(builtins.isInt nicGbps) || nicGbps < 1
    then throw "edge lib sysctlTierFor: nicGbps must be a positive integer, got ${builtins.toJSON nicGbps}"
    else if nicGbps <= 10 then "10g" else "40g";

  # sysctlFor { nicGbps = 10; } -> attrset for boot.kernel.sysctl (quoted keys).
  sysctlFor = { nicGbps }:
    if !(builtins.isInt nicGbps) || nicGbps < 1
    then throw "edge lib sysctlFor: nicGbps must be a positive integer, got ${builtins.toJSON nicGbps}"
    else common // (if nicGbps <= 10 then row10 else row40);
}
