"""When a consumer needs healing: a pure machine, fed readings, returning decisions.

JetStream has open defects in which a stream holds a message that its consumer
will never deliver (nats-server #4736, #6905, #7680; #5564 by design past a
delivery limit), and one seen here after a broker ``kill -9``: a work-queue
message left stored below its consumer's ack floor. Nothing is lost, but the
task never ends. Whoever owns a consumer (a role's workers, a sink) reads,
every ``interval_s``, where the consumer stands and the lowest messages the
stream holds on its subject (a ``Reading``), and asks ``Watch.observe`` what
to do. The I/O is ``liveness.heal``.

Which stored message the consumer will not deliver (``undeliverable``):
- work queue: one at or below the ack floor (the consumer counts it acked, the
  stream should have removed it); one it passed with nothing left unacked (it
  dropped it unacked); one above what it delivered while it says nothing is
  pending;
- limits retention (a sink's results stream, where acked messages stay): the same,
  among the messages the owner was never handed (``Frontier``): one at or below
  the floor there was skipped, not acked.
A message in flight (delivered, unacked, counted in ``ack_pending``) is never one:
neither is one acked a moment ago whose removal the reading raced. To tell them
apart a message must be undeliverable in ``checks`` readings in a row spanning at
least ``hold_s`` (two ``ack_wait``s by default), so a normal in-flight window or
a redelivery that comes only after ``ack_wait`` is not mistaken for one.

What then (``Verdict``):
- ``rerun``: the owner runs the stored message once more, now, as a redelivery
  (``heal.HealedDelivery``): a work queue's copy is deleted when that run acks
  it. A re-run is as harmless as any redelivery only while a successor its hop
  may already have published is inside the broker's dedup window, so its own
  publish (same msg-id ``<task>:<hop+1>``) is dropped. The successor came after
  the consumer delivered the message, so after the later of the time it was
  stored and the last reading in which the consumer had not yet got that far:
  a message is re-run only while that is at most ``safe_age_s`` (half the dedup
  window) ago; the other half is the re-run's own time, as for a redelivery.
  A sink's results are never changed and the sink dedups by task id: always re-run.
- ``park``: a work-queue message older than that is moved to the dead-letter
  stream with the reason: its hop may have run long ago, and running it again
  could finish the task twice. ``dlq requeue`` puts it back if the task did not end.
A message being re-run is not looked at until ``settled``; a sink's re-run one
never again in this process (its consumer still will not deliver it).

Not told apart by a reading: a message the consumer dropped while others are
unacked and its floor is below it (shown once nothing is unacked, or once the floor
passes it), and one it keeps as unacked but never redelivers (nothing says so but
time, and a long hop kept alive by heartbeats looks the same without per-message
state or a coordinator).
"""

from __future__ import annotations

from typing import Literal

import msgspec

Retention = Literal["work_queue", "limits"]


class Held(msgspec.Struct, frozen=True):
    """A message the stream holds on the consumer's subject."""

    seq: int
    time: float  # when the stream stored it (Unix seconds)


class Reading(msgspec.Struct, frozen=True):
    """One check: the consumer's state, then the lowest messages held on its subject
    (a work queue: from its first; a limits stream: those the owner was not handed,
    ``Frontier``), in sequence order, up to the first deliverable one."""

    now: float  # taken before the consumer was read
    pending: int
    ack_pending: int
    delivered: int  # the stream sequence it last delivered
    floor: int  # its ack floor (a stream sequence)
    held: tuple[Held, ...] = ()


class Rerun(msgspec.Struct, frozen=True):
    seq: int
    attempt: int  # 1 for the first re-run of this message in this process


class Verdict(msgspec.Struct, frozen=True):
    rerun: tuple[Rerun, ...] = ()
    park: tuple[int, ...] = ()


def undeliverable(r: Reading, seq: int) -> bool:
    """Whether the consumer, as ``r`` shows it, will never deliver held message ``seq``
    (on a limits stream: one its owner was never handed, ``Frontier``)."""
    if seq > r.delivered:
        return r.pending == 0
    return seq <= r.floor or r.ack_pending == 0


class Frontier:
    """The messages of a limits stream its owner (a sink) has been handed: every sequence
    up to ``low``, and ``seen`` above it. A reading walks from ``low + 1`` and lists only
    the others, so a healthy sink's check reads nothing it already got. ``low`` starts at
    the consumer's floor at the first reading: what was acked before this process started
    is in the sink's file (kept, or rebuilt from the stream at start)."""

    def __init__(self) -> None:
        self.low: int | None = None
        self.seen: set[int] = set()
        self.blind = False  # handed a message without its sequence: reads from the floor on

    def add(self, seq: int | None) -> None:
        if seq is None:
            self.blind = True
        elif self.low is None or seq > self.low:
            self.seen.add(seq)

    def start(self, floor: int) -> int:
        """The first sequence to read (``floor`` sets ``low`` at the first call)."""
        if self.blind:
            return floor + 1
        if self.low is None:
            self.low = floor
        self.pass_to(self.low)
        return self.low + 1

    def pass_to(self, seq: int) -> None:
        """Everything up to ``seq`` is accounted for (seen, or not stored); then every
        seen sequence that follows without a gap."""
        low = max(self.low or 0, seq)
        self.seen = {s for s in self.seen if s > low}
        while low + 1 in self.seen:
            low += 1
            self.seen.discard(low)
        self.low = low


class Watch:
    """The decisions for one consumer (see the module docstring). Pure: ``now`` comes in
    with each reading."""

    def __init__(self, retention: Retention, *, hold_s: float, safe_age_s: float,
                 checks: int = 3) -> None:
        self.retention: Retention = retention
        self.hold_s = hold_s
        self.safe_age_s = safe_age_s
        self.checks = checks
        self._suspects: dict[int, tuple[float, int]] = {}  # seq -> (first seen, readings in a row)
        self._busy: set[int] = set()  # being re-run now
        self._done: set[int] = set()  # limits: re-run once, never again
        self._attempts: dict[int, int] = {}
        self._not_before: dict[int, float] = {}  # a re-run that asked to retry later
        # (reading time, highest delivered sequence seen up to then), the last safe_age_s
        self._marks: list[tuple[float, int]] = []

    def observe(self, r: Reading) -> Verdict:
        """What to do after reading ``r``; re-runs are busy until ``settled``."""
        self._mark(r)
        suspects = {h.seq: h for h in r.held if undeliverable(r, h.seq)
                    and h.seq not in self._busy and h.seq not in self._done}
        self._suspects = {s: v for s, v in self._suspects.items() if s in suspects}
        rerun: list[Rerun] = []
        park: list[int] = []
        for seq, h in suspects.items():
            first, n = self._suspects.get(seq, (r.now, 0))
            self._suspects[seq] = (first, n + 1)
            if n + 1 < self.checks or r.now - first < self.hold_s:
                continue
            if r.now < self._not_before.get(seq, 0.0):
                continue
            del self._suspects[seq]
            if self.retention == "work_queue" and r.now - self.since(h) > self.safe_age_s:
                park.append(seq)
                continue
            self._busy.add(seq)
            self._attempts[seq] = attempt = self._attempts.get(seq, 0) + 1
            rerun.append(Rerun(seq=seq, attempt=attempt))
        self._forget(r)
        return Verdict(rerun=tuple(rerun), park=tuple(park))

    def settled(self, seq: int, *, gone: bool, retry_at: float | None = None) -> None:
        """A re-run ended: ``gone`` (acked, termed, or no longer stored), or handed back
        (nak, crash) to be re-run again once it is seen stuck again (not before ``retry_at``)."""
        self._busy.discard(seq)
        if gone:
            self._not_before.pop(seq, None)
            if self.retention == "limits":
                self._done.add(seq)
            else:
                self._attempts.pop(seq, None)
        elif retry_at is not None:
            self._not_before[seq] = retry_at

    def since(self, h: Held) -> float:
        """The earliest time a successor of ``h`` can have been published: after it was
        stored, and after the last reading in which the consumer had not delivered it."""
        before = [t for t, high in self._marks if high < h.seq]
        return max([h.time, *before])

    @property
    def busy(self) -> frozenset[int]:
        return frozenset(self._busy)

    def _mark(self, r: Reading) -> None:
        # the highest delivered so far, not the reading's own: a consumer restored from an
        # older state (a broker crash) may show less than it once delivered
        high = max(r.delivered, self._marks[-1][1] if self._marks else 0)
        self._marks.append((r.now, high))
        while self._marks and self._marks[0][0] < r.now - self.safe_age_s:
            self._marks.pop(0)

    def _forget(self, r: Reading) -> None:
        """Drop what is kept about messages no longer held (below the last one read)."""
        top = r.held[-1].seq if r.held else None  # nothing held: nothing to keep
        held = {h.seq for h in r.held}
        for table in (self._attempts, self._not_before):
            for seq in [s for s in table if (top is None or s < top) and s not in held
                        and s not in self._busy]:
                del table[seq]
