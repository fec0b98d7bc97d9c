#!/usr/bin/env bash
# Benchmark our PeerJS signalling broker against the reference server (peer@1.0.2).
#
#   bench/run.sh                    full run (~3 min on an idle machine)
#   bench/run.sh --quick            ~1 min sanity run with small numbers
#   bench/run.sh --only reference   just one server (ours | reference)
#   bench/run.sh --no-build         skip cargo build
#
# Each scenario gets a fresh server pinned to core 0; the load generator runs
# pinned to core 1. Raw logs and RESULT json go to target/bench/<timestamp>/.
# Both run at nice $BENCH_NICE (default -10 when root) so background work on
# the machine disturbs the figures less; BENCH_NICE=0 turns that off.
set -euo pipefail

# ---- server commands: $PORT and $LIMIT are filled in when a server starts ----
OURS_CMD=${OURS_CMD:-'target/release/kibitz signal --listen 127.0.0.1:$PORT --concurrent-limit $LIMIT --per-ip-connections 0 --msg-rate 1000000 --msg-burst 1000000 --alive-timeout-ms 3600000'}
REF_CMD=${REF_CMD:-'node tests/node/node_modules/peer/dist/bin/peerjs.js --host 127.0.0.1 --port $PORT --alive_timeout 3600000 --concurrent_limit $LIMIT'}
LIMIT=20000

cd "$(dirname "$0")/.."
ROOT=$(pwd)
LG="$ROOT/target/release/kibitz-loadgen"

QUICK=0
BUILD=1
SERVERS=(ours reference)
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    --only)
        shift
        case "${1:-}" in
        ours | reference) SERVERS=("$1") ;;
        *) echo "--only takes ours or reference" >&2; exit 2 ;;
        esac
        ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=bench/lib.sh
source bench/lib.sh

# ---- scenarios ----
if [[ $QUICK -eq 1 ]]; then
    IDLE_ARGS=(idle --conns 1000 --heartbeat-ms 5000 --hold-secs 5)
    RELAY_ARGS=(relay --pairs 20 --size 200 --window 16 --secs 4 --warmup-secs 1)
    PACED_ARGS=(paced --pairs 20 --rate 5000 --size 200 --secs 4 --warmup-secs 1)
    CHURN_ARGS=(churn --rate 500 --secs 4)
else
    IDLE_ARGS=(idle --conns 10000 --heartbeat-ms 5000 --hold-secs 20)
    RELAY_ARGS=(relay --pairs 100 --size 200 --window 16 --secs 15 --warmup-secs 2)
    PACED_ARGS=(paced --pairs 100 --rate 40000 --size 200 --secs 15 --warmup-secs 2)
    CHURN_ARGS=(churn --rate 5000 --secs 10)
fi
SCENARIOS=(idle relay paced churn)

# ---- build and install ----
if [[ $BUILD -eq 1 ]]; then
    if [[ " ${SERVERS[*]} " == *" ours "* ]]; then
        cargo build --release -p kibitz-cli -p kibitz-loadgen ||
            echo "warning: building kibitz-cli failed; 'ours' will likely not start" >&2
    fi
    cargo build --release -p kibitz-loadgen
fi
if [[ " ${SERVERS[*]} " == *" reference "* && ! -f tests/node/node_modules/peer/package.json ]]; then
    npm ci --prefix tests/node || npm install --prefix tests/node
fi

OUT="$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
echo "results in $OUT"
warn_if_busy

# start_server NAME LOGFILE: sets SERVER_PID and PORT; returns 1 if it never listened.
start_server() {
    local template
    case "$1" in
    ours) template=$OURS_CMD ;;
    reference) template=$REF_CMD ;;
    esac
    launch_server "$1" "$template" "$2" || return 1
    sleep 0.3 # let it settle
}

run_scenario() {
    local name=$1 scenario=$2 args
    case "$scenario" in
    idle) args=("${IDLE_ARGS[@]}") ;;
    relay) args=("${RELAY_ARGS[@]}") ;;
    paced) args=("${PACED_ARGS[@]}") ;;
    churn) args=("${CHURN_ARGS[@]}") ;;
    esac
    local base="$OUT/$name-$scenario"
    echo "{}" >"$base.json"
    if ! start_server "$name" "$base.server.log"; then
        return 0
    fi
    echo "== $name: ${args[*]}"
    if nice -n "$NICE" taskset -c "$LOADGEN_CORE" "$LG" --label "$name" --port "$PORT" \
        --server-pid "$SERVER_PID" "${args[@]}" >"$base.log" 2>&1; then
        grep '^RESULT ' "$base.log" | tail -1 | sed 's/^RESULT //' >"$base.json" || true
        grep -v '^RESULT ' "$base.log" | tail -1
    else
        echo "error: loadgen failed for $name $scenario:" >&2
        tail -5 "$base.log" >&2
    fi
    stop_server
}

for name in "${SERVERS[@]}"; do
    for scenario in "${SCENARIOS[@]}"; do
        run_scenario "$name" "$scenario"
    done
done

# ---- table ----
val() { # val SERVER SCENARIO JQ-EXPR
    local f="$OUT/$1-$2.json"
    [[ -s $f ]] && jq -r "($3) // empty" "$f" 2>/dev/null || true
}
ROWS=(
    "idle|connections opened|.opened"
    "idle|failed + dropped|if .opened then (.failed // 0) + (.dropped // 0) else empty end"
    "idle|time to open all (s)|.open_secs"
    "idle|server RSS per conn (KiB)|.server_rss_per_conn_kb"
    "idle|server RSS total (MiB)|((.server_rss_kb // empty) / 1024 * 10 | round / 10)"
    "idle|server CPU during hold (% of core)|.server_cpu_pct"
    "relay|delivered msg/s|.msg_per_s"
    "relay|server CPU µs per msg|.server_cpu_us_per_op"
    "relay|server CPU (% of core)|.server_cpu_pct"
    "relay|latency p50 (µs)|.lat_p50_us"
    "relay|latency p99 (µs)|.lat_p99_us"
    "relay|errors|if .delivered then (.errors // 0) + (.conn_failures // 0) else empty end"
    "relay|loadgen CPU (% of core)|.loadgen_cpu_pct"
    "paced|delivered msg/s|.delivered_per_s"
    "paced|lost|.lost"
    "paced|server CPU µs per msg|.server_cpu_us_per_op"
    "paced|server CPU (% of core)|.server_cpu_pct"
    "paced|latency p50 (µs)|.lat_p50_us"
    "paced|latency p99 (µs)|.lat_p99_us"
    "paced|latency p99.9 (µs)|.lat_p999_us"
    "paced|loadgen CPU (% of core)|.loadgen_cpu_pct"
    "churn|opens/s|.opens_per_s"
    "churn|errors|.errors"
    "churn|open latency p50 (µs)|.open_p50_us"
    "churn|open latency p99 (µs)|.open_p99_us"
    "churn|open latency max (µs)|.open_max_us"
    "churn|server CPU µs per open|.server_cpu_us_per_op"
)
{
    echo
    echo "| scenario | figure | ours | reference | ours/ref |"
    echo "|---|---|---:|---:|---:|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r scenario label expr <<<"$row"
        o=$(val ours "$scenario" "$expr")
        r=$(val reference "$scenario" "$expr")
        ratio=$(awk -v o="$o" -v r="$r" 'BEGIN {
            if (o == "" || r == "" || r + 0 == 0) print "-"
            else if (o / r < 0.1) printf "%.2g", o / r
            else printf "%.2f", o / r }')
        echo "| $scenario | $label | ${o:--} | ${r:--} | $ratio |"
    done
} | tee "$OUT/table.md"
