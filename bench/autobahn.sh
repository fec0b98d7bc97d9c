#!/usr/bin/env bash
# Autobahn|Testsuite (the standard WebSocket conformance suite) against the broker's codec:
# its fuzzingclient talks to `ws_echo` (services/signal/examples), a WebSocket echo on the
# broker's own handshake check, codec, outbox and connection loop with only the application
# step swapped for an echo. Prints a per-section summary and fails if any case is not OK,
# NON-STRICT or INFORMATIONAL (UNIMPLEMENTED allowed only for 12 and 13, permessage-deflate,
# which the broker correctly does not negotiate), or closed other than OK/INFORMATIONAL.
#
#   bench/autobahn.sh              sections 1-7, 9, 10, 12, 13 (release build)
#   bench/autobahn.sh --quick      sections 1-7, 10, the smaller half of 9, and one case each of
#                                  12 and 13 (scripts/test's run; debug build, ~30 s)
#   bench/autobahn.sh --no-build   skip cargo build
#   bench/autobahn.sh CASE...      only these cases (Autobahn ids, `*` wildcards: 7.9.*)
#
# The suite is Python 2 era: it is installed in a virtualenv under ${KIBITZ_CACHE:-~/.cache/kibitz}
# from PyPI (bench/autobahn/requirements.txt, pinned) and ported to Python 3 in place by
# bench/autobahn/port.py (lib2to3 plus the str/bytes split), once per port.py version.
# The full report (index.html, per-case JSON) goes to target/autobahn/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PROFILE=release
BUILD=1
QUICK=0
CASES=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) PROFILE=debug; QUICK=1 ;;
    --no-build) BUILD=0 ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) CASES+=("$1") ;;
    esac
    shift
done
if ((${#CASES[@]} == 0)); then
    CASES=("1.*" "2.*" "3.*" "4.*" "5.*" "6.*" "7.*" "10.*")
    if ((QUICK)); then
        # 9.1.1-9.1.4 and 9.2.1-9.2.4: messages of 64 KiB to 2 MiB; the rest go to 16 MiB.
        CASES+=("9.1.1" "9.1.2" "9.1.3" "9.1.4" "9.2.1" "9.2.2" "9.2.3" "9.2.4" "12.1.1" "13.1.1")
    else
        CASES+=("9.*" "12.*" "13.*")
    fi
fi

# --- the suite, in a virtualenv, ported once per port.py/py3shim.py version
CACHE=${KIBITZ_CACHE:-$HOME/.cache/kibitz}
VENV=$CACHE/autobahn-venv
REQ=bench/autobahn/requirements.txt
stamp=$(cat "$REQ" bench/autobahn/port.py bench/autobahn/py3shim.py | sha256sum | cut -c1-16)
PORTED=$VENV/ported-$stamp
if [[ ! -f $PORTED/autobahntestsuite/.kibitz-py3-port ]]; then
    echo "installing Autobahn|Testsuite in $VENV"
    [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
    # (Not importable as installed: that is Python 2 code.)
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    rm -rf "$VENV"/ported-*
    mkdir -p "$PORTED"
    cp -r "$site/autobahntestsuite" "$PORTED/"
    "$VENV/bin/python" bench/autobahn/port.py "$PORTED/autobahntestsuite"
fi

# --- the echo server
if ((BUILD)); then
    if [[ $PROFILE == release ]]; then
        cargo build --release -q -p kibitz-signal --example ws_echo
    else
        cargo build -q -p kibitz-signal --example ws_echo
    fi
fi
OUT=$ROOT/target/autobahn
rm -rf "$OUT" && mkdir -p "$OUT"
ECHO_PID=""
cleanup() {
    if [[ -n $ECHO_PID ]]; then
        kill "$ECHO_PID" 2>/dev/null || true
        wait "$ECHO_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
"$ROOT/target/$PROFILE/examples/ws_echo" 127.0.0.1:0 >"$OUT/echo.log" 2>&1 &
ECHO_PID=$!
URL=""
for _ in $(seq 200); do
    URL=$(head -n 1 "$OUT/echo.log")
    [[ $URL == ws://* ]] && break
    kill -0 "$ECHO_PID" 2>/dev/null || { cat "$OUT/echo.log" >&2; exit 1; }
    sleep 0.05
done
[[ $URL == ws://* ]] || { echo "ws_echo did not start" >&2; exit 1; }

# --- the run
"$VENV/bin/python" - "$OUT/spec.json" "$OUT" "$URL" "${CASES[@]}" <<'EOF'
import json, sys
spec, out, url, cases = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
json.dump({"outdir": out, "servers": [{"agent": "kibitz", "url": url}], "cases": cases,
           "exclude-cases": [], "exclude-agent-cases": {}}, open(spec, "w"), indent=1)
EOF
echo "Autobahn|Testsuite fuzzingclient -> $URL (${CASES[*]})"
started=$SECONDS
(cd "$OUT" && PYTHONPATH=$PORTED "$VENV/bin/python" -c \
    'import sys; from autobahntestsuite.wstest import run; sys.argv = ["wstest", "-m", "fuzzingclient", "-s", sys.argv[1]]; run()' \
    "$OUT/spec.json" >"$OUT/fuzzingclient.log" 2>&1) || { tail -n 30 "$OUT/fuzzingclient.log" >&2; exit 1; }
if grep -q Traceback "$OUT/fuzzingclient.log"; then
    echo "the suite itself raised (see $OUT/fuzzingclient.log):" >&2
    grep -A3 Traceback "$OUT/fuzzingclient.log" | tail -n 12 >&2
    exit 1
fi

# --- the summary
python3 - "$OUT/index.json" $((SECONDS - started)) <<'EOF'
import collections, json, sys
cases = json.load(open(sys.argv[1]))["kibitz"]
key = lambda c: tuple(int(p) for p in c.split("."))
by_section = collections.defaultdict(collections.Counter)
bad = []
for case in sorted(cases, key=key):
    r = cases[case]
    section = case.split(".")[0]
    b, c = r["behavior"], r["behaviorClose"]
    by_section[section][b] += 1
    ok = b in ("OK", "NON-STRICT", "INFORMATIONAL") or (b == "UNIMPLEMENTED" and section in ("12", "13"))
    if not ok or c not in ("OK", "INFORMATIONAL"):
        bad.append(f"  {case}: {b}, close {c} (code {r['remoteCloseCode']}): see {r['reportfile']}")
cols = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
print(f"{'section':>8} {'cases':>6} " + " ".join(f"{c:>13}" for c in cols))
for s in sorted(by_section, key=int):
    n = by_section[s]
    print(f"{s:>8} {sum(n.values()):>6} " + " ".join(f"{n.get(c, 0):>13}" for c in cols))
other = {k for n in by_section.values() for k in n if k not in cols}
if other:
    print("other outcomes:", ", ".join(sorted(other)))
print(f"{len(cases)} cases in {sys.argv[2]} s; report: {sys.argv[1].rsplit('/', 1)[0]}/index.html")
if bad:
    print(f"{len(bad)} cases not acceptable:")
    print("\n".join(bad))
    sys.exit(1)
print("autobahn: all cases acceptable")
EOF
