"""What the client reads off a real vLLM server: /metrics as vLLM 0.10+ writes it (and
older names), and error bodies; and the simulator's context window, held to vLLM's."""

from __future__ import annotations

import msgspec
import pytest

from matrix_p2p.errors import ConfigError
from matrix_p2p.llm.wire import (
    error_reason,
    metric_samples,
    parse_kv_cache_usage,
    parse_running,
    parse_waiting,
)
from matrix_p2p.sim.answer import ContextTooLong, check_context, plan_answer
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.protocol import parse_request

# vLLM 0.32.0's names, labels and label order (as its /metrics writes them), three requests waiting
VLLM_032 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny-llama"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny-llama"} 3.0
# HELP vllm:num_requests_waiting_by_reason Number of requests waiting, by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny-llama",reason="capacity"} 3.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny-llama",reason="deferred"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.25
"""

VLLM_OLD = """\
vllm:num_requests_waiting{model_name="m"} 4.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
vllm:cpu_cache_usage_perc{model_name="m"} 0.0
"""


def test_queue_depth_is_not_counted_twice_with_the_by_reason_series() -> None:
    assert parse_waiting(VLLM_032) == 3
    assert parse_running(VLLM_032) == 2
    assert parse_waiting(VLLM_OLD) == 4


def test_one_sample_per_engine_is_summed() -> None:
    two = ('vllm:num_requests_waiting{engine="0",model_name="m"} 2\n'
           'vllm:num_requests_waiting{engine="1",model_name="m"} 5\n'
           "vllm:num_requests_waiting_total 99\n")
    assert parse_waiting(two) == 7
    assert metric_samples("vllm:x 1\nvllm:xy 2\nvllm:x{a=\"b\"} 3\n", "vllm:x") == [1.0, 3.0]
    assert parse_waiting("# HELP vllm:num_requests_waiting x\nother 1\n") is None


def test_kv_cache_usage_new_name_first_then_the_old_one() -> None:
    assert parse_kv_cache_usage(VLLM_032) == 0.25
    assert parse_kv_cache_usage(VLLM_OLD) == 0.5
    assert parse_kv_cache_usage("vllm:num_requests_waiting 1\n") is None


def test_error_reason_is_the_servers_message_on_one_line() -> None:
    new = msgspec.json.encode({"error": {"message": "This model's maximum context length is "
                                         "2048 tokens.\nHowever, ...", "type": "BadRequestError",
                                         "param": None, "code": 400}})
    old = msgspec.json.encode({"object": "error", "message": "too long", "type": "x", "code": 400})
    assert error_reason(new) == "This model's maximum context length is 2048 tokens. However, ..."
    assert error_reason(old) == "too long"
    assert error_reason(b"<html>\n bad gateway</html>") == "<html> bad gateway</html>"
    assert error_reason(b'{"detail": "x"}') == '{"detail": "x"}'
    assert len(error_reason(b"x" * 1000)) == 500


def test_sim_context_window_as_vllm_checks_it() -> None:
    assert check_context(2048, None, 2048) == 1
    assert check_context(2000, None, 2048) == 48
    assert check_context(1000, 2048, 2048) == 1048  # clamped, as vLLM 0.32 does
    assert check_context(1000, 20, 2048) == 20
    with pytest.raises(ContextTooLong, match=r"^This model's maximum context length is 2048 "
                       r"tokens\. However, your prompt contains 2049 input tokens, which "
                       r"exceeds this limit even without any output tokens\."):
        check_context(2049, None, 2048)
    with pytest.raises(ContextTooLong, match=r"^max_tokens=2049 cannot be greater than "
                       r"max_model_len=2048\. Please request fewer output tokens\. "
                       r"\(parameter=max_tokens, value=2049\)$"):
        check_context(10, 2049, 2048)


def test_sim_refuses_a_five_million_token_prompt_and_caps_an_open_answer() -> None:
    config = SimConfig(max_model_len=100, output_tokens="fixed", output_tokens_mean=500,
                       output_tokens_max=1000)
    huge = msgspec.json.encode({"prompt": "abcd" * 5_000_000})
    with pytest.raises(ContextTooLong, match="5000000 input tokens"):
        plan_answer(config, parse_request(huge, "completion", "m"))
    # no max_tokens: the answer runs to the end of the window, as vLLM's default does
    open_ = plan_answer(config, parse_request(b'{"prompt": "abcd" }', "completion", "m"))
    assert (open_.prompt_tokens, open_.completion_tokens, open_.finish_reason) == (1, 99, "length")
    with pytest.raises(ConfigError, match="max_model_len must be >= 1"):
        SimConfig(max_model_len=0).validate()
