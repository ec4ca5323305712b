"""The two fields a worker reads from a JetStream message's reply subject, read as
nats-py reads them (``Msg.metadata``) without building its objects per message."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from matrix_p2p.bus.jetstream import ack_metadata

V1 = "$JS.ACK.MX_DUMMY_TASKS.judge.3.1042.77.1732000000000000000.5"
V2 = "$JS.ACK._.ACCHASH.MX_DUMMY_TASKS.judge.2.99.41.1732000000000000000.0"
V2_TOKEN = V2 + ".tok"


@pytest.mark.parametrize("reply", [V1, V2, V2_TOKEN])
def test_the_fields_are_nats_pys(reply: str) -> None:
    meta = Msg.Metadata._from_reply(reply)
    assert ack_metadata(reply) == (meta.num_delivered, meta.sequence.stream)


@pytest.mark.parametrize("reply", [None, "", "_INBOX.x.y", "$JS.ACK.a.b.c", "$JS.ACK.S.c.x.1.2.3.4",
                                   "$JS.ACK.a.b.S.c.1.2.3.4"])
def test_not_a_jetstream_reply_is_a_first_delivery_without_sequence(reply: str | None) -> None:
    assert ack_metadata(reply) == (1, None)
