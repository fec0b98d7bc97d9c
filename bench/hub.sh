#!/usr/bin/env bash
# Benchmark `kibitz hub` (LAN.md, issue 17) on 127.0.0.1, in two parts:
#  1. real Chromium clients that connect as the web does (tests/node/hub-bench.mjs, pages from
#     tests/node/hub-page.js): (a) setRemoteDescription -> `id` p50/p99 over 100 sequential
#     connects; (b) 400 sessions held at once (4 pages x 100 peer connections), hub RSS per
#     session and idle CPU; (c) frames routed per second and hub CPU per frame, 4 senders in one
#     room, 20,000 frames each;
#  2. str0m clients (kibitz-loadgen's hub_load, same synthesised answer): (b) 1,000 sessions,
#     (c) 4 senders x 50,000 frames - cheaper clients, so the hub is more of the bottleneck.
# Each part prints a summary table; each runs against a fresh hub.
#
#   bench/hub.sh                   the full run (release build)
#   bench/hub.sh --quick           small counts: it runs and prints figures (scripts/test's
#                                  smoke; debug build, no targets)
#   bench/hub.sh --no-build        skip cargo build
#   --load-sessions N --load-frames N   part 2's counts; other flags go to hub-bench.mjs
#                                  (--connects N --sessions N --session-pages N --senders N --frames N)
#
# The clients share the 2 cores with the hub, so (c)'s rate is bounded by the senders as much
# as by the hub; the hub's CPU per frame is the figure that carries over. Output goes to
# target/bench/hub-<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PROFILE=release
BUILD=1
ARGS=()
LOAD_SESSIONS=1000
LOAD_FRAMES=50000
LOAD_HOLD=10
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) PROFILE=debug; ARGS+=(--quick); LOAD_SESSIONS=30; LOAD_FRAMES=1000; LOAD_HOLD=2 ;;
    --no-build) BUILD=0 ;;
    --load-sessions) shift; LOAD_SESSIONS=$1 ;;
    --load-frames) shift; LOAD_FRAMES=$1 ;;
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    *) ARGS+=("$1") ;;
    esac
    shift
done

if ((BUILD)); then
    if [[ $PROFILE == release ]]; then
        cargo build --release -q -p kibitz-cli -p kibitz-loadgen
    else
        cargo build -q -p kibitz-cli -p kibitz-loadgen
    fi
fi
export RUST_LOG=${RUST_LOG:-warn}
OUT="$ROOT/target/bench/hub-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
KIBITZ="$ROOT/target/$PROFILE/kibitz"

echo "== part 1: Chromium clients"
node tests/node/hub-bench.mjs --kibitz "$KIBITZ" "${ARGS[@]}" | tee "$OUT/results.txt"

echo "== part 2: str0m clients (hub_load)"
HUB_PID=""
stop_hub() {
    if [[ -n $HUB_PID ]]; then
        kill "$HUB_PID" 2>/dev/null || true
        wait "$HUB_PID" 2>/dev/null || true
        HUB_PID=""
    fi
}
trap stop_hub EXIT
ulimit -n 20000 2>/dev/null || echo "warning: ulimit -n is $(ulimit -n): hub_load needs one socket per session" >&2
"$KIBITZ" hub --port 0 --advertise 127.0.0.1 --http 0 --fixed-id false --no-turn --mdns false \
    --max-sessions 100000 --state "$OUT/relay-state.json" >"$OUT/hub.out" 2>"$OUT/hub.err" &
HUB_PID=$!
BLOB=""
for _ in $(seq 200); do
    BLOB=$(sed -n 's/^BLOB //p' "$OUT/hub.out")
    [[ -n $BLOB ]] && break
    kill -0 "$HUB_PID" 2>/dev/null || { cat "$OUT/hub.err" >&2; exit 1; }
    sleep 0.1
done
[[ -n $BLOB ]] || { echo "error: kibitz hub printed no BLOB" >&2; exit 1; }
"$ROOT/target/$PROFILE/hub_load" --blob "$BLOB" --hub-pid "$HUB_PID" \
    --sessions "$LOAD_SESSIONS" --frames "$LOAD_FRAMES" --hold-secs "$LOAD_HOLD" | tee -a "$OUT/results.txt"
stop_hub
echo "results: $OUT/results.txt"
