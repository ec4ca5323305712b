"""A workflow's own summary figures: the ``summary:`` section (validated, one line per
mistake) and the pure accumulator over hand-made rows (report/figures.py)."""

from __future__ import annotations

from typing import Any

import pytest

from matrix_p2p import envelope
from matrix_p2p.errors import ConfigError
from matrix_p2p.report.figures import Figures, FigureValue, render
from matrix_p2p.runtime.rowformat import to_row
from matrix_p2p.workflow import loader, spec

BASE = """
name: demo
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [a], max_turns: 1}
"""


def figures(section: str) -> Figures:
    return Figures(spec.parse(BASE + "summary:\n" + section, path="wf.yaml").summary)


def row(result: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {"id": "x", "status": "done", "result": result or {}, **top}


def by_label(values: list[FigureValue]) -> dict[str, FigureValue]:
    return {v.label: v for v in values}


def test_mean_is_over_the_rows_that_have_the_field_and_counts_the_rest_as_missing() -> None:
    f = figures("  - {label: mean reward, mean: result.reward}\n")
    for r in (row({"reward": 1.0}), row({"reward": 0.0}), row({"reward": 1}),
              row({}, status="failed"), row({"reward": None}), row({"reward": "high"})):
        f.add(r)
    [v] = f.results()
    assert (v.value, v.rows, v.missing) == (pytest.approx(2 / 3, abs=1e-6), 3, 3)
    assert v.kind == "mean" and v.field == "result.reward"


def test_a_figure_over_no_row_has_no_value_not_zero() -> None:
    f = figures("  - {label: mean reward, mean: result.reward}\n"
                "  - {label: pass rate, rate: result.reward, equals: 1.0}\n")
    f.add(row({}, status="failed"))
    mean, rate = f.results()
    assert (mean.value, mean.rows, mean.missing) == (None, 0, 1)
    assert (rate.value, rate.hits, rate.missing) == (None, 0, 1)
    assert render(f.results()) == ["mean reward  - (no row had result.reward)",
                                   "pass rate    - (no row had result.reward)"]


def test_rate_truthy_or_equal_and_true_is_not_one() -> None:
    f = figures("  - {label: agreement, rate: result.agreed}\n"
                "  - {label: pass, rate: result.reward, equals: 1}\n"
                "  - {label: done, rate: status, equals: done}\n"
                "  - {label: ones, rate: result.flag, equals: 1}\n")
    rows = [row({"agreed": True, "reward": 1.0, "flag": True}),
            row({"agreed": False, "reward": 0.0, "flag": 1}),
            row({"agreed": True, "reward": 1}),
            row({}, status="failed")]
    for r in rows:
        f.add(r)
    v = by_label(f.results())
    assert (v["agreement"].value, v["agreement"].hits, v["agreement"].rows,
            v["agreement"].missing) == (pytest.approx(2 / 3, abs=1e-6), 2, 3, 1)
    assert (v["pass"].hits, v["pass"].rows) == (2, 3)  # 1.0 == 1
    assert (v["done"].hits, v["done"].rows, v["done"].missing) == (3, 4, 0)
    assert (v["ones"].hits, v["ones"].rows) == (1, 2)  # true is not 1
    assert render([v["agreement"]]) == ["agreement  66.7% (2 of 3, 1 missing)"]


def test_counts_count_distinct_and_ratio_read_documents_against_their_questions() -> None:
    f = figures("  - {label: verdicts, counts: result.verdict}\n"
                "  - {label: kept documents, distinct: parent}\n"
                "  - {label: questions, count: parent}\n"
                "  - {label: questions per kept document, ratio: [questions, kept documents]}\n"
                "  - {label: first role, counts: dialogue.0.role}\n")
    rows = [row({"verdict": "pass"}, parent="d1", dialogue=[{"role": "a"}]),
            row({"verdict": "fail"}, parent="d1"),
            row({"verdict": "pass"}, parent="d2"),
            row({"verdict": "pass"}),  # a document, not a question
            row({"verdict": None}, parent="d3", dialogue=[])]
    for r in rows:
        f.add(r)
    v = by_label(f.results())
    assert v["verdicts"].value == {"pass": 3, "fail": 1} and v["verdicts"].missing == 1
    assert list(v["verdicts"].value) == ["pass", "fail"]  # most first
    assert (v["kept documents"].value, v["kept documents"].missing) == (3, 1)
    assert v["questions"].value == 4
    assert v["questions per kept document"].value == pytest.approx(4 / 3, abs=1e-6)
    assert v["questions per kept document"].field == "questions / kept documents"
    assert v["first role"].value == {"a": 1} and v["first role"].missing == 4
    assert render([v["verdicts"], v["questions per kept document"]]) == [
        "verdicts                     pass 3, fail 1 (1 missing)",
        "questions per kept document  1.333"]


def test_a_ratio_over_zero_has_no_value() -> None:
    f = figures("  - {label: q, count: parent}\n  - {label: d, distinct: parent}\n"
                "  - {label: r, ratio: [q, d]}\n")
    f.add(row())
    assert [v.value for v in f.results()] == [0, 0, None]


def test_counts_keys_of_other_types_are_their_json() -> None:
    f = figures("  - {label: k, counts: result.kept}\n")
    for kept in (True, False, True, 3):
        f.add(row({"kept": kept}))
    [v] = f.results()
    assert v.value == {"true": 2, "3": 1, "false": 1}


@pytest.mark.parametrize(("section", "message"), [
    ("  - {label: x}\n",
     r"^wf.yaml: summary\[0\]: give exactly one of mean, rate, count, counts, distinct, ratio "
     r"\(got none\)$"),
    ("  - {label: x, mean: result.a, rate: result.b}\n",
     r"^wf.yaml: summary\[0\]: give exactly one of .* \(got mean, rate\)$"),
    ("  - {label: x, mean: reward}\n",
     r"^wf.yaml: summary\[0\].mean: 'reward' does not start with a row field \(one of id, "
     r".*; an agent's state is under result.\)$"),
    ("  - {label: x, rate: result..a}\n",
     r"^wf.yaml: summary\[0\].rate: 'result..a' is not a dotted path"),
    ("  - {label: x, counts: status, equals: done}\n",
     r"^wf.yaml: summary\[0\].equals: only for rate and count, not counts$"),
    ("  - {label: x, count: parent}\n  - {label: x, count: status}\n",
     r"^wf.yaml: summary\[1\].label: 'x' is the label of an earlier figure$"),
    ("  - {label: ' ', count: parent}\n", r"^wf.yaml: summary\[0\].label: must not be empty$"),
    ("  - {label: a, count: parent}\n  - {label: r, ratio: [a]}\n",
     r"^wf.yaml: summary\[1\].ratio: give two labels of earlier figures"),
    ("  - {label: r, ratio: [a, b]}\n  - {label: a, count: parent}\n",
     r"^wf.yaml: summary\[0\].ratio\[0\]: 'a' is not the label of an earlier figure"),
    ("  - {label: a, counts: status}\n  - {label: r, ratio: [a, a]}\n",
     r"^wf.yaml: summary\[1\].ratio\[0\]: 'a' is not the label of an earlier figure with one"),
    ("  - {label: x, mean: result.a, average: 1}\n",
     r"^wf.yaml: summary\[0\]: Object contains unknown field `average`$"),
    ("  - {label: x, mean: 3}\n", r"^wf.yaml: summary\[0\].mean: Expected `str \| null`, got `int`$"),
    ("  mean: result.a\n", r"^wf.yaml: summary: Expected `array`, got `object`$"),
])
def test_a_bad_summary_section_is_one_line_naming_the_field(section: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        spec.parse(BASE + "summary:\n" + section, path="wf.yaml")
    assert "\n" not in str(info.value)


def test_every_row_field_is_one_a_figure_may_start_with() -> None:
    parent = envelope.new_task(task_id="d", workflow="w", workflow_version="1", code_version="c",
                               role="a", row={}, source="s", row_index=0, trial=0, seed=0)
    parent.state["children"] = 2
    child = envelope.new_task(task_id="d/0", workflow="w", workflow_version="1",
                              code_version="c", role="a", row={}, source="s", row_index=0,
                              trial=0, seed=0)
    child.parent = "d"
    assert set(to_row(parent)) | set(to_row(child)) == set(spec.ROW_FIELDS)


@pytest.mark.parametrize(("name", "labels"), [
    ("tau", {"mean reward": "result.reward", "pass rate": "result.reward"}),
    ("code_verify", {"verdicts": "result.verdict"}),
    ("coral", {"agreement": "result.agreed", "accuracy": "result.correct"}),
    ("natural_reasoning", {"kept documents": "parent", "questions": "parent",
                           "questions per kept document": "questions / kept documents"}),
])
def test_the_bundled_workflows_declare_their_figures(name: str, labels: dict[str, str]) -> None:
    f = Figures(loader.load(name).summary)
    assert {v.label: v.field for v in f.results()} == labels
