#!/usr/bin/env bash
# Recovery figures for the fault suite (tests/tests/faults.rs): runs each scenario RUNS times,
# one at a time, and prints per scenario its recovery times (min / median / max) and in how many
# runs each invariant broke. Debug binaries, as the tests build them.
#
#   bench/faults.sh                 5 runs of each scenario
#   bench/faults.sh --runs N        N runs of each
#   bench/faults.sh --quick         1 run of each (a smoke)
#
# Scenarios: `kibitz serve` under a live room (three `kibitz join` processes and a room member
# on the official `peerjs` client in headless Chromium) stopped cleanly (SIGTERM: the baseline)
# and killed (SIGKILL), each restarted on the same port at once: seconds from the signal until
# everyone is in one room with one coordinator again. Redis frozen (SIGSTOP, 6 s) under three
# nodes, and one node cut off from Redis (6 s, in a network namespace; needs root): time from
# the end of the fault until a claim on the faulted node is granted and until the first
# message sent after it crosses nodes. Invariants counted: an id OPEN twice at once, a message
# neither delivered nor EXPIREd, an EXPIRE after its message's deadline (+0.5 s).
# Raw logs go to target/bench/faults-<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=5
while [[ $# -gt 0 ]]; do
    case "$1" in
    --runs) shift; RUNS=$1 ;;
    --quick) RUNS=1 ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
OUT=target/bench/faults-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
cargo build -q -p kibitz-cli
BIN=$(cargo test -p kibitz-e2e --test faults --no-run 2>&1 | sed -n 's/.*Executable tests\/faults.rs (\(.*\))/\1/p' | tail -n 1)
[[ -x $BIN ]] || { echo "could not build the fault suite" >&2; exit 1; }

read -r load1 _ </proc/loadavg
echo "bench/faults.sh: $RUNS run(s) per scenario, load average $load1; logs in $OUT"

SCENARIOS=(
    broker_stopped_cleanly_under_a_live_room_and_restarted_on_the_same_port
    broker_killed_under_a_live_room_and_restarted_on_the_same_port
    redis_frozen_mid_relay
    a_node_cut_off_from_redis
)
for s in "${SCENARIOS[@]}"; do
    for i in $(seq "$RUNS"); do
        # A test binary runs with its package root as the working directory, as under cargo test.
        (cd tests && "../$BIN" --exact "$s" --nocapture) >"$OUT/$s.$i.log" 2>&1 || true
    done
done

# Durations as Rust's Debug prints them (4.2s, 868.8ms, 3.5µs, 120ns), in seconds.
summary() {
    awk '
        function secs(d) {
            if (d ~ /ms$/) return substr(d, 1, length(d) - 2) / 1000
            if (d ~ /µs$/) return substr(d, 1, length(d) - 3) / 1e6
            if (d ~ /ns$/) return substr(d, 1, length(d) - 2) / 1e9
            if (d ~ /s$/) return substr(d, 1, length(d) - 1) + 0
            return -1
        }
        function add(k, d,   v) { v = secs(d); if (v >= 0) vals[k] = vals[k] " " v }
        function after(s, key,   i, rest) {
            i = index(s, key); if (!i) return ""
            rest = substr(s, i + length(key)); sub(/^Some\(/, "", rest); sub(/[),;: ].*/, "", rest)
            return rest
        }
        FNR == 1 { runs++ }
        /^broker SIG/ { add("back in one room after the signal", after($0, "one room again ")) }
        /a claim on the faulted node granted in/ {
            add("a claim on the faulted node granted after the fault", after($0, "granted in "))
            add("first message alice->carol delivered after the fault", after($0, "alice→carol delivered in "))
            add("first message carol->bob delivered after the fault", after($0, "carol→bob in "))
        }
        function bad(k) { if (!((k, FILENAME) in seen)) { seen[k, FILENAME] = 1; nbad[k]++ } }
        /a second client got OPEN/ { bad("an id OPEN twice at once") }
        /neither delivered nor EXPIREd/ { bad("a message neither delivered nor EXPIREd") }
        /not EXPIREd by their deadline/ { bad("an EXPIRE after its deadline") }
        /^test .* FAILED/ { if (!(FILENAME in fl)) { fl[FILENAME] = 1; failed++ } }
        END {
            for (k in vals) {
                n = split(substr(vals[k], 2), a, " ")
                for (i = 2; i <= n; i++) { v = a[i]; for (j = i - 1; j >= 1 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
                printf "  %-55s n=%d  min %.2f s  median %.2f s  max %.2f s\n", k, n, a[1], a[int((n + 1) / 2)], a[n]
            }
            for (k in nbad) printf "  %-55s in %d of %d runs\n", k, nbad[k], runs
            printf "  %d of %d runs failed\n", failed + 0, runs
        }
    ' "$@"
}
for s in "${SCENARIOS[@]}"; do
    echo "$s:"
    summary "$OUT/$s".*.log
done
