"""Page tokens for every list call.

A token is opaque to callers: URL-safe base64 of the last key returned and a
digest of the filters it was issued for, so a token reused with other filters,
or garbled, is refused with a clear message instead of returning a wrong page.
A token grants nothing: it only says where to continue, and every page is
filtered by the caller's rights as the first was.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from exchange.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class PageRequest:
    """A validated page request: how many items, and the key to continue after."""

    size: int
    after: str | None
    filters_digest: str

    def token_after(self, last_key: str) -> str:
        raw = json.dumps({"a": last_key, "f": self.filters_digest}, separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _digest(filters: dict[str, object]) -> str:
    canonical = json.dumps(filters, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def page_request(size: int, token: str, filters: dict[str, object]) -> PageRequest:
    """Checks a list call's page size and token against the filters it carries."""
    out: list[FieldViolation] = []
    if size < 0 or size > MAX_PAGE_SIZE:
        out.append(FieldViolation("page_size", f"must be between 0 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"))
    digest = _digest(filters)
    after = None
    if token:
        after = _decode(token, digest, out)
    if out:
        raise InvalidArgument.of(out)
    return PageRequest(size or DEFAULT_PAGE_SIZE, after, digest)


def _decode(token: str, digest: str, out: list[FieldViolation]) -> str | None:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        after, issued_for = data["a"], data["f"]
    except (ValueError, KeyError, TypeError, UnicodeError):
        out.append(FieldViolation("page_token", "is not a token this hub issued"))
        return None
    if issued_for != digest or not isinstance(after, str):
        out.append(FieldViolation("page_token", "was issued for a list with other filters; start again without it"))
        return None
    return after
