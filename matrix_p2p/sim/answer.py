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


def plan_answer(config: SimConfig, req: SimRequest) -> Answer:
    """The answer text and token counts; the same for the same request and seed."""
    rng = request_rng(config.seed, req.model, req.payload, req.max_tokens, req.seed)
    n_out, finish_reason = cap_output_tokens(draw_output_tokens(config, rng), req.max_tokens)
    n_prompt = prompt_tokens(req.text) + CHAT_TEMPLATE_TOKENS * req.n_messages
    if req.kind == "chat" and is_user_sim(req.text):
        text = user_turn(req.payload, rng, config.seed)
        n_user, finish = cap_output_tokens(len(text.split()), req.max_tokens)
        return Answer(text, n_prompt, n_user, finish)
    if req.tools is not None and req.tool_choice != "none":
        got = tool_answer(req.payload, req.tools, req.tool_choice, n_out, req.max_tokens, rng,
                          config.tool_call_malformed_rate)
        return Answer(got.text, n_prompt, got.completion_tokens, got.finish_reason, got.tool_calls)
    if req.response_format is not None:  # guided decoding: JSON of the schema, never cut
        text = answer_json(req.response_format, rng)
        return Answer(text, n_prompt, prompt_tokens(text), "stop")
    text = respond(req.text, n_out, rng, config.agree_prob)
    return Answer(text, n_prompt, n_out, finish_reason)
