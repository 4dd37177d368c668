"""The hub's store: SQLAlchemy models, migrations and repositories."""

from collections.abc import Callable

from exchange.store.applications import ApplicationStore
from exchange.store.audit import AuditStore
from exchange.store.catalog import CatalogStore
from exchange.store.changes import install_local_changes
from exchange.store.console import ConsoleStore
from exchange.store.counters import CountersStore
from exchange.store.database import Database
from exchange.store.federated import FederatedCatalogStore
from exchange.store.forwarding import ForwardedStore
from exchange.store.objections import ObjectionStore
from exchange.store.peers import PeerStore
from exchange.store.recorded import RecordedWrites
from exchange.store.registry import RegistryStore
from exchange.store.rights import RightsStore
from exchange.store.subscriptions import SubscriptionStore
from exchange.store.witness import WitnessStore

__all__ = [
    "AuditStore",
    "CatalogStore",
    "ConsoleStore",
    "CountersStore",
    "Database",
    "FederatedCatalogStore",
    "ObjectionStore",
    "PeerStore",
    "RecordedWrites",
    "RegistryStore",
    "RightsStore",
    "Store",
    "SubscriptionStore",
    "WitnessStore",
]


class Store:
    """The hub's store: one database and the repositories over it."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.audit = AuditStore(self.db)
        # The repositories that make administrative changes write them with their audit records.
        recorded = RecordedWrites(self.db, self.audit)
        self.registry = RegistryStore(self.db, recorded)
        self.catalog = CatalogStore(self.db, recorded)
        self.rights = RightsStore(self.db, recorded)
        self.applications = ApplicationStore(self.db, recorded, self.rights)
        self.counters = CountersStore(self.db)
        self.console = ConsoleStore(self.db, recorded)
        self.objections = ObjectionStore(self.db, recorded)
        self.witness = WitnessStore(self.db, recorded)
        self.subscriptions = SubscriptionStore(self.db, recorded)
        self.peers = PeerStore(self.db, recorded)
        self.federated = FederatedCatalogStore(self.db, self.audit)
        self.forwarded = ForwardedStore(self.db)
        # Told of every change this process commits (payloads as announced to other processes).
        self.on_commit: list[Callable[[str], None]] = []
        install_local_changes(self.db.write_sessions, self.on_commit)

    def close(self) -> None:
        self.db.dispose()
