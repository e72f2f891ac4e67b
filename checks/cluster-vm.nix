# A NixOS VM test (QEMU, needs KVM): a controller VM runs edgectl against two node VMs shaped
# like examples/edge-lab.toml (a Ray head that is also the Zenoh router, and a Ray worker), from
# the topology ./cluster-vm/cluster.toml. `nix build .#checks.x86_64-linux.cluster-vm`.
#
# The nodes boot with self.nixosModules.default and their generated host files
# (./cluster-vm/hosts, kept current by cli/render/tests/cluster_vm.rs). The controller runs
# `edgectl check`, `apply`, `plan` and `verify --json`; the script then asserts that apply
# switched each node to the system it recorded, that plan has nothing left to do, that the
# agents answer over QUIC, that Ray counts both nodes, that zenohd listens, that the tuned
# sysctls are in force, and that a port nothing opened is closed to the controller.
#
# How apply builds without a network. `edgectl apply` renders the flake (.edgectl/flake) and
# builds nixosConfigurations.<node>.config.system.build.toplevel with `nix build`; edgectl has
# no flag that takes a prebuilt system, only `--override-input INPUT REF`. So:
# - the generated flake's `nixpkgs` input is overridden with a stand-in (standInNixpkgs below):
#   the test's own nixpkgs (a `path:` input, so no fetch) whose lib.nixosSystem is
#   ./cluster-vm/nixos-system.nix, which adds ./cluster-vm/deployed.nix (qemu-vm and test
#   instrumentation, so the driver keeps the node after the switch, no boot loader, a marker);
# - its `edgectl` input is the `path:` of this flake's source, which the edgectl binary names
#   (EDGECTL_FLAKE_REF in flake.nix) and whose closure carries, and `follows` the stand-in;
# - `deployed` below evaluates the same function with the same modules, in the same order
#   (modules/, the agent package, the host file), on the host, and the controller VM gets those
#   systems in its store (virtualisation.additionalPaths). Evaluated again in the VM, the
#   generated flake arrives at the same store paths, finds them valid and builds nothing.
# This needs the host's Nix and the VM's to copy this flake's source (`src = ./.` of the edgectl
# package) to the same store path; if they do not, apply fails with a build it cannot do
# offline, which its error shows. Not run in this repository (no KVM, no nixpkgs): it parses.
{
  self,
  nixpkgs,
  pkgs,
}: let
  inherit (pkgs) lib;
  system = "x86_64-linux";

  topologyFile = ./cluster-vm/cluster.toml;
  topology = builtins.fromTOML (builtins.readFile topologyFile);
  nodeNames = map (n: n.name) topology.node;
  nodeOf = name: lib.findFirst (n: n.name == name) (throw "cluster-vm: no node ${name} in cluster.toml") topology.node;
  ipOf = name: builtins.head (lib.splitString "/" (nodeOf name).lan.address);
  hostFile = name: ./cluster-vm/hosts + "/${name}.nix";

  edgectl = self.packages.${system}.edgectl;
  keys = import "${nixpkgs}/nixos/tests/ssh-keys.nix" pkgs;

  # The systems apply will build: what the generated flake's nixosConfigurations.<node>
  # evaluates to with the stand-in nixpkgs (see above and ./cluster-vm/nixos-system.nix).
  nixosSystem = import ./cluster-vm/nixos-system.nix {inherit nixpkgs;};
  deployed = lib.genAttrs nodeNames (name:
    (nixosSystem {
      inherit system;
      modules = [
        self.nixosModules.default
        {edge.agent.package = edgectl;}
        (hostFile name)
      ];
    })
    .config
    .system
    .build
    .toplevel);

  # `--override-input nixpkgs path:<this>` for apply and plan: a flake whose inputs are all
  # `path:`s in the controller's store.
  standInFlake = pkgs.writeText "flake.nix" ''
    # nixpkgs for edgectl's cluster-vm test: the real one (the test's), except lib.nixosSystem,
    # which also adds ./deployed.nix (see checks/cluster-vm.nix in the edgectl repository).
    {
      inputs.nixpkgs.url = "path:${nixpkgs}";
      outputs = {nixpkgs, ...}: {
        inherit (nixpkgs) legacyPackages;
        lib = nixpkgs.lib // {nixosSystem = import ./nixos-system.nix {inherit nixpkgs;};};
      };
    }
  '';
  standInNixpkgs = pkgs.runCommand "edgectl-cluster-vm-nixpkgs" {} ''
    mkdir $out
    cp ${standInFlake} $out/flake.nix
    cp ${./cluster-vm/nixos-system.nix} $out/nixos-system.nix
    cp ${./cluster-vm/deployed.nix} $out/deployed.nix
  '';

  clusterVm = {
    inherit edgectl deployed standInNixpkgs;
    source = "${self}";
    lanOf = name: (nodeOf name).lan;
  };

  headName = lib.head (builtins.filter (n: builtins.elem "ray-head" ((nodeOf n).roles or [])) nodeNames);
  routerName = lib.head (builtins.filter (n: builtins.elem "zenoh-router" ((nodeOf n).roles or [])) nodeNames);
  key = "/root/.ssh/id_ecdsa";
  # plan and apply evaluate the generated flake; verify does not.
  deployArgs = "--identity ${key} --override-input nixpkgs path:${standInNixpkgs}";
  nc = "${pkgs.netcat}/bin/nc";
  # A TCP port that nothing in the topology opens.
  closedPort = 9999;
in
  assert lib.assertMsg (topology.cluster.ssh_keys == [keys.snakeOilPublicKey])
  "checks/cluster-vm/cluster.toml: ssh_keys must be exactly nixpkgs' test key (nixos/tests/ssh-keys.nix snakeOilPublicKey), whose private half the controller uses";
  assert lib.assertMsg (nodeNames == ["head" "worker1"])
  "checks/cluster-vm/cluster.toml: the test script knows the nodes as head and worker1";
    pkgs.testers.runNixOSTest {
      name = "edgectl-cluster-vm";

      node.specialArgs = {inherit clusterVm;};

      nodes =
        {controller = ./cluster-vm/controller.nix;}
        // lib.genAttrs nodeNames (name: {
          imports = [self.nixosModules.default (hostFile name) ./cluster-vm/node.nix];
        });

      testScript = ''
        import json

        cluster_nodes = {"head": head, "worker1": worker1}
        ips = {"head": "${ipOf "head"}", "worker1": "${ipOf "worker1"}"}
        deployed = {"head": "${deployed.head}", "worker1": "${deployed.worker1}"}
        head_ip = ips["${headName}"]
        router_ip = ips["${routerName}"]


        def current_system(m):
            return m.succeed("readlink -f /run/current-system").strip()


        def edgectl(command):
            return f"cd /root/cluster && edgectl {command} cluster.toml"


        start_all()

        with subtest("the nodes boot with the example's modules"):
            for m in cluster_nodes.values():
                m.wait_for_unit("multi-user.target")
                m.wait_for_unit("sshd.service")
                m.fail("test -e /etc/edgectl-cluster-vm")
            booted = {name: current_system(m) for name, m in cluster_nodes.items()}
            for name in cluster_nodes:
                assert booted[name] != deployed[name], f"{name} already runs {deployed[name]}"

        with subtest("the controller has the key and accepts the topology"):
            controller.wait_for_unit("multi-user.target")
            controller.succeed("install -D -m 600 ${keys.snakeOilPrivateKey} ${key}")
            controller.succeed("install -D -m 644 ${topologyFile} /root/cluster/cluster.toml")
            controller.succeed(edgectl("check") + " >&2")
            for ip in ips.values():
                controller.wait_until_succeeds(f"nc -z -w 2 {ip} 22")

        with subtest("apply builds nothing, copies and activates both nodes"):
            controller.succeed(edgectl("apply") + " ${deployArgs} >&2")
            state = json.loads(controller.succeed("cat /root/cluster/.edgectl/state.json"))
            for name, m in cluster_nodes.items():
                now = current_system(m)
                recorded = state["nodes"][name]["system"]
                assert now == recorded, f"{name} runs {now}, apply recorded {recorded}"
                assert now == deployed[name], f"{name} runs {now}, expected {deployed[name]}"
                assert now != booted[name], f"{name} still runs the system it booted"
                m.succeed("test -e /etc/edgectl-cluster-vm")
            # Exit 0: nothing left to change.
            controller.succeed(edgectl("plan") + " ${deployArgs} >&2")

        with subtest("the tuned sysctls are in force"):
            for name, m in cluster_nodes.items():
                cc = m.succeed("sysctl -n net.ipv4.tcp_congestion_control").strip()
                qdisc = m.succeed("sysctl -n net.core.default_qdisc").strip()
                assert (cc, qdisc) == ("bbr", "fq"), f"{name}: {cc}, {qdisc}"

        with subtest("zenohd listens on the router"):
            ${routerName}.wait_for_unit("zenohd.service")
            ${routerName}.wait_until_succeeds("ss -ltnH | grep -q ':7447 '")
            controller.succeed(f"nc -z -w 5 {router_ip} 7447")

        with subtest("Ray counts both nodes"):
            ${headName}.wait_until_succeeds(
                f"ray status --address {head_ip}:6379 | grep -c ' node_' | grep -qx {len(cluster_nodes)}",
                timeout=600,
            )

        with subtest("verify reaches both agents over QUIC and passes the configuration checks"):
            # Exit 4 when a check failed: the hardware checks compare a VM with a CloudLab
            # profile and are not asserted here.
            rc, out = controller.execute(edgectl("verify") + " --identity ${key} --json")
            assert rc in (0, 4), f"verify exited {rc}"
            report = json.loads(out)
            agents = {n["name"]: n["agent"] for n in report["nodes"]}
            assert agents == {name: "service" for name in cluster_nodes}, f"agents: {agents}"
            failed = [
                c for c in report["checks"]
                if c["category"] in ("agent", "config", "ray") and c["verdict"] != "pass"
            ]
            assert not failed, f"failed checks: {failed}"
            passed = {(c["node"], c["name"]) for c in report["checks"] if c["verdict"] == "pass"}
            wanted = {("${headName}", "ray nodes alive"), ("${routerName}", "service zenohd")}
            for name in cluster_nodes:
                wanted.add((name, "sysctl net.ipv4.tcp_congestion_control"))
                wanted.add((name, "sysctl net.core.default_qdisc"))
                wanted.add((name, "service edgectl-agent"))
            assert wanted <= passed, f"not passed: {wanted - passed}"

        with subtest("a port nothing opened is closed to the controller"):
            ${headName}.succeed("systemd-run --unit=closed-port ${nc} -4 -lk ${toString closedPort}")
            ${headName}.wait_until_succeeds("ss -ltnH | grep -q ':${toString closedPort} '")
            # It listens and answers locally...
            ${headName}.succeed("${nc} -z -w 2 127.0.0.1 ${toString closedPort}")
            # ...but not through the firewall, while the ports the modules open are reachable.
            controller.fail(f"nc -z -w 5 {head_ip} ${toString closedPort}")
            controller.succeed(f"nc -z -w 5 {head_ip} 22")
            controller.succeed(f"nc -z -w 5 {head_ip} 6379")
      '';
    }
