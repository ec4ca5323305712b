"""What a request will get, decided before it enters the engine. Pure."""

from __future__ import annotations

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


class Answer(msgspec.Struct, frozen=True):
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def plan_answer(config: SimConfig, req: SimRequest) -> Answer:
    """The answer text and token counts; the same for the same request and seed."""
    rng = request_rng(config.seed, req.model, req.payload, req.max_tokens, req.seed)
    n_out, finish_reason = cap_output_tokens(draw_output_tokens(config, rng), req.max_tokens)
    text = respond(req.text, n_out, rng, config.agree_prob)
    n_prompt = prompt_tokens(req.text) + CHAT_TEMPLATE_TOKENS * req.n_messages
    return Answer(text, n_prompt, n_out, finish_reason)
