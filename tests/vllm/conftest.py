"""Fixtures of the real-vLLM tier: one vLLM server per test session, started on first
use (only tests marked ``vllm`` ask for it) and stopped by PID. ``MX_VLLM_URL=http://
127.0.0.1:PORT`` uses a server already running instead (started with
``tests.vllm.env.start_server``: a start takes minutes on a loaded machine)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.vllm import env


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if os.environ.get("MX_VLLM_URL"):
        yield env.ExternalServer(os.environ["MX_VLLM_URL"].rstrip("/").removesuffix("/v1"))
        return
    with env.running(tmp_path_factory.mktemp("vllm")) as srv:
        print(f"vLLM {env.VLLM_VERSION} ready on {srv.url} in {srv.start_s:.1f}s")
        yield srv
