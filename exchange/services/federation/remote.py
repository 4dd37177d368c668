"""The answer for applying here for an entry homed at another hub when this hub does not forward applications (its
federation listener is not running); a federating hub forwards them (services/federation/rights.py)."""

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
        "this hub does not forward applications now (its federation is not running): apply for it at its home hub",
        subject=code,
        kind="REMOTE_RESOURCE",
    )
