"""The hosts harness itself: partitions do cut, and teardown leaves nothing on any path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.chaos.harness import ROOT, child_env, wait_for
from tests.hosts import Net, namespaces_with
from tests.hosts.fixture import make_net  # noqa: F401 (the fixture)

pytestmark = pytest.mark.netns


def _gone(pid: int) -> bool:
    """No such process, or only a zombie left for its parent to reap."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_cut_heal_and_block(make_net) -> None:  # noqa: F811
    net = make_net(3)
    assert net.can_reach(0, 1) and net.can_reach(1, 2)
    net.cut(1)
    assert not net.can_reach(0, 1) and not net.can_reach(1, 2)
    assert net.can_reach(0, 2)  # the others still talk
    net.heal(1)
    assert net.can_reach(0, 1) and net.can_reach(1, 0)
    net.block(0, 2)  # one path only
    assert not net.can_reach(0, 2)
    assert net.can_reach(1, 2) and net.can_reach(0, 1)
    net.unblock(0, 2)
    assert net.can_reach(0, 2)


def test_close_kills_grandchildren_and_deletes_everything(tmp_path: Path) -> None:
    net = Net(2)
    marker = tmp_path / "grandchild.pid"
    # the child leaves a grandchild behind when it is stopped: close() must find it by
    # the namespace's pids and kill it by PID
    child = net[1].popen(["sh", "-c", f"sleep 300 & echo $! > {marker}; wait"], tmp_path / "sh.log")
    wait_for(lambda: marker.exists() and marker.read_text().strip() != "", 10, "the grandchild")
    grandchild = int(marker.read_text())
    assert set(namespaces_with(net.prefix)) == {net.switch, net[0].ns, net[1].ns}
    net.close()
    assert child.poll() is not None
    wait_for(lambda: _gone(grandchild), 10, f"grandchild {grandchild} gone")
    assert namespaces_with(net.prefix) == []
    net.close()  # idempotent


INNER_TEST = """
import os
from pathlib import Path
from tests.hosts.fixture import make_net  # noqa: F401

def test_fails_midway(make_net, tmp_path):
    net = make_net(3)
    p = net[2].popen(["sleep", "300"], tmp_path / "s.log")
    Path(os.environ["MX_REPORT"]).write_text(f"{net.prefix} {p.pid}")
    assert False, "a test failing with hosts and processes up"
"""

INNER_SIGTERM = """
import os, signal
from pathlib import Path
from tests.hosts.fixture import make_net  # noqa: F401

def test_killed_midway(make_net, tmp_path):
    net = make_net(2)
    p = net[1].popen(["sleep", "300"], tmp_path / "s.log")
    Path(os.environ["MX_REPORT"]).write_text(f"{net.prefix} {p.pid}")
    os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` does to a run past its limit
    p.wait()
"""

INNER_SCRIPT = """
import os
from pathlib import Path
from tests.hosts import Net
net = Net(2)
p = net[0].popen(["sleep", "300"], Path(os.environ["MX_REPORT"] + ".log"))
Path(os.environ["MX_REPORT"]).write_text(f"{net.prefix} {p.pid}")
raise SystemExit("an uncaught error, no finally: atexit tears down")
"""


@pytest.mark.parametrize("how", ["pytest-failure", "sigterm", "atexit"])
def test_a_run_that_fails_midway_leaves_nothing(tmp_path: Path, how: str) -> None:
    report = tmp_path / "report"
    env = child_env(MX_REPORT=str(report))
    if how in ("pytest-failure", "sigterm"):
        inner = tmp_path / "test_inner.py"
        inner.write_text(textwrap.dedent(INNER_TEST if how == "pytest-failure" else INNER_SIGTERM))
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
                "addopts=", str(inner)]
    else:
        argv = [sys.executable, "-c", INNER_SCRIPT]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0, r.stdout + r.stderr  # it did fail
    prefix, pid = report.read_text().split()
    assert namespaces_with(prefix) == [], r.stdout + r.stderr
    wait_for(lambda: _gone(int(pid)), 10, f"process {pid} gone")
    assert os.getpid() != int(pid)
