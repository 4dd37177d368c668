"""One catalog across hubs: what this hub offers its peers, which offered entries it keeps, and the search
over its own entries and those homed elsewhere.

An entry keeps its home hub wherever it travels. A peer may offer only entries from its own side of the
division tree: a child, entries homed within its division; a parent, entries homed outside this hub's
division. An entry homed at (or within) this hub therefore never comes back to it, whatever the path, and
an entry is offered onward to every peer but the one it came from. Each offer refused is logged and recorded
in the audit log (kind federation, action refuse_offer, the peer as actor), with the page it came in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from audit.records import AuditRecord
from exchange import validation
from exchange.config import HUB_LEVELS
from exchange.errors import ExchangeError, FieldViolation, InvalidArgument, NotFound
from exchange.federation.model import HubRef, Offer, Peer, PeerRelation, department_division, within
from exchange.models import Page, Principal, Resource, ResourceStatus
from exchange.paging import page_request
from exchange.services.auditing import hub_instance, now_text
from exchange.services.catalog import CatalogService
from exchange.services.federation.held import HeldEntries
from exchange.store import Store
from exchange.store.catalog import ResourceFilter
from exchange.store.federated import RemoteFilter

log = logging.getLogger(__name__)
_HUB_CODE = re.compile(r"^[0-9]{6}$")
# Drafts never leave their hub; a search lists published and suspended entries unless a status is asked for.
_LISTED = (ResourceStatus.PUBLISHED, ResourceStatus.SUSPENDED)


@dataclass(frozen=True)
class Listed:
    """An entry as a search shows it: ``home`` None for this hub's own; ``department_name`` the owning
    department's name at its home, for an entry homed elsewhere (this hub's registry names its own)."""

    resource: Resource
    home: HubRef | None = None
    department_name: str = ""


class FederatedCatalog:
    """The catalog's federated side. Blocking (reads and writes the store). ``entries``: the remote entries
    this process holds for forwarded exchanges, forgotten whenever a page of offers is kept here."""

    def __init__(
        self, store: Store, catalog: CatalogService, own: HubRef, *, entries: HeldEntries | None = None
    ) -> None:
        self._store = store
        self._catalog = catalog
        self.own = own
        self.entries = entries or HeldEntries(store)

    def offers(self, peer: Peer, after: int, size: int) -> tuple[list[Offer], int]:
        """The offers after ``after`` for ``peer``, each naming its home hub (this hub's own: this hub)."""
        if after < 0 or not 0 <= size <= 500:
            raise InvalidArgument.of([FieldViolation("after_sequence/page_size", "after >= 0; size 0 to 500")])
        found, last = self._store.federated.offers(after, size or 100, peer.code)
        return [replace(o, home=o.home or self.own) for o in found], last

    def accept(self, peer: Peer, offers: list[Offer], last: int, unreadable: Sequence[str] = ()) -> list[str]:
        """Keeps what ``peer`` may offer and moves its cursor to ``last`` (past the page); returns the refusals,
        logged, with ``unreadable`` (the page's offers that could not be read, already described)."""
        refused = list(unreadable)
        records = [_refusal_record(peer, "", r) for r in unreadable]
        kept: list[tuple[Offer, HubRef]] = []
        for offer in offers:
            problem = self._problem(peer, offer)
            if problem is None and offer.home is not None:
                kept.append((offer, _home_key(peer, offer.home)))
            else:
                refused.append(f"entry {offer.resource.spec.code} (offer {offer.sequence}): {problem}")
                records.append(_refusal_record(peer, offer.resource.spec.code, refused[-1]))
        for refusal in refused:
            log.warning("federation: refused from hub %s: %s", peer.code, refusal)
        cursor = max((o.sequence for o in offers), default=last)
        try:
            self._store.federated.receive(peer.code, kept, max(cursor, last), "; ".join(refused), records)
        finally:
            if kept:
                self.entries.forget()
        return refused

    def _problem(self, peer: Peer, offer: Offer) -> str | None:
        """Why ``peer`` may not offer this entry; None when it may."""
        home, spec = offer.home, offer.resource.spec
        if home is None or not _HUB_CODE.match(home.code) or home.level not in HUB_LEVELS or not home.name:
            return "its home hub is missing or malformed"
        if home.code == self.own.code:
            return f"its home hub is this hub ({home.code}): a routing loop"
        if offer.resource.status is ResourceStatus.DRAFT:
            return "a draft is never offered"
        try:
            validation.validate_resource_spec(spec)
        except ExchangeError as e:
            return f"its entry is malformed: {e.message}"
        return self._out_of_place(peer, home, spec.department_code) or self._store.federated.held_elsewhere(
            spec.code, peer.code
        )

    def _out_of_place(self, peer: Peer, home: HubRef, department: str) -> str | None:
        """Whether the home hub holds the department, and the home lies on the peer's side of the tree."""
        division = department_division(department)
        if not within(division, home.code):
            return f"its department {department} (division {division}) is not held by its home hub {home.code}"
        if peer.relation is PeerRelation.CHILD and not within(home.code, peer.code):
            return f"hub {peer.code}, a child, may offer only entries homed within its division, not at {home.code}"
        if peer.relation is PeerRelation.PARENT and within(home.code, self.own.code):
            return f"entries homed within this hub's division ({home.code}) come from its children, not its parent"
        return None

    def list(
        self,
        actor: Principal,
        size: int,
        token: str,
        query: ResourceFilter,
        status: ResourceStatus | None,
        *,
        home: tuple[str, str] = ("", ""),
    ) -> Page[Listed]:
        """This hub's entries and those homed elsewhere, in code order; ``home`` filters by (hub code, level)."""
        home_code, home_level = home
        self._catalog.check_query(query)
        out: list[FieldViolation] = []
        if home_code:
            validation.check_pattern(out, "home_hub_code", home_code, _HUB_CODE, "a six-digit division code")
        if home_level and home_level not in HUB_LEVELS:
            out.append(FieldViolation("home_level", f"must be one of {', '.join(HUB_LEVELS)}"))
        validation.raise_if(out)
        page = page_request(size, token, {**query.__dict__, "status": status, "home": home})
        own = home_code in ("", self.own.code) and home_level in ("", self.own.level)
        local = self._catalog.list_page(actor, page, query, status) if own else Page[Resource]()
        remote = Page[Listed]()
        if home_code != self.own.code or not self.own.code:
            where = RemoteFilter(
                query.department_code,
                query.share_type,
                (status,) if status else _LISTED,
                query.text,
                query.field_name,
                home_code,
                home_level,
            )
            found = self._store.federated.list(page, where)
            remote = Page([Listed(e.resource, e.home, e.department_name) for e in found.items], found.next_page_token)
        merged = sorted([*(Listed(r) for r in local.items), *remote.items], key=lambda x: x.resource.spec.code)
        more = len(merged) > page.size or bool(local.next_page_token or remote.next_page_token)
        shown = merged[: page.size]
        return Page(shown, page.token_after(shown[-1].resource.spec.code) if more and shown else "")

    def homes(self) -> tuple[HubRef, ...]:
        """The hubs whose entries a search here may find: this hub first, then the homes of entries kept here."""
        return (self.own, *(h for h in self._store.federated.homes() if h.code != self.own.code))

    def get(self, actor: Principal, code: str, version: int) -> Listed:
        """An entry of this hub, else one homed elsewhere (its current version only)."""
        try:
            return Listed(self._catalog.get(actor, code, version))
        except NotFound:
            remote = self._store.federated.get(code)
            if remote is None or version not in (0, remote.resource.version):
                raise
            return Listed(remote.resource, remote.home, remote.department_name)


def _refusal_record(peer: Peer, code: str, refusal: str) -> AuditRecord:
    """The audit record of an offer refused from ``peer``: the entry's code ("" if it could not be read), why."""
    return AuditRecord(
        kind="federation",
        action="refuse_offer",
        time=now_text(),
        actor=f"hub/{peer.code}",
        actor_department="",
        outcome="denied",
        reason=refusal[:500],
        subject=peer.code,
        resource=code[:100],
        hub=hub_instance(),
    )


def _home_key(peer: Peer, home: HubRef) -> HubRef:
    """The home as kept: an adjacent home's log key is the one its peering told (never what an offer says)."""
    return replace(home, log_key=peer.log_key) if home.code == peer.code else home
