#!/usr/bin/env bash
# Benchmark `kibitz hub` (LAN.md, issue 17) with real Chromium clients on 127.0.0.1 that connect
# as the web does (tests/node/hub-page.js): (a) setRemoteDescription -> `id` p50/p99 over 100
# sequential connects; (b) 400 sessions held at once (4 pages x 100 peer connections), hub RSS
# per session and its idle CPU; (c) frames routed per second and hub CPU per frame, 4 senders
# in one room, 20,000 frames each. Prints a summary table (tests/node/hub-bench.mjs).
#
#   bench/hub.sh                   the full run (release build)
#   bench/hub.sh --quick           10 connects, 20 sessions, 2 x 500 frames: it runs and prints
#                                  figures (scripts/test's smoke; debug build, no targets)
#   bench/hub.sh --no-build        skip cargo build
#   extra flags go to hub-bench.mjs: --connects N --sessions N --session-pages N --senders N --frames N
#
# The clients share the 2 cores with the hub: (c) is bounded by Chromium's sending as much as
# by the hub; the hub's CPU per frame is the figure that carries over. Output goes to
# target/bench/hub-<time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PROFILE=release
BUILD=1
ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) PROFILE=debug; ARGS+=(--quick) ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) ARGS+=("$1") ;;
    esac
    shift
done

if ((BUILD)); then
    if [[ $PROFILE == release ]]; then cargo build --release -q -p kibitz-cli; else cargo build -q -p kibitz-cli; fi
fi
export RUST_LOG=${RUST_LOG:-warn}
OUT="$ROOT/target/bench/hub-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"
node tests/node/hub-bench.mjs --kibitz "$ROOT/target/$PROFILE/kibitz" "${ARGS[@]}" | tee "$OUT/results.txt"
echo "results: $OUT/results.txt"
