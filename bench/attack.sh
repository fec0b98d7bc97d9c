#!/usr/bin/env bash
# Memory under attack: CONNS sockets each send the largest allowed message at the allowed rate
# to TARGETS ids that read slowly (and reconnect whenever the broker closes them); the broker's
# RSS must stay under the bound its configured limits imply (the formula is in
# docs/operator.md, "Memory bound"), and a probe pair's relay p99 is measured before the
# attack and during it.
#
#   bench/attack.sh               10,000 attackers, 10 slow targets, 64 KiB at 200/s each, 60 s
#   bench/attack.sh --quick       1,000 attackers, 10 s (the smoke in scripts/test)
#   bench/attack.sh --no-build    skip cargo build
#   bench/attack.sh --probe-after S  start the probe S seconds into the attack (default 0)
#   bench/attack.sh --no-fair     the broker without its inbound gate (--heavy-bytes-per-sec 0),
#                                 to compare the probe's p99 with and without it
#   PROFILE=debug bench/attack.sh …
#
# The broker runs with its default limits, spelled out below (only --per-ip-connections 0 and
# --concurrent-limit differ, since every socket comes from 127.0.0.x). No one machine can send
# 10,000 x 200 x 64 KiB/s: the attackers send as fast as loopback and the broker take it, and
# the script prints the rate reached next to the rate allowed. Logs go to
# target/bench/attack-<timestamp>/.
set -euo pipefail

CONNS=10000
TARGETS=10
SECS=60
PROBE=(paced --pairs 10 --rate 1000 --size 200 --secs 15 --warmup-secs 1 --drain-secs 3)
BUILD=1
HEAVY_RATE=32768       # --heavy-bytes-per-sec (the default; 0 with --no-fair)
HEAVY_BURST=262144     # --heavy-burst-bytes
PROBE_AFTER=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick)
        CONNS=1000 SECS=10
        PROBE=(paced --pairs 10 --rate 1000 --size 200 --secs 4 --warmup-secs 1 --drain-secs 3)
        ;;
    --conns) shift; CONNS=$1 ;;
    --secs) shift; SECS=$1 ;;
    --no-build) BUILD=0 ;;
    --no-fair) HEAVY_RATE=0 ;;
    --heavy-burst) shift; HEAVY_BURST=$1 ;;
    --probe-after) shift; PROBE_AFTER=$1 ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

# The limits the bound is computed from (the broker's defaults).
MAX_FRAME=65536        # --max-frame-bytes
SEND_QUEUE=1048576     # --send-queue-bytes
MSG_RATE=200           # --msg-rate
MSG_BURST=1000         # --msg-burst
Q_PER_DST=200          # --max-queued-per-dst
Q_TOTAL=100000         # --max-queued-total

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
source bench/lib.sh
# The broker and the probe run at NICE; the attackers, the background load, at nice 19 so the
# probe measures the broker rather than a starved load generator next to it.
NICE=${ATTACK_NICE:-0}
bench_bins
bench_out attack
echo "attack: $CONNS attackers -> $TARGETS slow targets, ${MAX_FRAME} B messages at $MSG_RATE/s each," \
    "${SECS}s; --heavy-bytes-per-sec $HEAVY_RATE; load average before $load1; logs in $OUT"
trap stop_bg EXIT

start_broker --per-ip-connections 0 \
    --concurrent-limit 100000 --max-frame-bytes "$MAX_FRAME" --send-queue-bytes "$SEND_QUEUE" \
    --msg-rate "$MSG_RATE" --msg-burst "$MSG_BURST" --max-queued-per-dst "$Q_PER_DST" \
    --max-queued-total "$Q_TOTAL" --heavy-bytes-per-sec "$HEAVY_RATE" \
    --heavy-burst-bytes "$HEAVY_BURST"
result() { grep '^RESULT ' "$1" | tail -1 | sed 's/^RESULT //'; }
# Nanoseconds the broker's threads have spent runnable but waiting for a CPU (schedstat field
# 2): how much of the probe's latency is other processes (the attackers, builds) on the cores.
runq_ns() { cat /proc/"$SPID"/task/*/schedstat 2>/dev/null | awk '{ s += $2 } END { printf "%.0f", s }'; }
now_ns() { date +%s%N; }
RUNQ=()

# What an idle connection costs this broker (the fixed per-connection term of the bound).
lg idle --conns "$CONNS" --hold-secs 2 >"$OUT/idle.log" 2>&1
PER_CONN_KB=$(result "$OUT/idle.log" | jq -r '.server_rss_per_conn_kb')
echo "idle connection: $PER_CONN_KB KiB each (measured over $CONNS)"

r0=$(runq_ns) t0=$(now_ns)
lg --label before "${PROBE[@]}" >"$OUT/probe-before.log" 2>&1
RUNQ+=("$(( ($(runq_ns) - r0) / (($(now_ns) - t0) / 1000) ))")
BEFORE=$(result "$OUT/probe-before.log")
BASE_KB=$(rss_kb)

nice -n 19 "$LG" --port "$PORT" --server-pid "$SPID" --open-timeout-secs 60 attack --conns "$CONNS" --targets "$TARGETS" --size "$MAX_FRAME" --rate "$MSG_RATE" \
    --secs "$SECS" >"$OUT/attack.log" 2>&1 &
APID=$!
PIDS+=("$APID")
for _ in $(seq 1200); do
    grep -q "^attack: " "$OUT/attack.log" && break
    kill -0 "$APID" 2>/dev/null || { echo "attack exited; see $OUT/attack.log" >&2; exit 1; }
    sleep 0.5
done
grep "^attack: " "$OUT/attack.log"
# Let the attack fill every buffer it can before probing.
sleep "$PROBE_AFTER"
r0=$(runq_ns) t0=$(now_ns)
( lg --label during "${PROBE[@]}" >"$OUT/probe-during.log" 2>&1 ) &
PRPID=$!
PIDS+=("$PRPID")
MAX_KB=0
while kill -0 "$APID" 2>/dev/null; do
    r=$(rss_kb 2>/dev/null || echo 0)
    ((r > MAX_KB)) && MAX_KB=$r
    sleep 1
done
wait "$PRPID" || true
RUNQ+=("$(( ($(runq_ns) - r0) / (($(now_ns) - t0) / 1000) ))")
wait "$APID" || echo "warning: attack load generator failed; see $OUT/attack.log" >&2
HWM_KB=$(hwm_kb)
# What the broker itself counted: slow readers closed, offline-queue drops, expiries.
METRICS=$(curl -s "http://127.0.0.1:$PORT/metrics" || true)
metric() { awk -v s="$1" 'index($0, s) == 1 { v = $NF } END { print v + 0 }' <<<"$METRICS"; }
DURING=$(result "$OUT/probe-during.log")
ATTACK=$(result "$OUT/attack.log")

echo
echo "== attack"
echo "$ATTACK" | jq -r '"sent     \(.sent) messages of \(.msg_bytes) B, \(.sent_per_s)/s (\(.sent_mib_per_s) MiB/s) of \(.allowed_per_s)/s allowed; attackers closed by the broker \(.attackers_closed); slow targets saw their close \(.target_kicks) times; broker CPU \(.server_cpu_pct // "-") %"'
echo "broker   closed $(metric 'kibitz_signal_rejected_total{reason="slow_reader"}') slow readers (send queue full)," \
    "dropped $(metric 'kibitz_signal_rejected_total{reason="queue_full"}') messages for offline ids (queue full)," \
    "expired $(metric 'kibitz_signal_expired_total') queues, closed $(metric 'kibitz_signal_rejected_total{reason="rate_limited"}') over the message rate"
echo "gate     $(metric 'kibitz_signal_throttled_reads_total') reads by heavy sockets through the gate;" \
    "$(metric 'kibitz_signal_bytes_total{direction="in"}') B read in all; load average after $(cut -d' ' -f1 /proc/loadavg)"
N=$((CONNS + TARGETS + 20))
awk -v base="$BASE_KB" -v per="$PER_CONN_KB" -v n="$N" -v t="$TARGETS" -v m="$MAX_FRAME" \
    -v q="$SEND_QUEUE" -v qp="$Q_PER_DST" -v qt="$Q_TOTAL" -v peak="$HWM_KB" -v max="$MAX_KB" '
    BEGIN {
        R = 16384; F = m + 256              # read chunk; largest frame out (message + src + header)
        dec = 2 * (m + 14 + R) + 2 * m      # decoder: partial frame + fragments, Vec growth
        ob = 2 * (q + F)                    # one slow reader: queue bound + last frame, Vec growth
        qn = t * qp; if (qn > qt) qn = qt   # offline queues of the targets while they reconnect
        bound = base + n * (per + dec / 1024) + (t * ob + qn * (F + 128)) / 1024
        printf "bound    base %d KiB + %d conns x (%.1f + %.1f KiB decoder) + %d slow x %.0f KiB outbox + %d queued x %.1f KiB = %.0f MiB\n",
            base, n, per, dec / 1024, t, ob / 1024, qn, (F + 128) / 1024, bound / 1024
        printf "measured peak RSS %.0f MiB (VmHWM; highest 1 s sample %.0f MiB) = %.0f %% of the bound  %s\n",
            peak / 1024, max / 1024, 100 * peak / bound, peak <= bound ? "ok" : "FAIL (over the bound)"
    }' | tee "$OUT/bound.txt"
for w in before during; do
    v=$BEFORE q=${RUNQ[0]:-}
    [[ $w == during ]] && v=$DURING q=${RUNQ[1]:-}
    if [[ -n $v ]]; then
        echo "$v" | jq -r --arg w "$w" --arg q "$q" '"probe \($w | .[0:6] | . + (" " * (6 - length))) \(.pairs) pairs at \(.target_rate) msg/s: p50 \(.lat_p50_us // "-") us, p99 \(.lat_p99_us // "-") us, max \(.lat_max_us // "-") us, lost \(.lost), errors \(.errors); loadgen send lag p99 \(.send_lag_p99_us // "-") us; broker threads waited for a CPU \($q) ms/s"'
    else
        echo "probe $w: no result (see $OUT/probe-$w.log)"
    fi
done
