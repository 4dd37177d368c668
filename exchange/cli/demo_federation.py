"""The demo's federation steps: a county hub, 思明区 (350203), beside the Xiamen city hub (350200).

The county hub has its own home (``county`` under the demo's home), CA, store and ports. The operators of both
peer them through their own RPCs; the county's catalog then lists the city's entries; the county's tax bureau
applies through its hub for the city's resident identity, which the city's steward approves and its share
manager grants; the county's system queries it through both hubs (the name masked at the city); and the
county's auditor fetches the cross-hub receipt through the federation and verifies it offline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import grpc

from exchange import models as m
from exchange import pki, validation
from exchange import wire as w
from exchange.bootstrap import load_witness_key
from exchange.cli import audit, audit_receipt, commands, tables
from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.errors import Unavailable
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import federation_pb2 as fpb
from exchange.v1 import registry_pb2 as rpb
from exchange.v1 import rights_pb2 as rpb_r

CITY = ("350200", "厦门市政务数据共享平台", "city")
COUNTY = ("350203", "思明区政务数据共享平台", "county")
IDENTITY = "10101/350200000001"
PURPOSE = "存量房交易契税征收"
BUYER_ID = "350203198507154313"
T = TypeVar("T")
WAIT = 60.0  # how long the tour waits for the hubs' sync rounds before it gives up


def _department(serial: str, name: str) -> m.Department:
    first17 = f"11350203MB{serial}"
    return m.Department(
        first17 + validation.uscc_check_character(first17), name, "350203", m.AdministrativeLevel.COUNTY
    )


COUNTY_AUTHORITY = _department("0011001", "厦门市思明区大数据管理中心")
COUNTY_TAX = _department("0011002", "国家税务总局厦门市思明区税务局")
SYSTEM = m.System("smsw-zgxt", "思明区税收征管系统", COUNTY_TAX.code)
PEOPLE = (
    m.Person("smsw-steward", "许税务", COUNTY_TAX.code, frozenset({m.Role.OWNER_STEWARD})),
    m.Person("smsw-clerk", "蔡办税", COUNTY_TAX.code, frozenset({m.Role.CONSUMER})),
    m.Person("smau-he", "何审计", COUNTY_AUTHORITY.code, frozenset({m.Role.AUDITOR})),
)


def city_settings(settings: Settings) -> Settings:
    """The demo's hub as the Xiamen city hub of a federation (sync rounds every second, for the tour)."""
    code, name, level = CITY
    return replace(
        settings,
        hub_code=code,
        hub_name=name,
        hub_level=level,
        federation_listen="127.0.0.1:0",
        federation_sync_seconds=1.0,
    )


def county_settings(city: Settings) -> Settings:
    """The county hub's settings: its own home under the demo's, its own ports, its own log origin."""
    code, name, level = COUNTY
    return replace(
        city,
        home=city.home / "county",
        listen="127.0.0.1:0",
        metrics_listen="",
        console_listen="",
        hub_address="",
        hub_code=code,
        hub_name=name,
        hub_level=level,
        audit_origin="siming.exchange.local/audit",
    )


@dataclass(frozen=True)
class Side:
    """One hub of the tour: its settings (with its address), operator and federation port."""

    settings: Settings
    operator: Path
    federation_port: int
    flush: Callable[[], object]  # signs a checkpoint over what the hub's log staged

    def client(self, identity: Path | None = None) -> HubClient:
        return HubClient(self.settings, identity or self.operator)

    def identity(self, kind: m.PrincipalKind, code: str) -> Path:
        return pki.HubFiles(self.settings.home).identity(m.PrincipalRef(kind, code)).directory


def _step(title: str) -> None:
    print(f"\n== {title}")


def _until(what: str, attempt: Callable[[], T | None]) -> T:
    """Asks ``attempt`` until it gives an answer: the hubs' sync rounds carry the federation's steps."""
    deadline = time.monotonic() + WAIT
    while True:
        found = attempt()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise Unavailable(f"the demo waited {WAIT:g} s for {what}; see the hubs' logs")
        time.sleep(0.2)


class FederationTour:
    """The federation steps, through real calls to both hubs; ``city_people`` gives a city person's identity
    directory by username (its steward of public security, its share manager)."""

    def __init__(
        self, city: Side, county: Side, city_people: Callable[[str], Path], id_number: Callable[[str], str]
    ) -> None:
        self.city = city
        self.county = county
        self.city_people = city_people
        self.id_number = id_number  # a made-up, well-formed identity number for a demo person

    def run(self, first_step: int) -> None:
        n = first_step
        self.peer(n)
        self.catalog(n + 1)
        self.register(n + 2)
        self.apply(n + 3)
        exchange_id = self.query(n + 4)
        self.receipt(n + 5, exchange_id)

    def peer(self, n: int) -> None:
        _step(f"{n}. A county hub, 思明区 (350203), runs beside the city's: their operators peer them")
        identities = {}
        for side in (self.city, self.county):
            with side.client() as hub:
                identities[side.settings.hub_code] = hub.call(
                    hub.federation.GetHubIdentity, fpb.GetHubIdentityRequest()
                )
        for side, other, relation in (
            (self.county, self.city, fpb.PEER_RELATION_PARENT),
            (self.city, self.county, fpb.PEER_RELATION_CHILD),
        ):
            them = identities[other.settings.hub_code]
            peer = fpb.Peer(
                code=them.code,
                name=them.name,
                level=them.level,
                relation=relation,
                address=f"localhost:{other.federation_port}",
                ca_certificate_pem=them.ca_certificate_pem,
            )
            with side.client() as hub:
                request = fpb.RegisterPeerRequest(peer=peer, reason="市区共享协议 2026-12")
                held = hub.call(hub.federation.RegisterPeer, request).peer
            mine = identities[side.settings.hub_code]
            state = fpb.PeerState.Name(held.state)[len("PEER_STATE_") :].lower()
            relation_name = fpb.PeerRelation.Name(relation)[len("PEER_RELATION_") :].lower()
            print(
                f"  hub {mine.code} registers {them.code} {them.name} as its {relation_name}"
                f" (CA SHA-256 {them.ca_fingerprint_sha256[:16]}…): {state}"
            )

    def catalog(self, n: int) -> None:
        _step(f"{n}. The county's catalog lists the city's entries, pulled by its sync loop (home hub 350200)")
        request = cpb.ListResourcesRequest(home_hub_code=CITY[0])

        def listed() -> cpb.ListResourcesResponse | None:
            with self.county.client() as hub:
                found = hub.call(hub.catalog.ListResources, request)
            return found if any(r.code == IDENTITY for r in found.resources) else None

        found = _until("the city's entries at the county", listed)
        print(tables.render(commands.RESOURCE_HEADERS, commands.resource_rows(list(found.resources))))

    def register(self, n: int) -> None:
        _step(f"{n}. The county's operator registers its tax bureau, its people and its system")
        with self.county.client() as hub:
            hub.call(
                hub.registry.CreateDepartment, rpb.CreateDepartmentRequest(department=w.department_to_wire(COUNTY_TAX))
            )
            for person in PEOPLE:
                number = self.id_number(person.username)
                hub.call(
                    hub.registry.CreatePerson,
                    rpb.CreatePersonRequest(person=w.person_to_wire(person), id_number=number),
                )
                self._certify(hub, m.PrincipalKind.PERSON, person.username)
            hub.call(hub.registry.CreateSystem, rpb.CreateSystemRequest(system=w.system_to_wire(SYSTEM)))
        with self.county.client(self.county.identity(m.PrincipalKind.PERSON, "smsw-steward")) as hub:
            self._certify(hub, m.PrincipalKind.SYSTEM, SYSTEM.code)
        print(f"  {COUNTY_TAX.name} ({COUNTY_TAX.code}), {len(PEOPLE)} people, system {SYSTEM.code}")

    def _certify(self, hub: HubClient, kind: m.PrincipalKind, code: str) -> None:
        ca = pki.HubFiles(self.county.settings.home).ca_cert.read_bytes()
        commands.issue_identity(hub, m.PrincipalRef(kind, code), self.county.identity(kind, code), ca)

    def apply(self, n: int) -> None:
        _step(
            f"{n}. The county's tax bureau applies through its own hub for the city's resident identity; the city's\n"
            "   steward approves it (the name masked), the city's share manager grants it: rights stay at home"
        )
        today = dt.datetime.now(dt.UTC).date()
        application = m.Application(
            IDENTITY, "", (SYSTEM.code,), PURPOSE, "《中华人民共和国契税法》第十一条；《税收征收管理法》第五条",
            ("name", "id_number"), today, today + dt.timedelta(days=90), 200,
        )  # fmt: skip
        clerk = self.county.identity(m.PrincipalKind.PERSON, "smsw-clerk")
        with self.county.client(clerk) as hub:
            applied = hub.call(hub.rights.Apply, rpb_r.ApplyRequest(request=w.application_to_wire(application)))
        print(f"  at the county: {applied.id}, homed at hub {applied.cross_hub.home_hub_code}, submitted by its sync")
        home_id = _until("the application at the city", lambda: self._home_request(applied.id))
        masks = [rpb_r.FieldMask(field="name", mask=rpb_r.MASK_KIND_NAME)]
        with self.city.client(self.city_people("ga-steward")) as hub:
            approve = rpb_r.ApproveRequest(id=home_id, masks=masks, reason="契税征收需核验买受人身份")
            hub.call(hub.rights.Approve, approve)
        with self.city.client(self.city_people("sm-lin")) as hub:
            grant = hub.call(hub.rights.IssueGrant, rpb_r.IssueGrantRequest(request_id=home_id))
        print(f"  at the city: {home_id} for {COUNTY_TAX.code}@{COUNTY[0]}, approved by ga-steward, granted {grant.id}")
        seen = _until("the grant's word back at the county", lambda: self._granted_at_county(clerk, applied.id))
        status = rpb_r.ShareRequestStatus.Name(seen.status)[len("SHARE_REQUEST_STATUS_") :].lower()
        print(f"  at the county: {seen.id} {status}, grant {seen.grant_id}, masks {[f.field for f in seen.masks]}")

    def _home_request(self, county_id: str) -> str | None:
        listing = rpb_r.ListShareRequestsRequest(resource_code=IDENTITY, status=rpb_r.SHARE_REQUEST_STATUS_PENDING)
        with self.city.client(self.city_people("ga-steward")) as hub:
            found = hub.call(hub.rights.ListShareRequests, listing).requests
        return next((r.id for r in found if r.cross_hub.consumer_request_id == county_id), None)

    def _granted_at_county(self, clerk: Path, request_id: str) -> rpb_r.ShareRequest | None:
        with self.county.client(clerk) as hub:
            seen = hub.call(hub.rights.GetShareRequest, rpb_r.GetShareRequestRequest(id=request_id))
        return seen if seen.status == rpb_r.SHARE_REQUEST_STATUS_GRANTED else None

    def query(self, n: int) -> str:
        _step(f"{n}. The county's system asks its own hub; the call crosses to the city, which masks and signs")
        system = self.county.identity(m.PrincipalKind.SYSTEM, SYSTEM.code)
        request = xpb.QueryRequest(
            resource_code=IDENTITY, purpose=PURPOSE, filters={"id_number": BUYER_ID}, fields=["name", "id_number"]
        )
        with self.county.client(system) as hub:
            answer = hub.call(hub.exchange.Query, request)
        for record in answer.records:
            print(f"  name {record.fields['name'].string_value}, id_number {record.fields['id_number'].string_value}")
        masked = ", ".join(f"{k} ({v})" for k, v in answer.disclosure.masks.items())
        print(f"  exchange {answer.exchange_id} at the county; masked at the city: {masked}")
        return str(answer.exchange_id)

    def receipt(self, n: int, exchange_id: str) -> None:
        _step(
            f"{n}. The county's auditor gets the cross-hub receipt of that exchange (the city's part fetched through\n"
            "   the federation) and verifies it offline with both hubs' log keys and witness keys"
        )
        auditor = self.county.identity(m.PrincipalKind.PERSON, "smau-he")
        _until("checkpoints of both hubs witnessed by the other", lambda: self._witnessed(auditor, exchange_id))
        home = self.county.settings.home
        out, trust = home / f"receipt-{exchange_id}.json", home / "trusted.txt"
        trust.write_text("".join(f"{line}\n" for side in (self.city, self.county) for line in _trusted(side.settings)))
        fetch = argparse.Namespace(
            out=out, merge=None, exchange_id=exchange_id, own=False, json=False, identity=auditor
        )
        print(f"  $ exchange --identity {auditor} audit cross-receipt {exchange_id} --out {out}")
        audit_receipt.cross_receipt(fetch, self.county.settings)
        print(f"  $ exchange audit verify-receipt {out} --trust {trust}")
        check = argparse.Namespace(file=out, key=None, trust=[trust], json=False)
        if audit.verify_receipt_file(check, self.county.settings) != 0:
            raise Unavailable("the demo's cross-hub receipt did not verify")

    def _witnessed(self, auditor: Path, exchange_id: str) -> bool | None:
        """True once the county can make the receipt; each try signs a checkpoint at both hubs first."""
        self.city.flush()
        self.county.flush()
        with self.county.client(auditor) as hub:
            try:
                hub.call(hub.audit.GetCrossHubReceipt, apb.GetCrossHubReceiptRequest(exchange_id=exchange_id))
            except grpc.RpcError as e:
                if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    return None  # not yet witnessed: the next sync round submits the new checkpoints
                raise
        return True


def _trusted(settings: Settings) -> list[str]:
    """A hub's keys as its operator hands them to an auditor: its log key, its witness key with its origin."""
    log_key = pki.HubFiles(settings.home).audit_verifier.read_text().strip()
    witness = load_witness_key(settings).verifier().encode()
    return [log_key, f"{witness} {settings.audit_origin}"]
