#!/usr/bin/env bash
# Benchmark /api/turn credential issuance (requests/s) against an axum "hello" route
# (`kibitz-loadgen hello-server`) on the same machine in the same run. Target: turn >= 80 %
# of hello.
#
#   bench/turn.sh                 full run (~1.5 min): 3 rounds x (2 s warm-up + 10 s) each
#   bench/turn.sh --quick         ~20 s sanity run: 2 rounds x (1 s + 3 s)
#   bench/turn.sh --only hello    just one server (hello | turn)
#   bench/turn.sh --no-build      skip cargo build
#
# Runs alternate hello, turn, hello, turn, ...; each gets a fresh server pinned to core 0
# and `wrk` pinned to core 1, both at nice $BENCH_NICE (default -10 when root; 0 turns it
# off). Knobs: WRK_CONNS (64), WRK_THREADS (1), ROUNDS, TURN_CMD, TURN_PATH, HELLO_CMD.
# Raw wrk logs, server logs and per-run JSON go to target/bench/turn-<timestamp>/.
set -euo pipefail

# ---- server commands: $PORT is filled in when a server starts ----
TURN_CMD=${TURN_CMD:-'target/release/kibitz turn-api --listen 127.0.0.1:$PORT --turn-secret benchsecret --turn-host 127.0.0.1 --turn-rate-per-minute 0'}
TURN_PATH=${TURN_PATH:-/api/turn}
HELLO_CMD=${HELLO_CMD:-'target/release/kibitz-loadgen hello-server --port $PORT'}
HELLO_PATH=/hello
TARGET_RATIO=0.80
WRK_CONNS=${WRK_CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}

cd "$(dirname "$0")/.."
ROOT=$(pwd)
LG="$ROOT/target/release/kibitz-loadgen"

QUICK=0
BUILD=1
SERVERS=(hello turn)
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    --only)
        shift
        case "${1:-}" in
        hello | turn) SERVERS=("$1") ;;
        *) echo "--only takes hello or turn" >&2; exit 2 ;;
        esac
        ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

if [[ $QUICK -eq 1 ]]; then
    ROUNDS=${ROUNDS:-2} WARMUP=1 DURATION=3
else
    ROUNDS=${ROUNDS:-3} WARMUP=2 DURATION=10
fi

# shellcheck source=bench/lib.sh
source bench/lib.sh

# ---- tools and build ----
if ! command -v wrk >/dev/null; then
    echo "wrk not found; installing it" >&2
    if [[ $(id -u) -eq 0 ]]; then apt-get install -y wrk; else sudo apt-get install -y wrk; fi
fi
for tool in jq curl taskset; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done
if [[ $BUILD -eq 1 ]]; then
    if [[ " ${SERVERS[*]} " == *" turn "* ]]; then
        cargo build --release -p kibitz-cli ||
            echo "warning: building kibitz-cli failed; 'turn' will likely not start" >&2
    fi
    cargo build --release -p kibitz-loadgen
fi

OUT="$ROOT/target/bench/turn-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
echo "results in $OUT"
warn_if_busy

# wrk reports exact figures (latencies in µs) through this hook; only `done` is defined,
# so wrk keeps its fast path (no per-request Lua).
cat >"$OUT/report.lua" <<'EOF'
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'RESULT {"requests":%.0f,"duration_us":%.0f,"rps":%.1f,"lat_mean_us":%.1f,' ..
        '"lat_p50_us":%.0f,"lat_p90_us":%.0f,"lat_p99_us":%.0f,"lat_p999_us":%.0f,' ..
        '"lat_max_us":%.0f,"err_connect":%.0f,"err_read":%.0f,"err_write":%.0f,' ..
        '"err_status":%.0f,"err_timeout":%.0f}\n',
        summary.requests, summary.duration, summary.requests / summary.duration * 1e6,
        latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
EOF

# start_server NAME LOGFILE: sets SERVER_PID and PORT; returns 1 unless its path answers 200.
start_server() {
    local name=$1 log=$2 template path code
    case "$name" in
    hello) template=$HELLO_CMD path=$HELLO_PATH ;;
    turn) template=$TURN_CMD path=$TURN_PATH ;;
    esac
    launch_server "$name" "$template" "$log" || return 1
    code=$(curl -sS -o "$OUT/$name.sample" -w '%{http_code}' "http://127.0.0.1:$PORT$path" || true)
    if [[ $code != 200 ]]; then
        echo "error: GET $path on $name answered ${code:-nothing}, not 200:" >&2
        head -c 300 "$OUT/$name.sample" >&2 || true
        echo >&2
        stop_server
        return 1
    fi
}

cpu_ticks() { # utime + stime of PID, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# run_one NAME ROUND: one fresh server, a warm-up, then the measured wrk run.
run_one() {
    local name=$1 round=$2 path base url t0 t1 wall
    case "$name" in
    hello) path=$HELLO_PATH ;;
    turn) path=$TURN_PATH ;;
    esac
    base="$OUT/$name-$round"
    echo "{}" >"$base.json"
    start_server "$name" "$base.server.log" || return 0
    url="http://127.0.0.1:$PORT$path"
    local wrk=(nice -n "$NICE" taskset -c "$LOADGEN_CORE" wrk -t"$WRK_THREADS" -c"$WRK_CONNS")
    "${wrk[@]}" -d"${WARMUP}s" "$url" >"$base.warmup.log" 2>&1 || true
    t0=$(cpu_ticks "$SERVER_PID")
    local TIMEFORMAT='%U %S %R'
    if ! { time "${wrk[@]}" -d"${DURATION}s" --latency -s "$OUT/report.lua" "$url" \
        >"$base.log" 2>&1; } 2>"$base.time"; then
        echo "error: wrk failed for $name:" >&2
        tail -5 "$base.log" >&2
        stop_server
        return 0
    fi
    t1=$(cpu_ticks "$SERVER_PID")
    stop_server
    local hz
    hz=$(getconf CLK_TCK)
    read -r wu ws wall <"$base.time"
    grep '^RESULT ' "$base.log" | tail -1 | sed 's/^RESULT //' |
        jq --arg name "$name" --argjson round "$round" \
            --argjson srv "$(((t1 - t0) * 1000000 / hz))" \
            --argjson wrk_cpu "$(awk -v u="$wu" -v s="$ws" 'BEGIN { print (u + s) * 1e6 }')" \
            --argjson wall "$wall" \
            '. + {server: $name, round: $round,
                  server_cpu_us_per_req: ((($srv / .requests) * 100 | round) / 100),
                  server_cpu_pct: ($srv / .duration_us * 100 | round),
                  wrk_cpu_pct: ($wrk_cpu / ($wall * 1e6) * 100 | round),
                  errors: (.err_connect + .err_read + .err_write + .err_status + .err_timeout)}' \
            >"$base.json" || true
    jq -r '"  \(.server) #\(.round): \(.rps | round) req/s, p50 \(.lat_p50_us) µs, p99 \(.lat_p99_us) µs, errors \(.errors), server CPU \(.server_cpu_pct) %, wrk CPU \(.wrk_cpu_pct) %"' \
        "$base.json" 2>/dev/null || true
}

echo "== $ROUNDS rounds of ${DURATION}s (after ${WARMUP}s warm-up), wrk -t$WRK_THREADS -c$WRK_CONNS"
for round in $(seq "$ROUNDS"); do
    for name in "${SERVERS[@]}"; do
        run_one "$name" "$round"
    done
done

# ---- table ----
jq -s '.' "$OUT"/*-[0-9]*.json >"$OUT/runs.json" 2>/dev/null || echo '[]' >"$OUT/runs.json"
med() { # med SERVER FIELD: median over the rounds that produced figures
    jq -r --arg s "$1" --arg f "$2" '
        [.[] | select(.server == $s and .requests != null) | .[$f]] | sort
        | if length == 0 then empty
          elif length % 2 == 1 then .[length / 2 | floor]
          else (.[length / 2 - 1] + .[length / 2]) / 2 end
        | if . >= 100 then round else (. * 100 | round) / 100 end' "$OUT/runs.json"
}
all() { # all SERVER FIELD: every round's figure
    jq -r --arg s "$1" --arg f "$2" '
        [.[] | select(.server == $s and .requests != null) | .[$f] | round | tostring]
        | join(" / ")' "$OUT/runs.json"
}
sum() { # sum SERVER FIELD
    jq -r --arg s "$1" --arg f "$2" '
        [.[] | select(.server == $s and .requests != null) | .[$f]]
        | if length == 0 then empty else add end' "$OUT/runs.json"
}
ratio() {
    awk -v t="$1" -v h="$2" 'BEGIN { if (t == "" || h == "" || h + 0 == 0) print "-"; else printf "%.2f", t / h }'
}
ROWS=(
    "req/s (median)|med|rps"
    "req/s (each round)|all|rps"
    "latency p50 (µs, median)|med|lat_p50_us"
    "latency p99 (µs, median)|med|lat_p99_us"
    "latency max (µs, median)|med|lat_max_us"
    "server CPU µs per request|med|server_cpu_us_per_req"
    "server CPU (% of core)|med|server_cpu_pct"
    "wrk CPU (% of core)|med|wrk_cpu_pct"
    "errors (all rounds)|sum|errors"
)
{
    echo
    echo "| figure | hello | turn | turn/hello |"
    echo "|---|---:|---:|---:|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r label fn field <<<"$row"
        h=$($fn hello "$field")
        t=$($fn turn "$field")
        if [[ $fn == med ]]; then r=$(ratio "$t" "$h"); else r="-"; fi
        echo "| $label | ${h:--} | ${t:--} | $r |"
    done
    echo
    r=$(ratio "$(med turn rps)" "$(med hello rps)")
    if [[ $r == - ]]; then
        echo "turn/hello: - (need figures for both servers)"
    elif awk -v r="$r" -v t="$TARGET_RATIO" 'BEGIN { exit !(r >= t) }'; then
        echo "turn/hello req/s = $r (target >= $TARGET_RATIO): PASS"
    else
        echo "turn/hello req/s = $r (target >= $TARGET_RATIO): FAIL"
    fi
    # Less sensitive to other work on the machine than req/s: requests per server CPU second.
    c=$(ratio "$(med hello server_cpu_us_per_req)" "$(med turn server_cpu_us_per_req)")
    [[ $c == - ]] || echo "turn/hello requests per server CPU second = $c"
    echo "(wrk -t$WRK_THREADS -c$WRK_CONNS, $ROUNDS x ${DURATION}s; server on core $SERVER_CORE, wrk on core $LOADGEN_CORE, nice $NICE; load average at start $load1)"
} | tee "$OUT/table.md"
