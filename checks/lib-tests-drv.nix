# The pure-function tests of modules/lib as a flake check: evaluation throws with the list of
# failures, so `nix flake check` fails and names them.
{pkgs}: let
  r = import ./lib-tests.nix;
in
  if r.failures == []
  then pkgs.runCommand "edgectl-lib-tests" {} "echo ${toString r.passed} lib tests passed > $out"
  else throw "edgectl lib tests failed: ${builtins.toJSON r.failures}"
