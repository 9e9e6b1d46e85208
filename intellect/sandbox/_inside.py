"""The test harness that runs inside the sandbox. Standard library only, and Python 3.9 or later (the
sandbox's interpreter need not be the host's). The host imports it too, for ``encode``, ``decode`` and
``digest``: both sides share one definition of the wire format.

It reads one job on stdin (``marshal``: written by the host, so trusted; no ``json`` import, whose regular
expressions cost milliseconds at every start) and never learns what the right answers are: the host keeps the
expected outputs and values, and compares them itself against what this harness observed. So nothing the
candidate does in here (forged lines, patched builtins, an object whose ``__eq__`` is always True,
``os._exit``) can make a wrong answer count: the worst it can do is spoil its own observations.

Modes (``job["mode"]``):
- ``observe``: for each case, fork a child that runs the candidate's code and then the case (a stdio run as
  ``__main__`` on the case's stdin; a call of ``fn_name`` on the case's arguments; the expressions of an
  assert), and report one line per case on stdout: ``{"i", "status", "value"}``. A stdio case's value is the
  ``digest`` of its output's tokens; the others are ``encode``\\ d values.
- ``judge``: evaluate assert expressions over decoded values (``__v[i]``), in a process where no candidate
  code ever ran; report ``{"judged": [bool, ...]}``.
"""

from __future__ import annotations

import binascii
import builtins
import marshal
import math
import os
import resource
import select
import sys
import time
from _json import encode_basestring_ascii as _quote

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs milliseconds at start-up; the harness starts once per program
    from typing import Any

MAX_DEPTH = 64
BIG_INT = 1 << 62  # ints at least this large travel as hex (no decimal digit limit)
VALUE_BYTES = 1 << 20  # the most of a case's encoded value the harness reads back
STATUSES = ("ok", "error", "timeout", "crash")


# ---------------------------------------------------------------------------------------------- wire format


def encode(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON data with its container types tagged. Builtin subclasses (a Counter, a namedtuple, an
    IntEnum) travel as their base type's contents, read through the base type's own methods; anything else
    raises TypeError."""
    if depth > MAX_DEPTH:
        raise TypeError("value nested too deeply")
    if value is None or value is True or value is False:
        return value
    d = depth + 1
    if isinstance(value, int):
        n = int.__index__(value)
        return n if -BIG_INT < n < BIG_INT else {"int": hex(n)}
    if isinstance(value, float):
        x = float.__float__(value)
        return x if math.isfinite(x) else {"float": repr(x)}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, list):
        return {"list": [encode(v, d) for v in list.__iter__(value)]}
    if isinstance(value, tuple):
        return {"tuple": [encode(v, d) for v in tuple.__iter__(value)]}
    if isinstance(value, dict):
        return {"dict": [[encode(k, d), encode(v, d)] for k, v in dict.items(value)]}
    if isinstance(value, frozenset):
        return {"frozenset": [encode(v, d) for v in frozenset.__iter__(value)]}
    if isinstance(value, set):
        return {"set": [encode(v, d) for v in set.__iter__(value)]}
    if isinstance(value, bytes):
        return {"bytes": binascii.b2a_base64(bytes(value), newline=False).decode()}
    if isinstance(value, complex):
        c = complex.__complex__(value)
        return {"complex": [encode(c.real, d), encode(c.imag, d)]}
    raise TypeError(f"cannot compare a {type(value).__name__}")


def decode(data: Any, depth: int = 0) -> Any:
    """The value ``encode`` made, rebuilt from JSON data as plain builtin objects only; ValueError on anything
    that ``encode`` could not have written."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    kind = type(data)
    if data is None or kind is bool or kind is int or kind is str:
        return data
    if kind is float:
        if not math.isfinite(data):
            raise ValueError("a bare non-finite float")
        return data
    if kind is not dict or len(data) != 1:
        raise ValueError(f"not an encoded value: {kind.__name__}")
    ((tag, payload),) = data.items()
    d = depth + 1
    if tag in ("list", "tuple", "set", "frozenset") and type(payload) is list:
        items = [decode(v, d) for v in payload]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
    if tag == "dict" and type(payload) is list:
        pairs = [p for p in payload if type(p) is list and len(p) == 2]
        if len(pairs) != len(payload):
            raise ValueError("a dict entry is not a pair")
        return {decode(k, d): decode(v, d) for k, v in pairs}
    if tag == "int" and type(payload) is str:
        return int(payload, 16)
    if tag == "float" and payload in ("nan", "inf", "-inf"):
        return float(payload)
    if tag == "bytes" and type(payload) is str:
        return binascii.a2b_base64(payload)
    if tag == "complex" and type(payload) is list and len(payload) == 2:
        re, im = (decode(v, d) for v in payload)
        if type(re) is not float or type(im) is not float:
            raise ValueError("complex parts must be floats")
        return complex(re, im)
    raise ValueError(f"not an encoded value: tag {tag!r}")


def digest(text: str) -> str:
    """What a stdio case is compared on: its whitespace-separated tokens."""
    import hashlib

    return hashlib.sha256("\n".join(text.split()).encode("utf-8", "surrogatepass")).hexdigest()


def dumps(data: Any) -> str:
    """JSON text of ``encode``'s output (and of report lines): null, booleans, ints, finite floats, strings,
    lists and string-keyed dicts."""
    if data is None:
        return "null"
    if data is True or data is False:
        return "true" if data else "false"
    kind = type(data)
    if kind is int:
        return int.__repr__(data)
    if kind is float:
        return float.__repr__(data)
    if kind is str:
        return _quote(data)
    if kind is list:
        return "[" + ",".join(dumps(v) for v in data) + "]"
    if kind is dict:
        return "{" + ",".join(_quote(k) + ":" + dumps(v) for k, v in data.items()) + "}"
    raise TypeError(f"cannot write a {kind.__name__} as JSON")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not allowed")


def loads(text: str | bytes) -> Any:
    """JSON without NaN/Infinity literals (non-finite floats travel tagged). For the host: the harness itself
    never parses JSON."""
    import json

    return json.loads(text, parse_constant=_reject_constant)


# ---------------------------------------------------------------------------------------------- observe


def _report(line: str) -> None:
    data = (line + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def _child(job: dict[str, Any], code: Any, case: Any, i: int) -> None:
    """In the forked child: stdin/stdout are the case's files; run the candidate, then the case."""
    os.dup2(os.open(f"case{i}.in", os.O_RDONLY), 0)
    os.dup2(os.open(f"case{i}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
    os.dup2(os.open(f"case{i}.err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)  # debug output: dropped
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    kind = job["kind"]
    if kind == "stdio":
        try:  # noqa: SIM105 - contextlib would cost the harness start-up time
            exec(code, {"__name__": "__main__", "__builtins__": builtins})
        except SystemExit:
            pass
        sys.stdout.flush()
        os._exit(0)
    ns: dict[str, Any] = {"__name__": "__candidate__", "__builtins__": builtins}
    exec(code, ns)
    if kind == "call":
        name = job["fn_name"]
        fn: Any = ns.get(name)
        if fn is None and "Solution" in ns:
            fn = getattr(ns["Solution"](), name)
        values = [fn(*case)]
    else:
        values = [eval(compile(expr, "<test>", "eval"), ns) for expr in case]
    data = dumps([encode(v) for v in values]).encode()
    fd = os.open(f"case{i}.val", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    while data:
        data = data[os.write(fd, data) :]
    os._exit(0)


def _wait(pid: int, budget: float) -> str:
    """Wait for the child at most ``budget`` seconds: 'exited', 'failed', 'crash' or 'timeout'."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = -1
    deadline = time.monotonic() + budget
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, 9)  # SIGKILL (the signal module would import enum)
            os.waitpid(pid, 0)
            if pidfd >= 0:
                os.close(pidfd)
            return "timeout"
        if pidfd >= 0:
            select.select([pidfd], [], [], left)
        else:
            time.sleep(min(left, 0.005))
    if pidfd >= 0:
        os.close(pidfd)
    if os.WIFSIGNALED(status):
        return "crash"
    return "exited" if os.WEXITSTATUS(status) == 0 else "failed"


def _observe_case(job: dict[str, Any], code: Any, case: Any, i: int, budget: float) -> str:
    """Run one case in a child; its report line (JSON text)."""
    with open(f"case{i}.in", "w", encoding="utf-8") as f:
        f.write(case if job["kind"] == "stdio" else "")
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:  # noqa: SIM105 - contextlib would cost the harness start-up time
            _child(job, code, case, i)
        except BaseException:  # noqa: BLE001 - the candidate raised: the case fails
            pass
        os._exit(1)
    how = _wait(pid, budget)
    value = _value(job, i) if how == "exited" else ""
    for suffix in ("in", "out", "err", "val"):  # the private /tmp is small: leave it to the next case
        try:  # noqa: SIM105 - contextlib would cost the harness start-up time
            os.unlink(f"case{i}.{suffix}")
        except OSError:
            pass
    if how != "exited":
        return dumps({"i": i, "status": {"failed": "error"}.get(how, how)})
    if not value or "\n" in value:
        return dumps({"i": i, "status": "error"})
    return f'{{"i":{i},"status":"ok","value":{value}}}'


def _value(job: dict[str, Any], i: int) -> str:
    """A finished case's value as JSON text: a stdio run's digest, else the child's JSON, passed on as it is
    (the host decodes it; it is the candidate's to spoil)."""
    try:
        if job["kind"] == "stdio":
            with open(f"case{i}.out", "rb") as f:
                return dumps(digest(f.read(job["output_bytes"]).decode("utf-8", "replace")))
        with open(f"case{i}.val", "rb") as f:
            return f.read(VALUE_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""


def observe(job: dict[str, Any]) -> None:
    deadline = time.monotonic() + float(job["timeout_s"])
    try:
        code = compile(job["code"], "<candidate>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        code = None
    for i, case in enumerate(job["cases"]):
        left = deadline - time.monotonic()
        if code is None:
            _report(dumps({"i": i, "status": "error"}))
        elif left <= 0:
            _report(dumps({"i": i, "status": "timeout"}))
        else:
            _report(_observe_case(job, code, case, i, left))
        _reap_orphans()


def _reap_orphans() -> None:
    """The harness is its namespace's init: collect what earlier cases left to it (zombies count as processes)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


# ---------------------------------------------------------------------------------------------- judge


def judge(job: dict[str, Any]) -> None:
    verdicts = []
    for check in job["checks"]:
        try:
            ns: dict[str, Any] = {"__builtins__": builtins, "__v": [decode(v) for v in check["values"]]}
            for name in check["modules"]:
                ns[name] = __import__(name)
            verdicts.append(bool(eval(compile(check["expr"], "<test>", "eval"), ns)))
        except Exception:  # noqa: BLE001 - a check that raises fails
            verdicts.append(False)
    _report(dumps({"judged": verdicts}))


def main() -> None:
    chunks = []
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    job = marshal.loads(b"".join(chunks))
    cpu = job.get("cpu_s")
    if cpu:  # a job may lower the CPU limit it was started under (a warm sandbox), never raise it
        soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        want = int(math.ceil(cpu))
        if soft == resource.RLIM_INFINITY or want < soft:
            resource.setrlimit(
                resource.RLIMIT_CPU, (want, hard if hard != resource.RLIM_INFINITY else want + 1)
            )
    (judge if job["mode"] == "judge" else observe)(job)


if __name__ == "__main__":
    main()
