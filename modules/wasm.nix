# WebAssembly runtimes.
{ config, lib, pkgs, ... }:
let
  cfg = config.edge.wasm;
in
{
  options.edge.wasm.enable = lib.mkEnableOption "the wasmtime and WasmEdge runtimes";

  config = lib.mkIf cfg.enable {
    environment.systemPackages = [ pkgs.wasmtime pkgs.wasmedge ];
  };
}
