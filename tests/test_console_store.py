"""The console's links and sessions in the store, on SQLite and PostgreSQL: a link opens once, whatever races."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

from exchange.store import Store
from exchange.store.console import KEEP_ENDED, Link, SessionRecord
from tests.harness import TEST_RECORD

NOW = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.UTC)


def _session(secret_hash: str, expires: dt.datetime) -> SessionRecord:
    return SessionRecord(
        secret_hash=secret_hash,
        username="zhao",
        fingerprint="f" * 64,
        roles=frozenset({"owner_steward", "consumer"}),
        method="link",
        csrf_token="t" * 43,
        created_at=NOW,
        seen_at=NOW,
        expires_at=expires,
        ended_at=None,
    )


def test_a_link_is_used_once(store: Store) -> None:
    store.console.add_link("a" * 64, Link("zhao", "f" * 64, NOW + dt.timedelta(minutes=5)), NOW, audit=TEST_RECORD)
    link, why = store.console.use_link("a" * 64, NOW)
    assert link is not None and link.username == "zhao" and why == ""
    assert store.console.use_link("a" * 64, NOW) == (None, "used")
    assert store.console.use_link("b" * 64, NOW) == (None, "unknown")


def test_an_expired_link_opens_nothing(store: Store) -> None:
    store.console.add_link("c" * 64, Link("zhao", "f" * 64, NOW + dt.timedelta(minutes=5)), NOW, audit=TEST_RECORD)
    assert store.console.use_link("c" * 64, NOW + dt.timedelta(minutes=6)) == (None, "expired")


def test_racing_openers_get_one_session(store: Store) -> None:
    store.console.add_link("d" * 64, Link("zhao", "f" * 64, NOW + dt.timedelta(minutes=5)), NOW, audit=TEST_RECORD)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: store.console.use_link("d" * 64, NOW), range(8)))
    assert sum(1 for link, _ in results if link is not None) == 1


def test_sessions_are_kept_touched_ended_and_pruned(store: Store) -> None:
    store.console.add_session(_session("e" * 64, NOW + dt.timedelta(hours=8)), audit=TEST_RECORD)
    found = store.console.get_session("e" * 64)
    assert found is not None and found.roles == {"owner_steward", "consumer"} and found.ended_at is None
    store.console.touch("e" * 64, NOW + dt.timedelta(minutes=3))
    touched = store.console.get_session("e" * 64)
    assert touched is not None and touched.seen_at == NOW + dt.timedelta(minutes=3)
    assert store.console.end("e" * 64, NOW + dt.timedelta(minutes=4), audit=TEST_RECORD)
    assert not store.console.end("e" * 64, NOW + dt.timedelta(minutes=5), audit=TEST_RECORD)
    assert store.console.prune(NOW + dt.timedelta(hours=8)) == 0
    assert store.console.prune(NOW + dt.timedelta(hours=9) + KEEP_ENDED) == 1
    assert store.console.get_session("e" * 64) is None


def test_signing_out_is_recorded_and_a_session_found_over_ends_without_a_record(store: Store) -> None:
    store.console.add_session(_session("f" * 64, NOW + dt.timedelta(hours=8)), audit=TEST_RECORD)
    store.console.add_session(_session("0" * 64, NOW + dt.timedelta(hours=8)), audit=TEST_RECORD)
    assert store.audit.staged_count() == 2
    assert store.console.end("f" * 64, NOW, audit=TEST_RECORD)
    assert store.audit.staged_count() == 3
    assert store.console.expire("0" * 64, NOW)
    assert not store.console.expire("0" * 64, NOW)
    assert store.audit.staged_count() == 3
    ended = [store.console.get_session(h) for h in ("f" * 64, "0" * 64)]
    assert [s.ended_at if s else None for s in ended] == [NOW, NOW]
