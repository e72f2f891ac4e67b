s=$1; shift
run=$EDGECTL_STATE/run/$4
mkdir -p "$run" || exit 1
if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null 2>&1; then
  printf 'systemd-run\n' > "$run/launcher"
  exec systemd-run --quiet --collect --unit="edgectl-activate-$4" \
    --property=StandardOutput="append:$run/launch.log" --property=StandardError="append:$run/launch.log" \
    /bin/sh -c "$s" edgectl-activate "$@"
fi
printf 'setsid\n' > "$run/launcher"
setsid -f /bin/sh -c "$s" edgectl-activate "$@" </dev/null >>"$run/launch.log" 2>&1
