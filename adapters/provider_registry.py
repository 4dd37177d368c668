"""The provider kit's registration API: ``Provider``, the resources a department serves and the function for each.

A department registers a records function (``@provider.records``), a document function
(``@provider.document``) or a table of its database (``provider.table``) per resource code, and
may add a changes function (``@provider.changes``) so the resource can be subscribed to; the
servicer looks them up by the code the hub asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Engine

from adapters.provider_query import DEFAULT_MAX_ROWS, ChangesFunction, DocumentFunction, RecordsFunction
from adapters.provider_tables import TableSource, read_only_engine

R = TypeVar("R", bound=RecordsFunction)
D = TypeVar("D", bound=DocumentFunction)
C = TypeVar("C", bound=ChangesFunction)


@dataclass(frozen=True)
class RegisteredRecords:
    """A records function and whether it applies offset and limit itself."""

    function: RecordsFunction
    handles_paging: bool


class Provider:
    """The resources a department serves: a records or document function per resource code."""

    def __init__(self) -> None:
        self._records: dict[str, RegisteredRecords] = {}
        self._documents: dict[str, DocumentFunction] = {}
        self._changes: dict[str, ChangesFunction] = {}
        self._engines: list[Engine] = []

    def records(self, code: str, *, handles_paging: bool = False) -> Callable[[R], R]:
        """Registers a records function; unless ``handles_paging``, the kit applies offset and limit itself."""

        def register(function: R) -> R:
            self._claim(code)
            self._records[code] = RegisteredRecords(function, handles_paging)
            return function

        return register

    def document(self, code: str) -> Callable[[D], D]:
        """Registers a document function; returning None tells the hub there is no such document."""

        def register(function: D) -> D:
            self._claim(code)
            self._documents[code] = function
            return function

        return register

    def changes(self, code: str) -> Callable[[C], C]:
        """Registers the changes function of a resource also served by records (for subscriptions).

        The function yields ``ProviderChange``s after ``query.after`` in the department's order; the kit
        stops at the hub's limit and closes the iterator.
        """

        def register(function: C) -> C:
            if code in self._changes:
                raise ValueError(f"the changes of {code} are already registered")
            self._changes[code] = function
            return function

        return register

    def table(
        self,
        code: str,
        url: str,
        table: str,
        *,
        columns: Mapping[str, str] | Sequence[str],
        filters: Collection[str] = (),
        max_rows: int = DEFAULT_MAX_ROWS,
    ) -> RecordsFunction:
        """Serves ``code`` from a database table, read-only; ``columns`` maps data items to columns.

        Only the items in ``filters`` may be filtered on, always as bound parameters.
        """
        mapped = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
        source = TableSource(read_only_engine(url), table, mapped, frozenset(filters), max_rows)
        self._engines.append(source.engine)
        self.records(code, handles_paging=True)(source)
        return source

    def records_for(self, code: str) -> RegisteredRecords | None:
        """The records function registered for ``code``, if any."""
        return self._records.get(code)

    def document_for(self, code: str) -> DocumentFunction | None:
        """The document function registered for ``code``, if any."""
        return self._documents.get(code)

    def changes_for(self, code: str) -> ChangesFunction | None:
        """The changes function registered for ``code``, if any."""
        return self._changes.get(code)

    def close(self) -> None:
        """Releases the database connections of the tables served."""
        for engine in self._engines:
            engine.dispose()

    def _claim(self, code: str) -> None:
        if code in self._records or code in self._documents:
            raise ValueError(f"{code} is already registered")
