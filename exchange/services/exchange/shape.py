"""Shape: keep only the granted fields, mask them, count and digest what leaves, and cut the page.

Rows from a backend are projected and masked (``policy.masks.apply``); records already in wire form
(a gRPC provider's, checked against the declaration) are masked in place (``policy.masks.records_masker``)
and digested only when a provenance statement needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from exchange import values
from exchange.backend import Batch, Records, Row
from exchange.errors import FailedPrecondition
from exchange.services.exchange.admit import query_page
from exchange.services.exchange.answers import Ask, Plan, provider_name
from exchange.v1 import exchange_pb2 as xpb
from exchange.values import RowsDigest
from policy.masks import apply, records_masker


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    next_token: str
    digest: str


def page(plan: Plan, ask: Ask, token: str, rows: list[Row]) -> Page:
    """One page of a query from the backend's rows (it was asked for one more, to know if more follow)."""
    request = plan.request
    if len(rows) > request.limit:
        raise FailedPrecondition(
            f"the provider {provider_name(plan.resource)} returned more rows than asked for", kind="PROVIDER_CONTRACT"
        )
    size = request.limit - 1
    shown = [apply(r, ask.fields, plan.decision.masks) for r in rows[:size]]
    digest = RowsDigest()
    digest.update(shown)
    more = len(rows) > size
    next_token = query_page(ask, size, token).token_after(str(request.offset + size)) if more else ""
    return Page(shown, next_token, digest.hexdigest())


@dataclass
class Count:
    """What a stream or document has sent so far: records, and bytes (wire-form records, document chunks)."""

    rows: int = 0
    size: int = 0


# A shaped batch of a stream: rows for the server to convert, or the consumer's message with its records in it
# and those records encoded as the consumer receives them (the message's bytes, its other fields still unset).
Part = tuple[list[Row], xpb.QueryBatch | None, bytes | None]


class StreamShaper:
    """Shapes a stream's batches one by one, counting them and digesting them.

    Rows are always digested (the closing record carries the digest); wire-form records only when a
    provenance statement is asked for, since digesting them means converting each one.
    """

    def __init__(self, plan: Plan, provenance: bool) -> None:
        self._plan = plan
        self._provenance = provenance
        masks = plan.decision.masks
        self._mask = records_masker(masks) if masks else None
        self._digest = RowsDigest()
        self._undigested = False
        self.counted = Count()

    def __call__(self, batch: Batch) -> Part:
        if isinstance(batch, Records):
            return [], batch.message, self._records(batch.message)
        return self._rows(batch), None, None

    def hexdigest(self) -> str:
        """The digest of what was sent; empty if records went out undigested."""
        return "" if self._undigested else self._digest.hexdigest()

    def _rows(self, batch: list[Row]) -> list[Row]:
        rows = [apply(r, self._plan.request.fields, self._plan.decision.masks) for r in batch]
        self.counted.rows += len(rows)
        self._digest.update(rows)
        return rows

    def _records(self, message: xpb.QueryBatch) -> bytes:
        """The message's records masked in place, then encoded once: the bytes sent (``answers.batch_bytes``) and
        counted as the records' size, before the hub's fields are set."""
        records = message.records
        if self._mask is not None:
            self._mask(records)
        self.counted.rows += len(records)
        encoded = message.SerializeToString()  # only records are set yet: their bytes in the consumer's batch
        self.counted.size += len(encoded)
        if self._provenance:
            self._digest.update(values.record_from_wire(r) for r in records)
        else:
            self._undigested = True
        return encoded
