"""Shared fixtures: store backends (SQLite always, PostgreSQL where a server answers) and a running hub."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from exchange.store import Store
from tests.console_support import chromium
from tests.harness import RunningHub, base_settings, running_hub

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _postgres_reachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except OperationalError as e:
        return str(e.orig).strip().splitlines()[0]


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    reason = _postgres_reachable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must test on PostgreSQL, but {PG_ADMIN_URL} does not answer: {reason}")
        pytest.skip(f"PostgreSQL leg skipped: no server at {PG_ADMIN_URL} ({reason})")
    return PG_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"exchange_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    s.db.migrate()
    yield s
    s.close()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[RunningHub]:
    with running_hub(base_settings(tmp_path / "hub")) as h:
        yield h


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright, for one test module: Playwright's sync API keeps an event loop
    running in the main thread while it lives, so it must end before other modules' asyncio code runs (and
    only one may run at a time)."""
    with chromium() as launched:
        yield launched
