"""The simulator's answers to the NaturalReasoning prompts parse with the agents' parsers."""

from __future__ import annotations

import random

import msgspec
import pytest
from matrix_p2p_agents.nr.llm import user_message
from matrix_p2p_agents.nr.parse import ParseError, parse_decision, parse_question, parse_scores

from matrix_p2p.sim import nr
from matrix_p2p.sim.answer import plan_answer
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.protocol import parse_request
from matrix_p2p.sim.responder import respond
from matrix_p2p.workflow.loader import load

WF = load("natural_reasoning")
DIMS = WF.roles["scorer"].options["dimensions"]
REASONING_DOC = ("Suppose a stone falls from 20 m. Because h = g t²/2, t = 2.02 s; therefore "
                 "v = 19.8 m/s. It follows that doubling h does not double v, since v grows as √h.")
LIST_DOC = "Tomato Soup\nIngredients\n- 2 cups tomatoes\n- 1 onion\n- salt\nServe warm."


def prompt(role: str, doc: str) -> str:
    r = WF.roles[role]
    return f"{r.system}\n{user_message(doc, r.prompt, 8000)}"


def answer(role: str, doc: str, seed: int, max_tokens: int = 512) -> str:
    r = WF.roles[role]
    body = {"messages": [{"role": "system", "content": r.system},
                         {"role": "user", "content": user_message(doc, r.prompt, 8000)}],
            "max_tokens": max_tokens, "seed": seed}
    req = parse_request(msgspec.json.encode(body), "chat", "sim-model")
    return plan_answer(SimConfig(seed=7), req).text


def test_workflow_prompts_carry_the_markers() -> None:
    assert nr.FILTER_MARKER in WF.roles["llm_filter"].prompt
    assert nr.QUESTION_MARKER in WF.roles["question_writer"].prompt
    assert nr.SCORE_LINE_RE.findall(WF.roles["scorer"].prompt) == DIMS


@pytest.mark.parametrize("max_tokens", [1, 8, 512])
def test_answers_parse_for_many_seeds(max_tokens: int) -> None:
    garbled = 0
    for seed in range(200):
        for doc in (REASONING_DOC, LIST_DOC):
            assert isinstance(parse_decision(answer("llm_filter", doc, seed, max_tokens)), bool)
            scores = parse_scores(answer("scorer", doc, seed, max_tokens), DIMS)
            assert all(0 <= v <= 10 and v == int(v) for v in scores.values())
            reply = answer("question_writer", doc, seed, max_tokens)
            if "Question:" not in reply:  # garbled on purpose (GARBLE_P)
                with pytest.raises(ParseError, match=r"^no 'Question:' line in the reply$"):
                    parse_question(reply)
                garbled += 1
                continue
            q, a = parse_question(reply)
            assert q.endswith("?") and a
    assert 0 < garbled < 40  # GARBLE_P = 3% of 400


def test_answers_are_deterministic_and_biased_by_reasoning() -> None:
    assert answer("llm_filter", REASONING_DOC, 3) == answer("llm_filter", REASONING_DOC, 3)
    yes = {doc: sum(parse_decision(answer("llm_filter", doc, s)) for s in range(200))
           for doc in (REASONING_DOC, LIST_DOC)}
    assert yes[REASONING_DOC] > 150 and yes[LIST_DOC] < 50
    mean = {doc: sum(sum(parse_scores(answer("scorer", doc, s), DIMS).values()) for s in range(100))
            for doc in (REASONING_DOC, LIST_DOC)}
    assert mean[REASONING_DOC] > 2 * mean[LIST_DOC]
    assert nr.reasoning_density(REASONING_DOC) > 2 > nr.reasoning_density(LIST_DOC)


def test_lengths_are_long_tailed() -> None:
    lengths = [len(answer("question_writer", REASONING_DOC, s).split()) for s in range(300)]
    lengths.sort()
    median, p99 = lengths[150], lengths[297]
    assert p99 > 2 * median


def test_other_prompts_are_not_ours_and_draw_nothing() -> None:
    rng = random.Random(5)
    coral = "Which one?\nA) red\nB) blue\nThink, then end with a line: Answer: <letter>"
    assert nr.respond_nr(coral, 20, rng) is None
    assert rng.random() == random.Random(5).random()  # the RNG was not touched
    assert respond(coral, 20, random.Random(1)).splitlines()[-1].startswith("Answer: ")
    assert respond(prompt("llm_filter", LIST_DOC), 20, random.Random(1)).splitlines()[-1] in (
        "Decision: YES", "Decision: NO")
