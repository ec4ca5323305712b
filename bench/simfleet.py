"""The simulated vLLM fleet in its own process (``python -m matrix_p2p sim-llm``).

Its capacity is known (``capacity_tokens_per_s`` per replica, summed here);
throughput is read from the replicas' ``/sim/stats`` counters, so every
client and baseline is measured the same way, on the server side.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

import aiohttp

from bench.procs import Child, cpu_s, py


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SimFleet:
    def __init__(self, replicas: int = 2, *, seed: int = 7, max_waiting: int | None = None,
                 agree_prob: float = 0.3, max_num_seqs: int | None = None) -> None:
        self.replicas = replicas
        self.seed = seed
        self.max_waiting = max_waiting
        self.agree_prob = agree_prob
        self.max_num_seqs = max_num_seqs
        self.child: Child | None = None
        self.base_port = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.base_port + i}/v1" for i in range(self.replicas)]

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.pid

    async def __aenter__(self) -> SimFleet:
        for _attempt in range(10):
            # below the ephemeral range: client sockets in TIME_WAIT cannot hold these
            self.base_port = random.randint(20000, 30000)
            if not all(_bindable(self.base_port + i) for i in range(self.replicas)):
                continue
            args = py("-m", "matrix_p2p", "sim-llm", "--host", "127.0.0.1", "--port",
                      str(self.base_port), "--replicas", str(self.replicas), "--seed", str(self.seed))
            if self.max_num_seqs:
                args += ["--max-num-seqs", str(self.max_num_seqs)]
            child = Child(args, f"127.0.0.1:{self.base_port + self.replicas - 1}/v1", "sim")
            try:
                self.child = await child.start(timeout=30)
                break
            except RuntimeError:
                continue  # a port of the range was taken: try another base
        else:
            raise RuntimeError("could not start the simulator")
        self._session = aiohttp.ClientSession()
        faults: dict[str, Any] = {"agree_prob": self.agree_prob}
        if self.max_waiting is not None:
            faults["max_waiting"] = self.max_waiting
        for u in self.urls:
            async with self._session.post(u.removesuffix("/v1") + "/sim/faults", json=faults) as r:
                r.raise_for_status()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self.child is not None:
            await self.child.stop()

    async def stats(self) -> dict[str, Any]:
        """Summed counters of all replicas, with the time and the simulator's CPU."""
        assert self._session is not None
        tot: dict[str, Any] = {"generated_tokens": 0, "completed": 0, "rejected": 0,
                               "aborted": 0, "capacity_tokens_per_s": 0.0, "running": 0,
                               "waiting": 0}
        for u in self.urls:
            async with self._session.get(u.removesuffix("/v1") + "/sim/stats") as r:
                s = await r.json()
            for k in tot:
                tot[k] += s[k]
        tot["t"] = time.time()
        tot["cpu_s"] = cpu_s(self.pid)
        return tot


def delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    secs = max(b["t"] - a["t"], 1e-9)
    gen = b["generated_tokens"] - a["generated_tokens"]
    requests = (b["completed"] - a["completed"]) + (b["rejected"] - a["rejected"])
    return {
        "seconds": round(secs, 2),
        "generated_tokens": gen,
        "tokens_per_s": round(gen / secs, 1),
        "fraction_of_capacity": round(gen / secs / b["capacity_tokens_per_s"], 4),
        "completed": b["completed"] - a["completed"],
        "rejected": b["rejected"] - a["rejected"],
        "rejected_fraction": round((b["rejected"] - a["rejected"]) / max(1, requests), 4),
        "sim_cpu_s": round(b["cpu_s"] - a["cpu_s"], 2),
        "capacity_tokens_per_s": b["capacity_tokens_per_s"],
    }


async def wait_idle(fleet: SimFleet, timeout: float = 30.0) -> None:
    """Until no request runs or waits (a previous client's leftovers drained)."""
    async with asyncio.timeout(timeout):
        while True:
            s = await fleet.stats()
            if s["running"] == 0 and s["waiting"] == 0:
                return
            await asyncio.sleep(0.1)
