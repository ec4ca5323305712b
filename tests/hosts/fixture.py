"""The pytest fixture: ``make_net(n)`` builds ``n`` hosts; all of them are torn down after
the test, however it ends. Where namespaces cannot be made, the test is skipped with one
line saying why. Import it into a test module: ``from tests.hosts.fixture import make_net``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.hosts import Net, NetnsUnavailable, probe


@pytest.fixture
def make_net() -> Iterator[Callable[[int], Net]]:
    try:
        probe()
    except NetnsUnavailable as e:
        pytest.skip(str(e))
    nets: list[Net] = []

    def make(n: int) -> Net:
        net = Net(n)
        nets.append(net)
        return net

    try:
        yield make
    finally:
        for net in nets:
            net.close()
