"""The federated catalog's store: the offers this hub makes its peers, and the entries its peers offer it.

Offers are appended, never changed, numbered by an increasing sequence: a peer pulls those after the last
it stored. Remote entries are kept one row per code, as their last offer showed them, with their home hub.
The offers of a page this hub refused are recorded in its audit log in the same transaction as the page.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from audit.records import AuditRecord
from exchange.federation.model import HubRef, Offer, RemoteEntry
from exchange.models import Page, ResourceStatus, ShareType
from exchange.paging import PageRequest
from exchange.store.audit import AuditStore
from exchange.store.catalog import from_snapshot, lock_offers, snapshot
from exchange.store.database import Database
from exchange.store.paging import fetch_page
from exchange.store.schema import CatalogOfferRow, PeerRow, RemoteEntryRow, ResourceRow


@dataclass(frozen=True)
class RemoteFilter:
    department_code: str | None = None
    share_type: ShareType | None = None
    statuses: tuple[ResourceStatus, ...] = ()
    text: str = ""
    field_name: str = ""
    home_hub_code: str = ""
    home_level: str = ""


def _offer_of(row: CatalogOfferRow) -> Offer:
    home = HubRef(row.home_hub_code, row.home_hub_name, row.home_level, row.home_log_key) if row.home_hub_code else None
    return Offer(row.sequence, from_snapshot(row.snapshot), home, row.via_peer, row.department_name)


def _entry_of(row: RemoteEntryRow) -> RemoteEntry:
    home = HubRef(row.home_hub_code, row.home_hub_name, row.home_level, row.home_log_key)
    return RemoteEntry(from_snapshot(row.snapshot), home, row.via_peer, row.offer_sequence, row.department_name)


def _keep(s: Session, peer: str, offer: Offer, home: HubRef, now: dt.datetime) -> None:
    spec = offer.resource.spec
    row = s.get(RemoteEntryRow, spec.code) or RemoteEntryRow(code=spec.code)
    if row.version is not None and row.via_peer == peer and row.version >= offer.resource.version:
        return  # seen already (a pull repeated after a crash): nothing new
    row.name, row.department_code, row.share_type = spec.name, spec.department_code, spec.share_type.value
    row.status, row.version = offer.resource.status.value, offer.resource.version
    row.item_names = " " + " ".join(f"{i.name} {i.title}" for i in spec.data_items) + " "
    row.home_hub_code, row.home_hub_name, row.home_level = home.code, home.name, home.level
    row.home_log_key, row.department_name = home.log_key, offer.department_name
    row.via_peer, row.offer_sequence, row.received_at = peer, offer.sequence, now
    row.snapshot = snapshot(offer.resource)
    s.add(row)
    s.add(  # relayed to every other peer (never back to ``peer``: see offers())
        CatalogOfferRow(
            resource_code=spec.code,
            home_hub_code=home.code,
            home_hub_name=home.name,
            home_level=home.level,
            home_log_key=home.log_key,
            department_name=offer.department_name,
            via_peer=peer,
            snapshot=row.snapshot,
            offered_at=now,
        )
    )


class FederatedCatalogStore:
    """Offers to peers and entries from peers; every method is one transaction."""

    def __init__(self, db: Database, audit: AuditStore) -> None:
        self._db = db
        self._audit = audit

    def offers(self, after: int, size: int, to_peer: str) -> tuple[list[Offer], int]:
        """Offers after sequence ``after`` that ``to_peer`` may have (not those it relayed), and the last sequence."""
        with self._db.read() as s:
            # The last first, and the page up to it: a page read before an offer committed and a last read after
            # it would move the peer's cursor past an offer it never saw.
            last = int(s.scalar(select(func.max(CatalogOfferRow.sequence))) or 0)
            stmt = (
                select(CatalogOfferRow)
                .where(
                    CatalogOfferRow.sequence > after,
                    CatalogOfferRow.sequence <= last,
                    CatalogOfferRow.via_peer != to_peer,
                )
                .order_by(CatalogOfferRow.sequence)
                .limit(size)
            )
            return [_offer_of(r) for r in s.scalars(stmt)], last

    def via_towards(self, home: str) -> str:
        """The peer an entry homed at hub ``home`` came through (the next hop towards it), "" if none did."""
        with self._db.read() as s:
            stmt = select(RemoteEntryRow.via_peer).where(RemoteEntryRow.home_hub_code == home).limit(1)
            return str(s.scalar(stmt) or "")

    def receive(
        self,
        peer: str,
        accepted: list[tuple[Offer, HubRef]],
        cursor: int,
        problem: str = "",
        refusals: Sequence[AuditRecord] = (),
    ) -> None:
        """Keeps the accepted offers of ``peer`` and moves its cursor to ``cursor``, all together or nothing;
        ``problem`` says what of the page was refused, ``refusals`` are the audit records of those offers."""
        now = dt.datetime.now(dt.UTC)
        with self._db.write() as s:
            if refusals:
                self._audit.stage_in(s, refusals)
            if accepted:
                lock_offers(s)  # relayed entries are offered onward
            for offer, home in accepted:
                _keep(s, peer, offer, home, now)
            row = s.get(PeerRow, peer, with_for_update=True)
            if row is not None:
                row.offer_sequence, row.synced_at, row.sync_problem = (
                    max(row.offer_sequence, cursor),
                    now,
                    problem[:2000],
                )

    def forget(self, peer: str) -> int:
        """Drops the entries received from ``peer`` (its peering ended); how many."""
        with self._db.write() as s:
            rows = list(s.scalars(select(RemoteEntryRow).where(RemoteEntryRow.via_peer == peer)))
            for row in rows:
                s.delete(row)
            return len(rows)

    def held_elsewhere(self, code: str, peer: str) -> str | None:
        """Why an entry ``code`` offered by ``peer`` cannot be kept: catalogued here, or known via another peer."""
        with self._db.read() as s:
            if s.scalar(select(ResourceRow.id).where(ResourceRow.code == code)) is not None:
                return "an entry of this hub has that code"
            via = s.scalar(select(RemoteEntryRow.via_peer).where(RemoteEntryRow.code == code))
            return f"it is known already via peer {via}" if via is not None and via != peer else None

    def get(self, code: str) -> RemoteEntry | None:
        with self._db.read() as s:
            row = s.get(RemoteEntryRow, code)
            return None if row is None else _entry_of(row)

    def homes(self) -> list[HubRef]:
        """The home hubs of the entries kept here (each once, by code), for choosing among them."""
        with self._db.read() as s:
            rows = s.execute(
                select(RemoteEntryRow.home_hub_code, RemoteEntryRow.home_hub_name, RemoteEntryRow.home_level)
                .distinct()
                .order_by(RemoteEntryRow.home_hub_code)
            ).all()
        seen: dict[str, HubRef] = {}
        for code, name, level in rows:
            seen.setdefault(code, HubRef(code, name, level))
        return list(seen.values())

    def home_log_keys(self) -> list[str]:
        """The log keys of the home hubs of the entries kept here, as relayed with them (each once, none empty)."""
        with self._db.read() as s:
            found = s.scalars(
                select(RemoteEntryRow.home_log_key).where(RemoteEntryRow.home_log_key != "").distinct()
            ).all()
        return sorted(found)

    def list(self, page: PageRequest, f: RemoteFilter) -> Page[RemoteEntry]:
        with self._db.read() as s:
            stmt = select(RemoteEntryRow)
            for column, value in (
                (RemoteEntryRow.department_code, f.department_code),
                (RemoteEntryRow.share_type, f.share_type.value if f.share_type else None),
                (RemoteEntryRow.home_hub_code, f.home_hub_code),
                (RemoteEntryRow.home_level, f.home_level),
            ):
                if value:
                    stmt = stmt.where(column == value)
            if f.statuses:
                stmt = stmt.where(RemoteEntryRow.status.in_([x.value for x in f.statuses]))
            if f.text:
                pattern = "%" + f.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                columns = (RemoteEntryRow.code, RemoteEntryRow.name, RemoteEntryRow.department_name)
                stmt = stmt.where(or_(*(c.ilike(pattern, escape="\\") for c in columns)))
            if f.field_name:
                stmt = stmt.where(RemoteEntryRow.item_names.contains(f" {f.field_name} "))
            return fetch_page(s, stmt, RemoteEntryRow.code, page, convert=_entry_of)
