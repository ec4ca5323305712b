"""Serving an aiohttp application on 127.0.0.1 (or a given host): the one way our
services (the vLLM simulator, the sandbox service) bind and start."""

from __future__ import annotations

import socket

from aiohttp import web


async def serve_app(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``host:port`` (0 picks a free port). Returns the runner (``cleanup()``
    stops it) and the port it got.

    ``handler_cancellation``: a client that goes away cancels its handler (the simulator
    aborts the sequence, as vLLM does; the sandbox kills the execution's process group).
    """
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
        await web.SockSite(runner, sock, backlog=1024).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return runner, int(sock.getsockname()[1])
