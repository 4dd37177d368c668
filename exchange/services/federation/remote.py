"""The one answer for applying for an entry homed at another hub here: not yet (its exchanges are forwarded to its
home: services/federation/forwarding.py)."""

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
        "cross-hub applications are not yet available (its data is asked for through this hub, which forwards "
        "the call to its home): apply for it at its home hub",
        subject=code,
        kind="REMOTE_RESOURCE",
    )
