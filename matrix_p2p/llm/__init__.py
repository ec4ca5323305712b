"""LLM fleet client: OpenAI-compatible endpoints behind adaptive concurrency.

Modules, in data-path order: ``config`` (settings), ``pool`` (endpoint state
and selection), ``limiter`` (AIMD limit), ``breaker`` (ejection), ``backoff``
(retry spacing), ``fleet`` (state shared between workers), ``client`` (the
only module doing HTTP), ``types`` (the results agents get back), ``tools``
(tool calls on the wire and in the conversation).
"""

from matrix_p2p.llm.backoff import Backoff
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
