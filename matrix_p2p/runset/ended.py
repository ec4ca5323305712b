"""Whether a run's tasks have all ended: the sink's completion, and the attempts an
interrupted ``--retry-failed`` left behind (the one look-up in the store)."""

from __future__ import annotations

from matrix_p2p.bus import KeyValue
from matrix_p2p.runtime.attempts import submitted_attempts
from matrix_p2p.runtime.sink import Sink


async def all_ended(sink: Sink, submitted: KeyValue) -> bool:
    """Every task of the sink's set has the row of the attempt the run waits for. A
    failed one may have a later attempt that an interrupted ``--retry-failed`` submitted
    (recorded in the ``submitted`` bucket): the run waits for that too. Looked up only
    once all else is there, and only for the failed tasks."""
    if not sink.finished():
        return False
    assert sink.completion is not None
    for tid in await submitted_attempts(submitted, sink.completion.failed_bases()):
        sink.completion.expect_attempt(tid)
    return sink.finished()
