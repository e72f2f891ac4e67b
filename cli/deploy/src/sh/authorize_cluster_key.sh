k=$1; d="$HOME/.ssh"; f="$d/authorized_keys"; serve="$d/edgectl-serve"
mkdir -p "$d" && chmod 700 "$d" || exit 1
printf '%s' "$2" > "$serve.tmp" && chmod 500 "$serve.tmp" && mv -f "$serve.tmp" "$serve" || exit 1
line="restrict,command=\"/bin/sh '$serve'\" $k"
if ! grep -qxF "$line" "$f" 2>/dev/null; then
  if [ -e "$f" ]; then
    grep -vF "$k" "$f" > "$f.edgectl-tmp"; [ $? -le 1 ] || exit 1
    if [ -s "$f.edgectl-tmp" ] && [ -n "$(tail -c 1 "$f.edgectl-tmp")" ]; then printf '\n' >> "$f.edgectl-tmp" || exit 1; fi
  else
    : > "$f.edgectl-tmp" || exit 1
  fi
  printf '%s\n' "$line" >> "$f.edgectl-tmp" && chmod 600 "$f.edgectl-tmp" && mv -f "$f.edgectl-tmp" "$f" || exit 1
fi
chmod 600 "$f"
