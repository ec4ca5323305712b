"""The bench's smallest piece runs: relay and runtime hops on a real nats-server.

Checks behaviour (every task finished, figures present and positive), not speed.
"""

from __future__ import annotations

import asyncio

import pytest

from bench import report, runtime


@pytest.mark.timeout(60)
def test_relay_and_runtime_hops_are_measured() -> None:
    async def main() -> dict[str, dict[str, object]]:
        async with asyncio.timeout(45):
            relay = await runtime.hop_run("relay", 0, 60, sync="interval", timeout=30)
            rt = await runtime.hop_run("runtime", 0, 60, sync="interval", timeout=30)
        return {"relay": relay, "runtime": rt}

    runs = asyncio.run(main())
    for r in runs.values():
        assert r["tasks"] == 60
        assert r["done"] == 60
        assert isinstance(r["hops"], int) and r["hops"] >= 3 * 60  # at least one round each
        assert isinstance(r["hops_per_s"], float) and r["hops_per_s"] > 0
    # same workload, same routing: the relay and the runtime take the same hops
    assert runs["relay"]["hops"] == runs["runtime"]["hops"]
    overhead = {f"{k}_{s}_always": v for k, v in runs.items() for s in ("inproc", "1p", "2p")}
    overhead |= {f"{k}_1p_interval": v for k, v in runs.items()}
    figs = report.figures({"overhead": overhead})
    for name in ("broker_relay_hops_per_s", "runtime_hops_per_s", "overhead_ratio"):
        assert figs[name] > 0
