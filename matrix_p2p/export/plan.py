"""From rows to examples per split, and the count of every row left out. Pure.

``build`` takes the rows (``read``), the workflow's view (``resolve``) and the
options, and returns a ``Plan``: the examples of each split in the order of the
rows, token figures per split, and for every row that gave no example the reason
(a failed task, ``--where``, no answer by the assistant, no pair, ...). A row is
never dropped without being counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from matrix_p2p.errors import ConfigError
from matrix_p2p.export import formats, pairs
from matrix_p2p.export.expr import Expr
from matrix_p2p.export.splits import ALL_TRAIN, Splits, split_of
from matrix_p2p.export.views import Row, Skip, View, conversation

SAMPLES = 3  # ids shown per reason


@dataclass(frozen=True)
class Options:
    fmt: str = "messages"
    where: Expr | None = None
    by: Expr | None = None  # preference: the score
    splits: Splits = ALL_TRAIN
    include_failed: bool = False
    ids: bool = True  # each example names its row(s)


@dataclass
class SplitStats:
    examples: int = 0
    rows: int = 0  # the rows its examples came from
    prompt_tokens: int = 0  # the rows' usage.total
    completion_tokens: int = 0
    answer_tokens: int = 0  # completion tokens of the assistant role (usage.<assistant>)


@dataclass
class Plan:
    fmt: str
    splits: Splits
    examples: dict[str, list[dict[str, Any]]]
    stats: dict[str, SplitStats]
    rows_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    samples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first ids
    workflow: str = ""
    workflow_versions: list[str] = field(default_factory=list)
    code_versions: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.examples.values())

    def skip(self, row_id: str, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        ids = self.samples.setdefault(reason, [])
        if len(ids) < SAMPLES:
            ids.append(row_id)


def workflow_of(rows: Iterable[Row]) -> str:
    """The one workflow the rows came from; a ``ConfigError`` for rows of several."""
    names = sorted({str(r.get("workflow")) for r in rows if r.get("workflow")})
    if len(names) > 1:
        raise ConfigError(f"the rows come from several workflows ({', '.join(names)}): "
                          "export one workflow at a time")
    return names[0] if names else ""


def build(rows: Iterable[Row], view: View, opts: Options) -> Plan:
    """The examples of ``rows`` per split, and the reason for each row left out."""
    if opts.fmt not in formats.FORMATS:
        raise ConfigError(f"--format: unknown format {opts.fmt!r} (one of {', '.join(formats.FORMATS)})")
    if (opts.fmt == "preference") != (opts.by is not None):
        raise ConfigError("--format preference needs --by (the score: higher is chosen)"
                          if opts.by is None else "--by is for --format preference")
    plan = Plan(fmt=opts.fmt, splits=opts.splits, examples={n: [] for n, _ in opts.splits},
                stats={n: SplitStats() for n, _ in opts.splits})
    seen: set[str] = set()
    groups: dict[pairs.GroupKey, list[tuple[pairs.Scored, Row]]] = {}
    wf_versions: set[str] = set()
    code_versions: set[str] = set()
    for row in rows:
        plan.rows_read += 1
        row_id = row.get("id")
        if not isinstance(row_id, str) or not row_id:
            plan.skip("?", "not a row (no id)")
            continue
        if row_id in seen:
            plan.skip(row_id, "an id seen before (the first row is kept)")
            continue
        seen.add(row_id)
        plan.workflow = plan.workflow or str(row.get("workflow") or "")
        wf_versions.add(str(row.get("workflow_version")))
        code_versions.add(str(row.get("code_version")))
        if row.get("status") != "done" and not opts.include_failed:
            plan.skip(row_id, f"status {row.get('status')} (--include-failed keeps them)")
            continue
        if opts.where is not None and not opts.where.test(row):
            plan.skip(row_id, "left out by --where")
            continue
        try:
            msgs = conversation(row, view)
            if opts.by is not None:
                scored = pairs.Scored(row_id=row_id, trial=_int(row.get("trial")),
                                      score=pairs.score(row, opts.by), msgs=msgs)
                groups.setdefault(pairs.group_key(row), []).append((scored, row))
                continue
        except Skip as exc:
            plan.skip(row_id, exc.reason)
            continue
        make = formats.sharegpt_example if opts.fmt == "sharegpt" else formats.messages_example
        _add(plan, split_of(row_id, opts.splits), make(row_id, msgs, view.tools, ids=opts.ids),
             [row], view)
    for members in groups.values():
        _add_pair(plan, members, view, opts)
    plan.workflow_versions = sorted(wf_versions)
    plan.code_versions = sorted(code_versions)
    return plan


def _add_pair(plan: Plan, members: list[tuple[pairs.Scored, Row]], view: View,
              opts: Options) -> None:
    trials = [s for s, _ in members]
    rows = {s.row_id: r for s, r in members}
    try:
        pair, rest = pairs.pick(trials)
        c, r = pair.chosen, pair.rejected
        example = formats.preference_example(c.row_id, c.msgs, c.score, r.row_id, r.msgs,
                                             r.score, view.tools, ids=opts.ids)
    except Skip as exc:
        for s in trials:
            plan.skip(s.row_id, exc.reason)
        return
    for s in rest:
        plan.skip(s.row_id, "neither the best nor the worst trial of its row")
    _add(plan, split_of(c.row_id, opts.splits), example, [rows[c.row_id], rows[r.row_id]], view)


def _add(plan: Plan, split: str, example: dict[str, Any], rows: list[Row], view: View) -> None:
    plan.examples[split].append(example)
    st = plan.stats[split]
    st.examples += 1
    for row in rows:
        st.rows += 1
        usage = _mapping(row.get("usage"))
        total = _mapping(usage.get("total"))
        st.prompt_tokens += _int(total.get("prompt_tokens"))
        st.completion_tokens += _int(total.get("completion_tokens"))
        mine = usage.get(view.assistant) if view.assistant else None
        if isinstance(mine, Mapping):
            st.answer_tokens += _int(mine.get("completion_tokens"))


def _mapping(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0
