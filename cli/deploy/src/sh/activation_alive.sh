run=$EDGECTL_STATE/run/$1
pid=$(cat "$run/pid" 2>/dev/null); boot=$(cat "$run/boot" 2>/dev/null)
[ -n "$pid" ] && [ "$boot" = "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)" ] &&
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q edgectl-activate
