"""The end-of-run summary of ``run``: a table for the terminal and the same as JSON.

Pure: rendered from a ``RunResult`` and the workflow (whose LLM resources may
give a price per 1,000 tokens). ``write_json`` puts it next to the output as
``<out>.summary.json``. Every count is read from the run, none derived from
another: ``rows`` is the lines of the output file, fan-out ``children`` are
counted by id, and the workflow's own figures (``report/figures.py``) come first.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from matrix_p2p.llm.cache import CacheStats
from matrix_p2p.report import figures
from matrix_p2p.report.figures import FigureValue
from matrix_p2p.runtime.filter_counts import FilterReport
from matrix_p2p.runtime.local_run import RunResult
from matrix_p2p.workflow.spec import WorkflowSpec


class RoleTokens(msgspec.Struct, kw_only=True):
    role: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None = None  # None: no price configured for the role's LLM resource


class Summary(msgspec.Struct, kw_only=True):
    workflow: str
    out: str
    interrupted: bool
    rows: int  # lines in the output file
    tasks: int  # distinct tasks in the output (rows, and those kept-only left out)
    left_out: int  # kept-only: tasks whose ids are in <out>.skipped, not in the file
    expected: int
    done: int  # finished this run
    failed: int
    output_done: int  # over the whole output (the latest attempt of each task)
    output_failed: int
    retried: int  # failed tasks resubmitted as a new attempt by this run
    sandbox_leased: int | None  # leases the in-process sandbox server held at the end
    children: int  # fan-out children among the output's tasks (ids <parent>/<i>)
    figures: list[FigureValue]  # the workflow's `summary:` section, over the output's rows
    filters: FilterReport | None  # None for a workflow without filters
    wall_s: float
    tasks_per_s: float
    roles: list[RoleTokens]
    prompt_tokens: int
    completion_tokens: int
    tokens_per_s: float  # prompt + completion
    completion_tokens_per_s: float
    cost: float | None  # None when no role's resource has a price
    aborted: str | None = None  # why the run stopped as broken (limits.abort_on_failures)
    # the LLM response cache (llm/cache.py): None when no role used one. Tokens saved are
    # what the hits' answers cost when generated; they are not in the token counts above
    cache: CacheStats | None = None


def _cost(spec: WorkflowSpec, role: str, prompt: int, completion: int) -> float | None:
    res = spec.llm_for(role) if role in spec.roles else None
    if res is None or (res.price_per_1k_prompt is None and res.price_per_1k_completion is None):
        return None
    return (prompt * (res.price_per_1k_prompt or 0.0)
            + completion * (res.price_per_1k_completion or 0.0)) / 1000.0


def summarize(result: RunResult, spec: WorkflowSpec) -> Summary:
    wall = max(result.elapsed_s, 1e-9)
    roles = [RoleTokens(role=role, prompt_tokens=u.prompt_tokens,
                        completion_tokens=u.completion_tokens,
                        cost=_cost(spec, role, u.prompt_tokens, u.completion_tokens))
             for role, u in sorted(result.usage_by_role.items())]
    prompt = sum(r.prompt_tokens for r in roles)
    completion = sum(r.completion_tokens for r in roles)
    costs = [r.cost for r in roles if r.cost is not None]
    return Summary(
        workflow=spec.name, out=result.out, interrupted=result.interrupted,
        rows=result.file_rows, tasks=result.rows, left_out=result.left_out,
        expected=result.expected, done=result.done, failed=result.failed,
        output_done=result.dataset_done, output_failed=result.dataset_failed,
        retried=result.retried, sandbox_leased=result.sandbox_leased,
        children=result.children, figures=result.figures, filters=result.filters.report(),
        wall_s=round(result.elapsed_s, 3), tasks_per_s=round((result.done + result.failed) / wall, 2),
        roles=roles, prompt_tokens=prompt, completion_tokens=completion,
        tokens_per_s=round((prompt + completion) / wall, 1),
        completion_tokens_per_s=round(completion / wall, 1),
        cost=round(sum(costs), 6) if costs else None, aborted=result.aborted,
        cache=result.cache,
    )


def _money(v: float | None) -> str:
    return "-" if v is None else f"{v:,.4f}"


def render(s: Summary) -> str:
    """The table ``run`` prints when it ends."""
    head = "stopped" if s.aborted else "interrupted" if s.interrupted else "finished"
    lines = [
        f"{s.workflow}: {head} in {s.wall_s:,.1f}s; {s.rows:,} rows in {s.out}"
        + (f" ({s.left_out:,} tasks left out by --kept-only: ids in {s.out}.skipped)"
           if s.left_out else ""),
        f"  tasks this run   {s.done:>10,} done {s.failed:>8,} failed   {s.tasks_per_s:,.1f} tasks/s",
        f"  output: {s.output_done:,} done, {s.output_failed:,} failed"
        + (f" ({s.retried:,} retried)" if s.retried else "")
        + f"; {s.expected:,} tasks asked for"
        + (f", {s.children:,} fan-out children" if s.children else ""),
        *(f"  {line}" for line in figures.render(s.figures)),
        f"  {'role':<16}{'prompt tok':>14}{'completion tok':>16}{'cost':>12}",
    ]
    for r in s.roles:
        lines.append(f"  {r.role:<16}{r.prompt_tokens:>14,}{r.completion_tokens:>16,}"
                     f"{_money(r.cost):>12}")
    lines.append(f"  {'total':<16}{s.prompt_tokens:>14,}{s.completion_tokens:>16,}"
                 f"{_money(s.cost):>12}")
    lines.append(f"  tokens/s         {s.tokens_per_s:,.0f} (generated {s.completion_tokens_per_s:,.0f})")
    if s.cache is not None:
        c = s.cache
        lines.append(f"  response cache: {c.hits:,} hits, {c.misses:,} misses; saved "
                     f"{c.saved_prompt_tokens:,} prompt + {c.saved_completion_tokens:,} "
                     "completion tokens")
    if s.filters is not None:
        lines.append(f"  filters: {s.filters.line()}")
    if s.sandbox_leased is not None:
        lines.append(f"  sandbox leases held at the end: {s.sandbox_leased}")
    return "\n".join(lines)


def summary_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".summary.json")


def write_json(s: Summary) -> Path:
    """``<out>.summary.json``, written whole (a temporary file renamed over it)."""
    path = summary_path(s.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(s), indent=2) + b"\n")
    tmp.replace(path)
    return path

