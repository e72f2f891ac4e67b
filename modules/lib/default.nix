# Every pure decision function the edge.* modules use, in one attrset.
# Builtins only (no nixpkgs, no lib) so checks/lib-tests.nix can evaluate
# them with a bare `nix-instantiate`.
#
# The experiment-interface plan and the agent state directory live here
# rather than in files of their own: the module set's file list is fixed.
let
  fail = fn: why: throw "edge lib ${fn}: ${why}";

  lower = builtins.replaceStrings
    [ "A" "B" "C" "D" "E" "F" ] [ "a" "b" "c" "d" "e" "f" ];

  hex2 = "[0-9a-fA-F]{2}";

  # Accepts aa:bb:cc:dd:ee:ff, aa-bb-..., or the 12 bare hex digits CloudLab
  # manifests use; returns the lower-case colon form systemd prints.
  normalizeMac = mac:
    let
      bare = if !(builtins.isString mac) then null
        else if builtins.match "(${hex2}[:-]){5}${hex2}" mac != null
        then builtins.replaceStrings [ ":" "-" ] [ "" "" ] mac
        else if builtins.match "[0-9a-fA-F]{12}" mac != null then mac
        else null;
      pair = i: builtins.substring (i * 2) 2 (lower bare);
    in
    if bare == null then fail "normalizeMac" "${builtins.toJSON mac} is not a MAC address (aa:bb:cc:dd:ee:ff)"
    else builtins.concatStringsSep ":" (builtins.genList pair 6);

  isIPv4 = s: builtins.isString s
    && (let m = builtins.match "([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})\\.([0-9]{1,3})" s;
        in m != null && builtins.all (o: builtins.fromJSON o <= 255) m);

  # Kernel limit IFNAMSIZ-1 = 15. Kernel-assigned names (ethN, ibN, wlanN) are refused for
  # renamed links: renaming onto a name the kernel may hand out races with it.
  checkIfName = fn: n:
    if !(builtins.isString n) || builtins.match "[A-Za-z0-9_-]{1,15}" n == null
    then fail fn "interface name ${builtins.toJSON n} must be 1-15 letters, digits, '-' or '_'"
    else if builtins.match "(eth|wlan|ib)[0-9]+" n != null
    then fail fn "interface name ${builtins.toJSON n} is in the kernel's own namespace; pick another (e.g. exp0)"
    else if n == "lo" then fail fn "interface name \"lo\" is the loopback"
    else n;

  uniq = l: builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ] l;
  dups = l: uniq (builtins.filter (x: builtins.length (builtins.filter (y: y == x) l) > 1) l);

  # interfacesPlanFor [ { name; mac; address; prefixLength; vlan ? null; } ... ] ->
  #   { links = { <linkName> = <mac>; };          physical NICs to rename by MAC
  #     addresses = { <name> = { address; prefixLength; }; };
  #     vlans = { <name> = { id; interface = <linkName>; }; };
  #     trunks = [ <linkName> ];                  renamed NICs that carry only VLANs }
  #
  # The address always lives on the interface called `name`, so the names the
  # renderer puts in edge.ray.interfaces / edge.zenoh.interfaces are the ones
  # the firewall sees. Untagged: the NIC itself is renamed to `name`.
  # Tagged (vlan set): the VLAN device is `name`; its parent is the untagged
  # entry on the same MAC if there is one, else "et" + the 12 MAC hex digits
  # (14 characters, unique, fits IFNAMSIZ).
  interfacesPlanFor = ifs:
    let
      fn = "interfacesPlanFor";
      norm = builtins.map (i:
        let
          name = checkIfName fn (i.name or null);
          mac = normalizeMac (i.mac or null);
          vlan = i.vlan or null;
          plen = i.prefixLength or null;
        in
        if !(isIPv4 (i.address or null)) then fail fn "${name}: address ${builtins.toJSON (i.address or null)} is not a bare IPv4 address (the prefix goes in prefixLength)"
        else if !(builtins.isInt plen) || plen < 1 || plen > 32 then fail fn "${name}: prefixLength must be 1..32, got ${builtins.toJSON plen}"
        else if vlan != null && (!(builtins.isInt vlan) || vlan < 1 || vlan > 4094) then fail fn "${name}: vlan must be null or 1..4094, got ${builtins.toJSON vlan}"
        else { inherit name mac vlan; address = i.address; prefixLength = plen; }) ifs;

      untagged = builtins.filter (i: i.vlan == null) norm;
      tagged = builtins.filter (i: i.vlan != null) norm;
      untaggedMacs = builtins.map (i: i.mac) untagged;
      parentOf = mac:
        let u = builtins.filter (i: i.mac == mac) untagged;
        in if u != [ ] then (builtins.head u).name
           else "et" + builtins.replaceStrings [ ":" ] [ "" ] mac;
      trunkNames = uniq (builtins.map (i: parentOf i.mac)
        (builtins.filter (i: !(builtins.elem i.mac untaggedMacs)) tagged));
      vlanKeys = builtins.map (i: "${i.mac}/${toString i.vlan}") tagged;
      allNames = builtins.map (i: i.name) norm ++ trunkNames;
    in
    if !(builtins.isList ifs) then fail fn "expects a list"
    else if dups untaggedMacs != [ ] then fail fn "MAC ${builtins.head (dups untaggedMacs)} is given to two untagged interfaces"
    else if dups vlanKeys != [ ] then fail fn "MAC/VLAN ${builtins.head (dups vlanKeys)} is used twice"
    else if dups allNames != [ ] then fail fn "interface name ${builtins.head (dups allNames)} is used twice"
    else {
      links = builtins.listToAttrs (
        builtins.map (i: { name = i.name; value = i.mac; }) untagged
        ++ builtins.map (t: {
          name = t;
          value = (builtins.head (builtins.filter (i: parentOf i.mac == t) tagged)).mac;
        }) trunkNames);
      addresses = builtins.listToAttrs (builtins.map (i: {
        name = i.name;
        value = { inherit (i) address prefixLength; };
      }) norm);
      vlans = builtins.listToAttrs (builtins.map (i: {
        name = i.name;
        value = { id = i.vlan; interface = parentOf i.mac; };
      }) tagged);
      trunks = trunkNames;
    };

  # stateDirectoryFor "/var/lib/edgectl-agent" -> "edgectl-agent" (systemd
  # StateDirectory= is relative to /var/lib); any other absolute path -> null
  # (the agent module relies on tmpfiles alone). Relative, ".." and shared
  # system directories throw.
  stateDirectoryFor = dir:
    if !(builtins.isString dir) || builtins.match "/.*" dir == null
    then fail "stateDirectoryFor" "${builtins.toJSON dir} must be an absolute path"
    else if builtins.match "(.*/)?\\.\\.?(/.*)?" dir != null || builtins.match ".*//.*" dir != null
    then fail "stateDirectoryFor" "${builtins.toJSON dir} must be a normalised path (no '.', '..' or '//')"
    # tmpfiles would chmod 0700 whatever it is given: refuse shared top-level
    # directories (/, /var, /var/lib, /srv, ...), which that would break.
    else if builtins.match "/[^/]*/?" dir != null || builtins.match "/var/lib/?" dir != null
    then fail "stateDirectoryFor" "${builtins.toJSON dir} is a shared system directory; use a directory of the agent's own"
    else
      let m = builtins.match "/var/lib/([^/].*[^/]|[^/])/?" dir;
      in if m == null then null else builtins.head m;

  # agentArgsFor { port; stateDir; } -> the agent's command-line arguments.
  agentArgsFor = { port ? 7443, stateDir ? "/var/lib/edgectl-agent" }:
    if !(builtins.isInt port) || port < 1 || port > 65535
    then fail "agentArgsFor" "port must be 1..65535, got ${builtins.toJSON port}"
    else [ "--listen" "0.0.0.0:${toString port}" "--state-dir" stateDir ];
in
import ./driver.nix
// import ./sysctl.nix
// import ./kvm.nix
// import ./grub.nix
// import ./zenoh.nix
// import ./ray.nix
// import ./ports.nix
// { inherit normalizeMac interfacesPlanFor stateDirectoryFor agentArgsFor; }
