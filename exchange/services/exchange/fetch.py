"""Fetch: the backends, one open per binding version, and every call to them timed, counted and contained.

A backend's own failure (an exception that is not the hub's error) is logged with a reference and
becomes UNAVAILABLE for the caller: its text never leaves the hub.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

from exchange.backend import Backend, Batch, Document, Lane, Row, being_cancelled
from exchange.errors import ExchangeError, FailedPrecondition, PermissionDenied, ResourceExhausted, Unavailable
from exchange.models import Binding, Resource
from exchange.services.cache import NotHeld, held_only
from exchange.services.exchange.answers import Plan, provider_name
from exchange.services.exchange.observer import Observer
from exchange.services.exchange.steps import Steps

log = logging.getLogger(__name__)
T = TypeVar("T")
# Opens a backend: the provider's name for errors, the binding, and the department's lane for blocking work.
Opener = Callable[[str, Binding, Lane], Backend]


class BackendPool:
    """One open backend per binding version, shared by all calls; a replaced version is closed once the calls
    still using it have had their time.

    It is also a bulkhead: one department's blocking backends may hold at most ``threads_per_department``
    worker threads at once (its ``Lane``); backends that answer on the event loop hold none.
    """

    def __init__(self, opener: Opener, threads_per_department: int = 16, default_timeout: float = 10.0) -> None:
        self._opener = opener
        # Per resource: the open binding version, its backend, and how long one of its calls may wait.
        self._open: dict[str, tuple[int, Backend, float]] = {}
        self._lock = threading.Lock()
        self._threads = max(1, threads_per_department)
        self._default_timeout = default_timeout
        self._lanes: dict[str, Lane] = {}
        self._retired: list[tuple[Backend, float]] = []  # each with the time its calls in flight still have
        self._closing: dict[asyncio.Task[None], Backend] = {}

    def lane(self, department: str) -> Lane:
        with self._lock:
            return self._lanes.setdefault(department, Lane(self._threads))

    def get(self, resource: Resource, binding: Binding) -> Backend:
        """The open backend of ``binding``'s version (called from worker threads); a replaced one is retired.

        Calls that find none open at once each open one; the first installed is kept and the others, never
        used, are retired: a backend some call already uses is replaced only by a newer binding version."""
        with self._lock:
            held = self._open.get(binding.resource_code)
            if held is not None and held[0] >= binding.version:  # newer: this call's plan lost a race with a bind
                return held[1]
        if held_only():  # opening one may read files and build a channel: not on the event loop
            raise NotHeld(binding.resource_code)
        backend = self._opener(provider_name(resource), binding, self.lane(resource.spec.department_code))
        with self._lock:
            held = self._open.get(binding.resource_code)
            if held is not None and held[0] >= binding.version:  # another call opened it meanwhile
                self._retired.append((backend, 0.0))
                return held[1]
            self._open[binding.resource_code] = (
                binding.version,
                backend,
                binding.timeout_seconds or self._default_timeout,
            )
            if held is not None:
                self._retired.append((held[1], held[2]))
        return backend

    def close_retired(self) -> None:
        """On the event loop: closes the backends a newer binding replaced, each once its calls in flight have had
        their timeout (a stream still reading from one after that fails, UNAVAILABLE)."""
        if not self._retired:
            return
        with self._lock:
            retired, self._retired = self._retired, []
        loop = asyncio.get_running_loop()
        for backend, grace in retired:
            task = loop.create_task(_close_after(backend, grace))
            self._closing[task] = backend
            task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        self._closing.pop(task, None)

    async def aclose(self) -> None:
        """Closes every backend now, the retired ones still waiting for their calls included."""
        with self._lock:
            held = [b for _, b, _ in self._open.values()] + [b for b, _ in self._retired]
            self._open, self._retired = {}, []
        waiting, self._closing = self._closing, {}
        for task, backend in waiting.items():
            if task.cancel():
                held.append(backend)
        for backend in held:
            await backend.aclose()


async def _close_after(backend: Backend, grace: float) -> None:
    if grace > 0:
        await asyncio.sleep(grace)
    await backend.aclose()


class Provider:
    """Calls to a plan's backend: timed for the metrics, failures counted by kind and contained."""

    def __init__(self, observer: Observer, steps: Steps) -> None:
        self._observer = observer
        self._steps = steps

    async def rows(self, plan: Plan) -> list[Row]:
        return await self._timed(plan, lambda: plan.backend.fetch(plan.request))

    async def document(self, plan: Plan) -> Document:
        return await self._timed(plan, lambda: plan.backend.document(plan.request))

    def batches(self, plan: Plan, size: int) -> AsyncGenerator[Batch, None]:
        return plan.backend.stream(plan.request, size)

    async def _timed(self, plan: Plan, ask: Callable[[], Awaitable[T]]) -> T:
        asked_at, error = time.monotonic(), ""
        try:
            with self._steps("fetch", provider=plan.department):
                return await ask()
        except ExchangeError as e:
            error = reason_of(e)
            raise
        except Exception as e:  # a backend's own bug: the call fails, audited, and says nothing of it
            error = "unexpected"
            raise unexpected(plan, e) from None
        except asyncio.CancelledError as e:  # from the backend itself unless this task is being cancelled
            if being_cancelled():
                raise
            error = "unexpected"
            raise unexpected(plan, e) from None
        finally:
            self._observer.provider_answered(plan.department, time.monotonic() - asked_at, error)


def unexpected(plan: Plan, error: BaseException) -> ExchangeError:
    """A backend failed in a way it should not (a bug of its own): logged here, UNAVAILABLE to the caller."""
    reference = uuid.uuid4().hex[:12]
    log.error("backend of %s failed unexpectedly (reference %s)", plan.resource.spec.code, reference, exc_info=error)
    return Unavailable(f"the provider {provider_name(plan.resource)} failed; reference {reference}")


def reason_of(error: ExchangeError) -> str:
    """An error's kind, as the metrics and the audit record's reason name it."""
    if isinstance(error, PermissionDenied | ResourceExhausted):
        return error.reason.lower()
    if isinstance(error, FailedPrecondition):
        return error.kind.lower()
    return type(error).__name__.lower()
