"""Generate the bundled NaturalReasoning corpus (web-like documents written for this project).

Deterministic: `python workflows/data/make_nr_corpus.py` rewrites
`nr_corpus.jsonl.zst` byte for byte (`--seed`, `--count` and `--out` change
it; `--count 200 --out /tmp/x.jsonl.zst` for a quick look). No download: the
text comes from the templates and word lists in `nr_corpus_en.py` and
`nr_corpus_web.py`.

Rows look like DCLM / FineWeb rows: `id`, `url`, `text`, `date`, plus `gen`,
the generator's own label of the document (`kind`, `lang`, `topic`, and
`dup_of` for copies), so that filters can be scored against it. Kinds:
reasoning and prose (English and seven other languages), shop, recipe,
cookie_wall, spam, stub, long (lecture notes over 100 KB), dup_exact (a copy
differing in case, spacing and punctuation) and dup_near (one word changed).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling text modules

import nr_corpus_en as en
import nr_corpus_web as web

DEFAULT_OUT = Path(__file__).resolve().parent / "nr_corpus.jsonl.zst"
DEFAULT_COUNT = 3000
TOPICS = tuple(en.REASONING)
OTHER_LANGS = ("de", "fr", "es", "it", "pt", "nl", "pl")
TLD = {"en": "com", "de": "de", "fr": "fr", "es": "es", "it": "it", "pt": "pt", "nl": "nl", "pl": "pl"}
SITE_WORDS = ("learn", "notes", "daily", "open", "bright", "study", "world", "hub", "corner",
              "journal", "lab", "forum", "press", "digest", "guide", "central")
# kind -> weight; the rest of the mix is near-duplicates of earlier rows
KINDS: tuple[tuple[str, int], ...] = (
    ("reasoning", 34), ("prose", 12), ("foreign", 20), ("shop", 6), ("recipe", 6),
    ("cookie_wall", 4), ("spam", 3), ("stub", 5), ("dup_exact", 5), ("dup_near", 4), ("long", 1),
)


def _site(rng: random.Random, lang: str) -> str:
    return f"{rng.choice(SITE_WORDS)}{rng.choice(SITE_WORDS)}.{TLD[lang]}"


def _slug(rng: random.Random) -> str:
    return "-".join(rng.choice(SITE_WORDS) for _ in range(3)) + f"-{rng.randint(1, 99999)}"


def _wrap(rng: random.Random, body: list[str], site: str, lang: str) -> str:
    """A page around the content: sometimes a menu, a cookie line and a footer, as crawled."""
    parts = []
    if rng.random() < 0.4:
        parts.append(web.nav_menu(rng))
    if rng.random() < 0.15:
        parts.append(web.cookie_banner(rng, lang))
    parts += body
    if rng.random() < 0.4:
        parts.append(web.footer(rng, site))
    return "\n\n".join(parts)


def reasoning_doc(rng: random.Random, site: str) -> tuple[str, str]:
    topic = rng.choice(TOPICS)
    title = f"{topic.capitalize()}: {en.pick('[worked examples|notes|a short explanation|Q&A]', rng)}"
    # distinct templates (one may come from another topic): a template twice in one page
    # repeats whole n-grams, which real pages do not and the repetition rules catch
    pool = [*en.REASONING[topic], rng.choice(en.REASONING[rng.choice(TOPICS)])]
    picked = dict.fromkeys(rng.sample(pool, rng.randint(1, len(pool))))
    paras = [f(rng) for f in picked]
    if rng.random() < 0.3:
        paras.append(en.prose_paragraph(rng, rng.randint(2, 4)))
    rng.shuffle(paras)
    return _wrap(rng, [title, *paras], site, "en"), topic


def long_doc(rng: random.Random, site: str) -> tuple[str, str]:
    """Lecture notes of 100-200 KB: many sections, each a worked example."""
    topic = rng.choice(TOPICS)
    target = rng.randint(100_000, 200_000)
    parts, size, section = [f"Lecture notes on {topic}"], 0, 1
    while size < target:
        heading = f"Section {section}. Example {rng.randint(1, 999)}"
        para = en.reasoning_paragraph(rng, rng.choice(TOPICS) if rng.random() < 0.3 else topic)
        parts += [heading, para]
        size += len(heading) + len(para) + 4
        section += 1
    return "\n\n".join(parts), topic


def exact_copy(rng: random.Random, text: str) -> str:
    """The same words: only case, spacing and punctuation differ (normalized hashes agree)."""
    out = text.upper() if rng.random() < 0.3 else text
    out = out.replace(". ", ".  ").replace(", ", " , ")
    return out + rng.choice(["", "\n", " !", "\n\n"])


def near_copy(rng: random.Random, text: str) -> str:
    """One word replaced: exact dedup keeps both (MinHash would not)."""
    words = text.split(" ")
    i = rng.randrange(len(words))
    words[i] = rng.choice(["indeed", "also", "really", "often"])
    return " ".join(words)


def make_doc(rng: random.Random, kind: str, earlier: list[dict[str, Any]]) -> tuple[str, dict[str, Any], str]:
    """(text, gen label, site) of one document of ``kind``."""
    lang, topic = "en", None
    if kind == "foreign":
        lang = rng.choice(OTHER_LANGS)
    site = _site(rng, lang)
    dup_of = None
    if kind == "reasoning":
        text, topic = reasoning_doc(rng, site)
    elif kind == "prose":
        body = en.prose_paragraphs(rng, rng.randint(3, 12))
        text = _wrap(rng, body, site, "en")
    elif kind == "foreign":
        reasoning = rng.random() < 0.5
        kind = "reasoning" if reasoning else "prose"
        body = [web.foreign_paragraph(rng, lang, reasoning) for _ in range(rng.randint(1, 4))]
        text = _wrap(rng, body, site, lang)
    elif kind == "shop":
        text = web.shop_page(rng, site)
    elif kind == "recipe":
        text = web.recipe_page(rng)
    elif kind == "cookie_wall":
        lang = rng.choice(("en", "de", "fr", "es"))
        text = "\n".join([web.nav_menu(rng), web.cookie_banner(rng, lang), web.nav_menu(rng),
                          web.cookie_banner(rng, lang), web.footer(rng, site)])
    elif kind == "spam":
        text = web.spam_page(rng)
    elif kind == "stub":
        text = web.stub_page(rng)
    elif kind == "long":
        text, topic = long_doc(rng, site)
    else:
        src = rng.choice([r for r in earlier if r["gen"]["kind"] in ("reasoning", "prose")])
        text = exact_copy(rng, src["text"]) if kind == "dup_exact" else near_copy(rng, src["text"])
        lang, topic, dup_of = src["gen"]["lang"], src["gen"].get("topic"), src["id"]
    gen: dict[str, Any] = {"kind": kind, "lang": lang}
    if topic:
        gen["topic"] = topic
    if dup_of:
        gen["dup_of"] = dup_of
    return text, gen, site


def generate(seed: int = 0, count: int = DEFAULT_COUNT) -> Iterator[dict[str, Any]]:
    """The corpus rows, in order; the same for the same seed and count."""
    rng = random.Random(seed)
    kinds, weights = zip(*KINDS, strict=True)
    earlier: list[dict[str, Any]] = []
    for i in range(count):
        kind = rng.choices(kinds, weights)[0] if i >= 20 else rng.choice(("reasoning", "prose"))
        if kind == "long" and rng.random() < 0.5:
            kind = "reasoning"  # keeps the long ones near 1% (about 15 MB raw in 3,000)
        text, gen, site = make_doc(rng, kind, earlier)
        date = f"20{rng.randint(17, 24)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        row = {"id": f"nr-{i:05d}", "url": f"https://www.{site}/{_slug(rng)}", "date": date,
               "text": text, "gen": gen}
        if gen["kind"] in ("reasoning", "prose"):
            earlier.append(row)
        yield row


def write(path: Path, rows: Iterator[dict[str, Any]]) -> tuple[int, int]:
    """Write rows as zstd-compressed JSON lines; returns (rows, raw bytes)."""
    import zstandard

    data = b"".join(json.dumps(r, ensure_ascii=False, sort_keys=True).encode() + b"\n" for r in rows)
    path.write_bytes(zstandard.ZstdCompressor(level=19).compress(data))
    return data.count(b"\n"), len(data)


def read(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a ``.jsonl.zst`` file, streamed."""
    import io

    import zstandard

    with path.open("rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        for line in io.TextIOWrapper(reader, encoding="utf-8"):
            if line.strip():
                yield json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=DEFAULT_COUNT)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    n, raw = write(args.out, generate(args.seed, args.count))
    print(f"{args.out}: {n} rows, {raw / 1e6:.1f} MB raw, {args.out.stat().st_size / 1e6:.2f} MB compressed")


if __name__ == "__main__":
    main()
