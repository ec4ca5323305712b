"""What a request will get, decided before it enters the engine. Pure."""

from __future__ import annotations

from typing import Any

import msgspec

from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.protocol import CHAT_TEMPLATE_TOKENS, SimRequest
from matrix_p2p.sim.responder import respond
from matrix_p2p.sim.sampling import (
    cap_output_tokens,
    draw_output_tokens,
    prompt_tokens,
    request_rng,
)
from matrix_p2p.sim.schema_json import answer_json
from matrix_p2p.sim.tools import tool_answer
from matrix_p2p.sim.usersim import is_user_sim, user_turn


class Answer(msgspec.Struct, frozen=True):
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    tool_calls: list[dict[str, Any]] | None = None  # see tools.py


class ContextTooLong(Exception):
    """The request does not fit ``max_model_len``: answered 400 with vLLM's message, and
    the request field at fault as the error body's ``param``."""

    def __init__(self, message: str, param: str, value: int) -> None:
        super().__init__(f"{message} (parameter={param}, value={value})")
        self.param = param


def prompt_length(req: SimRequest) -> int:
    return prompt_tokens(req.text) + CHAT_TEMPLATE_TOKENS * req.n_messages


def check_context(n_prompt: int, max_tokens: int | None, max_model_len: int) -> int:
    """vLLM 0.32's input validation: ``max_tokens`` over the window, or a prompt over it,
    raises ``ContextTooLong`` with vLLM's own words (clients match on them). Returns how
    many tokens the answer may have: ``max_tokens`` clamped to what the window leaves
    (vLLM clamps rather than refuses), all of it when ``max_tokens`` is not given."""
    if max_tokens is not None and max_tokens > max_model_len:
        raise ContextTooLong(
            f"max_tokens={max_tokens} cannot be greater than max_model_len={max_model_len}. "
            "Please request fewer output tokens.", "max_tokens", max_tokens
        )
    if n_prompt > max_model_len:
        raise ContextTooLong(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains {n_prompt} input tokens, which exceeds this limit even without "
            "any output tokens. Please reduce the length of the input prompt.",
            "input_tokens", n_prompt,
        )
    left = max(1, max_model_len - n_prompt)
    return left if max_tokens is None else min(max_tokens, left)


def plan_answer(config: SimConfig, req: SimRequest) -> Answer:
    """The answer text and token counts; the same for the same request and seed.
    Raises ``ContextTooLong`` when the request does not fit the context window."""
    n_prompt = prompt_length(req)
    room = check_context(n_prompt, req.max_tokens, config.max_model_len)
    rng = request_rng(config.seed, req.model, req.payload, req.max_tokens, req.seed)
    n_out, finish_reason = cap_output_tokens(draw_output_tokens(config, rng), room)
    if req.kind == "chat" and is_user_sim(req.text):
        text = user_turn(req.payload, rng, config.seed)
        n_user, finish = cap_output_tokens(len(text.split()), room)
        return Answer(text, n_prompt, n_user, finish)
    if req.tools is not None and req.tool_choice != "none":
        got = tool_answer(req.payload, req.tools, req.tool_choice, n_out, room, rng,
                          config.tool_call_malformed_rate)
        return Answer(got.text, n_prompt, got.completion_tokens, got.finish_reason, got.tool_calls)
    if req.response_format is not None:  # guided decoding: JSON of the schema, never cut
        text = answer_json(req.response_format, rng)
        return Answer(text, n_prompt, prompt_tokens(text), "stop")
    text = respond(req.text, n_out, rng, config.agree_prob)
    return Answer(text, n_prompt, n_out, finish_reason)
