"""The brokered exchange, as a package whose modules follow a call:

``admit`` (is it a system, is the request well formed), ``decide`` (catalog, grant, terms; a plan or
the refusal), ``fetch`` (the backends, timed and contained), ``shape`` (granted fields, masks, digest,
page), ``record`` (the audit records, committed before data leaves), ``service`` (the three calls,
query, stream and document, as those steps in order); ``answers`` holds the shapes passed between them.
"""

from exchange.services.exchange.admit import DEFAULT_BATCH_SIZE, MAX_BATCH_SIZE, query_page
from exchange.services.exchange.answers import Ask, Batch, Chunk, Disclosure, QueryResult, new_exchange_id
from exchange.services.exchange.decide import not_shared_message
from exchange.services.exchange.fetch import BackendPool
from exchange.services.exchange.observer import Observer
from exchange.services.exchange.service import ExchangeService

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCH_SIZE",
    "Ask",
    "BackendPool",
    "Batch",
    "Chunk",
    "Disclosure",
    "ExchangeService",
    "Observer",
    "QueryResult",
    "new_exchange_id",
    "not_shared_message",
    "query_page",
]
