"""What ``report`` says about the rows of an output file: counts by status, the kept rows,
the workflow's figures, histograms, latency per role, cost, and example rows.

Pure: ``build`` takes the rows (as ``export/read`` gives them), the workflow's figures
and the prices of its roles, and returns a ``Report`` the text and HTML renderers
draw. Each token and each second is counted in one row: a replay's or a fan-out
child's row counts only its own turns (``own_dialogue``; its usage already does),
as ``runtime/rowformat`` writes them. A value that is absent counts as missing,
never as zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matrix_p2p.report.figures import Figures, FigureValue
from matrix_p2p.workflow.spec import Figure

Row = Mapping[str, Any]
# a role's price per 1,000 tokens: (prompt, completion)
Prices = Mapping[str, tuple[float, float]]

BINS = 10  # a numeric histogram's bins when it has more distinct values than this


@dataclass(frozen=True)
class Histogram:
    """Counts per bin, in order. ``rows``: the values counted; ``missing``: rows without one."""

    title: str
    bins: list[tuple[str, int]]
    rows: int
    missing: int = 0

    @property
    def total(self) -> int:
        return sum(n for _, n in self.bins)


@dataclass(frozen=True)
class Spread:
    """A numeric distribution in five numbers (over ``n`` values)."""

    n: int
    mean: float
    p50: float
    p90: float
    max: float


@dataclass(frozen=True)
class Cost:
    total: float  # every row's tokens, failed and filtered rows included: they were paid for
    by_role: dict[str, float]
    kept: int
    per_kept_row: float | None  # None when no row was kept
    unpriced_roles: list[str]  # roles that used tokens but have no price


@dataclass(frozen=True)
class ExampleTurn:
    role: str
    content: str
    tokens: int
    elapsed_s: float | None
    tool_calls: list[str] = field(default_factory=list)  # "name(arguments)"


@dataclass(frozen=True)
class Example:
    id: str
    status: str
    note: str  # why this row was picked: kept, filtered (reason), failed (error)
    result: dict[str, Any]
    turns: list[ExampleTurn]


@dataclass
class Report:
    source: str
    workflow: str
    rows: int  # rows read (lines that are row objects)
    unreadable: int  # lines that are not JSON objects, or objects with no id and status
    by_status: dict[str, int]
    kept: int  # done rows the filters kept (all done rows of a workflow without filters)
    filtered: int | None  # done rows a filter dropped; None: no row carries a filter status
    fanned_out: int  # done parents whose children are the rows
    duplicate_ids: dict[str, int]  # id -> rows with it (an output holds each task once)
    figures: list[FigureValue]
    histograms: list[Histogram]
    latency: dict[str, Spread]  # per role: seconds per turn
    latency_histograms: list[Histogram]
    spreads: dict[str, Spread]  # per histogram title of the numeric ones
    tokens: dict[str, tuple[int, int]]  # per role that used any: (prompt, completion), own turns
    cost: Cost | None
    examples: list[Example]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- one row
def _get(row: Row, *path: str) -> Any:
    cur: Any = row
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def own_dialogue(row: Row) -> list[Mapping[str, Any]]:
    """The turns ``row`` counts as its own: a replay's begin where its original ended, a
    fan-out child's after its parent's (``result.replay`` / ``result.spawn``'s
    ``from_turn``, as ``runtime/hop.own_turns``); every other row's are all of them."""
    turns = row.get("dialogue")
    if not isinstance(turns, list):
        return []
    start = 0
    for key in ("replay", "spawn"):
        mark = _get(row, "result", key)
        if isinstance(mark, Mapping):
            start = int(mark.get("from_turn", 0) or 0)
            break
    return [t for t in turns[start:] if isinstance(t, Mapping)]


def _tokens(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, Mapping):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def row_tokens(row: Row) -> int | None:
    """Prompt and completion tokens of the row (its ``usage.total``), None without one."""
    total = _get(row, "usage", "total")
    return sum(_tokens(total)) if isinstance(total, Mapping) else None


def filter_status(row: Row) -> str:
    """``failed`` (any status but done), ``fanned_out`` (a parent: its children are the
    rows), ``kept``, ``filtered``, or ``unfiltered`` (a done row with no filter status).
    The same test as ``runtime/filter_counts`` and ``rowformat.is_kept``."""
    result = row.get("result")
    result = result if isinstance(result, Mapping) else {}
    # a null is an absent field: Parquet rows hold every column, null where a row lacks it
    if row.get("status") != "done":
        return "failed"
    if result.get("children") is not None or row.get("children") is not None:
        return "fanned_out"
    if result.get("kept") is True:
        return "kept"
    if result.get("kept") is not None:
        return "filtered"
    return "unfiltered"


# ---------------------------------------------------------------- distributions
def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile (a value that occurs)."""
    i = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[i]


def spread(values: Sequence[float]) -> Spread | None:
    if not values:
        return None
    s = sorted(values)
    return Spread(n=len(s), mean=round(sum(s) / len(s), 6), p50=_quantile(s, 0.5),
                  p90=_quantile(s, 0.9), max=s[-1])


def _label(v: float) -> str:
    if v == int(v):
        return str(int(v))
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def numeric_histogram(title: str, values: Sequence[float], missing: int = 0,
                      bins: int = BINS) -> Histogram:
    """One bin per value when there are at most ``bins`` distinct ones (rewards of 0
    and 1, turns per task), else ``bins`` equal widths from the least to the most,
    each ``[lo, hi)`` and the last ``[lo, hi]``: every value in exactly one bin."""
    distinct = sorted(set(values))
    if len(distinct) <= bins:
        return Histogram(title, [(_label(v), values.count(v)) for v in distinct], len(values),
                         missing)
    lo, hi = distinct[0], distinct[-1]
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    edges = [lo + i * width for i in range(bins + 1)]
    labels = [f"{_label(edges[i])}-{_label(edges[i + 1])}" for i in range(bins)]
    return Histogram(title, list(zip(labels, counts, strict=True)), len(values), missing)


def counts_histogram(title: str, counts: Mapping[str, int], missing: int = 0) -> Histogram:
    """Categories, the most frequent first (ties by name)."""
    bins = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return Histogram(title, bins, sum(counts.values()), missing)


def _key(v: Any) -> str:
    return v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else repr(v)


# ---------------------------------------------------------------- the report
def build(rows: Sequence[Row], *, source: str = "", unreadable: int = 0,
          figures: Sequence[Figure] = (), prices: Prices | None = None,
          examples: int = 3) -> Report:
    """The report over ``rows``. ``figures``: the workflow's ``summary:`` section;
    ``prices``: per role (None: no role has a price, no cost is shown)."""
    by_status: dict[str, int] = {}
    filter_states: dict[str, int] = {}
    reasons: dict[str, int] = {}
    verdicts: dict[str, int] = {}
    ids: dict[str, int] = {}
    rewards: list[float] = []
    turns: list[float] = []
    tokens: list[float] = []
    latency: dict[str, list[float]] = {}
    role_tokens: dict[str, tuple[int, int]] = {}
    figs = Figures(figures)
    for row in rows:
        status = str(row.get("status"))
        by_status[status] = by_status.get(status, 0) + 1
        rid = str(row.get("id"))
        ids[rid] = ids.get(rid, 0) + 1
        state = filter_status(row)
        filter_states[state] = filter_states.get(state, 0) + 1
        if state == "filtered":
            why = str(_get(row, "result", "filter_reason") or "unknown")
            reasons[why] = reasons.get(why, 0) + 1
        verdict = _get(row, "result", "verdict")
        if verdict is not None:
            verdicts[_key(verdict)] = verdicts.get(_key(verdict), 0) + 1
        reward = _number(_get(row, "result", "reward"))
        if reward is not None:
            rewards.append(reward)
        own = own_dialogue(row)
        turns.append(float(len(own)))
        n = row_tokens(row)
        if n is not None:
            tokens.append(float(n))
        for t in own:
            elapsed = _number(t.get("elapsed_s"))
            if elapsed is not None:
                latency.setdefault(str(t.get("role")), []).append(elapsed)
        usage = row.get("usage")
        if isinstance(usage, Mapping):
            for role, u in usage.items():
                if role == "total":
                    continue
                p, c = _tokens(u)
                old = role_tokens.get(role, (0, 0))
                role_tokens[role] = (old[0] + p, old[1] + c)
        figs.add(row)

    n_rows = len(rows)
    hists = [numeric_histogram("reward", rewards, n_rows - len(rewards))] if rewards else []
    if verdicts:
        hists.append(counts_histogram("verdicts", verdicts, n_rows - sum(verdicts.values())))
    if reasons:
        hists.append(counts_histogram("filter reasons", reasons))
    hists.append(numeric_histogram("turns per task", turns))
    hists.append(numeric_histogram("tokens per task", tokens, n_rows - len(tokens)))
    spreads = {h: s for h, vals in (("reward", rewards), ("turns per task", turns),
                                    ("tokens per task", tokens))
               if (s := spread(vals)) is not None}
    lat = {role: s for role in sorted(latency) if (s := spread(latency[role])) is not None}
    lat_hists = [numeric_histogram(f"{role} latency (s)", latency[role]) for role in sorted(latency)]

    filtered = (filter_states.get("filtered", 0)
                if "kept" in filter_states or "filtered" in filter_states else None)
    kept = filter_states.get("kept", 0) if filtered is not None else \
        filter_states.get("unfiltered", 0)
    return Report(
        source=source, workflow=", ".join(workflow_names(rows)), rows=n_rows, unreadable=unreadable,
        by_status=dict(sorted(by_status.items(), key=lambda kv: (-kv[1], kv[0]))),
        kept=kept, filtered=filtered, fanned_out=filter_states.get("fanned_out", 0),
        duplicate_ids={i: n for i, n in sorted(ids.items()) if n > 1},
        figures=figs.results(), histograms=hists, latency=lat, latency_histograms=lat_hists,
        spreads=spreads, tokens={k: v for k, v in sorted(role_tokens.items()) if any(v)},
        cost=_cost(role_tokens, prices, kept) if prices else None,
        examples=pick_examples(rows, examples),
    )


def workflow_names(rows: Sequence[Row]) -> list[str]:
    """The workflows the rows name, sorted."""
    return sorted({str(r.get("workflow")) for r in rows if r.get("workflow")})


def _cost(role_tokens: Mapping[str, tuple[int, int]], prices: Prices, kept: int) -> Cost:
    by_role: dict[str, float] = {}
    unpriced = []
    for role, (p, c) in sorted(role_tokens.items()):
        if role not in prices:
            if p or c:
                unpriced.append(role)
            continue
        pp, pc = prices[role]
        by_role[role] = round((p * pp + c * pc) / 1000.0, 6)
    total = round(sum(by_role.values()), 6)
    return Cost(total=total, by_role=by_role, kept=kept,
                per_kept_row=round(total / kept, 6) if kept else None, unpriced_roles=unpriced)


# ---------------------------------------------------------------- examples
def pick_examples(rows: Sequence[Row], n: int) -> list[Example]:
    """Up to ``n`` rows in file order, one of each kind first (a kept or done row, a
    filtered one, a failed one), so that a glance shows what the good and the bad look
    like."""
    if n <= 0:
        return []
    first: dict[str, Row] = {}
    for row in rows:
        kind = filter_status(row)
        kind = "kept" if kind == "unfiltered" else kind
        if kind != "fanned_out":
            first.setdefault(kind, row)
    chosen = [first[k] for k in ("kept", "filtered", "failed") if k in first][:n]
    for row in rows:
        if len(chosen) >= n:
            break
        if not any(row is c for c in chosen) and filter_status(row) != "fanned_out":
            chosen.append(row)
    return [_example(r) for r in chosen]


def _example(row: Row) -> Example:
    kind = filter_status(row)
    if kind == "failed":
        note = f"{row.get('status')}: {row.get('error') or 'no error given'}"
    elif kind == "filtered":
        note = f"filtered: {_get(row, 'result', 'filter_reason') or 'unknown'}"
    else:
        note = kind if kind == "kept" else "done"  # unfiltered: a workflow without filters
    turns = []
    for t in own_dialogue(row):
        calls = _get(t, "meta", "tool_calls")
        turns.append(ExampleTurn(
            role=str(t.get("role")), content=str(t.get("content") or ""),
            tokens=sum(_tokens(t.get("usage"))), elapsed_s=_number(t.get("elapsed_s")),
            tool_calls=[f"{c.get('name')}({c.get('arguments', '')})" for c in calls
                        if isinstance(c, Mapping)] if isinstance(calls, list) else []))
    result = row.get("result")
    return Example(id=str(row.get("id")), status=str(row.get("status")), note=note,
                   result=dict(result) if isinstance(result, Mapping) else {}, turns=turns)
