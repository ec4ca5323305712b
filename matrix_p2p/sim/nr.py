"""Simulated answers to the NaturalReasoning workflow's prompts. Pure: prompt text and an RNG in.

``respond_nr(text, n_tokens, rng)`` returns ``None`` for a prompt that is not
one of this workflow's, else the answer. The protocol (the workflow's prompts
carry the markers; ``matrix_p2p_agents.nr.parse`` reads the answers):

1. Filter, when the text contains ``Decision: YES or NO``: the last line is
   ``Decision: YES`` with probability ``p_yes``, else ``Decision: NO``.
2. Scorer, when the text has lines of the form ``<Name>: N/10``: one line
   ``<Name>: k/10`` per such name, in order, each k drawn around a mean that
   rises with the document's reasoning density (integer, clipped to 0-10).
3. Question writer, when the text contains ``Reference answer: <answer>``:
   ``Question: <words>?`` then ``Reference answer: <words>``, the sampled
   length split about one third to two thirds. With probability
   ``GARBLE_P`` the labels are left out, so that the agents' re-ask path runs.

The reasoning density of a prompt is the number of reasoning cue words
(``therefore``, ``because``, ``daher``, ``donc``, ``por lo tanto`` ...) per 100
words, and ``p_yes = 0.1 + 0.8 * min(1, density / 2)``: documents with
arguments in them pass, lists and shop pages mostly do not, and the same
request always gets the same answer (the RNG is seeded per request).

Lengths: ``n_tokens`` is the engine's long-tailed draw (``sampling.py``);
filler words make up the length before the final lines, which are always
present, so a ``max_tokens`` cap never cuts off what the parser needs.
"""

from __future__ import annotations

import random
import re

FILTER_MARKER = "Decision: YES or NO"
QUESTION_MARKER = "Reference answer: <answer>"
SCORE_LINE_RE = re.compile(r"^[\s*-]*([A-Za-z][A-Za-z -]{0,40}?):\s*N/10\s*$", re.MULTILINE)
GARBLE_P = 0.03
_CUES = (
    "therefore", "because", "hence", "thus", "it follows", "implies", "since", "suppose",
    "consider", "so the", "consequently", "which means", "if we",
    "daher", "deshalb", "weil", "folgt", "donc", "parce que", "il s'ensuit", "comme",
    "por lo tanto", "porque", "se deduce", "quindi", "poiché", "portanto", "omdat", "zatem",
    "ponieważ",
)
_CUE_RE = re.compile(r"\b(?:" + "|".join(re.escape(c) for c in _CUES) + r")\b", re.IGNORECASE)
_Q_WORDS = ("why", "how", "what", "which", "when")
# responder.py imports this module, so the filler is our own (no import cycle)
_VOCAB = ("the", "argument", "uses", "a", "worked", "example", "with", "numbers", "and", "each",
          "step", "follows", "from", "one", "before", "so", "result", "is", "checked", "against",
          "units", "rate", "time", "value", "of", "given", "cost", "force", "claim", "evidence")


def filler(n: int, rng: random.Random) -> str:
    """``n`` deterministic words (``n`` <= 0 gives the empty string)."""
    return " ".join(rng.choices(_VOCAB, k=n)) if n > 0 else ""


def reasoning_density(text: str) -> float:
    """Reasoning cue words per 100 words of ``text``."""
    words = len(text.split())
    return 100.0 * len(_CUE_RE.findall(text)) / words if words else 0.0


def p_yes(text: str) -> float:
    return 0.1 + 0.8 * min(1.0, reasoning_density(text) / 2.0)


def _body(n_tokens: int, tail: str, rng: random.Random) -> str:
    body = filler(n_tokens - len(tail.split()), rng)
    return f"{body}\n{tail}" if body else tail


def decide(text: str, n_tokens: int, rng: random.Random) -> str:
    yes = rng.random() < p_yes(text)
    return _body(n_tokens, f"Decision: {'YES' if yes else 'NO'}", rng)


def score(text: str, names: list[str], n_tokens: int, rng: random.Random) -> str:
    mean = 2.0 + 7.0 * min(1.0, reasoning_density(text) / 2.0)
    lines = [f"{name}: {min(10, max(0, round(rng.gauss(mean, 1.5))))}/10" for name in names]
    return _body(n_tokens, "\n".join(lines), rng)


def question(n_tokens: int, rng: random.Random) -> str:
    n = max(n_tokens, 12)
    n_q = max(5, n // 3)
    q = f"{rng.choice(_Q_WORDS).capitalize()} {filler(n_q - 1, rng)}?"
    a = filler(max(3, n - n_q), rng)
    if rng.random() < GARBLE_P:
        return f"{q}\n{a}"  # no labels: unparseable on purpose
    return f"Question: {q}\nReference answer: {a}"


def respond_nr(text: str, n_tokens: int, rng: random.Random) -> str | None:
    """The answer to one of this workflow's prompts, or ``None`` for any other prompt."""
    if FILTER_MARKER in text:
        return decide(text, n_tokens, rng)
    if QUESTION_MARKER in text:
        return question(n_tokens, rng)
    names = list(dict.fromkeys(m.strip() for m in SCORE_LINE_RE.findall(text)))
    if names:
        return score(text, names, n_tokens, rng)
    return None
