# $1: the uploaded temporary file (its mode already set), $2: the secret's destination,
# $3: owner, $4: group. Owner and group are set before the rename, so the destination only
# ever holds the old secret or the new one with its final owner and mode. -T: never into a
# directory of that name. The temporary file goes away on any failure.
if chown -- "$3:$4" "$1" && mv -f -T -- "$1" "$2"; then
  exit 0
fi
rm -f -- "$1"
exit 1
