"""The provider kit: what a department runs next to its own system so that the hub can fetch from it.

A department registers one function per catalog resource and serves them over mutual TLS::

    provider = Provider()

    @provider.records("20301/350200000001")
    def contracts(q: ProviderQuery) -> Iterable[Row]:
        ...

    @provider.changes("20301/350200000001")  # optional: lets the hub subscribe to the resource
    def contract_changes(q: ChangesQuery) -> Iterable[ProviderChange]:
        ...

    provider.table("20301/350200000002", "postgresql+psycopg://...", "wq_ht", columns=(...), filters=("contract_no",))
    server, port = serve(provider, "0.0.0.0:7443", Path("identity"))

The kit does the rest: only the hub (a certificate carrying ``pki.HUB_URI``) may call; rows are
projected onto the fields asked for, converted to typed wire values and sent in bounded batches;
a cancelled call stops and closes the department's iterator; a function's failure is logged here
and reported to the hub as a generic INTERNAL error, so no internals leave the department.

This module is the kit's import path; the parts live beside it: ``provider_query`` (the query,
document, refusal and limits), ``provider_registry`` (``Provider``), ``provider_tables`` (a table
as a records function), ``provider_service`` (the gRPC servicer and the hub check),
``provider_serving`` (``serve``) and ``provider_tracing`` (the spans).
"""

from __future__ import annotations

from adapters.provider_query import (
    BATCH_BYTES,
    BATCH_RECORDS,
    CHUNK_BYTES,
    DEFAULT_MAX_ROWS,
    ChangesFunction,
    ChangesQuery,
    DocumentFunction,
    ProviderChange,
    ProviderDocument,
    ProviderQuery,
    QueryRefused,
    RecordsFunction,
    Row,
)
from adapters.provider_registry import Provider
from adapters.provider_service import is_hub_certificate
from adapters.provider_serving import MAX_MESSAGE, serve

__all__ = [
    "BATCH_BYTES",
    "BATCH_RECORDS",
    "CHUNK_BYTES",
    "DEFAULT_MAX_ROWS",
    "MAX_MESSAGE",
    "ChangesFunction",
    "ChangesQuery",
    "DocumentFunction",
    "Provider",
    "ProviderChange",
    "ProviderDocument",
    "ProviderQuery",
    "QueryRefused",
    "RecordsFunction",
    "Row",
    "is_hub_certificate",
    "serve",
]
