"""Server-side request forgery: bindings reach only the hosts the operator allows, checked again on connecting."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from adapters import grpc_backend, sql_backend
from adapters.base import OnThreads, ProviderUnavailable
from adapters.factory import BackendContext, ClientTls
from adapters.hosts import HostPolicy
from adapters.http import HttpAdapter, HttpBinding, check
from adapters.sql import SqlAdapter
from exchange import models as m
from exchange.backend import FetchRequest
from exchange.v1 import catalog_pb2 as cpb
from tests.exchange_world import World, fails, make_world
from tests.harness import POLICE, base_settings, identity_spec, running_hub, violations
from tests.test_http_adapter import SPEC, Endpoint, answer_json, on_loop, serving

TAX = HostPolicy(("api.tax.example", ".gov.example", "10.20.0.0/16"))


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("api.tax.example", True),
        ("API.TAX.EXAMPLE.", True),  # names compare without case or a trailing dot
        ("hr.gov.example", True),  # a listed suffix
        ("gov.example", False),  # the suffix itself is not a name under it
        ("evilgov.example", False),
        ("10.20.3.4", True),
        ("10.21.0.1", False),
        ("127.0.0.1", False),
        ("localhost", False),
        ("169.254.169.254", False),  # cloud metadata
        ("[::1]", False),
    ],
)
def test_an_allow_list_names_the_hosts_bindings_may_reach(host: str, allowed: bool) -> None:
    assert (TAX.problems(host) == []) is allowed


INTERNAL = [
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "169.254.169.254",
    "100.100.100.200",
    "fd00:ec2::254",
    "fe80::1",
    "0.0.0.0",
    "::ffff:127.0.0.1",
]
LISTED = (
    "127.0.0.0/8",
    "::1",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "fd00::/8",
    "fe80::/10",
    "0.0.0.0/32",
    "::ffff:0:0/96",
)


@pytest.mark.parametrize("host", INTERNAL)
def test_without_a_list_this_machine_and_metadata_addresses_stay_out_of_reach(host: str) -> None:
    assert HostPolicy().problems(host), host
    assert HostPolicy(LISTED).problems(host) == [], host  # unless the operator lists them


def test_a_listed_name_that_resolves_to_this_machine_is_not_connected_to() -> None:
    """DNS rebinding: the name passes, its address does not; the connection is never made."""
    policy = HostPolicy(("localhost",))
    assert policy.problems("localhost") == []
    with pytest.raises(PermissionError, match="resolves to"):
        policy.vetted("localhost", 80)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with serving(Endpoint()) as ep:
        yield ep


def _request() -> FetchRequest:
    return FetchRequest(SPEC, {"id_number": "350203198001012345"}, ("household",), 10, 5.0)


@on_loop
async def test_the_rest_adapter_connects_only_to_vetted_addresses(endpoint: Endpoint) -> None:
    endpoint.answer = answer_json([{"household": 1}])
    binding = HttpBinding(endpoint.url)
    assert await HttpAdapter("税务接口", binding, hosts=HostPolicy(("127.0.0.1",), True)).fetch(_request()) == [
        {"household": 1}
    ]
    refused = HttpAdapter("税务接口", binding, hosts=HostPolicy(("api.tax.example",), True))
    with pytest.raises(ProviderUnavailable):
        await refused.fetch(_request())
    named = HttpAdapter("税务接口", replace(binding, url=endpoint.url.replace("127.0.0.1", "localhost")))
    with pytest.raises(ProviderUnavailable):  # a listed name, but it resolves to loopback
        await HttpAdapter("税务接口", named.binding, hosts=HostPolicy(("localhost",), True)).fetch(_request())
    assert len(endpoint.paths) == 1  # only the allowed call arrived


def test_bindings_are_checked_against_the_policy_when_set() -> None:
    context = BackendContext(hosts=TAX)
    cases = {
        "http://api.tax.example/v1/clearance": "must be https://",
        "https://127.0.0.1:8080/x": "not among the hosts",
        "https://169.254.169.254/latest/meta-data": "not among the hosts",
        "https://internal.other.example/api": "not among the hosts",
    }
    for url, problem in cases.items():
        assert any(problem in v.description for v in check({"url": url}, context)), url
    assert check({"url": "https://api.tax.example/v1/clearance"}, context) == []
    grpc_problems = grpc_backend.check({"target": "127.0.0.1:9000", "system_code": "zj-wqba"}, context)
    assert any("not among the hosts" in v.description for v in grpc_problems)
    sql_problems = sql_backend.check({"url": "postgresql+psycopg://u@10.99.0.5/db", "table": "t"}, context)
    assert any("not among the hosts" in v.description for v in sql_problems)


def test_the_hub_refuses_a_binding_to_a_host_outside_its_list(tmp_path: Path) -> None:
    settings = replace(base_settings(tmp_path / "hub"), backend_hosts=("api.tax.example",), allow_plain_http=False)
    with running_hub(settings) as hub:
        world: World = make_world(hub)
        world.publish("police", identity_spec("10101/350200000001", POLICE.code))
        binding = cpb.Binding(resource_code="10101/350200000001", http=cpb.HttpBackend(url="https://127.0.0.1:1/rk"))
        with hub.client(world.people["police"]) as c:
            error = fails(
                grpc.StatusCode.INVALID_ARGUMENT,
                c.catalog.SetBinding,
                cpb.SetBindingRequest(binding=binding, reason="接入"),
            )
    assert "not among the hosts" in (error.details() or "") and violations(error) == {"binding.url"}


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:p@db.gov.example/x?host=127.0.0.1",  # libpq would connect to the query's host
        "postgresql+psycopg://u:p@db.gov.example/x?hostaddr=169.254.169.254",
        "postgresql+psycopg://u:p@db.gov.example/x?service=internal",
        "postgresql+psycopg://u:p@db.gov.example/x?port=6432",
        "postgresql+psycopg://u:p@db.gov.example/x?sslkey=/etc/exchange/ca.key",
        "postgresql+psycopg://u:p@127.0.0.1,db.gov.example/x",  # a host list: libpq tries the first first
        "postgresql+psycopg://u:p@/x?host=/var/run/postgresql",  # a socket on the hub's machine
        "postgresql+psycopg://u:p@internal.other.example/x",
    ],
)
def test_a_database_url_names_one_allowed_server_and_nothing_else(url: str) -> None:
    assert sql_backend.check({"url": url, "table": "t"}, BackendContext(hosts=HostPolicy((".gov.example",))))


def test_sqlite_files_only_where_allowed_and_never_the_hubs_own(tmp_path: Path) -> None:
    own = tmp_path / "hub" / "exchange.db"
    strict = BackendContext(hosts=HostPolicy(), allow_sqlite=False, forbidden_urls=(f"sqlite:///{own}",))
    refused = sql_backend.check({"url": f"sqlite:///{tmp_path / 'front.db'}", "table": "t"}, strict)
    assert any("allow_sqlite_backends" in v.description for v in refused)
    bench = replace(strict, allow_sqlite=True)
    assert sql_backend.check({"url": f"sqlite:///{tmp_path / 'front.db'}", "table": "t"}, bench) == []
    alias = f"sqlite:///{tmp_path / 'hub' / '..' / 'hub' / 'exchange.db'}"  # the hub's file by another spelling
    assert any("hub's own database" in v.description for v in sql_backend.check({"url": alias, "table": "t"}, bench))


def test_a_database_host_is_resolved_and_vetted_once_when_opened() -> None:
    """A listed name that resolves to this machine is not connected to; an allowed one is pinned to its address."""
    binding = m.Binding("R1", m.BackendKind.SQL, {"url": "postgresql+psycopg://u@localhost/x", "table": "t"})
    with pytest.raises(ProviderUnavailable):
        sql_backend.open("公安前置库", binding, BackendContext(hosts=HostPolicy(("localhost",))))
    loopback = BackendContext(hosts=HostPolicy(("localhost", "127.0.0.0/8", "::1")))
    opened = sql_backend.open("公安前置库", binding, loopback)
    assert isinstance(opened, OnThreads) and isinstance(opened.blocking, SqlAdapter)  # it blocks: on a lane
    assert opened.blocking.binding.host_address in {"127.0.0.1", "::1"}
    opened.blocking.close()


@pytest.mark.parametrize(
    "target", ["unix:/tmp/x.gov.example:1", "dns:///x.gov.example:443", "ipv4:127.0.0.1:1", "::1:50051"]
)
def test_a_provider_target_is_a_host_and_port_not_grpcs_own_addressing(target: str) -> None:
    problems = grpc_backend.check({"target": target, "system_code": "zj-wqba"}, BackendContext(tls=_DUMMY_TLS))
    assert any("must be host:port" in v.description for v in problems), problems


def test_a_provider_host_is_resolved_and_vetted_once_when_opened() -> None:
    binding = m.Binding("R1", m.BackendKind.GRPC, {"target": "localhost:50051", "system_code": "zj-wqba"})
    with pytest.raises(ProviderUnavailable):  # a name that resolves to this machine, with no list
        grpc_backend.open("住建部门", binding, BackendContext(tls=_DUMMY_TLS, hosts=HostPolicy()))


_DUMMY_TLS = ClientTls(b"key", b"certificate", b"ca")
