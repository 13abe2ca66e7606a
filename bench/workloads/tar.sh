#!/usr/bin/env bash
# tar copy workload: `tar -c SRC | tar -x` into a fresh directory, K times
# (every file read once, created once, metadata set, per copy); each copy is
# removed untimed. One copy of /usr/include into tmpfs takes ~0.3 s here:
# three make a run long enough to time.
#   tar.sh SRC DST [K=3]     prints "ops=FILES*K ns=T"
set -euo pipefail
src=$1 dst=$2 k=${3:-3}
n=$(find "$src" | wc -l)
total=0
for _ in $(seq "$k"); do
    rm -rf "$dst"
    mkdir -p "$dst"
    t0=$(date +%s%N)
    tar -C "$(dirname "$src")" -cf - "$(basename "$src")" | tar -C "$dst" -xf -
    t1=$(date +%s%N)
    total=$((total + t1 - t0))
done
rm -rf "$dst"
echo "ops=$((n * k)) ns=$total"
