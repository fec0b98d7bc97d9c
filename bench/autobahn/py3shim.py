# Python 3 shim for the Python 2 era test suite (see port.py). Its case files are utf-8
# source whose plain str literals were utf-8 bytes in Python 2; port.py made the \x-escaped
# ones bytes literals, and this coerces the rest back to utf-8 where they meet bytes APIs.
import txaio

txaio.use_twisted()
import binascii, functools

def _b(x):
    return x.encode("utf-8") if isinstance(x, str) else x

for _name in ("b2a_hex", "hexlify"):
    _orig = getattr(binascii, _name)
    setattr(binascii, _name, (lambda o: lambda d, *a: o(_b(d), *a).decode("ascii"))(_orig))

def norm(o):
    if isinstance(o, str):
        return o.encode("utf-8")
    if isinstance(o, (list, tuple)):
        return type(o)(norm(i) for i in o)
    if isinstance(o, dict):
        return {norm(k): norm(v) for k, v in o.items()}
    return o

def patch_autobahn():
    from autobahn.websocket import protocol as p
    P = p.WebSocketProtocol
    def wrap(name, argidx):
        orig = getattr(P, name)
        @functools.wraps(orig)
        def f(self, *a, **kw):
            a = list(a)
            if len(a) > argidx:
                a[argidx] = _b(a[argidx])
            if "payload" in kw:
                kw["payload"] = _b(kw["payload"])
            return orig(self, *a, **kw)
        setattr(P, name, f)
    orig_frame = P.sendFrame

    # autobahn 0.10.9's repeated-payload path divides with / (a float on Python 3):
    # expand the payload here instead; the frame on the wire is the same.
    def send_frame(self, opcode, payload=b"", *a, **kw):
        payload = _b(payload)
        n = kw.pop("payload_len", None)
        if n is not None and payload:
            payload = payload * (n // len(payload)) + payload[: n % len(payload)]
        return orig_frame(self, opcode, payload, *a, **kw)

    P.sendFrame = send_frame
    orig_close = P.sendCloseFrame

    def send_close_frame(self, code=None, reasonUtf8=None, isReply=False):
        return orig_close(self, code, _b(reasonUtf8), isReply)

    P.sendCloseFrame = send_close_frame
    wrap("sendPing", 0)
    wrap("sendPong", 0)
    wrap("sendMessageFrameData", 0)
    wrap("sendMessage", 0)
    wrap("sendData", 0)


class Out:
    """A report file that takes both str and the utf-8 bytes the Python 2 code writes."""

    def __init__(self, path):
        self.f = open(path, "w", encoding="utf-8")

    def write(self, s):
        self.f.write(s.decode("utf-8", "replace") if isinstance(s, bytes) else s)

    def close(self):
        self.f.close()


def json_default(o):
    """Report files: payloads as the Python 2 suite wrote them (bytes as text)."""
    if isinstance(o, bytes):
        return o.decode("utf-8", "replace")
    raise TypeError(type(o).__name__)
