"""Cheap document quality rules in the spirit of Gopher (Rae et al. 2021) and C4. Pure.

``check(text, config)`` returns the first rule a document breaks, as a stable
reason string (``length<50 words``, ``boilerplate``, ``dup_lines>0.3`` ...),
or ``None`` when it passes, plus the signals it measured. Reasons carry the
configured threshold, never the measured value, so that a run summary can
count documents per reason; the values are in the signals.

Rules, in order (cheapest and most selective first):

- ``length<N words`` / ``length>N words``: whitespace word count bounds.
- ``boilerplate``: "lorem ipsum" anywhere, or more than ``max_boilerplate_frac``
  of the characters on lines holding a boilerplate phrase (cookie banners,
  "add to cart", "all rights reserved", in several languages).
- ``mean_word_length<N`` / ``mean_word_length>N``.
- ``symbol_ratio>N``: ``#`` and ellipses per word.
- ``alpha_words<N``: fraction of words with at least one letter.
- ``bullet_lines>N``, ``ellipsis_lines>N``, ``punct_lines<N``: line shapes.
- ``dup_lines>N``, ``dup_chars>N``: repeated lines and the characters in them.
- ``top_2gram>N`` ... ``top_4gram>N``: the most frequent n-gram's character share.
- ``dup_5gram>N`` ... ``dup_10gram>N``: characters covered by repeated n-grams.

Repetition rules read only the first ``repetition_window_chars`` characters:
their cost grows with the text while their verdict settles within a few
thousand words, and a 16 MB page must not hold a worker for seconds.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import msgspec

BOILERPLATE_PHRASES: tuple[str, ...] = (
    "cookie", "privacy policy", "terms of use", "terms of service", "all rights reserved",
    "add to cart", "add to basket", "free shipping", "subscribe to our newsletter",
    "sign up for our newsletter", "javascript", "log in", "sign in", "checkout",
    "datenschutz", "in den warenkorb", "alle rechte vorbehalten", "impressum",
    "ajouter au panier", "tous droits réservés", "politique de confidentialité",
    "añadir al carrito", "todos los derechos reservados", "política de privacidad",
    "aggiungi al carrello", "adicionar ao carrinho", "in winkelwagen", "dodaj do koszyka",
)
_BOILERPLATE_RE = re.compile("|".join(re.escape(p) for p in BOILERPLATE_PHRASES), re.IGNORECASE)
_BULLET_RE = re.compile(r"^\s*(?:[-*•‣◦▪·]|\d+[.)])\s")
_TERMINAL = (".", "!", "?", '"', "'", "”", "»", ":", ";", "。")
_ELLIPSIS = ("...", "…")
_WORD_RE = re.compile(r"\S+")


class QualityConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Thresholds; Gopher's published values where it has one."""

    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_ratio: float = 0.1
    min_alpha_words: float = 0.8
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    min_punct_lines: float = 0.12  # FineWeb's doc-level form of C4's line rule
    max_boilerplate_frac: float = 0.2
    max_dup_lines: float = 0.3
    max_dup_chars: float = 0.2
    max_top_ngram: tuple[float, float, float] = (0.20, 0.18, 0.16)  # n = 2, 3, 4
    max_dup_ngram: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)  # n = 5..10
    repetition_window_chars: int = 100_000


def config_from(options: dict[str, Any]) -> QualityConfig:
    """Thresholds from a role's ``options``; an unknown or mistyped key raises ``msgspec.ValidationError``."""
    return msgspec.convert(options, QualityConfig, strict=False)


def boilerplate_frac(lines: list[str], total_chars: int) -> float:
    """Share of the characters that sit on lines holding a boilerplate phrase."""
    if total_chars == 0:
        return 0.0
    hit = sum(len(ln) for ln in lines if _BOILERPLATE_RE.search(ln))
    return hit / total_chars


def line_shapes(lines: list[str]) -> tuple[float, float, float]:
    """(bullet, ellipsis, terminal-punctuation) fractions over non-empty lines."""
    if not lines:
        return 0.0, 0.0, 0.0
    n = len(lines)
    bullets = sum(1 for ln in lines if _BULLET_RE.match(ln))
    ellipsis = sum(1 for ln in lines if ln.rstrip().endswith(_ELLIPSIS))
    punct = sum(1 for ln in lines if ln.rstrip().endswith(_TERMINAL))
    return bullets / n, ellipsis / n, punct / n


def dup_lines(lines: list[str]) -> tuple[float, float]:
    """(fraction of lines that repeat an earlier one, share of characters in them)."""
    if not lines:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_n = dup_c = total_c = 0
    for ln in lines:
        key = ln.strip()
        total_c += len(key)
        if key in seen:
            dup_n += 1
            dup_c += len(key)
        else:
            seen.add(key)
    return dup_n / len(lines), (dup_c / total_c if total_c else 0.0)


def top_ngram_frac(words: list[str], n: int) -> float:
    """Characters of the most frequent n-gram (all its occurrences) over all word characters."""
    if len(words) < n:
        return 0.0
    counts = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    gram, count = counts.most_common(1)[0]
    if count < 2:
        return 0.0
    total = sum(len(w) for w in words)
    return count * sum(len(w) for w in gram) / total if total else 0.0


def dup_ngram_frac(words: list[str], n: int) -> float:
    """Characters of words covered by an n-gram seen earlier in the text (Gopher's rule)."""
    if len(words) < n:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(words)
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if gram in seen:
            for j in range(i, i + n):
                covered[j] = True
        else:
            seen.add(gram)
    total = sum(len(w) for w in words)
    dup = sum(len(w) for w, c in zip(words, covered, strict=True) if c)
    return dup / total if total else 0.0


DEFAULT = QualityConfig()


def check(text: str, config: QualityConfig = DEFAULT) -> tuple[str | None, dict[str, float]]:
    """The first rule ``text`` breaks (``None`` if none) and the signals measured so far."""
    c = config
    words = _WORD_RE.findall(text)
    n_words = len(words)
    signals: dict[str, float] = {"words": n_words}
    if n_words < c.min_words:
        return f"length<{c.min_words} words", signals
    if n_words > c.max_words:
        return f"length>{c.max_words} words", signals
    lines = [ln for ln in text.splitlines() if ln.strip()]
    bp = boilerplate_frac(lines, sum(len(ln) for ln in lines))
    signals["boilerplate_frac"] = round(bp, 4)
    if bp > c.max_boilerplate_frac or "lorem ipsum" in text[:c.repetition_window_chars].lower():
        return "boilerplate", signals
    mean_len = sum(len(w) for w in words) / n_words
    signals["mean_word_length"] = round(mean_len, 3)
    if mean_len < c.min_mean_word_length:
        return f"mean_word_length<{c.min_mean_word_length:g}", signals
    if mean_len > c.max_mean_word_length:
        return f"mean_word_length>{c.max_mean_word_length:g}", signals
    symbols = text.count("#") + text.count("...") + text.count("…")
    signals["symbol_ratio"] = round(symbols / n_words, 4)
    if symbols / n_words > c.max_symbol_ratio:
        return f"symbol_ratio>{c.max_symbol_ratio:g}", signals
    alpha = sum(1 for w in words if any(ch.isalpha() for ch in w)) / n_words
    signals["alpha_words"] = round(alpha, 4)
    if alpha < c.min_alpha_words:
        return f"alpha_words<{c.min_alpha_words:g}", signals
    bullets, ellipsis, punct = line_shapes(lines)
    signals.update(bullet_lines=round(bullets, 4), ellipsis_lines=round(ellipsis, 4),
                   punct_lines=round(punct, 4))
    if bullets > c.max_bullet_lines:
        return f"bullet_lines>{c.max_bullet_lines:g}", signals
    if ellipsis > c.max_ellipsis_lines:
        return f"ellipsis_lines>{c.max_ellipsis_lines:g}", signals
    if punct < c.min_punct_lines:
        return f"punct_lines<{c.min_punct_lines:g}", signals
    return _repetition(text, c, signals)


def _repetition(text: str, c: QualityConfig,
                signals: dict[str, float]) -> tuple[str | None, dict[str, float]]:
    window = text[:c.repetition_window_chars]
    lines = [ln for ln in window.splitlines() if ln.strip()]
    frac_lines, frac_chars = dup_lines(lines)
    signals.update(dup_lines=round(frac_lines, 4), dup_chars=round(frac_chars, 4))
    if frac_lines > c.max_dup_lines:
        return f"dup_lines>{c.max_dup_lines:g}", signals
    if frac_chars > c.max_dup_chars:
        return f"dup_chars>{c.max_dup_chars:g}", signals
    words = [w.lower() for w in _WORD_RE.findall(window)]
    for n, limit in zip((2, 3, 4), c.max_top_ngram, strict=True):
        frac = top_ngram_frac(words, n)
        signals[f"top_{n}gram"] = round(frac, 4)
        if frac > limit:
            return f"top_{n}gram>{limit:g}", signals
    for n, limit in zip(range(5, 11), c.max_dup_ngram, strict=True):
        frac = dup_ngram_frac(words, n)
        signals[f"dup_{n}gram"] = round(frac, 4)
        if frac > limit:
            return f"dup_{n}gram>{limit:g}", signals
    return None, signals
