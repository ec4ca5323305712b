"""The retail tools: each mutates the database as documented and refuses what the policy forbids."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from matrix_p2p_agents.tau.retail_db import RetailDB, db_hash
from matrix_p2p_agents.tau.retail_tools import TOOLS, call_tool, openai_schemas
from matrix_p2p_agents.tau.tasks import validate_db

CARD, GIFT, PAYPAL = "credit_card_1111111", "gift_card_2222222", "paypal_3333333"
ADDRESS = {
    "address1": "1 Main St",
    "address2": "",
    "city": "Austin",
    "state": "TX",
    "country": "USA",
    "zip": "78701",
}


def _item(product_id: str, item_id: str, name: str, price: float, **options: str) -> dict[str, Any]:
    return {"name": name, "product_id": product_id, "item_id": item_id, "price": price, "options": options}


def _order(order_id: str, status: str, items: list[dict[str, Any]], method: str) -> dict[str, Any]:
    total = round(sum(i["price"] for i in items), 2)
    return {
        "order_id": order_id,
        "user_id": "sara_doe_1234",
        "address": dict(ADDRESS),
        "items": items,
        "status": status,
        "fulfillments": [],
        "payment_history": [{"transaction_type": "payment", "amount": total, "payment_method_id": method}],
    }


def small_db() -> RetailDB:
    shirt_red = _item("100", "1001", "T-Shirt", 20.0, color="red")
    shirt_blue = _item("100", "1002", "T-Shirt", 25.0, color="blue")
    keyboard = _item("200", "2001", "Keyboard", 100.0, switch="linear")
    data = {
        "users": {
            "sara_doe_1234": {
                "user_id": "sara_doe_1234",
                "name": {"first_name": "Sara", "last_name": "Doe"},
                "address": dict(ADDRESS),
                "email": "sara.doe@example.com",
                "payment_methods": {
                    CARD: {"id": CARD, "source": "credit_card", "brand": "visa", "last_four": "1111"},
                    GIFT: {"id": GIFT, "source": "gift_card", "balance": 50.0},
                    PAYPAL: {"id": PAYPAL, "source": "paypal"},
                },
                "orders": ["#W0000001", "#W0000002", "#W0000003", "#W0000004"],
            }
        },
        "products": {
            "100": {
                "product_id": "100",
                "name": "T-Shirt",
                "variants": {
                    "1001": {
                        "item_id": "1001",
                        "options": {"color": "red"},
                        "available": True,
                        "price": 20.0,
                    },
                    "1002": {
                        "item_id": "1002",
                        "options": {"color": "blue"},
                        "available": True,
                        "price": 25.0,
                    },
                    "1003": {
                        "item_id": "1003",
                        "options": {"color": "green"},
                        "available": False,
                        "price": 22.0,
                    },
                },
            },
            "200": {
                "product_id": "200",
                "name": "Keyboard",
                "variants": {
                    "2001": {
                        "item_id": "2001",
                        "options": {"switch": "linear"},
                        "available": True,
                        "price": 100.0,
                    },
                    "2002": {
                        "item_id": "2002",
                        "options": {"switch": "clicky"},
                        "available": True,
                        "price": 130.0,
                    },
                },
            },
        },
        "orders": {
            "#W0000001": _order("#W0000001", "pending", [shirt_red, keyboard], CARD),
            "#W0000002": _order("#W0000002", "delivered", [shirt_blue, keyboard], PAYPAL),
            "#W0000003": _order("#W0000003", "processed", [shirt_red], CARD),
            "#W0000004": _order("#W0000004", "pending", [shirt_blue], GIFT),
        },
    }
    return validate_db(data)


@pytest.fixture
def db() -> RetailDB:
    return small_db()


def test_lookups(db: RetailDB) -> None:
    assert call_tool(db, "find_user_id_by_email", {"email": "Sara.Doe@example.com"}) == "sara_doe_1234"
    args = {"first_name": "sara", "last_name": "Doe", "zip": "78701"}
    assert call_tool(db, "find_user_id_by_name_zip", args) == "sara_doe_1234"
    assert call_tool(db, "find_user_id_by_name_zip", {**args, "zip": "00000"}) == "Error: user not found"
    assert json.loads(call_tool(db, "get_order_details", {"order_id": "#W0000003"}))["status"] == "processed"
    assert call_tool(db, "get_order_details", {"order_id": "W0000003"}) == "Error: order not found"
    assert json.loads(call_tool(db, "list_all_product_types", {})) == {"Keyboard": "200", "T-Shirt": "100"}
    assert call_tool(db, "get_product_details", {"product_id": "1001"}) == "Error: product not found"
    assert call_tool(db, "calculate", {"expression": "(20 + 100) * 0.5"}) == "60.0"
    assert call_tool(db, "calculate", {"expression": "__import__('os')"}) == (
        "Error: only numbers, + - * / and parentheses are allowed"
    )
    assert call_tool(db, "calculate", {"expression": "1/0"}) == "Error: division by zero"


def test_argument_validation_is_exact(db: RetailDB) -> None:
    before = db_hash(db)
    assert call_tool(db, "drop_tables", {}) == "Error: unknown tool 'drop_tables'"
    assert call_tool(db, "get_order_details", []) == "Error: arguments must be a JSON object"
    assert call_tool(db, "get_order_details", {}) == "Error: missing argument 'order_id'"
    assert call_tool(db, "get_order_details", {"order_id": "#W0000001", "x": 1}) == (
        "Error: unexpected argument 'x'"
    )
    assert (
        call_tool(db, "get_order_details", {"order_id": 1}) == "Error: argument 'order_id' must be a string"
    )
    bad_items = {"order_id": "#W0000002", "item_ids": "1002", "payment_method_id": PAYPAL}
    assert call_tool(db, "return_delivered_order_items", bad_items) == (
        "Error: argument 'item_ids' must be an array of strings"
    )
    assert call_tool(db, "cancel_pending_order", {"order_id": "#W0000001", "reason": "too expensive"}) == (
        "Error: argument 'reason' must be one of 'no longer needed', 'ordered by mistake'"
    )
    assert db_hash(db) == before


def test_cancel_pending_refunds_and_gift_card_balance(db: RetailDB) -> None:
    out = json.loads(
        call_tool(db, "cancel_pending_order", {"order_id": "#W0000004", "reason": "no longer needed"})
    )
    assert out["status"] == "cancelled" and out["cancel_reason"] == "no longer needed"
    assert out["payment_history"][-1] == {
        "transaction_type": "refund",
        "amount": 25.0,
        "payment_method_id": GIFT,
    }
    assert db["users"]["sara_doe_1234"]["payment_methods"][GIFT]["balance"] == 75.0
    again = call_tool(db, "cancel_pending_order", {"order_id": "#W0000004", "reason": "no longer needed"})
    assert again == "Error: non-pending order cannot be cancelled"


@pytest.mark.parametrize(
    ("tool", "args", "error"),
    [
        (
            "cancel_pending_order",
            {"order_id": "#W0000003", "reason": "no longer needed"},
            "Error: non-pending order cannot be cancelled",
        ),
        (
            "modify_pending_order_address",
            {"order_id": "#W0000002", **ADDRESS},
            "Error: non-pending order cannot be modified",
        ),
        (
            "modify_pending_order_payment",
            {"order_id": "#W0000001", "payment_method_id": CARD},
            "Error: the new payment method must differ from the current one",
        ),
        (
            "modify_pending_order_payment",
            {"order_id": "#W0000001", "payment_method_id": GIFT},
            "Error: insufficient gift card balance",
        ),
        (
            "modify_pending_order_payment",
            {"order_id": "#W0000001", "payment_method_id": "paypal_9"},
            "Error: payment method not found",
        ),
        (
            "modify_pending_order_items",
            {
                "order_id": "#W0000001",
                "item_ids": ["1001"],
                "new_item_ids": ["1003"],
                "payment_method_id": CARD,
            },
            "Error: new item 1003 is not available",
        ),
        (
            "modify_pending_order_items",
            {
                "order_id": "#W0000001",
                "item_ids": ["1001"],
                "new_item_ids": ["2002"],
                "payment_method_id": CARD,
            },
            "Error: new item 2002 is not a variant of product 100",
        ),
        (
            "modify_pending_order_items",
            {
                "order_id": "#W0000001",
                "item_ids": ["1001", "1001"],
                "new_item_ids": ["1002", "1002"],
                "payment_method_id": CARD,
            },
            "Error: item 1001 not found in the order",
        ),
        (
            "modify_pending_order_items",
            {
                "order_id": "#W0000001",
                "item_ids": ["2001"],
                "new_item_ids": ["2002"],
                "payment_method_id": GIFT,
            },
            None,
        ),  # 30.00 <= 50.00: allowed
        (
            "return_delivered_order_items",
            {"order_id": "#W0000001", "item_ids": ["1001"], "payment_method_id": CARD},
            "Error: non-delivered order cannot be returned",
        ),
        (
            "return_delivered_order_items",
            {"order_id": "#W0000002", "item_ids": ["1002"], "payment_method_id": CARD},
            "Error: the refund must go to the original payment method or a gift card",
        ),
        (
            "return_delivered_order_items",
            {"order_id": "#W0000002", "item_ids": [], "payment_method_id": PAYPAL},
            "Error: item_ids must not be empty",
        ),
        (
            "exchange_delivered_order_items",
            {
                "order_id": "#W0000002",
                "item_ids": ["1002"],
                "new_item_ids": ["1002"],
                "payment_method_id": PAYPAL,
            },
            "Error: new item 1002 is the same as the old item",
        ),
        (
            "exchange_delivered_order_items",
            {
                "order_id": "#W0000002",
                "item_ids": ["1002", "2001"],
                "new_item_ids": ["1001"],
                "payment_method_id": PAYPAL,
            },
            "Error: item_ids and new_item_ids must have the same length",
        ),
    ],
)
def test_policy_violations_are_refused_and_change_nothing(
    db: RetailDB, tool: str, args: dict[str, Any], error: str | None
) -> None:
    before = copy.deepcopy(db)
    out = call_tool(db, tool, args)
    if error is None:
        assert not out.startswith("Error:"), out
    else:
        assert out == error
        assert db == before


def test_modify_items_charges_the_difference_and_locks_the_order(db: RetailDB) -> None:
    args = {
        "order_id": "#W0000001",
        "item_ids": ["2001"],
        "new_item_ids": ["2002"],
        "payment_method_id": GIFT,
    }
    order = json.loads(call_tool(db, "modify_pending_order_items", args))
    assert order["status"] == "pending (items modified)"
    assert order["items"][1] == _item("200", "2002", "Keyboard", 130.0, switch="clicky")
    assert order["payment_history"][-1] == {
        "transaction_type": "payment",
        "amount": 30.0,
        "payment_method_id": GIFT,
    }
    assert db["users"]["sara_doe_1234"]["payment_methods"][GIFT]["balance"] == 20.0
    assert call_tool(db, "modify_pending_order_items", args) == "Error: non-pending order cannot be modified"


def test_modify_payment_moves_the_charge(db: RetailDB) -> None:
    order = json.loads(
        call_tool(db, "modify_pending_order_payment", {"order_id": "#W0000004", "payment_method_id": PAYPAL})
    )
    assert [p["transaction_type"] for p in order["payment_history"]] == ["payment", "payment", "refund"]
    assert db["users"]["sara_doe_1234"]["payment_methods"][GIFT]["balance"] == 75.0  # refunded at once


def test_return_exchange_address_and_transfer(db: RetailDB) -> None:
    order = json.loads(
        call_tool(
            db,
            "return_delivered_order_items",
            {"order_id": "#W0000002", "item_ids": ["2001"], "payment_method_id": GIFT},
        )
    )
    assert (order["status"], order["return_items"], order["return_payment_method_id"]) == (
        "return requested",
        ["2001"],
        GIFT,
    )
    fresh = small_db()
    order = json.loads(
        call_tool(
            fresh,
            "exchange_delivered_order_items",
            {
                "order_id": "#W0000002",
                "item_ids": ["1002"],
                "new_item_ids": ["1001"],
                "payment_method_id": PAYPAL,
            },
        )
    )
    assert order["status"] == "exchange requested"
    assert order["exchange_price_difference"] == -5.0
    new_address = {**ADDRESS, "city": "Dallas", "zip": "75201"}
    user = json.loads(call_tool(fresh, "modify_user_address", {"user_id": "sara_doe_1234", **new_address}))
    assert user["address"] == new_address
    assert (
        call_tool(fresh, "transfer_to_human_agents", {"summary": "wants a refund"}) == "Transfer successful"
    )


def test_schemas_come_from_the_tool_definitions() -> None:
    schemas = {s["function"]["name"]: s["function"] for s in openai_schemas()}
    assert set(schemas) == set(TOOLS)
    cancel = schemas["cancel_pending_order"]["parameters"]
    assert cancel["required"] == ["order_id", "reason"]
    assert cancel["properties"]["reason"]["enum"] == ["no longer needed", "ordered by mistake"]
    items = schemas["modify_pending_order_items"]["parameters"]["properties"]["item_ids"]
    assert (items["type"], items["items"]) == ("array", {"type": "string"})
    assert schemas["list_all_product_types"]["parameters"]["required"] == []
    assert {n for n, t in TOOLS.items() if t.writes} == {
        "cancel_pending_order",
        "modify_pending_order_address",
        "modify_pending_order_payment",
        "modify_pending_order_items",
        "modify_user_address",
        "return_delivered_order_items",
        "exchange_delivered_order_items",
    }
