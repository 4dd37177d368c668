"""A hub with the flat-sale members, for exchange tests: who owns what, who may read it, through which grant."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, text

from exchange import models as m
from exchange import wire as w
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import exchange_pb2_grpc
from exchange.v1 import rights_pb2 as rpb
from tests.harness import AUTHORITY, HOUSING, POLICE, RunningHub, identity_spec, today

REGISTRY = m.Department("11350200MB00456789", "厦门市不动产登记中心", "350200", m.AdministrativeLevel.CITY)
PURPOSE = "不动产转移登记"


@dataclass
class World:
    hub: RunningHub
    people: dict[str, Path] = field(default_factory=dict)
    consumer_system: Path = Path()

    def publish(self, owner: str, spec: m.ResourceSpec) -> None:
        self.hub.publish(self.people[owner], spec)

    def bind(self, owner: str, binding: cpb.Binding) -> cpb.Binding:
        with self.hub.client(self.people[owner]) as c:
            return c.call(c.catalog.SetBinding, cpb.SetBindingRequest(binding=binding, reason="接入前置库"))

    def grant(
        self,
        resource: str,
        fields: tuple[str, ...],
        owner: str,
        masks: tuple[tuple[str, int], ...] = (),
        *,
        quota: int = 0,
        rate: int = 0,
        verify_masked: tuple[str, ...] = (),
    ) -> str:
        """Applies as the registry, approves as ``owner`` with ``masks`` (``verify_masked``: masked items it lets
        be filtered on), issues as the share manager."""
        app = m.Application(
            resource_code=resource,
            consumer_department_code="",
            system_codes=("bdc-djxt",),
            purpose=PURPOSE,
            legal_basis="《不动产登记暂行条例实施细则》第十一条",
            fields=fields,
            start=today(),
            end=today() + dt.timedelta(days=30),
            expected_daily_calls=1000,
        )
        with self.hub.client(self.people["consumer"]) as c:
            applied = c.call(c.rights.Apply, rpb.ApplyRequest(request=w.application_to_wire(app)))
        if applied.grant_id:
            return str(applied.grant_id)
        mask_list = [rpb.FieldMask(field=f, mask=k) for f, k in masks]  # type: ignore[arg-type]
        with self.hub.client(self.people[owner]) as c:
            approval = rpb.ApproveRequest(
                id=applied.id, masks=mask_list, reason="符合条件", verify_masked=verify_masked
            )
            c.call(c.rights.Approve, approval)
        with self.hub.client(self.people["manager"]) as c:
            issued = c.call(
                c.rights.IssueGrant,
                rpb.IssueGrantRequest(request_id=applied.id, daily_quota=quota, rate_per_second=rate),
            )
        return str(issued.id)

    def exchange(self, identity: Path | None = None) -> exchange_pb2_grpc.ExchangeServiceStub:
        client = self.hub.client(identity or self.consumer_system)
        return exchange_pb2_grpc.ExchangeServiceStub(client.channel)


def make_world(hub: RunningHub) -> World:
    for d in (POLICE, HOUSING, REGISTRY):
        hub.add_department(d)
    world = World(hub)
    world.people = {
        "police": hub.add_person("ga-steward", POLICE.code, m.Role.OWNER_STEWARD),
        "housing": hub.add_person("zj-steward", HOUSING.code, m.Role.OWNER_STEWARD),
        "consumer": hub.add_person("bdc-clerk", REGISTRY.code, m.Role.CONSUMER),
        "manager": hub.add_person("sm-lin", AUTHORITY.code, m.Role.SHARE_MANAGER),
        "auditor": hub.add_person("au-chen", AUTHORITY.code, m.Role.AUDITOR),
    }
    world.consumer_system = hub.add_system("bdc-djxt", REGISTRY.code)
    return world


def every_caller(world: World) -> dict[str, Path]:
    """One identity of every kind of caller the separation-of-duties tests try, made in ``world``'s hub:
    the operator, the resource's and an uninvolved department's stewards, the applicant's and an
    uninvolved department's consumers, the share manager, the auditor, the granted system, a system
    without a grant, and a police person whose every role was taken away."""
    hub = world.hub
    identities = {
        "operator": hub.operator,
        "owner_steward": world.people["police"],
        "foreign_steward": world.people["housing"],
        "consumer": world.people["consumer"],
        "foreign_consumer": hub.add_person("zj-clerk", HOUSING.code, m.Role.CONSUMER),
        "share_manager": world.people["manager"],
        "auditor": world.people["auditor"],
        "system": world.consumer_system,
        "foreign_system": hub.add_system("zj-zfxt", HOUSING.code),
        "no_role": hub.add_person("ga-idle", POLICE.code, m.Role.CONSUMER),
    }
    hub.take_every_role("ga-idle")
    return identities


def query(resource: str, filters: dict[str, str], fields: list[str], **changes: Any) -> xpb.QueryRequest:
    return xpb.QueryRequest(
        resource_code=resource, purpose=changes.pop("purpose", PURPOSE), filters=filters, fields=fields, **changes
    )


def fails(code: grpc.StatusCode, call: Any, *args: Any, **kwargs: Any) -> grpc.Call:
    """Runs ``call`` (consuming a stream), expecting it to end with ``code``; returns the error."""
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, timeout=kwargs.pop("timeout", 20), **kwargs)
        if not hasattr(result, "exchange_id"):
            list(result)
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == code, f"{error.code()}: {error.details()}"
    return error


# A resident lookup served from a police front-end database: what the operations, crash and scale-out tests load.
LOOKUP = "10101/350200000001"
PERSON_ID = "350203198001012345"


def serve_lookup(
    world: World, directory: Path, *, quota: int = 0, rate: int = 0, names: Sequence[str] = ("张三",)
) -> str:
    """Publishes the lookup, binds it to a new SQLite front-end database in ``directory``, grants it; the grant id.

    Each of ``names`` is one record of PERSON_ID (many, or long ones, make a large answer).
    """
    url = f"sqlite:///{directory / 'ga-qzk.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE rk (name TEXT, id_number TEXT)"))
        c.execute(text("INSERT INTO rk VALUES (:name, :id)"), [{"name": n, "id": PERSON_ID} for n in names])
    engine.dispose()
    items = (
        m.DataItem("name", "姓名", m.FieldType.STRING),
        m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, filterable=True),
    )
    world.publish("police", identity_spec(LOOKUP, POLICE.code, data_items=items))
    world.bind("police", cpb.Binding(resource_code=LOOKUP, sql=cpb.SqlBackend(url=url, table="rk")))
    return world.grant(LOOKUP, ("name", "id_number"), "police", quota=quota, rate=rate)


def lookup(person: str = PERSON_ID, **changes: Any) -> xpb.QueryRequest:
    return query(LOOKUP, {"id_number": person}, ["name"], **changes)
