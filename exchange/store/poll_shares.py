"""Poll leases spread over the live hub processes: which subscriptions a process takes over from a busier one.

A process takes every free or expired poll lease (so a dead process's subscriptions are polled again as soon
as its leases run out), which leaves the first process to start holding them all. A process that holds fewer
than its share (the active subscriptions over the live holders, itself included, rounded up) therefore takes
leases over from processes holding more than theirs, never below their share. Taking a lease over is safe
while its holder polls: a poll's changes are appended only while its holder still holds the lease.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def taken_over(leases: Sequence[tuple[str, str]], holder: str, active: int) -> list[tuple[str, str]]:
    """The (subscription id, current holder) pairs ``holder`` takes over; ``leases``: the live leases of the
    ``active`` subscriptions, as (subscription id, holder)."""
    counts = Counter(h for _, h in leases)
    share = -(-active // len({*counts, holder}))
    wanted = share - counts[holder]
    out: list[tuple[str, str]] = []
    for subscription_id, other in sorted(leases):
        if wanted <= 0:
            break
        if other != holder and counts[other] > share:
            out.append((subscription_id, other))
            counts[other] -= 1
            wanted -= 1
    return out
