"""The LLM roles' reply parsers: accepted forms and exact error messages."""

from __future__ import annotations

import pytest
from matrix_p2p_agents.nr.parse import ParseError, parse_decision, parse_question, parse_scores

DIMS = ["Reasoning depth", "Self-containedness", "Difficulty"]


@pytest.mark.parametrize(("text", "expected"), [
    ("It derives a result.\nDecision: YES", True),
    ("Decision: no", False),
    ("**Decision:** YES", True),
    ("- Decision : No.", False),
    ("Decision: YES\non second thought\nDecision: NO", False),  # the last one counts
    ("You asked for 'Decision: YES or NO'.\nDecision: YES or NO\nDecision: NO", False),
])
def test_decision(text: str, expected: bool) -> None:
    assert parse_decision(text) is expected


@pytest.mark.parametrize("text", ["", "YES", "I decide yes", "Decision: YES or NO", "Decision: maybe"])
def test_decision_errors(text: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_decision(text)
    assert str(exc.value) == "no line 'Decision: YES' or 'Decision: NO' in the reply"


def test_scores_forms() -> None:
    text = "Reasoning depth: 7/10\n- **Self-containedness**: 4.5 / 10\ndifficulty: 9"
    assert parse_scores(text, DIMS) == {"Reasoning depth": 7.0, "Self-containedness": 4.5,
                                        "Difficulty": 9.0}
    assert parse_scores("Reasoning  depth: 0/10\nReasoning depth: 10/10", ["Reasoning depth"]) == {
        "Reasoning depth": 10.0}


def test_scores_errors() -> None:
    with pytest.raises(ParseError) as exc:
        parse_scores("Reasoning depth: 7/10\nDifficulty: 3/10", DIMS)
    assert str(exc.value) == ("no score for 'Self-containedness' "
                              "(expected a line 'Self-containedness: N/10')")
    with pytest.raises(ParseError) as exc:
        parse_scores("Difficulty: 12/10", ["Difficulty"])
    assert str(exc.value) == "score for 'Difficulty' is 12, outside 0-10"
    with pytest.raises(ParseError, match="no score for 'Difficulty'"):
        parse_scores("Difficulty: N/10", ["Difficulty"])  # an echo of the format


def test_question_forms() -> None:
    q, a = parse_question("Question: How long does a stone take to fall 20 m?\n"
                          "Reference answer: About 2.02 s, since t = sqrt(2h/g).")
    assert q == "How long does a stone take to fall 20 m?"
    assert a == "About 2.02 s, since t = sqrt(2h/g)."
    q, a = parse_question("**Question:** Why does a counter-offer\nend the original offer?\n\n"
                          "**Reference answer:** It rejects it.\nQuestion: is kept in the answer")
    assert q == "Why does a counter-offer end the original offer?"
    assert a == "It rejects it.\nQuestion: is kept in the answer"
    echo = ("Format:\nQuestion: <question>\nReference answer: <answer>\n\n"
            "Question: What is 17 times 3, step by step?\nReference answer: 51")
    assert parse_question(echo) == ("What is 17 times 3, step by step?", "51")


@pytest.mark.parametrize(("text", "message"), [
    ("Reference answer: 4", "no 'Question:' line in the reply"),
    ("Question: What is two plus two?\nAnswer: 4", "no 'Reference answer:' line after the question"),
    ("Question: Why?\nReference answer: Because.", "question has fewer than 4 words: 'Why?'"),
    ("Question: What is two plus two?\nReference answer:   ", "empty reference answer"),
    ("Question: According to the passage, who won the war?\nReference answer: The north.",
     "question is not self-contained: it mentions 'the passage'"),
])
def test_question_errors(text: str, message: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_question(text)
    assert str(exc.value) == message
