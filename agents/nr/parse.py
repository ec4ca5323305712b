"""Parsers for the LLM roles' replies. Pure; a reply that cannot be used raises ``ParseError``.

The formats (the workflow's prompts ask for them, the simulator answers in them):

- filter: a line ``Decision: YES`` or ``Decision: NO`` (the last one counts);
- scorer: one line ``<Dimension>: N/10`` per configured dimension (N an integer
  or decimal from 0 to 10; the ``/10`` is optional);
- question writer: ``Question: ...`` then ``Reference answer: ...``, each may
  span lines; markdown bold around the labels is tolerated.

Each ``ParseError`` message says what was expected, so that a failed task's
error tells a person what the model got wrong.
"""

from __future__ import annotations

import re

# the lookahead skips an echo of the instruction itself ("Decision: YES or NO")
DECISION_RE = re.compile(r"^[\s*#>_-]*decision\s*\**\s*:\s*\**\s*(yes|no)\b(?!\s*(?:or|/)\s*(?:yes|no))",
                         re.IGNORECASE | re.MULTILINE)
QUESTION_RE = re.compile(r"^[\s*#>_-]*question\s*\**\s*:\**", re.IGNORECASE | re.MULTILINE)
ANSWER_RE = re.compile(r"^[\s*#>_-]*reference\s+answer\s*\**\s*:\**", re.IGNORECASE | re.MULTILINE)
# a question that points back at its source is not self-contained
DOC_REFERENCE_RE = re.compile(
    r"\b(?:the|this|above|given)\s+(?:text|passage|document|article|excerpt|page)\b", re.IGNORECASE
)
MIN_QUESTION_WORDS = 4


class ParseError(ValueError):
    """The reply does not have the expected form; the message says what is missing."""


def parse_decision(text: str) -> bool:
    """``True`` for ``Decision: YES``, ``False`` for ``Decision: NO`` (the last such line)."""
    found = DECISION_RE.findall(text)
    if not found:
        raise ParseError("no line 'Decision: YES' or 'Decision: NO' in the reply")
    return bool(found[-1].lower() == "yes")


def _score_re(name: str) -> re.Pattern[str]:
    label = r"\s+".join(re.escape(part) for part in name.split())
    return re.compile(
        rf"^[\s*#>_-]*{label}\s*\**\s*:\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10\b)?",
        re.IGNORECASE | re.MULTILINE,
    )


def parse_scores(text: str, dimensions: list[str]) -> dict[str, float]:
    """One score per dimension (0-10), keyed by the dimension's name as configured."""
    scores: dict[str, float] = {}
    for name in dimensions:
        found = _score_re(name).findall(text)
        if not found:
            raise ParseError(f"no score for {name!r} (expected a line '{name}: N/10')")
        value = float(found[-1])
        if not 0 <= value <= 10:
            raise ParseError(f"score for {name!r} is {found[-1]}, outside 0-10")
        scores[name] = value
    return scores


def parse_question(text: str) -> tuple[str, str]:
    """(question, reference answer) from a ``Question:`` / ``Reference answer:`` reply."""
    labels = list(QUESTION_RE.finditer(text))
    if not labels:
        raise ParseError("no 'Question:' line in the reply")
    # the last question label that an answer follows: a model may echo the format first
    pairs = [(q, a) for q in labels if (a := ANSWER_RE.search(text, q.end())) is not None]
    if not pairs:
        raise ParseError("no 'Reference answer:' line after the question")
    q, a = pairs[-1]
    question = " ".join(text[q.end():a.start()].split())
    answer = text[a.end():].strip()
    if len(question.split()) < MIN_QUESTION_WORDS:
        raise ParseError(f"question has fewer than {MIN_QUESTION_WORDS} words: {question!r}")
    if not answer:
        raise ParseError("empty reference answer")
    ref = DOC_REFERENCE_RE.search(question)
    if ref is not None:
        raise ParseError(f"question is not self-contained: it mentions {ref.group(0)!r}")
    return question, answer
