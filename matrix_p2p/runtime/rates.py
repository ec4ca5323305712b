"""How fast a workflow is moving, read from the broker alone (no worker is asked): for ``status``.

- hops/s per role: two reads of each role consumer's delivered sequence
  ``sample_s`` apart (every delivery is one hop started, a redelivery included).
  A consumer keeps no history, so the rate is over the sample, not a longer window.
- finished tasks/s over the last ``window_s``: the results stream keeps every
  result with the time it was stored; a binary search over its sequence finds
  the first one inside the window, and the count is the sequence difference.
- tokens: the last ``TOKEN_SAMPLE`` results carry each task's usage by role;
  their mean per task times the finish rate is tokens/s.
- ETA: the tasks live in the task stream (submitted, not finished) over the finish rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec

from matrix_p2p import envelope
from matrix_p2p.aio import pause
from matrix_p2p.bus import Bus
from matrix_p2p.envelope import EnvelopeError, Usage
from matrix_p2p.runtime.hop import own_turns
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow.spec import WorkflowSpec

TOKEN_SAMPLE = 200  # recent results read for the tokens per task


class Rates(msgspec.Struct, kw_only=True):
    sample_s: float  # over which hops_per_s was measured
    hops_per_s: dict[str, float]  # per role
    window_s: float  # over which tasks_per_s was measured
    finished_in_window: int
    tasks_per_s: float
    tokens_per_task: dict[str, Usage]  # per role, mean over the sampled recent results
    sampled_results: int
    tokens_per_s: float  # prompt + completion, all roles
    live_tasks: int
    eta_s: float | None  # None: nothing finishes now, or nothing is left


async def first_seq_since(bus: Bus, stream: str, since: float) -> int | None:
    """The first sequence of ``stream`` stored at or after ``since`` (Unix seconds);
    None when every message is older (or the stream is empty)."""
    first, last = await bus.stream_bounds(stream)
    if last == 0:
        return None
    lo, hi = first, last + 1  # invariant: messages before lo are older; hi is a candidate
    while lo < hi:
        mid = (lo + hi) // 2
        m = await bus.next_msg(stream, mid)
        if m is None:
            hi = mid
        elif m.time >= since:
            hi = mid
        else:
            lo = m.seq + 1
    return lo if lo <= last else None


async def _recent_usage(bus: Bus, stream: str, last: int, n: int) -> tuple[dict[str, Usage], int]:
    total: dict[str, Usage] = {}
    seen = 0
    seq = max(1, last - n + 1)
    while seen < n:
        m = await bus.next_msg(stream, seq)
        if m is None:
            break
        seq = m.seq + 1
        try:
            task = envelope.decode(m.data)
        except EnvelopeError:
            continue
        seen += 1
        from_turn, _ = own_turns(task)  # as its row counts them: each token once
        for t in task.turns[from_turn:]:
            total[t.role] = total.get(t.role, Usage()) + t.usage
    return total, seen


async def measure(
    bus: Bus, spec: WorkflowSpec, *, sample_s: float = 5.0, window_s: float = 60.0,
    stop: asyncio.Event | None = None,
    wall_clock: Callable[[], float] = time.time,
    wait: Callable[[float, asyncio.Event | None], Awaitable[bool]] = pause,
) -> Rates:
    """The rates now. Takes ``sample_s`` (ends early, with what it has, on ``stop``)."""
    names = Names.of(spec)

    async def delivered() -> dict[str, int]:
        out = {}
        for role in spec.roles:
            c = await bus.consumer_stats(names.tasks_stream, role)
            out[role] = c.delivered if c else 0
        return out

    t0, before = time.monotonic(), await delivered()
    await wait(sample_s, stop)
    elapsed, after = max(time.monotonic() - t0, 1e-9), await delivered()
    hops = {role: round((after[role] - before[role]) / elapsed, 2) for role in spec.roles}

    now = wall_clock()
    _, last = await bus.stream_bounds(names.results_stream)
    start = await first_seq_since(bus, names.results_stream, now - window_s)
    finished = 0 if start is None else last - start + 1
    tasks_per_s = finished / window_s
    usage, sampled = await _recent_usage(bus, names.results_stream, last, TOKEN_SAMPLE)
    per_task = {role: Usage(prompt_tokens=round(u.prompt_tokens / sampled),
                            completion_tokens=round(u.completion_tokens / sampled))
                for role, u in sorted(usage.items())} if sampled else {}
    tokens_per_task = sum(u.prompt_tokens + u.completion_tokens for u in usage.values()) / max(1, sampled)
    live = await bus.stream_msgs(names.tasks_stream)
    return Rates(
        sample_s=round(elapsed, 2), hops_per_s=hops, window_s=window_s,
        finished_in_window=finished, tasks_per_s=round(tasks_per_s, 2),
        tokens_per_task=per_task, sampled_results=sampled,
        tokens_per_s=round(tasks_per_s * tokens_per_task, 1), live_tasks=live,
        eta_s=round(live / tasks_per_s, 1) if tasks_per_s > 0 and live else None,
    )


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render_rates(r: Rates) -> str:
    eta = (_duration(r.eta_s) if r.eta_s is not None
           else "done" if not r.live_tasks else "unknown (nothing finished in the window)")
    lines = [f"  finished {r.tasks_per_s:,.2f} tasks/s over the last {r.window_s:g}s "
             f"({r.finished_in_window} tasks); {r.live_tasks} live; ETA {eta}",
             f"  tokens {r.tokens_per_s:,.0f}/s (per task, mean of the last {r.sampled_results}"
             " results):",
             f"  {'role':<16}{'hops/s':>10}{'prompt/task':>14}{'compl./task':>14}"
             f"   (hops/s over {r.sample_s:g}s)"]
    for role, rate in r.hops_per_s.items():
        u = r.tokens_per_task.get(role, Usage())
        lines.append(f"  {role:<16}{rate:>10,.1f}{u.prompt_tokens:>14,}{u.completion_tokens:>14,}")
    return "\n".join(lines)
