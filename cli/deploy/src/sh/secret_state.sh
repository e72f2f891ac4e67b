# $@: secret destinations. One line each: "SHA256 UID GID USER GROUP MODE" for a regular
# file, "-" when there is none (absent, a directory, a link). Never the content.
for f in "$@"; do
  if [ -f "$f" ] && [ ! -L "$f" ]; then
    sum=$(sha256sum < "$f") || sum=-
    meta=$(stat -c '%u %g %U %G %a' -- "$f") || meta=
    printf '%s %s\n' "${sum%% *}" "$meta"
  else
    echo -
  fi
done
