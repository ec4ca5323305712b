"""Reward (db_match x communicate_match), the bundled data and the generator's determinism."""

from __future__ import annotations

import copy
from pathlib import Path

import msgspec
import pytest
from matrix_p2p_agents.tau.generate import write
from matrix_p2p_agents.tau.prompts import USER_SIM_MARKER, user_system_prompt
from matrix_p2p_agents.tau.retail_db import bundled_db_path, db_hash
from matrix_p2p_agents.tau.retail_tools import call_tool
from matrix_p2p_agents.tau.reward import evaluate, expected_db
from matrix_p2p_agents.tau.tasks import Action, Task, UserScenario, fresh_db, load_tasks, validate_db

from matrix_p2p.sim.usersim import USER_MARKER
from tests.unit.test_tau_tools import small_db

CANCEL = Task(
    id="t1",
    user_scenario=UserScenario(reason_for_call="Cancel #W0000001.", known_info="You are Sara Doe."),
    expected_actions=[
        Action("find_user_id_by_email", {"email": "sara.doe@example.com"}),
        Action("cancel_pending_order", {"order_id": "#W0000001", "reason": "ordered by mistake"}),
    ],
    communicate_info=["120.00"],
)


def test_reward_is_one_when_db_and_information_match() -> None:
    initial = small_db()
    final = copy.deepcopy(initial)
    call_tool(final, "get_order_details", {"order_id": "#W0000001"})  # reads do not matter
    call_tool(final, "cancel_pending_order", {"order_id": "#W0000001", "reason": "ordered by mistake"})
    said = ["I have cancelled it.", "You will get $120.00 back."]
    r = evaluate(CANCEL, initial_db=initial, assistant_messages=said, final_db=final)
    assert (r.reward, r.db_match, r.communicate_match, r.missing_info) == (1.0, True, True, [])
    by_hash = evaluate(CANCEL, initial_db=initial, assistant_messages=said, final_db_hash=db_hash(final))
    assert by_hash == r
    assert initial == small_db()  # evaluate never mutates its input


def test_reward_is_zero_on_a_wrong_db_or_missing_information() -> None:
    initial = small_db()
    wrong = copy.deepcopy(initial)
    call_tool(wrong, "cancel_pending_order", {"order_id": "#W0000001", "reason": "no longer needed"})
    r = evaluate(CANCEL, initial_db=initial, assistant_messages=["refund: 120.00"], final_db=wrong)
    assert (r.reward, r.db_match, r.communicate_match) == (0.0, False, True)
    right, _ = expected_db(CANCEL, initial)
    r = evaluate(CANCEL, initial_db=initial, assistant_messages=["done, refund: 12.00"], final_db=right)
    assert (r.reward, r.db_match, r.communicate_match, r.missing_info) == (0.0, True, False, ["120.00"])
    untouched = evaluate(CANCEL, initial_db=initial, assistant_messages=[], final_db=initial)
    assert not untouched.db_match


def test_thousands_separators_are_ignored_in_messages() -> None:
    task = msgspec.structs.replace(CANCEL, expected_actions=[], communicate_info=["1234.50"])
    r = evaluate(task, initial_db=small_db(), assistant_messages=["That is $1,234.50."], final_db=small_db())
    assert r.communicate_match


def test_evaluate_wants_exactly_one_final_state() -> None:
    with pytest.raises(ValueError, match="give exactly one of final_db and final_db_hash"):
        evaluate(CANCEL, initial_db=small_db(), assistant_messages=[])


def test_a_broken_expected_action_is_reported() -> None:
    task = msgspec.structs.replace(CANCEL, expected_actions=[Action("get_order_details", {"order_id": "#X"})])
    r = evaluate(task, initial_db=small_db(), assistant_messages=["120.00"], final_db=small_db())
    assert r.replay_errors == ["get_order_details: Error: order not found"]


def test_bundled_tasks_are_many_varied_and_all_solvable() -> None:
    tasks = load_tasks()
    assert len(tasks) >= 50
    assert len({t.id for t in tasks}) == len(tasks)
    assert {t.ending for t in tasks} == {"stop", "transfer", "out_of_scope"}
    db = fresh_db()
    hashes = set()
    for task in tasks:
        gold, errors = expected_db(task, db)
        assert errors == [], task.id
        hashes.add(db_hash(gold))
        said = [f"Here you go: {', '.join(task.communicate_info)}"]
        assert evaluate(task, initial_db=db, assistant_messages=said, final_db=gold).reward == 1.0
    assert len(hashes) > 40  # most tasks change the database, each differently


def test_generator_is_deterministic_and_matches_the_bundled_files(tmp_path: Path) -> None:
    db_path, tasks_path, n = write(tmp_path, seed=7)
    assert db_path.read_bytes() == bundled_db_path().read_bytes()
    assert tasks_path.read_text() == (bundled_db_path().parent / "tasks.jsonl").read_text()
    assert n == len(load_tasks())
    other, _, _ = write(tmp_path / "other", seed=8)
    assert other.read_bytes() != db_path.read_bytes()


def test_db_schema_errors_name_the_path() -> None:
    data = msgspec.json.decode(bundled_db_path().read_bytes())
    first = next(iter(data["orders"]))
    data["orders"][first]["items"][0]["price"] = "cheap"
    with pytest.raises(
        msgspec.ValidationError, match=r"Expected `float`, got `str` - at `\$.orders\[.*\].items\[0\].price`"
    ):
        validate_db(data)


def test_user_prompt_carries_the_simulator_marker_and_instruction() -> None:
    assert USER_SIM_MARKER == USER_MARKER
    task = load_tasks()[0]
    prompt = user_system_prompt(task)
    assert USER_MARKER in prompt
    assert f"Reason for call: {task.user_scenario.reason_for_call}" in prompt
