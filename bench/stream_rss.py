"""``python -m bench.stream_rss [--rows N]``: a million-row source through ``submit``,
with the peak RSS of the submitting process sampled as it goes (flat memory).

Writes N small documents to a ``.jsonl.zst`` file, starts a nats-server, and runs
``python -m matrix_p2p submit dummy --source FILE`` as a child process (admission
window ``limits.max_inflight`` = 10,000 live tasks). This process drains the entry
role's consumer (acks only, so that admission keeps moving) and samples the
child's resident memory every half second from ``/proc``: the figure is the
peak RSS at 10 %, 50 % and 100 % of the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zstandard

from bench import harness
from bench.procs import child_env
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow.loader import load


def write_source(path: Path, rows: int) -> None:
    cctx = zstandard.ZstdCompressor(level=3)
    with path.open("wb") as raw, cctx.stream_writer(raw) as out:
        for i in range(rows):
            out.write(json.dumps({"id": f"d{i}", "text": f"Document {i}: " + "word " * 20,
                                  "url": f"https://example.com/{i}"}).encode() + b"\n")


def _proc_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def measure(rows: int, work: Path) -> dict[str, Any]:
    src = work / "docs.jsonl.zst"
    t = time.time()
    write_source(src, rows)
    print(f"wrote {rows:,} rows ({src.stat().st_size / 2**20:.1f} MB) in {time.time() - t:.0f}s",
          flush=True)
    spec = load("dummy")
    names = Names.of(spec)
    entry = spec.entry_role()
    async with harness.broker("interval") as (server, bus):
        await harness.setup_workflow(bus, spec)
        puller = await bus.puller(names.tasks_stream, entry)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "matrix_p2p", "submit", "dummy", "--source", str(src),
            "--nats", server.url, env=child_env(), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        samples: list[tuple[float, int, int]] = []  # (seconds, acked rows, RSS kB)
        acked = 0
        t0 = time.time()

        async def drain() -> None:
            nonlocal acked
            while child.returncode is None or acked < rows:
                for d in await puller.fetch(1000, 0.5):
                    await d.ack()
                    acked += 1
                if child.returncode is not None and acked >= rows:
                    return

        async def sample() -> None:
            while child.returncode is None:
                samples.append((time.time() - t0, acked, _proc_kb(child.pid, "VmRSS")))
                await asyncio.sleep(0.5)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(drain())
            tg.create_task(sample())
            out, _ = await child.communicate()
        await puller.unsubscribe()
    secs = time.time() - t0
    peak = max(s[2] for s in samples)

    def peak_until(frac: float) -> float:
        return max((s[2] for s in samples if s[1] <= frac * rows), default=0) / 1024

    return {"rows": rows, "seconds": round(secs, 1), "rows_per_s": round(rows / secs),
            "returncode": child.returncode, "output": out.decode().strip().splitlines()[-1:],
            "peak_rss_mb": round(peak / 1024, 1),
            "peak_rss_mb_by_fraction": {f"{int(f * 100)}%": round(peak_until(f), 1)
                                        for f in (0.1, 0.5, 1.0)}}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.stream_rss", description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="mx-rss-") as tmp:
        r = asyncio.run(measure(args.rows, Path(tmp)))
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
