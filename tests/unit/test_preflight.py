"""Preflight's decision (resources/preflight.py ``judge``, pure) and what it plans to probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from matrix_p2p.errors import ConfigError
from matrix_p2p.llm.probe import EndpointProbe
from matrix_p2p.resources.preflight import SKIP_HINT, LLMNeed, SandboxNeed, judge, plan
from matrix_p2p.sandbox.client import Health
from matrix_p2p.workflow.spec import parse

A, B = "http://a:8000", "http://b:8000"
UP_A = EndpointProbe(url=A, models=("sim-model",))
UP_B = EndpointProbe(url=B, models=("llama", "qwen"))
DOWN_A = EndpointProbe(url=A, error=f"{A}: cannot connect (Connection refused)")
DOWN_B = EndpointProbe(url=B, error=f"{B}: no answer within 5s")


def need(*urls: str, model: str | None = None) -> LLMNeed:
    return LLMNeed(resource="default", where="--llm-url", roles=("teacher", "judge"),
                   urls=urls, model=model)


def probes(*ps: EndpointProbe) -> dict[str, EndpointProbe]:
    return {p.url: p for p in ps}


def test_nothing_answers_is_the_error_naming_each_endpoint() -> None:
    v = judge([need(A, B)], [], probes(DOWN_A, DOWN_B), {})
    assert v.error == (
        f"--llm-url: no LLM endpoint answers (roles teacher, judge): {DOWN_A.error}; "
        f"{DOWN_B.error}; is the server up? {SKIP_HINT}")


def test_some_down_is_a_warning_and_the_run_goes_on() -> None:
    v = judge([need(A, B)], [], probes(UP_A, DOWN_B), {})
    assert v.error is None
    assert v.warnings == [f"LLM endpoint(s) not answering, going on with the others: {DOWN_B.error}"]


def test_a_model_nobody_serves_is_the_error() -> None:
    v = judge([need(A, B, model="gpt-9")], [], probes(UP_A, UP_B), {})
    assert v.error == (
        "--llm-url: model 'gpt-9' (resources.llm.default.model) is not served by any endpoint "
        f"that answers: {A} serves sim-model; {B} serves llama, qwen {SKIP_HINT}")


def test_a_model_served_somewhere_warns_about_the_others() -> None:
    v = judge([need(A, B, model="qwen")], [], probes(UP_A, UP_B), {})
    assert v.error is None
    assert v.warnings == [f"{A} does not serve model 'qwen' (it serves sim-model): requests of "
                          "resources.llm.default sent there will fail"]


def test_no_model_named_takes_any_and_all_up_is_silent() -> None:
    assert judge([need(A, B)], [], probes(UP_A, UP_B), {}).warnings == []
    assert judge([need(A, B)], [], probes(UP_A, UP_B), {}).error is None


S1, S2 = "http://s1:8700", "http://s2:8700"


def sneed(*urls: str, required: bool = True) -> SandboxNeed:
    return SandboxNeed(resource="box", where="--sandbox-url", urls=urls, required=required)


def test_sandboxes() -> None:
    gone = Health(url=S1, error=f"sandbox server {S1} unreachable: refused")
    fine = Health(url=S2, free=3)
    v = judge([], [sneed(S1)], {}, {S1: gone})
    assert v.error == (f"--sandbox-url: no sandbox server answers (resources.sandbox.box): "
                       f"{gone.error}; start one with `python -m matrix_p2p sandbox-server` "
                       f"{SKIP_HINT}")
    v = judge([], [sneed(S1, S2)], {}, {S1: gone, S2: fine})
    assert v.error is None and v.warnings == [
        f"sandbox server(s) not answering, going on with the others: {gone.error}"]
    # a worker whose roles lease none of it only releases leases: a warning
    v = judge([], [sneed(S1, required=False)], {}, {S1: gone})
    assert v.error is None and len(v.warnings) == 1
    braked = Health(url=S2, free=0, braked=True)
    v = judge([], [sneed(S2)], {}, {S2: braked})
    assert v.error is None and "braked" in v.warnings[0]


WF = """name: w
roles:
  teacher: {agent: "m:C"}
  judge: {agent: "m:C", llm: strict}
  tool: {agent: "m:C", llm: null, resources: [box]}
routing: {type: cycle, roles: [teacher, judge, tool]}
resources:
  llm:
    strict: {endpoints: ["http://j:8000/v1/"], model: judge-model}
  sandbox:
    box: {urls: ["http://s1:8700/"]}
"""


def test_plan_follows_the_roles_and_the_flags() -> None:
    spec = parse(WF, path="w.yaml")
    with pytest.raises(ConfigError, match=r"w.yaml: resources.llm.default: no LLM endpoints"):
        plan(spec, ["teacher"])
    llm, sbx = plan(spec, ["judge"])
    assert [(n.resource, n.where, n.urls, n.model, n.roles) for n in llm] == [
        ("strict", "w.yaml: resources.llm.strict", ("http://j:8000",), "judge-model", ("judge",))]
    assert [(s.resource, s.urls, s.required) for s in sbx] == [("box", ("http://s1:8700",), False)]
    llm, sbx = plan(spec, ["teacher", "judge", "tool"], llm_urls=["http://x/v1"],
                    sandbox_urls=["http://y"])
    assert [(n.resource, n.where, n.urls) for n in llm] == [
        ("default", "--llm-url", ("http://x",)), ("strict", "--llm-url", ("http://x",))]
    assert [(s.where, s.urls, s.required) for s in sbx] == [("--sandbox-url", ("http://y",), True)]
    assert plan(spec, ["teacher", "tool"], llm=False, sandboxes=False) == ([], [])


def test_plan_reads_an_endpoints_file_and_skips_an_empty_one(tmp_path: Path) -> None:
    f = tmp_path / "eps.txt"
    spec = parse(WF.replace("strict: {endpoints: [\"http://j:8000/v1/\"],",
                            f"strict: {{endpoints_file: {str(f)!r},"), path="w.yaml")
    assert plan(spec, ["judge"])[0] == []  # missing now: endpoints may come later
    f.write_text("# fleet\nhttp://k:8000/v1\n")
    (n,) = plan(spec, ["judge"])[0]
    assert n.urls == ("http://k:8000",) and n.where == f"{f} (resources.llm.strict.endpoints_file)"
