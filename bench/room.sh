#!/usr/bin/env bash
# Benchmark a room of Rust participants (kibitz-join over kibitz-rtc, one process) against our
# broker: time from launch to full roster and to a full data mesh, idle CPU and memory per
# participant, chat fan-out latency p50/p99 — for a 2-person room (the baseline) and a
# 20-person room, in the same run.
#
#   bench/room.sh              N=20 (PARTICIPANTS), 100 messages (MESSAGES)
#   bench/room.sh --no-build   skip cargo build
#
# The broker (`kibitz signal`) is pinned to core 0, the participants to core 1.
# Logs go to target/bench/room-<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LG="$ROOT/target/release/kibitz-loadgen"
PARTICIPANTS=${PARTICIPANTS:-20}
MESSAGES=${MESSAGES:-100}
BUILD=1
[[ ${1:-} == --no-build ]] && BUILD=0
OUT="$ROOT/target/bench/room-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
# shellcheck source=bench/lib.sh
source bench/lib.sh

if ((BUILD)); then
    cargo build --release -q -p kibitz-cli -p kibitz-loadgen
    cargo build --release -q -p kibitz-join --example room_bench
fi
BENCH="$ROOT/target/release/examples/room_bench"
warn_if_busy

for n in 2 "$PARTICIPANTS"; do
    launch_server signal 'target/release/kibitz signal --listen 127.0.0.1:$PORT' "$OUT/broker-$n.log"
    taskset -c "$LOADGEN_CORE" "$BENCH" "ws://127.0.0.1:$PORT" "$n" "$MESSAGES" | tee -a "$OUT/results.txt"
    stop_server
done
echo "results: $OUT/results.txt"
