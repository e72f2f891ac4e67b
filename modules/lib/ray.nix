# `ray start` arguments and firewall ports. Pure: builtins only.
# Ray has no NixOS module (NIXOS-FACTS.md section 3). Every port Ray would
# otherwise pick at random is pinned so the firewall can be static.
let
  pinned = {
    nodeManager = 6380;
    objectManager = 6381;
    dashboardAgentGrpc = 6382;
    runtimeEnvAgent = 6383;
    metricsExport = 6384;
    dashboardAgentListen = 52365; # Ray's default
    dashboard = 8265; # Ray's default
    clientServer = 10001; # Ray's default
    minWorker = 10002; # Ray's default range
    maxWorker = 19999;
  };

  isIPv4 = s: builtins.isString s
    && (let m = builtins.match "([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})" s;
        in m != null && builtins.all (o: builtins.fromJSON o <= 255) m);

  validate = { role, headAddress, port, numGpus, numCpus }:
    let
      fail = why: throw "edge lib rayArgsFor: ${why}";
      clashes = builtins.filter (n: pinned.${n} == port) (builtins.attrNames pinned);
    in
    if role != "head" && role != "worker" then fail "role must be \"head\" or \"worker\", got ${builtins.toJSON role}"
    else if !(builtins.isInt port) || port < 1 || port > 65535 then fail "port must be 1..65535, got ${builtins.toJSON port}"
    else if port >= pinned.minWorker && port <= pinned.maxWorker then fail "port ${toString port} is inside the worker port range ${toString pinned.minWorker}-${toString pinned.maxWorker}"
    else if clashes != [ ] then fail "port ${toString port} clashes with the pinned ${builtins.head clashes} port"
    else if role == "worker" && headAddress == "" then fail "a worker needs headAddress (the head's experiment-LAN IPv4)"
    else if headAddress != "" && !(isIPv4 headAddress) then fail "headAddress must be an IPv4 address, got ${builtins.toJSON headAddress}"
    else if !(builtins.isInt numGpus) || numGpus < 0 then fail "numGpus must be an integer >= 0"
    else if numCpus != null && (!(builtins.isInt numCpus) || numCpus < 1) then fail "numCpus must be null or a positive integer"
    else true;

  common = p: [
    "--node-manager-port=${toString p.nodeManager}"
    "--object-manager-port=${toString p.objectManager}"
    "--dashboard-agent-grpc-port=${toString p.dashboardAgentGrpc}"
    "--dashboard-agent-listen-port=${toString p.dashboardAgentListen}"
    "--runtime-env-agent-port=${toString p.runtimeEnvAgent}"
    "--metrics-export-port=${toString p.metricsExport}"
    "--min-worker-port=${toString p.minWorker}"
    "--max-worker-port=${toString p.maxWorker}"
  ];
in
{
  rayPorts = pinned;

  # rayArgsFor { role = "head"|"worker"; headAddress; port ? 6379; numGpus ? 0; numCpus ? null; }
  #   -> [ "start" "--head" ... "--block" ]  (arguments after the `ray` executable)
  # On the head, headAddress (when set) becomes --node-ip-address: without it
  # Ray advertises the address of the default route, i.e. the control network,
  # where the firewall is closed. Workers pick the address that routes to
  # the head, which is their experiment-LAN address.
  # --num-gpus is always explicit: NVML detection needs /run/opengl-driver on
  # the library path, which a systemd unit does not have by default.
  rayArgsFor = { role, headAddress ? "", port ? 6379, numGpus ? 0, numCpus ? null }:
    assert validate { inherit role headAddress port numGpus numCpus; };
    [ "start" ]
    ++ (if role == "head" then
      [ "--head" "--port=${toString port}" ]
      ++ (if headAddress != "" then [ "--node-ip-address=${headAddress}" ] else [ ])
      ++ [
        "--dashboard-host=0.0.0.0"
        "--dashboard-port=${toString pinned.dashboard}"
        "--ray-client-server-port=${toString pinned.clientServer}"
      ]
    else
      [ "--address=${headAddress}:${toString port}" ])
    ++ common pinned
    ++ [ "--num-gpus=${toString numGpus}" ]
    ++ (if numCpus != null then [ "--num-cpus=${toString numCpus}" ] else [ ])
    ++ [ "--disable-usage-stats" "--block" ];

  # rayAddressFor { headAddress; port ? 6379; } -> "IP:PORT", or null without a head address.
  # What every login gets as RAY_ADDRESS: `ray status` and `ray.init(address="auto")` look
  # there before the session file under /tmp/ray, which the units' private /tmp hides.
  rayAddressFor = { headAddress ? "", port ? 6379 }:
    if headAddress == "" then null else "${headAddress}:${toString port}";

  # rayFirewallFor { role; port ? 6379; } -> { tcp = [ ports ]; tcpRanges = [ { from; to; } ]; }
  # role null (Ray installed, no unit) opens nothing.
  rayFirewallFor = { role, port ? 6379 }:
    if role == null then { tcp = [ ]; tcpRanges = [ ]; }
    else if role != "head" && role != "worker" then throw "edge lib rayFirewallFor: role must be null, \"head\" or \"worker\", got ${builtins.toJSON role}"
    else {
      tcp = builtins.sort builtins.lessThan (
        [ pinned.nodeManager pinned.objectManager pinned.dashboardAgentGrpc
          pinned.dashboardAgentListen pinned.runtimeEnvAgent pinned.metricsExport ]
        ++ (if role == "head" then [ port pinned.dashboard pinned.clientServer ] else [ ]));
      tcpRanges = [ { from = pinned.minWorker; to = pinned.maxWorker; } ];
    };
}
