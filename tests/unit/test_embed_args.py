"""The Python API checks its arguments before any work: one clear line each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import matrix_p2p
from matrix_p2p.embed import args
from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.spec import parse

SPEC = parse("""
name: argcheck
source: {path: rows.jsonl}
roles:
  a: {agent: "matrix_p2p_agents.dummy:Talker", llm: null}
routing: {type: cycle, roles: [a]}
""", path="wf.yaml")


def test_one_url_string_is_one_url_not_one_per_character() -> None:
    assert args.urls("llm_urls", "http://gpu1:8000/v1") == ["http://gpu1:8000/v1"]
    assert args.urls("llm_urls", ("http://a/v1", " https://b/v1 ")) == ["http://a/v1", "https://b/v1"]
    assert args.urls("llm_urls", ()) == []


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"llm_urls": ["http://a/v1", 8000]}, TypeError, r"^llm_urls\[1\]: expected a URL string, got int$"),
    ({"llm_urls": 8000}, TypeError, r"^llm_urls: expected a URL or a list of URLs, got int$"),
    ({"llm_urls": "gpu1:8000"}, ConfigError,
     r"^llm_urls\[0\]: 'gpu1:8000' is not one http:// or https:// URL$"),
    ({"llm_urls": "http://a/v1,http://b/v1"}, ConfigError, r"^llm_urls\[0\]: .* is not one http"),
    ({"sandbox_urls": [None]}, TypeError, r"^sandbox_urls\[0\]: expected a URL string, got NoneType$"),
    ({"limit": -1}, ConfigError, r"^limit: must be at least 0, got -1$"),
    ({"limit": "10"}, TypeError, r"^limit: expected an int, got str$"),
    ({"limit": True}, TypeError, r"^limit: expected an int, got bool$"),
    ({"concurrency": 0}, ConfigError, r"^concurrency: must be at least 1, got 0$"),
    ({"sim_replicas": 0}, ConfigError, r"^sim_replicas: must be at least 1, got 0$"),
    ({"version": "newest"}, ConfigError, r"^version: expected one of 'check', 'reuse', 'new', got 'newest'$"),
    ({"version": None}, TypeError, r"^version: expected a string, got NoneType$"),
    ({"kept_only": "yes"}, TypeError, r"^kept_only: expected True or False, got str$"),
    ({"metrics_port": 70000}, ConfigError, r"^metrics_port: must be at most 65535, got 70000$"),
    ({"out": 5}, TypeError, r"^out: expected a path, got int$"),
    ({"nats": 4222}, TypeError, r"^nats: expected a URL or ConnectOptions, got int$"),
    ({"stop": object()}, TypeError, r"^stop: expected an asyncio.Event, got object$"),
    ({"log_level": "loud"}, ConfigError,
     r"^log_level: expected one of debug, info, warning, error, got 'loud'$"),
    ({"source": 42}, TypeError, r"^source: expected a path, a glob, 'hf:NAME' or rows \(dicts\), got int$"),
    ({"source": ["a.jsonl"]}, TypeError, r"^source: row 0: expected a dict, got str$"),
])
async def test_a_wrong_argument_is_one_line_before_any_work(
    tmp_path: Path, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    store = tmp_path / "st"
    with pytest.raises(error, match=message):
        await matrix_p2p.run_async(SPEC, **{"store": store, "out": tmp_path / "o.jsonl", **options})
    # rows that fail are not written: nothing but the rows folder (empty) may exist
    assert not [p for p in store.rglob("*") if p.is_file()]
    assert not (tmp_path / "o.jsonl").exists()


def test_run_refuses_an_unknown_option_at_the_call() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'limt'"):
        matrix_p2p.run(SPEC, limt=3)


async def test_a_workflow_of_the_wrong_type_is_named() -> None:
    with pytest.raises(TypeError, match=r"^workflow: expected a path, a bundled name or a "
                                        r"WorkflowSpec, got dict$"):
        await matrix_p2p.run_async({"name": "x"})  # type: ignore[arg-type]


async def test_the_serve_side_calls_check_their_arguments() -> None:
    with pytest.raises(ConfigError, match=r"^nats: a broker URL is required"):
        await matrix_p2p.submit(SPEC, nats=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^collect: give either `ids`"):
        await matrix_p2p.collect(SPEC, nats="nats://127.0.0.1:1")
    with pytest.raises(TypeError, match=r"^ids\[1\]: expected a string, got int$"):
        matrix_p2p.results(SPEC, nats="nats://127.0.0.1:1", ids=["a", 2])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"^roles: unknown role\(s\) zz in workflow"):
        async with matrix_p2p.serve(SPEC, nats="nats://127.0.0.1:1", roles="zz"):
            pass
