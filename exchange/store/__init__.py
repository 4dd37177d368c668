"""The hub's store: SQLAlchemy models, migrations and repositories."""

from collections.abc import Callable

from exchange.store.audit import AuditStore, install_staging
from exchange.store.catalog import CatalogStore
from exchange.store.changes import install_local_changes
from exchange.store.console import ConsoleStore
from exchange.store.counters import CountersStore
from exchange.store.database import Database
from exchange.store.objections import ObjectionStore
from exchange.store.registry import RegistryStore
from exchange.store.rights import RightsStore

__all__ = [
    "AuditStore",
    "CatalogStore",
    "ConsoleStore",
    "CountersStore",
    "Database",
    "ObjectionStore",
    "RegistryStore",
    "RightsStore",
    "Store",
]


class Store:
    """The hub's store: one database and the repositories over it."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.registry = RegistryStore(self.db)
        self.catalog = CatalogStore(self.db)
        self.rights = RightsStore(self.db)
        self.audit = AuditStore(self.db)
        self.counters = CountersStore(self.db)
        self.console = ConsoleStore(self.db)
        self.objections = ObjectionStore(self.db)
        install_staging(self.db, self.audit)
        # Told of every change this process commits (payloads as announced to other processes).
        self.on_commit: list[Callable[[str], None]] = []
        install_local_changes(self.db.write_sessions, self.on_commit)

    def close(self) -> None:
        self.db.dispose()
