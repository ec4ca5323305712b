"""The ``/metrics`` endpoint: prometheus_client's WSGI app on a daemon thread.

A thread and not the event loop: a scrape (rendering a few hundred samples)
must not delay hops, and a wedged event loop should still be scrapeable (its
in-flight gauge then shows it). Bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import socket
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from matrix_p2p.errors import ConfigError


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape on stderr would drown the structured logs


class MetricsServer:
    """A running endpoint. ``close()`` stops it (blocking up to half a second:
    from a coroutine, ``await asyncio.to_thread(server.close)``)."""

    def __init__(self, httpd: ThreadingWSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = str(httpd.server_address[0])
        self.port = int(httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(registry: CollectorRegistry, port: int = 0, host: str = "127.0.0.1") -> tuple[MetricsServer, int]:
    """Serve ``registry`` on ``host:port`` (0: a free port). Returns the server
    and the port it really listens on, for the caller to log."""

    class _Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    try:
        httpd = make_server(host, port, make_wsgi_app(registry), _Server, handler_class=_Quiet)
    except OSError as exc:
        raise ConfigError(f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    thread = threading.Thread(target=httpd.serve_forever, name=f"metrics-{httpd.server_port}",
                              daemon=True)
    thread.start()
    server = MetricsServer(httpd, thread)
    return server, server.port
