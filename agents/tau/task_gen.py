"""Task templates for the retail domain: a user with a goal, the actions that reach it.

Each template picks a user and order(s) that fit, writes the user's instruction
(persona, reason for the call, what the user knows and does not know, how the
call should end) and the expected actions. ``generate_tasks`` replays every
task's actions on a fresh copy of the database and keeps a task only if every
action succeeds, so the bundled tasks are all solvable.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

from .generate import random_address
from .retail_db import Order, OrderItem, RetailDB, User, cents
from .retail_tools import call_tool

Action = dict[str, Any]
TaskDict = dict[str, Any]
Template = Callable[[random.Random, RetailDB, User], TaskDict | None]

PER_TEMPLATE = 5
PERSONAS = [
    "You are polite and patient.",
    "You are in a hurry and answer briefly.",
    "You are detail-oriented and want everything done in one go.",
    "You are a little anxious and ask the agent to double-check.",
    "You are friendly and chatty.",
]


def _act(name: str, **arguments: Any) -> Action:
    return {"name": name, "arguments": arguments}


def _auth(rng: random.Random, user: User) -> tuple[list[Action], str, str]:
    """Authentication by email or by name and zip: (actions, known info, unknown info)."""
    first, last = user["name"]["first_name"], user["name"]["last_name"]
    if rng.random() < 0.5:
        return (
            [_act("find_user_id_by_email", email=user["email"])],
            f"You are {first} {last}; your email is {user['email']}.",
            "",
        )
    return (
        [_act("find_user_id_by_name_zip", first_name=first, last_name=last, zip=user["address"]["zip"])],
        f"You are {first} {last} and your zip code is {user['address']['zip']}.",
        "You do not remember your email address.",
    )


def _orders(db: RetailDB, user: User, status: str) -> list[Order]:
    return [db["orders"][o] for o in user["orders"] if db["orders"][o]["status"] == status]


def _options(options: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in options.items())


def _swap(db: RetailDB, rng: random.Random, order: Order) -> tuple[OrderItem, dict[str, Any]] | None:
    """An item of the order and an available other variant of its product."""
    for item in rng.sample(order["items"], k=len(order["items"])):
        variants = db["products"][item["product_id"]]["variants"]
        others = [v for v in variants.values() if v["available"] and v["item_id"] != item["item_id"]]
        if others:
            return item, dict(rng.choice(sorted(others, key=lambda v: v["item_id"])))
    return None


def _task(
    kind: str,
    rng: random.Random,
    user: User,
    reason: str,
    actions: list[Action],
    info: list[str],
    *,
    ending: str = "stop",
    extra: str = "",
) -> TaskDict:
    auth, known, unknown = _auth(rng, user)
    return {
        "kind": kind,
        "user_scenario": {
            "persona": rng.choice(PERSONAS),
            "reason_for_call": reason,
            "known_info": known,
            "unknown_info": unknown,
            "task_instructions": extra,
        },
        "ending": ending,
        "expected_actions": auth + actions,
        "communicate_info": info,
    }


def cancel_pending(rng: random.Random, db: RetailDB, user: User) -> TaskDict | None:
    orders = _orders(db, user, "pending")
    if not orders:
        return None
    order = rng.choice(orders)
    reason = rng.choice(["no longer needed", "ordered by mistake"])
    why = "you no longer need it" if reason == "no longer needed" else "you ordered it by mistake"
    total = cents(sum(i["price"] for i in order["items"]))
    oid = order["order_id"]
    return _task(
        "cancel_pending",
        rng,
        user,
        f"You want to cancel your order {oid} because {why}. You want to know how much will be refunded.",
        [_act("get_order_details", order_id=oid), _act("cancel_pending_order", order_id=oid, reason=reason)],
        [f"{total:.2f}"],
    )


def cancel_refused(rng: random.Random, db: RetailDB, user: User) -> TaskDict | None:
    orders = _orders(db, user, "processed") + _orders(db, user, "delivered")
    if not orders:
        return None
    order = rng.choice(orders)
    oid = order["order_id"]
    return _task(
        "cancel_refused",
        rng,
        user,
        f"You want to cancel your order {oid} because you no longer need it.",
        [_act("get_order_details", order_id=oid)],
        [order["status"]],
        extra="If the agent says the order cannot be cancelled, accept it and end the call.",
    )


def modify_address(rng: random.Random, db: RetailDB, user: User) -> TaskDict | None:
    orders = _orders(db, user, "pending")
    if not orders:
        return None
    order, new = rng.choice(orders), random_address(rng)
    oid = order["order_id"]
    where = (
        f"{new['address1']}{', ' + new['address2'] if new['address2'] else ''}, {new['city']}, "
        f"{new['state']} {new['zip']}, {new['country']}"
    )
    return _task(
        "modify_address",
        rng,
        user,
        f"You moved and want your pending order {oid} shipped to {where}.",
        [_act("get_order_details", order_id=oid), _act("modify_pending_order_address", order_id=oid, **new)],
        [],
    )


def modify_payment(rng: random.Random, db: RetailDB, user: User) -> TaskDict | None:
    for order in _orders(db, user, "pending"):
        total = cents(sum(i["price"] for i in order["items"]))
        current = order["payment_history"][0]["payment_method_id"]
        options = [
            m
            for m in user["payment_methods"].values()
            if m["id"] != current and (m["source"] != "gift_card" or m.get("balance", 0.0) >= total)
        ]
        if options:
            method = rng.choice(options)
            oid = order["order_id"]
            what = method["source"].replace("_", " ")
            return _task(
                "modify_payment",
                rng,
                user,
                f"You want to pay for your pending order {oid} with your {what} ({method['id']}) instead.",
                [
                    _act("get_order_details", order_id=oid),
                    _act("modify_pending_order_payment", order_id=oid, payment_method_id=method["id"]),
                ],
                [],
            )
    return None


def _swap_task(kind: str, status: str, tool: str, verb: str) -> Template:
    def template(rng: random.Random, db: RetailDB, user: User) -> TaskDict | None:
        for order in _orders(db, user, status):
            picked = _swap(db, rng, order)
            if picked is None:
                continue
            item, variant = picked
            method = order["payment_history"][0]["payment_method_id"]
            diff = cents(variant["price"] - item["price"])
            if user["payment_methods"][method]["source"] == "gift_card" and diff > 0:
                continue  # keep the task about the swap, not a balance question
            oid = order["order_id"]
            reason = (
                f"In your order {oid} you want to {verb} the {item['name']} "
                f"({_options(item['options'])}) for the one with {_options(variant['options'])}. "
                f"Use the original payment method for any price difference."
            )
            actions = [
                _act("get_order_details", order_id=oid),
                _act("get_product_details", product_id=item["product_id"]),
                _act(
                    tool,
                    order_id=oid,
                    item_ids=[item["item_id"]],
                    new_item_ids=[variant["item_id"]],
                    payment_method_id=method,
                ),
            ]
            return _task(kind, rng, user, reason, actions, [f"{abs(diff):.2f}"])
        return None

    return template


def return_items(rng: random.Random, db: RetailDB, user: User) -> TaskDict | None:
    orders = _orders(db, user, "delivered")
    if not orders:
        return None
    order = rng.choice(orders)
    items = rng.sample(order["items"], k=min(len(order["items"]), rng.randint(1, 2)))
    oid, method = order["order_id"], order["payment_history"][0]["payment_method_id"]
    names = " and the ".join(i["name"] for i in items)
    refund = cents(sum(i["price"] for i in items))
    return _task(
        "return_items",
        rng,
        user,
        f"You want to return the {names} from your order {oid}, refunded to the original payment "
        f"method. You want to know the refund amount.",
        [
            _act("get_order_details", order_id=oid),
            _act(
                "return_delivered_order_items",
                order_id=oid,
                item_ids=[i["item_id"] for i in items],
                payment_method_id=method,
            ),
        ],
        [f"{refund:.2f}"],
    )


def tracking(rng: random.Random, db: RetailDB, user: User) -> TaskDict | None:
    orders = _orders(db, user, "processed") + _orders(db, user, "delivered")
    if not orders:
        return None
    order = rng.choice(orders)
    oid = order["order_id"]
    return _task(
        "tracking",
        rng,
        user,
        f"You want the tracking number of your order {oid}.",
        [_act("get_order_details", order_id=oid)],
        [order["fulfillments"][0]["tracking_id"][0]],
    )


def user_address(rng: random.Random, db: RetailDB, user: User) -> TaskDict | None:
    new = random_address(rng)
    where = (
        f"{new['address1']}{', ' + new['address2'] if new['address2'] else ''}, {new['city']}, "
        f"{new['state']} {new['zip']}, {new['country']}"
    )
    return _task(
        "user_address",
        rng,
        user,
        f"You moved to {where} and want your default address updated.",
        [
            _act("get_user_details", user_id=user["user_id"]),
            _act("modify_user_address", user_id=user["user_id"], **new),
        ],
        [],
    )


def transfer(rng: random.Random, db: RetailDB, user: User) -> TaskDict | None:
    orders = _orders(db, user, "delivered")
    if not orders:
        return None
    oid = rng.choice(orders)["order_id"]
    return _task(
        "transfer",
        rng,
        user,
        f"Your order {oid} arrived damaged and you want compensation in addition to a refund.",
        [
            _act("get_order_details", order_id=oid),
            _act("transfer_to_human_agents", summary=f"User wants compensation for damaged order {oid}."),
        ],
        [],
        ending="transfer",
        extra="If the agent cannot give compensation, ask to talk to a human agent.",
    )


def out_of_scope(rng: random.Random, db: RetailDB, user: User) -> TaskDict | None:
    topic = rng.choice(
        [
            "the opening hours of the store in your city",
            "whether the store sells gift wrapping",
            "a discount code for your next order",
        ]
    )
    return _task(
        "out_of_scope",
        rng,
        user,
        f"You want to know {topic}.",
        [],
        [],
        ending="out_of_scope",
        extra="This is out of scope for the agent; once it says it cannot help, end the call.",
    )


def product_price(rng: random.Random, db: RetailDB, user: User) -> TaskDict | None:
    product = rng.choice(sorted(db["products"].values(), key=lambda p: p["product_id"]))
    variant = rng.choice(sorted(product["variants"].values(), key=lambda v: v["item_id"]))
    return _task(
        "product_price",
        rng,
        user,
        f"You want to know the price of the {product['name']} with {_options(variant['options'])}.",
        [_act("list_all_product_types"), _act("get_product_details", product_id=product["product_id"])],
        [f"{variant['price']:.2f}"],
    )


def cancel_and_return(rng: random.Random, db: RetailDB, user: User) -> TaskDict | None:
    first, second = cancel_pending(rng, db, user), return_items(rng, db, user)
    if first is None or second is None:
        return None
    auth = len(first["expected_actions"]) - 2  # both start with one authentication action
    first["kind"] = "cancel_and_return"
    first["user_scenario"]["reason_for_call"] += " " + second["user_scenario"]["reason_for_call"]
    first["expected_actions"] += second["expected_actions"][auth:]
    first["communicate_info"] += second["communicate_info"]
    return first


TEMPLATES: list[Template] = [
    cancel_pending,
    cancel_refused,
    modify_address,
    modify_payment,
    _swap_task("modify_items", "pending", "modify_pending_order_items", "change"),
    _swap_task("exchange", "delivered", "exchange_delivered_order_items", "exchange"),
    return_items,
    tracking,
    user_address,
    transfer,
    out_of_scope,
    product_price,
    cancel_and_return,
]


def replay(db: RetailDB, actions: list[Action]) -> list[str]:
    """Run ``actions`` on ``db`` (mutated); returns each action's output."""
    return [call_tool(db, a["name"], a["arguments"]) for a in actions]


def generate_tasks(db: RetailDB, seed: int) -> list[TaskDict]:
    """``PER_TEMPLATE`` solvable tasks per template, ids ``retail_000``..., deterministic in ``seed``."""
    rng = random.Random(seed * 1_000_003 + 1)
    users = sorted(db["users"].values(), key=lambda u: u["user_id"])
    tasks: list[TaskDict] = []
    for template in TEMPLATES:
        made = 0
        for user in rng.sample(users, k=len(users)):
            task = template(rng, db, user)
            if task is None or any(
                out.startswith("Error:") for out in replay(copy.deepcopy(db), task["expected_actions"])
            ):
                continue
            tasks.append({"id": f"retail_{len(tasks):03d}", **task})
            made += 1
            if made == PER_TEMPLATE:
                break
    return tasks
