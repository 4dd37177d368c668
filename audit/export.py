"""Writing the audit log out for auditors: entries, leaf hashes and signed checkpoints, as lines.

The first line is a JSON header ``{"origin", "verifier_key", "start", "size"}``. Each entry is one
tab-separated line ``E <seq> <leaf hash, hex> <record>``, the record being its canonical JSON as
hashed (canonical JSON escapes tabs and newlines, so it never holds one) and empty once pruned.
Each checkpoint is a JSON line ``{"checkpoint": "<signed note>"}``. Entry lines need no JSON
parsing, which keeps offline verification of long logs fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from audit.note import Verifier
from audit.records import entry_line
from exchange.store.audit import AuditStore

BATCH = 5000


def export_lines(store: AuditStore, verifier: Verifier) -> Iterator[str]:
    """The whole log, from entry 0 to the newest checkpoint's size, in the format audit.verify reads."""
    latest = store.latest_checkpoint()
    size = latest[0] if latest else 0
    yield json.dumps({"origin": verifier.name, "verifier_key": verifier.encode(), "start": 0, "size": size})
    for start in range(0, size, BATCH):
        for entry in store.entries(start, min(size, start + BATCH)):
            yield entry_line(entry.seq, entry.leaf_hash, entry.record)
    for _, note in store.checkpoints(0, size):
        yield json.dumps({"checkpoint": note}, ensure_ascii=False)
