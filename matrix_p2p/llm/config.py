"""LLM client configuration."""

from __future__ import annotations

import msgspec

DEFAULT_KEY_ENV = "OPENAI_API_KEY"  # sent when set; a workflow's api_key_env must be set


class LLMConfig(msgspec.Struct, kw_only=True):
    """Settings of one ``LLMClient``. Every field has a default; new fields get defaults."""

    endpoints: list[str] = msgspec.field(default_factory=list)
    model: str | None = None  # None: the first model of each endpoint's /v1/models
    api_key_env: str = DEFAULT_KEY_ENV  # the env var's name; the key itself is never logged
    timeout_s: float = 120.0  # one HTTP attempt
    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 20.0
    initial_limit: int = 32
    min_limit: int = 1
    max_limit: int = 2048
    sticky: bool = True
    # How long a sticky request waits for its task's endpoint (full, or under a
    # Retry-After) before going elsewhere; 0: never wait. An unhealthy endpoint
    # (circuit open, removed) is left at once.
    sticky_wait_s: float = 5.0
    endpoints_file: str | None = None  # one URL per line, '#' comments, re-read on change
    endpoints_poll_s: float = 2.0  # how often the file's mtime is checked
    metrics_poll_s: float | None = 1.0  # vLLM /metrics queue-depth poller (stops by itself
    # on an endpoint without vllm:num_requests_waiting); None: off
    breaker_failures: int = 5
    breaker_cooldown_s: float = 5.0
    latency_tolerance: float | None = 8.0  # recent/baseline time per token = queueing
    decrease_factor: float = 0.7
    queue_wait_s: float | None = None  # longest wait for a free slot; None: timeout_s
    fleet_publish_interval_s: float = 0.25  # at most this often per endpoint
    sticky_capacity: int = 100_000
