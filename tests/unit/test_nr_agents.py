"""The NaturalReasoning agents and router, driven in-process (no broker) against the simulator's answers."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import structlog
from matrix_p2p_agents.nr.cpu import ExactDedup, LanguageFilter, QualityFilter
from matrix_p2p_agents.nr.llm import LLMFilter, QuestionWriter, Scorer
from matrix_p2p_agents.nr.router import Pipeline, pipeline

from matrix_p2p.agent import Agent, Context, make_agent
from matrix_p2p.envelope import Task, Turn, Usage, new_task
from matrix_p2p.errors import ConfigError, FailTask, RetryLater
from matrix_p2p.llm.types import LLMError, LLMResponse, LLMResult
from matrix_p2p.runtime import routing
from matrix_p2p.runtime.hop import FanOut, Handled, Hop, advance, spawn
from matrix_p2p.runtime.routing import Done, Failed, Forward
from matrix_p2p.runtime.sink import is_kept, to_row
from matrix_p2p.sim.answer import plan_answer
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.protocol import parse_request
from matrix_p2p.workflow import spec
from matrix_p2p.workflow.loader import load

WF = load("natural_reasoning")
WF_TEXT = Path(WF.path).read_text(encoding="utf-8")
DATA = Path(__file__).resolve().parents[2] / "workflows" / "data"


class SimChat:
    """A ChatClient answering as the simulator would, without HTTP."""

    def __init__(self) -> None:
        self.calls = 0

    async def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> LLMResult:
        self.calls += 1
        body = {"messages": list(messages), "max_tokens": params.get("max_tokens"),
                "seed": params.get("seed")}
        req = parse_request(msgspec.json.encode(body), "chat", "sim-model")
        ans = plan_answer(SimConfig(), req)
        return LLMResponse(text=ans.text, prompt_tokens=ans.prompt_tokens,
                           completion_tokens=ans.completion_tokens)


class Scripted:
    """A ChatClient replying with the given texts (or errors) in turn."""

    def __init__(self, *replies: str | LLMError) -> None:
        self.replies = list(replies)
        self.seeds: list[int | None] = []

    async def chat(self, messages: Sequence[Mapping[str, Any]], **params: Any) -> LLMResult:
        self.seeds.append(params.get("seed"))
        r = self.replies.pop(0)
        return r if isinstance(r, LLMError) else LLMResponse(
            text=r, prompt_tokens=100, completion_tokens=len(r.split()))


def make_agents(wf: spec.WorkflowSpec = WF) -> dict[str, Agent]:
    out = {}
    for name, role in wf.roles.items():
        out[name] = make_agent(wf, role)
    return out


def ctx_for(task: Task, role: str, llm: Any = None, wf: spec.WorkflowSpec = WF) -> Context:
    return Context(task=task, role=wf.roles[role], spec=wf, llm=llm, resource=wf.llm_for(role),
                   log=structlog.get_logger(), now=0.0)


def doc_task(text: Any, role: str = "langid", tid: str = "d1", trial: int = 0) -> Task:
    return new_task(task_id=tid, workflow=WF.name, role=role, row={"text": text, "url": "u"},
                    trial=trial, seed=11, now=0.0)


async def drive(task: Task, agents: dict[str, Agent], llm: Any) -> Task:
    """The worker's loop without the broker: handle, decide, advance, until terminal."""
    while task.status == "running":
        try:
            ctx = ctx_for(task, task.role, llm)
            await agents[task.role].handle(task, ctx)
            if ctx.children:  # fan-out: follow the first child, as the hop machine makes it
                kids = spawn(task, ctx.children)
                assert [k.id for k in kids] == [f"{task.id}/{i}" for i in range(len(kids))]
                assert len({k.state["question"] for k in kids}) == len(kids)  # different draws
                task = kids[0]
            decision = routing.decide(task, WF)
        except FailTask as exc:
            decision = Failed(reason=exc.reason)
        assert not isinstance(decision, routing.Retry)
        task = advance(task, decision, now=1.0)
    return task


def corpus_rows(n: int) -> list[dict[str, Any]]:
    spec_ = importlib.util.spec_from_file_location("make_nr_corpus", DATA / "make_nr_corpus.py")
    assert spec_ is not None and spec_.loader is not None
    mod = importlib.util.module_from_spec(spec_)
    sys.modules["make_nr_corpus"] = mod
    spec_.loader.exec_module(mod)
    rows = []
    for row in mod.read(DATA / "nr_corpus.jsonl.zst"):
        rows.append(row)
        if len(rows) == n:
            break
    return rows


async def test_pipeline_over_the_corpus_ends_every_document_once() -> None:
    agents, llm = make_agents(), SimChat()
    await agents["langid"].setup()
    rows = corpus_rows(400)
    reasons: Counter[str] = Counter()
    for i, row in enumerate(rows):
        t = new_task(task_id=row["id"], workflow=WF.name, role=WF.entry_role(), row=row,
                     row_index=i, seed=i, now=0.0)
        out = await drive(t, agents, llm)
        if out.status == "failed":
            assert out.error is not None and out.error.startswith("question_writer: no usable reply")
            reasons["failed"] += 1
            continue
        assert out.status == "done"
        if out.state["kept"]:
            assert out.state["filter_reason"] is None
            assert out.state["question"] and out.state["reference_answer"]
            assert set(out.state["scores"]) == {*WF.roles["scorer"].options["dimensions"], "mean"}
            assert out.state["lang"] == "en"
            reasons["kept"] += 1
        else:
            reasons[out.state["filter_reason"]] += 1
    assert sum(reasons.values()) == len(rows)
    for reason in ("kept", "lang:de", "length<50 words", "boilerplate", "llm_filter:no", "score<6"):
        assert reasons[reason] > 0, (reason, reasons)
    assert reasons["kept"] >= 30


async def test_language_and_quality_agents_write_state() -> None:
    agents = make_agents()
    de = doc_task("Die Ableitung der Position nach der Zeit ergibt die Geschwindigkeit des Teilchens.")
    await agents["langid"].handle(de, ctx_for(de, "langid"))
    assert de.state == {"lang": "de", "kept": False, "filter_reason": "lang:de"}
    assert de.turns[-1].meta == {"lang": "de"}
    short = doc_task("Page not found.")
    await agents["quality"].handle(short, ctx_for(short, "quality"))
    assert short.state["filter_reason"] == "length<50 words" and short.state["kept"] is False
    assert short.state["signals"] == {"words": 3}


@pytest.mark.parametrize(("text", "message"), [
    (None, "input row has no 'text' field"),
    (["a"], "input row's 'text' is list, not a string"),
])
async def test_missing_or_bad_text_fails_the_task(text: Any, message: str) -> None:
    agents = make_agents()
    for role in ("langid", "quality", "dedup", "llm_filter"):
        task = doc_task(text, role)
        if text is None:
            task.row.pop("text")
        with pytest.raises(FailTask) as exc:
            await agents[role].handle(task, ctx_for(task, role, Scripted("Decision: YES")))
        assert exc.value.reason == message


async def test_dedup_claims_per_trial_and_survives_redelivery() -> None:
    agent = make_agents()["dedup"]
    assert isinstance(agent, ExactDedup)
    text = "Suppose a ball falls from 20 m. Then it lands."
    first, again = doc_task(text, "dedup", "a"), doc_task(text, "dedup", "a")
    copy, trial1 = doc_task(text.upper() + "  ", "dedup", "b"), doc_task(text, "dedup", "a", trial=1)
    for t in (first, again, copy, trial1):
        await agent.handle(t, ctx_for(t, "dedup"))
    assert first.state["kept"] and again.state["kept"] and trial1.state["kept"]
    assert copy.state["kept"] is False and copy.state["filter_reason"] == "duplicate"
    assert copy.state["duplicate_of"] == "a"


async def test_dedup_task_scope_only_records_the_key() -> None:
    wf = spec.parse(WF_TEXT.replace("scope: fleet", "scope: task"), path=WF.path)
    agent = make_agents(wf)["dedup"]
    a, b = doc_task("same words", "dedup", "a"), doc_task("Same words!", "dedup", "b")
    for t in (a, b):
        await agent.handle(t, ctx_for(t, "dedup", wf=wf))
    assert a.state["kept"] and b.state["kept"] and a.state["dedup_key"] == b.state["dedup_key"]


async def test_llm_role_asks_again_with_another_seed_then_fails() -> None:
    wf = spec.parse(WF_TEXT.replace("questions: 2", "questions: 1"), path=WF.path)
    agent = make_agents(wf)["question_writer"]
    llm = Scripted("no labels here", "Question: What is 6 times 7, exactly?\nReference answer: 42")
    task = doc_task("doc", "question_writer")
    await agent.handle(task, ctx_for(task, "question_writer", llm, wf=wf))
    assert task.state == {"question": "What is 6 times 7, exactly?", "reference_answer": "42",
                          "kept": True, "filter_reason": None}
    assert llm.seeds == [11, 12]
    assert task.turns[0].meta == {"parse_error": "no 'Question:' line in the reply", "attempt": 1}
    llm = Scripted("x", "y", "Question: Why?\nReference answer: no")
    with pytest.raises(FailTask) as exc:
        await agent.handle(doc_task("doc", "question_writer"), ctx_for(task, "question_writer", llm))
    assert exc.value.reason == ("question_writer: no usable reply in 3 attempts: "
                                "question has fewer than 4 words: 'Why?'")


async def test_question_writer_fans_out_one_child_per_question() -> None:
    agent = make_agents()["question_writer"]  # the bundled workflow: questions: 2
    llm = Scripted("Question: What is 6 times 7, exactly?\nReference answer: 42", "junk",
                   "Question: What is 5 plus 5, exactly?\nReference answer: 10")
    task = doc_task("doc", "question_writer")
    ctx = ctx_for(task, "question_writer", llm)
    await agent.handle(task, ctx)
    assert llm.seeds == [11, 14, 15]  # question i draws seeds from seed + i * attempts
    assert [c["state"]["question"] for c in ctx.children] == [
        "What is 6 times 7, exactly?", "What is 5 plus 5, exactly?"]
    assert [c["state"]["question_index"] for c in ctx.children] == [0, 1]
    assert all(c["state"]["kept"] is True and "row" not in c for c in ctx.children)
    assert task.state == {}


async def test_a_fanned_out_document_is_not_a_row_and_each_question_holds_its_own_turns(
        ) -> None:
    """Through the hop machine and the sink's rows: the document's row keeps its filter
    turns (and counts them), each question's row holds them then its own writer turns
    only (and counts only those); the document is not kept, its questions are."""
    agent = make_agents()["question_writer"]
    llm = Scripted("Question: What is 6 times 7, exactly?\nReference answer: 42", "junk",
                   "Question: What is 5 plus 5, exactly?\nReference answer: 10")
    task = doc_task("doc", "question_writer")
    task.state.update(kept=True, filter_reason=None)  # as the scorer left it
    task.turns.append(Turn(role="scorer", content="scores", usage=Usage(prompt_tokens=7,
                                                                         completion_tokens=3)))
    task.hop = 5
    ctx = ctx_for(task, "question_writer", llm)
    await agent.handle(task, ctx)
    ctx.finish()
    hop = Hop(WF, WF.roles["question_writer"], 1 << 20)
    action = hop.after_agent(task, Handled(), 1, now=1.0, children=spawn(task, ctx.children))
    assert isinstance(action, FanOut)
    parent, kids = action.parent.task, [c.task for c in action.children]
    rows = [to_row(t) for t in (parent, *kids)]
    assert [[d["content"][:8] for d in r["dialogue"]] for r in rows] == [
        ["scores"], ["scores", "Question"], ["scores", "junk", "Question"]]
    assert [r["usage"]["total"] for r in rows] == [
        {"prompt_tokens": 7, "completion_tokens": 3},
        {"prompt_tokens": 100, "completion_tokens": 10},
        {"prompt_tokens": 200, "completion_tokens": 1 + 10}]
    assert [r["hops"] for r in rows] == [6, 0, 0]  # the writer's hop is the document's
    assert "scorer" not in rows[1]["usage"] and "question_writer" not in rows[0]["usage"]
    assert [is_kept(t) for t in (parent, *kids)] == [False, True, True]
    assert "kept" not in rows[0]["result"] and rows[0]["children"] == 2


async def test_llm_errors_become_routing_decisions() -> None:
    agent = make_agents()["llm_filter"]
    task = doc_task("doc", "llm_filter")
    with pytest.raises(RetryLater):
        await agent.handle(task, ctx_for(task, "llm_filter", Scripted(LLMError(kind="timeout", message="t"))))
    with pytest.raises(FailTask):
        await agent.handle(task, ctx_for(task, "llm_filter",
                                         Scripted(LLMError(kind="bad_request", message="b"))))


async def test_filter_and_scorer_verdicts() -> None:
    agents = make_agents()
    task = doc_task("doc", "llm_filter")
    await agents["llm_filter"].handle(task, ctx_for(task, "llm_filter", Scripted("Decision: NO")))
    assert task.state == {"kept": False, "filter_reason": "llm_filter:no"}
    replies = {"Reasoning depth: 9/10\nSelf-containedness: 8/10\nDifficulty: 7/10": None,
               "Reasoning depth: 5/10\nSelf-containedness: 6/10\nDifficulty: 6/10": "score<6"}
    for reply, reason in replies.items():
        task = doc_task("doc", "scorer")
        await agents["scorer"].handle(task, ctx_for(task, "scorer", Scripted(reply)))
        assert task.state["filter_reason"] == reason
    assert task.state["scores"]["mean"] == round(17 / 3, 3)


def test_bad_options_are_config_errors() -> None:
    text = Path(WF.path).read_text()
    cases = {
        "keep: [en]": ("keep: [xx]", "roles.langid.options: unknown ISO 639-1 language code 'xx'"),
        "accuracy: high": ("accuracy: best", "accuracy must be 'low' or 'high', got 'best'"),
        "min_alpha_words: 0.6": ("min_alpa_words: 0.6", "Object contains unknown field `min_alpa_words`"),
        "scope: fleet": ("scope: cluster",
                         "scope must be 'fleet', 'process' or 'task', got 'cluster'"),
        "      Difficulty: N/10\n": ("\n", "prompt has no line 'Difficulty: N/10' for a dimension"),
    }
    for old, (new, message) in cases.items():
        assert old in text
        wf = spec.parse(text.replace(old, new, 1), path="nr.yaml")
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            make_agents(wf)
    for cls in (LanguageFilter, QualityFilter, LLMFilter, Scorer, QuestionWriter):
        assert issubclass(cls, Agent)


def test_router_linear_with_early_exit() -> None:
    r = Pipeline()
    assert r.entry(WF) == "langid"
    t = doc_task("x", "quality")
    assert r.route(t, WF) == Forward(role="dedup")
    t.state["kept"] = True
    assert r.route(t, WF) == Forward(role="dedup")
    t.state["kept"] = False
    assert r.route(t, WF) == Done()
    last = doc_task("x", "question_writer")
    last.state["kept"] = True
    assert r.route(last, WF) == Done()
    assert r.route(doc_task("x", "ghost"), WF) == Failed(
        reason="role 'ghost' is not in routing.options.pipeline")
    bad = spec.parse(Path(WF.path).read_text().replace("pipeline: [langid,", "pipeline: [langidd,"),
                     path="nr.yaml")
    with pytest.raises(ConfigError, match=r"nr.yaml: routing.options.pipeline\[0\]: unknown role 'langidd'"):
        pipeline(bad)
    assert asyncio.iscoroutinefunction(Pipeline.route) is False
