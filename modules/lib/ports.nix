# The ports edgectl's nodes use, in one table: the modules open them and the Rust code dials
# them (cli/edgectl/tests/ports.rs fails when the two disagree). Also what a node's firewall
# opens, per module and as a whole (firewallFor), from the same pieces the modules use.
let
  ports = {
    # sshd (services.openssh in common.nix, which opens it: openFirewall).
    ssh = 22;
    # The edgectl agent: QUIC, so UDP; mutual TLS against the cluster CA is its guard.
    agent = 7443;
    # The agent's own Zenoh listener for verify's latency matrix (TCP), open only during a
    # verify run; not zenohd's 7447, which a router on the node may hold.
    zenohProbe = 7448;
    # zenohd: TCP and UDP.
    zenoh = 7447;
    # Ray's head (GCS), TCP.
    rayGcs = 6379;
  };

  inherit (import ./zenoh.nix) zenohPortsFor;
  inherit (import ./ray.nix) rayFirewallFor;

  # agentFirewallFor { port; probe; } -> { udp = [ ... ]; tcp = [ ... ]; }: what a node with the
  # agent opens on every interface (the controller reaches it over the control network, peers
  # over the experiment LAN).
  agentFirewallFor = { port ? ports.agent, probe ? ports.zenohProbe }: {
    udp = [ port ];
    tcp = [ probe ];
  };

  # --- A firewall: { tcp; udp; tcpRanges; interfaces = { <if> = { tcp; udp; tcpRanges; }; }; }
  # tcp/udp/tcpRanges at the top are open on every interface; those under interfaces only on
  # that one. Ports sorted and deduplicated, ranges sorted by `from`; interfaces that open
  # nothing are left out.
  uniq = l: builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ] l;
  sortUniq = l: builtins.sort builtins.lessThan (uniq l);
  rangeLess = a: b: a.from < b.from || (a.from == b.from && a.to < b.to);
  genAttrs = names: f: builtins.listToAttrs (builtins.map (n: { name = n; value = f n; }) names);

  rulesOf = parts:
    let cat = k: builtins.concatLists (builtins.map (p: p.${k} or [ ]) parts);
    in {
      tcp = sortUniq (cat "tcp");
      udp = sortUniq (cat "udp");
      tcpRanges = builtins.sort rangeLess (uniq (cat "tcpRanges"));
    };
  opensNothing = r: r.tcp == [ ] && r.udp == [ ] && r.tcpRanges == [ ];

  # mergeFirewalls [ fw ... ] -> one firewall; every key of an argument is optional.
  mergeFirewalls = fws:
    let
      names = uniq (builtins.concatLists (builtins.map (f: builtins.attrNames (f.interfaces or { })) fws));
      perIf = builtins.filter (e: !(opensNothing e.value)) (builtins.map (n: {
        name = n;
        value = rulesOf (builtins.map (f: f.interfaces.${n} or { }) fws);
      }) names);
    in
    rulesOf fws // { interfaces = builtins.listToAttrs perIf; };

  # The option defaults of the modules, which a host file leaves out.
  defaultZenohListen = [ "tcp/0.0.0.0:${toString ports.zenoh}" ];

  # What each module opens, from its edge.<module> settings (the module's `cfg`, or the
  # attribute set a generated host file writes, where a missing attribute is the option's
  # default and a missing `enable` means disabled). The modules set networking.firewall from
  # these, and firewallFor merges them, so the two cannot disagree.
  firewallParts = {
    # services.openssh with openFirewall (NixOS's default), enabled on every node by common.nix.
    ssh = _: mergeFirewalls [ { tcp = [ ports.ssh ]; } ];
    # On every interface: see agent.nix.
    agent = { enable ? false, port ? ports.agent, ... }:
      mergeFirewalls (if enable then [ (agentFirewallFor { inherit port; }) ] else [ ]);
    # On the experiment interfaces only.
    zenoh = { enable ? false, listen ? defaultZenohListen, interfaces ? [ ], ... }:
      mergeFirewalls (if enable then [ { interfaces = genAttrs interfaces (_: zenohPortsFor { inherit listen; }); } ] else [ ]);
    ray = { enable ? false, role ? null, port ? ports.rayGcs, interfaces ? [ ], ... }:
      mergeFirewalls (if enable then [ { interfaces = genAttrs interfaces (_: rayFirewallFor { inherit role port; }); } ] else [ ]);
  };
in
{
  inherit ports agentFirewallFor defaultZenohListen firewallParts mergeFirewalls;

  # firewallFor edge -> the firewall NixOS builds for a node whose configuration sets `edge`
  # (config.edge, or the `edge` attribute set of a generated hosts/<node>.nix): sshd, the
  # agent, Zenoh and Ray. The test rig's --nixos nodes load exactly this (cli/rig).
  firewallFor = edge:
    if !(builtins.isAttrs edge) then throw "edge lib firewallFor: expects the node's edge attribute set"
    else mergeFirewalls (builtins.attrValues (builtins.mapAttrs (name: part: part (edge.${name} or { })) firewallParts));

  # nixosFirewallFor fw -> the networking.firewall attributes that open what `fw` opens:
  # allowedTCPPorts, allowedUDPPorts, allowedTCPPortRanges and interfaces.<if>.allowed*.
  nixosFirewallFor = fw:
    let rules = r: {
      allowedTCPPorts = r.tcp;
      allowedUDPPorts = r.udp;
      allowedTCPPortRanges = r.tcpRanges;
    };
    in rules fw // { interfaces = builtins.mapAttrs (_: rules) fw.interfaces; };
}
