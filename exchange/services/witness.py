"""This hub as a witness of its peers' logs: decide on a submitted checkpoint, keep what was seen, cosign.

The decision is audit.witnessing's (pure); this service reads and advances the witness state in the
store by compare-and-set, keeps fork evidence, logs every refusal, and turns refusals into the hub's
errors (one gRPC status each, see proto/exchange/v1/witness.proto).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from audit.cosignature import Cosignature, WitnessKey
from audit.note import Verifier
from audit.records import AuditRecord
from audit.witnessing import Fork, Refusal, Refused, decide
from exchange.errors import Aborted, ExchangeError, FailedPrecondition, InvalidArgument, PermissionDenied
from exchange.services.auditing import now_text
from exchange.store.witness import WitnessStore

log = logging.getLogger(__name__)
# Decisions made again when another hub process advanced the same origin meanwhile.
ATTEMPTS = 3
# Who a fork's audit record names as its actor: a peer hub, whose log is the record's subject.
PEER_ACTOR = "peer-hub"


class Witness:
    """Cosigns peer logs' checkpoints that extend what it saw; ``logs`` maps each origin to its verifier key."""

    def __init__(
        self,
        store: WitnessStore,
        key: WitnessKey,
        logs: Mapping[str, Verifier],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._key = key
        self._logs = dict(logs)
        self._clock = clock

    def add_checkpoint(self, note: str, old_size: int, proof: list[bytes]) -> Cosignature:
        """This witness's cosignature on ``note``; raises the refusal as the hub's error, logged."""
        if old_size < 0:
            raise InvalidArgument("old_size must be 0 (nothing seen) or the size the witness last cosigned")
        try:
            return self._add(note, old_size, proof)
        except Refusal as refusal:
            raise self._refused(refusal) from None

    def _add(self, note: str, old_size: int, proof: list[bytes]) -> Cosignature:
        origin = note.split("\n", 1)[0]
        for _ in range(ATTEMPTS):
            seen = self._store.seen(origin) if origin in self._logs else None
            checkpoint = decide(self._logs, seen, note, old_size, proof)
            if self._store.advance(origin, seen, checkpoint.size, checkpoint.root, note):
                return self._key.cosign(checkpoint.text(), int(self._clock()))
        raise Aborted(f"other submissions of the log {origin} kept changing what this witness saw: retry")

    def _refused(self, refusal: Refusal) -> ExchangeError:
        if refusal.reason is Refused.FORK and refusal.fork is not None:
            self._store.keep_fork(refusal.fork, _fork_record(refusal.fork))
            log.error("witness refused a forked checkpoint of %s: %s", refusal.fork.origin, refusal.fork.detail)
            return FailedPrecondition(refusal.message, subject=refusal.fork.origin, kind="FORK")
        log.warning("witness refused a checkpoint: %s", refusal.message)
        if refusal.reason is Refused.OLD_SIZE:
            return FailedPrecondition(refusal.message, subject=str(refusal.last_size), kind="OLD_SIZE")
        if refusal.reason is Refused.UNKNOWN_ORIGIN:
            return PermissionDenied(refusal.message, reason="UNKNOWN_ORIGIN")
        if refusal.reason is Refused.BAD_SIGNATURE:
            return PermissionDenied(refusal.message, reason="BAD_SIGNATURE")
        return InvalidArgument(refusal.message)


def _fork_record(fork: Fork) -> AuditRecord:
    """The audit record of a refused fork: the peer log (its origin) and what did not agree."""
    return AuditRecord(
        kind="witness",
        action="refuse_fork",
        time=now_text(),
        actor=PEER_ACTOR,
        actor_department="",
        outcome="denied",
        subject=fork.origin[:200],
        reason=fork.detail[:500],
    )
