"""``report --html``: a ``stats.Report`` as one self-contained HTML page.

Pure: ``render`` returns the page as a string. Plots are inline SVG, the style is
inline CSS; the page loads nothing (no script, no font, no image, no network), so
it opens from a file anywhere and can be mailed. Every text from the rows is
escaped.
"""

from __future__ import annotations

from html import escape

from matrix_p2p.report import figures
from matrix_p2p.report.stats import Example, Histogram, Report, Spread

CONTENT = 4000  # characters of a turn shown in an example

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.2em .8em;text-align:right;
border-bottom:1px solid #eee}td:first-child,th:first-child{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:1.2em}.plot{border:1px solid #e4e4e4;padding:.4em}
.warn{color:#a00;font-weight:bold}.turn{margin:.3em 0 .3em 1em;padding:.3em .6em;
border-left:3px solid #9ab;background:#f7f9fb;white-space:pre-wrap;word-break:break-word}
.role{font-weight:bold}.meta{color:#777;font-size:.9em}.call{font-family:monospace;color:#045}
"""

W, H = 440, 220  # an SVG plot's size
_PAD_L, _PAD_B, _PAD_T = 44, 56, 34


def _n(v: float) -> str:
    return f"{int(v):,}" if v == int(v) else f"{v:,.3f}".rstrip("0").rstrip(".")


def svg_bars(h: Histogram) -> str:
    """A bar chart of ``h``: one bar per bin, its count above it, labels below."""
    top = max((n for _, n in h.bins), default=0) or 1
    inner_w, inner_h = W - _PAD_L - 8, H - _PAD_B - _PAD_T
    step = inner_w / max(len(h.bins), 1)
    parts = [f'<svg width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="{escape(h.title)}">',
             f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="13" '
             f'font-weight="bold">{escape(h.title)}</text>',
             f'<line x1="{_PAD_L}" y1="{_PAD_T + inner_h}" x2="{W - 8}" y2="{_PAD_T + inner_h}" '
             'stroke="#888"/>',
             f'<text x="{_PAD_L - 4}" y="{_PAD_T + 4}" text-anchor="end" font-size="10">'
             f'{top:,}</text>']
    for i, (label, n) in enumerate(h.bins):
        bh = inner_h * n / top
        x = _PAD_L + i * step + step * 0.1
        y = _PAD_T + inner_h - bh
        lx = x + step * 0.4
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * 0.8:.1f}" '
                     f'height="{bh:.1f}" fill="#4a78a8"><title>{escape(label)}: {n:,}'
                     '</title></rect>')
        parts.append(f'<text x="{lx:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                     f'font-size="10">{n:,}</text>')
        short = label if len(label) <= 14 else label[:13] + "\u2026"
        ly = _PAD_T + inner_h + 12
        parts.append(f'<text x="{lx:.1f}" y="{ly}" font-size="10" text-anchor="end" '
                     f'transform="rotate(-35 {lx:.1f} {ly})">{escape(short)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _plot(h: Histogram, s: Spread | None) -> str:
    note = f"{h.rows:,} values" + (f", {h.missing:,} rows without one" if h.missing else "")
    if s is not None:
        note += f"; mean {_n(s.mean)}, p50 {_n(s.p50)}, p90 {_n(s.p90)}, max {_n(s.max)}"
    return f'<div class="plot">{svg_bars(h)}<div class="meta">{escape(note)}</div></div>'


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _example(ex: Example) -> str:
    out = [f"<h3>{escape(ex.id)} <span class=meta>({escape(ex.note)})</span></h3>"]
    for t in ex.turns:
        took = f", {t.elapsed_s:.2f}s" if t.elapsed_s is not None else ""
        text = t.content if len(t.content) <= CONTENT else \
            t.content[:CONTENT] + f"\u2026 (+{len(t.content) - CONTENT:,} chars)"
        calls = "".join(f'<div class="call">\u2192 {escape(c)}</div>' for c in t.tool_calls)
        out.append(f'<div class="turn"><span class="role">{escape(t.role)}</span> '
                   f'<span class="meta">({t.tokens:,} tokens{took})</span>\n'
                   f"{escape(text)}{calls}</div>")
    return "".join(out)


def render(r: Report) -> str:
    """The page."""
    status = ", ".join(f"{s} {n:,}" for s, n in r.by_status.items()) or "-"
    body = [f"<h1>{escape(r.workflow or 'rows')}: {r.rows:,} rows</h1>",
            f"<p>{escape(r.source)}: {escape(status)}; kept {r.kept:,}"
            + (f", filtered {r.filtered:,}" if r.filtered is not None else "")
            + (f", fanned-out parents {r.fanned_out:,}" if r.fanned_out else "") + "</p>"]
    if r.unreadable:
        body.append(f"<p>{r.unreadable:,} lines were not rows (left out)</p>")
    if r.duplicate_ids:
        body.append(f'<p class="warn">{len(r.duplicate_ids):,} ids appear in more than one row '
                    f"(e.g. {escape(', '.join(list(r.duplicate_ids)[:3]))})</p>")
    body += [f'<p class="meta">note: {escape(n)}</p>' for n in r.notes]
    if r.figures:
        body += ["<h2>Figures</h2>",
                 _table(["figure", "value"], [[f.label, figures.text(f)] for f in r.figures])]
    if r.tokens:
        head = ["role", "prompt tokens", "completion tokens"] + (["cost"] if r.cost else [])
        rows = []
        for role, (p, c) in r.tokens.items():
            row = [role, f"{p:,}", f"{c:,}"]
            if r.cost:
                row.append(f"{r.cost.by_role[role]:,.4f}" if role in r.cost.by_role else "-")
            rows.append(row)
        body += ["<h2>Tokens</h2>", _table(head, rows)]
        if r.cost:
            per = (f"{r.cost.per_kept_row:,.6f}" if r.cost.per_kept_row is not None
                   else "- (no row kept)")
            body.append(f"<p>total cost {r.cost.total:,.4f}; per kept row {escape(per)} "
                        f"(all rows' tokens over {r.cost.kept:,} kept rows)</p>")
    body += ["<h2>Distributions</h2>", '<div class="plots">']
    body += [_plot(h, r.spreads.get(h.title)) for h in r.histograms]
    body.append("</div>")
    if r.latency:
        body += ["<h2>Latency per turn by role (seconds)</h2>",
                 _table(["role", "turns", "mean", "p50", "p90", "max"],
                        [[role, f"{s.n:,}", _n(s.mean), _n(s.p50), _n(s.p90), _n(s.max)]
                         for role, s in r.latency.items()]),
                 '<div class="plots">', *(_plot(h, None) for h in r.latency_histograms), "</div>"]
    if r.examples:
        body.append(f"<h2>Examples ({len(r.examples)} of {r.rows:,} rows)</h2>")
        body += [_example(ex) for ex in r.examples]
    title = escape(f"{r.workflow or 'rows'} report: {r.source}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
