"""Fixtures of the real-vLLM tier: one vLLM server per test session, started on first
use (only tests marked ``vllm`` ask for it) and stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.vllm import env


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[env.VLLMServer]:
    with env.running(tmp_path_factory.mktemp("vllm")) as srv:
        print(f"vLLM {env.VLLM_VERSION} ready on {srv.url} in {srv.start_s:.1f}s")
        yield srv
