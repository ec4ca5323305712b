"""Generate the bundled retail database and tasks, deterministically from a seed.

    python -m matrix_p2p_agents.tau.generate [--seed 7] [--out agents/tau/data]

writes ``db.json`` (canonical JSON, see ``retail_db``) and ``tasks.jsonl``
(one task per line, see ``tasks.Task``). The same seed gives the same bytes.
The database is small (20 product types, 60 users, about 150 orders) so that a
sandbox copies it in milliseconds; the tasks come from ``task_gen``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path
from typing import Any

from .retail_db import (
    Address,
    Order,
    OrderItem,
    PaymentMethod,
    Product,
    RetailDB,
    User,
    Variant,
    canonical_bytes,
    cents,
)

DEFAULT_SEED = 7
N_USERS = 60

# name, base price, option axes: enough variety for "the same product, other options".
PRODUCTS: list[tuple[str, float, dict[str, list[str]]]] = [
    ("T-Shirt", 25, {"color": ["red", "blue", "black", "white"], "size": ["S", "M", "L", "XL"]}),
    (
        "Mechanical Keyboard",
        140,
        {
            "switch type": ["linear", "tactile", "clicky"],
            "backlight": ["none", "white", "RGB"],
            "size": ["full size", "80%"],
        },
    ),
    (
        "Smart Thermostat",
        200,
        {
            "compatibility": ["Apple HomeKit", "Google Assistant", "Amazon Alexa"],
            "color": ["white", "black", "stainless steel"],
        },
    ),
    ("Running Shoes", 110, {"size": ["8", "9", "10", "11"], "color": ["black", "white", "red"]}),
    (
        "Water Bottle",
        22,
        {"capacity": ["500ml", "750ml", "1000ml"], "material": ["plastic", "stainless steel", "glass"]},
    ),
    (
        "Desk Lamp",
        60,
        {"color": ["black", "white", "silver"], "power source": ["USB", "AC adapter", "battery"]},
    ),
    ("Backpack", 80, {"color": ["black", "grey", "navy"], "size": ["small", "medium", "large"]}),
    (
        "Wireless Earbuds",
        130,
        {"color": ["black", "white", "blue"], "water resistance": ["none", "IPX4", "IPX7"]},
    ),
    (
        "Coffee Maker",
        95,
        {"capacity": ["1 cup", "4 cups", "8 cups"], "type": ["drip", "espresso", "french press"]},
    ),
    ("Yoga Mat", 35, {"thickness": ["4mm", "6mm", "8mm"], "material": ["PVC", "TPE", "natural rubber"]}),
    ("Office Chair", 230, {"material": ["mesh", "leather", "fabric"], "color": ["black", "gray", "blue"]}),
    ("Hiking Boots", 160, {"size": ["8", "9", "10", "11"], "waterproof": ["yes", "no"]}),
    ("Bluetooth Speaker", 70, {"color": ["black", "red", "blue"], "battery life": ["10 hours", "20 hours"]}),
    (
        "Laptop",
        1100,
        {
            "screen size": ["13-inch", "15-inch"],
            "processor": ["i5", "i7", "i9"],
            "ram": ["8GB", "16GB", "32GB"],
        },
    ),
    ("Smart Watch", 280, {"color": ["black", "silver", "gold"], "band": ["leather", "silicone", "metal"]}),
    (
        "Electric Kettle",
        45,
        {"capacity": ["1L", "1.5L", "2L"], "material": ["plastic", "stainless steel", "glass"]},
    ),
    (
        "Sunglasses",
        120,
        {"frame color": ["black", "brown", "silver"], "lens type": ["polarized", "non-polarized"]},
    ),
    (
        "Air Purifier",
        250,
        {"room size": ["small", "medium", "large"], "filter type": ["HEPA", "carbon", "ionic"]},
    ),
    ("Jigsaw Puzzle", 30, {"pieces": ["500", "1000", "1500"], "theme": ["animals", "landscape", "art"]}),
    ("Cycling Helmet", 75, {"size": ["S", "M", "L"], "color": ["black", "white", "red"]}),
]
FIRST_NAMES = [
    "Ava",
    "Noah",
    "Mia",
    "Liam",
    "Sofia",
    "Ethan",
    "Yara",
    "Omar",
    "Lucas",
    "Chen",
    "Aisha",
    "Mateo",
    "Ivan",
    "Fatima",
    "Daniel",
    "Mei",
    "Raj",
    "Olivia",
    "Yusuf",
    "Emma",
    "Hiro",
    "Lena",
    "Amir",
    "Grace",
    "Juan",
    "Anya",
    "Kofi",
    "Sara",
    "Leo",
    "Nora",
]
LAST_NAMES = [
    "Garcia",
    "Kim",
    "Nguyen",
    "Smith",
    "Rossi",
    "Patel",
    "Silva",
    "Muller",
    "Khan",
    "Lopez",
    "Ito",
    "Brown",
    "Cohen",
    "Ahmed",
    "Santos",
    "Novak",
    "Wilson",
    "Moreau",
    "Lee",
    "Hansen",
]
CITIES = [
    ("Seattle", "WA", "981"),
    ("Austin", "TX", "787"),
    ("Denver", "CO", "802"),
    ("Boston", "MA", "021"),
    ("Chicago", "IL", "606"),
    ("Phoenix", "AZ", "850"),
    ("Portland", "OR", "972"),
    ("Atlanta", "GA", "303"),
    ("Columbus", "OH", "432"),
    ("San Diego", "CA", "921"),
    ("Philadelphia", "PA", "191"),
    ("Nashville", "TN", "372"),
]
STREETS = [
    "Main St",
    "Oak Ave",
    "Maple Dr",
    "Cedar Ln",
    "Elm St",
    "Pine Rd",
    "Lake View",
    "Hill St",
    "River Rd",
    "Sunset Blvd",
    "Park Ave",
    "Broadway",
]
BRANDS = ["visa", "mastercard", "amex", "discover"]
STATUS_WEIGHTS = {"pending": 0.32, "processed": 0.18, "delivered": 0.4, "cancelled": 0.1}


class _Ids:
    """Unique random digit strings, so that no two ids of any kind collide."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.seen = rng, set[str]()

    def digits(self, n: int) -> str:
        while True:
            value = str(self.rng.randrange(10 ** (n - 1), 10**n))
            if value not in self.seen:
                self.seen.add(value)
                return value


def random_address(rng: random.Random) -> Address:
    city, state, prefix = rng.choice(CITIES)
    return Address(
        address1=f"{rng.randint(10, 999)} {rng.choice(STREETS)}",
        address2=rng.choice(["", "", f"Suite {rng.randint(100, 999)}", f"Apt {rng.randint(1, 40)}"]),
        city=city,
        state=state,
        country="USA",
        zip=f"{prefix}{rng.randint(10, 99)}",
    )


def _products(rng: random.Random, ids: _Ids) -> dict[str, Product]:
    products: dict[str, Product] = {}
    for name, base, axes in PRODUCTS:
        combos = list(itertools.product(*axes.values()))
        chosen = rng.sample(combos, k=min(len(combos), rng.randint(5, 9)))
        product_id = ids.digits(10)
        variants: dict[str, Variant] = {}
        for values in chosen:
            item_id = ids.digits(10)
            variants[item_id] = Variant(
                item_id=item_id,
                options=dict(zip(axes, values, strict=True)),
                available=rng.random() < 0.75,
                price=cents(base * rng.uniform(0.85, 1.25)),
            )
        products[product_id] = Product(product_id=product_id, name=name, variants=variants)
    return products


def _payment_methods(rng: random.Random, ids: _Ids) -> dict[str, PaymentMethod]:
    methods: dict[str, PaymentMethod] = {}
    for source in rng.sample(["credit_card", "paypal", "gift_card", "credit_card"], k=rng.randint(1, 3)):
        pid = f"{source}_{ids.digits(7)}"
        method: PaymentMethod = {"id": pid, "source": source}  # type: ignore[typeddict-item]
        if source == "credit_card":
            method |= {"brand": rng.choice(BRANDS), "last_four": f"{rng.randint(0, 9999):04d}"}
        elif source == "gift_card":
            method["balance"] = float(rng.randint(0, 300))
        methods[pid] = method
    return methods


def _users(rng: random.Random, ids: _Ids) -> dict[str, User]:
    users: dict[str, User] = {}
    names = rng.sample([(f, last) for f in FIRST_NAMES for last in LAST_NAMES], k=N_USERS)
    for first, last in names:
        user_id = f"{first.lower()}_{last.lower()}_{ids.digits(4)}"
        users[user_id] = User(
            user_id=user_id,
            name={"first_name": first, "last_name": last},
            address=random_address(rng),
            email=f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@example.com",
            payment_methods=_payment_methods(rng, ids),
            orders=[],
        )
    return users


def _order(rng: random.Random, ids: _Ids, user: User, products: dict[str, Product]) -> Order:
    items: list[OrderItem] = []
    for product in rng.sample(sorted(products.values(), key=lambda p: p["product_id"]), k=rng.randint(1, 4)):
        variant = rng.choice(sorted(product["variants"].values(), key=lambda v: v["item_id"]))
        items.append(
            OrderItem(
                name=product["name"],
                product_id=product["product_id"],
                item_id=variant["item_id"],
                price=variant["price"],
                options=dict(variant["options"]),
            )
        )
    total = cents(sum(i["price"] for i in items))
    methods = [
        m
        for m in user["payment_methods"].values()
        if m["source"] != "gift_card" or m.get("balance", 0.0) >= total
    ]
    method = rng.choice(methods or list(user["payment_methods"].values()))
    status = rng.choices(list(STATUS_WEIGHTS), weights=list(STATUS_WEIGHTS.values()))[0]
    order = Order(
        order_id=f"#W{ids.digits(7)}",
        user_id=user["user_id"],
        address=dict(user["address"]) if rng.random() < 0.85 else random_address(rng),  # type: ignore[typeddict-item]
        items=items,
        status=status,  # type: ignore[typeddict-item]
        fulfillments=[],
        payment_history=[{"transaction_type": "payment", "amount": total, "payment_method_id": method["id"]}],
    )
    if status in ("processed", "delivered"):
        order["fulfillments"] = [{"tracking_id": [ids.digits(12)], "item_ids": [i["item_id"] for i in items]}]
    if status == "cancelled":
        order["cancel_reason"] = rng.choice(["no longer needed", "ordered by mistake"])
        order["payment_history"].append(
            {"transaction_type": "refund", "amount": total, "payment_method_id": method["id"]}
        )
    return order


def generate_db(seed: int = DEFAULT_SEED) -> RetailDB:
    """The database for ``seed``: same seed, same database."""
    rng = random.Random(seed)
    ids = _Ids(rng)
    products = _products(rng, ids)
    users = _users(rng, ids)
    orders: dict[str, Order] = {}
    for user in users.values():
        for _ in range(rng.randint(1, 4)):
            order = _order(rng, ids, user, products)
            orders[order["order_id"]] = order
            user["orders"].append(order["order_id"])
    return RetailDB(users=users, orders=orders, products=products)


def write(out: Path, seed: int) -> tuple[Path, Path, int]:
    """Write ``db.json`` and ``tasks.jsonl`` under ``out``; returns the paths and the task count."""
    from .task_gen import generate_tasks  # the tasks need the database first

    out.mkdir(parents=True, exist_ok=True)
    db = generate_db(seed)
    tasks: list[dict[str, Any]] = generate_tasks(db, seed)
    db_path, tasks_path = out / "db.json", out / "tasks.jsonl"
    db_path.write_bytes(canonical_bytes(db))
    tasks_path.write_text("".join(json.dumps(t, sort_keys=True) + "\n" for t in tasks), encoding="utf-8")
    return db_path, tasks_path, len(tasks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="matrix_p2p_agents.tau.generate",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    args = parser.parse_args(argv)
    db_path, tasks_path, n = write(args.out, args.seed)
    print(f"wrote {db_path} and {tasks_path} ({n} tasks, seed {args.seed})")


if __name__ == "__main__":
    main()
