# zenohd configuration and firewall ports. Pure: builtins only.
# zenoh 1.x config schema: mode, listen.endpoints, connect.endpoints,
# scouting.multicast.enabled. Defaults: TCP/UDP 7447, multicast scouting UDP 7446.
let
  # <proto>/<host>:<port>; the host may be an IPv6 literal in brackets.
  parse = e:
    let m = builtins.match "([a-z]+)/(.+):([0-9]+)(#.*)?" e;
    in if !(builtins.isString e) || m == null then null
       else { proto = builtins.elemAt m 0; port = builtins.fromJSON (builtins.elemAt m 2); };

  protos = {
    tcp = "tcp"; tls = "tcp"; ws = "tcp";
    udp = "udp"; quic = "udp";
  };

  check = fn: what: es:
    if !(builtins.isList es) then throw "edge lib ${fn}: ${what} must be a list of endpoints"
    else builtins.map (e:
      let p = parse e; in
      if p == null then throw "edge lib ${fn}: ${what} endpoint ${builtins.toJSON e} is not <proto>/<host>:<port>"
      else if !(builtins.hasAttr p.proto protos) then throw "edge lib ${fn}: ${what} endpoint ${builtins.toJSON e}: unsupported protocol ${p.proto}"
      else if p.port < 1 || p.port > 65535 then throw "edge lib ${fn}: ${what} endpoint ${builtins.toJSON e}: port out of range"
      else e) es;

  uniq = l: builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ] l;
  sort = builtins.sort builtins.lessThan;
in
{
  # zenohConfigFor { router = true; listen = [ ... ]; connect = [ ... ]; }
  #   -> { mode = "router"; listen.endpoints = [...]; connect.endpoints = [...];
  #        scouting.multicast.enabled = false; }
  # Multicast scouting is off: the topology names every peer, and scouting
  # would otherwise also run on the control network (the default route).
  zenohConfigFor = { router ? false, listen ? [ "tcp/0.0.0.0:7447" ], connect ? [ ] }:
    if !(builtins.isBool router) then throw "edge lib zenohConfigFor: router must be a bool"
    else {
      mode = if router then "router" else "peer";
      listen.endpoints = check "zenohConfigFor" "listen" listen;
      connect.endpoints = check "zenohConfigFor" "connect" connect;
      scouting.multicast.enabled = false;
    };

  # zenohPortsFor { listen = [ ... ]; } -> { tcp = [ 7447 ... ]; udp = [ 7447 ... ]; }
  # 7447 is always open on both (zenoh's default, what peers dial when
  # they were given no port); listen ports are added per transport.
  zenohPortsFor = { listen ? [ "tcp/0.0.0.0:7447" ] }:
    let ps = builtins.map parse (check "zenohPortsFor" "listen" listen);
        of = t: builtins.map (p: p.port) (builtins.filter (p: protos.${p.proto} == t) ps);
    in {
      tcp = sort (uniq ([ 7447 ] ++ of "tcp"));
      udp = sort (uniq ([ 7447 ] ++ of "udp"));
    };
}
