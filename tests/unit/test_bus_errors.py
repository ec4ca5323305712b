"""The one translation of nats errors: each error type nats-py raises, our type and
exact message; and a check of the source that no nats call in the bus skips it."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest

from matrix_p2p.bus import errors as bus_errors
from matrix_p2p.bus.errors import AlreadyExists, NotFound, TimedOut, translate, when_ready
from matrix_p2p.bus.types import PayloadTooLargeError
from matrix_p2p.errors import BusError
from tests.bus_cases import exact

W = "publish to mx.w.task.judge"
AUTH = "authorization refused (check user/password, token, NKey or creds)"
js = nats.js.errors

CASES: list[tuple[BaseException, type[BusError], str]] = [
    # timeouts (nats' TimeoutError is an asyncio.TimeoutError, itself an OSError)
    (nats.errors.TimeoutError(), TimedOut, f"{W} timed out"),
    (nats.errors.FlushTimeoutError(), TimedOut, f"{W} timed out"),
    (nats.errors.DrainTimeoutError(), TimedOut, f"{W} timed out"),
    (js.FetchTimeoutError(), TimedOut, f"{W} timed out"),
    (TimeoutError(), TimedOut, f"{W} timed out"),
    # the connection
    (nats.errors.NoRespondersError(), BusError, f"{W} failed: JetStream is not available (no responders)"),
    (nats.errors.ConnectionClosedError(), BusError, f"{W} failed: NATS connection closed"),
    (nats.errors.ConnectionDrainingError(), BusError, f"{W} failed: NATS connection is draining"),
    (nats.errors.ConnectionReconnectingError(), BusError, f"{W} failed: nats: connection reconnecting"),
    (nats.errors.StaleConnectionError(), BusError, f"{W} failed: nats: stale connection"),
    (nats.errors.UnexpectedEOF(), BusError, f"{W} failed: nats: unexpected EOF"),
    (nats.errors.OutboundBufferLimitError(), BusError, f"{W} failed: nats: outbound buffer limit exceeded"),
    (nats.errors.NoServersError(), BusError, f"{W} failed: nats: no servers available for connection"),
    (nats.errors.SecureConnFailedError(), BusError, f"{W} failed: nats: secure connection failed"),
    (nats.errors.BadSubjectError(), BusError, f"{W} failed: nats: invalid subject"),
    (ConnectionRefusedError(111, "Connection refused"), BusError,
     f"{W} failed: [Errno 111] Connection refused"),
    (OSError(113, "No route to host"), BusError, f"{W} failed: [Errno 113] No route to host"),
    # authorization, typed or only in the server's words
    (nats.errors.AuthorizationError(), BusError, f"{W} failed: {AUTH}"),
    (nats.errors.Error("nats: 'Authorization Violation'"), BusError, f"{W} failed: {AUTH}"),
    (nats.errors.Error("nats: 'Authentication Timeout'"), BusError, f"{W} failed: {AUTH}"),
    # messages
    (nats.errors.MaxPayloadError(), PayloadTooLargeError,
     f"{W} refused: the message exceeds the broker's max_payload"),
    (js.NoStreamResponseError(), BusError, f"{W} failed: no stream accepts this subject"),
    (nats.errors.MsgAlreadyAckdError("<msg>"), BusError, f"{W} failed: message already acknowledged"),
    (nats.errors.NotJSMessageError(), BusError, f"{W} failed: not a JetStream message"),
    # JetStream API answers
    (js.NotFoundError(code=404, err_code=10059, description="stream not found"), NotFound,
     f"{W} failed: not found (stream not found)"),
    (js.APIError(code=404, err_code=10037, description="no message found"), NotFound,
     f"{W} failed: not found (no message found)"),
    (js.BucketNotFoundError(code=404, description="stream not found"), NotFound,
     f"{W} failed: not found (stream not found)"),
    (js.BadRequestError(code=400, err_code=10057, description="sequence 3 not found"), NotFound,
     f"{W} failed: not found (sequence 3 not found)"),
    (js.KeyNotFoundError(), NotFound, f"{W} failed: not found"),
    (js.KeyDeletedError(), NotFound, f"{W} failed: not found"),
    (js.ObjectNotFoundError(), NotFound, f"{W} failed: not found"),
    (js.BadRequestError(code=400, err_code=10058,
                        description="stream name already in use with a different configuration"),
     AlreadyExists,
     f"{W} failed: already exists (stream name already in use with a different configuration)"),
    (js.KeyWrongLastSequenceError(description="wrong last sequence: 5"), AlreadyExists,
     f"{W} failed: already exists (wrong last sequence: 5)"),
    (js.BadRequestError(code=400, err_code=10148, description="consumer already exists"), AlreadyExists,
     f"{W} failed: already exists (consumer already exists)"),
    (js.BadRequestError(code=400, err_code=10025, description="invalid stream config"), BusError,
     f"{W} refused: invalid stream config"),
    (js.APIError(code=400, err_code=10054, description="message size exceeds maximum allowed"), BusError,
     f"{W} refused: message size exceeds maximum allowed"),
    (js.APIError(code=409, description="Exceeded MaxWaiting"), BusError, f"{W} refused: Exceeded MaxWaiting"),
    (js.APIError(code=408), BusError, f"{W} refused: code 408"),
    (js.APIError(), BusError, f"{W} refused: no reason given"),
    (js.ServiceUnavailableError(), BusError, f"{W} failed: JetStream is not available (503)"),
    (js.ServiceUnavailableError(code=503, description="JetStream system temporarily unavailable"), BusError,
     f"{W} failed: JetStream is not available (503)"),
    (js.ServerError(code=500, description="raft proposal failed"), BusError,
     f"{W} failed: raft proposal failed"),
    (js.InvalidKeyError(), BusError, f"{W} failed: nats: JetStream.InvalidKeyError "),
    (js.Error("bucket name not valid"), BusError, f"{W} failed: nats: JetStream.Error bucket name not valid"),
]


@pytest.mark.parametrize(("exc", "kind", "message"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_nats_error_becomes_ours(exc: BaseException, kind: type[BusError], message: str) -> None:
    with pytest.raises(BusError) as err, translate(W):
        raise exc
    assert type(err.value) is kind
    assert str(err.value) == message
    assert "\n" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # one line, no chain
    assert err.value.__context__ is exc  # the original stays readable (connect names it)


def test_a_too_large_message_names_its_size_and_the_limit() -> None:
    with pytest.raises(PayloadTooLargeError) as err, translate(W, size=2_000_000, limit=1_048_576):
        raise nats.errors.MaxPayloadError
    assert str(err.value) == (f"{W} refused: 2000000 bytes exceed the broker's max_payload "
                              "of 1048576 bytes")


@pytest.mark.parametrize("exc", [ValueError("bug"), KeyError("k"), AttributeError("x"),
                                 asyncio.CancelledError(), KeyboardInterrupt()])
def test_what_is_not_a_broker_error_passes_through(exc: BaseException) -> None:
    with pytest.raises(type(exc)) as err, translate(W):
        raise exc
    assert err.value is exc


def test_our_own_errors_pass_through_unchanged() -> None:
    mine = NotFound("read X #1 failed: not found")
    with pytest.raises(NotFound) as err, translate(W):
        raise mine
    assert err.value is mine


def test_signals_are_bus_errors() -> None:
    for signal in (NotFound, AlreadyExists, TimedOut, PayloadTooLargeError):
        assert issubclass(signal, BusError)


def test_reason_hides_nothing_but_names_authorization() -> None:
    assert bus_errors.reason(nats.errors.Error("nats: 'Authorization Violation'")) == AUTH
    assert bus_errors.reason(nats.errors.NoServersError()) == "nats: no servers available for connection"
    assert bus_errors.reason(nats.errors.Error()) == "Error"


# ------------------------------------------------------------------ when_ready
class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


async def test_set_up_calls_retry_while_jetstream_is_not_ready() -> None:
    answers: list[BaseException | str] = [nats.errors.TimeoutError(), nats.errors.NoRespondersError(),
                                          js.ServiceUnavailableError(), "ok"]
    t = FakeTime()

    async def op() -> str:
        a = answers.pop(0)
        if isinstance(a, BaseException):
            raise a
        return a

    assert await when_ready("consumer judge", op, clock=t.clock, sleep=t.sleep) == "ok"
    assert answers == []
    assert len(t.slept) == 3
    assert all(0.1 <= s <= 0.8 for s in t.slept)  # jittered 0.2 s, doubling


async def test_set_up_calls_give_up_after_the_deadline() -> None:
    t = FakeTime()
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise nats.errors.TimeoutError

    with pytest.raises(nats.errors.TimeoutError):
        await when_ready("stream X", op, clock=t.clock, sleep=t.sleep)
    assert calls >= 5
    assert t.now <= bus_errors.SETUP_RETRY_S
    assert max(t.slept) <= 3.0


async def test_set_up_calls_do_not_retry_a_refusal() -> None:
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise js.BadRequestError(code=400, description="invalid stream config")

    with pytest.raises(BusError, match=exact("create stream X refused: invalid stream config")), \
            translate("create stream X"):
        await when_ready("stream X", op)
    assert calls == 1


# ------------------------------------------------------------- the source check
BUS_DIR = Path(bus_errors.__file__).parent
# receivers that are nats objects: a call on them is a nats call
NATS_RECEIVERS = {("self", "js"), ("self", "_js"), ("self", "_msg"), ("self", "_sub"), ("self", "_kv"),
                  ("self", "nc")}
NATS_LOCALS = {"kv", "watcher", "nc"}
NOT_IO = {"jetstream"}  # nc.jetstream(): builds a context, no I/O
WRAPPED_HELPERS = {"_connect_once"}  # nats calls inside; every call of it sits in translate


def _receiver(call: ast.Call) -> tuple[str, ...] | None:
    """("self", "js") for self.js.publish(...), ("kv",) for kv.put(...); None otherwise."""
    if not isinstance(call.func, ast.Attribute) or call.func.attr in NOT_IO:
        return None
    parts: list[str] = []
    node: ast.expr = call.func.value
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return (node.id, *reversed(parts))


def _is_nats_call(call: ast.Call) -> bool:
    r = _receiver(call)
    if r is None:
        return False
    return r[:2] in NATS_RECEIVERS or (len(r) == 1 and r[0] in NATS_LOCALS)


def _in_translate(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                ce = item.context_expr
                if isinstance(ce, ast.Call) and isinstance(ce.func, ast.Name) and ce.func.id == "translate":
                    return True
    return False


def _enclosing_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str | None:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return node.name
    return None


def _calls() -> list[tuple[str, ast.Call, dict[ast.AST, ast.AST]]]:
    out = []
    for path in sorted(BUS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        out += [(path.name, n, parents) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    return out


def test_every_nats_call_in_the_bus_goes_through_the_translation() -> None:
    found, bare = 0, []
    for name, call, parents in _calls():
        if _is_nats_call(call):
            if _enclosing_function(call, parents) in WRAPPED_HELPERS:
                continue
            found += 1
            if not _in_translate(call, parents):
                bare.append(f"{name}:{call.lineno} {ast.unparse(call)}")
        elif isinstance(call.func, ast.Name) and call.func.id in WRAPPED_HELPERS:
            assert _in_translate(call, parents), f"{name}:{call.lineno} calls {call.func.id} bare"
    assert bare == []
    assert found >= 30  # the check sees the calls (a renamed receiver would hide them)


def test_the_check_catches_a_bare_call() -> None:
    tree = ast.parse("async def f(self):\n    await self.js.publish('x', b'')\n"
                     "    with translate('ok'):\n        await self.js.publish('x', b'')\n")
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_nats_call(n)]
    assert [_in_translate(c, parents) for c in sorted(calls, key=lambda c: c.lineno)] == [False, True]


def test_only_the_broker_modules_import_nats() -> None:
    allowed = {"jetstream.py", "js_pull.py", "js_publish.py", "connection.py", "errors.py",
               "kv.py", "fleet_kv.py", "registry_kv.py", "objects.py"}
    importers = set()
    for path in BUS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "nats" or n.startswith("nats.") for n in names):
                importers.add(path.name)
    assert importers <= allowed
    assert "types.py" not in importers and "memory.py" not in importers
