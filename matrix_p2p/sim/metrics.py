"""Prometheus text exposition with vLLM's metric names. Pure."""

from __future__ import annotations

from matrix_p2p.sim.engine import BatchCore


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(core: BatchCore, model: str, kv_cache_tokens: int = 262144) -> str:
    """The ``/metrics`` body, as vLLM 0.10+ (V1 engine) writes it: every sample labelled
    ``engine`` and ``model_name``; the queue also split by reason; KV-cache usage under
    its post-0.9 name. Counters follow prometheus_client's layout: the TYPE line names
    the family without ``_total``, the sample has it."""
    label = f'engine="0",model_name="{_escape(model)}"'
    held = sum(s.prompt_tokens + s.generated for s in core.running)
    lines: list[str] = []

    def family(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for sample, value in samples:
            lines.append(f"{sample} {float(value)}")

    family(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        [(f"vllm:num_requests_running{{{label}}}", len(core.running))],
    )
    family(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        [(f"vllm:num_requests_waiting{{{label}}}", len(core.waiting))],
    )
    # the simulator never defers (vLLM: "capacity" = no room in the batch or KV cache)
    family(
        "vllm:num_requests_waiting_by_reason",
        "gauge",
        "Number of requests waiting to be processed, by reason.",
        [
            (f'vllm:num_requests_waiting_by_reason{{{label},reason="capacity"}}',
             len(core.waiting)),
            (f'vllm:num_requests_waiting_by_reason{{{label},reason="deferred"}}', 0),
        ],
    )
    family(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        [(f"vllm:kv_cache_usage_perc{{{label}}}", min(1.0, held / kv_cache_tokens))],
    )
    family(
        "vllm:prompt_tokens",
        "counter",
        "Number of prefill tokens processed.",
        [(f"vllm:prompt_tokens_total{{{label}}}", core.prompt_tokens_total)],
    )
    family(
        "vllm:generation_tokens",
        "counter",
        "Number of generation tokens processed.",
        [(f"vllm:generation_tokens_total{{{label}}}", core.generation_tokens_total)],
    )
    # vLLM 0.32 exports these five from the start; labels in prometheus_client's order
    reasons = sorted(set(core.finished_by_reason) | {"stop", "length", "abort", "error",
                                                     "repetition"})
    family(
        "vllm:request_success",
        "counter",
        "Count of successfully processed requests.",
        [
            (
                f'vllm:request_success_total{{engine="0",finished_reason="{_escape(r)}",'
                f'model_name="{_escape(model)}"}}',
                core.finished_by_reason[r],
            )
            for r in reasons
        ],
    )
    return "\n".join(lines) + "\n"
