set -e
sys=$1
nix-env -p /nix/var/nix/profiles/system --set "$sys"
touch /etc/NIXOS
NIXOS_INSTALL_BOOTLOADER=1 "$sys/bin/switch-to-configuration" boot
