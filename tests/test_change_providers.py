"""A provider's changes, for subscriptions: the kit's ListChanges and the hub's checks, over mutual TLS on loopback.

The provider kit serves whatever a department's changes function yields; the hub's gRPC backend
checks it: records as declared, cursors never empty nor repeated, numbered changes without gaps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from adapters import grpc_backend
from adapters.base import (
    ChangeBatch,
    ChangeRequest,
    ChangesSkipped,
    ProviderContractError,
    ProviderUnavailable,
    SourceWentBack,
    Unsupported,
)
from adapters.factory import BackendContext, ClientTls
from adapters.grpc_backend import GrpcBackend
from adapters.grpc_changes import wrap
from adapters.provider import ChangesQuery, Provider, ProviderChange, ProviderQuery, Row, serve
from exchange import models as m
from exchange import pki
from exchange.errors import InvalidArgument
from tests.harness import HOUSING, identity_spec

SYSTEM = "zj-wqba"
PROVIDER = "厦门市住房和建设局"
CONTRACTS = identity_spec(
    code="20301/350200000001",
    department=HOUSING.code,
    name="存量房买卖合同网签备案信息",
    data_items=(
        m.DataItem("contract_no", "合同备案号", m.FieldType.STRING, filterable=True),
        m.DataItem("district", "所在区", m.FieldType.STRING, filterable=True),
        m.DataItem("price", "成交价格（元）", m.FieldType.DECIMAL),
    ),
)
FIELDS = ("contract_no", "price")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ClientTls, Path]:
    """The hub's client certificate, and the identity directory zj-wqba serves with."""
    ca_key, ca_cert = pki.create_ca("Test exchange CA")
    ca = pki.cert_pem(ca_cert)
    hub_key, hub_cert = pki.issue_server_certificate(ca_key, ca_cert, ("localhost",))
    system_key = pki.new_key()
    ref = m.PrincipalRef(m.PrincipalKind.SYSTEM, SYSTEM)
    system_cert = pki.sign_csr(ca_key, ca_cert, pki.make_csr(system_key, ref), ref, days=30)
    identity = tmp_path_factory.mktemp("pki") / SYSTEM
    pki.IdentityFiles(identity).write(system_key, pki.cert_pem(system_cert), ca)
    return ClientTls(pki.key_pem(hub_key), pki.cert_pem(hub_cert), ca), identity


@dataclass
class ChangeLog:
    """A department's change log: what its changes function yields, in order, after the cursor asked for."""

    entries: list[ProviderChange] = field(default_factory=list)
    asked: list[ChangesQuery] = field(default_factory=list)

    def add(self, n: int, district: str = "思明", kind: str = "upsert", *, numbered: bool = True) -> None:
        row = {"contract_no": f"XM-{n:03d}", "district": district, "price": Decimal(f"{n}.50")}
        self.entries.append(ProviderChange(f"c{n}", row, kind, n if numbered else 0))

    def changes(self, q: ChangesQuery) -> Iterator[ProviderChange]:
        self.asked.append(q)
        if q.from_now:
            yield from self.entries[-1:]
            return
        cursors = [c.cursor for c in self.entries]
        start = cursors.index(q.after) + 1 if q.after else 0
        for change in self.entries[start:]:
            if all(change.row.get(k) == v for k, v in q.filters.items()):
                yield change


Read = Callable[..., ChangeBatch]


@pytest.fixture
def serving(certs: tuple[ClientTls, Path]) -> Iterator[Callable[[Provider], Read]]:
    """Serves a provider as zj-wqba; answers a function that reads its changes through the hub's backend."""
    servers: list[grpc.Server] = []
    with asyncio.Runner() as runner:
        backends: list[GrpcBackend] = []

        def start(provider: Provider) -> Read:
            server, port = serve(provider, "127.0.0.1:0", certs[1], max_workers=4)
            servers.append(server)
            backend = GrpcBackend(PROVIDER, f"127.0.0.1:{port}", SYSTEM, certs[0], changes=True)
            backends.append(backend)

            def read(after: str | None, limit: int = 10, **filters: object) -> ChangeBatch:
                return runner.run(backend.changes(ChangeRequest(CONTRACTS, filters, FIELDS, after, limit, 5.0)))

            return read

        yield start
        for backend in backends:
            runner.run(backend.aclose())
    for server in servers:
        server.stop(grace=None).wait()


def _provider(log: ChangeLog) -> Provider:
    provider = Provider()

    @provider.records(CONTRACTS.code)
    def contracts(q: ProviderQuery) -> list[Row]:
        return []

    provider.changes(CONTRACTS.code)(log.changes)
    return provider


def _numbers(batch: ChangeBatch) -> list[str]:
    return [str(c.row["contract_no"]) for c in batch.changes]


def test_changes_are_read_page_by_page_only_the_fields_asked_for(serving: Callable[[Provider], Read]) -> None:
    log = ChangeLog()
    for n in range(1, 6):
        log.add(n, kind="delete" if n == 4 else "upsert")
    read = serving(_provider(log))
    first = read("", 2)
    assert [c.row for c in first.changes] == [
        {"contract_no": "XM-001", "price": Decimal("1.50")},
        {"contract_no": "XM-002", "price": Decimal("2.50")},
    ]
    assert first.cursor == wrap(2, "c2") == first.changes[-1].cursor
    second = read(first.cursor, 2)
    third = read(second.cursor, 2)
    assert _numbers(second) + _numbers(third) == ["XM-003", "XM-004", "XM-005"]
    assert [c.kind for c in second.changes] == ["upsert", "delete"]
    assert read(third.cursor) == ChangeBatch([], third.cursor)
    assert [q.after for q in log.asked] == ["", "c2", "c4", "c5"] and log.asked[0].fields == FIELDS


def test_from_now_is_the_newest_position_and_what_follows_it(serving: Callable[[Provider], Read]) -> None:
    log = ChangeLog()
    read = serving(_provider(log))
    assert read(None) == ChangeBatch([], "")  # nothing yet: from now is from the start
    log.add(1)
    log.add(2)
    now = read(None)
    assert now == ChangeBatch([], wrap(2, "c2")) and log.asked[-1].from_now
    log.add(3)
    assert _numbers(read(now.cursor)) == ["XM-003"]


def test_filters_reach_the_function_and_gaps_they_leave_are_not_skips(serving: Callable[[Provider], Read]) -> None:
    log = ChangeLog()
    for n, district in enumerate(("思明", "湖里", "思明", "湖里"), start=1):
        log.add(n, district)
    read = serving(_provider(log))
    assert _numbers(read("", district="湖里")) == ["XM-002", "XM-004"]
    assert log.asked[-1].filters == {"district": "湖里"}
    with pytest.raises(InvalidArgument, match="price cannot be filtered on"):
        read("", price=Decimal(1))


def test_a_provider_that_repeats_a_cursor_is_refused(serving: Callable[[Provider], Read]) -> None:
    log = ChangeLog()
    log.add(1, numbered=False)
    log.add(2, numbered=False)
    log.entries.append(log.entries[0])  # c1 again
    read = serving(_provider(log))
    with pytest.raises(SourceWentBack) as refused:
        read("")
    assert PROVIDER in str(refused.value) and "repeats the cursor 'c1'" in str(refused.value)
    assert _numbers(read("", 2)) == ["XM-001", "XM-002"]  # the page before the repeat is fine


def test_a_provider_that_answers_the_cursor_asked_after_again_is_refused(serving: Callable[[Provider], Read]) -> None:
    log = ChangeLog()
    log.add(1, numbered=False)
    provider = Provider()
    provider.changes(CONTRACTS.code)(lambda q: iter(log.entries))  # ignores ``after``: c1 comes back
    read = serving(provider)
    first = read("")
    with pytest.raises(SourceWentBack, match=f"from the provider {PROVIDER} went backwards"):
        read(first.cursor)


def test_numbered_changes_that_go_back_or_skip_are_refused(serving: Callable[[Provider], Read]) -> None:
    log = ChangeLog()
    for n in (1, 2, 4):
        log.add(n)
    read = serving(_provider(log))
    with pytest.raises(ChangesSkipped, match=f"{PROVIDER} skipped change 3 of {CONTRACTS.code}"):
        read("")
    first = read("", 2)
    with pytest.raises(ChangesSkipped, match="skipped change 3"):
        read(first.cursor)  # across pages too: the cursor carries the number
    log.entries[2] = ProviderChange("c4", log.entries[2].row, "upsert", 2)
    with pytest.raises(SourceWentBack, match="numbered 2, after 2"):
        read(first.cursor)
    log.entries[2] = ProviderChange("c4", log.entries[2].row, "upsert", 0)
    with pytest.raises(ProviderContractError, match="not numbered, after numbered changes"):
        read(first.cursor)


def test_a_change_without_a_cursor_or_outside_the_declaration_is_a_contract_error(
    serving: Callable[[Provider], Read],
) -> None:
    log = ChangeLog()
    log.entries.append(ProviderChange("", {"contract_no": "XM-001"}, "upsert"))
    read = serving(_provider(log))
    with pytest.raises(ProviderContractError, match="change 0 has no cursor"):
        read("")
    log.entries[0] = ProviderChange("c1", {"contract_no": "XM-001", "price": "很贵"}, "upsert")
    with pytest.raises(ProviderContractError, match="price is not decimal"):
        read("")
    with pytest.raises(SourceWentBack, match="not one this provider handed out"):
        read("c1")  # a position the hub never handed out for this source
    log.entries[0] = ProviderChange("c1", {"contract_no": "XM-001"}, "insert")
    with pytest.raises(ProviderUnavailable):  # the kit refuses to send it: a failure of the department's code
        read("")


def test_a_provider_without_a_changes_function_or_a_binding_without_changes(
    serving: Callable[[Provider], Read], certs: tuple[ClientTls, Path]
) -> None:
    provider = Provider()
    provider.records(CONTRACTS.code)(lambda q: [])
    with pytest.raises(ProviderUnavailable):
        serving(provider)("")
    backend = GrpcBackend(PROVIDER, "127.0.0.1:1", SYSTEM, certs[0])
    with pytest.raises(Unsupported, match="does not serve changes"):
        asyncio.run(backend.changes(ChangeRequest(CONTRACTS, {}, FIELDS, "", 1, 1.0)))


def test_the_changes_option_is_checked_and_declares_the_binding_subscribable(certs: tuple[ClientTls, Path]) -> None:
    context = BackendContext(tls=certs[0])
    base: dict[str, object] = {"target": "127.0.0.1:7443", "system_code": SYSTEM}
    assert grpc_backend.check({**base, "changes": True}, context) == []
    assert [v.field for v in grpc_backend.check({**base, "changes": "sometimes"}, context)] == ["binding.changes"]
    assert m.Binding(CONTRACTS.code, m.BackendKind.GRPC, {**base, "changes": True}).subscribable
    assert not m.Binding(CONTRACTS.code, m.BackendKind.GRPC, base).subscribable
