"""Writing the audit log out for auditors: entries, leaf hashes and signed checkpoints, as JSON lines."""

from __future__ import annotations

import json
from collections.abc import Iterator

from audit.note import Verifier
from exchange.store.audit import AuditStore

BATCH = 5000


def export_lines(store: AuditStore, verifier: Verifier) -> Iterator[str]:
    """The whole log, from entry 0 to the newest checkpoint's size, in the format audit.verify reads."""
    latest = store.latest_checkpoint()
    size = latest[0] if latest else 0
    yield json.dumps({"origin": verifier.name, "verifier_key": verifier.encode(), "start": 0, "size": size})
    for start in range(0, size, BATCH):
        for entry in store.entries(start, min(size, start + BATCH)):
            yield json.dumps(
                {"seq": entry.seq, "leaf": entry.leaf_hash.hex(), "record": entry.record}, ensure_ascii=False
            )
    for _, note in store.checkpoints(0, size):
        yield json.dumps({"checkpoint": note}, ensure_ascii=False)
