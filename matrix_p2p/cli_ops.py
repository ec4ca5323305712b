"""Operations subcommands (dead letters, replay): parsers and handlers.

``add_parsers`` is called by ``matrix_p2p.cli.build_parser`` with the
subparsers object and the shared flag helpers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_parsers(
    sub: Any,
    add_nats: Callable[..., None],
    add_common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register operations subcommands. (Filled in by the durability work.)"""
