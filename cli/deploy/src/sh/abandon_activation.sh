mkdir "/nix/var/edgectl/run/$1/began" 2>/dev/null
