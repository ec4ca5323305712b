"""Train/test splits that do not move: a row's split is a hash of its row key. Pure.

The row key is the task id without what varies between runs of one input row:
its trial (``-t1``), attempt (``~a2``), replay (``~r1``), version namespace
(``~v<hash>``) and fan-out child (``/0``). So every trial of a question, and
every question written from one document, land in the same split (no question
in both train and test), and the same row lands in the same split whatever
the order of the files or the rows in them.
"""

from __future__ import annotations

import hashlib
import math
import re

from matrix_p2p.errors import ConfigError

_SUFFIXES = re.compile(r"(?:~a[0-9]+|~r[0-9]+|~v[0-9a-f]+)+$")
_TRIAL = re.compile(r"-t[0-9]+$")
_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")

Splits = tuple[tuple[str, float], ...]
ALL_TRAIN: Splits = (("train", 1.0),)


def row_key(task_id: str) -> str:
    """``q7-t1~a2/0`` -> ``q7``: what every run, trial and child of the row share."""
    root = task_id.split("/", 1)[0]
    return _TRIAL.sub("", _SUFFIXES.sub("", root)) or root


def fraction(key: str) -> float:
    """Where ``key`` falls in [0, 1): the first 8 bytes of its sha256."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(task_id: str, splits: Splits) -> str:
    """The split of the row ``task_id`` belongs to."""
    u = fraction(row_key(task_id))
    edge = 0.0
    for name, share in splits:
        edge += share
        if u < edge:
            return name
    return splits[-1][0]  # rounding: the last edge may fall a hair under 1


def parse_splits(text: str, flag: str = "--split") -> Splits:
    """``train=0.95,test=0.05`` -> ``(("train", 0.95), ("test", 0.05))``; a
    ``ConfigError`` naming ``flag`` for a bad name, share or sum."""
    out: list[tuple[str, float]] = []
    for part in text.split(","):
        name, eq, value = part.strip().partition("=")
        name = name.strip()
        if not eq:
            raise ConfigError(f"{flag}: {part.strip()!r} is not NAME=SHARE (like train=0.95)")
        if not _NAME.match(name):
            raise ConfigError(f"{flag}: split name {name!r} must be letters, digits or '_'")
        if any(name == n for n, _ in out):
            raise ConfigError(f"{flag}: split {name!r} is named twice")
        try:
            share = float(value)
        except ValueError:
            raise ConfigError(f"{flag}: {name}={value.strip()}: the share is not a number") from None
        if not (0 < share <= 1) or math.isnan(share):
            raise ConfigError(f"{flag}: {name}={value.strip()}: the share must be in (0, 1]")
        out.append((name, share))
    total = sum(s for _, s in out)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"{flag}: the shares add up to {total:g}, not 1")
    return tuple(out)
