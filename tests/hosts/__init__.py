"""Several hosts on one machine: network namespaces on a bridge, for tests that cut networks.

``Net(n)`` makes a switch namespace holding a bridge and ``n`` host namespaces, each
joined to the bridge by a veth pair (``eth0`` inside the host, ``h<i>`` on the switch),
with the address ``10.77.0.<i+1>/24`` and its own loopback. Every name starts with a
prefix unique to the ``Net`` (pid and a counter), so parallel runs never collide, and
everything lives inside namespaces the ``Net`` created: deleting them deletes the
veths and the bridge with them; nothing is added to the machine's own namespace.

- ``host.popen(argv, log)`` runs a process inside the host (``ip netns exec``, which
  execs: the PID is the process's own); ``Net.close`` stops every one by PID (SIGTERM,
  then SIGKILL), then kills by PID whatever ``ip netns pids`` still finds inside a
  namespace, then deletes the namespaces. ``close`` runs on every path: the fixture's
  ``finally`` and ``atexit`` for a process that dies otherwise.
- ``net.cut(i)`` / ``net.heal(i)``: the host's switch port down / up. Frames from and to
  the host are dropped silently (no reset, no error): a real partition, where TCP only
  finds out by its own timers.
- ``net.block(i, j)`` / ``net.unblock(i, j)``: host ``i`` can no longer send to host ``j``
  (its neighbour entry for ``j`` points at a MAC nobody has), silently; everyone else
  still reaches ``j``.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

SUBNET = "10.77.0"
_ids = itertools.count()
NOBODY_MAC = "02:00:00:00:00:01"
ETC_NETNS = Path("/etc/netns")


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no ``ip``, a sandbox that forbids it)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def probe() -> None:
    """Raise ``NetnsUnavailable`` with one line saying why, unless a namespace can be made."""
    name = f"mxprobe{os.getpid()}"
    try:
        r = ip("netns", "add", name, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsUnavailable(f"network namespaces unavailable: {e}") from None
    if r.returncode != 0:
        raise NetnsUnavailable("network namespaces unavailable (needs root and iproute2): "
                               + (r.stderr.strip().splitlines() or ["?"])[0])
    ip("netns", "del", name, check=False)


class Host:
    def __init__(self, net: Net, index: int) -> None:
        self.net = net
        self.index = index
        self.ns = f"{net.prefix}-{index}"
        self.addr = f"{SUBNET}.{index + 1}"
        self.port = f"h{index}"  # its veth end on the switch

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def popen(self, argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside this host, output to ``log``; stopped by ``Net.close``."""
        with open(log, "ab") as fh:
            p = subprocess.Popen(self.argv(argv), stdout=fh, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        self.net.procs.append(p)
        return p

    def run(self, argv: Sequence[str], timeout: float = 60, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=cwd, stdin=subprocess.DEVNULL)

    def __repr__(self) -> str:
        return f"Host({self.index}, {self.addr}, ns={self.ns})"


class Net:
    def __init__(self, n: int, prefix: str | None = None) -> None:
        self.prefix = prefix or f"mxh{os.getpid()}x{next(_ids)}"
        self.switch = f"{self.prefix}-sw"
        self.hosts = [Host(self, i) for i in range(n)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.made: list[str] = []  # namespaces created, deleted by close()
        self.etc_dirs: list[Path] = []  # /etc/netns/<ns> made by name_hosts()
        self.closed = False
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _add_ns(self, name: str) -> None:
        ip("netns", "add", name)
        self.made.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_ns(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for h in self.hosts:
            self._add_ns(h.ns)
            ip("-n", self.switch, "link", "add", h.port, "type", "veth",
               "peer", "name", "eth0", "netns", h.ns)
            ip("-n", self.switch, "link", "set", h.port, "master", "br0")
            ip("-n", self.switch, "link", "set", h.port, "up")
            ip("-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", "eth0")
            ip("-n", h.ns, "link", "set", "eth0", "up")

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def name_hosts(self, names: dict[str, int]) -> None:
        """Host names every host resolves (``/etc/netns/<ns>/hosts``, which ``ip netns
        exec`` mounts over ``/etc/hosts``): ``{"nats-1": 0, ...}``. Removed by ``close``."""
        text = "127.0.0.1 localhost\n" + "".join(
            f"{self.hosts[i].addr} {name}\n" for name, i in names.items())
        for h in self.hosts:
            d = ETC_NETNS / h.ns
            d.mkdir(parents=True, exist_ok=True)
            self.etc_dirs.append(d)
            (d / "hosts").write_text(text)

    # ------------------------------------------------------------ faults
    def cut(self, i: int) -> None:
        ip("-n", self.switch, "link", "set", self.hosts[i].port, "down")

    def heal(self, i: int) -> None:
        ip("-n", self.switch, "link", "set", self.hosts[i].port, "up")

    def block(self, i: int, j: int) -> None:
        ip("-n", self.hosts[i].ns, "neigh", "replace", self.hosts[j].addr, "lladdr", NOBODY_MAC,
           "dev", "eth0", "nud", "permanent")

    def unblock(self, i: int, j: int) -> None:
        ip("-n", self.hosts[i].ns, "neigh", "del", self.hosts[j].addr, "dev", "eth0", check=False)

    def can_reach(self, i: int, j: int, timeout: float = 1.0) -> bool:
        """Host ``i`` gets an answer from host ``j`` (a TCP connect to a closed port: a
        refusal is an answer; silence until ``timeout`` is a partition)."""
        code = (f"import socket; s = socket.socket(); s.settimeout({timeout}); "
                f"print(s.connect_ex(('{self.hosts[j].addr}', 9)))")
        r = self.hosts[i].run([sys.executable, "-c", code], timeout=timeout + 30)
        return r.stdout.strip() in ("0", "111")

    # ------------------------------------------------------------ teardown
    def pids_inside(self) -> set[int]:
        out: set[int] = set()
        for ns in self.made:
            r = ip("netns", "pids", ns, check=False)
            out |= {int(x) for x in r.stdout.split() if x.isdigit()}
        return out

    def close(self) -> None:
        """Stop every process by PID, then delete the namespaces (veths and bridge go
        with them). Idempotent; never raises (it runs from ``finally`` and ``atexit``)."""
        if self.closed:
            return
        self.closed = True
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        # anything a process started inside a host that outlived it (by PID, never by name)
        for pid in self.pids_inside():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for ns in reversed(self.made):
            r = ip("netns", "del", ns, check=False)
            if r.returncode != 0:
                print(f"tests.hosts: could not delete namespace {ns}: {r.stderr.strip()}",
                      file=sys.stderr)
        self.made.clear()
        for d in self.etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
        atexit.unregister(self.close)

    def __enter__(self) -> Net:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def namespaces_with(prefix: str) -> list[str]:
    """The namespaces whose name starts with ``prefix`` (for tests of the teardown)."""
    r = ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.startswith(prefix)]
