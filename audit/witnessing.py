"""A witness's decision on a checkpoint a log submits: cosign it, or refuse it and say why.

Follows the C2SP tlog-witness add-checkpoint rules: the witness knows the logs it witnesses (origin and
verifier key) and, for each, the last checkpoint it cosigned. A submission carries the new signed
checkpoint, the size the log believes the witness last saw ("old size") and a consistency proof from
that size. The witness refuses an unknown origin, a checkpoint its origin's key did not sign, an old
size that is not the one it holds (the log retries with a proof from the size it is told), a smaller
tree than the old size, and a malformed proof. It cosigns only a tree that extends the one it saw: the
same size with another root, or a well-formed proof that does not verify, is a fork, and the witness
keeps both checkpoints as evidence (a hub that shows one history to one peer and another to the next
is caught by the first witness that sees both). Pure: the caller keeps the state (exchange.store.witness).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from audit.merkle import HASH_SIZE, ProofError, verify_consistency
from audit.note import Checkpoint, NoteError, Verifier, open_note

# No consistency proof between trees below 2^64 leaves has more hashes than this.
MAX_PROOF_HASHES = 63


class Refused(StrEnum):
    """Why a witness did not cosign: each is a distinct status for the log that asked."""

    MALFORMED = "malformed"  # not a checkpoint, or a proof that cannot be one
    UNKNOWN_ORIGIN = "unknown_origin"  # a log this witness does not witness
    BAD_SIGNATURE = "bad_signature"  # not signed by the origin's key
    OLD_SIZE = "old_size"  # the old size is not the one the witness holds: retry from `last_size`
    FORK = "fork"  # not an extension of the tree the witness saw: evidence kept


@dataclass(frozen=True)
class Seen:
    """The last checkpoint a witness cosigned for an origin: its size, root and signed note."""

    size: int
    root: bytes
    note: str


@dataclass(frozen=True)
class Fork:
    """Evidence of a fork: two checkpoints signed by one origin that cannot both be true."""

    origin: str
    seen_note: str
    offered_note: str
    detail: str


class Refusal(Exception):
    """The witness refuses a submission; ``last_size`` is set for OLD_SIZE, ``fork`` for FORK."""

    def __init__(self, reason: Refused, message: str, *, last_size: int = 0, fork: Fork | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.last_size = last_size
        self.fork = fork


def origin_of(note: str) -> str:
    """The origin line of a signed checkpoint note (unverified: to find whose key must check it)."""
    first = note.split("\n", 1)[0]
    if not first:
        raise Refusal(Refused.MALFORMED, "the checkpoint has no origin line")
    return first


def decide(logs: Mapping[str, Verifier], seen: Seen | None, note: str, old_size: int, proof: list[bytes]) -> Checkpoint:
    """The checkpoint in ``note`` if the witness may cosign it, given what it ``seen`` for its origin.

    ``logs`` maps each witnessed origin to its verifier key. Raises Refusal otherwise.
    """
    origin = origin_of(note)
    verifier = logs.get(origin)
    if verifier is None:
        raise Refusal(Refused.UNKNOWN_ORIGIN, f"this witness does not witness the log {origin!r}")
    checkpoint = _opened(note, verifier)
    last_size = seen.size if seen is not None else 0
    if old_size != last_size:
        raise Refusal(
            Refused.OLD_SIZE,
            f"the witness last saw the log {origin} at size {last_size}, not {old_size}: "
            f"send a consistency proof from size {last_size}",
            last_size=last_size,
        )
    if checkpoint.size < old_size:
        raise Refusal(Refused.MALFORMED, f"the checkpoint's size {checkpoint.size} is below the old size {old_size}")
    _check_shape(proof)
    if seen is not None and seen.size > 0:
        _check_extends(origin, seen, note, checkpoint, proof)
    elif proof:
        raise Refusal(Refused.MALFORMED, "from old size 0 (nothing seen yet) a checkpoint comes without a proof")
    return checkpoint


def _opened(note: str, verifier: Verifier) -> Checkpoint:
    try:
        text = open_note(note, verifier)
    except NoteError as e:
        raise Refusal(Refused.BAD_SIGNATURE, f"the checkpoint is not signed by its log's key: {e}") from None
    try:
        return Checkpoint.parse(text)
    except NoteError as e:
        raise Refusal(Refused.MALFORMED, f"the note is not a checkpoint: {e}") from None


def _check_shape(proof: list[bytes]) -> None:
    if len(proof) > MAX_PROOF_HASHES or any(len(h) != HASH_SIZE for h in proof):
        raise Refusal(Refused.MALFORMED, f"a consistency proof is at most {MAX_PROOF_HASHES} hashes of 32 bytes")


def _check_extends(origin: str, seen: Seen, note: str, checkpoint: Checkpoint, proof: list[bytes]) -> None:
    """Refuses, as a fork with its evidence, a tree that does not extend the one the witness saw."""
    if checkpoint.size == seen.size:
        if checkpoint.root != seen.root:
            detail = f"two checkpoints of size {seen.size} with different roots"
            raise Refusal(Refused.FORK, _fork_message(origin, detail), fork=Fork(origin, seen.note, note, detail))
        if proof:
            raise Refusal(Refused.MALFORMED, "a checkpoint of the size already seen comes without a proof")
        return
    try:
        verify_consistency(seen.size, checkpoint.size, proof, seen.root, checkpoint.root)
    except ProofError as e:
        detail = f"the tree of size {checkpoint.size} is not consistent with the one of size {seen.size} ({e})"
        raise Refusal(Refused.FORK, _fork_message(origin, detail), fork=Fork(origin, seen.note, note, detail)) from None


def _fork_message(origin: str, detail: str) -> str:
    return (
        f"fork: the log {origin} signed {detail}; both checkpoints are kept as evidence and nothing is cosigned. "
        "An operator of each hub must look"
    )
