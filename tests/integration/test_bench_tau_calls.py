"""The bench's tool-call measurement runs (real sandboxes): figures present, not speed."""

from __future__ import annotations

from bench import report, tau


async def test_tau_call_round_trips_are_measured_side_by_side() -> None:
    out = await tau.calls(rounds=2, reads_per_round=2, log=lambda _: None)
    assert out["session_read"]["n"] == 4
    for key in ("session_write", "execute_read", "execute_true"):
        assert out[key]["n"] == 2 and out[key]["p50_ms"] > 0
    assert out["speedup_read"] > 0
    figs = report.figures({"tau_calls": out})
    assert figs["tau_session_call_p50_ms"] == out["session_read"]["p50_ms"]
    assert "<= 3" in report.table(figs)
