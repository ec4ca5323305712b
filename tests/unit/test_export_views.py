"""A row as a training conversation: each bundled workflow's view on hand-made rows and on
real rows (``export_rows/``, written by ``run`` on the simulator), tool calls and their
results as OpenAI messages, the reasons a row gives no example, and the ``export:``
section's one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from matrix_p2p.errors import ConfigError
from matrix_p2p.export.resolve import view_of
from matrix_p2p.export.views import Skip, View, complete, conversation
from matrix_p2p.workflow import loader
from matrix_p2p.workflow.spec import parse

ROWS = Path(__file__).parent / "export_rows"


def real_rows(workflow: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (ROWS / f"{workflow}.jsonl").read_text().splitlines()]


def turn(role: str, content: str, **meta: Any) -> dict[str, Any]:
    return {"role": role, "content": content, "hop": 0, "usage": {}, **({"meta": meta} if meta else {})}


def call(cid: str, name: str = "find_user", arguments: str = '{"id": 1}') -> dict[str, str]:
    return {"id": cid, "name": name, "arguments": arguments}


# ---------------------------------------------------------------- coral
CORAL_ROW = {
    "id": "q1-t0", "status": "done",
    "input": {"id": "q1", "question": "2 + 2?", "choices": {"A": "3", "B": "4"}, "answer": "B"},
    "dialogue": [turn("teacher", "It is 4.\nAnswer: B"), turn("student", "I agree.\nAnswer: B"),
                 turn("judge", "Verdict: AGREE"), turn("teacher", "Good."),
                 turn("student", "Thanks.\nAnswer: B"), turn("judge", "Verdict: AGREE")],
}


def test_coral_is_the_students_side_with_the_question_and_the_teacher_as_user() -> None:
    spec = loader.load("coral")
    msgs = conversation(CORAL_ROW, view_of(spec))
    assert msgs == [
        {"role": "system", "content": spec.roles["student"].system},
        {"role": "user", "content": "Question: 2 + 2?\nA) 3\nB) 4\n\nIt is 4.\nAnswer: B"},
        {"role": "assistant", "content": "I agree.\nAnswer: B"},
        {"role": "user", "content": "Good."},
        {"role": "assistant", "content": "Thanks.\nAnswer: B"},
    ]  # the judge's turns are left out; user and assistant alternate


def test_coral_real_rows() -> None:
    view = view_of(loader.load("coral"))
    for row in real_rows("coral"):
        msgs = conversation(row, view)
        students = [t["content"] for t in row["dialogue"] if t["role"] == "student"]
        assert [m["content"] for m in msgs if m["role"] == "assistant"] == students
        assert msgs[1]["content"].startswith("Question: " + row["input"]["question"])
        assert [m["role"] for m in msgs][:3] == ["system", "user", "assistant"]


# ---------------------------------------------------------------- tau
def tau_row() -> dict[str, Any]:
    return {"id": "retail_000-t0", "status": "done", "input": {"id": "retail_000"}, "dialogue": [
        turn("user", "Cancel order #1."),
        turn("assistant", "", tool_calls=[call("c1"), call("c2", "get_order", '{"id": ')]),
        turn("tool", "user 7", tool_call_id="c1", name="find_user", ok=True),
        turn("tool", "Error: bad JSON", tool_call_id="c2", name="get_order", ok=False),
        turn("assistant", "Done: cancelled."),
        turn("user", "Thanks ###STOP###"),
    ]}


def test_tau_is_the_assistants_side_with_tool_calls_and_results() -> None:
    view = view_of(loader.load("tau"))
    msgs = conversation(tau_row(), view)
    assert msgs[0]["role"] == "system" and "customer service agent" in msgs[0]["content"]
    assert msgs[1:] == [
        {"role": "assistant", "content": "Hi! How can I help you today?"},
        {"role": "user", "content": "Cancel order #1."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "find_user", "arguments": '{"id": 1}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_order", "arguments": '{"id": '}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "user 7"},
        {"role": "tool", "tool_call_id": "c2", "content": "Error: bad JSON"},
        {"role": "assistant", "content": "Done: cancelled."},
    ]  # the customer's last word follows the last answer: left out
    names = {t["function"]["name"] for t in view.tools}
    assert {"find_user_id_by_email", "cancel_pending_order"} <= names


def test_tau_real_row_keeps_every_tool_call_and_result() -> None:
    view = view_of(loader.load("tau"))
    (row,) = real_rows("tau")
    msgs = conversation(row, view)
    tools = [t for t in row["dialogue"] if t["role"] == "tool"]
    assert tools, "the fixture has tool turns"
    results = [m for m in msgs if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in results] == \
        [(t["meta"]["tool_call_id"], t["content"]) for t in tools]
    calls = [c["id"] for m in msgs for c in m.get("tool_calls", [])]
    assert calls == [m["tool_call_id"] for m in results]
    assert msgs[-1]["role"] == "assistant" and not msgs[-1].get("tool_calls")


def test_tool_calls_a_step_limit_cut_short_are_left_out() -> None:
    row = tau_row()
    row["dialogue"] += [turn("assistant", "", tool_calls=[call("c3"), call("c4")]),
                        turn("tool", "ok", tool_call_id="c3")]  # max_errors: c4 never ran
    msgs = conversation(row, view_of(loader.load("tau")))
    assert msgs[-1] == {"role": "assistant", "content": "Done: cancelled."}


@pytest.mark.parametrize(("change", "reason"), [
    (lambda d: d.pop(2), "a tool call has no result"),
    (lambda d: d[2]["meta"].update(tool_call_id="zz"), "a tool result answers no open tool call"),
    (lambda d: d[1]["meta"].update(tool_calls=[call("c1"), call("c1")]),
     "two tool calls of one turn share an id"),
    (lambda d: d[1]["meta"].update(tool_calls=[{"id": "c1"}]), "a tool call without an id or a name"),
    (lambda d: d[1]["meta"].update(tool_calls="c1"), "an assistant turn's meta.tool_calls is not a list"),
    (lambda d: d.__setitem__(slice(None), [turn("user", "hello")]), "no answer by assistant"),
])
def test_a_broken_trace_gives_no_example_and_says_why(change: Any, reason: str) -> None:
    row = tau_row()
    change(row["dialogue"])
    with pytest.raises(Skip) as exc:
        conversation(row, view_of(loader.load("tau")))
    assert exc.value.reason == reason


def test_a_greeting_is_no_answer() -> None:
    with pytest.raises(Skip, match="no answer by assistant"):
        complete([{"role": "system", "content": "s"}, {"role": "assistant", "content": "Hi"},
                  {"role": "user", "content": "q"}], "assistant", fixed=2)


# ---------------------------------------------------------------- natural_reasoning
def test_natural_reasoning_is_the_question_and_its_reference_answer() -> None:
    view = view_of(loader.load("natural_reasoning"))
    row = {"id": "d-t0/0", "status": "done", "parent": "d-t0", "dialogue": [turn("scorer", "7/10")],
           "result": {"kept": True, "question": "Why?", "reference_answer": "Because."}}
    assert conversation(row, view) == [{"role": "user", "content": "Why?"},
                                       {"role": "assistant", "content": "Because."}]
    with pytest.raises(Skip, match=r"^result\.question is missing$"):
        conversation({"id": "d-t0", "result": {"kept": False}}, view)


def test_natural_reasoning_real_rows_questions_only() -> None:
    view = view_of(loader.load("natural_reasoning"))
    got, skipped = [], []
    for row in real_rows("natural_reasoning"):
        try:
            got.append((row["id"], conversation(row, view)))
        except Skip as exc:
            skipped.append((row["id"], exc.reason))
    assert [i for i, _ in got] == [r["id"] for r in real_rows("natural_reasoning") if "parent" in r]
    for rid, msgs in got:
        row = next(r for r in real_rows("natural_reasoning") if r["id"] == rid)
        assert msgs == [{"role": "user", "content": row["result"]["question"]},
                        {"role": "assistant", "content": row["result"]["reference_answer"]}]
    assert {reason for _, reason in skipped} == {"result.question is missing"}


# ---------------------------------------------------------------- code_verify
def test_code_verify_is_the_problem_and_the_coders_solution() -> None:
    spec = loader.load("code_verify")
    view = view_of(spec)
    for row in real_rows("code_verify"):
        msgs = conversation(row, view)
        coder = next(t["content"] for t in row["dialogue"] if t["role"] == "coder")
        assert msgs == [{"role": "system", "content": spec.roles["coder"].system},
                        {"role": "user", "content": row["input"]["prompt"]},
                        {"role": "assistant", "content": coder}]  # the verifier's verdict is not a turn


def test_a_per_row_function_that_fails_is_the_rows_reason() -> None:
    view = view_of(loader.load("coral"))
    with pytest.raises(Skip, match=r"^export\.prompt\.call: FailTask: input row has no 'choices'"):
        conversation({"id": "x", "input": {"question": "?"}, "dialogue": []}, view)


def test_parquet_rows_with_null_meta_read_the_same() -> None:
    row = tau_row()
    row["dialogue"][0]["meta"] = None  # Parquet fills absent keys with null
    assert conversation(row, view_of(loader.load("tau")))[2]["content"] == "Cancel order #1."


def test_a_view_without_users_keeps_only_the_assistant() -> None:
    view = View(assistant="a", prompt=lambda r: "q")
    row = {"dialogue": [turn("b", "noise"), turn("a", "answer")]}
    assert conversation(row, view) == [{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "answer"}]


# ---------------------------------------------------------------- the export: section
BASE = """
name: wf
roles:
  a: {agent: "m:A", system: "be brief"}
  b: {agent: "m:B"}
routing: {type: cycle, roles: [a, b]}
"""


@pytest.mark.parametrize(("export", "message"), [
    ("{user: [b]}", "export: give `assistant` (the role whose turns are the answers) or `response` "
                    "(one answer from the row), not neither"),
    ("{assistant: a, prompt: {text: q}, response: {text: r}}", "export: give `assistant` (the role "
     "whose turns are the answers) or `response` (one answer from the row), not both"),
    ("{assistant: c}", "export.assistant: unknown role 'c' (roles: a, b)"),
    ("{assistant: a, user: [a]}", "export.user[0]: 'a' is the assistant"),
    ("{assistant: a, user: [b, x]}", "export.user[1]: unknown role 'x' (roles: a, b)"),
    ("{response: {field: result.answer}}", "export.prompt: a single-turn export (`response`) needs "
                                           "the question"),
    ("{prompt: {text: q}, response: {text: r}, user: [b]}",
     "export.user: a single-turn export (`response`) has no user turns"),
    ("{assistant: a, system: {text: s, field: input.s}}",
     "export.system: give exactly one of role_system, role_prompt, text, field, call (got text, field)"),
    ("{assistant: a, system: {}}", "export.system: give exactly one of role_system, role_prompt, "
                                   "text, field, call (got none)"),
    ("{assistant: a, system: {role_system: z}}", "export.system.role_system: unknown role 'z' "
                                                 "(roles: a, b)"),
    ("{assistant: a, prompt: {field: answer}}", "export.prompt.field: 'answer' does not start with a "
     "row field (one of id, workflow, workflow_version, code_version, status, error, source, "
     "row_index, trial, input, result, dialogue, usage, timings, hops, parent, children; an "
     "agent's state is under result.)"),
    ("{assistant: a, prompt: {call: not-a-ref}}", "export.prompt.call: 'not-a-ref' is not of the form "
                                                  "'module:function'"),
    ("{assistant: a, tools: nope}", "export.tools: 'nope' is not of the form 'module:function'"),
    ("{assistant: a, tool_role: b, user: [b]}", "export.tool_role: 'b' is the assistant or a user role"),
    ("{assistant: a, roles: [a]}", "export: Object contains unknown field `roles`"),
    ("{assistant: a, prompt: {text: 3}}", "export.prompt.text: Expected `str | null`, got `int`"),
])
def test_a_bad_export_section_is_one_line_naming_the_field(export: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(BASE + f"export: {export}\n", path="wf.yaml")
    assert str(exc.value) == f"wf.yaml: {message}"


def test_a_role_without_the_text_named_is_one_line() -> None:
    spec = parse(BASE + "export: {assistant: a, system: {role_system: b}}\n", path="wf.yaml")
    with pytest.raises(ConfigError, match=r"^wf\.yaml: export\.system\.role_system: role 'b' has "
                                          r"no system text$"):
        view_of(spec)


def test_a_workflow_without_an_export_section_says_so() -> None:
    with pytest.raises(ConfigError, match=r"dummy\.yaml: declares no `export:` section"):
        view_of(loader.load("dummy"))


def test_a_call_that_imports_nothing_is_one_line() -> None:
    spec = parse(BASE + "export: {assistant: a, prompt: {call: 'no_such_mod:f'}}\n", path="wf.yaml")
    with pytest.raises(ConfigError, match=r"^wf\.yaml: export\.prompt\.call"):
        view_of(spec)


def test_every_bundled_workflow_with_an_llm_declares_an_export_view() -> None:
    for name in loader.bundled_names():
        spec = loader.load(name)
        if any(r.llm is not None for r in spec.roles.values()):
            assert spec.export is not None, name
            view_of(spec)
