"""The quality rules at their boundaries, the dedup key, and language ID on a few sentences."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from matrix_p2p_agents.nr import dedup, heuristics, langid
from matrix_p2p_agents.nr.heuristics import QualityConfig, check

SENTENCE = "The ball falls from rest and gains speed as it drops toward the ground below."  # 15 words


def prose(n_words: int) -> str:
    """``n_words`` distinct-looking words in sentences, one sentence per line."""
    words = [f"word{i}x" for i in range(n_words)]
    lines = [" ".join(words[i:i + 10]) + "." for i in range(0, n_words, 10)]
    return "\n".join(lines)


def test_length_bounds_are_inclusive() -> None:
    cfg = QualityConfig(min_words=50, max_words=60)
    assert check(prose(49), cfg)[0] == "length<50 words"
    assert check(prose(50), cfg)[0] is None
    assert check(prose(60), cfg)[0] is None
    assert check(prose(61), cfg)[0] == "length>60 words"


def test_mean_word_length_bounds() -> None:
    short = "\n".join(["a b c d e f g h i j."] * 1) + " " + " ".join(f"a{i % 10}" for i in range(60))
    reason, signals = check(short)
    assert reason == "mean_word_length<3"
    assert signals["mean_word_length"] < 3
    long_words = " ".join(f"{'x' * 11}{i:03d}" for i in range(60)) + "."
    assert check(long_words)[0] == "mean_word_length>10"


def test_symbol_ratio_boundary() -> None:
    base = prose(100)
    assert check(base + "\n" + "# " * 10 + "end.")[0] is None  # 10 symbols / 111 words
    assert check(base + "\n" + "# " * 12 + "end.")[0] == "symbol_ratio>0.1"


def test_alpha_words() -> None:
    numbers = " ".join(str(1000 + i) for i in range(30))
    assert check(prose(120) + "\n" + numbers + ".")[0] is None  # 120 of 150 have letters: 0.8
    assert check(prose(119) + "\n" + numbers + ".")[0] == "alpha_words<0.8"


def test_bullet_and_punctuation_lines() -> None:
    bullets = "\n".join(f"- item{i} costs little here." for i in range(20))
    assert check(bullets)[0] == "bullet_lines>0.9"
    no_punct = "\n".join(f"word{i} alpha beta gamma delta" for i in range(20))
    assert check(no_punct)[0] == "punct_lines<0.12"


def test_ellipsis_lines() -> None:
    text = "\n".join(f"line{i} goes on and then stops suddenly..." if i % 2 else f"line{i} ends well."
                     for i in range(20))
    assert check(text, QualityConfig(max_symbol_ratio=1.0))[0] == "ellipsis_lines>0.3"


def test_duplicate_lines_and_ngrams() -> None:
    assert check("\n".join([SENTENCE] * 8))[0] == "dup_lines>0.3"
    assert check(prose(200) + "\n" + " ".join([SENTENCE] * 3))[0] is None  # 8% repeated
    reason, signals = check(prose(200) + "\n" + " ".join([SENTENCE] * 8))
    assert reason == "dup_5gram>0.15"
    assert signals["dup_5gram"] > 0.15
    assert heuristics.dup_ngram_frac("a b c d e a b c d e".split(), 5) == 0.5
    assert heuristics.top_ngram_frac("x y x y".split(), 2) == 1.0
    assert heuristics.dup_lines(["a", "b", "a", "a"]) == (0.5, 0.5)


def test_boilerplate_share_of_characters() -> None:
    body = prose(200)
    banner = "We use cookies. Accept all cookies."
    assert check(body + "\n" + banner)[0] is None  # a banner line under a long article is fine
    shop = "\n".join(["Add to cart. Free shipping today."] * 3 + [f"Item {i} in blue." for i in range(20)])
    assert check(shop, QualityConfig(max_dup_lines=1, max_dup_chars=1))[0] == "boilerplate"
    assert check(body + "\nLorem ipsum dolor sit amet.")[0] == "boilerplate"


def test_repetition_reads_only_the_window() -> None:
    text = prose(300) + "\n" + "\n".join([SENTENCE] * 200)
    assert check(text)[0] is not None
    assert check(text, QualityConfig(repetition_window_chars=len(prose(300))))[0] is None


def test_config_from_options_rejects_typos() -> None:
    assert heuristics.config_from({"min_words": 10}).min_words == 10
    with pytest.raises(msgspec.ValidationError, match="unknown field `min_wrds`"):
        heuristics.config_from({"min_wrds": 10})


def test_dedup_key_folds_case_spacing_and_punctuation() -> None:
    a = "Suppose a ball falls, from 20 m.  It lands!"
    assert dedup.dedup_key(a) == dedup.dedup_key("SUPPOSE a ball falls , from 20 m. It lands")
    assert dedup.dedup_key(a) != dedup.dedup_key(a.replace("20", "21"))
    assert dedup.normalize("Ça  va, très-bien!") == "ça va très bien"


def test_local_seen_set_claims_once_per_key() -> None:
    seen = dedup.LocalSeenSet()

    async def go() -> list[str]:
        return [await seen.claim("k", "t1"), await seen.claim("k", "t2"), await seen.claim("k", "t1")]

    assert asyncio.run(go()) == ["t1", "t1", "t1"]
    assert dedup.duplicate_of("t1", "t1") is None
    assert dedup.duplicate_of("t1", "t2") == "t1"


@pytest.mark.parametrize(("text", "code"), [
    ("The derivative of the position with respect to time gives the velocity of the particle.", "en"),
    ("Die Ableitung der Position nach der Zeit ergibt die Geschwindigkeit des Teilchens.", "de"),
    ("La dérivée de la position par rapport au temps donne la vitesse de la particule.", "fr"),
    ("La derivada de la posición con respecto al tiempo da la velocidad de la partícula.", "es"),
    ("Pochodna położenia względem czasu daje prędkość cząstki, zatem przyspieszenie wynika.", "pl"),
])
def test_language_id(text: str, code: str) -> None:
    assert langid.detect(text) == code
    assert langid.detect(text, accuracy="high") == code


def test_language_id_edges() -> None:
    assert langid.detect("") is None
    menu = "Home | Shop | Blog\nDie Ableitung der Position nach der Zeit ergibt die Geschwindigkeit."
    assert langid.sample(menu).startswith("Die Ableitung")
    with pytest.raises(ValueError, match="unknown ISO 639-1 language code 'xx'"):
        langid.language_of("xx")
    with pytest.raises(ValueError, match="accuracy must be 'low' or 'high', got 'medium'"):
        langid.detector(("en", "de"), "medium")
