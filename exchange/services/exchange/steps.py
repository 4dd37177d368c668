"""The exchange's steps as trace spans (decide, fetch, mask, audit.commit), under the call's RPC span.

Tracing off, ``Steps`` hands out a shared null context: no span is made, not even a no-op one, so the
hot path pays one attribute check per step. Attributes never carry what was asked for or returned:
only the call's action and id, the provider's department, counts and outcomes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from opentelemetry.trace import Span, Tracer
from opentelemetry.util.types import AttributeValue

from exchange import tracing

_NOTHING: AbstractContextManager[None] = nullcontext()


class Steps:
    def __init__(self, tracer: Tracer | None) -> None:
        self._tracer = tracer

    def __call__(self, name: str, **attrs: AttributeValue) -> AbstractContextManager[Span | None]:
        if self._tracer is None:
            return _NOTHING
        return tracing.step(self._tracer, name, None, **attrs)
