"""One ``report`` from start to end: read the rows, find the workflow (its figures and
prices), build the ``stats.Report``, write the HTML page. The I/O shell over the pure
``stats``, ``text`` and ``html``.

Error handling: a missing file, a file of another format, a file with no row in it
and a file whose lines are not a run's rows are one-line ``ConfigError``s. A workflow
that is not bundled and not named with ``--workflow`` is no error: the report is
made without its figures and prices, and says so.
"""

from __future__ import annotations

from pathlib import Path

from matrix_p2p.errors import ConfigError
from matrix_p2p.export.read import read_rows
from matrix_p2p.report import html, stats
from matrix_p2p.runtime.files import replace_file
from matrix_p2p.workflow import loader
from matrix_p2p.workflow.spec import WorkflowSpec


def make_report(path: Path, *, workflow: str | None = None, examples: int = 3) -> stats.Report:
    """The report over the rows of ``path``. ``workflow``: a file or bundled name whose
    ``summary:`` and prices to use (default: the rows' workflow, when it is bundled)."""
    got = read_rows([path])
    rows = [r for r in got.rows if "id" in r and "status" in r]
    not_rows = len(got.rows) - len(rows)
    if not rows:
        if got.rows or got.unreadable:
            raise ConfigError(f"{path}: not an output file of a run (no line is a row with an "
                              f"id and a status; {got.unreadable + not_rows:,} lines read)")
        raise ConfigError(f"{path}: holds no rows")
    name = stats.workflow_names(rows)
    notes: list[str] = []
    spec: WorkflowSpec | None = None
    if workflow is not None:
        spec = loader.load(workflow)
    elif len(name) == 1 and name[0] in loader.bundled_names():
        spec = loader.load(name[0])
    else:
        notes.append("no figures or prices: " + (
            f"the rows are of workflow {name[0]!r}, which is not bundled (give --workflow FILE)"
            if len(name) == 1 else "the rows name no single workflow (give --workflow FILE)"))
    report = stats.build(rows, source=str(path), unreadable=got.unreadable + not_rows,
                         figures=spec.summary if spec is not None else (),
                         prices=prices_of(spec) if spec is not None else None,
                         examples=examples)
    report.notes.extend(notes)
    return report


def prices_of(spec: WorkflowSpec) -> dict[str, tuple[float, float]]:
    """Each role's price per 1,000 (prompt, completion) tokens, from its LLM resource;
    roles without an LLM or without a price are absent."""
    out = {}
    for role in spec.roles:
        res = spec.llm_for(role)
        if res is None or (res.price_per_1k_prompt is None and res.price_per_1k_completion is None):
            continue
        out[role] = (res.price_per_1k_prompt or 0.0, res.price_per_1k_completion or 0.0)
    return out


def check_html_target(to: Path, rows_file: Path) -> None:
    """A one-line ``ConfigError`` when ``--html`` names the rows file itself: the page
    would replace the dataset it reports on."""
    if to.resolve() == rows_file.resolve():
        raise ConfigError(f"--html {to}: is the rows file itself")


def write_html(report: stats.Report, to: Path) -> None:
    """The page at ``to``, whole or not at all (a temporary file renamed)."""
    try:
        replace_file(to, [html.render(report).encode()], "html")
    except OSError as exc:
        raise ConfigError(f"--html {to}: cannot write: {exc.strerror or exc}") from None
