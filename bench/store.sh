#!/usr/bin/env bash
# Store benchmark: sustained insert rate through the daemon's real Writer,
# bytes per event on disk, and query latency over the resulting database
# (default 10M realistic events spread over 24 h). Prints a markdown table.
#   bench/store.sh [--events N] [--span-hours H] [--runs N] [--dir DIR] [--with-retention] [--run-mean N] [--batch N]
# Needs ~2 GB free in DIR (default: $TMPDIR or /tmp). Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin traceed-store-bench >&2
exec ./target/release/traceed-store-bench "$@"
