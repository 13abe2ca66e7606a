#!/bin/bash
# Runs INSIDE the boot-test VM as the oneshot traceed-boot-test.service,
# ordered after traceed.service, under the real systemd that booted the
# guest. Each check prints one line on the serial console:
#   BOOTTEST PASS <name> <seconds since boot>s <detail>
#   BOOTTEST FAIL <name> <seconds since boot>s <detail>
# and the last line is "BOOTTEST DONE pass=N fail=M". tests/vm/boot.sh reads
# them. The guest powers itself off at the end.
set -u
PASS=0
FAIL=0
uptime_s() { cut -d' ' -f1 /proc/uptime; }
pass() { PASS=$((PASS + 1)); echo "BOOTTEST PASS $1 $(uptime_s)s ${2:-}"; }
fail() { FAIL=$((FAIL + 1)); echo "BOOTTEST FAIL $1 $(uptime_s)s ${2:-}"; }
info() { echo "BOOTTEST INFO $*"; }
prop() { systemctl show -p "$1" --value traceed.service; }
# wait_until SECONDS COMMAND...: poll until COMMAND succeeds or SECONDS of
# wall time pass (not iterations: under TCG one systemctl call takes seconds).
wait_until() {
	local end=$((SECONDS + $1))
	shift
	while [ "$SECONDS" -lt "$end" ]; do
		"$@" && return 0
		sleep 1
	done
	"$@"
}
# A function, so the state is read on every poll (an argument like
# "$(prop ActiveState)" would be evaluated once, before the loop).
is_active() { [ "$(prop ActiveState)" = active ]; }
journal_has() { journalctl -b -u traceed.service --no-pager -o cat | grep -q -- "$1"; }
dump() {
	info "--- systemctl status traceed"
	systemctl status --no-pager -l traceed.service 2>&1 | sed 's/^/BOOTTEST LOG /'
	info "--- journalctl -u traceed (last 40)"
	journalctl -b -u traceed.service --no-pager -n 40 2>&1 | sed 's/^/BOOTTEST LOG /'
}

info "kernel $(uname -r), systemd $(systemctl --version | head -1)"
info "traceed unit state at test start: $(prop ActiveState)/$(prop SubState), up $(uptime_s)s"

# 1. Active after boot, READY reached. Type=notify: ActiveState becomes
#    "active" only when READY=1 arrived (before that it is "activating").
info "step 1 at $(uptime_s)s"
if wait_until 240 is_active; then
	ready_us=$(prop ExecMainStartTimestampMonotonic)
	active_us=$(prop ActiveEnterTimestampMonotonic)
	pass unit-active "start->READY $(((active_us - ready_us) / 1000)) ms, Type=$(prop Type)"
else
	fail unit-active "state $(prop ActiveState)/$(prop SubState) result $(prop Result)"
	dump
fi
[ "$(prop Type)" = notify ] && [ "$(prop NRestarts)" = 0 ] && journal_has "ready: rung" \
	&& pass ready-notified "NRestarts=0, journal: $(journalctl -b -u traceed -o cat | grep -m1 'ready: rung')" \
	|| fail ready-notified "Type=$(prop Type) NRestarts=$(prop NRestarts)"
status_text=$(prop StatusText)
# Refreshed from the counters (every 5 s): wait for one that counts stored events.
if wait_until 30 sh -c 'systemctl show -p StatusText --value traceed | grep -Eq "events/s; [1-9][0-9]* stored"'; then
	pass status-text "$(prop StatusText)"
else
	fail status-text "StatusText='$status_text'"
fi
wd=$(prop WatchdogUSec)
info "WatchdogUSec=$wd, MainPID=$(prop MainPID), User=$(prop User)"

# 2. Runs unprivileged with exactly the unit's capabilities.
info "step 2 at $(uptime_s)s"
pid=$(prop MainPID)
user=$(ps -o user= -p "$pid" | tr -d ' ')
capeff=$(awk '/^CapEff/ {print $2}' "/proc/$pid/status")
if [ "$user" = traceed ] && [ -n "$capeff" ]; then
	pass least-privilege "user=$user CapEff=$capeff ($(capsh --decode="$capeff" 2>/dev/null | cut -d= -f2 || true))"
else
	fail least-privilege "user=$user CapEff=$capeff"
fi

# 3. An exec done after boot is visible to a member of group traceed.
info "step 3 at $(uptime_s)s"
probe="bootprobe$$"
cp /bin/true "/tmp/$probe"
"/tmp/$probe" marker-arg
if wait_until 30 sh -c "runuser -u alice -- tracectl events --since 1m --kind exec -o jsonl | grep -q '$probe'"; then
	line=$(runuser -u alice -- tracectl events --since 1m --kind exec -o jsonl | grep -m1 "$probe")
	pass exec-visible-to-group "alice (group traceed) sees: $(echo "$line" | cut -c1-200)"
else
	fail exec-visible-to-group "$(runuser -u alice -- tracectl events --since 1m --kind exec 2>&1 | tail -3)"
	dump
fi
runuser -u bob -- tracectl status >/dev/null 2>&1
rc=$?
[ "$rc" = 3 ] && pass non-member-refused "bob (not in group traceed): tracectl exit $rc" \
	|| fail non-member-refused "bob: tracectl exit $rc (want 3)"

# 4. The journal has the startup line with the rung, with structured fields.
info "step 4 at $(uptime_s)s"
line=$(journalctl -b -u traceed.service --no-pager -o cat | grep -m1 "eBPF programs attached: rung")
rung=$(journalctl -b -u traceed.service --no-pager -o verbose | sed -n 's/^ *RUNG=//p' | head -1)
if [ -n "$line" ] && [ -n "$rung" ]; then
	pass journal-startup "'$line' (field RUNG=$rung)"
else
	fail journal-startup "line='$line' RUNG='$rung'"
	dump
fi

# 4b. A shipped rule's alert is a journal entry whose PRIORITY follows the
#     rule's level (traceed-shadow-read is high: 3, err), with its fields.
info "step 4b at $(uptime_s)s"
cat /etc/shadow >/dev/null
alert_at() { journalctl -b -u traceed.service --no-pager -o cat -p "$1" RULE_ID=traceed-shadow-read | grep -m1 '^alert: '; }
if wait_until 30 alert_at 3..3 >/dev/null; then
	pass journal-alert-priority "PRIORITY=3: $(alert_at 3..3)"
else
	fail journal-alert-priority "no RULE_ID=traceed-shadow-read entry at PRIORITY=3; at any: '$(alert_at 0..7)'"
	dump
fi

# 5. systemctl reload: RELOADING=1/READY=1 around SIGHUP, same process, and
#    the export (when enabled) is reopened: rotate it as logrotate does.
info "step 5 at $(uptime_s)s"
pid=$(prop MainPID)
export_file=/var/log/traceed/events.jsonl
reloads_before=$(journalctl -b -u traceed.service -o cat | grep -c '^reloaded')
if [ -f "$export_file" ]; then
	logrotate -f /etc/logrotate.d/traceed
	rc=$?
else
	systemctl reload traceed.service
	rc=$?
fi
if [ "$rc" = 0 ] && wait_until 20 sh -c "[ \$(journalctl -b -u traceed.service -o cat | grep -c '^reloaded') -gt $reloads_before ]" \
	&& [ "$(prop MainPID)" = "$pid" ] && [ "$(prop ActiveState)" = active ]; then
	if [ -f "$export_file.1" ]; then
		"/tmp/$probe" after-rotate
		if wait_until 20 grep -q after-rotate "$export_file"; then
			pass reload-reopens-export "logrotate -> systemctl reload: new $export_file written, same pid $pid"
		else
			fail reload-reopens-export "no event in the new $export_file after rotation"
		fi
	else
		pass reload "systemctl reload: RELOADING/READY, same pid $pid (no export file configured: reopen not exercised)"
	fi
else
	fail reload "rc=$rc pid $pid -> $(prop MainPID), state $(prop ActiveState)"
	dump
fi

# 6. A config error stops the start with file, line and key in the status,
#    exit 78, and no restart loop.
info "step 6 at $(uptime_s)s"
cp /etc/traceed/traceed.toml /tmp/traceed.toml.good
# A typo, appended to the last table of the shipped file.
printf 'ring_buffer_bytez = 4096\n' >>/etc/traceed/traceed.toml
restarts=$(prop NRestarts)
systemctl restart traceed.service >/dev/null 2>&1
sleep 3
status_out=$(systemctl status --no-pager -l traceed.service 2>&1)
code=$(prop ExecMainStatus)
if [ "$(prop ActiveState)" = failed ] && [ "$code" = 78 ] \
	&& echo "$status_out" | grep -q "/etc/traceed/traceed.toml" \
	&& echo "$status_out" | grep -q "ring_buffer_bytez" \
	&& echo "$status_out" | grep -Eq "line [0-9]+"; then
	pass config-error-shown "exit $code; status shows: $(echo "$status_out" | grep -m1 ring_buffer_bytez | sed 's/^.*traceed\[[0-9]*\]: //')"
else
	fail config-error-shown "state $(prop ActiveState) exit $code"
	echo "$status_out" | sed 's/^/BOOTTEST LOG /'
fi
cp /tmp/traceed.toml.good /etc/traceed/traceed.toml
systemctl reset-failed traceed.service
systemctl start traceed.service
if wait_until 240 is_active; then
	pass config-fixed-restart "active again after fixing the file"
else
	fail config-fixed-restart "state $(prop ActiveState)"
	dump
fi

# 7. A wedged daemon (SIGSTOP: the ingest loop stops pinging) is killed by
#    the watchdog and restarted.
info "step 7 at $(uptime_s)s"
pid=$(prop MainPID)
restarts=$(prop NRestarts)
t0=$(date +%s)
info "watchdog: SIGSTOP to pid $pid (NRestarts=$restarts)"
# Never "kill -STOP 0": that would stop this script's own process group.
[ "$pid" -gt 1 ] 2>/dev/null && kill -STOP "$pid"
if wait_until 120 sh -c "[ \$(systemctl show -p NRestarts --value traceed) -gt $restarts ]" \
	&& wait_until 240 is_active; then
	newpid=$(prop MainPID)
	if [ "$newpid" != "$pid" ] && journalctl -b -u traceed.service -o cat | grep -qi "watchdog timeout"; then
		pass watchdog-restart "SIGSTOP pid $pid -> watchdog timeout -> active again as pid $newpid after $(($(date +%s) - t0)) s (WatchdogSec=$wd)"
	else
		fail watchdog-restart "pid $pid -> $newpid, no 'watchdog timeout' in the journal"
		dump
	fi
else
	fail watchdog-restart "no restart: NRestarts=$(prop NRestarts) state $(prop ActiveState)"
	dump
fi

# 8. Clean stop: STOPPING=1, exit 0.
info "step 8 at $(uptime_s)s"
systemctl stop traceed.service
if [ "$(prop Result)" = success ] && journal_has "stopped"; then
	pass clean-stop "Result=success, ExecMainStatus=$(prop ExecMainStatus)"
else
	fail clean-stop "Result=$(prop Result) status=$(prop ExecMainStatus)"
fi

info "systemd-analyze security: $(systemd-analyze security traceed.service 2>/dev/null | tail -1)"
echo "BOOTTEST DONE pass=$PASS fail=$FAIL"
systemctl poweroff --no-block
