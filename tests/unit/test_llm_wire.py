"""The OpenAI wire format: request bodies and response decoding, with exact errors."""

from __future__ import annotations

import pytest

from matrix_p2p.llm.wire import (
    BadResponse,
    chat_body,
    completion_body,
    decode_completion,
    decode_first_model,
)

EP = "http://h:8000"


def test_request_bodies_leave_out_unset_sampling_fields() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    assert chat_body(msgs, None, None, {}) == {"messages": msgs}
    assert completion_body("p", 7, 0.5, {"seed": 1}) == {
        "prompt": "p", "seed": 1, "max_tokens": 7, "temperature": 0.5,
    }


def test_chat_completion_decodes_first_choice_and_usage() -> None:
    raw = (b'{"model":"m1","choices":[{"message":{"content":"hey"},"finish_reason":"stop"}],'
           b'"usage":{"prompt_tokens":3,"completion_tokens":5},"extra":1}')
    r = decode_completion(raw, endpoint=EP, model="asked", latency_s=0.2, attempts=2)
    assert (r.text, r.prompt_tokens, r.completion_tokens) == ("hey", 3, 5)
    assert (r.model, r.endpoint, r.finish_reason, r.attempts) == ("m1", EP, "stop", 2)


def test_text_completion_without_usage_or_model() -> None:
    r = decode_completion(b'{"choices":[{"text":"t"}],"usage":null}', endpoint=EP,
                          model="asked", latency_s=0.0, attempts=1)
    assert (r.text, r.model, r.prompt_tokens) == ("t", "asked", 0)


def test_no_choices_is_a_bad_response() -> None:
    with pytest.raises(BadResponse, match=r"^response has no choices$"):
        decode_completion(b'{"choices":[]}', endpoint=EP, model="", latency_s=0, attempts=1)


def test_undecodable_body_names_the_path() -> None:
    with pytest.raises(BadResponse, match=r"^undecodable body: .*\$\.choices"):
        decode_completion(b'{"choices":3}', endpoint=EP, model="", latency_s=0, attempts=1)


def test_models_list() -> None:
    assert decode_first_model(b'{"data":[{"id":"a"},{"id":"b"}]}') == "a"
    with pytest.raises(BadResponse, match=r"^GET /v1/models: no models$"):
        decode_first_model(b'{"data":[]}')
    with pytest.raises(BadResponse, match=r"^GET /v1/models: "):
        decode_first_model(b"nope")
