#!/usr/bin/env bash
# A rule directory of exactly N rules for the detection benchmarks: every
# rule under SRC that loads (`tracectl rules check` decides), then copies of
# them with renamed ids until there are N. The copies share their originals'
# literals, so N rules cost what N rules of SRC's mix cost.
#   bench/pad_rules.sh SRC OUT [N=200]
set -euo pipefail
cd "$(dirname "$0")/.."
src=$1 out=$2 n=${3:-200}
ctl=${TRACECTL:-$PWD/target/release/tracectl}
rm -rf "$out"
mkdir -p "$out"
chmod 755 "$out"
loaded=()
while IFS= read -r -d '' f; do
	if "$ctl" rules check "$f" >/dev/null 2>&1; then
		loaded+=("$f")
	fi
done < <(find "$src" -type f \( -name '*.yml' -o -name '*.yaml' \) -print0 | sort -z)
[ ${#loaded[@]} -gt 0 ] || { echo "pad_rules: no rule under $src loads" >&2; exit 1; }
i=0 round=0
while [ "$i" -lt "$n" ]; do
	for f in "${loaded[@]}"; do
		[ "$i" -lt "$n" ] || break
		if [ "$round" = 0 ]; then
			cp "$f" "$out/r$i.yml"
		else
			sed "s/^id: *\(.*\)$/id: \1-copy$round/" "$f" >"$out/r$i.yml"
		fi
		i=$((i + 1))
	done
	round=$((round + 1))
done
echo "pad_rules: $n rules in $out (${#loaded[@]} load from $src)" >&2
