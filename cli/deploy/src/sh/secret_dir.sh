# $1: the directory a secret goes into. Missing parents are made root-owned 0755 (as a
# package's would be), so a secret's own owner can reach it; the file's mode guards it.
umask 022
mkdir -p -- "$1"
