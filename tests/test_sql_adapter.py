"""The SQL adapter against real front-end databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from adapters.base import FetchRequest, ProviderContractError, ProviderTimeout, ProviderUnavailable
from adapters.sql import SqlAdapter, SqlBinding
from exchange import models as m
from exchange.errors import InvalidArgument
from tests.harness import identity_spec

SPEC = identity_spec(
    data_items=(
        m.DataItem("name", "姓名", m.FieldType.STRING),
        m.DataItem("id_number", "公民身份号码", m.FieldType.STRING, filterable=True),
        m.DataItem("birth_date", "出生日期", m.FieldType.DATE),
        m.DataItem("household", "户号", m.FieldType.INTEGER),
    )
)
COLUMNS = {"name": "xm", "id_number": "sfzh", "birth_date": "csrq", "household": "hh"}


@pytest.fixture(params=["sqlite", "postgresql"])
def frontend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = (
        f"sqlite:///{tmp_path / 'frontend.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE rk (xm TEXT, sfzh TEXT, csrq DATE, hh INTEGER, bad TEXT)"))
        c.execute(
            text(
                "INSERT INTO rk VALUES ('张三', '350203198001012345', '1980-01-01', 7, 'x'),"
                " ('李四', '350203199002023456', '1990-02-02', 8, 'y')"
            )
        )
        if engine.dialect.name == "postgresql":
            c.execute(text("CREATE VIEW slow AS SELECT xm, sfzh FROM rk, pg_sleep(3) AS s"))
        else:
            c.execute(
                text(
                    "CREATE VIEW slow AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                    " WHERE i < 100000000) SELECT rk.xm, rk.sfzh FROM rk, n WHERE n.i = 100000000"
                )
            )
    engine.dispose()
    yield url


def _request(**changes: object) -> FetchRequest:
    base = FetchRequest(SPEC, {"id_number": "350203198001012345"}, ("name", "birth_date"), 10, 5.0)
    return FetchRequest(**{**base.__dict__, **changes})


def test_fetches_declared_fields_by_declared_filters(frontend: str) -> None:
    adapter = SqlAdapter("公安前置库", SqlBinding(frontend, "rk", COLUMNS))
    rows = adapter.fetch(_request())
    assert rows == [{"name": "张三", "birth_date": dt.date(1980, 1, 1)}]
    assert adapter.fetch(_request(filters={"id_number": "' OR '1'='1"})) == []  # bound, never spliced
    with pytest.raises(InvalidArgument, match="name cannot be filtered on"):
        adapter.fetch(_request(filters={"name": "张三"}))
    with pytest.raises(InvalidArgument, match="at least one filter"):
        adapter.fetch(_request(filters={}))


def test_it_cannot_write(frontend: str) -> None:
    adapter = SqlAdapter("公安前置库", SqlBinding(frontend, "rk", COLUMNS))
    adapter.fetch(_request())
    with pytest.raises(SQLAlchemyError), adapter._engine.connect() as c:
        c.execute(text("DELETE FROM rk"))


def test_answers_outside_the_declaration_are_caught(frontend: str) -> None:
    wrong_type = SqlAdapter("公安前置库", SqlBinding(frontend, "rk", {**COLUMNS, "household": "bad"}))
    with pytest.raises(ProviderContractError, match="household is str, not integer"):
        wrong_type.fetch(_request(fields=("household",)))
    no_column = SqlAdapter("公安前置库", SqlBinding(frontend, "rk", {**COLUMNS, "name": "nope"}))
    with pytest.raises(ProviderContractError):
        no_column.fetch(_request())


def test_slow_or_missing_providers_fail_cleanly(frontend: str, tmp_path: Path) -> None:
    slow = SqlAdapter("公安前置库", SqlBinding(frontend, "slow", {"name": "xm", "id_number": "sfzh"}))
    started = dt.datetime.now()
    with pytest.raises(ProviderTimeout, match="公安前置库"):
        slow.fetch(_request(fields=("name",), timeout_seconds=0.3))
    assert (dt.datetime.now() - started).total_seconds() < 2.5
    gone = SqlAdapter("住建前置库", SqlBinding(f"sqlite:///{tmp_path / 'missing' / 'x.db'}", "rk", COLUMNS))
    with pytest.raises(ProviderUnavailable, match="住建前置库"):
        gone.fetch(_request())


def test_pages_and_streams_in_a_stable_order(frontend: str) -> None:
    adapter = SqlAdapter("公安前置库", SqlBinding(frontend, "rk", COLUMNS))
    everyone = FetchRequest(SPEC, {"birth_date": dt.date(1990, 2, 2)}, ("name",), 10, 5.0)
    with pytest.raises(InvalidArgument, match="birth_date cannot be filtered on"):
        adapter.fetch(everyone)
    spec = identity_spec(
        data_items=tuple(m.DataItem(i.name, i.title, i.type, filterable=True) for i in SPEC.data_items)
    )
    request = FetchRequest(spec, {"household": 7}, ("name",), 1, 5.0)
    first, second = adapter.fetch(request), adapter.fetch(FetchRequest(**{**request.__dict__, "offset": 1}))
    assert first == [{"name": "张三"}] and second == []
    assert list(adapter.stream(FetchRequest(spec, {"household": 8}, ("name", "id_number"), 0, 5.0), 1)) == [
        [{"name": "李四", "id_number": "350203199002023456"}]
    ]
