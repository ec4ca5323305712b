"""The answer protocol the bundled workflows' agents parse."""

from __future__ import annotations

import random

import pytest

from matrix_p2p.sim.responder import ANSWER_RE, choose, judge_tail, respond

QUESTION = "Which one?\nA) red\nB) green\nC) blue\n"
CHOICE_INSTR = "Think, then end with a line: Answer: <letter>"
JUDGE_INSTR = "Compare the answers. Reply Verdict: AGREE or DISAGREE and Final: <letter>."


def _rng(seed: int = 1) -> random.Random:
    return random.Random(seed)


def test_placeholder_does_not_match_answer_regex() -> None:
    assert ANSWER_RE.findall(f"{CHOICE_INSTR}\n{JUDGE_INSTR} Answer: <letter>") == []


@pytest.mark.parametrize(
    ("text", "tail"),
    [
        (f"{JUDGE_INSTR}\nTeacher: Answer: B\nStudent: Answer: B", "Verdict: AGREE\nFinal: B"),
        (f"{JUDGE_INSTR}\nAnswer: A\nAnswer: C", "Verdict: DISAGREE\nFinal: C"),
        (f"{JUDGE_INSTR}\nAnswer: C\nAnswer: A\nAnswer: A", "Verdict: AGREE\nFinal: A"),
        (f"{JUDGE_INSTR}\nAnswer: D", "Verdict: DISAGREE\nFinal: D"),
        (f"{JUDGE_INSTR}\nno letters here, only Answer: <letter>", "Verdict: DISAGREE\nFinal: A"),
    ],
)
def test_judge_mode(text: str, tail: str) -> None:
    assert judge_tail(text) == tail
    out = respond(text, 30, _rng())
    assert out.endswith("\n" + tail)
    assert len(out.split()) == 30


def test_judge_mode_wins_over_choice_mode() -> None:
    text = f"{QUESTION}{CHOICE_INSTR}\n{JUDGE_INSTR}\nAnswer: B\nAnswer: B"
    assert respond(text, 10, _rng()).endswith("Verdict: AGREE\nFinal: B")


def test_choice_mode_picks_an_option_and_ends_with_answer_line() -> None:
    text = "Which one?\nA) red\nB) green\n" + CHOICE_INSTR
    seen = set()
    for seed in range(50):
        out = respond(text, 20, _rng(seed))
        last = out.splitlines()[-1]
        assert last in ("Answer: A", "Answer: B")
        seen.add(last)
        assert len(out.split()) == 20
    assert seen == {"Answer: A", "Answer: B"}


def test_choice_mode_options_with_dot_and_default_options() -> None:
    dotted = "Q\n  A. one\n  E. two\n" + CHOICE_INSTR
    assert {choose(dotted, _rng(s), 0.6) for s in range(60)} == {"A", "E"}
    bare = "No options listed. " + CHOICE_INSTR
    assert {choose(bare, _rng(s), 0.6) for s in range(100)} == {"A", "B", "C", "D"}


def test_choice_mode_agreement_with_previous_answer() -> None:
    text = QUESTION + "Peer said: Answer: C\n" + CHOICE_INSTR
    assert all(choose(text, _rng(s), 1.0) == "C" for s in range(30))
    picks = [choose(text, _rng(s), 0.0) for s in range(200)]
    assert set(picks) == {"A", "B", "C"}  # uniform over options, C included by chance
    share = sum(choose(text, _rng(s), 0.6) == "C" for s in range(2000)) / 2000
    assert 0.65 < share < 0.8  # 0.6 + 0.4 * (1/3)


def test_most_recent_previous_answer_is_repeated() -> None:
    text = QUESTION + "Answer: A\nlater: Answer: B\n" + CHOICE_INSTR
    assert choose(text, _rng(), 1.0) == "B"


@pytest.mark.parametrize("n", [0, 1, 2])
def test_answer_line_survives_tiny_budgets(n: int) -> None:
    assert respond(QUESTION + CHOICE_INSTR, n, _rng()).startswith("Answer: ")
    assert respond(JUDGE_INSTR, n, _rng()) == "Verdict: DISAGREE\nFinal: A"


def test_generic_mode_is_filler_of_the_asked_length() -> None:
    out = respond("Tell me a story about Answer: X", 17, _rng())
    assert len(out.split()) == 17
    assert "Answer:" not in out
    assert "Verdict" not in out
    assert respond("hi", 17, _rng(5)) == respond("hi", 17, _rng(5))
