#!/usr/bin/env bash
# Benchmark what client addresses behind proxies cost (issue 18): --trusted-proxy (the client
# IP read from X-Forwarded-For on every request) and --proxy-protocol (a PROXY header read on
# every connection), each against the same server with them off, in one run. Target: every
# variant's throughput within 5 % of its "off" baseline.
#   0. in-process, no sockets (kibitz-http's proxy_cost example): ns per client-IP lookup
#      and per PROXY header, the part other work on the machine cannot blur
#   1. /api/turn, keep-alive (wrk -c$WRK_CONNS):    off | xff
#   2. /api/turn, a new connection per request
#      (kibitz-loadgen http):                       off | xff | v1 | v2 | v2-alone
#   3. broker connects: TCP, [PROXY header], upgrade, OPEN, close
#      (kibitz-loadgen connect):                    off | xff | v1 | v2
# off: no proxy flags, plain requests. xff: --trusted-proxy 127.0.0.1 and X-Forwarded-For
# naming a synthetic client (198.18.0.0/15, never contacted). v1/v2: --proxy-protocol and a
# PROXY v1/v2 header naming one, sent with the request in group 2 (what reading the header
# costs) and in a segment of its own in group 3 and v2-alone (as HAProxy and nginx send it on
# connect: the server then also reads twice).
#
#   bench/proxy.sh              full run (~5 min): 3 rounds x (1 s warm-up + 6 s) per variant
#   bench/proxy.sh --quick      smoke (~45 s): 1 round x (1 s + 2 s), debug build (scripts/test);
#                               it must run and print its tables, no target is asserted
#   bench/proxy.sh --no-build   skip cargo build
#
# Rounds alternate the variants; each run gets a fresh server pinned to core 0 and the load
# on core 1, both at nice $BENCH_NICE (see bench/lib.sh). Server CPU per request/connect is
# printed too: it is less sensitive to other work on the machine than the rates. Knobs:
# ROUNDS, WORKERS (32), WRK_CONNS (64). Output: target/bench/proxy-<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PROFILE=release
BUILD=1
QUICK=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) QUICK=1; PROFILE=debug ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
if ((QUICK)); then
    ROUNDS=${ROUNDS:-1} WARMUP=1 DURATION=2 WORKERS=${WORKERS:-8}
else
    ROUNDS=${ROUNDS:-3} WARMUP=1 DURATION=6 WORKERS=${WORKERS:-32}
fi
WRK_CONNS=${WRK_CONNS:-64}
TARGET=0.95

for tool in jq taskset wrk; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required (scripts/test installs it)" >&2; exit 1; }
done
if ((BUILD)); then
    if [[ $PROFILE == release ]]; then
        cargo build --release -q -p kibitz-cli -p kibitz-loadgen
        cargo build --release -q -p kibitz-http --example proxy_cost
    else
        cargo build -q -p kibitz-cli -p kibitz-loadgen
        cargo build -q -p kibitz-http --example proxy_cost
    fi
fi
BIN="$ROOT/target/$PROFILE/kibitz"
LG="$ROOT/target/$PROFILE/kibitz-loadgen"
# shellcheck source=bench/lib.sh
source bench/lib.sh

OUT="$ROOT/target/bench/proxy-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
echo "results in $OUT"
warn_if_busy

echo "== in-process cost ($PROFILE build)"
"$ROOT/target/$PROFILE/examples/proxy_cost" "$( ((QUICK)) && echo 200000 || echo 2000000)" | tee "$OUT/in-process.txt"

TURN_CMD="$BIN turn-api --listen 127.0.0.1:\$PORT --drain-grace-ms 0 --turn-secret benchsecret --turn-host 127.0.0.1 --turn-rate-per-minute 0"
SIGNAL_CMD="$BIN signal --listen 127.0.0.1:\$PORT --drain-grace-ms 0 --per-ip-connections 0 --concurrent-limit 1000000"

server_flags() { # server_flags VARIANT
    case "$1" in
    off) echo "" ;;
    xff) echo "--trusted-proxy 127.0.0.1" ;;
    v1 | v2 | v2-alone) echo "--proxy-protocol" ;;
    esac
}

cat >"$OUT/report.lua" <<'EOF'
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format('RESULT {"requests":%.0f,"rps":%.1f,"p50_us":%.0f,"p99_us":%.0f,"errors":%.0f}\n',
        summary.requests, summary.requests / summary.duration * 1e6,
        latency:percentile(50), latency:percentile(99),
        e.connect + e.read + e.write + e.status + e.timeout))
end
EOF

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
HZ=$(getconf CLK_TCK)

# run_one GROUP VARIANT ROUND: a fresh server, then the load; appends one JSON line.
run_one() {
    local group=$1 variant=$2 round=$3 base template rc=0
    base="$OUT/$group-$variant-$round"
    case "$group" in
    turn-keepalive | turn-conn) template="$TURN_CMD $(server_flags "$variant")" ;;
    connect) template="$SIGNAL_CMD $(server_flags "$variant")" ;;
    esac
    if ! launch_server "$group/$variant" "$template" "$base.server.log"; then
        echo "$group $variant #$round" >>"$OUT/failed"
        return 0
    fi
    local load=(nice -n "$NICE" taskset -c "$LOADGEN_CORE")
    local proxied=(--proxied "$variant")
    case "$variant" in
    off) proxied=(--proxied none) ;;
    v2-alone) proxied=(--proxied v2 --proxy-header-alone) ;;
    esac
    local lg=("${load[@]}" "$LG" --port "$PORT" --src-ips 1 "${proxied[@]}" --server-pid "$SERVER_PID")
    case "$group" in
    turn-keepalive)
        local hdr=()
        [[ $variant == xff ]] && hdr=(-H "X-Forwarded-For: 198.18.0.1")
        local url="http://127.0.0.1:$PORT/api/turn"
        "${load[@]}" wrk -t1 -c"$WRK_CONNS" -d"${WARMUP}s" "${hdr[@]}" "$url" >/dev/null 2>&1 || true
        local t0 t1
        t0=$(cpu_ticks "$SERVER_PID")
        "${load[@]}" wrk -t1 -c"$WRK_CONNS" -d"${DURATION}s" --latency -s "$OUT/report.lua" "${hdr[@]}" "$url" \
            >"$base.log" 2>&1 || rc=$?
        t1=$(cpu_ticks "$SERVER_PID")
        grep '^RESULT ' "$base.log" | tail -1 | sed 's/^RESULT //' |
            jq -c --argjson cpu "$(((t1 - t0) * 1000000 / HZ))" \
                '{rate: .rps, p50_us, p99_us, errors, cpu_us_per_op: (if .requests > 0 then ($cpu / .requests * 100 | round) / 100 else null end)}' \
                >"$base.json" 2>/dev/null || rc=1
        ;;
    turn-conn)
        "${lg[@]}" http --path /api/turn --workers "$WORKERS" --requests-per-conn 1 \
            --secs "$DURATION" --warmup-secs "$WARMUP" >"$base.log" 2>&1 || rc=$?
        grep '^RESULT ' "$base.log" | tail -1 | sed 's/^RESULT //' |
            jq -c '{rate: .rps, p50_us: .req_p50_us, p99_us: .req_p99_us, errors, cpu_us_per_op: .server_cpu_us_per_op}' \
                >"$base.json" 2>/dev/null || rc=1
        ;;
    connect)
        "${lg[@]}" connect --workers "$WORKERS" --secs "$DURATION" --warmup-secs "$WARMUP" \
            >"$base.log" 2>&1 || rc=$?
        grep '^RESULT ' "$base.log" | tail -1 | sed 's/^RESULT //' |
            jq -c '{rate: .opens_per_s, p50_us: .open_p50_us, p99_us: .open_p99_us, errors, cpu_us_per_op: .server_cpu_us_per_op}' \
                >"$base.json" 2>/dev/null || rc=1
        ;;
    esac
    stop_server
    if ((rc)) || [[ ! -s $base.json ]]; then
        echo "  $group $variant #$round: failed; see $base.log" >&2
        tail -3 "$base.log" >&2 || true
        echo "$group $variant #$round" >>"$OUT/failed"
        return 0
    fi
    if [[ $(jq -r '.errors' "$base.json") != 0 ]]; then
        echo "$group $variant #$round (errors)" >>"$OUT/failed"
    fi
    jq -c --arg g "$group" --arg v "$variant" --argjson r "$round" '. + {group: $g, variant: $v, round: $r}' \
        "$base.json" >>"$OUT/runs.jsonl"
    jq -r --arg g "$group" --arg v "$variant" --argjson r "$round" \
        '"  \($g) \($v) #\($r): \(.rate | round)/s, p50 \(.p50_us) µs, p99 \(.p99_us) µs, errors \(.errors), server CPU \(.cpu_us_per_op) µs/op"' \
        "$base.json"
}

GROUPS_=("turn-keepalive:off xff" "turn-conn:off xff v1 v2 v2-alone" "connect:off xff v1 v2")
: >"$OUT/runs.jsonl"
echo "== $ROUNDS round(s) of ${DURATION}s after ${WARMUP}s warm-up; $WORKERS loadgen workers, wrk -c$WRK_CONNS"
for round in $(seq "$ROUNDS"); do
    for g in "${GROUPS_[@]}"; do
        for v in ${g#*:}; do
            run_one "${g%%:*}" "$v" "$round"
        done
    done
done

med() { # med GROUP VARIANT FIELD
    jq -rs --arg g "$1" --arg v "$2" --arg f "$3" '
        [.[] | select(.group == $g and .variant == $v and .[$f] != null) | .[$f]] | sort
        | if length == 0 then empty
          elif length % 2 == 1 then .[length / 2 | floor]
          else (.[length / 2 - 1] + .[length / 2]) / 2 end
        | if . >= 100 then round else (. * 100 | round) / 100 end' "$OUT/runs.jsonl"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.3f", a / b }'; }
describe() {
    case "$1" in
    turn-keepalive) echo "/api/turn, keep-alive (wrk -c$WRK_CONNS), requests/s" ;;
    turn-conn) echo "/api/turn, one connection per request ($WORKERS workers), requests/s" ;;
    connect) echo "broker connects: TCP + upgrade + OPEN + close ($WORKERS workers), connects/s" ;;
    esac
}
verdicts=()
{
    echo
    echo "### in-process ($PROFILE build)"
    echo
    sed 's/^/    /' "$OUT/in-process.txt"
    for g in "${GROUPS_[@]}"; do
        group=${g%%:*}
        echo
        echo "### $(describe "$group")"
        echo
        echo "| variant | rate (median) | vs off | server CPU µs/op | vs off | p50 µs | p99 µs | errors |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        base_rate=$(med "$group" off rate)
        base_cpu=$(med "$group" off cpu_us_per_op)
        for v in ${g#*:}; do
            rate=$(med "$group" "$v" rate)
            cpu=$(med "$group" "$v" cpu_us_per_op)
            errs=$(jq -s --arg g "$group" --arg v "$v" '[.[] | select(.group == $g and .variant == $v) | .errors] | add // "-"' "$OUT/runs.jsonl")
            echo "| $v | ${rate:--} | $(ratio "$rate" "$base_rate") | ${cpu:--} | $(ratio "$cpu" "$base_cpu") | $(med "$group" "$v" p50_us) | $(med "$group" "$v" p99_us) | $errs |"
            if [[ $v != off ]]; then
                r=$(ratio "$rate" "$base_rate")
                if [[ $r == - ]]; then
                    verdicts+=("$group $v: no figures")
                elif awk -v r="$r" -v t="$TARGET" 'BEGIN { exit !(r >= t) }'; then
                    verdicts+=("$group $v: $r of off: PASS")
                else
                    verdicts+=("$group $v: $r of off: FAIL")
                fi
            fi
        done
    done
    echo
    if ((QUICK)); then
        echo "(quick run: debug build, short windows; figures only, no target)"
    else
        echo "target: throughput >= $TARGET of off"
        printf '  %s\n' "${verdicts[@]}"
    fi
    echo "($ROUNDS round(s) x ${DURATION}s; server on core $SERVER_CORE, load on core $LOADGEN_CORE, nice $NICE; load average at start $load1)"
} | tee "$OUT/table.md"
if [[ -s $OUT/failed ]]; then
    echo "error: runs that failed or counted errors: $(paste -sd, "$OUT/failed")" >&2
    exit 1
fi
