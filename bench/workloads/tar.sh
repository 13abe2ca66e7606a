#!/usr/bin/env bash
# tar copy workload: `tar -c SRC | tar -x` into a fresh directory (every
# file opened twice, created once, metadata set), then the copy is removed
# untimed.
#   tar.sh SRC DST     prints "ops=FILES ns=T"
set -euo pipefail
src=$1 dst=$2
rm -rf "$dst"
mkdir -p "$dst"
n=$(find "$src" | wc -l)
t0=$(date +%s%N)
tar -C "$(dirname "$src")" -cf - "$(basename "$src")" | tar -C "$dst" -xf -
t1=$(date +%s%N)
rm -rf "$dst"
echo "ops=$n ns=$((t1 - t0))"
