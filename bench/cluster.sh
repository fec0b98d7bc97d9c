#!/usr/bin/env bash
# Benchmark the broker's cluster mode: NODES broker nodes (`kibitz signal --redis-url`) on one
# redis-server, all on 127.0.0.1.
#
#   bench/cluster.sh                  full run: 5 nodes x 19,900 idle peers, then relay
#   bench/cluster.sh --quick          5 nodes x 1,000 idle peers, short relay
#   bench/cluster.sh --per-node N     idle peers per node (each process is capped at
#                                     `ulimit -n` open files: a node needs N + ~15)
#   bench/cluster.sh --no-build       skip cargo build
#   bench/cluster.sh --no-idle        only the relay runs
#   PROFILE=debug bench/cluster.sh …  use debug binaries (the smoke in scripts/test)
#
# idle: one load generator per node holds N peers that only heartbeat (every 5 s); the
# figures are the sum over every node plus Redis: memory per peer and CPU per peer.
# relay: closed-loop OFFER relay between pairs, half of them with both ends on node 1
# (same-node) and half across node 1 and node 2 (cross-node, through Redis), in the same run:
# once saturated (16 messages in flight per direction: throughput) and once ping-pong (one in
# flight: latency at light load). Targets: cross-node saturated throughput at least 50 % of
# same-node, cross-node ping-pong p99 at most 2x same-node (printed as ratios; not asserted).
# Raw logs and RESULT json go to target/bench/cluster-<timestamp>/.
set -euo pipefail

NODES=5
PER_NODE=19900
HOLD=20
RELAY=(relay --pairs 100 --size 200 --window 16 --secs 10 --warmup-secs 2)
PING=(relay --pairs 100 --size 200 --window 1 --secs 10 --warmup-secs 2)
BUILD=1
IDLE=1
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick)
        PER_NODE=1000 HOLD=5
        RELAY=(relay --pairs 20 --size 200 --window 16 --secs 4 --warmup-secs 1)
        PING=(relay --pairs 20 --size 200 --window 1 --secs 4 --warmup-secs 1)
        ;;
    --no-idle) IDLE=0 ;;
    --per-node) shift; PER_NODE=$1 ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PROFILE=${PROFILE:-release}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
LG="$BIN/kibitz-loadgen"
KIBITZ="$BIN/kibitz"
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
ulimit -n 20000 || true
FILES=$(ulimit -n)
export RUST_LOG=${RUST_LOG:-warn}

if [[ $BUILD -eq 1 ]]; then
    if [[ $PROFILE == release ]]; then
        cargo build --release -p kibitz-cli -p kibitz-loadgen
    else
        cargo build -p kibitz-cli -p kibitz-loadgen
    fi
fi

OUT="$ROOT/target/bench/cluster-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
echo "results in $OUT (open files per process: $FILES)"
read -r load1 _ </proc/loadavg
echo "load average before: $load1 (other work on this machine skews the figures)"

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() { # wait_port PORT PID
    for _ in $(seq 100); do
        kill -0 "$2" 2>/dev/null || return 1
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

RPORT=$("$LG" free-port)
redis-server --bind 127.0.0.1 --port "$RPORT" --save "" --appendonly no --dir "$OUT" \
    >"$OUT/redis.log" 2>&1 &
RPID=$!
PIDS+=("$RPID")
wait_port "$RPORT" "$RPID" || { echo "redis-server did not start" >&2; exit 1; }

PORTS=()
NPIDS=()
for i in $(seq "$NODES"); do
    port=$("$LG" free-port)
    "$KIBITZ" signal --listen "127.0.0.1:$port" --redis-url "redis://127.0.0.1:$RPORT/" \
        --concurrent-limit 1000000 --per-ip-connections 0 --max-queued-total 1000000 \
        --msg-rate 1000000 --msg-burst 1000000 >"$OUT/node$i.log" 2>&1 &
    NPIDS+=($!)
    PIDS+=($!)
    PORTS+=("$port")
    wait_port "$port" "$!" || { echo "node $i did not start; see $OUT/node$i.log" >&2; exit 1; }
done
sleep 1
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
redis_rss0=$(rss_kb "$RPID")
redis_cpu0=$(cpu_ticks "$RPID")

# ---- idle: one load generator per node, all at once ----
if [[ $IDLE -eq 1 ]]; then
echo "== idle: $NODES nodes x $PER_NODE peers, heartbeat 5 s, hold ${HOLD}s"
LGPIDS=()
for i in $(seq 0 $((NODES - 1))); do
    "$LG" --label "node$((i + 1))" --port "${PORTS[$i]}" --server-pid "${NPIDS[$i]}" \
        --open-timeout-secs 60 \
        idle --conns "$PER_NODE" --heartbeat-ms 5000 --hold-secs "$HOLD" \
        >"$OUT/idle-node$((i + 1)).log" 2>&1 &
    LGPIDS+=($!)
done
# Redis is sampled by hand around the hold (the load generators measure their own node).
sleep $((HOLD / 2))
redis_rss1=$(rss_kb "$RPID")
for p in "${LGPIDS[@]}"; do wait "$p" || echo "warning: a load generator failed" >&2; done
redis_cpu1=$(cpu_ticks "$RPID")
for i in $(seq "$NODES"); do
    grep '^RESULT ' "$OUT/idle-node$i.log" | sed 's/^RESULT //' >"$OUT/idle-node$i.json" || echo '{}' >"$OUT/idle-node$i.json"
done
jq -s --argjson rr0 "$redis_rss0" --argjson rr1 "$redis_rss1" \
    --argjson rc0 "$redis_cpu0" --argjson rc1 "$redis_cpu1" --argjson nodes "$NODES" '
    (map(.opened // 0) | add) as $opened
    | (map((.failed // 0) + (.dropped // 0)) | add) as $lost
    | (map((.server_rss_open_kb // 0) - (.server_rss_base_kb // 0)) | add) as $node_rss
    | (map(.server_cpu_pct // 0) | add) as $node_cpu
    | (map(.open_secs // 0) | max) as $open_secs
    | {
        nodes: $nodes, peers_opened: $opened, failed_or_dropped: $lost,
        time_to_open_all_s: $open_secs,
        node_rss_total_mib: ($node_rss / 1024 | . * 10 | round / 10),
        redis_rss_total_mib: (($rr1 - $rr0) / 1024 | . * 10 | round / 10),
        rss_per_peer_kib: (if $opened > 0 then (($node_rss + $rr1 - $rr0) / $opened * 100 | round / 100) else null end),
        node_cpu_pct_sum: ($node_cpu | . * 100 | round / 100),
        cpu_us_per_peer_per_s: (if $opened > 0 then ($node_cpu * 10000 / $opened | . * 100 | round / 100) else null end)
      }' "$OUT"/idle-node*.json >"$OUT/idle.json"
echo "redis CPU during the run: $(( (redis_cpu1 - redis_cpu0) )) ticks (1/100 s)"
else
    echo '{}' >"$OUT/idle.json"
fi

# ---- relay: same-node and cross-node pairs in the same run ----
echo "== ${RELAY[*]}: half the pairs on node 1, half across node 1 and node 2"
sleep 2
"$LG" --label cluster --port "${PORTS[0]}" --alt-port "${PORTS[1]}" \
    --server-pid "${NPIDS[0]},${NPIDS[1]},$RPID" "${RELAY[@]}" >"$OUT/relay.log" 2>&1 ||
    echo "warning: relay load generator failed; see $OUT/relay.log" >&2
grep '^RESULT ' "$OUT/relay.log" | sed 's/^RESULT //' >"$OUT/relay.json" || echo '{}' >"$OUT/relay.json"
echo "== ${PING[*]}: the same split, one message in flight per direction"
sleep 1
"$LG" --label cluster-ping --port "${PORTS[0]}" --alt-port "${PORTS[1]}" \
    --server-pid "${NPIDS[0]},${NPIDS[1]},$RPID" "${PING[@]}" >"$OUT/ping.log" 2>&1 ||
    echo "warning: ping load generator failed; see $OUT/ping.log" >&2
grep '^RESULT ' "$OUT/ping.log" | sed 's/^RESULT //' >"$OUT/ping.json" || echo '{}' >"$OUT/ping.json"

# ---- table ----
i=$(cat "$OUT/idle.json")
r=$(cat "$OUT/relay.json")
g=$(cat "$OUT/ping.json")
{
    echo
    echo "| figure | value |"
    echo "|---|---:|"
    [[ $IDLE -eq 1 ]] && jq -r '"| idle: nodes | \(.nodes) |",
        "| idle: peers opened (all nodes) | \(.peers_opened) |",
        "| idle: failed + dropped | \(.failed_or_dropped) |",
        "| idle: time to open all (s) | \(.time_to_open_all_s) |",
        "| idle: node RSS total (MiB) | \(.node_rss_total_mib) |",
        "| idle: Redis RSS growth (MiB) | \(.redis_rss_total_mib) |",
        "| idle: RSS per peer, nodes + Redis (KiB) | \(.rss_per_peer_kib) |",
        "| idle: node CPU during hold (% of a core, summed) | \(.node_cpu_pct_sum) |",
        "| idle: CPU per peer (µs per second) | \(.cpu_us_per_peer_per_s) |"' <<<"$i"
    jq -r '"| saturated relay: same-node msg/s | \(.same_msg_per_s // "-") |",
        "| saturated relay: cross-node msg/s | \(.cross_msg_per_s // "-") |",
        "| saturated relay: same-node latency p50 / p99 (µs) | \(.same_lat_p50_us // "-") / \(.same_lat_p99_us // "-") |",
        "| saturated relay: cross-node latency p50 / p99 (µs) | \(.cross_lat_p50_us // "-") / \(.cross_lat_p99_us // "-") |",
        "| saturated relay: CPU of node 1 + node 2 + Redis (% of a core) | \(.server_cpu_pct // "-") |",
        "| saturated relay: errors | \((.errors // 0) + (.conn_failures // 0)) |",
        "| saturated relay: cross-node / same-node throughput (target ≥ 0.5) | \(if (.same_msg_per_s // 0) > 0 then ((.cross_msg_per_s // 0) / .same_msg_per_s * 1000 | round / 1000) else "-" end) |"' <<<"$r"
    jq -r '"| ping-pong: same-node msg/s | \(.same_msg_per_s // "-") |",
        "| ping-pong: cross-node msg/s | \(.cross_msg_per_s // "-") |",
        "| ping-pong: same-node latency p50 / p99 (µs) | \(.same_lat_p50_us // "-") / \(.same_lat_p99_us // "-") |",
        "| ping-pong: cross-node latency p50 / p99 (µs) | \(.cross_lat_p50_us // "-") / \(.cross_lat_p99_us // "-") |",
        "| ping-pong: errors | \((.errors // 0) + (.conn_failures // 0)) |",
        "| ping-pong: cross-node p99 / same-node p99 (target ≤ 2) | \(if (.same_lat_p99_us // 0) > 0 then ((.cross_lat_p99_us // 0) / .same_lat_p99_us * 100 | round / 100) else "-" end) |"' <<<"$g"
} | tee "$OUT/table.md"
