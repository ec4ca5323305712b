"""The dataset card (``README.md``) of an exported directory. Pure.

Its YAML header names the splits' files, so ``datasets.load_dataset(DIR)`` finds
them; the body says what the examples are, where they came from (workflow, its
version and code version, the rows files, the command), how many examples and
tokens each split holds, which rows were left out and why, and the schema.
"""

from __future__ import annotations

from dataclasses import dataclass

from matrix_p2p.export.plan import Plan

_WHAT = {
    "messages": "chat conversations in OpenAI's `messages` format (system, user and assistant "
                "messages; an assistant's `tool_calls` and `role: tool` results with "
                "`tool_call_id`), with `tools` (a JSON text of the tools' schemas) where the "
                "assistant had tools",
    "sharegpt": "ShareGPT `conversations` (`from`: system, human, gpt, function_call, "
                "observation; `value`), with `tools` (a JSON text) where the assistant had tools",
    "preference": "preference pairs: `prompt` (the messages both conversations share), "
                  "`chosen` and `rejected` (each conversation from there on), the best and "
                  "the worst scored trial of one input row",
}


@dataclass(frozen=True)
class Provenance:
    inputs: list[str]  # the rows files, as given
    command: str  # the export command line
    view: str  # who is the assistant, who the user
    version: str  # matrix_p2p's


def _n(v: int) -> str:
    return f"{v:,}"


def render(plan: Plan, prov: Provenance, shards: dict[str, int],
           columns: list[tuple[str, str]]) -> str:
    """The card's text."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for name, _ in plan.splits:
        lines += [f"  - split: {name}", f"    path: data/{name}-*"]
    lines += ["tags:", "- synthetic", "- matrix_p2p", "---", ""]
    wf = plan.workflow or "?"
    versions = ", ".join(plan.workflow_versions) or "?"
    codes = ", ".join(plan.code_versions) or "?"
    lines += [
        f"# {wf}: {plan.fmt}", "",
        f"{plan.total:,} examples: {_WHAT[plan.fmt]}.", "",
        f"Exported by `matrix_p2p export` (matrix_p2p {prov.version}) from the rows of the "
        f"workflow **{wf}** (version {versions}, code version {codes}).", "",
        "```python", "from datasets import load_dataset",
        'ds = load_dataset("path/to/this/directory")', "```", "",
        "## Splits", "",
        "Each input row lands in one split by a hash of its id (every trial and "
        "fan-out child of a row in the same split).", "",
        "| split | examples | shards | rows | prompt tokens | completion tokens "
        "| answer tokens | answer tokens per example |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, share in plan.splits:
        st = plan.stats[name]
        per = f"{st.answer_tokens / st.examples:,.1f}" if st.examples else "-"
        lines.append(f"| {name} ({share:g}) | {_n(st.examples)} | {shards.get(name, 0)} "
                     f"| {_n(st.rows)} | {_n(st.prompt_tokens)} | {_n(st.completion_tokens)} "
                     f"| {_n(st.answer_tokens)} | {per} |")
    lines += ["", "Tokens are the rows' own `usage` (what the model servers counted when the "
              "workflow ran): prompt and completion tokens of every turn of the rows the "
              "examples came from, and the completion tokens of the assistant's role alone "
              "(*answer tokens*).", ""]
    lines += ["## Rows left out", ""]
    if plan.skipped:
        lines += ["| reason | rows | for example |", "|---|--:|---|"]
        for reason, count in sorted(plan.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            ids = ", ".join(f"`{i}`" for i in plan.samples.get(reason, []))
            lines.append(f"| {reason.replace('|', '/')} | {_n(count)} | {ids} |")
    else:
        lines.append("None: every row read gave an example.")
    lines += ["", "## Provenance", "",
              f"- rows read: {_n(plan.rows_read)}, from "
              + ", ".join(f"`{p}`" for p in prov.inputs),
              f"- view: {prov.view}",
              f"- command: `{prov.command}`", "",
              "## Schema", "",
              "A key a message lacks is null in Parquet (`tool_calls` of a plain message).", "",
              "| column | type |", "|---|---|"]
    lines += [f"| `{name}` | `{typ}` |" for name, typ in columns]
    return "\n".join(lines) + "\n"
