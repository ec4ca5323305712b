"""A JetStream cluster and a fleet of ``python -m matrix_p2p`` processes spread over ``Net`` hosts.

One ``nats-server`` per broker host (client port 4222, routes on 6222, monitoring on
8222, all inside the host's namespace), R3 streams. Servers ping their clients and
routes every second, so a silent partition is noticed in seconds, as a test needs
(a deployment picks its own; infra/cluster/ shows one).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from matrix_p2p.broker import find_nats_server
from tests.chaos.harness import ROOT, child_env
from tests.hosts import Host, Net

CLIENT_PORT = 4222
ROUTE_PORT = 6222
HTTP_PORT = 8222


def node_config(name: str, host: Host, peers: list[Host], store: Path, cluster: str = "mxhosts",
                ping: str = "1s") -> str:
    routes = ", ".join(f"nats-route://{p.addr}:{ROUTE_PORT}" for p in peers if p is not host)
    return "\n".join([
        f"server_name: {name}",
        f"listen: {host.addr}:{CLIENT_PORT}",
        f"http: {host.addr}:{HTTP_PORT}",
        f'ping_interval: "{ping}"',
        "ping_max: 3",
        "jetstream {",
        f'  store_dir: "{store}"',
        "}",
        "cluster {",
        f"  name: {cluster}",
        f"  listen: {host.addr}:{ROUTE_PORT}",
        f"  routes: [{routes}]",
        "}",
    ]) + "\n"


class Node:
    """One broker on one host; ``kill9`` and ``start`` again keep its store."""

    def __init__(self, name: str, host: Host, peers: list[Host], tmp: Path) -> None:
        self.name = name
        self.host = host
        self.conf = tmp / f"{name}.conf"
        self.log = tmp / f"{name}.log"
        self.conf.write_text(node_config(name, host, peers, tmp / f"{name}-js"))
        self.p: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host.addr}:{CLIENT_PORT}"

    def start(self) -> None:
        self.p = self.host.popen([find_nats_server(), "-c", str(self.conf)], self.log)

    def kill9(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.kill()
            self.p.wait(timeout=10)


class MxProc:
    """``python -m matrix_p2p ARGS`` inside a host."""

    def __init__(self, host: Host, args: list[str], log: Path) -> None:
        self.host = host
        self.args = args
        self.log = log
        self.p = host.popen([sys.executable, "-m", "matrix_p2p", *args], log, env=child_env(),
                            cwd=ROOT)

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill9(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode

    def wait(self, timeout: float) -> int:
        return self.p.wait(timeout=timeout)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Cluster:
    def __init__(self, net: Net, hosts: list[int], tmp: Path) -> None:
        self.net = net
        peers = [net[i] for i in hosts]
        self.nodes = [Node(f"n{i}", net[i], peers, tmp) for i in hosts]
        self.tmp = tmp

    @property
    def urls(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self) -> None:
        for n in self.nodes:
            n.start()

    def mx(self, host: Host, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return host.run([sys.executable, "-m", "matrix_p2p", *args], timeout=timeout,
                        env=child_env(), cwd=ROOT)

    def mx_retry(self, host: Host, *args: str, within: float = 90
                 ) -> subprocess.CompletedProcess[str]:
        """A command retried until it succeeds (a new cluster elects its meta leader first;
        a healed one re-elects), bounded."""
        deadline = time.monotonic() + within
        while True:
            r = self.mx(host, *args)
            if r.returncode == 0 or time.monotonic() > deadline:
                return r

    def jsz(self, node: Node, timeout: float = 3.0) -> dict[str, Any] | None:
        """The node's /jsz with stream details (None when it does not answer)."""
        url = f"http://{node.host.addr}:{HTTP_PORT}/jsz?streams=true"
        code = (f"import urllib.request,sys; "
                f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout={timeout}).read().decode())")
        try:
            r = node.host.run([sys.executable, "-c", code], timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            return None
        if r.returncode != 0:
            return None
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def stream_leader(self, stream: str) -> Node | None:
        """The node that leads ``stream``, as the live nodes report it."""
        for node in self.nodes:
            if node.p is None or node.p.poll() is not None:
                continue
            z = self.jsz(node)
            for acc in (z or {}).get("account_details") or []:
                for st in acc.get("stream_detail") or []:
                    if st.get("name") == stream:
                        leader = (st.get("cluster") or {}).get("leader")
                        for n in self.nodes:
                            if n.name == leader:
                                return n
        return None


def status(cluster: Cluster, host: Host, workflow: Path) -> dict[str, Any]:
    r = cluster.mx_retry(host, "status", str(workflow), "--nats", cluster.urls, "--json",
                         "--sample", "0", within=60)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out
