setsid -f /bin/sh -c 'sleep 2; exec "$@"' edgectl-reboot "$@" </dev/null >/dev/null 2>&1
