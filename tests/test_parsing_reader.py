"""The request-parsing interceptor reads a unary call's one message and closes the stream it read it from."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from exchange.server.parsing import _first


def test_the_first_message_is_read_and_the_stream_closed_behind_it() -> None:
    closed: list[bool] = []

    async def bodies() -> AsyncIterator[bytes]:
        try:
            yield b"one"
            yield b"two"  # a unary call has one: what follows is never read
        finally:
            closed.append(True)  # a suspended reader would keep its call in a reference cycle

    async def empty() -> AsyncIterator[bytes]:
        nothing: tuple[bytes, ...] = ()
        for body in nothing:
            yield body

    async def read() -> tuple[bytes | None, list[bool]]:  # what was closed before the loop ends (it closes the rest)
        return await _first(bodies()), list(closed)

    assert asyncio.run(read()) == (b"one", [True])
    assert asyncio.run(_first(empty())) is None
