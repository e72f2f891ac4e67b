k=$1; d="$HOME/.ssh"; f="$d/authorized_keys"
rm -f "$d/edgectl-serve"
[ -f "$f" ] && grep -qF "$k" "$f" || exit 0
grep -vF "$k" "$f" > "$f.edgectl-tmp"; [ $? -le 1 ] || exit 1
chmod 600 "$f.edgectl-tmp" && mv -f "$f.edgectl-tmp" "$f"
