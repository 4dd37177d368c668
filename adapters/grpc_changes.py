"""The hub's check of a provider's ListChanges answer, and the cursors it hands the subscriptions.

A provider's cursors are opaque, so the hub cannot order them; what it checks is what can be
checked: every change has a cursor, no cursor comes twice in a page or repeats the one asked
after (a provider that repeats itself, or went back to an older position, is ``SourceWentBack``),
every record is of the declared fields and types (as Fetch), and each kind is upsert or delete.

A provider that numbers its changes (``ProviderChange.sequence`` 1, 2, 3... over all the resource's
changes) lets the hub see more: a number that does not grow is ``SourceWentBack``, and one that
jumps (4 after 2) is ``ChangesSkipped``: change 3 would be lost, so nothing of the page is delivered.
Gaps are looked for only when the request has no filters (changes filtered out leave gaps of their
own); the numbers must grow in any case. Once numbered, every later change must be numbered.

The hub's cursor wraps the provider's with the last sequence number seen, as compact JSON
(``[7,"the provider's cursor"]``; 0 when not numbered), so the check holds across pages.
"""

from __future__ import annotations

import json

from adapters.base import (
    Change,
    ChangeBatch,
    ChangeRequest,
    ChangesSkipped,
    ProviderContractError,
    SourceWentBack,
)
from exchange.v1 import provider_pb2

KINDS = {
    provider_pb2.PROVIDER_CHANGE_KIND_UPSERT: "upsert",
    provider_pb2.PROVIDER_CHANGE_KIND_DELETE: "delete",
}


def wrap(sequence: int, cursor: str) -> str:
    """The hub's cursor for a provider's cursor and the sequence number it stands at."""
    return json.dumps([sequence, cursor], separators=(",", ":"), ensure_ascii=False)


def position(provider: str, request: ChangeRequest) -> tuple[int, str]:
    """The sequence number and the provider's cursor the request asks after; (0, "") for the first change."""
    if not request.after:
        return 0, ""
    try:
        parts = json.loads(request.after)
    except json.JSONDecodeError:
        parts = None
    valid = isinstance(parts, list) and len(parts) == 2 and isinstance(parts[1], str) and parts[1]
    if not valid or isinstance(parts[0], bool) or not isinstance(parts[0], int) or parts[0] < 0:
        raise SourceWentBack(provider, request.resource.code, "the position is not one this provider handed out")
    return parts[0], parts[1]


def current(provider: str, answer: provider_pb2.ProviderChanges) -> str:
    """The hub's cursor for a from-now answer: the provider's position ("" when it has no change yet)."""
    if answer.changes:
        raise ProviderContractError(provider, "it sent changes when asked only for its position")
    if answer.sequence < 0:
        raise ProviderContractError(provider, "its position has a negative sequence number")
    return wrap(answer.sequence, answer.cursor) if answer.cursor else ""


def checked_changes(
    provider: str, request: ChangeRequest, changes: list[provider_pb2.ProviderChange], rows: list[dict[str, object]]
) -> ChangeBatch:
    """The changes (``rows`` their records, already checked) as a batch, if their cursors and numbers hold."""
    sequence, after = position(provider, request)
    known = sequence > 0 or not request.after  # the number before the first is known (0 from the start)
    seen = {after} if after else set()
    found: list[Change] = []
    for n, (change, row) in enumerate(zip(changes, rows, strict=True)):
        if not change.cursor:
            raise ProviderContractError(provider, f"change {n} has no cursor")
        if change.cursor in seen:
            detail = f"change {n} repeats the cursor {change.cursor[:60]!r}"
            raise SourceWentBack(provider, request.resource.code, detail)
        seen.add(change.cursor)
        if change.kind not in KINDS:
            raise ProviderContractError(provider, f"change {n} is neither an upsert nor a delete")
        sequence = _next_sequence(provider, request, n, sequence, change.sequence, known=known)
        known = known or change.sequence > 0
        found.append(Change(wrap(sequence, change.cursor), row, KINDS[change.kind]))
    return ChangeBatch(found, found[-1].cursor if found else request.after or "")


def _next_sequence(provider: str, request: ChangeRequest, n: int, last: int, given: int, *, known: bool) -> int:
    """The sequence number after ``last``: ``given`` when it follows on; 0 for a provider that does not number."""
    if given < 0:
        raise ProviderContractError(provider, f"change {n} has a negative sequence number")
    if given == 0:
        if last > 0:
            raise ProviderContractError(provider, f"change {n} is not numbered, after numbered changes")
        return 0
    if given <= last:
        raise SourceWentBack(provider, request.resource.code, f"change {n} is numbered {given}, after {last}")
    if known and given > last + 1 and not request.filters:  # filtered out changes leave gaps of their own
        raise ChangesSkipped(provider, request.resource.code, last + 1, given - 1)
    return given
