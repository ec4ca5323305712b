"""The simulator's tool calls and simulated user: protocol, grounding, determinism, faults."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from matrix_p2p.errors import ConfigError
from matrix_p2p.sim.answer import Answer, plan_answer
from matrix_p2p.sim.config import SimConfig
from matrix_p2p.sim.protocol import BadRequest, parse_request
from matrix_p2p.sim.usersim import OUT_OF_SCOPE, STOP, TRANSFER, USER_MARKER, first_person, turn_budget


def fn(name: str, required: dict[str, Any] | None = None) -> dict[str, Any]:
    props = required or {}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": name,
            "parameters": {"type": "object", "properties": props, "required": list(props)},
        },
    }


S = {"type": "string"}
TOOLS = [
    fn("get_order_details", {"order_id": S}),
    fn("find_user_id_by_email", {"email": S}),
    fn("find_user_id_by_name_zip", {"first_name": S, "last_name": S, "zip": S}),
    fn(
        "cancel_pending_order",
        {"order_id": S, "reason": {"type": "string", "enum": ["no longer needed", "ordered by mistake"]}},
    ),
    fn("return_items", {"order_id": S, "item_ids": {"type": "array", "items": S}}),
    fn("list_products"),
]
USER = (
    "Hi, I am Sara Doe, zip 12345, email sara.doe@example.com. Please cancel #W1234567, ordered by mistake."
)


def ask(
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = TOOLS,
    config: SimConfig | None = None,
    **extra: Any,
) -> Answer:
    body: dict[str, Any] = {"model": "m", "messages": messages, **extra}
    if tools is not None:
        body["tools"] = tools
    return plan_answer(config or SimConfig(), parse_request(json.dumps(body).encode(), "chat", "m"))


def user(text: str = USER) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "Policy: order ids look like #W0000000."},
        {"role": "user", "content": text},
    ]


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def only_call(answer: Answer) -> tuple[str, dict[str, Any]]:
    assert answer.tool_calls is not None and len(answer.tool_calls) == 1
    call = answer.tool_calls[0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    return call["function"]["name"], json.loads(call["function"]["arguments"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tools": {"a": 1}}, "tools must be a list"),
        ({"tools": [{"type": "code"}]}, "tools[0] must be {'type': 'function', 'function': {...}}"),
        (
            {"tools": [{"type": "function", "function": {"name": ""}}]},
            "tools[0].function.name must be a non-empty string",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters must be an object",
        ),
        (
            {"tools": TOOLS, "tool_choice": "sometimes"},
            "tool_choice must be 'none', 'auto', 'required' or a named function",
        ),
        (
            {"tools": TOOLS, "tool_choice": named("nope")},
            "tool_choice names a function that is not in tools: 'nope'",
        ),
        ({"tool_choice": "required"}, "tool_choice 'required' requires tools"),
    ],
)
def test_bad_tool_fields_are_rejected_with_the_field(extra: dict[str, Any], message: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(BadRequest) as info:
        parse_request(json.dumps(body).encode(), "chat", "m")
    assert str(info.value) == message


def test_tool_choice_defaults_like_openai() -> None:
    with_tools = parse_request(json.dumps({"messages": user(), "tools": TOOLS}).encode(), "chat", "m")
    assert with_tools.tool_choice == "auto"
    assert parse_request(json.dumps({"messages": user()}).encode(), "chat", "m").tool_choice == "none"


def test_named_tool_is_grounded_in_what_the_user_said() -> None:
    assert only_call(ask(user(), tool_choice=named("get_order_details"))) == (
        "get_order_details",
        {"order_id": "#W1234567"},
    )
    assert only_call(ask(user(), tool_choice=named("find_user_id_by_email"))) == (
        "find_user_id_by_email",
        {"email": "sara.doe@example.com"},
    )
    assert only_call(ask(user(), tool_choice=named("find_user_id_by_name_zip"))) == (
        "find_user_id_by_name_zip",
        {"first_name": "Sara", "last_name": "Doe", "zip": "12345"},
    )
    # an enum takes the value the conversation mentions
    assert only_call(ask(user(), tool_choice=named("cancel_pending_order"))) == (
        "cancel_pending_order",
        {"order_id": "#W1234567", "reason": "ordered by mistake"},
    )


def test_auto_calls_use_the_mentioned_order_id_over_many_seeds() -> None:
    calls = [ask(user(), seed=s) for s in range(60)]
    made = [only_call(a) for a in calls if a.tool_calls]
    assert len(made) > 35  # about 85% call on a fresh user message
    with_order = [args for name, args in made if "order_id" in args]
    assert with_order and all(args["order_id"] == "#W1234567" for args in with_order)


def test_array_arguments_come_from_tool_results() -> None:
    messages = [
        *user("Return the shirt from #W7654321 please."),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_order_details", "arguments": '{"order_id": "#W7654321"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": json.dumps({"order_id": "#W7654321", "items": [{"item_id": "9876543210"}]}),
        },
    ]
    _, args = only_call(ask(messages, tool_choice=named("return_items")))
    assert args == {"order_id": "#W7654321", "item_ids": ["9876543210"]}


def test_same_request_same_answer_and_ids() -> None:
    first, again = ask(user(), seed=3), ask(user(), seed=3)
    assert first == again
    answers = {json.dumps(ask(user(), seed=s).tool_calls) for s in range(10)}
    assert len(answers) > 3


def test_tool_choice_none_gives_the_ordinary_answer() -> None:
    answer = ask(user("Pick one.\nA) x\nB) y\nEnd with Answer: <letter>"), tool_choice="none")
    assert answer.tool_calls is None and answer.finish_reason == "stop"
    assert answer.text.splitlines()[-1] in ("Answer: A", "Answer: B")


def _after_results(n: int) -> list[dict[str, Any]]:
    messages = user()
    for i in range(n):
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "get_order_details", "arguments": '{"order_id": "#W1234567"}'},
        }
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {
                "role": "tool",
                "tool_call_id": f"call_{i}",
                "content": json.dumps({"order_id": "#W1234567", "status": "pending", "total": 12.5}),
            },
        ]
    return messages


def test_auto_answers_in_text_after_a_few_tool_results() -> None:
    for seed in range(20):
        answer = ask(_after_results(3), seed=seed)
        assert answer.tool_calls is None and answer.finish_reason == "stop"
        assert answer.text.startswith(
            "Here is what I found: order_id: #W1234567, status: pending, total: 12.5."
        )
    # ...but "required" still calls
    assert ask(_after_results(3), tool_choice="required").tool_calls


def test_a_conversation_of_calls_ends_in_text() -> None:
    lengths = []
    for seed in range(30):
        messages = user()
        for step in range(10):
            answer = ask(messages, seed=seed)
            if answer.tool_calls is None:
                lengths.append(step)
                break
            call = answer.tool_calls[0]
            messages += [
                {"role": "assistant", "content": None, "tool_calls": answer.tool_calls},
                {"role": "tool", "tool_call_id": call["id"], "content": '{"status": "pending"}'},
            ]
    assert len(lengths) == 30 and max(lengths) <= 3 and min(lengths) == 0 and max(lengths) >= 2


def _malformed(answer: Answer) -> bool:
    assert answer.tool_calls is not None
    name, arguments = answer.tool_calls[0]["function"]["name"], answer.tool_calls[0]["function"]["arguments"]
    known = {t["function"]["name"]: t["function"]["parameters"]["required"] for t in TOOLS}
    if name not in known:
        return True
    try:
        args = json.loads(arguments)
    except ValueError:
        return True
    return set(args) != set(known[name])


@pytest.mark.parametrize(("rate", "low", "high"), [(0.0, 0, 0), (0.3, 80, 160), (1.0, 400, 400)])
def test_malformed_rate(rate: float, low: int, high: int) -> None:
    config = SimConfig(tool_call_malformed_rate=rate)
    answers = [ask(user(), config=config, tool_choice="required", seed=s) for s in range(400)]
    bad = sum(_malformed(a) for a in answers)
    assert low <= bad <= high
    assert all(a.finish_reason == "tool_calls" for a in answers)


def test_all_three_malformed_kinds_occur() -> None:
    config = SimConfig(tool_call_malformed_rate=1.0)
    seen = set()
    for s in range(60):
        call = ask(user(), config=config, tool_choice=named("get_order_details"), seed=s).tool_calls
        assert call is not None
        name, arguments = call[0]["function"]["name"], call[0]["function"]["arguments"]
        if name == "get_order_details_v2":
            seen.add("unknown_tool")
        elif arguments == "{}":
            seen.add("missing_argument")
        else:
            with pytest.raises(json.JSONDecodeError):
                json.loads(arguments)
            seen.add("bad_json")
    assert seen == {"unknown_tool", "missing_argument", "bad_json"}


def test_max_tokens_cuts_a_call_like_a_real_model() -> None:
    answer = ask(user(), tool_choice=named("find_user_id_by_name_zip"), max_tokens=2)
    assert answer.finish_reason == "length" and answer.completion_tokens == 2
    assert answer.tool_calls is not None
    assert answer.tool_calls[0]["function"]["arguments"] == '{"first_name": "Sara",'


def test_malformed_rate_is_a_validated_fault_field() -> None:
    assert SimConfig().with_faults(tool_call_malformed_rate=0.5).tool_call_malformed_rate == 0.5
    with pytest.raises(
        ConfigError, match=r"^sim config: tool_call_malformed_rate must be in \[0, 1\], got 2.0$"
    ):
        SimConfig(tool_call_malformed_rate=2.0).validate()


# -- the simulated user ------------------------------------------------------------
def user_sim(instruction: str, agent_turns: list[str], seed: int = 0) -> list[str]:
    """Play the conversation: the agent's scripted turns, the customer's simulated ones."""
    system = f"{USER_MARKER}\nYou are a customer.\n<instructions>\n{instruction}\n</instructions>"
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    said = []
    for agent in agent_turns:
        messages.append({"role": "user", "content": agent})
        answer = ask(messages, tools=None, seed=seed)
        said.append(answer.text)
        messages.append({"role": "assistant", "content": answer.text})
        if "###" in answer.text:
            break
    return said


CANCEL = (
    "Reason for call: You want to cancel your order #W1234567 because you ordered it by mistake.\n"
    "Known info: You are Sara Doe and your zip code is 12345."
)


def test_user_opens_with_the_reason_and_known_info_in_first_person() -> None:
    first = user_sim(CANCEL, ["Hello, how can I help?"])[0]
    assert first.endswith(
        "I want to cancel my order #W1234567 because I ordered it by mistake. "
        "I am Sara Doe and my zip code is 12345."
    )
    assert first_person("You are in a hurry; your email is a@b.c.") == "I am in a hurry; my email is a@b.c."


def test_user_answers_identity_confirms_and_stops_within_the_budget() -> None:
    turns = [
        "Hello?",
        "What is your email or zip code?",
        "Shall I cancel it? Please confirm (yes).",
        "Done.",
        "Anything else?",
        "Anything else?",
        "Anything else?",
        "Anything else?",
    ]
    said = user_sim(CANCEL, turns)
    assert said[1] == "I am Sara Doe and my zip code is 12345."
    assert said[2].startswith("Yes")
    budget = turn_budget(0, "\n" + CANCEL + "\n")
    assert 3 <= budget <= 6 and len(said) == budget + 1
    assert said[-1].splitlines()[-1] == STOP
    assert user_sim(CANCEL, turns) == said  # deterministic


def test_user_endings_follow_the_instruction() -> None:
    agent = ["Hi", "Sorry, I cannot do that."] * 5
    transfer = user_sim(CANCEL + "\nOther: If the agent cannot help, ask for a human agent.", agent)
    assert transfer[-1].splitlines()[-1] == TRANSFER
    scope = user_sim(CANCEL + "\nOther: This is out of scope for the agent.", agent)
    assert scope[-1].splitlines()[-1] == OUT_OF_SCOPE
    now = user_sim(CANCEL, ["Hi", "YOU ARE BEING TRANSFERRED TO A HUMAN AGENT. PLEASE HOLD ON."])
    assert now == [now[0], TRANSFER]


def test_user_ending_survives_max_tokens() -> None:
    system = f"{USER_MARKER}\n<instructions>\n{CANCEL}\n</instructions>"
    messages = [{"role": "system", "content": system}]
    for i in range(7):
        messages += [{"role": "user", "content": "ok"}, {"role": "assistant", "content": f"turn {i}"}]
    messages.append({"role": "user", "content": "ok"})
    answer = ask(messages, tools=None, max_tokens=1)
    assert answer.text.endswith(STOP) and answer.finish_reason == "length" and answer.completion_tokens == 1
    assert msgspec.json.decode(msgspec.json.encode(answer), type=Answer) == answer
