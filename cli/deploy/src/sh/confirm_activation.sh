run=$EDGECTL_STATE/run/$1
[ -d "$run" ] || exit 3
mkdir "$run/decided" 2>/dev/null || exit 2
touch "$run/confirmed"
