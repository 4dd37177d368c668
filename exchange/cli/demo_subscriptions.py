"""The demo's subscriptions: tax and the registry follow new business registrations and certificate changes.

Market regulation keeps the companies it newly registers in a table of its front-end database (前置库), the
real-estate registry its property-certificate changes in its own; each table has an integer change column the
hub reads changes by. The tax bureau subscribes to both for tax-source registration (税源登记): a new company
becomes a taxpayer, and a property that changes owner changes who owes its property tax. The registry
subscribes to new companies for transfer registration (不动产转移登记): founders often put a flat into a new
company as capital, and the registry registers that transfer against the company's registration instead of
asking the applicant for a copy of the licence. New rows are written at the sources, each follower prints
what arrives (masked as its grant says) and acknowledges it, each owner's steward sees its subscribers, and
the auditor sees one audit record per batch delivered.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import grpc
from sqlalchemy import MetaData, Table, create_engine, text

from exchange import models as m
from exchange import pki, validation, values
from exchange import wire as w
from exchange.auditlog.log import AuditLog
from exchange.cli import subscriptions as subscriptions_cli
from exchange.cli import tables
from exchange.cli.client import HubClient
from exchange.config import Settings
from exchange.v1 import audit_pb2 as apb
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import rights_pb2 as rpb
from exchange.v1 import subscription_pb2 as spb

NEW_BUSINESSES = "10201/350200000003"
CERTIFICATE_CHANGES = "20302/350200000002"
TAX_SOURCES = "税源登记"
TRANSFER = "不动产转移登记"
# How long the tour waits for the hub to take a change from a source before it gives up (it polls every 0.25 s).
WAIT_SECONDS = 30.0

COMPANY_COLUMNS = {
    "credit_code": "tyshxydm", "company_name": "qymc", "company_type": "qylx", "legal_representative": "fddbr",
    "representative_id_number": "fddbrzjhm", "registered_capital": "zczb", "established_on": "clrq", "address": "zs",
}  # fmt: skip
CERTIFICATE_COLUMNS = {
    "change_no": "ywh", "certificate_no": "bdcqzh", "change_type": "djlx", "property_address": "zl",
    "owner_name": "qlr", "owner_id_number": "qlrzjh", "area_m2": "mj", "registered_on": "dbrq",
}  # fmt: skip


def _uscc(first17: str) -> str:
    return first17 + validation.uscc_check_character(first17)


def _id_number(first17: str) -> str:
    return first17 + validation.id_number_check(first17)


def _company(row: tuple[str, str, str, str, str, str, str]) -> dict[str, object]:
    """A company's row in market regulation's table, from its first 17 code characters, name, type, legal
    representative, the first 17 digits of their ID number, registered capital (10k yuan) and address."""
    code, name, kind, person, id17, capital, address = row
    return {
        "tyshxydm": _uscc(code), "qymc": name, "qylx": kind, "fddbr": person, "fddbrzjhm": _id_number(id17),
        "zczb": capital, "clrq": dt.date.today(), "zs": address,
    }  # fmt: skip


def _certificate(no: int, row: tuple[str, str, str, str, str]) -> dict[str, object]:
    """A certificate change in the registry's table: its number, then kind, address, owner, the first 17 digits of
    the owner's ID number, and the area (m²)."""
    kind, address, owner, id17, area = row
    today = dt.date.today()
    return {
        "ywh": f"DJ{today:%Y%m%d}{no:04d}", "bdcqzh": f"闽({today:%Y})厦门市不动产权第{no:07d}号", "djlx": kind,
        "zl": address, "qlr": owner, "qlrzjh": _id_number(id17), "mj": area, "dbrq": today,
    }  # fmt: skip


# Rows already at the sources when the subscriptions begin (not sent: a subscription starts now by default).
OLD_COMPANY = _company(("91350200MA2YK0001", "厦门筼筜湖茶业有限公司", "有限责任公司", "黄海燕", "35020319790611002",
                        "50", "厦门市思明区湖滨北路10号"))  # fmt: skip
OLD_CERTIFICATE = _certificate(12001, ("首次登记", "集美区杏林湾路21号1801室", "许文杰", "35021119820305091", "98.40"))
# Rows written while the followers follow.
NEW_COMPANIES = (
    _company(("91350200MA2YK0002", "厦门鹭岛云数科技有限公司", "有限责任公司(自然人投资或控股)", "蔡明辉",
              "35020619880312041", "500", "厦门市湖里区火炬路68号")),
    _company(("91350200MA2YK0003", "厦门海沧港湾物流有限公司", "有限责任公司(自然人独资)", "郭丽娟",
              "35020519910927032", "200", "厦门市海沧区港南路399号")),
)  # fmt: skip
NEW_CERTIFICATES = (
    _certificate(12345, ("转移登记", "思明区湖滨南路88号2梯1203室", "林志强", "35020319850715431", "89.62")),
    _certificate(12346, ("变更登记", "湖里区枋湖北二路156号701室", "吴建华", "35020619700102051", "120.15")),
)
# Written after the tour's followers stopped: left pending, for `exchange subscribe follow` to try.
LATE_COMPANY = _company(("91350200MA2YK0004", "厦门同安茶香餐饮管理有限公司", "有限责任公司", "叶志远",
                         "35021219930408061", "30", "厦门市同安区大同路75号"))  # fmt: skip


class TourParts(Protocol):
    """What the subscription steps use of the demo's tour."""

    settings: Settings
    home: pki.HubFiles
    audit_log: AuditLog

    def client(self, identity: Path) -> HubClient: ...

    def identity_of(self, username: str) -> Path: ...


@dataclass(frozen=True)
class Sources:
    """The two front-end database tables, each with an integer change column (one writer each, in order)."""

    home: Path

    def url(self, name: str) -> str:
        return f"sqlite:///{self.home / 'frontends' / name}"

    def create(self) -> None:
        (self.home / "frontends").mkdir(parents=True, exist_ok=True)
        self._run("sj-qzk.db", "CREATE TABLE xsldj (djxh INTEGER PRIMARY KEY, tyshxydm TEXT UNIQUE, qymc TEXT, "
                  "qylx TEXT, fddbr TEXT, fddbrzjhm TEXT, zczb NUMERIC(14, 2), clrq DATE, zs TEXT)")  # fmt: skip
        self._run("bdc-qzk.db", "CREATE TABLE cqbg (bgxh INTEGER PRIMARY KEY, ywh TEXT UNIQUE, bdcqzh TEXT, "
                  "djlx TEXT, zl TEXT, qlr TEXT, qlrzjh TEXT, mj NUMERIC(10, 2), dbrq DATE)")  # fmt: skip
        self.register([OLD_COMPANY])
        self.record([OLD_CERTIFICATE])

    def register(self, companies: Sequence[dict[str, object]]) -> None:
        """Market regulation registers companies: each row gets the next change number."""
        self._insert("sj-qzk.db", "xsldj", companies)

    def record(self, changes: Sequence[dict[str, object]]) -> None:
        """The registry records certificate changes: each row gets the next change number."""
        self._insert("bdc-qzk.db", "cqbg", changes)

    def _insert(self, db: str, table: str, rows: Sequence[dict[str, object]]) -> None:
        """Inserts in one transaction; the change number, the INTEGER PRIMARY KEY, takes the next value itself."""
        engine = create_engine(self.url(db))
        try:
            with engine.begin() as c:
                c.execute(Table(table, MetaData(), autoload_with=c).insert(), list(rows))
        finally:
            engine.dispose()

    def bindings(self) -> dict[str, tuple[str, cpb.Binding]]:
        """Each resource's binding, with its change column, and the steward who sets it."""
        companies = cpb.SqlBackend(
            url=self.url("sj-qzk.db"), table="xsldj", columns=COMPANY_COLUMNS, change_column="djxh"
        )
        certificates = cpb.SqlBackend(
            url=self.url("bdc-qzk.db"), table="cqbg", columns=CERTIFICATE_COLUMNS, change_column="bgxh"
        )
        return {
            NEW_BUSINESSES: ("sj-steward", cpb.Binding(resource_code=NEW_BUSINESSES, sql=companies)),
            CERTIFICATE_CHANGES: ("bdc-steward", cpb.Binding(resource_code=CERTIFICATE_CHANGES, sql=certificates)),
        }

    def _run(self, db: str, statement: str) -> None:
        engine = create_engine(self.url(db))
        try:
            with engine.begin() as c:
                c.execute(text(statement))
        finally:
            engine.dispose()


@dataclass(frozen=True)
class Plan:
    """One subscription of the tour: who applies and subscribes, to what, why, and what it receives."""

    clerk: str
    system: str
    resource: str
    purpose: str
    legal_basis: str
    fields: tuple[str, ...]
    masks: tuple[tuple[str, rpb.MaskKind.ValueType], ...]


PLANS = (
    Plan("sw-clerk", "sw-zgxt", NEW_BUSINESSES, TAX_SOURCES, "《中华人民共和国税收征收管理法》第十五条",
         ("credit_code", "company_name", "legal_representative", "representative_id_number", "registered_capital",
          "established_on"), (("representative_id_number", rpb.MASK_KIND_ID_NUMBER),)),
    Plan("sw-clerk", "sw-zgxt", CERTIFICATE_CHANGES, TAX_SOURCES, "《中华人民共和国契税法》第十三条",
         ("change_no", "certificate_no", "change_type", "owner_name", "owner_id_number", "area_m2"),
         (("owner_id_number", rpb.MASK_KIND_ID_NUMBER),)),
    Plan("bdc-clerk", "bdc-djxt", NEW_BUSINESSES, TRANSFER, "《不动产登记暂行条例》第二十五条",
         ("credit_code", "company_name", "company_type", "address"), ()),
)  # fmt: skip
OWNERS = {NEW_BUSINESSES: "sj-steward", CERTIFICATE_CHANGES: "bdc-steward"}


def _step(title: str) -> None:
    print(f"\n== {title}")


class SubscriptionTour:
    """Three steps of the demo: subscribable sources and their grants, changes followed, who sees what of them."""

    def __init__(self, tour: TourParts, sources: Sources) -> None:
        self.tour = tour
        self.sources = sources
        self.ids: dict[Plan, str] = {}  # each plan's subscription id

    def system(self, code: str) -> Path:
        return self.tour.home.identity(m.PrincipalRef(m.PrincipalKind.SYSTEM, code)).directory

    def run(self, first_step: int) -> None:
        self.sources.create()
        self.subscribe(first_step)
        self.follow(first_step + 1)
        self.owners(first_step + 2)

    def subscribe(self, step: int) -> None:
        _step(
            f"{step}. Subscriptions: market regulation and the registry bind tables with a change column;\n"
            "   the tax bureau applies for new companies and certificate changes (税源登记: a new company is a new\n"
            "   taxpayer, a new owner owes the property tax), the registry for new companies (不动产转移登记:\n"
            "   founders put flats into new companies as capital; the registry checks the company, not a licence copy)"
        )
        for code, (steward, binding) in self.sources.bindings().items():
            with self.tour.client(self.tour.identity_of(steward)) as hub:
                hub.call(
                    hub.catalog.SetBinding, cpb.SetBindingRequest(binding=binding, reason="接入共享平台，提供变更订阅")
                )
            print(
                f"  {steward:<11} bound {code} to table {binding.sql.table}, change column {binding.sql.change_column}"
            )
        grants = [self._grant(plan) for plan in PLANS]
        print()
        print(tables.render(["grant", "resource", "system", "purpose", "masks"], grants))
        for plan in PLANS:
            request = spb.CreateSubscriptionRequest(
                resource_code=plan.resource, purpose=plan.purpose, fields=plan.fields
            )
            with self.tour.client(self.system(plan.system)) as hub:
                created = hub.call(hub.subscriptions.CreateSubscription, request).subscription
            self.ids[plan] = created.id
        print(
            f"\n  {len(PLANS)} subscriptions, each made with its system's certificate, from now:"
            " rows already there are not sent"
        )

    def _grant(self, plan: Plan) -> list[str]:
        """The rights workflow for one plan: the clerk applies, the owner approves with masks, the manager grants."""
        today = dt.date.today()
        application = m.Application(
            plan.resource, "", (plan.system,), plan.purpose, plan.legal_basis, plan.fields, today,
            today + dt.timedelta(days=365), 100,
        )  # fmt: skip
        with self.tour.client(self.tour.identity_of(plan.clerk)) as clerk:
            applied = clerk.call(clerk.rights.Apply, rpb.ApplyRequest(request=w.application_to_wire(application)))
        masks = [rpb.FieldMask(field=f, mask=k) for f, k in plan.masks]
        with self.tour.client(self.tour.identity_of(OWNERS[plan.resource])) as owner:
            owner.call(owner.rights.Approve, rpb.ApproveRequest(id=applied.id, masks=masks, reason="同意"))
        with self.tour.client(self.tour.identity_of("sm-lin")) as manager:
            grant = manager.call(manager.rights.IssueGrant, rpb.IssueGrantRequest(request_id=applied.id))
        shown = ", ".join(f"{f} ({w.MASK.label(k)})" for f, k in plan.masks) or "-"
        return [grant.id, plan.resource, plan.system, plan.purpose, shown]

    def follow(self, step: int) -> None:
        _step(
            f"{step}. Market regulation registers two companies, the registry records two certificate changes;\n"
            "   each system follows its subscriptions, stores what arrives and acknowledges it"
        )
        self.sources.register(NEW_COMPANIES)
        self.sources.record(NEW_CERTIFICATES)
        for plan in PLANS:
            self._follow(plan, 2)

    def _follow(self, plan: Plan, count: int) -> None:
        """Follows until ``count`` changes arrived, acknowledging each batch, and prints them as received."""
        sid = self.ids[plan]
        received: list[tuple[spb.SubscriptionChange, spb.ChangeBatch]] = []
        with self.tour.client(self.system(plan.system)) as hub:
            call = hub.subscriptions.Follow(spb.FollowRequest(id=sid), timeout=WAIT_SECONDS)
            try:
                for message in call:
                    if message.HasField("gap"):
                        raise AssertionError(f"{sid}: unexpected gap: {message.gap.message}")
                    received += [(c, message.batch) for c in message.batch.changes]
                    ack = spb.AcknowledgeRequest(id=sid, sequence=message.batch.last_sequence)
                    hub.call(hub.subscriptions.Acknowledge, ack)
                    if len(received) >= count:
                        break
            finally:
                cast(
                    "grpc.Future[object]", call
                ).cancel()  # ends the follow: the hub frees the subscription for the next follower at once
        masks = dict(received[0][1].disclosure.masks)
        batches = dict.fromkeys(b.exchange_id for _, b in received)
        print(f"\n  {plan.system} <- {plan.resource} ({plan.purpose}), {sid}: {len(received)} change(s) in "
              f"{len(batches)} batch(es) {', '.join(batches)}, acknowledged")  # fmt: skip
        headers = ["seq", "kind"] + [f"{f} ({masks[f]} mask)" if f in masks else f for f in plan.fields]
        kinds = {spb.CHANGE_KIND_UPSERT: "upsert", spb.CHANGE_KIND_DELETE: "delete"}
        rows = []
        for change, _ in received:
            record = values.record_from_wire(change.record)
            rows.append(
                [str(change.sequence), kinds.get(change.kind, "?"), *(str(record.get(f, "")) for f in plan.fields)]
            )
        print(tables.render(headers, rows, max_column=36))

    def owners(self, step: int) -> None:
        _step(
            f"{step}. Each owner's steward sees who subscribes to its data and where delivery stands\n"
            "   (one more company was registered meanwhile: pending until its subscribers follow again);\n"
            "   the auditor finds one record per batch delivered"
        )
        self.sources.register([LATE_COMPANY])
        self._await_pending([p for p in PLANS if p.resource == NEW_BUSINESSES])
        for resource, steward in OWNERS.items():
            request = spb.ListSubscriptionsRequest(resource_code=resource)
            with self.tour.client(self.tour.identity_of(steward)) as hub:
                listed = hub.call(hub.subscriptions.ListSubscriptions, request)
            print(f"\n  as {steward} sees {resource}:")
            print(tables.render(subscriptions_cli.HEADERS, subscriptions_cli.rows(listed.subscriptions)))
        self._audit()

    def _await_pending(self, plans: Sequence[Plan]) -> None:
        """Waits (bounded) until the hub has taken the late change from the source for each of ``plans``."""
        deadline = time.monotonic() + WAIT_SECONDS
        with self.tour.client(self.tour.identity_of(OWNERS[NEW_BUSINESSES])) as hub:
            for plan in plans:
                get = spb.GetSubscriptionRequest(id=self.ids[plan])
                while hub.call(hub.subscriptions.GetSubscription, get).subscription.pending < 1:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the hub took no change for {self.ids[plan]} in {WAIT_SECONDS:g} s")
                    time.sleep(0.1)

    def _audit(self) -> None:
        self.tour.audit_log.flush()
        keys = ("logged", "actor", "action", "resource", "purpose", "masks", "rows", "reason")
        rows: list[list[str]] = []
        with self.tour.client(self.tour.identity_of("au-chen")) as auditor:
            for resource in OWNERS:
                request = apb.SearchRecordsRequest(resource_code=resource, page_size=50)
                for e in auditor.call(auditor.audit.SearchRecords, request).entries:
                    record = json.loads(e.record)
                    if record.get("action") == "subscription":
                        rows.append([str(e.seq), *(_cell(record.get(k)) for k in keys)])
        print(f"\n  as au-chen finds the batches in the audit log ({len(rows)} records):")
        print(tables.render(["seq", *keys], sorted(rows, key=lambda r: int(r[0])), max_column=60))

    def follow_hint(self, port: int) -> str:
        """The CLI command that follows the tax bureau's subscription to new companies (one change pending)."""
        plan = PLANS[0]
        return (
            f"  .venv/bin/exchange --hub localhost:{port} --identity {self.system(plan.system)}"
            f" subscribe follow {self.ids[plan]} --max-changes 1"
        )


def _cell(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return "-" if value in (None, "") else str(value)
