"""From rows to examples: splits by row id that do not move, preference pairs over trials,
the formats, and every row left out counted with its reason."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrix_p2p.errors import ConfigError
from matrix_p2p.export import formats
from matrix_p2p.export.expr import parse
from matrix_p2p.export.plan import Options, build
from matrix_p2p.export.splits import parse_splits, row_key, split_of
from matrix_p2p.export.views import View

VIEW = View(assistant="coder", system=lambda r: "sys", prompt=lambda r: str(r["input"]["q"]))


def row(key: str, trial: int = 0, *, answer: str = "", reward: Any = 1.0, status: str = "done",
        index: int = 0, **extra: Any) -> dict[str, Any]:
    return {"id": f"{key}-t{trial}", "workflow": "wf", "workflow_version": "1", "code_version": "abc",
            "status": status, "source": "in.jsonl", "row_index": index, "trial": trial,
            "input": {"q": f"question {key}"}, "result": {"reward": reward},
            "dialogue": [{"role": "coder", "content": answer or f"answer {key} {trial}"}],
            "usage": {"coder": {"prompt_tokens": 10, "completion_tokens": 4},
                      "total": {"prompt_tokens": 10, "completion_tokens": 4}}, **extra}


# ---------------------------------------------------------------- splits
@pytest.mark.parametrize(("tid", "key"), [
    ("q7-t0", "q7"), ("q7-t12", "q7"), ("q7-t1~a2", "q7"), ("q7-t0~v1a2b3c4d", "q7"),
    ("q7-t0~v1a2b3c4d~a3", "q7"), ("q7-t0~r2", "q7"), ("doc-t0/1", "doc"), ("doc-t0~a2/0/3", "doc"),
    ("my-t5-t0", "my-t5"), ("plain", "plain"),
])
def test_the_row_key_drops_trial_attempt_version_replay_and_child(tid: str, key: str) -> None:
    assert row_key(tid) == key


def test_a_rows_trials_attempts_and_children_share_its_split() -> None:
    splits = parse_splits("a=0.25,b=0.25,c=0.5")
    for k in range(200):
        ids = [f"r{k}-t0", f"r{k}-t3", f"r{k}-t1~a2", f"r{k}-t0/1"]
        assert len({split_of(i, splits) for i in ids}) == 1


def test_splits_do_not_move_when_the_rows_are_reversed() -> None:
    rows = [row(f"k{i}", index=i) for i in range(40)]
    opts = Options(splits=parse_splits("train=0.5,test=0.5"))
    forward, backward = build(rows, VIEW, opts), build(rows[::-1], VIEW, opts)
    for name in ("train", "test"):
        ids = {e["id"] for e in forward.examples[name]}
        assert ids == {e["id"] for e in backward.examples[name]}
        assert ids == {r["id"] for r in rows if split_of(r["id"], opts.splits) == name}


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False))
def test_splits_do_not_move_when_the_rows_are_reordered(rnd: random.Random) -> None:
    rows = [row(f"k{i}", trial=i % 2, index=i) for i in range(60)]
    opts = Options(splits=parse_splits("train=0.7,test=0.3"))

    def members(rs: list[dict[str, Any]]) -> dict[str, set[str]]:
        p = build(rs, VIEW, opts)
        return {s: {e["id"] for e in ex} for s, ex in p.examples.items()}

    first = members(rows)
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    assert members(shuffled) == first
    assert members(rows[::3]) == {s: ids & {r["id"] for r in rows[::3]} for s, ids in first.items()}


def test_split_shares_are_roughly_kept() -> None:
    splits = parse_splits("train=0.9,test=0.1")
    got = [split_of(f"row{i}-t0", splits) for i in range(5000)]
    assert 400 < got.count("test") < 600


@pytest.mark.parametrize(("text", "message"), [
    ("train=0.9", "--split: the shares add up to 0.9, not 1"),
    ("train=0.9,test=0.2", "--split: the shares add up to 1.1, not 1"),
    ("train", "--split: 'train' is not NAME=SHARE (like train=0.95)"),
    ("train=x,test=0.1", "--split: train=x: the share is not a number"),
    ("train=0,test=1", "--split: train=0: the share must be in (0, 1]"),
    ("train=0.5,train=0.5", "--split: split 'train' is named twice"),
    ("tr ain=1", "--split: split name 'tr ain' must be letters, digits or '_'"),
])
def test_a_bad_split_is_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_splits(text)
    assert str(exc.value) == message


# ---------------------------------------------------------------- plan: every row counted
def test_every_row_is_an_example_or_counted_with_its_reason() -> None:
    rows = [row("a"), row("b", status="failed"), row("c", reward=0.0), row("a"),
            {**row("d"), "dialogue": []}, {"no": "id"}]
    p = build(rows, VIEW, Options(where=parse("result.reward > 0")))
    assert [e["id"] for e in p.examples["train"]] == ["a-t0"]
    assert p.skipped == {"status failed (--include-failed keeps them)": 1, "left out by --where": 1,
                         "an id seen before (the first row is kept)": 1, "no answer by coder": 1,
                         "not a row (no id)": 1}
    assert p.rows_read == 6 == p.total + sum(p.skipped.values())
    assert p.samples["left out by --where"] == ["c-t0"]


def test_include_failed_keeps_failed_rows() -> None:
    p = build([row("a", status="failed")], VIEW, Options(include_failed=True))
    assert p.total == 1


def test_token_figures_count_each_row_once_per_split() -> None:
    p = build([row("a"), row("b")], VIEW, Options())
    st_ = p.stats["train"]
    assert (st_.examples, st_.rows, st_.prompt_tokens, st_.completion_tokens, st_.answer_tokens) == \
        (2, 2, 20, 8, 8)
    assert (p.workflow, p.workflow_versions, p.code_versions) == ("wf", ["1"], ["abc"])


def test_messages_and_sharegpt_examples() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                {"id": "d", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "1"},
            {"role": "tool", "tool_call_id": "d", "content": "err"},
            {"role": "assistant", "content": "done"}]
    assert formats.messages_example("r", msgs, tools) == {"id": "r", "messages": msgs, "tools": tools}
    assert formats.messages_example("r", msgs, [], ids=False) == {"messages": msgs}
    sg = formats.sharegpt_example("r", msgs, tools)
    assert sg["conversations"] == [
        {"from": "system", "value": "s"}, {"from": "human", "value": "u"},
        {"from": "function_call", "value": '[{"name": "f", "arguments": {"x": 1}}, '
                                           '{"name": "f", "arguments": "{bad"}]'},
        {"from": "observation", "value": "1"}, {"from": "observation", "value": "err"},
        {"from": "gpt", "value": "done"}]
    assert json.loads(sg["tools"]) == tools


# ---------------------------------------------------------------- preference pairs
def test_the_best_and_worst_trial_of_each_row_make_a_pair() -> None:
    rows = [row("a", 0, reward=0.5), row("a", 1, reward=1.0), row("a", 2, reward=0.0),
            row("b", 0, reward=1.0, index=1), row("b", 1, reward=1.0, index=1),
            row("c", 0, reward=1.0, index=2),
            row("d", 0, reward=None, index=3), row("d", 1, reward=1.0, index=3)]
    p = build(rows, VIEW, Options(fmt="preference", by=parse("result.reward")))
    (pair,) = p.examples["train"]
    assert pair == {
        "chosen_id": "a-t1", "rejected_id": "a-t2", "chosen_score": 1.0, "rejected_score": 0.0,
        "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "question a"}],
        "chosen": [{"role": "assistant", "content": "answer a 1"}],
        "rejected": [{"role": "assistant", "content": "answer a 2"}]}
    assert p.skipped == {"neither the best nor the worst trial of its row": 1,
                         "its row's trials scored the same": 2, "only one trial of its row": 2,
                         "no score (result.reward is missing)": 1}
    assert p.rows_read == 2 + sum(p.skipped.values())
    assert p.stats["train"].rows == 2


def test_a_verdict_compared_is_a_score_and_ties_go_to_the_lower_trial() -> None:
    rows = [row("a", 0, reward="fail"), row("a", 1, reward="pass"), row("a", 2, reward="pass")]
    p = build(rows, VIEW, Options(fmt="preference", by=parse('result.reward == "pass"')))
    (pair,) = p.examples["train"]
    assert (pair["chosen_id"], pair["rejected_id"]) == ("a-t1", "a-t0")
    assert (pair["chosen_score"], pair["rejected_score"]) == (1.0, 0.0)


def test_trials_group_by_source_row_and_child_not_by_id_text() -> None:
    rows = [row("a", 0, reward=1.0, index=0), row("z", 1, reward=0.0, index=0),  # same source row
            {**row("a", 0, reward=1.0, index=5), "id": "doc-t0/0"},
            {**row("a", 1, reward=0.0, index=5), "id": "doc-t1/1"}]  # other children: no pair
    p = build(rows, VIEW, Options(fmt="preference", by=parse("result.reward")))
    assert p.total == 0
    assert p.skipped["only one trial of its row"] == 2
    assert p.skipped["the trials share no prompt"] == 2  # a and z were asked different questions


def test_a_string_score_is_counted_not_guessed() -> None:
    p = build([row("a", 0, reward="pass"), row("a", 1, reward="fail")], VIEW,
              Options(fmt="preference", by=parse("result.reward")))
    assert p.skipped == {"no score (result.reward is not a number or true/false)": 2}


def test_identical_trials_make_no_pair() -> None:
    rows = [row("a", 0, answer="same", reward=1.0), row("a", 1, answer="same", reward=0.0)]
    p = build(rows, VIEW, Options(fmt="preference", by=parse("result.reward")))
    assert p.skipped == {"the trials' conversations are the same": 2}


def test_the_shared_prompt_ends_where_the_answers_part() -> None:
    sys_, q = {"role": "system", "content": "s"}, {"role": "user", "content": "q"}
    a1, a2 = {"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}
    u2, u3 = {"role": "user", "content": "more"}, {"role": "user", "content": "other"}
    assert formats.shared_prompt([sys_, q, a1, u2, a1], [sys_, q, a1, u2, a2]) == 4
    assert formats.shared_prompt([sys_, q, a1, u2, a1], [sys_, q, a1, u3, a2]) == 2  # back to a1


def test_preference_needs_by_and_by_needs_preference() -> None:
    with pytest.raises(ConfigError, match="needs --by"):
        build([], VIEW, Options(fmt="preference"))
    with pytest.raises(ConfigError, match="--by is for --format preference"):
        build([], VIEW, Options(by=parse("result.reward")))
