mkdir "$EDGECTL_STATE/run/$1/began" 2>/dev/null
