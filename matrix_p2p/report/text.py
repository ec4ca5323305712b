"""``report`` in the terminal: a ``stats.Report`` as lines of text, histograms as bars.

Pure: ``render`` returns the lines; the command prints them.
"""

from __future__ import annotations

from matrix_p2p.report import figures
from matrix_p2p.report.stats import Example, Histogram, Report, Spread

BAR = 30  # characters of the longest bar
CONTENT = 300  # characters of a turn shown in an example


def _n(v: float) -> str:
    return f"{int(v):,}" if v == int(v) else f"{v:,.3f}".rstrip("0").rstrip(".")


def _pct(n: int, of: int) -> str:
    return f"{n / of:.0%}" if of else "-"


def histogram(h: Histogram) -> list[str]:
    """``label  ####  count  share`` per bin, the bars scaled to the largest bin."""
    top = max((n for _, n in h.bins), default=0)
    width = max((len(label) for label, _ in h.bins), default=0)
    missing = f", {h.missing:,} rows without one" if h.missing else ""
    lines = [f"{h.title} ({h.rows:,} values{missing})"]
    for label, n in h.bins:
        bar = "#" * (round(BAR * n / top) if top else 0)
        if n and not bar:
            bar = "."  # a bin that holds something never looks empty
        lines.append(f"  {label:>{width}}  {bar:<{BAR}}  {n:>7,}  {_pct(n, h.total):>4}")
    return lines


def spread(s: Spread) -> str:
    return f"n {s.n:,}  mean {_n(s.mean)}  p50 {_n(s.p50)}  p90 {_n(s.p90)}  max {_n(s.max)}"


def example(ex: Example, *, limit: int = CONTENT) -> list[str]:
    lines = [f"--- {ex.id} ({ex.note})"]
    for t in ex.turns:
        took = f", {t.elapsed_s:.2f}s" if t.elapsed_s is not None else ""
        head = f"  [{t.role}] ({t.tokens:,} tokens{took})"
        text = " ".join(t.content.split())
        if len(text) > limit:
            text = text[:limit] + f"... (+{len(text) - limit:,} chars)"
        lines.append(f"{head} {text}" if text else head)
        lines += [f"      -> {call[:limit]}" for call in t.tool_calls]
    return lines


def render(r: Report) -> list[str]:
    """The whole report, section by section."""
    status = ", ".join(f"{s} {n:,}" for s, n in r.by_status.items()) or "-"
    lines = [f"{r.source}: {r.rows:,} rows of {r.workflow or 'no named workflow'}; {status}"]
    if r.unreadable:
        lines.append(f"  {r.unreadable:,} lines were not rows (left out)")
    if r.duplicate_ids:
        eg = ", ".join(list(r.duplicate_ids)[:3])
        lines.append(f"  WARNING: {len(r.duplicate_ids):,} ids appear in more than one row "
                     f"(e.g. {eg}): an output holds each task once")
    kept = f"  kept {r.kept:,}"
    if r.filtered is not None:
        kept += f", filtered {r.filtered:,}"
    if r.fanned_out:
        kept += f", fanned-out parents {r.fanned_out:,}"
    lines.append(kept)
    lines += [f"  note: {n}" for n in r.notes]
    if r.figures:
        lines += ["", "figures"] + [f"  {ln}" for ln in figures.render(r.figures)]
    lines += _tokens(r)
    for h in r.histograms:
        lines += ["", *histogram(h)]
        if h.title in r.spreads:
            lines.append(f"  {spread(r.spreads[h.title])}")
    if r.latency:
        width = max(len(role) for role in r.latency)
        lines += ["", "latency per turn by role (s)"]
        lines += [f"  {role:<{width}}  {spread(s)}" for role, s in r.latency.items()]
    if r.examples:
        lines += ["", f"examples ({len(r.examples)} of {r.rows:,} rows)"]
        for ex in r.examples:
            lines += example(ex)
    return lines


def _tokens(r: Report) -> list[str]:
    if not r.tokens:
        return []
    cost = r.cost
    lines = ["", f"  {'role':<16}{'prompt tok':>14}{'completion tok':>16}"
             + (f"{'cost':>12}" if cost else "")]
    for role, (p, c) in r.tokens.items():
        money = ""
        if cost:
            money = f"{cost.by_role[role]:>12,.4f}" if role in cost.by_role else f"{'-':>12}"
        lines.append(f"  {role:<16}{p:>14,}{c:>16,}{money}")
    tp = sum(p for p, _ in r.tokens.values())
    tc = sum(c for _, c in r.tokens.values())
    lines.append(f"  {'total':<16}{tp:>14,}{tc:>16,}" + (f"{cost.total:>12,.4f}" if cost else ""))
    if cost:
        per = f"{cost.per_kept_row:,.6f}" if cost.per_kept_row is not None else "- (no row kept)"
        lines.append(f"  cost per kept row: {per} (all rows' tokens over {cost.kept:,} kept rows)")
        if cost.unpriced_roles:
            lines.append(f"  no price for: {', '.join(cost.unpriced_roles)} (not in the cost)")
    return lines
