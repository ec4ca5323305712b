"""matrix_p2p: peer-to-peer multi-agent synthetic data generation over NATS JetStream.

The public API for agent authors and embedders; see README.md for the CLI.
"""

import logging

from matrix_p2p.agent import Agent, Context
from matrix_p2p.api import (
    RunAborted,
    Submission,
    collect,
    results,
    run,
    run_async,
    serve,
    submit,
)
from matrix_p2p.envelope import Task, Turn, Usage
from matrix_p2p.errors import BusError, ConfigError, FailTask, MatrixError, RetryLater
from matrix_p2p.runtime.local_run import RunResult
from matrix_p2p.runtime.routing import Done, Failed, Forward, Retry
from matrix_p2p.workflow.spec import WorkflowSpec

__all__ = [
    "Agent", "BusError", "ConfigError", "Context", "Done", "FailTask", "Failed", "Forward",
    "MatrixError", "Retry", "RetryLater", "RunAborted", "RunResult", "Submission", "Task",
    "Turn", "Usage", "WorkflowSpec", "collect", "results", "run", "run_async", "serve", "submit",
]
__version__ = "0.1.0"

# a library prints nothing unless the application configures logging (logs.library)
logging.getLogger("matrix_p2p").addHandler(logging.NullHandler())
