"""Helpers shared by the bus tests."""

from __future__ import annotations

import re


def exact(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern for exactly this message."""
    return "^" + re.escape(message) + "$"
