from __future__ import annotations

from pathlib import Path

import pytest

from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow import loader, spec
from matrix_p2p.workflow.spec import CycleRouting

GOOD = """
name: demo
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
  b: {agent: "matrix_p2p_agents.dummy:Decider", llm: null}
routing: {type: cycle, roles: [a, b], stop_when: agreed, max_turns: 6}
"""


def parse(text: str) -> spec.WorkflowSpec:
    return spec.parse(text, path="wf.yaml")


def test_good_file_parses_with_defaults() -> None:
    s = parse(GOOD)
    assert s.name == "demo"
    assert isinstance(s.routing, CycleRouting)
    assert s.entry_role() == "a"
    assert s.roles["a"].name == "a"
    assert s.roles["a"].concurrency == 1000
    assert s.limits.max_deliveries == 5
    assert len(s.digest) == 12


def test_bundled_coral_is_valid() -> None:
    s = loader.load("coral")
    assert list(s.roles) == ["teacher", "student", "judge"]
    assert Path(s.path).name == "coral.yaml"


@pytest.mark.parametrize(("text", "message"), [
    ("name: [", r"^wf.yaml: not valid YAML at line 1, column 8: expected the node content"),
    ("- a\n- b\n", r"^wf.yaml: expected a mapping at the top level, got list$"),
    (GOOD.replace("llm: null}", "llm: null, concurrency: many}", 1),
     r"^wf.yaml: roles.a.concurrency: Expected `int`, got `str`$"),
    (GOOD.replace("llm: null}", "llm: null, concurency: 5}", 1),
     r"^wf.yaml: roles.a: Object contains unknown field `concurency`$"),
    (GOOD.replace("name: demo", "name: has spaces"),
     r"^wf.yaml: name: 'has spaces' must be 1-64 letters, digits"),
    (GOOD.replace("roles: [a, b]", "roles: [a, c]"),
     r"^wf.yaml: routing.roles\[1\]: unknown role 'c'$"),
    (GOOD.replace('"matrix_p2p_agents.dummy:Talker"', '"matrix_p2p_agents.dummy.Talker"'),
     r"^wf.yaml: roles.a.agent: 'matrix_p2p_agents.dummy.Talker' is not of the form 'module:Class'$"),
    (GOOD.replace("type: cycle", "type: spiral"),
     r"^wf.yaml: routing: Invalid value 'spiral' - at `\$.routing.type`|^wf.yaml: routing.type"),
    (GOOD.replace("max_turns: 6", "max_turns: 0"), r"^wf.yaml: routing.max_turns: must be at least 1$"),
    (GOOD + "trials: 0\n", r"^wf.yaml: trials: must be at least 1$"),
    (GOOD.replace("name: demo\n", ""), r"^wf.yaml: Object missing required field `name`$"),
    (GOOD.replace("llm: null}", "llm: big}", 1),
     r"^wf.yaml: roles.a.llm: unknown LLM resource 'big' \(known: none defined\)$"),
    (GOOD + "limits: {ack_wait_s: 0.1}\n", r"^wf.yaml: limits.ack_wait_s: must be at least 1 second$"),
    (GOOD + "source: {path: a.jsonl, hf: {dataset: x}}\n",
     r"^wf.yaml: source: give either `path` or `hf`, not both$"),
])
def test_bad_files_get_one_line_naming_file_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse(text)
    assert "\n" not in str(info.value)


def test_missing_file_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"^nope.yaml: no such workflow file"):
        loader.load("nope.yaml")


def test_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match=r"bin.yaml: not UTF-8 text$"):
        loader.load(str(p))


def test_python_router_needs_a_ref() -> None:
    text = GOOD.replace("routing: {type: cycle, roles: [a, b], stop_when: agreed, max_turns: 6}",
                        "routing: {type: python, router: nothing}")
    with pytest.raises(ConfigError, match=r"routing.router: 'nothing' is not of the form"):
        parse(text)
