"""A workflow's own figures: the numbers its ``summary:`` section asks for, over the rows
a run writes (the mean reward, the pass rate, the verdicts, the agreement rate).

Pure: ``Figures`` is fed each row as the sink writes it (``add``) and says what the
figures are (``results``); ``render`` is the terminal's lines. A row whose field
is absent or null counts as *missing*, never as zero or false: a mean over the
rows that have a reward, and how many had none, not a mean dragged down by
failed tasks that never got one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from matrix_p2p.workflow.spec import Figure

_MISSING = object()


class FigureValue(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One figure as ``summary.json`` holds it."""

    label: str
    kind: str  # mean, rate, count, counts, distinct, ratio
    field: str  # the dotted path; for a ratio, "A / B" (the two figures' labels)
    # mean, rate, ratio: a float; count, distinct: an int; counts: {value: rows}, most
    # frequent first. None: no row had the field (a ratio over zero)
    value: float | int | dict[str, int] | None
    rows: int  # rows that had the field (a ratio: none of its own, 0)
    missing: int  # rows where the field was absent or null (mean: or not a number)
    hits: int | None = None  # rate: rows where it held (absent from the JSON otherwise)


def lookup(row: Mapping[str, Any], path: Sequence[str]) -> Any:
    """The value at ``path`` (keys, or list indexes as digits), or ``_MISSING``."""
    cur: Any = row
    for key in path:
        if isinstance(cur, Mapping):
            cur = cur.get(key, _MISSING)
        elif isinstance(cur, list) and key.isdigit() and int(key) < len(cur):
            cur = cur[int(key)]
        else:
            return _MISSING
        if cur is _MISSING:
            return _MISSING
    return _MISSING if cur is None else cur


def _matches(value: Any, equals: object) -> bool:
    if equals is None:
        return bool(value)
    if isinstance(value, bool) or isinstance(equals, bool):  # true is not 1 here
        return isinstance(value, bool) and isinstance(equals, bool) and value == equals
    return bool(value == equals)


def _key(value: Any) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


class _Acc:
    """The running state of one figure."""

    __slots__ = ("counts", "fig", "hits", "missing", "path", "rows", "total", "values")

    def __init__(self, fig: Figure) -> None:
        self.fig = fig
        field = getattr(fig, fig.kind)
        self.path = tuple(field.split(".")) if isinstance(field, str) else ()
        self.rows = self.missing = self.hits = 0
        self.total = 0.0
        self.counts: dict[str, int] = {}
        self.values: set[str] = set()

    def add(self, row: Mapping[str, Any]) -> None:
        v = lookup(row, self.path)
        kind = self.fig.kind
        if v is _MISSING or (kind == "mean" and (
                isinstance(v, bool) or not isinstance(v, int | float))):
            self.missing += 1
            return
        self.rows += 1
        if kind == "mean":
            self.total += v
        elif kind in ("rate", "count"):
            self.hits += _matches(v, self.fig.equals)
        elif kind == "counts":
            k = _key(v)
            self.counts[k] = self.counts.get(k, 0) + 1
        else:  # distinct
            self.values.add(_key(v))

    def value(self) -> float | int | dict[str, int] | None:
        kind = self.fig.kind
        if kind == "counts":
            return dict(sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))
        if kind == "count":
            return self.hits
        if kind == "distinct":
            return len(self.values)
        if not self.rows:
            return None
        return round((self.total if kind == "mean" else self.hits) / self.rows, 6)


class Figures:
    """The figures of ``figures`` (a workflow's ``summary:``) over the rows ``add`` is given."""

    def __init__(self, figures: Sequence[Figure]) -> None:
        self.figures = list(figures)
        self._accs = [_Acc(f) for f in self.figures if f.ratio is None]

    def add(self, row: Mapping[str, Any]) -> None:
        for acc in self._accs:
            acc.add(row)

    def results(self) -> list[FigureValue]:
        """Every figure in the order the workflow declares them."""
        accs = iter(self._accs)
        out: list[FigureValue] = []
        by_label: dict[str, FigureValue] = {}
        for fig in self.figures:
            if fig.ratio is not None:
                a, b = (by_label[label].value for label in fig.ratio)
                value = (round(a / b, 6) if isinstance(a, int | float) and isinstance(b, int | float)
                         and b else None)
                fv = FigureValue(label=fig.label, kind="ratio", field=" / ".join(fig.ratio),
                                 value=value, rows=0, missing=0)
            else:
                acc = next(accs)
                fv = FigureValue(label=fig.label, kind=fig.kind, field=str(getattr(fig, fig.kind)),
                                 value=acc.value(), rows=acc.rows, missing=acc.missing,
                                 hits=acc.hits if fig.kind == "rate" else None)
            by_label[fig.label] = fv
            out.append(fv)
        return out


def _number(v: float) -> str:
    return f"{v:,.3f}".rstrip("0").rstrip(".") if v != int(v) else f"{int(v):,}"


def text(fv: FigureValue, *, top: int = 6) -> str:
    """The figure's value as the terminal shows it, with what it is over."""
    missing = f", {fv.missing:,} missing" if fv.missing else ""
    v = fv.value
    if isinstance(v, dict):
        shown = ", ".join(f"{k} {n:,}" for k, n in list(v.items())[:top])
        more = f" (+{len(v) - top} more values)" if len(v) > top else ""
        return (shown or "-") + more + (f" ({fv.missing:,} missing)" if fv.missing else "")
    if v is None:
        return f"- (no row had {fv.field})" if fv.kind != "ratio" else f"- ({fv.field}: over 0)"
    if fv.kind == "rate":
        return f"{v:.1%} ({fv.hits:,} of {fv.rows:,}{missing})"
    if fv.kind == "mean":
        return f"{_number(v)} (over {fv.rows:,} rows{missing})"
    if fv.kind == "ratio":
        return _number(v)
    return f"{v:,}"  # count, distinct: the rows without the field are simply not counted


def render(values: Sequence[FigureValue]) -> list[str]:
    """``label  value`` lines, labels aligned."""
    width = max((len(fv.label) for fv in values), default=0)
    return [f"{fv.label:<{width}}  {text(fv)}" for fv in values]
