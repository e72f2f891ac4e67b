# Which node this is, for a resumed install: its machine id, its root's UUID and its OS id,
# a line each (see facts::not_the_recorded_node).
cat /etc/machine-id
findmnt -n -o UUID /
# shellcheck source=/dev/null
. /etc/os-release
echo "$ID"
