#!/usr/bin/env bash
# Soak the broker: a steady population of peers, connect churn and paced relay at once, for a
# long time; sample the broker's RSS, open descriptors and CPU every 10 s and print the series
# and its trend after a warm-up.
#
#   bench/soak.sh                 1 hour: 10,000 peers, 200 connects/s churn, 5,000 msg/s relayed
#   bench/soak.sh --minutes N     the same load for N minutes
#   bench/soak.sh --quick         ~1 min smoke: 1,000 peers, 50 connects/s, 500 msg/s
#   bench/soak.sh --no-build      skip cargo build
#   PROFILE=debug bench/soak.sh … debug binaries (the smoke in scripts/test)
#   KIBITZ=path bench/soak.sh …   soak another kibitz binary (an A/B, e.g. of allocators)
#
# Load (three kibitz-loadgen processes, each under the 20,000 open-file cap):
#   idle   PEERS - 2*PAIRS peers that only heartbeat (every 5 s) for the whole run;
#   paced  PAIRS pairs (2*PAIRS more peers) relaying RATE OFFERs/s in total, open loop; it
#          counts every message sent and received on pairs that stayed connected (lost =
#          sent - delivered, after a 2 s drain);
#   churn  CHURN new peers/s, each opened (to OPEN) and closed at once, unique ids.
# Targets (checked after the warm-up, the first WARMUP_SECS s of load: 60, 15 with --quick):
# RSS within +-5 % of its post-warm-up mean, open descriptors flat (linear trend over the run within
# max(50, 0.5 % of the mean)), zero lost messages. Printed as ok/FAIL; the exit status is 0
# either way unless a process failed. Warm-up is short on purpose: the population and its
# tables are in place before the clock starts, and the allocator hands back the pages of the
# opening burst within ~30 s; anything that grows later counts. A table of medians per tenth
# of the run follows, and the range of those medians against the same +-5 %, to tell a level
# that moves from single samples that spike (on a loaded machine the broker stalls, messages
# and connections pile up, and RSS follows them for a sample or two). The broker and load generators run niced (SOAK_NICE,
# default 10): this measures stability, not speed. Logs and the series go to
# target/bench/soak-<timestamp>/.
set -euo pipefail

MINUTES=60
PEERS=10000
CHURN=200
RATE=5000
PAIRS=250
SIZE=200
INTERVAL=10
WARMUP_SECS=60
BUILD=1
QUICK=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --minutes) shift; MINUTES=$1 ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
SECS=$((MINUTES * 60))
if ((QUICK)); then
    PEERS=1000 CHURN=50 RATE=500 PAIRS=50 SECS=60 INTERVAL=5 WARMUP_SECS=15
fi
IDLE=$((PEERS - 2 * PAIRS))

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
source bench/lib.sh
NICE=${SOAK_NICE:-10}
bench_bins
bench_out soak
echo "soak: $PEERS peers ($IDLE idle + $PAIRS relay pairs), $CHURN connects/s churn, $RATE msg/s" \
    "relayed, ${SECS}s, sample every ${INTERVAL}s; load average before $load1; logs in $OUT"
trap stop_bg EXIT

start_broker --per-ip-connections 0 --concurrent-limit 100000

# The steady population first; the run starts once it is open.
lg idle --conns "$IDLE" --heartbeat-ms 5000 --hold-secs $((SECS + 5)) --open-rate 2000 \
    >"$OUT/idle.log" 2>&1 &
IPID=$!
PIDS+=("$IPID")
for _ in $(seq 600); do
    grep -q "^idle: " "$OUT/idle.log" && break
    kill -0 "$IPID" 2>/dev/null || { echo "idle load generator exited; see $OUT/idle.log" >&2; exit 1; }
    sleep 0.5
done
grep "^idle: " "$OUT/idle.log" || { echo "idle peers did not open; see $OUT/idle.log" >&2; exit 1; }

lg paced --pairs "$PAIRS" --rate "$RATE" --size "$SIZE" --secs "$SECS" --warmup-secs 2 \
    --drain-secs 2 >"$OUT/paced.log" 2>&1 &
PPID_=$!
lg churn --rate "$CHURN" --secs "$SECS" --warmup-secs 0 >"$OUT/churn.log" 2>&1 &
CPID=$!
PIDS+=("$PPID_" "$CPID")

# Sample: seconds since start, RSS (KiB), open descriptors, CPU % of one core since the last
# sample.
SERIES="$OUT/series.tsv"
printf 't_s\trss_kb\tfds\tcpu_pct\n' >"$SERIES"
t0=$(date +%s.%N)
prev_t=$t0
prev_c=$(cpu_ticks)
next=$INTERVAL
while kill -0 "$PPID_" 2>/dev/null || kill -0 "$CPID" 2>/dev/null; do
    now=$(date +%s.%N)
    elapsed=$(awk -v a="$now" -v b="$t0" 'BEGIN { print a - b }')
    if awk -v e="$elapsed" -v n="$next" 'BEGIN { exit !(e >= n) }'; then
        kill -0 "$SPID" 2>/dev/null || { echo "broker died; see $OUT/broker.log" >&2; exit 1; }
        c=$(cpu_ticks)
        pct=$(awk -v c="$c" -v pc="$prev_c" -v t="$now" -v pt="$prev_t" \
            'BEGIN { printf "%.1f", (c - pc) / (t - pt) }')
        printf '%d\t%s\t%s\t%s\n' "$next" "$(rss_kb)" "$(fds)" "$pct" | tee -a "$SERIES"
        prev_c=$c prev_t=$now
        next=$((next + INTERVAL))
    fi
    sleep 0.5
done
wait "$PPID_" || echo "warning: paced load generator failed; see $OUT/paced.log" >&2
wait "$CPID" || echo "warning: churn load generator failed; see $OUT/churn.log" >&2
wait "$IPID" || echo "warning: idle load generator failed; see $OUT/idle.log" >&2

result() { grep '^RESULT ' "$OUT/$1.log" | tail -1 | sed 's/^RESULT //'; }
PACED=$(result paced)
CHURNED=$(result churn)
echo
echo "== soak trend ($(($(wc -l <"$SERIES") - 1)) samples every ${INTERVAL}s; the first ${WARMUP_SECS}s are warm-up)"
awk -F'\t' -v warm="$WARMUP_SECS" '
    NR == 1 { next }
    { n++; t[n] = $1; r[n] = $2; f[n] = $3; c[n] = $4 }
    END {
        s = 1
        while (s <= n && t[s] <= warm) s++
        if (n - s < 2) { print "too few samples"; exit }
        for (i = s; i <= n; i++) { m++; sr += r[i]; sf += f[i]; sc += c[i]; st += t[i] }
        mr = sr / m; mf = sf / m; mt = st / m
        rmin = rmax = r[s]; fmin = fmax = f[s]; cmax = c[s]
        for (i = s; i <= n; i++) {
            if (r[i] < rmin) rmin = r[i]; if (r[i] > rmax) rmax = r[i]
            if (f[i] < fmin) fmin = f[i]; if (f[i] > fmax) fmax = f[i]
            if (c[i] > cmax) cmax = c[i]
            num += (t[i] - mt) * (f[i] - mf); den += (t[i] - mt) ^ 2
        }
        slope = den > 0 ? num / den : 0
        drift = slope * (t[n] - t[s])
        lo = 100 * (rmin - mr) / mr; hi = 100 * (rmax - mr) / mr
        printf "RSS      start %d KiB, end %d KiB; after warm-up (t >= %d s) mean %d KiB, min %d (%+.2f %%), max %d (%+.2f %%)  %s\n",
            r[1], r[n], t[s], mr, rmin, lo, rmax, hi, (lo >= -5 && hi <= 5) ? "ok (within +-5 %)" : "FAIL (target +-5 %)"
        tol = 0.005 * mf; if (tol < 50) tol = 50
        printf "fds      start %d, end %d; after warm-up mean %.0f, min %d, max %d, trend %+.3f/min (%+.1f over the run)  %s\n",
            f[1], f[n], mf, fmin, fmax, slope * 60, drift, (drift <= tol && drift >= -tol) ? "ok (flat)" : "FAIL (not flat)"
        printf "CPU      after warm-up mean %.1f %% of a core, max %.1f %%\n", sc / m, cmax
        # Medians per tenth of the post-warm-up run (insertion sort: a tenth is <= 36 samples
        # an hour at 10 s).
        printf "%-13s %12s %10s %10s %10s %9s\n", "window (s)", "RSS median", "RSS min", "RSS max", "fds median", "CPU mean"
        for (w = 0; w < 10; w++) {
            k = 0; cs = 0
            for (i = s; i <= n; i++) {
                if (int((i - s) * 10 / (n - s + 1)) != w) continue
                k++; rv[k] = r[i]; fv[k] = f[i]; cs += c[i]; last = i
                if (k == 1) { first = i; lo = hi = r[i] }
                if (r[i] < lo) lo = r[i]; if (r[i] > hi) hi = r[i]
                for (j = k; j > 1 && rv[j - 1] > rv[j]; j--) { x = rv[j]; rv[j] = rv[j - 1]; rv[j - 1] = x }
                for (j = k; j > 1 && fv[j - 1] > fv[j]; j--) { x = fv[j]; fv[j] = fv[j - 1]; fv[j - 1] = x }
            }
            if (k == 0) continue
            med = rv[int((k + 1) / 2)]
            if (!nm++ || med < mlo) mlo = med; if (med > mhi) mhi = med
            printf "%5d-%-7d %8d KiB %6d KiB %6d KiB %10d %7.1f %%\n", t[first], t[last], med, lo, hi, fv[int((k + 1) / 2)], cs / k
        }
        lo = 100 * (mlo - mr) / mr; hi = 100 * (mhi - mr) / mr
        printf "RSS level (the medians above) min %d KiB (%+.2f %%), max %d KiB (%+.2f %%)  %s\n", mlo, lo, mhi, hi,
            (lo >= -5 && hi <= 5) ? "ok (within +-5 %)" : "FAIL (target +-5 %)"
    }' "$SERIES" | tee "$OUT/trend.txt"
if [[ -n $PACED ]]; then
    echo "$PACED" | jq -r '"relay    \(.sent) sent, \(.delivered) delivered, lost \(.lost) (pairs ok \(.pairs_ok)/\(.pairs), errors \(.errors)), \(.delivered_per_s) msg/s, p50 \(.lat_p50_us // "-") us, p99 \(.lat_p99_us // "-") us, max \(.lat_max_us // "-") us  \(if .lost == 0 and .errors == 0 then "ok (zero lost)" else "FAIL (lost messages)" end)"' |
        tee -a "$OUT/trend.txt"
else
    echo "relay    no result; see $OUT/paced.log" | tee -a "$OUT/trend.txt"
fi
if [[ -n $CHURNED ]]; then
    echo "$CHURNED" | jq -r '"churn    \(.opens) opened and closed of \(.attempted), \(.opens_per_s)/s, errors \(.errors), open p99 \(.open_p99_us // "-") us"' |
        tee -a "$OUT/trend.txt"
fi
IDLED=$(result idle)
if [[ -n $IDLED ]]; then
    echo "$IDLED" | jq -r '"idle     \(.opened) of \(.conns) held, \(.dropped) dropped by the broker, \(.failed) failed to open"' |
        tee -a "$OUT/trend.txt"
fi
echo "series: $SERIES"
