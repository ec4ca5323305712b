"""The retail tools. Standard library only.

Each tool is registered with ``@tool`` (see ``tool_registry``), which makes its
OpenAI schema and validates its arguments. Tools never raise to their caller:
a bad call (unknown tool, missing or mistyped argument, a policy violation such
as cancelling a delivered order) comes back as a string starting with
``Error: ``. A failed call leaves the database unchanged: every check runs
before the first mutation.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

try:  # imported as part of the package ...
    from .retail_calc import evaluate_arithmetic
    from .retail_db import CANCEL_REASONS, Address, Order, PaymentMethod, RetailDB, User, cents
    from .tool_registry import TOOLS, Tool, ToolError, call_tool, openai_schemas, tool
except ImportError:  # ... or run by path inside a sandbox (see env.py)
    from retail_calc import evaluate_arithmetic  # type: ignore[no-redef]
    from retail_db import (  # type: ignore[no-redef]
        CANCEL_REASONS,
        Address,
        Order,
        PaymentMethod,
        RetailDB,
        User,
        cents,
    )
    from tool_registry import TOOLS, Tool, ToolError, call_tool, openai_schemas, tool  # type: ignore[no-redef]

__all__ = ["TOOLS", "TRANSFER_MESSAGE", "Tool", "ToolError", "call_tool", "openai_schemas"]

CancelReason = Literal["no longer needed", "ordered by mistake"]
assert get_args(CancelReason) == CANCEL_REASONS

TRANSFER_MESSAGE = "YOU ARE BEING TRANSFERRED TO A HUMAN AGENT. PLEASE HOLD ON."


# -- lookups (raise ToolError) ---------------------------------------------------
def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _user(db: RetailDB, user_id: str) -> User:
    if user_id not in db["users"]:
        raise ToolError("user not found")
    return db["users"][user_id]


def _order(db: RetailDB, order_id: str) -> Order:
    if order_id not in db["orders"]:
        raise ToolError("order not found")
    return db["orders"][order_id]


def _payment_method(db: RetailDB, order: Order, payment_method_id: str) -> PaymentMethod:
    methods = _user(db, order["user_id"])["payment_methods"]
    if payment_method_id not in methods:
        raise ToolError("payment method not found")
    return methods[payment_method_id]


def _require_status(order: Order, status: str, verb: str) -> None:
    if order["status"] != status:
        raise ToolError(f"non-{status} order cannot be {verb}")


def _total(order: Order) -> float:
    return cents(sum(item["price"] for item in order["items"]))


def _original_payment(order: Order) -> str:
    return order["payment_history"][0]["payment_method_id"]


def _items_in_order(order: Order, item_ids: list[str]) -> None:
    """Every listed item is in the order, as many times as listed; none listed is an error."""
    if not item_ids:
        raise ToolError("item_ids must not be empty")
    held = [item["item_id"] for item in order["items"]]
    for item_id in set(item_ids):
        if item_ids.count(item_id) > held.count(item_id):
            raise ToolError(f"item {item_id} not found in the order")


def _price_difference(db: RetailDB, order: Order, item_ids: list[str], new_item_ids: list[str]) -> float:
    """Check a swap of items for variants of the same products; return what the user pays."""
    _items_in_order(order, item_ids)
    if len(item_ids) != len(new_item_ids):
        raise ToolError("item_ids and new_item_ids must have the same length")
    diff = 0.0
    for old_id, new_id in zip(item_ids, new_item_ids, strict=True):
        item = next(i for i in order["items"] if i["item_id"] == old_id)
        variant = db["products"][item["product_id"]]["variants"].get(new_id)
        if variant is None:
            raise ToolError(f"new item {new_id} is not a variant of product {item['product_id']}")
        if new_id == old_id:
            raise ToolError(f"new item {new_id} is the same as the old item")
        if not variant["available"]:
            raise ToolError(f"new item {new_id} is not available")
        diff += variant["price"] - item["price"]
    return cents(diff)


def _check_gift_card(method: PaymentMethod, amount: float) -> None:
    if method["source"] == "gift_card" and amount > method.get("balance", 0.0):
        raise ToolError("insufficient gift card balance")


def _charge(method: PaymentMethod, amount: float) -> None:
    """Move ``amount`` (negative: a refund) on a gift card's balance; other sources are external."""
    if method["source"] == "gift_card":
        method["balance"] = cents(method.get("balance", 0.0) - amount)


# -- the tools ---------------------------------------------------------------------
_ORDER_ID = "The order id, such as '#W0000000' (with the '#')."
_USER_ID = "The user id, such as 'sara_doe_1234'."
_PAYMENT = "A payment method id of the user, such as 'credit_card_0000000' or 'gift_card_0000000'."
_ADDRESS_DOCS = {
    "address1": "The first line of the address, such as '123 Main St'.",
    "address2": "The second line of the address, such as 'Apt 1' or ''.",
    "city": "The city, such as 'San Francisco'.",
    "state": "The state, such as 'CA'.",
    "country": "The country, such as 'USA'.",
    "zip": "The zip code, such as '12345'.",
}


@tool("Find a user id by email address.", email="The user's email, such as 'someone@example.com'.")
def find_user_id_by_email(db: RetailDB, email: str) -> str:
    wanted = email.strip().lower()
    for user in db["users"].values():
        if user["email"].lower() == wanted:
            return user["user_id"]
    raise ToolError("user not found")


@tool(
    "Find a user id by first name, last name and zip code.",
    first_name="The first name, such as 'Sara'.",
    last_name="The last name, such as 'Doe'.",
    zip="The zip code of the user's address, such as '12345'.",
)
def find_user_id_by_name_zip(db: RetailDB, first_name: str, last_name: str, zip: str) -> str:
    for user in db["users"].values():
        name = user["name"]
        if (
            name["first_name"].lower() == first_name.strip().lower()
            and name["last_name"].lower() == last_name.strip().lower()
            and user["address"]["zip"] == zip.strip()
        ):
            return user["user_id"]
    raise ToolError("user not found")


@tool("Get a user's profile: name, address, email, payment methods and order ids.", user_id=_USER_ID)
def get_user_details(db: RetailDB, user_id: str) -> str:
    return _dump(_user(db, user_id))


@tool("Get the status, items, fulfillments and payments of an order.", order_id=_ORDER_ID)
def get_order_details(db: RetailDB, order_id: str) -> str:
    return _dump(_order(db, order_id))


@tool(
    "Get a product's name and all its variant items (options, availability, price).",
    product_id="The product id, such as '1000000000'. Not an item id.",
)
def get_product_details(db: RetailDB, product_id: str) -> str:
    if product_id not in db["products"]:
        raise ToolError("product not found")
    return _dump(db["products"][product_id])


@tool("List every product type: a map of product name to product id.")
def list_all_product_types(db: RetailDB) -> str:
    return _dump(dict(sorted((p["name"], p["product_id"]) for p in db["products"].values())))


@tool(
    "Cancel a pending order and refund its payments to their methods. Needs the user's confirmation.",
    writes=True,
    order_id=_ORDER_ID,
    reason="Why the user cancels: 'no longer needed' or 'ordered by mistake'.",
)
def cancel_pending_order(db: RetailDB, order_id: str, reason: CancelReason) -> str:
    order = _order(db, order_id)
    _require_status(order, "pending", "cancelled")
    refunds = [p for p in order["payment_history"] if p["transaction_type"] == "payment"]
    for payment in refunds:
        method = _payment_method(db, order, payment["payment_method_id"])
        _charge(method, -payment["amount"])
        order["payment_history"].append(
            {
                "transaction_type": "refund",
                "amount": payment["amount"],
                "payment_method_id": payment["payment_method_id"],
            }
        )
    order["status"] = "cancelled"
    order["cancel_reason"] = reason
    return _dump(order)


@tool(
    "Change the shipping address of a pending order. Needs the user's confirmation.",
    writes=True,
    order_id=_ORDER_ID,
    **_ADDRESS_DOCS,
)
def modify_pending_order_address(
    db: RetailDB, order_id: str, address1: str, address2: str, city: str, state: str, country: str, zip: str
) -> str:
    order = _order(db, order_id)
    _require_status(order, "pending", "modified")
    order["address"] = Address(
        address1=address1, address2=address2, city=city, state=state, country=country, zip=zip
    )
    return _dump(order)


@tool(
    "Pay a pending order with another of the user's payment methods; the original is refunded. "
    "Needs the user's confirmation.",
    writes=True,
    order_id=_ORDER_ID,
    payment_method_id=_PAYMENT,
)
def modify_pending_order_payment(db: RetailDB, order_id: str, payment_method_id: str) -> str:
    order = _order(db, order_id)
    _require_status(order, "pending", "modified")
    payments = order["payment_history"]
    if len(payments) != 1 or payments[0]["transaction_type"] != "payment":
        raise ToolError("a pending order must have exactly one payment")
    old_id, amount = payments[0]["payment_method_id"], payments[0]["amount"]
    if payment_method_id == old_id:
        raise ToolError("the new payment method must differ from the current one")
    new_method = _payment_method(db, order, payment_method_id)
    old_method = _payment_method(db, order, old_id)
    _check_gift_card(new_method, amount)
    _charge(new_method, amount)
    _charge(old_method, -amount)
    payments.append({"transaction_type": "payment", "amount": amount, "payment_method_id": payment_method_id})
    payments.append({"transaction_type": "refund", "amount": amount, "payment_method_id": old_id})
    return _dump(order)


@tool(
    "Swap items of a pending order for other variants of the same products, once per order; "
    "the price difference is paid or refunded with the given method. Needs the user's confirmation.",
    writes=True,
    order_id=_ORDER_ID,
    item_ids="Item ids in the order to change, such as ['1000000001'].",
    new_item_ids="The new item ids, position by position, such as ['1000000002'].",
    payment_method_id=_PAYMENT,
)
def modify_pending_order_items(
    db: RetailDB, order_id: str, item_ids: list[str], new_item_ids: list[str], payment_method_id: str
) -> str:
    order = _order(db, order_id)
    _require_status(order, "pending", "modified")
    diff = _price_difference(db, order, item_ids, new_item_ids)
    method = _payment_method(db, order, payment_method_id)
    _check_gift_card(method, diff)
    _charge(method, diff)
    if diff != 0:
        order["payment_history"].append(
            {
                "transaction_type": "payment" if diff > 0 else "refund",
                "amount": abs(diff),
                "payment_method_id": payment_method_id,
            }
        )
    for old_id, new_id in zip(item_ids, new_item_ids, strict=True):
        item = next(i for i in order["items"] if i["item_id"] == old_id)
        variant = db["products"][item["product_id"]]["variants"][new_id]
        item["item_id"], item["price"] = new_id, variant["price"]
        item["options"] = dict(variant["options"])
    order["status"] = "pending (items modified)"
    return _dump(order)


@tool(
    "Change a user's default address. Needs the user's confirmation.",
    writes=True,
    user_id=_USER_ID,
    **_ADDRESS_DOCS,
)
def modify_user_address(
    db: RetailDB, user_id: str, address1: str, address2: str, city: str, state: str, country: str, zip: str
) -> str:
    user = _user(db, user_id)
    user["address"] = Address(
        address1=address1, address2=address2, city=city, state=state, country=country, zip=zip
    )
    return _dump(user)


@tool(
    "Request the return of items of a delivered order; the refund goes to the original payment "
    "method or a gift card of the user. Needs the user's confirmation.",
    writes=True,
    order_id=_ORDER_ID,
    item_ids="Item ids in the order to return, such as ['1000000001'].",
    payment_method_id=_PAYMENT,
)
def return_delivered_order_items(
    db: RetailDB, order_id: str, item_ids: list[str], payment_method_id: str
) -> str:
    order = _order(db, order_id)
    _require_status(order, "delivered", "returned")
    method = _payment_method(db, order, payment_method_id)
    if payment_method_id != _original_payment(order) and method["source"] != "gift_card":
        raise ToolError("the refund must go to the original payment method or a gift card")
    _items_in_order(order, item_ids)
    order["status"] = "return requested"
    order["return_items"] = sorted(item_ids)
    order["return_payment_method_id"] = payment_method_id
    return _dump(order)


@tool(
    "Request the exchange of items of a delivered order for other variants of the same products; "
    "the price difference is paid or refunded with the given method. Needs the user's confirmation.",
    writes=True,
    order_id=_ORDER_ID,
    item_ids="Item ids in the order to exchange, such as ['1000000001'].",
    new_item_ids="The new item ids, position by position, such as ['1000000002'].",
    payment_method_id=_PAYMENT,
)
def exchange_delivered_order_items(
    db: RetailDB, order_id: str, item_ids: list[str], new_item_ids: list[str], payment_method_id: str
) -> str:
    order = _order(db, order_id)
    _require_status(order, "delivered", "exchanged")
    diff = _price_difference(db, order, item_ids, new_item_ids)
    method = _payment_method(db, order, payment_method_id)
    _check_gift_card(method, diff)
    order["status"] = "exchange requested"
    order["exchange_items"] = sorted(item_ids)
    order["exchange_new_items"] = sorted(new_item_ids)
    order["exchange_payment_method_id"] = payment_method_id
    order["exchange_price_difference"] = diff
    return _dump(order)


@tool(
    "Transfer the user to a human agent, with a summary of the issue. Only when the request "
    "cannot be handled with the other tools.",
    summary="A short summary of the user's issue.",
)
def transfer_to_human_agents(db: RetailDB, summary: str) -> str:
    return "Transfer successful"


@tool(
    "Calculate an arithmetic expression with + - * / and parentheses, such as '(12.5 + 3) * 2'.",
    expression="The expression to calculate.",
)
def calculate(db: RetailDB, expression: str) -> str:
    try:
        return str(round(evaluate_arithmetic(expression), 2))
    except ValueError as exc:
        raise ToolError(str(exc)) from None
