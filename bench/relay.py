"""The broker ceiling: a raw nats-py relay doing a hop's I/O and nothing else.

Per role, one pull subscription bound to the same durable consumer the
runtime uses, one fetch loop fetching up to ``min(free slots, FETCH_MAX)``,
and a coroutine per message: decode the ~2 KB envelope (the same msgspec
``Task``), append a turn, decide the next role exactly as the dummy
workflow does (Talker/Talker/Decider, cycle routing with ``stop_when:
agreed``), encode, publish with msg-id ``<task>:<hop>`` and await the
PubAck, then ack the input. Many tasks' publishes are in flight together.
No heartbeats, no dead-lettering, no logging, no stats: the upper bound.

This module (with ``harness``'s pause/resume) is the only bench code that
talks to nats-py directly. Run as ``python -m bench.relay --url URL`` it is
one relay process (prints ``relay.ready``, stops on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time

import msgspec
import nats
import nats.errors

from matrix_p2p.envelope import Task, Turn

FETCH_MAX = 100
ROLES = ("teacher", "student", "judge")
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Task)


def _next(task: Task, role: str, *, reply_chars: int, p_stop: float, max_rounds: int,
          max_turns: int, prefix: str) -> tuple[str, Task]:
    now = time.time()
    if role == "judge":
        rng = random.Random(task.seed)
        rounds = 1
        while rng.random() > p_stop and rounds < max_rounds:
            rounds += 1
        done_rounds = int(task.state.get("rounds", 0)) + 1
        task.state["rounds"] = done_rounds
        task.state["agreed"] = done_rounds >= rounds
        task.turns.append(Turn(role=role, content="", hop=task.hop, started_at=now))
    else:
        task.turns.append(Turn(role=role, content="x" * reply_chars, hop=task.hop, started_at=now))
    nxt = msgspec.structs.replace(task, hop=task.hop + 1)
    if task.state.get("agreed") or len(task.turns) >= max_turns:
        nxt.status = "done"
        nxt.finished_at = time.time()
        return f"{prefix}.done", nxt
    nxt.role = ROLES[(ROLES.index(role) + 1) % len(ROLES)]
    return f"{prefix}.task.{nxt.role}", nxt


async def serve(url: str, stop: asyncio.Event, ready: asyncio.Event | None = None, *,
                workflow: str = "dummy", prefix: str = "mx", concurrency: int = 1000,
                reply_chars: int = 200, p_stop: float = 0.5, max_rounds: int = 20,
                max_turns: int = 30) -> int:
    """Relay until ``stop``; returns hops handled."""
    nc = await nats.connect(url, name="bench-relay", pending_size=64 * 1024 * 1024)
    js = nc.jetstream(timeout=10.0)
    stream = f"{prefix}_{workflow}".upper() + "_TASKS"
    base = f"{prefix}.{workflow}"
    hops = 0

    async def role_loop(role: str, sub: object) -> None:
        nonlocal hops
        inflight = 0
        free = asyncio.Event()

        async def handle(msg: nats.aio.msg.Msg) -> None:
            nonlocal inflight, hops
            try:
                task = _dec.decode(msg.data)
                subject, nxt = _next(task, role, reply_chars=reply_chars, p_stop=p_stop,
                                     max_rounds=max_rounds, max_turns=max_turns, prefix=base)
                await js.publish(subject, _enc.encode(nxt),
                                 headers={"Nats-Msg-Id": f"{nxt.id}:{nxt.hop}"})
                await msg.ack()
                hops += 1
            finally:
                inflight -= 1
                free.set()

        tasks: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            room = concurrency - inflight
            if room <= 0:
                free.clear()
                await free.wait()
                continue
            try:
                msgs = await sub.fetch(min(room, FETCH_MAX), timeout=1.0)  # type: ignore[attr-defined]
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for m in msgs:
                inflight += 1
                t = asyncio.create_task(handle(m))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    subs = [await js.pull_subscribe_bind(durable=r, stream=stream, pending_msgs_limit=-1,
                                         pending_bytes_limit=-1) for r in ROLES]
    if ready is not None:
        ready.set()
    try:
        async with asyncio.TaskGroup() as tg:
            for r, s in zip(ROLES, subs, strict=True):
                tg.create_task(role_loop(r, s))
    finally:
        # every publish and ack was awaited by its handler: nothing is left to flush
        await nc.close()
    return hops


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.relay")
    p.add_argument("--url", required=True)
    p.add_argument("--concurrency", type=int, default=1000)
    args = p.parse_args()

    async def run() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        async def announce() -> None:
            await ready.wait()
            print("relay.ready", flush=True)

        t = asyncio.create_task(announce())
        hops = await serve(args.url, stop, ready, concurrency=args.concurrency)
        await t
        print(f"relay.stopped hops={hops}", flush=True)

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    main()
