"""The retail database: its shape, loading, saving and hashing. Standard library only.

The database is plain JSON-shaped data (dicts and lists) so that the sandboxed
environment needs nothing but ``python3``. Its shape is declared with
``TypedDict``: type checkers read it, and the host side validates a database
file against it with ``msgspec.convert(data, RetailDB)`` (see ``tasks.py``), so
these declarations are the one source of truth for the schema.

Money amounts are floats rounded to cents after every operation, so that
replaying the same actions always gives the same bytes, hence the same hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal, NotRequired, TypedDict

OrderStatus = Literal[
    "pending",
    "pending (items modified)",
    "processed",
    "delivered",
    "cancelled",
    "return requested",
    "exchange requested",
]
CANCEL_REASONS = ("no longer needed", "ordered by mistake")


class Name(TypedDict):
    first_name: str
    last_name: str


class Address(TypedDict):
    address1: str
    address2: str
    city: str
    state: str
    country: str
    zip: str


class PaymentMethod(TypedDict):
    id: str
    source: Literal["credit_card", "paypal", "gift_card"]
    brand: NotRequired[str]  # credit cards
    last_four: NotRequired[str]  # credit cards
    balance: NotRequired[float]  # gift cards


class User(TypedDict):
    user_id: str
    name: Name
    address: Address
    email: str
    payment_methods: dict[str, PaymentMethod]
    orders: list[str]


class Variant(TypedDict):
    item_id: str
    options: dict[str, str]
    available: bool
    price: float


class Product(TypedDict):
    product_id: str
    name: str
    variants: dict[str, Variant]  # by item id


class OrderItem(TypedDict):
    name: str
    product_id: str
    item_id: str
    price: float
    options: dict[str, str]


class Fulfillment(TypedDict):
    tracking_id: list[str]
    item_ids: list[str]


class Payment(TypedDict):
    transaction_type: Literal["payment", "refund"]
    amount: float
    payment_method_id: str


class Order(TypedDict):
    order_id: str
    user_id: str
    address: Address
    items: list[OrderItem]
    status: OrderStatus
    fulfillments: list[Fulfillment]
    payment_history: list[Payment]
    cancel_reason: NotRequired[str]
    return_items: NotRequired[list[str]]
    return_payment_method_id: NotRequired[str]
    exchange_items: NotRequired[list[str]]
    exchange_new_items: NotRequired[list[str]]
    exchange_payment_method_id: NotRequired[str]
    exchange_price_difference: NotRequired[float]


class RetailDB(TypedDict):
    users: dict[str, User]
    orders: dict[str, Order]
    products: dict[str, Product]


def cents(amount: float) -> float:
    """``amount`` rounded to cents: every stored amount goes through this."""
    return round(amount + 0.0, 2)


def canonical_bytes(db: RetailDB) -> bytes:
    """The database as canonical JSON (sorted keys, no spaces): what is hashed."""
    return json.dumps(db, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def db_hash(db: RetailDB) -> str:
    """SHA-256 of the canonical JSON: equal databases have equal hashes."""
    return hashlib.sha256(canonical_bytes(db)).hexdigest()


def load_db(path: str | os.PathLike[str]) -> RetailDB:
    """Read a database file (no validation here: the sandbox has no msgspec)."""
    with open(path, encoding="utf-8") as f:
        data: RetailDB = json.load(f)
    return data


def save_db(db: RetailDB, path: str | os.PathLike[str]) -> bytes:
    """Write atomically (temp file, then rename): a process killed mid-write by
    the sandbox's timeout leaves the previous database, never half of one.
    Returns the bytes written (the canonical JSON)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    data = canonical_bytes(db)
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return data


def bundled_db_path() -> Path:
    """The database shipped with the package (``data/db.json``)."""
    return Path(__file__).resolve().parent / "data" / "db.json"
