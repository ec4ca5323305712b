"""Model settings in the workflow file: per LLM resource, overridden per role (spec.py)."""

from __future__ import annotations

import pytest

from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow import spec

WF = """
name: ms
resources:
  llm:
    default:
      model: base-model
      api_key_env: MS_TEST_KEY
      max_tokens: 100
      temperature: 0.5
      top_p: 0.9
      stop: ["</answer>"]
      seed: 7
      extra_body: {repetition_penalty: 1.05, top_k: 20}
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker"}
  b:
    agent: "matrix_p2p_agents.dummy:Talker"
    llm_settings: {model: judge-model, temperature: 0, stop: "###", extra_body: {top_k: 5}}
  c: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [a, b, c]}
"""


def parse(text: str) -> spec.WorkflowSpec:
    return spec.parse(text, path="wf.yaml")


def test_resource_settings_parse_and_a_role_without_overrides_gets_them() -> None:
    res = parse(WF).llm_for("a")
    assert res is not None
    assert (res.model, res.api_key_env, res.max_tokens, res.temperature, res.top_p, res.stop,
            res.seed) == ("base-model", "MS_TEST_KEY", 100, 0.5, 0.9, ["</answer>"], 7)
    assert res.extra_body == {"repetition_penalty": 1.05, "top_k": 20}


def test_role_settings_override_field_by_field_and_merge_extra_body() -> None:
    s = parse(WF)
    res = s.llm_for("b")
    assert res is not None
    assert (res.model, res.temperature, res.stop) == ("judge-model", 0.0, "###")
    # not overridden: the resource's
    assert (res.api_key_env, res.max_tokens, res.top_p, res.seed) == ("MS_TEST_KEY", 100, 0.9, 7)
    assert res.extra_body == {"repetition_penalty": 1.05, "top_k": 5}
    assert s.resources.llm["default"].extra_body["top_k"] == 20  # the resource is untouched
    assert s.llm_for("c") is None


def test_defaults_send_nothing_new() -> None:
    res = parse(WF.replace("llm_settings:", "options:")).resources.llm["default"]
    bare = spec.LLMResource()
    assert (bare.model, bare.api_key_env, bare.top_p, bare.stop, bare.seed, bare.extra_body) == (
        None, None, None, None, None, {})
    assert res.max_tokens == 100


@pytest.mark.parametrize(("old", "new", "message"), [
    ("top_p: 0.9", "top_p: high",
     r"^wf.yaml: resources.llm.default.top_p: Expected `float \| null`, got `str`$"),
    ("top_p: 0.9", "top_p: 1.5", r"^wf.yaml: resources.llm.default.top_p: must be in \(0, 1\], got 1.5$"),
    ("seed: 7", "seed: 1.5", r"^wf.yaml: resources.llm.default.seed: Expected `int \| null`, got `float`$"),
    ("stop: [\"</answer>\"]", "stop: [\"a\", 3]",
     r"^wf.yaml: resources.llm.default.stop\[1\]: Expected `str`, got `int`$"),
    ("stop: [\"</answer>\"]", "stop: [\"a\", \"\"]",
     r"^wf.yaml: resources.llm.default.stop\[1\]: must not be an empty string$"),
    ("temperature: 0.5", "temperature: -1",
     r"^wf.yaml: resources.llm.default.temperature: must be at least 0"),
    ("max_tokens: 100", "max_tokens: 0", r"^wf.yaml: resources.llm.default.max_tokens: must be at least 1$"),
    ("extra_body: {repetition_penalty: 1.05, top_k: 20}", "extra_body: [1]",
     r"^wf.yaml: resources.llm.default.extra_body: Expected `object`, got `array`$"),
    ("extra_body: {repetition_penalty: 1.05, top_k: 20}", "extra_body: {max_tokens: 5}",
     r"^wf.yaml: resources.llm.default.extra_body.max_tokens: set `max_tokens` itself, not in extra_body$"),
    ("extra_body: {repetition_penalty: 1.05, top_k: 20}", "extra_body: {messages: []}",
     r"^wf.yaml: resources.llm.default.extra_body.messages: the runtime sets it$"),
    ("model: base-model", "model: ''", r"^wf.yaml: resources.llm.default.model: must not be empty"),
    ("model: base-model", "modle: base-model",
     r"^wf.yaml: resources.llm.default: Object contains unknown field `modle`$"),
    ("temperature: 0, stop", "temperature: cold, stop",
     r"^wf.yaml: roles.b.llm_settings.temperature: Expected `float \| null`, got `str`$"),
    ("extra_body: {top_k: 5}", "extra_body: {seed: 5}",
     r"^wf.yaml: roles.b.llm_settings.extra_body.seed: set `seed` itself, not in extra_body$"),
    ("{model: judge-model,", "{endpoints: [], model: judge-model,",
     r"^wf.yaml: roles.b.llm_settings: Object contains unknown field `endpoints`$"),
    ("llm: null}", "llm: null, llm_settings: {seed: 1}}",
     r"^wf.yaml: roles.c.llm_settings: the role has no LLM \(llm: null\)$"),
])
def test_bad_settings_name_the_file_and_the_field(old: str, new: str, message: str) -> None:
    assert old in WF
    with pytest.raises(ConfigError, match=message):
        parse(WF.replace(old, new, 1))


def test_a_key_pasted_as_api_key_env_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as err:
        parse(WF.replace("api_key_env: MS_TEST_KEY", "api_key_env: sk-live-12345"))
    assert str(err.value) == ("wf.yaml: resources.llm.default.api_key_env: must be the name of an "
                              "environment variable (letters, digits, '_'), not the key itself")
    assert "sk-live" not in str(err.value)
