#!/usr/bin/env bash
# Benchmark the broker's cluster mode: NODES broker nodes (`kibitz signal --redis-url`) on one
# redis-server, then the same on a 3-master Redis Cluster (16 registry shards), all on
# 127.0.0.1; one table with a column per registry.
#
#   bench/cluster.sh                  full run: 5 nodes x 19,900 idle peers, then relay
#   bench/cluster.sh --quick          5 nodes x 1,000 idle peers, short relay
#   bench/cluster.sh --single-only    only one redis-server (no Redis Cluster column)
#   bench/cluster.sh --cluster-only   only the Redis Cluster
#   bench/cluster.sh --per-node N     idle peers per node (each process is capped at
#                                     `ulimit -n` open files: a node needs N + ~15)
#   bench/cluster.sh --no-build       skip cargo build
#   bench/cluster.sh --no-idle        only the relay runs
#   bench/cluster.sh --no-links       nodes without node links (every message through Redis only)
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
# Node links on (direct copies beside the Redis path); --no-links measures Redis alone.
LINK_ARGS=(--cluster-link 127.0.0.1:0)
BACKENDS=(single cluster)
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick)
        PER_NODE=1000 HOLD=5
        RELAY=(relay --pairs 20 --size 200 --window 16 --secs 4 --warmup-secs 1)
        PING=(relay --pairs 20 --size 200 --window 1 --secs 4 --warmup-secs 1)
        ;;
    --no-idle) IDLE=0 ;;
    --single-only) BACKENDS=(single) ;;
    --cluster-only) BACKENDS=(cluster) ;;
    --per-node) shift; PER_NODE=$1 ;;
    --no-build) BUILD=0 ;;
    --no-links) LINK_ARGS=() ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
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
command -v redis-cli >/dev/null || { echo "redis-cli is needed (apt-get install redis-tools)" >&2; exit 1; }
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

# ---- the registry: one redis-server, or a 3-master Redis Cluster ----
RPIDS=()
start_single() {
    local port
    port=$("$LG" free-port)
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$DIR" \
        >"$DIR/redis.log" 2>&1 &
    RPIDS=($!)
    PIDS+=($!)
    wait_port "$port" "$!" || { echo "redis-server did not start" >&2; exit 1; }
    REDIS_ARGS=(--redis-url "redis://127.0.0.1:$port/")
}
start_cluster() {
    local hosts=() port
    RPIDS=()
    for m in 1 2 3; do
        # The cluster bus listens on port + 10000.
        while :; do
            port=$("$LG" free-port)
            [[ $port -lt 55000 ]] && ! (exec 3<>"/dev/tcp/127.0.0.1/$((port + 10000))") 2>/dev/null && break
        done
        redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$DIR" \
            --cluster-enabled yes --cluster-config-file "$DIR/nodes-$port.conf" \
            >"$DIR/redis-$m.log" 2>&1 &
        RPIDS+=($!)
        PIDS+=($!)
        wait_port "$port" "$!" || { echo "redis-server $m did not start" >&2; exit 1; }
        hosts+=("127.0.0.1:$port")
    done
    redis-cli --cluster create "${hosts[@]}" --cluster-replicas 0 --cluster-yes >"$DIR/create.log" 2>&1 ||
        { echo "redis-cli --cluster create failed; see $DIR/create.log" >&2; exit 1; }
    for h in "${hosts[@]}"; do
        for _ in $(seq 300); do
            redis-cli -h 127.0.0.1 -p "${h#*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
            sleep 0.1
        done
    done
    REDIS_ARGS=(--redis-url "redis+cluster://$(IFS=,; echo "${hosts[*]}")/")
}

rss_kb() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status"))); done; echo "$t"; }
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done; echo "$t"; }
run_backend() { # run_backend single|cluster: fills $DIR
    local kind=$1
    PORTS=() NPIDS=()
    if [[ $kind == cluster ]]; then start_cluster; else start_single; fi
    for i in $(seq "$NODES"); do
        port=$("$LG" free-port)
        "$KIBITZ" signal --listen "127.0.0.1:$port" "${REDIS_ARGS[@]}" \
            --concurrent-limit 1000000 --per-ip-connections 0 --max-queued-total 1000000 \
            --msg-rate 1000000 --msg-burst 1000000 "${LINK_ARGS[@]}" >"$DIR/node$i.log" 2>&1 &
        NPIDS+=($!)
        PIDS+=($!)
        PORTS+=("$port")
        wait_port "$port" "$!" || { echo "node $i did not start; see $DIR/node$i.log" >&2; exit 1; }
    done
    sleep 1
    redis_rss0=$(rss_kb "${RPIDS[@]}")
    redis_cpu0=$(cpu_ticks "${RPIDS[@]}")
    redis_t0=$EPOCHREALTIME

    # ---- idle: one load generator per node, all at once ----
    if [[ $IDLE -eq 1 ]]; then
    echo "== $kind: idle: $NODES nodes x $PER_NODE peers, heartbeat 5 s, hold ${HOLD}s"
    LGPIDS=()
    for i in $(seq 0 $((NODES - 1))); do
        "$LG" --label "node$((i + 1))" --port "${PORTS[$i]}" --server-pid "${NPIDS[$i]}" \
            --open-timeout-secs 60 \
            idle --conns "$PER_NODE" --heartbeat-ms 5000 --hold-secs "$HOLD" \
            >"$DIR/idle-node$((i + 1)).log" 2>&1 &
        LGPIDS+=($!)
    done
    # Redis is sampled by hand around the hold (the load generators measure their own node).
    sleep $((HOLD / 2))
    redis_rss1=$(rss_kb "${RPIDS[@]}")
    for p in "${LGPIDS[@]}"; do wait "$p" || echo "warning: a load generator failed" >&2; done
    redis_cpu1=$(cpu_ticks "${RPIDS[@]}")
    redis_t1=$EPOCHREALTIME
    for i in $(seq "$NODES"); do
        grep '^RESULT ' "$DIR/idle-node$i.log" | sed 's/^RESULT //' >"$DIR/idle-node$i.json" || echo '{}' >"$DIR/idle-node$i.json"
    done
    jq -s --argjson rr0 "$redis_rss0" --argjson rr1 "$redis_rss1" \
        --argjson rc0 "$redis_cpu0" --argjson rc1 "$redis_cpu1" --argjson nodes "$NODES" \
        --argjson secs "$(awk -v a="$redis_t0" -v b="$redis_t1" 'BEGIN { print b - a }')" '
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
            cpu_us_per_peer_per_s: (if $opened > 0 then ($node_cpu * 10000 / $opened | . * 100 | round / 100) else null end),
            redis_cpu_pct: (if $secs > 0 then (($rc1 - $rc0) / $secs | . * 100 | round / 100) else null end)
          }' "$DIR"/idle-node*.json >"$DIR/idle.json"
    else
        echo '{}' >"$DIR/idle.json"
    fi

    # ---- relay: same-node and cross-node pairs in the same run ----
    echo "== $kind: ${RELAY[*]}: half the pairs on node 1, half across node 1 and node 2"
    sleep 2
    "$LG" --label cluster --port "${PORTS[0]}" --alt-port "${PORTS[1]}" \
        --server-pid "${NPIDS[0]},${NPIDS[1]},$(IFS=,; echo "${RPIDS[*]}")" "${RELAY[@]}" >"$DIR/relay.log" 2>&1 ||
        echo "warning: relay load generator failed; see $DIR/relay.log" >&2
    grep '^RESULT ' "$DIR/relay.log" | sed 's/^RESULT //' >"$DIR/relay.json" || echo '{}' >"$DIR/relay.json"
    echo "== $kind: ${PING[*]}: the same split, one message in flight per direction"
    sleep 1
    "$LG" --label cluster-ping --port "${PORTS[0]}" --alt-port "${PORTS[1]}" \
        --server-pid "${NPIDS[0]},${NPIDS[1]},$(IFS=,; echo "${RPIDS[*]}")" "${PING[@]}" >"$DIR/ping.log" 2>&1 ||
        echo "warning: ping load generator failed; see $DIR/ping.log" >&2
    grep '^RESULT ' "$DIR/ping.log" | sed 's/^RESULT //' >"$DIR/ping.json" || echo '{}' >"$DIR/ping.json"
    # Stop this registry and its nodes before the next one.
    for p in "${NPIDS[@]}" "${RPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${NPIDS[@]}" "${RPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
for b in "${BACKENDS[@]}"; do
    DIR="$OUT/$b"
    mkdir -p "$DIR"
    run_backend "$b"
done

# ---- table: a column per registry ----
# row LABEL FILE JQ: one table row, the jq expression evaluated on each registry's FILE.
row() {
    local line="| $1 |" b v
    for b in "${BACKENDS[@]}"; do
        v=$(jq -r "$3" "$OUT/$b/$2" 2>/dev/null || echo -)
        line+=" $v |"
    done
    echo "$line"
}
ratio_tp='if (.same_msg_per_s // 0) > 0 then ((.cross_msg_per_s // 0) / .same_msg_per_s * 1000 | round / 1000) else "-" end'
ratio_p99='if (.same_lat_p99_us // 0) > 0 then ((.cross_lat_p99_us // 0) / .same_lat_p99_us * 100 | round / 100) else "-" end'
{
    echo
    head="| figure |" sep="|---|"
    for b in "${BACKENDS[@]}"; do
        case $b in
        single) head+=" one Redis |" ;;
        cluster) head+=" Redis Cluster, 3 masters, 16 shards |" ;;
        esac
        sep+="---:|"
    done
    echo "$head"
    echo "$sep"
    if [[ $IDLE -eq 1 ]]; then
        row "idle: nodes" idle.json '.nodes'
        row "idle: peers opened (all nodes)" idle.json '.peers_opened'
        row "idle: failed + dropped" idle.json '.failed_or_dropped'
        row "idle: time to open all (s)" idle.json '.time_to_open_all_s'
        row "idle: node RSS total (MiB)" idle.json '.node_rss_total_mib'
        row "idle: Redis RSS growth (MiB)" idle.json '.redis_rss_total_mib'
        row "idle: RSS per peer, nodes + Redis (KiB)" idle.json '.rss_per_peer_kib'
        row "idle: node CPU during hold (% of a core, summed)" idle.json '.node_cpu_pct_sum'
        row "idle: CPU per peer (µs per second)" idle.json '.cpu_us_per_peer_per_s'
        row "idle: Redis CPU, open + hold (% of a core, all masters)" idle.json '.redis_cpu_pct // "-"'
    fi
    row "saturated relay: same-node msg/s" relay.json '.same_msg_per_s // "-"'
    row "saturated relay: cross-node msg/s" relay.json '.cross_msg_per_s // "-"'
    row "saturated relay: same-node latency p50 / p99 (µs)" relay.json '"\(.same_lat_p50_us // "-") / \(.same_lat_p99_us // "-")"'
    row "saturated relay: cross-node latency p50 / p99 (µs)" relay.json '"\(.cross_lat_p50_us // "-") / \(.cross_lat_p99_us // "-")"'
    row "saturated relay: CPU of node 1 + node 2 + Redis (% of a core)" relay.json '.server_cpu_pct // "-"'
    row "saturated relay: errors" relay.json '(.errors // 0) + (.conn_failures // 0)'
    row "saturated relay: cross-node / same-node throughput (target ≥ 0.5)" relay.json "$ratio_tp"
    row "ping-pong: same-node msg/s" ping.json '.same_msg_per_s // "-"'
    row "ping-pong: cross-node msg/s" ping.json '.cross_msg_per_s // "-"'
    row "ping-pong: same-node latency p50 / p99 (µs)" ping.json '"\(.same_lat_p50_us // "-") / \(.same_lat_p99_us // "-")"'
    row "ping-pong: cross-node latency p50 / p99 (µs)" ping.json '"\(.cross_lat_p50_us // "-") / \(.cross_lat_p99_us // "-")"'
    row "ping-pong: errors" ping.json '(.errors // 0) + (.conn_failures // 0)'
    row "ping-pong: cross-node p99 / same-node p99 (target ≤ 2)" ping.json "$ratio_p99"
} | tee "$OUT/table.md"
