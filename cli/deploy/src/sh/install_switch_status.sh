# The state of install's detached switch (see install_switch.sh), then its log's last lines.
st=$EDGECTL_STATE/install-switch
cat "$st/status" 2>/dev/null || echo missing
tail -n 20 "$st/log" 2>/dev/null
true
