"""The store suite: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select

from exchange import models as m
from exchange.errors import Aborted, AlreadyExists, DeadlineExceeded, NotFound
from exchange.paging import page_request
from exchange.store import Store
from exchange.store.catalog import ResourceFilter, Transition
from exchange.store.database import deadline
from exchange.store.schema import Base, DepartmentRow, ResourceRow, ResourceVersionRow
from tests.harness import AUTHORITY, HOUSING, POLICE, TEST_RECORD, identity_spec

OPERATOR = m.PrincipalRef(m.PrincipalKind.PERSON, "op-admin")
STEWARD = m.PrincipalRef(m.PrincipalKind.PERSON, "ga-steward")


def _page(size: int = 50, token: str = "", **filters: object) -> object:
    return page_request(size, token, filters)


@pytest.fixture
def populated(store: Store) -> Store:
    for d in (AUTHORITY, POLICE, HOUSING):
        store.registry.add_department(d, audit=TEST_RECORD)
    store.registry.add_person(
        m.Person("ga-steward", "张警官", POLICE.code, frozenset({m.Role.OWNER_STEWARD})), audit=TEST_RECORD
    )
    return store


def test_migrations_create_exactly_the_models_schema(store: Store) -> None:
    with store.db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    assert store.db.is_current()


def test_migrate_twice_is_harmless(store: Store) -> None:
    store.db.migrate()
    assert store.db.is_current()


def test_migrations_started_together_take_turns(postgres_url: str, tmp_path: Path) -> None:
    """Four `exchange migrate` at once on an empty PostgreSQL database (a rollout's pods): all succeed, once."""
    env = {**os.environ, "EXCHANGE_DATABASE_URL": postgres_url}
    command = [sys.executable, "-m", "exchange.cli.main", "--home", str(tmp_path), "migrate"]
    runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(4)]
    outputs = [r.communicate(timeout=120)[0].decode(errors="replace") for r in runs]
    assert [r.returncode for r in runs] == [0, 0, 0, 0], outputs
    store = Store(postgres_url)
    try:
        assert store.db.is_current()
    finally:
        store.close()


def test_department_round_trip_and_parent(populated: Store) -> None:
    child = m.Department(
        "11350203MB0078901M",
        "厦门市思明区市场监督管理局",
        "350203",
        m.AdministrativeLevel.COUNTY,
        parent_code=POLICE.code,
    )
    stored = populated.registry.add_department(child, audit=TEST_RECORD)
    assert stored.parent_code == POLICE.code
    assert stored.created_at is not None and stored.created_at.tzinfo is not None
    assert populated.registry.get_department(child.code) == stored
    children = populated.registry.list_departments(page_request(0, "", {}), parent_code=POLICE.code)
    assert [d.code for d in children.items] == [child.code]


def test_duplicate_department_code_or_name_refused_and_nothing_written(populated: Store) -> None:
    with pytest.raises(AlreadyExists, match="already exists"):
        populated.registry.add_department(replace(POLICE, name="另一个名字"), audit=TEST_RECORD)
    with pytest.raises(AlreadyExists, match="name"):
        populated.registry.add_department(replace(POLICE, code="11350200MB0067890U"), audit=TEST_RECORD)
    listed = populated.registry.list_departments(page_request(0, "", {}))
    assert len(listed.items) == 3


def test_unknown_department_references_are_not_found(populated: Store) -> None:
    with pytest.raises(NotFound, match="11350200MB0067890U"):
        populated.registry.add_system(m.System("x-sys", "系统", "11350200MB0067890U"), audit=TEST_RECORD)
    with pytest.raises(NotFound):
        populated.registry.add_department(
            replace(HOUSING, code="11350200MB00567892", name="税务", parent_code="11350200MB0067890U"),
            audit=TEST_RECORD,
        )
    assert populated.registry.list_systems(page_request(0, "", {})).items == []


def test_systems_and_people(populated: Store) -> None:
    populated.registry.add_system(m.System("ga-rkxx", "人口信息管理系统", POLICE.code, "户籍"), audit=TEST_RECORD)
    with pytest.raises(AlreadyExists):
        populated.registry.add_system(m.System("ga-rkxx", "别的系统", POLICE.code), audit=TEST_RECORD)
    with pytest.raises(AlreadyExists, match="system name"):
        populated.registry.add_system(m.System("ga-other", "人口信息管理系统", POLICE.code), audit=TEST_RECORD)
    assert populated.registry.get_system("ga-rkxx").department_code == POLICE.code
    person = populated.registry.get_person("ga-steward")
    assert person.roles == frozenset({m.Role.OWNER_STEWARD})
    stewards = populated.registry.list_people(page_request(0, "", {}), role=m.Role.OWNER_STEWARD)
    assert [p.username for p in stewards.items] == ["ga-steward"]
    assert populated.registry.list_people(page_request(0, "", {}), role=m.Role.AUDITOR).items == []


def test_pagination_visits_every_item_once(populated: Store) -> None:
    for i in range(7):
        populated.registry.add_system(m.System(f"sys-{i:02d}", f"系统{i}", HOUSING.code), audit=TEST_RECORD)
    seen: list[str] = []
    token = ""
    while True:
        page = populated.registry.list_systems(page_request(3, token, {"department": HOUSING.code}), HOUSING.code)
        seen += [s.code for s in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"sys-{i:02d}" for i in range(7)]


def _certificate(fingerprint: str, ref: m.PrincipalRef, days: int = 30) -> m.CertificateRecord:
    now = dt.datetime.now(dt.UTC)
    return m.CertificateRecord(
        fingerprint[:16], fingerprint, ref, now - dt.timedelta(days=1), now + dt.timedelta(days=days), "PEM"
    )


def test_certificate_maps_to_its_principal_only_while_valid(populated: Store) -> None:
    populated.registry.add_certificate(_certificate("a" * 64, STEWARD), audit=TEST_RECORD)
    now = dt.datetime.now(dt.UTC)
    principal = populated.registry.principal_for_certificate("a" * 64, now)
    assert principal is not None and principal.ref == STEWARD and principal.department_code == POLICE.code
    assert populated.registry.principal_for_certificate("a" * 64, now + dt.timedelta(days=31)) is None
    assert populated.registry.principal_for_certificate("b" * 64, now) is None
    with pytest.raises(NotFound):
        populated.registry.add_certificate(
            _certificate("c" * 64, m.PrincipalRef(m.PrincipalKind.SYSTEM, "nobody")), audit=TEST_RECORD
        )
    with pytest.raises(AlreadyExists, match="already exists"):
        populated.registry.add_certificate(_certificate("a" * 64, STEWARD), audit=TEST_RECORD)


def test_resource_create_update_and_history(populated: Store) -> None:
    created = populated.catalog.create(identity_spec(), m.ResourceStatus.DRAFT, STEWARD, "编目", audit=TEST_RECORD)
    assert (created.version, created.status, created.published_at) == (1, m.ResourceStatus.DRAFT, None)
    assert populated.catalog.get(created.spec.code) == created

    changed = identity_spec(name="居民身份核验信息", summary="更新")
    updated = populated.catalog.change(
        created.spec.code,
        1,
        STEWARD,
        "改名",
        lambda cur: Transition(changed, cur.status, m.ResourceChange.UPDATED),
        audit=TEST_RECORD,
    )
    assert updated.version == 2 and updated.spec.name == "居民身份核验信息"
    published = populated.catalog.change(
        created.spec.code,
        0,
        STEWARD,
        "",
        lambda cur: Transition(cur.spec, m.ResourceStatus.PUBLISHED, m.ResourceChange.PUBLISHED),
        audit=TEST_RECORD,
    )
    assert published.published_at is not None and published.version == 3

    assert populated.catalog.get(created.spec.code, version=1) == created
    assert populated.catalog.get(created.spec.code, version=2).spec == changed
    history = populated.catalog.versions(created.spec.code, page_request(2, "", {"code": created.spec.code}))
    assert [(v.version, v.change) for v in history.items] == [
        (1, m.ResourceChange.CREATED),
        (2, m.ResourceChange.UPDATED),
    ]
    rest = populated.catalog.versions(
        created.spec.code, page_request(2, history.next_page_token, {"code": created.spec.code})
    )
    assert [(v.version, v.actor, v.reason) for v in rest.items] == [(3, STEWARD, "")]
    with pytest.raises(NotFound):
        populated.catalog.get(created.spec.code, version=9)


def test_stale_version_is_aborted_and_refusal_writes_nothing(populated: Store) -> None:
    populated.catalog.create(identity_spec(), m.ResourceStatus.PUBLISHED, STEWARD, "", audit=TEST_RECORD)
    with pytest.raises(Aborted, match="version 1, not 5"):
        populated.catalog.change(
            "10101/350200000001",
            5,
            STEWARD,
            "",
            lambda c: Transition(c.spec, c.status, m.ResourceChange.UPDATED),
            audit=TEST_RECORD,
        )

    def refuse(current: m.Resource) -> Transition:
        raise NotFound("anything", "x")

    with pytest.raises(NotFound):
        populated.catalog.change("10101/350200000001", 0, STEWARD, "", refuse, audit=TEST_RECORD)
    assert populated.catalog.get("10101/350200000001").version == 1
    with populated.db.read() as s:
        assert s.scalar(select(func.count()).select_from(ResourceVersionRow)) == 1


def test_concurrent_changes_each_get_their_own_version(populated: Store) -> None:
    populated.catalog.create(identity_spec(), m.ResourceStatus.PUBLISHED, STEWARD, "", audit=TEST_RECORD)
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(5):
                populated.catalog.change(
                    "10101/350200000001",
                    0,
                    STEWARD,
                    "",
                    lambda c: Transition(c.spec, c.status, m.ResourceChange.UPDATED),
                    audit=TEST_RECORD,
                )
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    versions = populated.catalog.versions("10101/350200000001", page_request(100, "", {"code": "x"}))
    # SQLite queues writers (BEGIN IMMEDIATE); PostgreSQL locks the row: no version is lost or doubled.
    assert [v.version for v in versions.items] == list(range(1, 22))


def test_resource_uniqueness_and_references(populated: Store) -> None:
    populated.catalog.create(identity_spec(), m.ResourceStatus.PUBLISHED, STEWARD, "", audit=TEST_RECORD)
    with pytest.raises(AlreadyExists):
        populated.catalog.create(identity_spec(name="别名"), m.ResourceStatus.DRAFT, STEWARD, "", audit=TEST_RECORD)
    with pytest.raises(AlreadyExists, match="resource name"):
        populated.catalog.create(
            identity_spec(code="10101/350200000002"), m.ResourceStatus.DRAFT, STEWARD, "", audit=TEST_RECORD
        )
    with pytest.raises(NotFound, match="related resource"):
        populated.catalog.create(
            identity_spec(code="10101/350200000003", name="其他", related_resource_codes=("99999/000000000001",)),
            m.ResourceStatus.DRAFT,
            STEWARD,
            "",
            audit=TEST_RECORD,
        )
    listed = populated.catalog.list(page_request(0, "", {}), ResourceFilter())
    assert [r.spec.code for r in listed.items] == ["10101/350200000001"]


def test_search_by_department_share_type_text_and_field(populated: Store) -> None:
    populated.catalog.create(identity_spec(), m.ResourceStatus.PUBLISHED, STEWARD, "", audit=TEST_RECORD)
    housing = identity_spec(
        code="20301/350200000001",
        department=HOUSING.code,
        name="存量房网签备案信息",
        summary="用于不动产转移登记",
        share_type=m.ShareType.UNCONDITIONAL,
        share_conditions="",
        legal_basis="",
        data_items=(m.DataItem("contract_no", "合同备案号", m.FieldType.STRING),),
    )
    populated.catalog.create(housing, m.ResourceStatus.PUBLISHED, STEWARD, "", audit=TEST_RECORD)
    populated.catalog.create(
        identity_spec(code="10101/350200000009", name="草稿", summary="不动产"),
        m.ResourceStatus.DRAFT,
        STEWARD,
        "",
        audit=TEST_RECORD,
    )

    def codes(**f: object) -> list[str]:
        query = ResourceFilter(**f)  # type: ignore[arg-type]
        return [r.spec.code for r in populated.catalog.list(page_request(0, "", {}), query).items]

    everyone = (m.ResourceStatus.DRAFT, m.ResourceStatus.PUBLISHED)
    assert codes(statuses=everyone) == ["10101/350200000001", "20301/350200000001"]
    assert codes(statuses=everyone, viewer_department=POLICE.code) == [
        "10101/350200000001",
        "10101/350200000009",
        "20301/350200000001",
    ]
    assert codes(department_code=HOUSING.code) == ["20301/350200000001"]
    assert codes(share_type=m.ShareType.CONDITIONAL) == ["10101/350200000001"]
    assert codes(text="不动产") == ["20301/350200000001"]
    assert codes(text="%") == []
    assert codes(field_name="id_number") == ["10101/350200000001"]
    assert codes(field_name="合同备案号") == ["20301/350200000001"]
    assert codes(statuses=(m.ResourceStatus.RETIRED,)) == []


def test_a_write_waiting_on_a_lock_ends_with_the_callers_deadline(populated: Store) -> None:
    populated.catalog.create(identity_spec(), m.ResourceStatus.PUBLISHED, STEWARD, "", audit=TEST_RECORD)
    holder = populated.db.write()
    session = holder.__enter__()  # another writer holds the lock
    try:
        session.execute(
            select(ResourceRow).where(ResourceRow.code == "10101/350200000001").with_for_update(of=ResourceRow)
        )
        session.get(ResourceRow, 1)
        with deadline(0.3), pytest.raises(DeadlineExceeded):
            populated.catalog.change(
                "10101/350200000001",
                0,
                STEWARD,
                "",
                lambda c: Transition(c.spec, c.status, m.ResourceChange.UPDATED),
                audit=TEST_RECORD,
            )
    finally:
        holder.__exit__(None, None, None)
    with deadline(0), pytest.raises(DeadlineExceeded):
        populated.catalog.get("10101/350200000001")
    assert populated.catalog.get("10101/350200000001").version == 1


def test_a_read_sees_one_snapshot(populated: Store) -> None:
    """Every statement of one read sees the store as it was when the read began, on every backend: a count and
    the list it counts agree even while another transaction commits between them."""
    registry = m.Department("11350200MB00456789", "厦门市不动产登记中心", "350200", m.AdministrativeLevel.CITY)
    with populated.db.read() as s:
        before = s.scalar(select(func.count()).select_from(DepartmentRow))
        writer = threading.Thread(
            target=populated.registry.add_department, args=(registry,), kwargs={"audit": TEST_RECORD}
        )
        writer.start()
        writer.join()
        assert populated.registry.get_department(registry.code).name == registry.name  # committed, seen outside
        assert s.scalar(select(func.count()).select_from(DepartmentRow)) == before == 3
        assert set(s.scalars(select(DepartmentRow.code))) == {AUTHORITY.code, POLICE.code, HOUSING.code}
    with populated.db.read() as s:
        assert s.scalar(select(func.count()).select_from(DepartmentRow)) == 4
