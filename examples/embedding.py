"""Embedding matrix_p2p (docs/agents.md, "Run it from Python").

    python examples/embedding.py run OUT_DIR      # blocking run, as in a notebook
    python examples/embedding.py serve OUT_DIR    # workers inside an asyncio service
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import matrix_p2p
from matrix_p2p.broker import EmbeddedNats  # stands in for your broker
from matrix_p2p.sim.config import SimConfig  # stands in for your vLLM servers
from matrix_p2p.sim.server import start_fleet

WORKFLOW = Path(__file__).parent / "review" / "review.yaml"


def blocking(out_dir: Path) -> None:
    """One call: embedded broker, simulator, workers, source and sink; the summary back."""
    result = matrix_p2p.run(WORKFLOW, limit=4, out=out_dir / "review.jsonl",
                            store=out_dir / "store")
    print(f"run: {result.rows} rows, {result.dataset_done} done, {result.dataset_failed} failed"
          f" (summary in {Path(result.summary or '').name})")


QUESTIONS = [{"id": "a", "question": "Why is the sky blue?"},
             {"id": "b", "question": "What makes a good unit test?"}]


async def service(out_dir: Path) -> None:
    """An existing asyncio service hosts the workers, submits rows it holds in memory
    and collects their rows; the broker and the LLM servers are its own."""
    with EmbeddedNats(store_dir=out_dir / "nats") as broker:
        sims = await start_fleet(SimConfig(seed=1), replicas=1, host="127.0.0.1", base_port=0)
        try:
            async with matrix_p2p.serve(WORKFLOW, nats=broker.url, llm_urls=sims[0].url) as served:
                sub = await matrix_p2p.submit(WORKFLOW, nats=broker.url, source=QUESTIONS,
                                              store=out_dir / "store")
                async with asyncio.timeout(60):
                    rows = await matrix_p2p.collect(WORKFLOW, nats=broker.url, ids=sub)
                done = sum(row["status"] == "done" for row in rows)
                print(f"serve: {len(rows)} rows ({done} done), {served.stats.hops} hops "
                      "in this service")
        finally:
            for s in sims:
                await s.stop()


if __name__ == "__main__":
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "run":
        blocking(out)
    else:
        asyncio.run(service(out))
