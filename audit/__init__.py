"""The tamper-evident audit log's pure parts (RFC 9162 Merkle tree with signed checkpoints).

Trees, signed notes, canonical records, seals, pruning statements, offline verification, matching
and the evaluation: nothing here reads or writes the hub's store, so an auditor runs it offline.
The processes a hub runs over its store (group commit, integration and signing, integrity checks,
export) live in ``exchange.auditlog``.
"""
