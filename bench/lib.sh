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
