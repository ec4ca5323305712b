"""A session program for the sandbox's session tests: one JSON line in, one out, on cue
it dies, hangs, or breaks the protocol. Stdlib only, run by a bare ``python3 -I -S``."""

from __future__ import annotations

import uuid

from matrix_p2p.sandbox import Lease, SandboxClient, SessionStarted

PROG = r"""
import contextlib, io, json, os, sys, time
count = 0
for line in sys.stdin:
    req = json.loads(line)
    op = req["op"]
    if op == "count":
        count += 1
        out = {"count": count}
    elif op == "echo":
        out = {"echo": req["value"]}
    elif op == "exit":  # dies during the call
        sys.stderr.write(req.get("say", "") + "\n")
        sys.stderr.flush()
        sys.exit(req["code"])
    elif op == "reply_then_exit":  # dies between calls
        print(json.dumps({"bye": True}), flush=True)
        sys.exit(0)
    elif op == "hang":
        time.sleep(3600)
        out = {}
    elif op == "garbage":
        print("this is not JSON", flush=True)
        continue
    elif op == "big":
        out = {"x": "a" * req["n"]}
    elif op == "blank":  # blank lines around a reply are no replies
        print("\n" + json.dumps({"blank": True}) + "\n", flush=True)
        continue
    elif op == "two":
        print("{}\n{}", flush=True)
        continue
    elif op == "exec":  # run code in the session, its prints are the reply
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                exec(req["code"], {})
            out = {"out": buf.getvalue()}
        except BaseException as exc:
            out = {"out": buf.getvalue(), "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out), flush=True)
"""


def marker() -> str:
    """A unique argv element: every process of the session (the wrapper, bwrap's init,
    python3) has it on its command line, so /proc finds them all by it."""
    return f"mx-session-{uuid.uuid4().hex}"


def argv(mark: str) -> list[str]:
    return ["python3", "-I", "-S", "-c", PROG, mark]


async def start(client: SandboxClient, lease: Lease | str, mark: str) -> SessionStarted:
    return await client.start_session(lease, argv(mark))
