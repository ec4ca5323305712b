"""Generate the bundled Coral question set (multiple choice, written for this project).

Deterministic: `python workflows/data/make_coral_questions.py` rewrites
`coral_questions.jsonl` byte for byte. Each row: id, question, choices
(letter -> text), answer (letter), topic.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

LETTERS = "ABCD"


def _mc(rng: random.Random, correct: str, wrong: list[str]) -> tuple[dict[str, str], str]:
    options = list(dict.fromkeys([correct, *wrong]))[:4]
    rng.shuffle(options)
    return {LETTERS[i]: o for i, o in enumerate(options)}, LETTERS[options.index(correct)]


def _near(rng: random.Random, value: int, spread: int = 10) -> list[str]:
    out: set[int] = set()
    while len(out) < 3:
        d = rng.randint(-spread, spread)
        if d:
            out.add(value + d)
    return [str(v) for v in out]


def arithmetic(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b = rng.randint(12, 99), rng.randint(12, 99)
    op = rng.choice(["+", "-", "*"])
    v = a + b if op == "+" else a - b if op == "-" else a * b
    return f"What is {a} {op} {b}?", str(v), _near(rng, v, 12 if op != "*" else 40)


def remainder(rng: random.Random) -> tuple[str, str, list[str]]:
    a, m = rng.randint(100, 999), rng.randint(5, 13)
    v = a % m
    wrong = [str(x) for x in rng.sample([x for x in range(m) if x != v], 3)]
    return f"What is the remainder when {a} is divided by {m}?", str(v), wrong


def units(rng: random.Random) -> tuple[str, str, list[str]]:
    kind = rng.choice(["km", "h", "kg"])
    n = rng.randint(2, 40)
    if kind == "km":
        return f"How many metres are in {n} kilometres?", str(n * 1000), [
            str(n * 100), str(n * 10000), str(n * 1000 + 100)]
    if kind == "h":
        return f"How many minutes are in {n} hours?", str(n * 60), [
            str(n * 100), str(n * 30), str(n * 60 + 60)]
    return f"How many grams are in {n} kilograms?", str(n * 1000), [
        str(n * 100), str(n * 10), str(n * 1024)]


def sequence(rng: random.Random) -> tuple[str, str, list[str]]:
    start, step = rng.randint(1, 20), rng.randint(2, 9)
    seq = [start + i * step for i in range(5)]
    v = start + 5 * step
    return (f"What number comes next: {', '.join(map(str, seq))}, ...?", str(v),
            [str(v + step), str(v - 1), str(v + 1)])


def geometry(rng: random.Random) -> tuple[str, str, list[str]]:
    w, h = rng.randint(3, 25), rng.randint(3, 25)
    if rng.random() < 0.5:
        return f"What is the area of a rectangle {w} by {h}?", str(w * h), [
            str(2 * (w + h)), str(w * h + w), str(w * h - h)]
    return f"What is the perimeter of a rectangle {w} by {h}?", str(2 * (w + h)), [
        str(w * h), str(w + h), str(2 * (w + h) + 2)]


def primes(rng: random.Random) -> tuple[str, str, list[str]]:
    def is_prime(n: int) -> bool:
        return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))
    ps = [n for n in range(20, 200) if is_prime(n)]
    comps = [n for n in range(20, 200) if not is_prime(n) and n % 2 and n % 5]
    p = rng.choice(ps)
    return "Which of these numbers is prime?", str(p), [str(c) for c in rng.sample(comps, 3)]


def logic(rng: random.Random) -> tuple[str, str, list[str]]:
    names = rng.sample(["Ana", "Bo", "Cy", "Dee", "Eli", "Fay"], 3)
    a, b, c = names
    return (f"{a} is taller than {b}, and {b} is taller than {c}. Who is the shortest?", c,
            [a, b, "Cannot be determined"])


def calendar(rng: random.Random) -> tuple[str, str, list[str]]:
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    d, n = rng.randrange(7), rng.randint(2, 30)
    v = days[(d + n) % 7]
    wrong = rng.sample([x for x in days if x != v], 3)
    return f"If today is {days[d]}, what day of the week is it in {n} days?", v, wrong


def fractions(rng: random.Random) -> tuple[str, str, list[str]]:
    p, whole = rng.choice([10, 20, 25, 40, 50, 75]), rng.choice([40, 80, 120, 200, 360, 480])
    v = whole * p // 100
    return f"What is {p}% of {whole}?", str(v), _near(rng, v, max(4, v // 4))


TOPICS: dict[str, Callable[[random.Random], tuple[str, str, list[str]]]] = {
    "arithmetic": arithmetic, "remainder": remainder, "units": units,
    "sequence": sequence, "geometry": geometry, "primes": primes,
    "logic": logic, "calendar": calendar, "percent": fractions,
}


def main(n: int = 300, seed: int = 20261123) -> None:
    rng = random.Random(seed)
    out = Path(__file__).with_name("coral_questions.jsonl")
    seen: set[str] = set()
    rows = []
    topics = list(TOPICS)
    while len(rows) < n:
        topic = topics[len(rows) % len(topics)]
        question, correct, wrong = TOPICS[topic](rng)
        choices, answer = _mc(rng, correct, wrong)
        key = question + "|" + "|".join(choices.values())
        if key in seen or len(choices) < 4:
            continue
        seen.add(key)
        rows.append({"id": f"q{len(rows):04d}", "topic": topic, "question": question,
                     "choices": choices, "answer": answer})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} questions to {out}")


if __name__ == "__main__":
    main()
