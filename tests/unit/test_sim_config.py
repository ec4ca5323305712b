"""SimConfig: capacity formula, validation, run-time fault changes."""

from __future__ import annotations

import pytest

from matrix_p2p.errors import ConfigError
from matrix_p2p.sim.config import SimConfig


def test_capacity_formula() -> None:
    config = SimConfig(max_num_seqs=100, step_base_s=0.01, step_per_seq_s=0.001, tokens_per_step=2)
    # full batch: 100 seqs * 2 tokens every (0.01 + 0.1) s
    assert config.capacity_tokens_per_s() == pytest.approx(200 / 0.11)
    slow = SimConfig(
        max_num_seqs=100, step_base_s=0.01, step_per_seq_s=0.001, tokens_per_step=2, slow_factor=2.0
    )
    assert slow.capacity_tokens_per_s() == pytest.approx(config.capacity_tokens_per_s() / 2)


def test_default_capacity_is_in_the_intended_range() -> None:
    config = SimConfig().validate()
    assert 5_000 <= config.capacity_tokens_per_s() <= 20_000
    # a lone 64-token request takes well under a second
    assert 64 / config.tokens_per_step * config.step_s(1) < 0.5


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_num_seqs": 0}, "max_num_seqs must be >= 1"),
        ({"fail_rate": 1.5}, "fail_rate must be in [0, 1], got 1.5"),
        ({"output_tokens_min": 10, "output_tokens_max": 5}, "output_tokens_max must be >="),
        ({"slow_factor": 0.0}, "slow_factor must be > 0"),
    ],
)
def test_validate_names_the_bad_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SimConfig(**fields).validate()  # type: ignore[arg-type]


def test_with_faults_changes_only_fault_fields() -> None:
    config = SimConfig(seed=3)
    new = config.with_faults(fail_rate=0.5, slow_factor=3, max_waiting=10)
    assert (new.fail_rate, new.slow_factor, new.max_waiting, new.seed) == (0.5, 3.0, 10, 3)
    with pytest.raises(ConfigError, match="not a fault field: seed"):
        config.with_faults(seed=1)
    with pytest.raises(ConfigError, match="drop_rate must be in"):
        config.with_faults(drop_rate=2.0)
    with pytest.raises(ConfigError, match="Expected `float`"):
        config.with_faults(drop_rate="x")
