# Shared by the bench scripts (source it after `cd` to the repo root): process settings, the
# server lifecycle (fresh server pinned to $SERVER_CORE, nice $NICE), and a load warning.
# Callers set LG (the kibitz-loadgen binary) and OUT (the results folder) before use.

SERVER_CORE=0
LOADGEN_CORE=1
if [[ $(id -u) -eq 0 ]]; then NICE=${BENCH_NICE:--10}; else NICE=${BENCH_NICE:-0}; fi
ulimit -n 20000 || echo "warning: could not raise ulimit -n to 20000 (now $(ulimit -n))" >&2
export RUST_LOG=${RUST_LOG:-warn}

SERVER_PID=""
PORT=""

# warn_if_busy: the figures mean little on a loaded machine; says so. Sets load1.
warn_if_busy() {
    read -r load1 _ </proc/loadavg
    if awk -v l="$load1" 'BEGIN { exit !(l > 0.5) }'; then
        echo "warning: load average is $load1 - other work on this machine will skew the figures" >&2
    fi
}

stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT

# launch_server NAME TEMPLATE LOGFILE: runs TEMPLATE (with $PORT filled in) on a free port;
# sets SERVER_PID and PORT once it listens; returns 1 if it exited or never listened.
launch_server() {
    local name=$1 template=$2 log=$3 cmd
    PORT=$("$LG" free-port)
    cmd=${template//\$PORT/$PORT}
    cmd=${cmd//\$LIMIT/${LIMIT:-}}
    echo "+ $cmd" >"$log"
    nice -n "$NICE" taskset -c "$SERVER_CORE" bash -c "exec $cmd" >>"$log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 150); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "error: $name server exited; see $log" >&2
            tail -5 "$log" >&2
            SERVER_PID=""
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "error: $name server did not listen on $PORT; see $log" >&2
    stop_server
    return 1
}

# ---- The long-running broker benches (soak.sh, attack.sh): one unpinned broker at $NICE,
# background processes (in PIDS) stopped on exit, and /proc samples of the broker. Callers set
# ROOT, PROFILE (default release) and BUILD (default 1), call bench_bins, then `trap stop_bg EXIT`.

PIDS=()
SPID=""

# bench_bins: sets BIN, LG and KIBITZ (unless set: another broker binary to compare) for
# $PROFILE and builds them unless BUILD=0.
bench_bins() {
    PROFILE=${PROFILE:-release}
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
    LG="$BIN/kibitz-loadgen"
    KIBITZ=${KIBITZ:-$BIN/kibitz}
    if ((${BUILD:-1})); then
        if [[ $PROFILE == release ]]; then
            cargo build --release -q -p kibitz-cli -p kibitz-loadgen
        else
            cargo build -q -p kibitz-cli -p kibitz-loadgen
        fi
    fi
}

# bench_out NAME: creates target/bench/NAME-<UTC time> as OUT; sets load1 (the load average).
bench_out() {
    OUT="$ROOT/target/bench/$1-$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "$OUT"
    read -r load1 _ </proc/loadavg
}

# A background `lg …` is a subshell whose child is the load generator: stop both.
stop_bg() {
    for p in "${PIDS[@]}"; do
        pkill -P "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}

# start_broker ARGS…: `kibitz signal --listen 127.0.0.1:$PORT ARGS…` on a free PORT at nice
# $NICE, logging to $OUT/broker.log; sets SPID once it listens, exits the script if it does not.
start_broker() {
    PORT=$("$LG" free-port)
    nice -n "$NICE" "$KIBITZ" signal --listen "127.0.0.1:$PORT" "$@" >"$OUT/broker.log" 2>&1 &
    SPID=$!
    PIDS+=("$SPID")
    for _ in $(seq 100); do
        kill -0 "$SPID" 2>/dev/null || { echo "broker exited; see $OUT/broker.log" >&2; exit 1; }
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "broker did not listen on $PORT within 10 s; see $OUT/broker.log" >&2
    exit 1
}

# lg ARGS…: the load generator against the broker, at nice $NICE.
lg() { nice -n "$NICE" "$LG" --port "$PORT" --server-pid "$SPID" --open-timeout-secs 60 "$@"; }

# The broker's resident set and its peak (KiB), open descriptors, CPU ticks (user + system).
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$SPID/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$SPID/status"; }
fds() { find "/proc/$SPID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$SPID/stat"; }
