#!/bin/busybox sh
# /init of the kernel-matrix guest (built into the initramfs by
# tests/vm/matrix.sh). Runs traceed in each requested rung of the portability
# ladder, drives tests/vm/matrix-probe (exec + open + connect + exit with
# known ground truth), checks the stored rows read back through tracectl, and
# writes one machine-readable line per check and per rung to /dev/ttyS1:
#
# Rungs: core-kernel-btf, core-external-btf, kernel-object, fallback, and foreign-btf (a
# negative control: another kernel's BTF must be refused); RUNG+perf runs
# RUNG with --transport perf (perf event array instead of the ring buffer).
#
#   MX BOOT <uname -r> <uptime s>
#   MX CHECK <rung> PASS|FAIL|SKIP <what> <detail>
#   MX INFO <rung> programs=<attached> skipped_hooks=<names>
#   MX RUNG <rung> PASS|FAIL|SKIP <reason>
#   MX DONE <uptime s>
#
# Busybox has no jq: stored
# events are `tracectl events -o jsonl` lines, and jget() extracts one
# top-level scalar or array by key. That is sound here because traceed's
# event keys (docs/ARCHITECTURE.md, wire shapes) are distinct names: no args key equals
# a column name.

. /lib/guest.sh
uptime_s() { cut -d' ' -f1 /proc/uptime; }
param() { kparam matrix "$1"; }

say "MX BOOT $(uname -r) $(uptime_s)"

RUNGS=$(param rungs | tr ',' ' ')
[ -n "$RUNGS" ] || RUNGS="core-kernel-btf core-external-btf fallback"
# TCG is 10-50x slower than the host: generous, but bounded.
START_WAIT=$(param start_wait); [ -n "$START_WAIT" ] || START_WAIT=120
EVENT_WAIT=$(param event_wait); [ -n "$EVENT_WAIT" ] || EVENT_WAIT=60

have() { [ -e "$1" ] && echo 1 || echo 0; }
T=/sys/kernel/tracing
say "MX INFO kernel btf=$(have /sys/kernel/btf/vmlinux) syscalls_tp=$(have $T/events/syscalls) raw_syscalls_tp=$(have $T/events/raw_syscalls) kprobes=$(have $T/kprobe_events) preempt_rt=$(uname -v | grep -q PREEMPT_RT && echo 1 || echo 0)"

# Does the kernel attach BPF trampolines (fentry/fexit) to the open
# family's syscall functions? tests/vm/fentry-probe.c asks it directly; the
# CO-RE rung must then run the open family on fexit, every other rung on
# tracepoints.
FENTRY=0
if [ -x /bin/fentry-probe ] && [ -e /sys/kernel/btf/vmlinux ]; then
	fentry-probe __x64_sys_openat __x64_sys_open __x64_sys_openat2 >/tmp/fentry-probe.out 2>&1 && FENTRY=1
	while read -r l; do say "MX INFO fentry-probe $l"; done </tmp/fentry-probe.out
fi
say "MX INFO kernel fentry=$FENTRY"

# The external-BTF rung needs the kernel's own BTF as a file, taken before
# sysfs BTF is hidden.
BTF_COPY=/btf/vmlinux
mkdir -p /btf
HAS_BTF=0
if [ -e /sys/kernel/btf/vmlinux ]; then
	HAS_BTF=1
	cp /sys/kernel/btf/vmlinux "$BTF_COPY"
fi

# Extract the first value of a key from a JSON line: a string (unquoted,
# escapes left as they are), an array (raw), a number, null, true or false.
# The first: top-level columns come before args, and status' own rung
# before those in refused[].
jget() {
	printf '%s\n' "$1" | awk -v k="$2" '{
		if (match($0, "\"" k "\":[ \t]*(\"([^\"\\\\]|\\\\.)*\"|\\[[^]]*\\]|-?[0-9.]+|null|true|false)")) {
			v = substr($0, RSTART, RLENGTH)
			sub(/^"[^"]*":[ \t]*/, "", v)
			if (v ~ /^".*"$/) v = substr(v, 2, length(v) - 2)
			print v
		}
	}'
}

FAILS=0
SKIPS=0
check() { # rung what got want
	if [ "$3" = "$4" ]; then
		say "MX CHECK $1 PASS $2 $3"
	else
		say "MX CHECK $1 FAIL $2 got=$3 want=$4"
		FAILS=$((FAILS + 1))
		FAILED="$FAILED $2"
	fi
}
check_or_null() { # rung what got want: the right value or an honest null
	if [ "$3" = "null" ]; then
		say "MX CHECK $1 PASS $2 null (allowed: unknown in this rung)"
	else
		check "$@"
	fi
}
skip() { # rung what reason
	say "MX CHECK $1 SKIP $2 $3"
	SKIPS=$((SKIPS + 1))
}

# Poll a tracectl query until it prints a line, or give up after EVENT_WAIT s.
wait_event() { # sock args...
	sock=$1; shift
	i=0
	while [ $i -lt "$EVENT_WAIT" ]; do
		line=$(tracectl --socket "$sock" events "$@" -o jsonl 2>/dev/null | head -n 1)
		if [ -n "$line" ]; then
			echo "$line"
			return 0
		fi
		sleep 1
		i=$((i + 1))
	done
	return 1
}

one_line() { tail -n "${2:-3}" "$1" | tr '\n\t' '  ' | cut -c1-400; }

run_rung() { # rung
	rung=$1
	FAILS=0
	SKIPS=0
	FAILED=
	dir=/run/mx/$rung
	sock=$dir/api.sock
	mkdir -p "$dir"
	hidden=0
	# RUNG+perf: the same rung with events through the perf event array
	# instead of the BPF ring buffer.
	base=${rung%+perf}
	transport=
	[ "$base" != "$rung" ] && transport=perf
	case $base in
	core-kernel-btf)
		set -- --mode core
		;;
	core-external-btf)
		if [ $HAS_BTF = 0 ]; then
			say "MX RUNG $rung SKIP this kernel has no BTF (no CONFIG_DEBUG_INFO_BTF) to copy into a file"
			return
		fi
		mount -t tmpfs tmpfs /sys/kernel/btf && hidden=1
		set -- --mode core --btf "$BTF_COPY"
		;;
	kernel-object)
		# The object matrix.sh built on the host from this kernel's own
		# linux-headers package; traceed finds it by release, BTF hidden.
		if [ -s "/usr/lib/traceed/objects/$(uname -r).failed" ]; then
			say "MX RUNG $rung FAIL traceed build-object failed on the host for these headers: $(tr -d '|' <"/usr/lib/traceed/objects/$(uname -r).failed")"
			return
		fi
		if [ ! -s "/usr/lib/traceed/objects/$(uname -r).bpf.o" ]; then
			say "MX RUNG $rung SKIP no object for $(uname -r) in the initramfs (no linux-headers package for this kernel)"
			return
		fi
		[ -d /sys/kernel/btf ] && mount -t tmpfs tmpfs /sys/kernel/btf && hidden=1
		set -- --mode kernel
		;;
	fallback)
		[ -d /sys/kernel/btf ] && mount -t tmpfs tmpfs /sys/kernel/btf && hidden=1
		set -- --mode fallback
		;;
	foreign-btf)
		# A negative control: another kernel's BTF (matrix.sh puts the
		# host's in the initramfs). Relocating against it would read
		# this kernel's structs at that kernel's offsets.
		if [ ! -s /btf/foreign ]; then
			say "MX RUNG $rung FAIL no /btf/foreign in the initramfs"
			return
		fi
		mount -t tmpfs tmpfs /sys/kernel/btf && hidden=1
		set -- --mode core --btf /btf/foreign
		;;
	*)
		say "MX RUNG $rung FAIL unknown rung"
		return
		;;
	esac
	if [ -e /sys/kernel/btf/vmlinux ] && [ "$base" != core-kernel-btf ]; then
		say "MX RUNG $rung FAIL could not hide /sys/kernel/btf"
		return
	fi

	[ -n "$transport" ] && set -- "$@" --transport "$transport"
	t0=$(uptime_s)
	traceed --state-dir "$dir" --socket "$sock" "$@" >"$dir/log" 2>&1 &
	dpid=$!
	i=0
	while :; do
		if tracectl --socket "$sock" status -o json >"$dir/status" 2>/dev/null; then
			break
		fi
		if ! kill -0 "$dpid" 2>/dev/null; then
			wait "$dpid"
			rc=$?
			msg=$(grep -E 'ERROR|Error|error' "$dir/log" | tail -n 2 | tr '\n' ' ' | cut -c1-1200)
			[ -n "$msg" ] || msg=$(one_line "$dir/log")
			# A rung this build of traceed does not have yet is a SKIP
			# with the daemon's own words; any other refusal is a FAIL.
			if [ "$base" = foreign-btf ]; then
				if echo "$msg" | grep -q 'core-external-btf'; then
					say "MX RUNG $rung PASS refused $(cat /btf/foreign.origin): $msg"
				else
					say "MX RUNG $rung FAIL exited $rc without refusing the external BTF: $msg"
				fi
			elif [ "$base" = core-kernel-btf ] && [ $HAS_BTF = 0 ]; then
				say "MX RUNG $rung SKIP this kernel has no BTF; traceed --mode core refused as it must: $msg"
			elif echo "$msg" | grep -q 'not built yet'; then
				say "MX RUNG $rung SKIP traceed has no $rung rung yet (exit $rc): $msg"
			else
				say "MX RUNG $rung FAIL traceed exited $rc: $msg"
			fi
			[ $hidden = 1 ] && umount /sys/kernel/btf
			return
		fi
		i=$((i + 1))
		if [ $i -gt $((START_WAIT * 2)) ]; then
			say "MX RUNG $rung FAIL traceed not ready after ${START_WAIT}s: $(one_line "$dir/log")"
			kill -KILL "$dpid"
			[ $hidden = 1 ] && umount /sys/kernel/btf
			return
		fi
		usleep 500000
	done
	t1=$(uptime_s)
	say "MX CHECK $rung PASS ready startup_s=$(echo "$t0 $t1" | awk '{printf "%.1f", $2-$1}')"
	# `tracectl status -o json` is the daemon's object pretty-printed, keys
	# in any order (refused[] may come before rung): top-level keys are the
	# lines indented by exactly two spaces.
	sget() { sed -n -E "s/^  \"$1\": (\"(.*)\"|([^\",]*)),?\$/\2\3/p" "$dir/status"; }
	programs=$(awk '/^  "programs": \[\]/ { exit } /^  "programs": \[/ { f = 1; next }
		f && /^  \]/ { exit } f { gsub(/[ ",]/, ""); print }' "$dir/status" | tr '\n' ' ')
	nprog=$(echo $programs | wc -w)
	skipped=$(grep -o '"hook": *"[^"]*"' "$dir/status" | sed 's/.*"\([^"]*\)"$/\1/' | tr '\n' ' ')
	say "MX INFO $rung programs=$nprog skipped_hooks=${skipped:-none}"
	# Each family's attach method (status.attach.families[F].method): all
	# on fexit where the kernel takes trampolines, else all on tracepoints.
	# 5.10's BTF gives some syscall functions (connect, bind, accept,
	# accept4, bpf, memfd_create, execveat) a first argument fexit cannot
	# read ("arg#0 type is not a struct"): those keep their tracepoints
	# there, so the families that hold them may be mixed or tracepoint.
	want_attach=tracepoint
	[ "$base" = core-kernel-btf ] && [ $FENTRY = 1 ] && want_attach=fexit
	case $(uname -r) in 5.10.*) old_btf=1 ;; *) old_btf=0 ;; esac
	for fam in open "exec (failed)" file net privilege; do
		got=$(awk -v f="\"family\": \"$fam\"" 'index($0, f) { x = 1 } x && /"method":/ {
			sub(/.*"method": *"/, ""); sub(/".*/, ""); print; exit }' "$dir/status")
		say "MX INFO $rung attach $fam=${got:-none}"
		want=$want_attach
		if [ "$want" = fexit ] && [ $old_btf = 1 ] && [ "$fam" != open ]; then
			case $got in fexit+tracepoint | tracepoint) want=$got ;; esac
		fi
		[ "$base" = foreign-btf ] || check "$rung" "status.attach.$fam" "${got:-none}" "$want"
	done
	[ -n "$transport" ] && check "$rung" status.transport "$(sget transport)" "$transport"
	case $base in
	core-external-btf) check "$rung" status.btf_source "$(sget btf_source)" "$BTF_COPY" ;;
	core-kernel-btf)
		check "$rung" status.btf_source "$(sget btf_source)" /sys/kernel/btf/vmlinux
		[ $HAS_BTF = 1 ] || check "$rung" refused "started the CO-RE object on a kernel without BTF" "refusal"
		;;
	kernel-object)
		# The status names the object it loaded and the release recorded in it.
		check "$rung" status.kernel_object.path \
			"$(sed -n 's/^    "path": "\(.*\)",\{0,1\}$/\1/p' "$dir/status")" "/usr/lib/traceed/objects/$(uname -r).bpf.o"
		check "$rung" status.kernel_object.release \
			"$(sed -n 's/^    "release": "\(.*\)",\{0,1\}$/\1/p' "$dir/status")" "$(uname -r)"
		;;
	foreign-btf)
		# It should have refused; the checks below show what it misreads.
		check "$rung" refused "started with $(cat /btf/foreign.origin)" "refusal"
		;;
	esac
	[ "$base" = foreign-btf ] || check "$rung" status.rung "$(sget rung)" "$base"

	# The workload: a uniquely named copy of the probe, run by a shell in
	# its own cgroup so ppid and cgroup_id have non-trivial known values.
	nonce=$(cut -c1-8 /proc/sys/kernel/random/uuid)
	name=mx$nonce
	exe=/tmp/$name
	opath=/tmp/$name.open
	cp /bin/matrix-probe "$exe"
	cg=/sys/fs/cgroup/$name
	mkdir "$cg"
	cgid=$(stat -c %i "$cg")
	sh -c 'echo $$ >'"$cg"'/cgroup.procs; echo shpid=$$; '"$exe"' '"$opath"' 7 "--marker='"$name"'" "two words"; echo rc=$?' >"$dir/truth" 2>&1
	truth() { sed -n "s/^$1=//p" "$dir/truth"; }
	pid=$(truth pid)
	shpid=$(truth shpid)
	if [ -z "$pid" ] || [ "$(truth rc)" != 7 ]; then
		say "MX RUNG $rung FAIL workload did not run: $(one_line "$dir/truth" 20)"
		stop_daemon
		return
	fi
	check "$rung" truth.ppid "$(truth ppid)" "$shpid"

	case $base in
	fallback) fid=fallback ;;
	kernel-object) fid=kernel ;;
	*) fid=core ;;
	esac

	ev=$(wait_event "$sock" --kind exec --comm "$name")
	if [ -z "$ev" ]; then
		check "$rung" exec.recorded none "an exec row with comm $name"
	else
		check "$rung" exec.pid "$(jget "$ev" pid)" "$pid"
		check "$rung" exec.tid "$(jget "$ev" tid)" "$pid"
		check "$rung" exec.uid "$(jget "$ev" uid)" 0
		check "$rung" exec.gid "$(jget "$ev" gid)" 0
		check "$rung" exec.comm "$(jget "$ev" comm)" "$name"
		check "$rung" exec.filename "$(jget "$ev" filename)" "$exe"
		check "$rung" exec.argv "$(jget "$ev" argv)" "[\"$exe\",\"$opath\",\"7\",\"--marker=$name\",\"two words\"]"
		check "$rung" exec.fidelity "$(jget "$ev" fidelity)" "$fid"
		check "$rung" exec.cgroup_id "$(jget "$ev" cgroup_id)" "$cgid"
		if [ $fid != fallback ]; then
			# The fields CO-RE reads out of task_struct: these are the
			# ones a wrong layout (PREEMPT_RT) gets wrong.
			check "$rung" exec.ppid "$(jget "$ev" ppid)" "$shpid"
			check "$rung" exec.mnt_ns "$(jget "$ev" mnt_ns)" "$(truth mnt_ns)"
			check "$rung" exec.pid_ns "$(jget "$ev" pid_ns)" "$(truth pid_ns)"
			check "$rung" exec.ns_pid "$(jget "$ev" ns_pid)" "$pid"
			check "$rung" exec.exe "$(jget "$ev" exe)" "$exe"
		else
			# Fallback: what it cannot know must be null, never guessed.
			check_or_null "$rung" exec.ppid "$(jget "$ev" ppid)" "$shpid"
			check "$rung" exec.mnt_ns "$(jget "$ev" mnt_ns)" null
			check "$rung" exec.pid_ns "$(jget "$ev" pid_ns)" null
			check_or_null "$rung" exec.ns_pid "$(jget "$ev" ns_pid)" "$pid"
			check_or_null "$rung" exec.exe "$(jget "$ev" exe)" "$exe"
		fi
	fi

	# The probe's exit comes after its open and connect: once it is stored,
	# so is everything the probe did.
	ev=$(wait_event "$sock" --kind exit --pid "$pid")
	if [ -z "$ev" ]; then
		check "$rung" exit.recorded none "an exit row for pid $pid"
	else
		check "$rung" exit.exit_code "$(jget "$ev" exit_code)" 7
		check "$rung" exit.signal "$(jget "$ev" signal)" null
	fi

	# The fork came before the exit just waited for: no long wait.
	ev=$(EVENT_WAIT=10 wait_event "$sock" --kind fork --pid "$pid")
	if [ -z "$ev" ]; then
		check "$rung" fork.recorded none "a fork row for pid $pid"
	else
		check_or_null "$rung" fork.ppid "$(jget "$ev" ppid)" "$shpid"
		[ $fid != fallback ] && check "$rung" fork.ppid.full "$(jget "$ev" ppid)" "$shpid"
	fi

	# open and connect: checked where this binary records them.
	for kind in open connect; do
		if ! echo "$programs" | grep -q "$kind"; then
			skip "$rung" "$kind" "traceed attaches no $kind program yet (programs: $programs)"
			continue
		fi
		ev=$(EVENT_WAIT=10 wait_event "$sock" --kind "$kind" --pid "$pid")
		if [ -z "$ev" ]; then
			check "$rung" "$kind.recorded" none "an $kind row for pid $pid"
			continue
		fi
		check "$rung" "$kind.comm" "$(jget "$ev" comm)" "$name"
		if [ $fid != fallback ]; then
			check "$rung" "$kind.mnt_ns" "$(jget "$ev" mnt_ns)" "$(truth mnt_ns)"
		else
			check "$rung" "$kind.mnt_ns" "$(jget "$ev" mnt_ns)" null
		fi
		check "$rung" "$kind.fidelity" "$(jget "$ev" fidelity)" "$fid"
		check "$rung" "$kind.pid" "$(jget "$ev" pid)" "$pid"
		if [ "$kind" = open ]; then
			check "$rung" open.path "$(jget "$ev" path)" "$opath"
			# O_WRONLY|O_CREAT|O_TRUNC and 0640, as the probe passed them.
			check "$rung" open.flags "$(jget "$ev" flags)" 577
			check "$rung" open.mode "$(jget "$ev" mode)" 416
			check "$rung" open.retval "$(jget "$ev" retval)" "$(truth open_fd)"
		else
			check "$rung" connect.family "$(jget "$ev" family)" inet
			check "$rung" connect.addr "$(jget "$ev" addr)" 127.0.0.1
			check "$rung" connect.port "$(jget "$ev" port)" "$(truth connect_port)"
			check "$rung" connect.retval "$(jget "$ev" retval)" "$(truth connect_rc)"
		fi
	done

	# One syscall of each other family, each through its own programs.
	ev=$(EVENT_WAIT=10 wait_event "$sock" --kind unlink --pid "$pid")
	check "$rung" unlink.path "$(jget "$ev" path)" "$opath.open"
	check "$rung" unlink.retval "$(jget "$ev" retval)" "$(truth unlink_rc)"
	ev=$(EVENT_WAIT=10 wait_event "$sock" --kind kill --pid "$pid")
	check "$rung" kill.target_pid "$(jget "$ev" target_pid)" "$pid"
	check "$rung" kill.signal "$(jget "$ev" signal)" 0
	ev=$(EVENT_WAIT=10 wait_event "$sock" --kind exec --pid "$pid" --failed)
	check "$rung" execfail.filename "$(jget "$ev" filename)" /nonexistent/matrix-no-such-program
	check "$rung" execfail.retval "$(jget "$ev" retval)" "-$(truth execfail_errno)"
	# Its 100 arguments, read pointer by pointer: whole under bpf_loop
	# (5.17+: the CO-RE and kernel objects) and with the fallback's bounded
	# loop from 6.12 on; cut at 32 otherwise, argc then unknown.
	want_argc=100
	case $fid,$(uname -r) in
	*,5.10.* | fallback,6.[0-9].* | fallback,6.1[01].*) want_argc= ;;
	esac
	check "$rung" execfail.argc "$(jget "$ev" argc)" "$want_argc"
	ev=$(EVENT_WAIT=10 wait_event "$sock" --kind setuid --pid "$pid")
	# The first "uid" is the column: the caller's before the change.
	check "$rung" setuid.uid "$(jget "$ev" uid)" 0
	check "$rung" setuid.syscall "$(jget "$ev" syscall)" setresuid
	check "$rung" setuid.retval "$(jget "$ev" retval)" "$(truth setuid_rc)"

	# The open and openat2 syscalls: their own programs (tracepoint pair
	# or fexit), the same record.
	if echo "$programs" | grep -q open; then
		for v in open:open2_fd:64 openat2:openat2_fd:524353; do
			sys=${v%%:*}
			key=${v#*:}
			key=${key%%:*}
			if [ "$(truth "$key")" = -1 ]; then
				skip "$rung" "$sys" "the probe's $sys failed in this kernel"
				continue
			fi
			ev=$(EVENT_WAIT=10 wait_event "$sock" --kind open --pid "$pid" --path "$opath.$sys")
			if [ -z "$ev" ]; then
				check "$rung" "$sys.recorded" none "an open row for $opath.$sys"
				continue
			fi
			check "$rung" "$sys.comm" "$(jget "$ev" comm)" "$name"
			check "$rung" "$sys.fidelity" "$(jget "$ev" fidelity)" "$fid"
			[ $fid != fallback ] && check "$rung" "$sys.ppid" "$(jget "$ev" ppid)" "$shpid"
			check "$rung" "$sys.tid" "$(jget "$ev" tid)" "$pid"
			check "$rung" "$sys.uid" "$(jget "$ev" uid)" 0
			# open: O_RDONLY|O_CREAT, 0600; openat2: O_WRONLY|O_CREAT|O_CLOEXEC, 0600.
			check "$rung" "$sys.flags" "$(jget "$ev" flags)" "${v##*:}"
			check "$rung" "$sys.mode" "$(jget "$ev" mode)" 384
			check "$rung" "$sys.retval" "$(jget "$ev" retval)" "$(truth "$key")"
		done
	fi

	stop_daemon
	if [ $FAILS -gt 0 ]; then
		say "MX RUNG $rung FAIL $FAILS check(s) failed:$FAILED"
	elif [ $SKIPS -gt 0 ]; then
		say "MX RUNG $rung PASS (skipped $SKIPS: kinds not recorded by this build)"
	else
		say "MX RUNG $rung PASS"
	fi
}

stop_daemon() {
	kill -TERM "$dpid" 2>/dev/null
	i=0
	while kill -0 "$dpid" 2>/dev/null; do
		i=$((i + 1))
		if [ $i -gt 60 ]; then
			check "$rung" stop "still running 30s after SIGTERM" "exit"
			kill -KILL "$dpid"
			break
		fi
		usleep 500000
	done
	wait "$dpid" 2>/dev/null
	[ $hidden = 1 ] && umount /sys/kernel/btf
	# The log is echoed to the console for post-mortems on the host.
	sed "s/^/[traceed $rung] /" "$dir/log" | tail -n 40
}

for r in $RUNGS; do
	run_rung "$r"
done
say "MX DONE $(uptime_s)"
guest_end
