# Table tests for modules/lib. Evaluate with
#   nix-instantiate --eval --strict --json checks/lib-tests.nix
# -> { "passed": N, "failures": [ "<case>: <why>" ... ], "total": M }
let
  l = import ../modules/lib;

  force = v: builtins.tryEval (builtins.deepSeq v v);
  show = builtins.toJSON;

  # Equal to the expected value (a throw is a failure, not an abort).
  eq = name: actual: expected:
    let r = force actual; in
    if !r.success then { inherit name; ok = false; why = "threw, expected ${show expected}"; }
    else if r.value == expected then { inherit name; ok = true; }
    else { inherit name; ok = false; why = "expected ${show expected}, got ${show r.value}"; };

  # Must fail evaluation (throw or assert), however deep the bad value is.
  throws = name: actual:
    let r = force actual; in
    if r.success then { inherit name; ok = false; why = "expected a throw, got ${show r.value}"; }
    else { inherit name; ok = true; };

  row10 = {
    "net.core.default_qdisc" = "fq";
    "net.ipv4.tcp_congestion_control" = "bbr";
    "net.ipv4.tcp_mtu_probing" = 1;
    "net.core.netdev_max_backlog" = 250000;
    "net.core.rmem_max" = 134217728;
    "net.core.wmem_max" = 134217728;
    "net.ipv4.tcp_rmem" = "4096 87380 67108864";
    "net.ipv4.tcp_wmem" = "4096 65536 67108864";
  };
  row40 = row10 // {
    "net.core.rmem_max" = 268435456;
    "net.core.wmem_max" = 268435456;
    "net.ipv4.tcp_rmem" = "4096 87380 134217728";
    "net.ipv4.tcp_wmem" = "4096 65536 134217728";
  };

  pinnedArgs = [
    "--node-manager-port=6380"
    "--object-manager-port=6381"
    "--dashboard-agent-grpc-port=6382"
    "--dashboard-agent-listen-port=52365"
    "--runtime-env-agent-port=6383"
    "--metrics-export-port=6384"
    "--min-worker-port=10002"
    "--max-worker-port=19999"
  ];

  if0 = { name = "exp0"; mac = "3c:fd:fe:00:00:01"; address = "10.10.1.1"; prefixLength = 24; };

  cases = [
    # --- driverFor -------------------------------------------------------
    (eq "driver pascal -> legacy_580 or production, closed" (l.driverFor { arch = "pascal"; })
      { branches = [ "legacy_580" "production" ]; open = false; legacy = true; })
    (eq "driver volta closed" (l.driverFor { arch = "volta"; }).open false)
    (eq "driver volta branches" (l.driverFor { arch = "volta"; }).branches [ "legacy_580" "production" ])
    (eq "driver maxwell branches" (l.driverFor { arch = "maxwell"; }).branches [ "legacy_580" "production" ])
    (eq "driver kepler -> legacy_470 (580 ignores Kepler)" (l.driverFor { arch = "kepler"; })
      { branches = [ "legacy_470" ]; open = false; legacy = true; })
    (eq "driver turing open" (l.driverFor { arch = "turing"; })
      { branches = [ "stable" ]; open = true; legacy = false; })
    (eq "driver ampere open" (l.driverFor { arch = "ampere"; }).open true)
    (eq "driver ada open" (l.driverFor { arch = "ada"; }).open true)
    (eq "driver hopper open" (l.driverFor { arch = "hopper"; }).open true)
    (eq "driver blackwell open (required)" (l.driverFor { arch = "blackwell"; }).open true)
    (eq "driver: every arch has an entry" (builtins.length (builtins.map (a: (l.driverFor { arch = a; }).open) l.gpuArchs)) 9)
    (eq "driver: no arch selects a 590+ only branch when pre-Turing"
      (builtins.filter (a: !(l.driverFor { arch = a; }).open && builtins.elem "stable" (l.driverFor { arch = a; }).branches) l.gpuArchs) [ ])
    (throws "driver unknown arch fermi throws" (l.driverFor { arch = "fermi"; }))
    (throws "driver arch is case-sensitive" (l.driverFor { arch = "Pascal"; }))
    (throws "driver null arch throws" (l.driverFor { arch = null; }))

    # --- cudaCapabilitiesFor -------------------------------------------------
    (eq "cuda explicit list wins" (l.cudaCapabilitiesFor { arch = "pascal"; capabilities = [ "6.1" "7.5" ]; }) [ "6.1" "7.5" ])
    (eq "cuda empty -> pascal defaults" (l.cudaCapabilitiesFor { arch = "pascal"; }) [ "6.0" "6.1" ])
    (eq "cuda empty -> hopper" (l.cudaCapabilitiesFor { arch = "hopper"; capabilities = [ ]; }) [ "9.0" ])
    (throws "cuda sm_61 style rejected" (l.cudaCapabilitiesFor { arch = "pascal"; capabilities = [ "sm_61" ]; }))
    (throws "cuda numbers (not strings) rejected" (l.cudaCapabilitiesFor { arch = "pascal"; capabilities = [ 6.1 ]; }))
    (throws "cuda empty with unknown arch throws" (l.cudaCapabilitiesFor { arch = "fermi"; }))

    # --- sysctlFor -----------------------------------------------------------
    (eq "sysctl 10G row" (l.sysctlFor { nicGbps = 10; }) row10)
    (eq "sysctl 1G uses 10G row" (l.sysctlFor { nicGbps = 1; }) row10)
    (eq "sysctl 40G row" (l.sysctlFor { nicGbps = 40; }) row40)
    (eq "sysctl 100G uses 40G row" (l.sysctlFor { nicGbps = 100; }) row40)
    (eq "sysctl 25G (between) uses 40G row" (l.sysctlFor { nicGbps = 25; }) row40)
    (eq "sysctl 11G uses 40G row" (l.sysctlTierFor { nicGbps = 11; }) "40g")
    (eq "sysctl tier 10" (l.sysctlTierFor { nicGbps = 10; }) "10g")
    (eq "sysctl rmem_max is an int (max-merge option)" (builtins.isInt (l.sysctlFor { nicGbps = 10; })."net.core.rmem_max") true)
    (eq "sysctl tcp_rmem is a space-separated string" (builtins.length (builtins.filter builtins.isString (builtins.split " " (l.sysctlFor { nicGbps = 40; })."net.ipv4.tcp_rmem"))) 3)
    (throws "sysctl 0 throws" (l.sysctlFor { nicGbps = 0; }))
    (throws "sysctl negative throws" (l.sysctlFor { nicGbps = -10; }))
    (throws "sysctl string throws" (l.sysctlFor { nicGbps = "10"; }))
    (throws "sysctl float throws" (l.sysctlFor { nicGbps = 2.5; }))

    # --- kvmModuleFor ------------------------------------------------------------
    (eq "kvm intel" (l.kvmModuleFor { cpuVendor = "intel"; }) "kvm-intel")
    (eq "kvm amd" (l.kvmModuleFor { cpuVendor = "amd"; }) "kvm-amd")
    (eq "kvm other -> null" (l.kvmModuleFor { cpuVendor = "other"; }) null)
    (throws "kvm Intel (case) throws" (l.kvmModuleFor { cpuVendor = "Intel"; }))
    (throws "kvm arm throws" (l.kvmModuleFor { cpuVendor = "arm"; }))

    # --- grubDeviceFor -------------------------------------------------------------
    (eq "grub /dev/sda" (l.grubDeviceFor "/dev/sda") "/dev/sda1")
    (eq "grub /dev/sdb" (l.grubDeviceFor "/dev/sdb") "/dev/sdb1")
    (eq "grub /dev/sdaa" (l.grubDeviceFor "/dev/sdaa") "/dev/sdaa1")
    (eq "grub /dev/vda" (l.grubDeviceFor "/dev/vda") "/dev/vda1")
    (eq "grub /dev/nvme0n1" (l.grubDeviceFor "/dev/nvme0n1") "/dev/nvme0n1p1")
    (eq "grub /dev/nvme1n2" (l.grubDeviceFor "/dev/nvme1n2") "/dev/nvme1n2p1")
    (eq "grub /dev/mmcblk0" (l.grubDeviceFor "/dev/mmcblk0") "/dev/mmcblk0p1")
    (eq "grub by-id" (l.grubDeviceFor "/dev/disk/by-id/ata-INTEL_SSDSC2BB480G4_X") "/dev/disk/by-id/ata-INTEL_SSDSC2BB480G4_X-part1")
    (eq "grub by-path" (l.grubDeviceFor "/dev/disk/by-path/pci-0000:00:1f.2-ata-1") "/dev/disk/by-path/pci-0000:00:1f.2-ata-1-part1")
    (throws "grub partition sda1 throws" (l.grubDeviceFor "/dev/sda1"))
    (throws "grub partition nvme0n1p1 throws" (l.grubDeviceFor "/dev/nvme0n1p1"))
    (throws "grub by-id partition throws" (l.grubDeviceFor "/dev/disk/by-id/X-part1"))
    (throws "grub by-uuid (a filesystem) throws" (l.grubDeviceFor "/dev/disk/by-uuid/1234"))
    (throws "grub by-label throws" (l.grubDeviceFor "/dev/disk/by-label/nixos"))
    (throws "grub bare name throws" (l.grubDeviceFor "sda"))
    (throws "grub non-string throws" (l.grubDeviceFor 1))

    # --- zenohConfigFor / zenohPortsFor --------------------------------------------------
    (eq "zenoh router config" (l.zenohConfigFor { router = true; listen = [ "tcp/0.0.0.0:7447" ]; connect = [ "tcp/10.10.1.3:7447" ]; })
      { mode = "router"; listen.endpoints = [ "tcp/0.0.0.0:7447" ]; connect.endpoints = [ "tcp/10.10.1.3:7447" ]; scouting.multicast.enabled = false; })
    (eq "zenoh peer with defaults" (l.zenohConfigFor { })
      { mode = "peer"; listen.endpoints = [ "tcp/0.0.0.0:7447" ]; connect.endpoints = [ ]; scouting.multicast.enabled = false; })
    (eq "zenoh IPv6 endpoint accepted" (l.zenohConfigFor { listen = [ "tcp/[::]:7447" ]; }).listen.endpoints [ "tcp/[::]:7447" ])
    (eq "zenoh endpoint with #config suffix accepted" (l.zenohConfigFor { connect = [ "tcp/10.0.0.1:7447#iface=exp0" ]; }).connect.endpoints [ "tcp/10.0.0.1:7447#iface=exp0" ])
    (throws "zenoh endpoint without port throws" (l.zenohConfigFor { connect = [ "tcp/10.10.1.1" ]; }))
    (throws "zenoh endpoint without proto throws" (l.zenohConfigFor { connect = [ "10.10.1.1:7447" ]; }))
    (throws "zenoh unknown proto throws" (l.zenohConfigFor { listen = [ "sctp/0.0.0.0:7447" ]; }))
    (throws "zenoh port out of range throws" (l.zenohConfigFor { listen = [ "tcp/0.0.0.0:70000" ]; }))
    (throws "zenoh router must be bool" (l.zenohConfigFor { router = "yes"; }))
    (eq "zenoh ports default" (l.zenohPortsFor { }) { tcp = [ 7447 ]; udp = [ 7447 ]; })
    (eq "zenoh ports per transport" (l.zenohPortsFor { listen = [ "tcp/0.0.0.0:7450" "udp/0.0.0.0:7448" "quic/0.0.0.0:7449" "tls/0.0.0.0:7451" ]; })
      { tcp = [ 7447 7450 7451 ]; udp = [ 7447 7448 7449 ]; })
    (eq "zenoh ports deduplicated" (l.zenohPortsFor { listen = [ "tcp/0.0.0.0:7447" "tcp/10.0.0.1:7447" ]; }).tcp [ 7447 ])

    # --- rayArgsFor / rayFirewallFor ------------------------------------------------------
    (eq "ray head args" (l.rayArgsFor { role = "head"; headAddress = "10.10.1.1"; numGpus = 1; })
      ([ "start" "--head" "--port=6379" "--node-ip-address=10.10.1.1" "--dashboard-host=0.0.0.0"
         "--dashboard-port=8265" "--ray-client-server-port=10001" ]
       ++ pinnedArgs ++ [ "--num-gpus=1" "--disable-usage-stats" "--block" ]))
    (eq "ray worker args" (l.rayArgsFor { role = "worker"; headAddress = "10.10.1.1"; numGpus = 2; numCpus = 16; })
      ([ "start" "--address=10.10.1.1:6379" ] ++ pinnedArgs
       ++ [ "--num-gpus=2" "--num-cpus=16" "--disable-usage-stats" "--block" ]))
    (eq "ray worker custom port" (builtins.elemAt (l.rayArgsFor { role = "worker"; headAddress = "10.0.0.9"; port = 7000; }) 1) "--address=10.0.0.9:7000")
    (eq "ray head without address omits --node-ip-address"
      (builtins.filter (a: builtins.match "--node-ip-address.*" a != null) (l.rayArgsFor { role = "head"; })) [ ])
    (eq "ray always passes --num-gpus (0 included)" (builtins.elem "--num-gpus=0" (l.rayArgsFor { role = "head"; })) true)
    (eq "ray ends with --block" (let a = l.rayArgsFor { role = "head"; }; in builtins.elemAt a (builtins.length a - 1)) "--block")
    (throws "ray worker without headAddress throws" (l.rayArgsFor { role = "worker"; }))
    (eq "ray address for logins" (l.rayAddressFor { headAddress = "10.10.1.1"; }) "10.10.1.1:6379")
    (eq "ray address with a custom port" (l.rayAddressFor { headAddress = "10.0.0.9"; port = 7000; }) "10.0.0.9:7000")
    (eq "no ray address without a head" (l.rayAddressFor { }) null)
    (throws "ray null role has no args" (l.rayArgsFor { role = null; }))
    (throws "ray bad role throws" (l.rayArgsFor { role = "driver"; headAddress = "10.0.0.1"; }))
    (throws "ray hostname as headAddress throws" (l.rayArgsFor { role = "worker"; headAddress = "node-a.lab"; }))
    (throws "ray octet > 255 throws" (l.rayArgsFor { role = "worker"; headAddress = "10.0.0.256"; }))
    (throws "ray port clashing with pinned node-manager throws" (l.rayArgsFor { role = "head"; port = 6380; }))
    (throws "ray port inside worker range throws" (l.rayArgsFor { role = "head"; port = 12000; }))
    (throws "ray numCpus 0 throws" (l.rayArgsFor { role = "head"; numCpus = 0; }))
    (eq "ray firewall head" (l.rayFirewallFor { role = "head"; })
      { tcp = [ 6379 6380 6381 6382 6383 6384 8265 10001 52365 ]; tcpRanges = [ { from = 10002; to = 19999; } ]; })
    (eq "ray firewall worker (no GCS/dashboard)" (l.rayFirewallFor { role = "worker"; })
      { tcp = [ 6380 6381 6382 6383 6384 52365 ]; tcpRanges = [ { from = 10002; to = 19999; } ]; })
    (eq "ray firewall head custom port" (builtins.elem 7000 (l.rayFirewallFor { role = "head"; port = 7000; }).tcp) true)
    (eq "ray firewall null role opens nothing" (l.rayFirewallFor { role = null; }) { tcp = [ ]; tcpRanges = [ ]; })
    (eq "ray firewall covers every pinned port the args use"
      (let fw = l.rayFirewallFor { role = "head"; }; p = l.rayPorts; in
        builtins.all (x: builtins.elem x fw.tcp) [ p.nodeManager p.objectManager p.dashboardAgentGrpc p.dashboardAgentListen p.runtimeEnvAgent p.metricsExport p.dashboard p.clientServer ]) true)

    # --- interfacesPlanFor ------------------------------------------------------------------
    (eq "ifaces empty" (l.interfacesPlanFor [ ]) { links = { }; addresses = { }; vlans = { }; trunks = [ ]; })
    (eq "ifaces one untagged" (l.interfacesPlanFor [ if0 ])
      { links.exp0 = "3c:fd:fe:00:00:01"; addresses.exp0 = { address = "10.10.1.1"; prefixLength = 24; }; vlans = { }; trunks = [ ]; })
    (eq "ifaces MAC upper case normalised" (l.interfacesPlanFor [ (if0 // { mac = "3C:FD:FE:00:00:0A"; }) ]).links.exp0 "3c:fd:fe:00:00:0a")
    (eq "ifaces bare 12-hex MAC (manifest style)" (l.interfacesPlanFor [ (if0 // { mac = "3CFDFE00000A"; }) ]).links.exp0 "3c:fd:fe:00:00:0a")
    (eq "ifaces dashed MAC" (l.interfacesPlanFor [ (if0 // { mac = "3c-fd-fe-00-00-0a"; }) ]).links.exp0 "3c:fd:fe:00:00:0a")
    (eq "ifaces tagged only: MAC-named trunk parent"
      (l.interfacesPlanFor [ (if0 // { name = "lan1"; vlan = 257; }) ])
      { links.et3cfdfe000001 = "3c:fd:fe:00:00:01";
        addresses.lan1 = { address = "10.10.1.1"; prefixLength = 24; };
        vlans.lan1 = { id = 257; interface = "et3cfdfe000001"; };
        trunks = [ "et3cfdfe000001" ]; })
    (eq "ifaces two VLANs on one NIC share one trunk"
      (let p = l.interfacesPlanFor [ (if0 // { name = "lan1"; vlan = 257; }) (if0 // { name = "lan2"; vlan = 258; address = "10.10.2.1"; }) ];
       in { inherit (p) trunks; n = builtins.attrNames p.links; }) { trunks = [ "et3cfdfe000001" ]; n = [ "et3cfdfe000001" ]; })
    (eq "ifaces VLAN on an untagged NIC uses that name as parent"
      (l.interfacesPlanFor [ if0 (if0 // { name = "lan1"; vlan = 300; address = "10.10.3.1"; }) ]).vlans
      { lan1 = { id = 300; interface = "exp0"; }; })
    (eq "ifaces VLAN on an untagged NIC adds no trunk"
      (l.interfacesPlanFor [ if0 (if0 // { name = "lan1"; vlan = 300; address = "10.10.3.1"; }) ]).trunks [ ])
    (throws "ifaces same MAC untagged twice throws" (l.interfacesPlanFor [ if0 (if0 // { name = "exp1"; address = "10.10.1.2"; }) ]))
    (throws "ifaces same MAC+VLAN twice throws" (l.interfacesPlanFor [ (if0 // { name = "a"; vlan = 5; }) (if0 // { name = "b"; vlan = 5; }) ]))
    (throws "ifaces duplicate name throws" (l.interfacesPlanFor [ if0 (if0 // { mac = "3c:fd:fe:00:00:02"; }) ]))
    (throws "ifaces name over 15 chars throws" (l.interfacesPlanFor [ (if0 // { name = "experiment-lan-01"; }) ]))
    (throws "ifaces kernel name eth1 throws" (l.interfacesPlanFor [ (if0 // { name = "eth1"; }) ]))
    (throws "ifaces dotted name throws" (l.interfacesPlanFor [ (if0 // { name = "exp0.100"; }) ]))
    (throws "ifaces CIDR in address throws" (l.interfacesPlanFor [ (if0 // { address = "10.10.1.1/24"; }) ]))
    (throws "ifaces prefixLength 33 throws" (l.interfacesPlanFor [ (if0 // { prefixLength = 33; }) ]))
    (throws "ifaces vlan 4095 throws" (l.interfacesPlanFor [ (if0 // { vlan = 4095; }) ]))
    (throws "ifaces bad MAC throws" (l.interfacesPlanFor [ (if0 // { mac = "3c:fd:fe:00:00"; }) ]))
    (throws "normalizeMac rejects non-hex" (l.normalizeMac "zz:fd:fe:00:00:01"))

    # --- stateDirectoryFor / agentArgsFor ------------------------------------------------------
    (eq "state dir default" (l.stateDirectoryFor "/var/lib/edgectl-agent") "edgectl-agent")
    (eq "state dir nested" (l.stateDirectoryFor "/var/lib/edgectl/agent") "edgectl/agent")
    (eq "state dir trailing slash" (l.stateDirectoryFor "/var/lib/edgectl-agent/") "edgectl-agent")
    (eq "state dir outside /var/lib -> null (tmpfiles only)" (l.stateDirectoryFor "/srv/edgectl-agent") null)
    (throws "state dir relative throws" (l.stateDirectoryFor "var/lib/edgectl-agent"))
    (throws "state dir with .. throws" (l.stateDirectoryFor "/var/lib/../etc"))
    (throws "state dir /var/lib itself throws" (l.stateDirectoryFor "/var/lib"))
    (throws "state dir / throws" (l.stateDirectoryFor "/"))
    (throws "state dir /srv throws" (l.stateDirectoryFor "/srv/"))
    (eq "agent args" (l.agentArgsFor { }) [ "--listen" "0.0.0.0:7443" "--state-dir" "/var/lib/edgectl-agent" ])
    (eq "agent args custom" (l.agentArgsFor { port = 9000; stateDir = "/srv/a"; }) [ "--listen" "0.0.0.0:9000" "--state-dir" "/srv/a" ])
    (throws "agent port 0 throws" (l.agentArgsFor { port = 0; }))

    # --- firewallFor / firewallParts / nixosFirewallFor -----------------------------------------
    (eq "firewall of a bare node: sshd only" (l.firewallFor { })
      { tcp = [ 22 ]; udp = [ ]; tcpRanges = [ ]; interfaces = { }; })
    (eq "firewall: disabled modules open nothing, whatever else they set"
      (l.firewallFor { agent.enable = false; zenoh = { enable = false; interfaces = [ "lan0" ]; }; ray = { enable = false; role = "head"; interfaces = [ "lan0" ]; }; })
      (l.firewallFor { }))
    (eq "firewall: agent on every interface (QUIC UDP, probe TCP)" (l.firewallFor { agent.enable = true; })
      { tcp = [ 22 7448 ]; udp = [ 7443 ]; tcpRanges = [ ]; interfaces = { }; })
    (eq "firewall: agent port option" (l.firewallFor { agent = { enable = true; port = 9443; }; }).udp [ 9443 ])
    (eq "firewall: zenoh on its interfaces only" (l.firewallFor { zenoh = { enable = true; router = true; interfaces = [ "lan0" ]; }; })
      { tcp = [ 22 ]; udp = [ ]; tcpRanges = [ ]; interfaces.lan0 = { tcp = [ 7447 ]; udp = [ 7447 ]; tcpRanges = [ ]; }; })
    (eq "firewall: zenoh listen ports per transport"
      (l.firewallFor { zenoh = { enable = true; listen = [ "quic/0.0.0.0:7450" ]; interfaces = [ "lan0" ]; }; }).interfaces.lan0
      { tcp = [ 7447 ]; udp = [ 7447 7450 ]; tcpRanges = [ ]; })
    (eq "firewall: zenoh without interfaces opens nothing" (l.firewallFor { zenoh.enable = true; }) (l.firewallFor { }))
    (eq "firewall: ray worker on its interfaces"
      (l.firewallFor { ray = { enable = true; role = "worker"; interfaces = [ "lan0" ]; }; }).interfaces
      { lan0 = { tcp = [ 6380 6381 6382 6383 6384 52365 ]; udp = [ ]; tcpRanges = [ { from = 10002; to = 19999; } ]; }; })
    (eq "firewall: ray without a role opens nothing" (l.firewallFor { ray = { enable = true; interfaces = [ "lan0" ]; }; }).interfaces { })
    (eq "firewall: ray head custom GCS port" (builtins.elem 7000 (l.firewallFor { ray = { enable = true; role = "head"; port = 7000; interfaces = [ "lan0" ]; }; }).interfaces.lan0.tcp) true)
    (throws "firewall: bad ray role throws" (l.firewallFor { ray = { enable = true; role = "driver"; interfaces = [ "lan0" ]; }; }))
    (throws "firewall: bad zenoh endpoint throws" (l.firewallFor { zenoh = { enable = true; listen = [ "sctp/0.0.0.0:1" ]; interfaces = [ "lan0" ]; }; }))
    (throws "firewall: not an attribute set throws" (l.firewallFor null))
    (eq "firewall: zenoh and ray on one interface merge (sorted, deduplicated)"
      (l.firewallFor { zenoh = { enable = true; interfaces = [ "lan0" ]; }; ray = { enable = true; role = "head"; interfaces = [ "lan0" "lan1" ]; }; }).interfaces
      { lan0 = { tcp = [ 6379 6380 6381 6382 6383 6384 7447 8265 10001 52365 ]; udp = [ 7447 ]; tcpRanges = [ { from = 10002; to = 19999; } ]; };
        lan1 = { tcp = [ 6379 6380 6381 6382 6383 6384 8265 10001 52365 ]; udp = [ ]; tcpRanges = [ { from = 10002; to = 19999; } ]; }; })
    (eq "firewall of the example's head (hosts/head.nix)" (l.firewallFor (import ../hosts/head.nix { }).edge)
      { tcp = [ 22 7448 ]; udp = [ 7443 ]; tcpRanges = [ ];
        interfaces.lan0 = { tcp = [ 6379 6380 6381 6382 6383 6384 7447 8265 10001 52365 ]; udp = [ 7447 ]; tcpRanges = [ { from = 10002; to = 19999; } ]; }; })
    (eq "firewall of the example's worker1 (hosts/worker1.nix)" (l.firewallFor (import ../hosts/worker1.nix { }).edge).interfaces.lan0.tcp
      [ 6380 6381 6382 6383 6384 7447 52365 ])
    (eq "firewall uses the port table" (let p = l.ports; fw = l.firewallFor { agent.enable = true; }; in fw.tcp == [ p.ssh p.zenohProbe ] && fw.udp == [ p.agent ]) true)
    (eq "firewall: the agent part is agentFirewallFor on every interface"
      (let a = l.agentFirewallFor { }; in l.firewallParts.agent { enable = true; } == { inherit (a) tcp udp; tcpRanges = [ ]; interfaces = { }; }) true)
    (eq "firewall: firewallFor merges the parts"
      (let e = { agent.enable = true; zenoh = { enable = true; interfaces = [ "lan0" ]; }; ray = { enable = true; role = "worker"; interfaces = [ "lan0" ]; }; };
       in l.firewallFor e == l.mergeFirewalls [ (l.firewallParts.ssh { }) (l.firewallParts.agent e.agent) (l.firewallParts.zenoh e.zenoh) (l.firewallParts.ray e.ray) ]) true)
    (eq "firewall: merge drops interfaces that open nothing, sorts ranges"
      (l.mergeFirewalls [ { interfaces.a = { }; interfaces.b.tcpRanges = [ { from = 9; to = 10; } ]; } { interfaces.b.tcpRanges = [ { from = 1; to = 2; } { from = 9; to = 10; } ]; } ])
      { tcp = [ ]; udp = [ ]; tcpRanges = [ ]; interfaces.b = { tcp = [ ]; udp = [ ]; tcpRanges = [ { from = 1; to = 2; } { from = 9; to = 10; } ]; }; })
    (eq "nixosFirewallFor: NixOS option names"
      (l.nixosFirewallFor (l.firewallFor { agent.enable = true; zenoh = { enable = true; interfaces = [ "lan0" ]; }; }))
      { allowedTCPPorts = [ 22 7448 ]; allowedUDPPorts = [ 7443 ]; allowedTCPPortRanges = [ ];
        interfaces.lan0 = { allowedTCPPorts = [ 7447 ]; allowedUDPPorts = [ 7447 ]; allowedTCPPortRanges = [ ]; }; })
    (eq "zenoh module default listen is the table's zenoh port" l.defaultZenohListen [ "tcp/0.0.0.0:7447" ])
  ];

  failed = builtins.filter (c: !c.ok) cases;
in
{
  passed = builtins.length cases - builtins.length failed;
  total = builtins.length cases;
  failures = builtins.map (c: "${c.name}: ${c.why}") failed;
}
