"""The promise as assertions that fail fast and say which task broke it, at which step.

- ``assert_no_task_lost``: at any quiet moment (a worker just crashed, a fault just
  fired), every submitted task is somewhere: a message in the task stream or a
  result in the results stream. Checked at once, so a guard removed shows up
  right after the fault, not after a deadline.
- ``wait_finished``: reads the results stream itself (not a deduplicating sink)
  until every submitted task has a result and no task is left in the task
  stream; on its (tight) deadline it fails through ``assert_exactly_once``.
- ``assert_exactly_once``: one result per submitted task, none unknown, the
  expected status and hop count; a failure names each missing or doubled task
  with its history as the fault bus traced it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from matrix_p2p import envelope
from matrix_p2p.bus import Bus
from matrix_p2p.envelope import Task
from matrix_p2p.runtime.topology import Names
from tests.faults import Step

_checkers = itertools.count()


def _history(trace: Sequence[Step] | None, task: str) -> str:
    if not trace:
        return ""
    steps = [str(s) for s in trace if s.task == task]
    return "\n      " + "\n      ".join(steps) if steps else "\n      (never seen by the fault bus)"


async def stored_tasks(bus: Bus, stream: str) -> list[Task]:
    """Every envelope now stored in ``stream`` (garbage skipped)."""
    out = []
    async for m in bus.iter_stream(stream):
        try:
            out.append(envelope.decode(m.data))
        except envelope.EnvelopeError:
            continue
    return out


async def assert_no_task_lost(bus: Bus, names: Names, submitted: Iterable[str], *, step: str,
                              trace: Sequence[Step] | None = None) -> None:
    """Every submitted task has a live message or a result, right now."""
    live = {t.id for t in await stored_tasks(bus, names.tasks_stream)}
    finished = {t.id for t in await stored_tasks(bus, names.results_stream)}
    lost = sorted(set(submitted) - live - finished)
    if lost:
        raise AssertionError(
            f"after {step}: {len(lost)} task(s) lost (no message in {names.tasks_stream}, "
            f"no result in {names.results_stream}):"
            + "".join(f"\n  {tid}{_history(trace, tid)}" for tid in lost))


def assert_exactly_once(results: Sequence[Task], submitted: Iterable[str], *, step: str = "the run",
                        hops: int | dict[str, int] | None = None, status: str | None = None,
                        trace: Sequence[Step] | None = None) -> None:
    """One result per submitted task; with ``hops``/``status``, the right ones."""
    want = set(submitted)
    by_id: dict[str, list[Task]] = {}
    for t in results:
        by_id.setdefault(t.id, []).append(t)
    problems = []
    for tid in sorted(want - set(by_id)):
        problems.append(f"{tid}: lost (no result){_history(trace, tid)}")
    for tid, ts in sorted(by_id.items()):
        if tid not in want:
            problems.append(f"{tid}: a result for a task never submitted")
        elif len(ts) > 1:
            seen = ", ".join(f"{t.status} at hop {t.hop}" for t in ts)
            problems.append(f"{tid}: {len(ts)} results ({seen}){_history(trace, tid)}")
    for tid, ts in sorted(by_id.items()):
        t = ts[0]
        want_hops = hops.get(tid) if isinstance(hops, dict) else hops
        if want_hops is not None and t.hop != want_hops:
            problems.append(f"{tid}: ended at hop {t.hop}, expected {want_hops} "
                            f"({len(t.turns)} turns){_history(trace, tid)}")
        if status is not None and t.status != status:
            problems.append(f"{tid}: ended {t.status} ({t.error}), expected {status}")
    if problems:
        raise AssertionError(f"after {step}:\n  " + "\n  ".join(problems))


async def wait_finished(bus: Bus, names: Names, submitted: Iterable[str], *, step: str,
                        within_s: float = 10.0, hops: int | dict[str, int] | None = None,
                        status: str | None = None,
                        trace: Sequence[Step] | None = None) -> list[Task]:
    """Every task's result, read from the results stream as it arrives (no polling sleep).

    Returns once every submitted task has a result and the task stream is empty (so a
    doubled hop in flight has had its chance to end as a second result)."""
    want = set(submitted)
    durable = f"check-{next(_checkers)}"
    await bus.ensure_consumer(names.results_stream, names.results_consumer(durable))
    puller = await bus.puller(names.results_stream, durable)
    results: list[Task] = []
    try:
        async with asyncio.timeout(within_s):
            while True:
                for d in await puller.fetch(256, 0.2):
                    results.append(envelope.decode(d.data))
                    await d.ack()
                if want <= {t.id for t in results} and await bus.stream_msgs(names.tasks_stream) == 0:
                    break
    except TimeoutError:
        assert_exactly_once(results, want, step=f"{step} (waited {within_s}s)", hops=hops,
                            status=status, trace=trace)
        raise AssertionError(f"after {step}: every task ended but tasks were left in "
                             f"{names.tasks_stream}: {await stored_tasks(bus, names.tasks_stream)}"
                             ) from None
    finally:
        await puller.unsubscribe()
    # anything that arrived meanwhile: the results stream itself is the record
    results = await stored_tasks(bus, names.results_stream)
    assert_exactly_once(results, want, step=step, hops=hops, status=status, trace=trace)
    return results


def assert_file_once(out: Path, submitted: Iterable[str], *, step: str) -> list[dict[str, object]]:
    """The sink's output holds every submitted task exactly once."""
    rows = [msgspec.json.decode(line) for line in out.read_bytes().splitlines() if line.strip()]
    ids = Counter(str(r["id"]) for r in rows)
    doubled = sorted(i for i, n in ids.items() if n > 1)
    missing = sorted(set(submitted) - set(ids))
    if doubled or missing:
        raise AssertionError(f"after {step}: {out.name} has tasks written twice {doubled} "
                             f"and tasks missing {missing}")
    return rows
