#!/bin/busybox sh
# /init of the fentry benchmark guest (built into the initramfs by
# tests/vm/fentry-bench.sh). In one boot of one kernel, runs the open+close
# loop (bench/workloads/open.c) under each configuration, interleaved, and
# writes one line per run to /dev/ttyS1:
#
#   FB BOOT <uname -r>
#   FB RUN <config> <rep> ops=<n> wall_ns=<loop wall> cpu_ns=<loop user+sys,
#          as the guest accounts it (not trusted under TCG: it can exceed wall)>
#          bpf_ns=<BPF run time of traceed's programs during the loop>
#          bpf_runs=<program runs> stored=<open rows> attach=<open family>
#   FB FAIL <config> <rep> <why>
#   FB DONE
#
# Configurations (bench.configs=..., comma-separated):
#   untraced      nothing attached
#   tracepoint    traceed --mode core, [kernel] fentry = false
#   fexit         traceed --mode core (the open family on fexit where the
#                 kernel allows it: checked, else the run FAILs)
#   floor-tp      tracepoint with TRACEED_BENCH_FLOOR=1: same hooks,
#                 syscall programs return at once
#   floor-fexit   fexit with TRACEED_BENCH_FLOOR=1
#   iso-tp        only empty programs on the open family's tracepoint pairs
#                 (fentry-probe --hold): the attach method alone
#   iso-fexit     only empty fexit programs on the open family's functions

. /lib/guest.sh
param() { kparam bench "$1"; }

say "FB BOOT $(uname -r)"
CONFIGS=$(param configs | tr ',' ' ')
REPS=$(param reps)
OPS=$(param ops)
[ -n "$CONFIGS" ] || CONFIGS="untraced tracepoint fexit floor-tp floor-fexit iso-tp iso-fexit"
[ -n "$REPS" ] || REPS=5
[ -n "$OPS" ] || OPS=20000
echo 1 >/proc/sys/kernel/bpf_stats_enabled
TARGET=/tmp/bench-target
: >"$TARGET"
FAMILY="open openat openat2"

# Sum of run_time_ns and run_cnt over the BPF programs pid $1 holds.
bpf_sum() {
	cat /proc/"$1"/fdinfo/* 2>/dev/null | awk '
		/^run_time_ns:/ { t += $2 } /^run_cnt:/ { c += $2 }
		END { printf "%d %d\n", t, c }'
}

start_tracer() { # config -> sets tpid, sock; returns 1 on failure
	cfg=$1
	tpid=
	sock=
	dir=/run/fb
	rm -rf "$dir"
	mkdir -p "$dir"
	fentry=true
	floor=0
	case $cfg in
	untraced) return 0 ;;
	iso-tp | iso-fexit)
		m=tracepoint
		[ "$cfg" = iso-fexit ] && m=fexit
		fentry-probe --hold "$m" $FAMILY >"$dir/hold" 2>&1 &
		tpid=$!
		i=0
		until grep -q 'HOLD ready' "$dir/hold"; do
			i=$((i + 1))
			if ! kill -0 "$tpid" 2>/dev/null || [ $i -gt 100 ]; then
				WHY="fentry-probe --hold $m: $(tr '\n' ' ' <"$dir/hold")"
				return 1
			fi
			usleep 100000
		done
		return 0
		;;
	tracepoint) fentry=false ;;
	fexit) ;;
	floor-tp) fentry=false floor=1 ;;
	floor-fexit) floor=1 ;;
	*) WHY="unknown config"; return 1 ;;
	esac
	sock=$dir/api.sock
	printf '[kernel]\nfentry = %s\n' "$fentry" >"$dir/traceed.toml"
	TRACEED_BENCH_FLOOR=$floor traceed --config "$dir/traceed.toml" --state-dir "$dir" \
		--socket "$sock" --mode core >"$dir/log" 2>&1 &
	tpid=$!
	i=0
	until tracectl --socket "$sock" status -o json >"$dir/status" 2>/dev/null; do
		i=$((i + 1))
		# Under TCG the verifier alone can take minutes (exit_execve's
		# argument loop on 6.1).
		if ! kill -0 "$tpid" 2>/dev/null || [ $i -gt 1200 ]; then
			WHY="traceed not ready: $(tail -n 3 "$dir/log" | tr '\n' ' ' | cut -c1-400)"
			return 1
		fi
		usleep 500000
	done
	return 0
}

open_attach() {
	[ -n "$sock" ] || { echo -; return; }
	awk '/"family": "open"/ { f = 1 } f && /"method":/ {
		sub(/.*"method": *"/, ""); sub(/".*/, ""); print; exit }' "$dir/status"
}

# Open rows of the loop, once the daemon has drained them (or 60 s).
stored_opens() {
	[ -n "$sock" ] || { echo -; return; }
	[ "$floor" = 1 ] && { echo -; return; }
	i=0
	n=0
	while [ $i -lt 120 ]; do
		n=$(tracectl --socket "$sock" events --kind open --path "$TARGET" --count-by kind -o json 2>/dev/null |
			grep -o '"count": *[0-9]*' | head -n 1 | grep -o '[0-9]*$')
		[ "${n:-0}" -ge "$OPS" ] && break
		i=$((i + 1))
		usleep 500000
	done
	echo "${n:-0}"
}

stop_tracer() {
	[ -n "$tpid" ] || return 0
	kill -TERM "$tpid" 2>/dev/null
	i=0
	while kill -0 "$tpid" 2>/dev/null && [ $i -lt 120 ]; do
		i=$((i + 1))
		usleep 250000
	done
	kill -KILL "$tpid" 2>/dev/null
	wait "$tpid" 2>/dev/null
	tpid=
}

# Warm-up, not reported: the boot's first loop runs on cold caches (its
# dentries, the binary's pages) and took twice as long as any later one.
bw_open "$OPS" "$TARGET" >/dev/null

set -- $CONFIGS
NCFG=$#
rep=1
while [ "$rep" -le "$REPS" ]; do
	# Rotate the order every repetition: no configuration always runs
	# first (or right after a daemon's shutdown).
	k=0
	while [ $k -lt $NCFG ]; do
		idx=$(((k + rep - 1) % NCFG + 1))
		eval cfg=\${$idx}
		k=$((k + 1))
		WHY=
		if ! start_tracer "$cfg"; then
			say "FB FAIL $cfg $rep $WHY"
			stop_tracer
			continue
		fi
		attach=$(open_attach)
		case $cfg in
		fexit | floor-fexit)
			if [ "$attach" != fexit ]; then
				say "FB FAIL $cfg $rep open family attached by '$attach', not fexit: $(grep -o '"fentry_refused": *"[^"]*"' "$dir/status")"
				stop_tracer
				continue
			fi
			;;
		tracepoint | floor-tp)
			if [ "$attach" != tracepoint ]; then
				say "FB FAIL $cfg $rep open family attached by '$attach', not tracepoint"
				stop_tracer
				continue
			fi
			;;
		esac
		b0="0 0"
		[ -n "$tpid" ] && b0=$(bpf_sum "$tpid")
		out=$(rusage bw_open "$OPS" "$TARGET")
		b1="0 0"
		[ -n "$tpid" ] && b1=$(bpf_sum "$tpid")
		wall=$(echo "$out" | sed -n 's/.*ns=\([0-9]*\).*/\1/p' | head -n 1)
		cpu=$(echo "$out" | sed -n 's/^cpu_ns=//p')
		bpf=$(echo "$b0 $b1" | awk '{ printf "bpf_ns=%d bpf_runs=%d", $3 - $1, $4 - $2 }')
		stored=$(stored_opens)
		say "FB RUN $cfg $rep ops=$OPS wall_ns=$wall cpu_ns=$cpu $bpf stored=$stored attach=${attach:--} load=$(cut -d' ' -f1 /proc/loadavg)"
		stop_tracer
	done
	rep=$((rep + 1))
done
say "FB DONE"
guest_end
