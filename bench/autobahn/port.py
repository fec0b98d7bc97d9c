"""Ports the Python 2 era autobahntestsuite (PyPI 25.10.1) to Python 3, in place.

    python3 port.py SITE_PACKAGES/autobahntestsuite

Only what the fuzzingclient needs. lib2to3 does the syntax; the rest is the str/bytes split:
the case files build payloads as str literals with \\x escapes (bytes in Python 2), so those
become bytes literals, and py3shim.py coerces what is left where it meets autobahn's bytes
APIs and compares expected with received events byte for byte. Idempotent: a marker file
records a finished port.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

pkg = sys.argv[1]
marker = os.path.join(pkg, ".kibitz-py3-port")
if os.path.exists(marker):
    sys.exit(0)

subprocess.run(
    [sys.executable, "-W", "ignore", "-m", "lib2to3", "-w", "-n", "-j", "2", pkg],
    check=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
shutil.copy(os.path.join(os.path.dirname(os.path.abspath(__file__)), "py3shim.py"), pkg)


def edit(rel, *subs, regex=False):
    path = os.path.join(pkg, rel)
    s = open(path, encoding="utf-8").read()
    for old, new in subs:
        s2 = re.sub(old, new, s) if regex else s.replace(old, new)
        if s2 == s:
            raise SystemExit(f"port.py: no match for {old!r} in {rel}")
        s = s2
    open(path, "w", encoding="utf-8").write(s)


edit("__init__.py", ("from ._version", "from . import py3shim\nfrom ._version"))
# Needs autobahn's WAMP test helpers (unittest2); not used by the fuzzingclient.
edit("wstest.py", ("from . import serializer", "pass  # serializer: WAMP only"))
edit(
    "fuzzing.py",
    ("from autobahn.util import utcnow", "from autobahn.util import utcnow\nfrom .py3shim import patch_autobahn, Out, json_default\npatch_autobahn()"),
    ("f.write(json.dumps(case, sort_keys", "f.write(json.dumps(case, default = json_default, sort_keys"),
    ("p = ''.join(payload)", "p = b''.join(payload)"),
    ("         dd = data[:maxlen] + ellipses", "         dd = data[:maxlen] + ellipses.encode()"),
)
edit(
    "fuzzing.py",
    (r"f = open\((os\.path\.join\(outdir, report_filename\)), 'w'\)\n\n", r"f = Out(\1)\n\n"),
    regex=True,
)
edit("case/case.py", ("return pickle.dumps(obj1) == pickle.dumps(obj2)", "from ..py3shim import norm\n      return norm(obj1) == norm(obj2)"))

# str literals holding \x escapes were bytes in Python 2.
lit = re.compile(
    r"""(?<![A-Za-z_0-9])(['"])((?:\\x[0-9a-fA-F]{2}|\\[nrt\\'"]|[^'"\\\n])*?\\x[0-9a-fA-F]{2}(?:\\x[0-9a-fA-F]{2}|\\[nrt\\'"]|[^'"\\\n])*?)\1"""
)
for f in glob.glob(os.path.join(pkg, "case", "*.py")):
    s = open(f, encoding="utf-8").read()
    s2 = lit.sub(lambda m: "b" + m.group(1) + m.group(2) + m.group(1), s)
    # Python 3 cannot linearize (object, Case).
    s2 = re.sub(r"\(object, Case, *\)", "(Case, )", s2)
    if s2 != s:
        open(f, "w", encoding="utf-8").write(s2)

for f in ("case/case6_4_2.py", "case/case6_4_4.py"):
    edit(f, (r"PAYLOAD\[([0-9]+)\]", r"PAYLOAD[\1:\1+1]"), regex=True)

path = os.path.join(pkg, "case/case6_x_x.py")
lines = open(path, encoding="utf-8").read().split("\n")
for i in range(99, 120):
    lines[i] = re.sub(r"s = (['\"])\1", "s = b''", lines[i])
    lines[i] = re.sub(r"chr\(([^)]*)\)", r"bytes([\1])", lines[i])
open(path, "w", encoding="utf-8").write("\n".join(lines))
edit("case/case6_x_x.py", ("vs[1].append((False, ''.join(k)))", "vs[1].append((False, b''.join(k)))"))
edit(
    "case/case9_9_1.py",
    ("from zope.interface import implements", "from zope.interface import implementer"),
    ("   implements(interfaces.IPushProducer)\n", ""),
    ("class FrameProducer:", "@implementer(interfaces.IPushProducer)\nclass FrameProducer:"),
)

# Python 2 integer division.
edit("case/case10_1_1.py", ("len(self.payload) / self.p.autoFragmentSize", "len(self.payload) // self.p.autoFragmentSize"))

open(marker, "w").write("ported\n")
