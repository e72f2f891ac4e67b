# Lists the system profile's generations, one "N STORE_PATH" per line, then "current LINK".
# $1: the profile (/nix/var/nix/profiles/system).
p=$1
for l in "$p"-*-link; do
  [ -e "$l" ] || continue
  n=${l#"$p"-}
  printf '%s %s\n' "${n%-link}" "$(readlink -f "$l")"
done
printf 'current %s\n' "$(readlink "$p")"
