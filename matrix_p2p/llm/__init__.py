"""LLM fleet client: OpenAI-compatible endpoints behind adaptive concurrency.

Modules, in data-path order: ``config`` (settings), ``client`` (``LLMClient``:
routing, retries and the only HTTP), ``admission`` (a slot on an endpoint, or a
fair wait for one), ``endpoints`` (the endpoint set and its file), ``pool``
(one endpoint's state and least-outstanding selection), ``limiter`` (AIMD
limit), ``breaker`` (ejection), ``outcomes`` (an answer's result and signals),
``wire`` (the OpenAI JSON format), ``fleet`` and ``fleet_sync`` (state shared
between workers), ``types`` (the results agents get back), ``tools`` (tool
calls on the wire and in the conversation), ``probe`` (at start: which
endpoints answer, and which models they serve). Replicas that announce
themselves: ``registry`` (the entries and their load), ``registrar`` (the
``llm-register`` loop beside a server), ``discovery`` (a client following the
registry), ``scoring`` (the routing rule that weighs the published load).
"""

from matrix_p2p.backoff import Backoff
from matrix_p2p.llm.breaker import CircuitBreaker
from matrix_p2p.llm.client import LLMClient
from matrix_p2p.llm.config import LLMConfig
from matrix_p2p.llm.fleet import EndpointState, FleetState, InMemoryFleetState
from matrix_p2p.llm.limiter import AIMDLimiter
from matrix_p2p.llm.pool import EndpointStats
from matrix_p2p.llm.tools import tool_message
from matrix_p2p.llm.types import (
    TRANSIENT,
    ErrorKind,
    LLMError,
    LLMResponse,
    LLMResult,
    ToolCall,
    ToolCallError,
)

__all__ = [
    "TRANSIENT",
    "AIMDLimiter",
    "Backoff",
    "CircuitBreaker",
    "EndpointState",
    "EndpointStats",
    "ErrorKind",
    "FleetState",
    "InMemoryFleetState",
    "LLMClient",
    "LLMConfig",
    "LLMError",
    "LLMResponse",
    "LLMResult",
    "ToolCall",
    "ToolCallError",
    "tool_message",
]
