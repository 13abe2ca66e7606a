#!/bin/bash
# Static checks of the systemd files (PID 1 here need not be systemd):
# `systemd-analyze verify` of the unit with its ExecStart binary in place,
# and `systemd-analyze security --offline` exposure, which must stay <= 4.0.
# Usage (root): packaging/check-unit.sh [path/to/traceed]   (default target/release/traceed)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-target/release/traceed}")
[ -x "$BIN" ] || { echo "check-unit: $BIN missing: run 'make build' first" >&2; exit 1; }
MAX=4.0
# verify insists that ExecStart exists at its installed path: show it the
# built binary there, in a private mount namespace that vanishes afterwards.
unshare --mount sh -euc '
	mount -t tmpfs tmpfs /usr/sbin
	cp "$1" /usr/sbin/traceed
	systemd-analyze verify packaging/systemd/traceed.service
	echo "check-unit: systemd-analyze verify traceed.service: ok"
	systemd-analyze security --offline=true --no-pager packaging/systemd/traceed.service >/tmp/traceed-security.$$ 2>&1 || true
	cat /tmp/traceed-security.$$ | grep -E "^✗" || true
	tail -1 /tmp/traceed-security.$$ >/tmp/traceed-exposure.txt
	rm -f /tmp/traceed-security.$$
' sh "$BIN"
line=$(cat /tmp/traceed-exposure.txt)
rm -f /tmp/traceed-exposure.txt
score=$(echo "$line" | grep -oE '[0-9]+\.[0-9]+' | head -1)
echo "check-unit: $line"
[ -n "$score" ] || { echo "check-unit: no exposure score in: $line" >&2; exit 1; }
awk -v s="$score" -v m="$MAX" 'BEGIN { exit !(s <= m) }' \
	|| { echo "check-unit: exposure $score is above $MAX" >&2; exit 1; }
# sysusers.d and tmpfiles.d, applied to an empty root by the real tools.
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
mkdir -p "$t/etc"
systemd-sysusers --root="$t" "$PWD/packaging/systemd/sysusers.conf" 2>/dev/null
grep -q '^traceed:x:[0-9]*:[0-9]*:.*:/var/lib/traceed:/usr/sbin/nologin$' "$t/etc/passwd" \
	|| { echo "check-unit: sysusers.conf did not create user traceed" >&2; exit 1; }
systemd-tmpfiles --root="$t" --create "$PWD/packaging/systemd/tmpfiles.conf"
for d in var/lib/traceed var/lib/traceed/objects var/log/traceed; do
	[ "$(stat -c %a "$t/$d")" = 750 ] || { echo "check-unit: tmpfiles.conf: $d is not 0750" >&2; exit 1; }
done
echo "check-unit: sysusers.conf and tmpfiles.conf apply: ok"
echo "check-unit: ok (exposure $score <= $MAX)"
