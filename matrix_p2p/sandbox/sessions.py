"""The leases' sessions as a pure table: what a start or a call must do. No I/O.

A session is one long-lived program started inside a lease's sandbox that
answers requests, one JSON line in and one JSON line out, over its
stdin/stdout (``session_host`` carries the processes). A lease has at most
one. Per lease::

    (none) --start--> spawning --spawned--> live --died--> dead
                          ^                   |  \\--start (same spec)--> live (kept)
                          +--start (other spec) / call on a dead one------+

A call on a live session is sent; on a dead one the program is spawned
again first and the reply says so (``Respawn.lost``: why the old process
ended, with its in-memory state). Each spawn is a new *generation*: the
death of an older process (one replaced or killed earlier) never marks a
newer one dead. Ending the lease drops its row; the service kills the slot's
processes, this one included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from matrix_p2p.sandbox.errors import NoSession

StartAction = Literal["keep", "spawn", "replace"]


@dataclass(frozen=True)
class SessionSpec:
    """What to run: ``argv`` in ``cwd`` (inside the sandbox) with ``env`` on a clean environment."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None

    @classmethod
    def of(cls, argv: Sequence[str], env: Mapping[str, str] | None = None,
           cwd: str | None = None) -> SessionSpec:
        return cls(tuple(argv), tuple(sorted((env or {}).items())), cwd)


@dataclass
class SessionRecord:
    spec: SessionSpec
    live: bool = False  # the current generation's process is running
    generation: int = 0  # processes spawned for this lease so far
    calls: int = 0
    lost: str | None = None  # why the last process ended, until a respawn reports it


@dataclass(frozen=True)
class Respawn:
    """A call found its session dead: spawn the program again, then send. ``lost`` is
    why the previous process ended (its in-memory state went with it)."""

    lost: str


@dataclass
class SessionCounters:
    started: int = 0  # processes spawned, restarts included
    restarted: int = 0  # of which: spawned again by a call on a dead session
    calls: int = 0  # calls answered
    died: int = 0  # processes that ended while their session was wanted
    timeouts: int = 0  # of which: killed because a call got no reply in time


@dataclass
class SessionTable:
    rows: dict[str, SessionRecord] = field(default_factory=dict)
    counters: SessionCounters = field(default_factory=SessionCounters)

    def start(self, lease_id: str, spec: SessionSpec) -> StartAction:
        """``keep`` the live session with this very spec, else spawn one (``replace``:
        kill the live one with another spec first). A dead one is spawned again."""
        row = self.rows.get(lease_id)
        if row is not None and row.live and row.spec == spec:
            return "keep"
        replace = row is not None and row.live
        generation = row.generation if row is not None else 0
        self.rows[lease_id] = SessionRecord(spec, generation=generation)
        return "replace" if replace else "spawn"

    def call(self, lease_id: str) -> Respawn | None:
        """None: send to the live process. ``Respawn``: it is gone; spawn it again first.
        Raises ``NoSession`` when no session was started on the lease."""
        row = self.rows.get(lease_id)
        if row is None:
            raise NoSession(f"no session on lease {lease_id!r} (POST /sessions/start first)")
        if row.live:
            return None
        return Respawn(row.lost or "it was never started")

    def spawned(self, lease_id: str, respawn: bool = False) -> int:
        """A process was spawned for the lease's session: its generation."""
        row = self._row(lease_id)
        row.generation += 1
        row.live, row.lost = True, None
        self.counters.started += 1
        self.counters.restarted += respawn
        return row.generation

    def answered(self, lease_id: str) -> None:
        row = self.rows.get(lease_id)
        if row is not None:
            row.calls += 1
        self.counters.calls += 1

    def died(self, lease_id: str, generation: int, why: str, *, timed_out: bool = False) -> bool:
        """Generation ``generation`` of the lease's session ended. False (ignored) when
        that is not the current live process: the lease ended, or it was replaced."""
        row = self.rows.get(lease_id)
        if row is None or row.generation != generation or not row.live:
            return False
        row.live, row.lost = False, why
        self.counters.died += 1
        self.counters.timeouts += timed_out
        return True

    def spawn_failed(self, lease_id: str, why: str) -> None:
        """The program could not even be spawned: the session stays dead, the next call tries again."""
        row = self.rows.get(lease_id)
        if row is not None:
            row.live, row.lost = False, why

    def drop(self, lease_id: str) -> SessionRecord | None:
        """The session is no longer wanted (stopped, or its lease ended)."""
        return self.rows.pop(lease_id, None)

    def has(self, lease_id: str) -> bool:
        return lease_id in self.rows

    def live(self) -> int:
        return sum(1 for row in self.rows.values() if row.live)

    def _row(self, lease_id: str) -> SessionRecord:
        row = self.rows.get(lease_id)
        if row is None:
            raise NoSession(f"no session on lease {lease_id!r}")
        return row
