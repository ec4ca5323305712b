"""The sandbox service: a warm pool of bubblewrap sandboxes leased to tasks over HTTP.

Server side: ``SandboxConfig`` + ``SandboxServer`` (or ``serve``); client
side: ``SandboxClient`` and its errors. See DESIGN.md, "Sandbox service" and
"Sandbox sessions".
"""

from matrix_p2p.sandbox.client import Execution, Lease, SandboxClient, SessionReply, SessionStarted
from matrix_p2p.sandbox.errors import (
    LeaseGone,
    NoSession,
    SandboxError,
    SandboxUnavailable,
    SessionDied,
    SessionError,
    SessionTimeout,
)
from matrix_p2p.sandbox.isolation import Limits
from matrix_p2p.sandbox.server import SandboxServer, serve, start_sandbox_server
from matrix_p2p.sandbox.service import SandboxConfig, SandboxService

__all__ = [
    "Execution",
    "Lease",
    "LeaseGone",
    "Limits",
    "NoSession",
    "SandboxClient",
    "SandboxConfig",
    "SandboxError",
    "SandboxServer",
    "SandboxService",
    "SandboxUnavailable",
    "SessionDied",
    "SessionError",
    "SessionReply",
    "SessionStarted",
    "SessionTimeout",
    "serve",
    "start_sandbox_server",
]
