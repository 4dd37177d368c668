"""Writing the audit log out for auditors: a slice of entries with the checkpoints that vouch for it.

The first line is a JSON header ``{"origin", "verifier_key", "start", "size", "prefix"}``: the slice
holds entries [start, size), and ``prefix`` lists (hex) the hashes of the complete subtrees covering
the entries before it, so a verifier can recompute every root without them. Then come the hub's
signed pruning statements (audit.pruning), oldest first, one JSON line each ``{"pruning": "<signed
note>"}``; the signed checkpoints of sizes in [start, size], one JSON line each ``{"checkpoint":
"<signed note>"}``; and then the entries, one tab-separated line each ``E <seq> <leaf hash, hex>
<record>``, the record being its canonical JSON as hashed (which never holds a tab or a newline) and
empty once pruned. Entry lines need no JSON parsing, and statements and checkpoints come first, so a
verifier reads a long log in one pass and little memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

from audit.note import Verifier
from audit.records import entry_line
from exchange.store.audit import AuditStore

BATCH = 5000


def export_lines(store: AuditStore, verifier: Verifier, start: int = 0, prefix: Sequence[bytes] = ()) -> Iterator[str]:
    """Entries [start, newest checkpoint's size) with their checkpoints, in the format audit.verify reads.

    ``prefix`` is ``MerkleTree.prefix(start)`` of the log (nothing when ``start`` is 0).
    """
    with store.view() as log:  # one snapshot: a pruning committed meanwhile would blank entries not yet read
        latest = log.latest_checkpoint()
        size = latest[0] if latest else 0
        start = min(start, size)
        header = {
            "origin": verifier.name,
            "verifier_key": verifier.encode(),
            "start": start,
            "size": size,
            "prefix": [h.hex() for h in prefix],
        }
        yield json.dumps(header)
        for note in log.pruning_statements():
            yield json.dumps({"pruning": note}, ensure_ascii=False)
        for _, note in log.checkpoints(start, size):
            yield json.dumps({"checkpoint": note}, ensure_ascii=False)
        for first in range(start, size, BATCH):
            for entry in log.entries(first, min(size, first + BATCH)):
                yield entry_line(entry.seq, entry.leaf_hash, entry.record)
