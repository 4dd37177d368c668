"""The provider kit's side of ListChanges: a department's changes as wire messages.

The servicer (``provider_service``) asks the function for the changes after the hub's cursor,
stops at the hub's limit and closes the iterator; this projects each row onto the fields asked
for. The kit does not judge the department's cursors: the hub checks them (non-empty, never
repeated, numbered without gaps when numbered).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from adapters.provider_query import ChangesFunction, ChangesQuery, ProviderChange
from exchange.v1 import data_pb2, provider_pb2
from exchange.values import record_to_wire

KINDS = {
    "upsert": provider_pb2.PROVIDER_CHANGE_KIND_UPSERT,
    "delete": provider_pb2.PROVIDER_CHANGE_KIND_DELETE,
}


def changes_of(function: ChangesFunction, query: ChangesQuery) -> Iterator[ProviderChange]:
    return iter(function(query))


def message(change: object, fields: tuple[str, ...]) -> provider_pb2.ProviderChange:
    """A department's change as a wire message; TypeError or ValueError for what is not one."""
    if not isinstance(change, ProviderChange):
        raise TypeError(f"a changes function yielded {type(change).__name__}, not a ProviderChange")
    if change.kind not in KINDS:
        raise ValueError(f"a change's kind is {change.kind!r}, not upsert or delete")
    return provider_pb2.ProviderChange(
        cursor=change.cursor, kind=KINDS[change.kind], record=_record(change.row, fields), sequence=change.sequence
    )


def _record(row: object, fields: tuple[str, ...]) -> data_pb2.Record:
    if not isinstance(row, Mapping):
        raise TypeError(f"a change's row is {type(row).__name__}, not a mapping")
    return record_to_wire({f: row[f] for f in fields if f in row})
