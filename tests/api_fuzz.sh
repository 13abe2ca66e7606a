#!/usr/bin/env bash
# Fuzz the API from its own OpenAPI document with schemathesis: no 5xx, no
# answer that breaks the documented shapes, no hang. Runs as root against
# the release build (after `make test`), in a few minutes at most.
#
# schemathesis speaks HTTP over TCP, so socat bridges a loopback-only port
# to the daemon's Unix socket. follow is removed from the fuzzed copy of
# the document (events and alerts): a stream only ends when the client
# closes it, which a fuzzer would report as a hang (tests/tests/api.rs
# covers it instead).
# Every check runs except positive_data_acceptance: since > until is a 400
# that a per-parameter schema cannot express.
#
# Env: FUZZ_EXAMPLES (per operation, default 300), FUZZ_VENV (default
# target/fuzz-venv), TRACEED / TRACECTL binaries (default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
examples=${FUZZ_EXAMPLES:-300}
venv=${FUZZ_VENV:-$root/target/fuzz-venv}
traceed=${TRACEED:-$root/target/release/traceed}
work=$(mktemp -d /tmp/traceed-fuzz.XXXXXX)
daemon_pid= socat_pid=

cleanup() {
    [ -n "$socat_pid" ] && kill "$socat_pid" 2>/dev/null || true
    if [ -n "$daemon_pid" ]; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

command -v socat >/dev/null || { echo "api_fuzz: socat is missing (apt-get install socat)"; exit 1; }
if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "--- installing schemathesis into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'schemathesis>=4,<5'
fi
"$venv/bin/schemathesis" --version

sock=$work/api.sock
: >"$work/traceed.toml"
"$traceed" --config "$work/traceed.toml" --state-dir "$work" --socket "$sock" \
    2>"$work/traceed.log" &
daemon_pid=$!
for _ in $(seq 100); do
    if [ -S "$sock" ] && curl -sf --unix-socket "$sock" http://localhost/healthz >/dev/null 2>&1; then
        break
    fi
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/traceed.log"; echo "api_fuzz: traceed died"; exit 1; }
    sleep 0.2
done
curl -sf --unix-socket "$sock" http://localhost/healthz >/dev/null || { cat "$work/traceed.log"; exit 1; }

# A free loopback port for the bridge.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$sock" &
socat_pid=$!
for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done

# Some history so queries return rows (the daemon records these).
for _ in $(seq 20); do /bin/true; done

curl -sf "http://127.0.0.1:$port/v1/openapi.json" | python3 -c '
import json, sys
doc = json.load(sys.stdin)
op = doc["paths"]["/v1/events"]["get"]
op["parameters"] = [p for p in op["parameters"] if p["name"] != "follow"]
del op["responses"]["200"]["content"]["application/x-ndjson"]
op = doc["paths"]["/v1/alerts"]["get"]
op["parameters"] = [p for p in op["parameters"] if p["name"] != "follow"]
json.dump(doc, sys.stdout)
' >"$work/openapi.json"

# Negative (schema-violating) requests may be refused with any 4xx the API
# documents: an oversized one is a 414/431, not a 400.
cat >"$work/schemathesis.toml" <<'TOML'
[checks.negative_data_rejection]
expected-statuses = ["400", "403", "404", "405", "413", "414", "431"]
TOML

echo "--- schemathesis: $examples examples per operation"
set +e
# Long generated URLs are cut in the log; `st replay <id>` shows them whole.
# From the scratch dir: schemathesis keeps a .schemathesis/ cache in its cwd.
cd "$work"
timeout 170 "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$work/openapi.json" \
    --url "http://127.0.0.1:$port" \
    --checks all --exclude-checks positive_data_acceptance \
    --max-examples "$examples" \
    --request-timeout 10 \
    --suppress-health-check all \
    ${FUZZ_SEED:+--seed "$FUZZ_SEED"} \
    --no-color 2>&1 | cut -c1-400
status=${PIPESTATUS[0]}
set -e
cd "$root"

# The daemon must still be up and answering after all of that.
curl -sf --unix-socket "$sock" http://localhost/healthz >/dev/null || { echo "api_fuzz: daemon stopped answering"; status=1; }
if grep -E ' (ERROR|panicked)' "$work/traceed.log"; then
    echo "api_fuzz: the daemon logged errors"
    status=1
fi
if [ "$status" -ne 0 ]; then
    echo "api_fuzz: FAILED (status $status)"
    tail -n 50 "$work/traceed.log"
fi
exit "$status"
