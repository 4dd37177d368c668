"""The hub's event loop, as the ``event_loop`` setting chooses: uvloop (the default) or the standard library's.

grpc.aio, uvicorn (the console) and the hub's own coroutines run on whichever loop this makes; uvloop
spends fewer cycles per call and per wake-up from the audit committer's and workers' threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from exchange.config import Settings

T = TypeVar("T")


def new_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """A new event loop of the configured kind."""
    if settings.event_loop == "uvloop":
        import uvloop  # imported here: a hub set to "asyncio" never needs it

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """Runs the coroutine ``main`` to its end on a new loop of the configured kind."""
    with asyncio.Runner(loop_factory=lambda: new_loop(settings)) as runner:
        return runner.run(main)
