"""The gateway's MQTT session sends what is written in one turn of the event loop as one write.

A dispatch batch publishes many commands at once; one system call for all of them instead of
one each (on loopback a send also costs the receiver's TCP work). Order is kept, and what was
written before a farewell (DISCONNECT) goes out before it.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from gateway.ingest.mqtt_source import _Session


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _session() -> tuple[_Session, _Transport]:
    session = _Session(cast(Any, None))  # the source is not used by writing
    transport = _Transport()
    session.connection_made(transport)
    return session, transport


async def test_writes_of_one_turn_leave_as_one_write_in_order() -> None:
    session, transport = _session()
    for packet in (b"a", b"b", b"c"):
        session.write(packet)
    assert transport.writes == []  # not before the turn ends
    await asyncio.sleep(0)
    assert transport.writes == [b"abc"]
    session.write(b"d")
    await asyncio.sleep(0)
    assert transport.writes == [b"abc", b"d"]


async def test_close_sends_what_was_written_before_the_farewell() -> None:
    session, transport = _session()
    session.write(b"puback")
    session.close(b"disconnect")
    await asyncio.sleep(0)
    assert transport.writes == [b"puback", b"disconnect"]
    assert transport.closed


async def test_nothing_is_written_to_a_closing_transport() -> None:
    session, transport = _session()
    session.write(b"late")
    transport.closed = True
    await asyncio.sleep(0)
    session.write(b"later")
    await asyncio.sleep(0)
    assert transport.writes == []
