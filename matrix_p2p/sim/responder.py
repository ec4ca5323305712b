"""The text a simulated model answers. Pure: a function of the prompt and an RNG.

The bundled workflows' agents parse these answers, so the protocol is fixed:

1. Judge mode, when the text contains ``Verdict: AGREE or DISAGREE``: take every
   ``Answer: X`` (X a capital letter) in the text. If the last two letters are
   equal, ``Verdict: AGREE`` / ``Final: X``; otherwise ``Verdict: DISAGREE`` /
   ``Final: <last letter>``; with no letter at all ``Final: A``.
2. Choice mode, else when the text contains ``Answer: <letter>``: the options are
   the letters of lines like ``B) ...`` or ``B. ...`` (default A-D). With a
   previous ``Answer: X`` in the text, repeat the most recent one with
   probability ``agree_prob``, else pick a uniformly random option. The last
   line is ``Answer: X``, present even when ``max_tokens`` caps the output.
3. Otherwise: filler words.

The NaturalReasoning workflow's prompts are answered first, by ``nr.py`` (its
own protocol is in that module's docstring).

Filler words fill the answer up to the sampled length (one word = one token),
before the final lines, so that the answer line is never cut off.
"""

from __future__ import annotations

import random
import re

from matrix_p2p.sim.nr import respond_nr

JUDGE_MARKER = "Verdict: AGREE or DISAGREE"
CHOICE_MARKER = "Answer: <letter>"
ANSWER_RE = re.compile(r"Answer:\s*([A-Z])\b")
OPTION_RE = re.compile(r"^\s*([A-Z])[).]\s+", re.MULTILINE)
DEFAULT_OPTIONS = ("A", "B", "C", "D")

_VOCAB = (
    "the",
    "answer",
    "follows",
    "from",
    "careful",
    "reasoning",
    "about",
    "each",
    "option",
    "we",
    "consider",
    "evidence",
    "and",
    "compare",
    "it",
    "with",
    "known",
    "facts",
    "so",
    "this",
    "suggests",
    "that",
    "one",
    "choice",
    "is",
    "more",
    "likely",
    "than",
    "others",
    "given",
    "question",
    "step",
    "by",
    "first",
    "then",
    "therefore",
    "because",
    "data",
)


def filler(n: int, rng: random.Random) -> str:
    """``n`` deterministic words (``n`` <= 0 gives the empty string)."""
    return " ".join(rng.choices(_VOCAB, k=n)) if n > 0 else ""


def _with_tail(tail: str, n_tokens: int, rng: random.Random) -> str:
    body = filler(n_tokens - len(tail.split()), rng)
    return f"{body}\n{tail}" if body else tail


def judge_tail(text: str) -> str:
    letters: list[str] = ANSWER_RE.findall(text)
    if not letters:
        return "Verdict: DISAGREE\nFinal: A"
    if len(letters) >= 2 and letters[-1] == letters[-2]:
        return f"Verdict: AGREE\nFinal: {letters[-1]}"
    return f"Verdict: DISAGREE\nFinal: {letters[-1]}"


def choose(text: str, rng: random.Random, agree_prob: float) -> str:
    options: list[str] = list(dict.fromkeys(OPTION_RE.findall(text))) or list(DEFAULT_OPTIONS)
    previous: list[str] = ANSWER_RE.findall(text)
    # Always draw the same number of values, whatever the branch: keeps the
    # filler that follows independent of which branch was taken.
    agree_draw = rng.random()
    pick = rng.choice(options)
    if previous and agree_draw < agree_prob:
        return previous[-1]
    return pick


def respond(text: str, n_tokens: int, rng: random.Random, agree_prob: float = 0.6) -> str:
    """The answer to a prompt ``text`` with about ``n_tokens`` words (see module doc)."""
    if (nr := respond_nr(text, n_tokens, rng)) is not None:
        return nr
    if JUDGE_MARKER in text:
        return _with_tail(judge_tail(text), n_tokens, rng)
    if CHOICE_MARKER in text:
        return _with_tail(f"Answer: {choose(text, rng, agree_prob)}", n_tokens, rng)
    return filler(max(n_tokens, 1), rng)
