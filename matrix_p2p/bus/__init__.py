"""The broker edge. Everything else speaks in these types, never in nats'.

Modules: ``types`` (the interface: ``Bus``, ``Puller``, ``Delivery``,
``KeyValue``, stream and consumer definitions), ``errors`` (the one translation
of nats errors into ``BusError``), ``jetstream`` (the real broker), ``connection`` (``connect``),
``kv`` and ``fleet_kv`` (key-value on JetStream), ``objects`` (object stores), ``memory`` (the same
interface in process, for unit tests).
"""

from matrix_p2p.bus.connection import connect
from matrix_p2p.bus.jetstream import JetStreamBus
from matrix_p2p.bus.memory import MemoryBus
from matrix_p2p.bus.types import (
    Bus,
    ConnectOptions,
    ConsumerDef,
    ConsumerStats,
    Delivery,
    KeyValue,
    ObjectStore,
    PayloadTooLargeError,
    Puller,
    StoredMsg,
    StreamDef,
)
from matrix_p2p.errors import BusError

__all__ = [
    "Bus",
    "BusError",
    "ConnectOptions",
    "ConsumerDef",
    "ConsumerStats",
    "Delivery",
    "JetStreamBus",
    "KeyValue",
    "MemoryBus",
    "ObjectStore",
    "PayloadTooLargeError",
    "Puller",
    "StoredMsg",
    "StreamDef",
    "connect",
]
