"""The pytest fixture: ``make_net(n)`` builds ``n`` hosts; all of them are torn down after
the test, however it ends. Where namespaces cannot be made, the test is skipped with one
line saying why. Import it into a test module: ``from tests.hosts.fixture import make_net``."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from types import FrameType

import pytest

from tests.hosts import Net, NetnsUnavailable, probe


@pytest.fixture
def make_net() -> Iterator[Callable[[int], Net]]:
    try:
        probe()
    except NetnsUnavailable as e:
        pytest.skip(str(e))
    nets: list[Net] = []

    # SIGTERM (``timeout``, a CI runner giving up) would end the process without
    # ``finally`` or ``atexit``: make it an interrupt, so the teardown below runs
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)

    def make(n: int) -> Net:
        net = Net(n)
        nets.append(net)
        return net

    try:
        yield make
    finally:
        for net in nets:
            net.close()
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
