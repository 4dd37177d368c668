"""The one answer for using an entry homed at another hub here: not yet (cross-hub exchange is future work)."""

from __future__ import annotations

from exchange.errors import FailedPrecondition, NotFound
from exchange.store import Store


def refuse_if_remote(store: Store, code: str, missing: NotFound) -> NotFound:
    """``missing`` when ``code`` is no entry at all; raises FAILED_PRECONDITION naming its home hub when it is an
    entry homed at another hub (kept here read-only)."""
    remote = store.federated.get(code)
    if remote is None:
        return missing
    raise FailedPrecondition(
        f"resource {code} is homed at hub {remote.home.code} ({remote.home.name}); "
        "cross-hub exchange is not yet available: apply for and query it at its home hub",
        subject=code,
        kind="REMOTE_RESOURCE",
    )
