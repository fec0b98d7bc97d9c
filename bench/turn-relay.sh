#!/usr/bin/env bash
# Benchmark the embedded TURN relay (`kibitz serve --turn-embedded`, crates/kibitz-turn)
# against coturn 4.6 (`turnserver`) on the same loopback load in one run. Target: at least
# coturn's throughput at no more server CPU per relayed packet.
#
#   bench/turn-relay.sh              full run (~2 min): 5 rounds x 2 loads x (1 s + 3 s) each
#   bench/turn-relay.sh --quick      ~20 s smoke: 1 round x 2 loads x (0.5 s + 1.5 s)
#   bench/turn-relay.sh --no-build   skip cargo build
#
# Load (`kibitz-loadgen turn-relay`): PAIRS pairs of TURN clients, REST credentials; each pair
# allocates two relays, binds a channel each way and A blasts 200-byte ChannelData at B. One
# delivered packet crosses the server twice (client -> relay -> peer relay -> client). Two
# loads per server: LOW_RATE pps offered (both servers keep up: CPU per packet) and HIGH_RATE
# pps (beyond one core: delivered packets/s is the throughput). Runs alternate embedded,
# coturn, embedded, ...; each gets a fresh server pinned to core 0, the load generator pinned
# to core 1, both at nice $BENCH_NICE (default -10 as root). Knobs: PAIRS (2), LOW_RATE
# (20000), HIGH_RATE (150000), SERVER_THREADS (nproc), ROUNDS, PROFILE (release), EMBEDDED_CMD,
# COTURN_CMD. Logs and per-run JSON go to
# target/bench/turn-relay-<timestamp>/.
set -euo pipefail

# coturn runs one relay thread (and listening socket) per CPU; the embedded relay one
# listening socket per tokio worker: give both the same count, or a contended core's
# scheduler share decides the throughput.
SERVER_THREADS=${SERVER_THREADS:-$(nproc)}
EMBEDDED_CMD=${EMBEDDED_CMD:-'env TOKIO_WORKER_THREADS=$SERVER_THREADS target/$PROFILE/kibitz serve --listen 127.0.0.1:$PORT --turn-secret benchsecret --turn-host 127.0.0.1 --turn-port $PORT --turn-embedded --turn-embedded-bind 127.0.0.1 --turn-embedded-allow-loopback'}
COTURN_CMD=${COTURN_CMD:-'turnserver -n --no-cli --no-tls --no-dtls --log-file=stdout --simple-log --listening-ip=127.0.0.1 --relay-ip=127.0.0.1 --listening-port=$PORT --use-auth-secret --static-auth-secret=benchsecret --realm=bench --allow-loopback-peers --userdb=$OUT/turndb-$PORT --pidfile=$OUT/turnserver-$PORT.pid'}
PAIRS=${PAIRS:-2}
LOW_RATE=${LOW_RATE:-20000}
HIGH_RATE=${HIGH_RATE:-150000}

# Binaries from target/$PROFILE (scripts/test's smoke uses the debug ones it already built).
PROFILE=${PROFILE:-release}

cd "$(dirname "$0")/.."
ROOT=$(pwd)
LG="$ROOT/target/$PROFILE/kibitz-loadgen"

QUICK=0
BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ $QUICK -eq 1 ]]; then
    ROUNDS=${ROUNDS:-1} WARMUP=0.5 DURATION=1.5
else
    # Short, many, alternating rounds: on a shared machine others' load comes and goes.
    ROUNDS=${ROUNDS:-5} WARMUP=1 DURATION=3
fi

# shellcheck source=bench/lib.sh
source bench/lib.sh

for tool in jq taskset turnserver; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required (turnserver: Debian package coturn)" >&2; exit 1; }
done
if [[ $BUILD -eq 1 ]]; then
    if [[ $PROFILE == debug ]]; then
        cargo build -p kibitz-cli -p kibitz-loadgen
    else
        cargo build --profile "$PROFILE" -p kibitz-cli -p kibitz-loadgen
    fi
fi

OUT="$ROOT/target/bench/turn-relay-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
echo "results in $OUT"
echo "coturn: $(turnserver --version 2>/dev/null | head -1)"
warn_if_busy

# run_one NAME ROUND: one fresh server, both loads.
run_one() {
    local name=$1 round=$2 template base load rate
    case "$name" in
    embedded)
        template=${EMBEDDED_CMD//\$SERVER_THREADS/$SERVER_THREADS}
        template=${template//\$PROFILE/$PROFILE}
        ;;
    coturn) template=${COTURN_CMD//\$OUT/$OUT} ;;
    esac
    base="$OUT/$name-$round"
    launch_server "$name" "$template" "$base.server.log" || return 0
    for load in low high; do
        if [[ $load == low ]]; then rate=$LOW_RATE; else rate=$HIGH_RATE; fi
        if ! nice -n "$NICE" taskset -c "$LOADGEN_CORE" "$LG" --server-pid "$SERVER_PID" --label "$name" \
            turn-relay --server "127.0.0.1:$PORT" --secret benchsecret --pairs "$PAIRS" \
            --rate "$rate" --warmup-secs "$WARMUP" --secs "$DURATION" >"$base-$load.log" 2>&1; then
            echo "error: loadgen failed against $name:" >&2
            tail -3 "$base-$load.log" >&2
            continue
        fi
        grep '^RESULT ' "$base-$load.log" | tail -1 | sed 's/^RESULT //' |
            jq --arg name "$name" --arg load "$load" --argjson round "$round" \
                '. + {server: $name, load: $load, round: $round}' >"$base-$load.json" || true
        jq -r '"  \(.server) #\(.round) \(.load): offered \(.offered_pps) pps, delivered \(.delivered_pps | round) pps (\(.loss_pct) % lost), server CPU \(.server_cpu_pct) % = \(.server_cpu_us_per_op) µs per delivered packet"' \
            "$base-$load.json" 2>/dev/null || true
    done
    stop_server
}

echo "== $ROUNDS round(s) of ${DURATION}s (after ${WARMUP}s warm-up), $PAIRS pairs, loads $LOW_RATE and $HIGH_RATE pps"
for round in $(seq "$ROUNDS"); do
    for name in embedded coturn; do
        run_one "$name" "$round"
    done
done

jq -s '.' "$OUT"/*-[0-9]*-*.json >"$OUT/runs.json" 2>/dev/null || echo '[]' >"$OUT/runs.json"
med() { # med SERVER LOAD FIELD: median over rounds
    jq -r --arg s "$1" --arg l "$2" --arg f "$3" '
        [.[] | select(.server == $s and .load == $l and .[$f] != null) | .[$f]] | sort
        | if length == 0 then empty
          elif length % 2 == 1 then .[length / 2 | floor]
          else (.[length / 2 - 1] + .[length / 2]) / 2 end
        | if . >= 100 then round else (. * 100 | round) / 100 end' "$OUT/runs.json"
}
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}
printf '\n%-44s %12s %12s %8s\n' "median over rounds" embedded coturn ratio
row() { # row LABEL LOAD FIELD
    local e c
    e=$(med embedded "$2" "$3")
    c=$(med coturn "$2" "$3")
    printf '%-44s %12s %12s %8s\n' "$1" "${e:--}" "${c:--}" "$(ratio "$e" "$c")"
}
row "delivered pps at $HIGH_RATE offered (throughput)" high delivered_pps
row "loss % at $HIGH_RATE offered" high loss_pct
row "server CPU µs/packet at $HIGH_RATE offered" high server_cpu_us_per_op
row "delivered pps at $LOW_RATE offered" low delivered_pps
row "loss % at $LOW_RATE offered" low loss_pct
row "server CPU µs/packet at $LOW_RATE offered" low server_cpu_us_per_op
row "server CPU % at $LOW_RATE offered" low server_cpu_pct
row "server RSS KiB at $LOW_RATE offered" low server_rss_kb

# Capacity: packets one core-second of the server relays at saturation (1e6 / CPU µs per
# packet at HIGH_RATE): on a machine others share, the raw throughput above mostly measures
# how much of core 0 each server was given.
cap_e=$(awk -v c="$(med embedded high server_cpu_us_per_op)" 'BEGIN { if (c > 0) printf "%.0f", 1e6 / c }')
cap_c=$(awk -v c="$(med coturn high server_cpu_us_per_op)" 'BEGIN { if (c > 0) printf "%.0f", 1e6 / c }')
printf '%-44s %12s %12s %8s\n' "packets per server CPU-second at $HIGH_RATE" "${cap_e:--}" "${cap_c:--}" "$(ratio "$cap_e" "$cap_c")"

tput_e=$(med embedded high delivered_pps)
tput_c=$(med coturn high delivered_pps)
cpu_e=$(med embedded low server_cpu_us_per_op)
cpu_c=$(med coturn low server_cpu_us_per_op)
if [[ $PROFILE == debug ]]; then
    echo "target: not judged with debug binaries (the real figures: bench/turn-relay.sh)"
elif [[ -z $tput_e || -z $tput_c || -z $cpu_e || -z $cpu_c ]]; then
    echo "target: no verdict (a run produced no figures; see $OUT)"
elif awk -v te="$tput_e" -v tc="$tput_c" -v ce="$cpu_e" -v cc="$cpu_c" 'BEGIN { exit !(te >= tc && ce <= cc) }'; then
    echo "target met: throughput $tput_e >= $tput_c pps, CPU $cpu_e <= $cpu_c µs per packet"
else
    echo "target MISSED: throughput $tput_e vs coturn $tput_c pps, CPU $cpu_e vs $cpu_c µs per packet"
fi
