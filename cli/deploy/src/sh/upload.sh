set -e
umask 077
mkdir -p "$(dirname "$1")"
cat > "$1.edgectl-tmp"
chmod "$2" "$1.edgectl-tmp"
mv -f "$1.edgectl-tmp" "$1"
