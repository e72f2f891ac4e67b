readlink -f "$1" 2>/dev/null || echo; readlink "$1" 2>/dev/null || echo
shift
