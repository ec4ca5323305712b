"""Prometheus text exposition with vLLM's metric names. Pure."""

from __future__ import annotations

from matrix_p2p.sim.engine import BatchCore


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(core: BatchCore, model: str) -> str:
    """The ``/metrics`` body. Counters follow prometheus_client's layout: the
    TYPE line names the family without ``_total``, the sample has it."""
    label = f'model_name="{_escape(model)}"'
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
    reasons = sorted(set(core.finished_by_reason) | {"stop", "length"})
    family(
        "vllm:request_success",
        "counter",
        "Count of successfully processed requests.",
        [
            (
                f'vllm:request_success_total{{finished_reason="{_escape(r)}",{label}}}',
                core.finished_by_reason[r],
            )
            for r in reasons
        ],
    )
    return "\n".join(lines) + "\n"
