"""Configuration of one simulated vLLM replica. Pure: no I/O.

Throughput model (see ``engine.py``): every engine step takes
``(step_base_s + step_per_seq_s * batch_size) * slow_factor`` seconds (plus an
optional prefill cost) and gives every running sequence ``tokens_per_step``
tokens. The defaults give one replica about 12,800 generated tokens/s at a
full batch of 256 sequences, and a lone 64-token request about 0.27 s.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from matrix_p2p.errors import ConfigError

OutputDist = Literal["fixed", "uniform", "lognormal"]

#: Fields that ``SimServer.set_faults`` (and ``POST /sim/faults``) may change at run time.
FAULT_FIELDS: frozenset[str] = frozenset(
    {
        "fail_rate",
        "fail_429_fraction",
        "timeout_rate",
        "hang_s",
        "drop_rate",
        "garbage_rate",
        "slow_factor",
        "max_waiting",
        "agree_prob",
        "tool_call_malformed_rate",
    }
)


class SimConfig(msgspec.Struct, kw_only=True, frozen=True):
    """One replica's knobs. Every field has a default; ``validate()`` checks ranges."""

    model: str = "sim-model"
    # Context window in simulator tokens (prompt + completion), enforced as vLLM's
    # ``--max-model-len`` is: a longer prompt, or max_tokens beyond what is left, is a 400.
    max_model_len: int = 32768
    # KV-cache size in tokens, for ``vllm:kv_cache_usage_perc`` (tokens held by the
    # running sequences over this); the scheduler does not model preemption.
    kv_cache_tokens: int = 262144
    # Continuous batching.
    max_num_seqs: int = 256
    step_base_s: float = 0.016
    step_per_seq_s: float = 0.00025
    tokens_per_step: int = 4
    # Prefill cost: extra step time per prompt token of the sequences that join
    # the batch in that step. 0 (the default) ignores prefill.
    prefill_per_token_s: float = 0.0
    # Output length distribution, in simulator tokens (one token = one word).
    output_tokens: OutputDist = "lognormal"
    output_tokens_mean: float = 64.0
    output_tokens_sigma: float = 0.5
    output_tokens_min: int = 1
    output_tokens_max: int = 512
    seed: int = 0
    # Faults, as fractions of requests (drawn in arrival order, see faults.py).
    fail_rate: float = 0.0
    fail_429_fraction: float = 0.5
    timeout_rate: float = 0.0
    hang_s: float = 600.0
    drop_rate: float = 0.0
    garbage_rate: float = 0.0
    slow_factor: float = 1.0
    # Bound on the waiting queue; None = unbounded like vLLM. Beyond it: 429.
    max_waiting: int | None = None
    # Choice mode: probability of repeating the most recent previous answer.
    agree_prob: float = 0.6
    # Tool calls: fraction deliberately malformed (bad JSON, a missing argument,
    # an unknown tool), drawn from the request's RNG (see tools.py).
    tool_call_malformed_rate: float = 0.0

    def step_s(self, batch_size: int) -> float:
        """Duration of one decode step with ``batch_size`` running sequences."""
        return (self.step_base_s + self.step_per_seq_s * batch_size) * self.slow_factor

    def capacity_tokens_per_s(self) -> float:
        """Generated tokens per second with a full batch (prefill not counted)."""
        full = self.max_num_seqs
        return full * self.tokens_per_step / self.step_s(full)

    def validate(self) -> SimConfig:
        """Return self, or raise ``ConfigError`` naming the first bad field."""
        checks: list[tuple[bool, str]] = [
            (self.max_num_seqs >= 1, "max_num_seqs must be >= 1"),
            (self.max_model_len >= 1, "max_model_len must be >= 1"),
            (self.kv_cache_tokens >= 1, "kv_cache_tokens must be >= 1"),
            (self.tokens_per_step >= 1, "tokens_per_step must be >= 1"),
            (self.step_base_s >= 0 and self.step_per_seq_s >= 0, "step times must be >= 0"),
            (
                self.step_base_s + self.step_per_seq_s > 0,
                "step_base_s + step_per_seq_s must be > 0",
            ),
            (self.prefill_per_token_s >= 0, "prefill_per_token_s must be >= 0"),
            (
                self.output_tokens in ("fixed", "uniform", "lognormal"),
                "output_tokens must be one of fixed, uniform, lognormal",
            ),
            (self.output_tokens_min >= 1, "output_tokens_min must be >= 1"),
            (
                self.output_tokens_max >= self.output_tokens_min,
                "output_tokens_max must be >= output_tokens_min",
            ),
            (self.output_tokens_mean > 0, "output_tokens_mean must be > 0"),
            (self.output_tokens_sigma >= 0, "output_tokens_sigma must be >= 0"),
            (self.slow_factor > 0, "slow_factor must be > 0"),
            (self.hang_s >= 0, "hang_s must be >= 0"),
            (self.max_waiting is None or self.max_waiting >= 0, "max_waiting must be >= 0"),
        ]
        for name in (
            "fail_rate",
            "fail_429_fraction",
            "timeout_rate",
            "drop_rate",
            "garbage_rate",
            "agree_prob",
            "tool_call_malformed_rate",
        ):
            value = getattr(self, name)
            checks.append((0.0 <= value <= 1.0, f"{name} must be in [0, 1], got {value}"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"sim config: {message}")
        return self

    def with_faults(self, **fields: object) -> SimConfig:
        """A copy with fault fields changed; unknown or non-fault fields raise ``ConfigError``."""
        unknown = sorted(set(fields) - FAULT_FIELDS)
        if unknown:
            raise ConfigError(
                f"sim config: not a fault field: {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(FAULT_FIELDS))})"
            )
        try:
            merged = msgspec.structs.asdict(self) | fields
            new = msgspec.convert(merged, SimConfig)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"sim config: {exc}") from exc
        return new.validate()
