"""The Matrix comparison's and tau-at-scale's own decisions (bench/matrix_bench.py,
bench/tau.py): no Matrix, no broker, no sandbox needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import matrix_bench, report, tau


def _matrix_row(i: int, texts: list[str]) -> dict[str, Any]:
    history = [{"agent": "student", "response": {"text": "the question"}}]
    for t in texts:
        history += [{"agent": "teacher", "response": {"text": t}},
                    {"agent": "answer_extractor", "response": {"text": "(A)"}},
                    {"agent": "answer_matcher", "response": {"agreement": True}}]
    return {"id": f"q{i}", "creation_timestamp": 10.0 + i, "init_timestamp": 10.0 + i,
            "finish_timestamp": 12.0 + i, "history": history}


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_matrix_rows_count_agent_steps_without_the_injected_question(tmp_path: Path) -> None:
    rows = matrix_bench.matrix_rows(_write(tmp_path / "m.jsonl", [
        _matrix_row(0, ["some text"]), _matrix_row(1, ["a", "b"])]))
    assert rows == [(10.0, 12.0, 3), (11.0, 13.0, 6)]


@pytest.mark.parametrize("texts", [[], [""]], ids=["no_dialogue", "empty_text"])
def test_matrix_rows_with_an_empty_dialogue_fail_loudly(tmp_path: Path, texts: list[str]) -> None:
    # Matrix 0.2.6 under Ray 2.60 writes such rows and exits 0: they must not be counted
    path = _write(tmp_path / "m.jsonl", [_matrix_row(0, ["fine"]), _matrix_row(1, texts)])
    with pytest.raises(matrix_bench.MatrixRunError, match="1 of Matrix's rows have an empty"):
        matrix_bench.matrix_rows(path)


def test_matrix_missing_output_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(matrix_bench.MatrixRunError, match="no output file"):
        matrix_bench.matrix_rows(tmp_path / "absent.jsonl")


def test_side_refuses_a_row_count_other_than_the_tasks() -> None:
    mon = matrix_bench.TreeMonitor(1)
    with pytest.raises(RuntimeError, match="1 rows for 2 tasks"):
        matrix_bench.side("matrix", [(0.0, 1.0, 3)], 2, 0, 1.0, mon)


def test_side_integrates_tasks_alive_and_reads_cpu_in_the_window() -> None:
    mon = matrix_bench.TreeMonitor(1)
    mon.samples = [(0.0, 1.0, 2**20, 3), (10.0, 11.0, 3 * 2**20, 4)]  # 1 CPU s per s
    s = matrix_bench.side("x", [(0.0, 10.0, 5), (5.0, 10.0, 5)], 2, 0, 12.0, mon)
    assert s["steps_per_s"] == 1.0 and s["alive_mean"] == 1.5
    assert s["cpu_s"] == 11.0 and s["cpu_s_window"] == 10.0 and s["peak_pss_mb"] == 3.0


def test_matrix_is_skipped_with_one_reason_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert "fair-matrix is not installed" in (matrix_bench.unavailable() or "")


class _Ctx:
    def __init__(self, task: Any, role: str) -> None:
        self.task, self.role = task, role

    def say(self, content: str, **meta: Any) -> Any:
        from matrix_p2p.envelope import Turn

        turn = Turn(role=self.role, content=content, meta=meta)
        self.task.turns.append(turn)
        return turn


async def test_ported_matcher_ends_the_dialogue_like_matrix(tmp_path: Path) -> None:
    import random

    from matrix_p2p import envelope
    from matrix_p2p.envelope import Turn
    from matrix_p2p.workflow.loader import load

    rows = tmp_path / "q.jsonl"
    matrix_bench.write_rows(rows, 1)
    spec = load(str(matrix_bench.write_workflow(tmp_path, rows, 100)))
    assert spec.limits.max_inflight == 100
    role = spec.roles["answer_matcher_s"]
    agent = matrix_bench_agents().DummyCoralMatchAgent(role, spec)
    random.seed(0)

    async def once(earlier: int) -> bool:
        t = envelope.new_task(task_id="t", workflow=spec.name, role=role.name, row={})
        t.turns += [Turn(role="answer_matcher_t" if i % 2 else "answer_matcher_s",
                         meta={"rated_turns": i + 1})
                    for i in range(earlier)]
        await agent.handle(t, _Ctx(t, role.name))  # type: ignore[arg-type]
        assert t.turns[-1].meta["rated_turns"] == earlier + 1  # both matcher roles count
        return bool(t.state.get("done"))

    # Matrix's is_done: rated_turns >= max_turns (20) ends it whatever the agreement
    assert all([await once(19) for _ in range(50)])
    early = sum([await once(0) for _ in range(400)])  # 10 % agreement before turn 3
    late = sum([await once(5) for _ in range(400)])  # 90 % from turn 3 on
    assert 15 < early < 70 and 330 < late < 390


def matrix_bench_agents() -> Any:
    from bench import matrix_agents

    return matrix_agents


def _samples(rows: list[tuple[float, int, int, int]]) -> tau.Samples:
    s = tau.Samples.__new__(tau.Samples)
    s.rows = [(t, alive, sub, tok, 10, 0) for t, alive, sub, tok in rows]
    return s


def test_tau_steady_window_is_full_cap_while_tasks_remain_to_submit() -> None:
    # ramp-up (alive < cap), steady (alive = cap, source not done), drain (all submitted)
    s = _samples([(0, 100, 100, 0), (1, 256, 256, 0), (2, 256, 300, 800), (3, 256, 350, 1600),
                  (4, 200, 384, 2000), (5, 50, 384, 2100)])
    w = s.window(cap=256, total=384, capacity=1000.0, slots=256)
    assert w["steady_window"]["seconds"] == 2.0  # samples 1..3
    assert w["steady_window"]["fleet_busy"] == 0.8  # 1600 tokens in 2 s of 1000/s
    assert w["steady_window"]["alive_median"] == 256
    assert w["fleet_busy_whole_run"] == 0.42


def test_tau_without_a_full_window_reports_none() -> None:
    s = _samples([(0, 100, 100, 0), (1, 120, 384, 10), (2, 0, 384, 20)])
    assert s.window(cap=256, total=384, capacity=1000.0, slots=256)["steady_window"] is None


def test_report_names_the_new_figures() -> None:
    r = {"tau": {"ours": {"steady_window": {"fleet_busy": 0.9, "alive_median": 256},
                          "tool_calls": {"call": {"p50_ms": 2.5}}}, "ratio_tokens_per_s": 1.7},
         "matrix": {"ratios": {"steps_per_s": 4.7, "cpu_per_task": 15.0}}}
    f = report.figures(r)
    assert (f["tau_tool_call_p50_ms"], f["tau_fleet_busy"], f["tau_alive"]) == (2.5, 0.9, 256)
    assert (f["vs_matrix_steps_per_s"], f["vs_matrix_cpu_per_task"]) == (4.7, 15.0)
    assert ">= 0.85 (met)" in report.table(f) and ">= 10.0 (MISSED)" in report.table(f)
