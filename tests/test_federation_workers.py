"""A federating hub of several processes (issue 15): the province serves `exchange serve --workers 2` on
PostgreSQL, the city one process on SQLite, peered both ways by their operators.

Every worker serves the province's federation listener on its one port, so whichever worker the kernel hands a
connection answers it: the city pulls the province's catalog and a suspension, submits an application, reads
its status and forwards a query there. The province's sync rounds run in one worker at a time, the holder of
the federation's sync lock; the holder killed, another takes the rounds over. The province's hub certificate
re-issued while it serves is presented from the next handshake on, by every worker; a pair naming another hub
is refused and the certificate before it kept.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import socket
import ssl
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from cryptography import x509

from exchange import ca, pki
from exchange import models as m
from exchange import wire as w
from exchange.v1 import catalog_pb2 as cpb
from exchange.v1 import exchange_pb2 as xpb
from exchange.v1 import rights_pb2 as rpb
from tests.federation_support import PROVINCE_MARKET, department
from tests.harness import AUTHORITY, identity_spec
from tests.served_hubs import (
    PROVINCE_ENTRY,
    PROVINCE_OTHER,
    PROVINCE_PERSON,
    Served,
    peer_pair,
    publish_at_province,
    remote_codes,
    serve,
    until,
)

ENTRY = PROVINCE_ENTRY
OTHER = PROVINCE_OTHER  # suspended later
CITY_MARKET = department("350200", "0077889", "厦门市市场监督管理局", m.AdministrativeLevel.CITY)
CITY_ENTRY = "10101/350200000001"
LATER = "10101/350200000002"  # published at the city once the province's holder was killed
PURPOSE = "企业登记核查"
PERSON = PROVINCE_PERSON
SYSTEM = "xm-djxt"
SERVING = re.compile(r"worker (\d+) serving on port \d+ \(pid (\d+)\)")
HOLDS = re.compile(r"process (\d+) now holds the federation's sync lock")


@pytest.fixture
def pair(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Served, Served]]:
    """The city (one process) and the province (two workers on PostgreSQL), peered both ways."""
    with ExitStack() as stack:
        workers = {"EXCHANGE_WORKERS": "2"}
        province = stack.enter_context(serve(tmp_path, "province", 1.0, extra=workers, database_url=postgres_url))
        city = stack.enter_context(serve(tmp_path, "city", 1.0))
        until(lambda: len(_workers(province)) == 2, "both of the province's workers serving")
        peer_pair(city, province)
        yield city, province


def _workers(node: Served) -> dict[int, int]:
    """Worker index → the pid serving in that slot now (the supervisor's log)."""
    return {int(i): int(pid) for i, pid in SERVING.findall(node.log.read_text())}


def _holders(node: Served) -> list[int]:
    """The pids that took the sync lock, in the order they took it."""
    return [int(pid) for pid in HOLDS.findall(node.log.read_text())]


def _publish_at_city(city: Served, code: str) -> None:
    steward = city.running.certifier(CITY_MARKET.code)
    city.running.publish(steward, identity_spec(code, CITY_MARKET.code, name=f"市场主体信息 {code[-2:]}"))


def _status_at(node: Served, code: str) -> int:
    with node.running.client() as hub:
        return hub.call(hub.catalog.GetResource, cpb.GetResourceRequest(code=code)).status


def _apply(node: Served, consumer: str, entry: str, fields: tuple[str, ...]) -> tuple[Path, str]:
    """A clerk of ``consumer`` (registered at ``node``) applies there for ``entry``, homed at the other hub."""
    clerk = node.running.add_person(f"clerk-{consumer[-6:].lower()}", consumer, m.Role.CONSUMER)
    node.running.add_system(f"{SYSTEM}-{node.level}", consumer)
    today = dt.datetime.now(dt.UTC).date()
    app = m.Application(entry, "", (f"{SYSTEM}-{node.level}",), PURPOSE, "《市场主体登记管理条例》", fields,
                        today, today + dt.timedelta(days=30), 100)  # fmt: skip
    with node.running.client(clerk) as c:
        applied = c.call(c.rights.Apply, rpb.ApplyRequest(request=w.application_to_wire(app)))
    assert applied.cross_hub.home_hub_code != node.code
    return clerk, applied.id


def _decide(home: Served, owner: str, entry: str, request_id: str) -> str:
    """The home's steward approves the application from the other hub (the name masked), its manager grants."""
    hub = home.running
    steward = hub.certifier(owner)
    pending = rpb.ListShareRequestsRequest(resource_code=entry, status=rpb.SHARE_REQUEST_STATUS_PENDING)

    def arrived() -> list[rpb.ShareRequest]:
        with hub.client(steward) as c:
            found = c.call(c.rights.ListShareRequests, pending).requests
        return [r for r in found if r.cross_hub.consumer_request_id == request_id]

    until(lambda: arrived() != [], f"the application {request_id} at hub {home.code}")
    (request,) = arrived()
    with hub.client(steward) as c:
        masks = [rpb.FieldMask(field="name", mask=rpb.MASK_KIND_NAME)]
        c.call(c.rights.Approve, rpb.ApproveRequest(id=request.id, masks=masks, reason="符合条件"))
    manager = hub.add_person(f"manager-{home.level}", AUTHORITY.code, m.Role.SHARE_MANAGER)
    with hub.client(manager) as c:
        return str(c.call(c.rights.IssueGrant, rpb.IssueGrantRequest(request_id=request.id)).id)


def _granted(node: Served, clerk: Path, request_id: str, grant: str) -> bool:
    with node.running.client(clerk) as hub:
        seen = hub.call(hub.rights.GetShareRequest, rpb.GetShareRequestRequest(id=request_id))
    return seen.status == rpb.SHARE_REQUEST_STATUS_GRANTED and seen.grant_id == grant


def test_a_hub_of_two_workers_federates_with_one_sync_holder_at_a_time(
    pair: tuple[Served, Served], tmp_path: Path
) -> None:
    city, province = pair
    workers = _workers(province)
    # The catalog both ways: the city pulls from whichever worker answers; the province's holder pulls the city.
    publish_at_province(province, tmp_path)
    city.running.add_department(CITY_MARKET)
    _publish_at_city(city, CITY_ENTRY)
    until(lambda: remote_codes(city, province.code) == [ENTRY, OTHER], "the province's entries at the city")
    until(lambda: remote_codes(province, city.code) == [CITY_ENTRY], "the city's entry at the province")
    with province.running.client(province.running.certifier(PROVINCE_MARKET.code)) as hub:
        hub.call(hub.catalog.SuspendResource, cpb.ChangeResourceStatusRequest(code=OTHER, reason="系统升级"))
    until(lambda: _status_at(city, OTHER) == cpb.RESOURCE_STATUS_SUSPENDED, "the suspension at the city")

    # An application each way: submitted by the province's holder, and taken by whichever worker the city reaches.
    province_clerk, at_province = _apply(province, PROVINCE_MARKET.code, CITY_ENTRY, ("name", "id_number"))
    city_clerk, at_city = _apply(city, CITY_MARKET.code, ENTRY, ("name", "id_number", "address"))
    to_province = _decide(city, CITY_MARKET.code, CITY_ENTRY, at_province)
    to_city = _decide(province, PROVINCE_MARKET.code, ENTRY, at_city)
    until(lambda: _granted(province, province_clerk, at_province, to_province), "the city's grant at the province")
    until(lambda: _granted(city, city_clerk, at_city, to_city), "the province's grant at the city")

    # Queries forwarded to the province, each on a connection of its own: served by whichever worker takes it.
    identity = city.running.identity(m.PrincipalKind.SYSTEM, f"{SYSTEM}-city")
    request = xpb.QueryRequest(resource_code=ENTRY, purpose=PURPOSE, filters={"id_number": PERSON}, fields=["name"])
    for _ in range(4):
        with city.running.client(identity) as hub:
            answer = hub.call(hub.exchange.Query, request)
        assert [r.fields["name"].string_value for r in answer.records] == ["张*"]

    # All along, one worker held the rounds: it took the lock once, and the other never did.
    (holder,) = _holders(province)
    assert holder in workers.values()
    other = next(pid for pid in workers.values() if pid != holder)
    os.kill(holder, signal.SIGKILL)  # its session ends with it: the lock is free at once
    until(lambda: len(_holders(province)) == 2, "another worker taking the sync rounds over")
    taker = _holders(province)[1]
    assert taker != holder and taker in {other, *_workers(province).values()}
    # The rounds go on: an entry the city publishes now reaches the province.
    _publish_at_city(city, LATER)
    until(lambda: remote_codes(province, city.code) == [CITY_ENTRY, LATER], "the city's new entry at the province")
    assert len(_holders(province)) == 2


def _served_serial(address: str, client: pki.HubFiles, roots: bytes) -> int:
    """The serial of the hub certificate a federation listener presents to a new connection (as a peer sees it,
    the peer's own hub certificate presented)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the certificate is checked against the CA; the test reads its serial
    context.load_verify_locations(cadata=roots.decode())
    context.load_cert_chain(client.hub_cert, client.hub_key)
    context.set_alpn_protocols(["h2"])
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_a_hub_certificate_reissued_while_serving_is_presented_by_every_worker(pair: tuple[Served, Served]) -> None:
    city, province = pair
    settings = province.running.settings
    files = pki.HubFiles(settings.home, settings.ca_key_file)
    client = pki.HubFiles(city.running.settings.home)
    roots = province.running.ca_pem

    def served() -> set[int]:  # new connections, spread over the workers by the kernel
        return {_served_serial(province.address, client, roots) for _ in range(8)}

    first = pki.load_cert(files.hub_cert).serial_number
    assert served() == {first}
    renewed = ca.issue_hub(files, settings.hub_code, settings.hostnames).serial_number
    assert served() == {renewed}

    # A pair naming another hub (the operator issued it for the wrong code): refused, the renewed one kept.
    authority = ca.load_authority(files)
    key, wrong = pki.issue_hub_certificate(authority.key, authority.cert, "350200", settings.hostnames, 30)
    pki.replace_file(files.hub_key, pki.key_pem(key), 0o600)
    pki.replace_file(files.hub_cert, pki.cert_pem(wrong), 0o644)
    assert served() == {renewed}
    assert "keeping the current hub certificate" in province.log.read_text()

    # The province's calls to the city present the renewed certificate too: its rounds still pull the city.
    renewed_again = ca.issue_hub(files, settings.hub_code, settings.hostnames).serial_number
    assert served() == {renewed_again}
    city.running.add_department(CITY_MARKET)
    _publish_at_city(city, CITY_ENTRY)
    until(lambda: remote_codes(province, city.code) == [CITY_ENTRY], "the city's entry at the province")
